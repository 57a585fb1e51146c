//! A partition's indexes, kept in its RocksDB column family.
//!
//! Key layout (one byte of kind, then big-endian numbers so keys sort the way
//! the numbers do):
//!
//! ```text
//! 'o' offset:u64          -> position:u32       sparse offset index: a batch's base
//!                                                offset -> its byte position in its segment
//! 't' timestamp:u64*      -> offset:u64         time index: the first batch whose max
//!                                                timestamp reached this value
//! 's' base_offset:u64     -> max_timestamp:i64  per closed segment, for retention.ms
//! 'e' epoch:u32           -> start_offset:u64   leader-epoch checkpoints
//! 'k' key bytes           -> offset:u64         compacted topics: latest offset per key
//! 'p' producer_id:u64     -> entry              idempotent producers' last batches
//! 'm' name                -> value              partition metadata (log start, cleaner
//!                                                checkpoint, clean-shutdown marker)
//! ```
//! (*) timestamps are stored with the sign bit flipped so negative ones sort first.
//!
//! Everything except `m`, `e` and `k` can be rebuilt from the segment files,
//! which is what recovery does for the tail of the log.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::error::Result;
use crate::store::Store;

const OFFSET: u8 = b'o';
const TIME: u8 = b't';
const SEGMENT: u8 = b's';
const EPOCH: u8 = b'e';
const KEY: u8 = b'k';
const META: u8 = b'm';
const PRODUCER: u8 = b'p';

pub const META_LOG_START: &str = "log_start";
pub const META_CLEAN_SHUTDOWN: &str = "clean_shutdown";
pub const META_CLEANER_CHECKPOINT: &str = "cleaner_checkpoint";
pub const META_RECOVERY_POINT: &str = "recovery_point";

fn key_u64(kind: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = kind;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

/// The compaction key map's RocksDB key for a record key.
fn map_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(KEY);
    k.extend_from_slice(key);
    k
}

fn ts_key(ts: i64) -> u64 {
    (ts as u64) ^ (1 << 63)
}

fn ts_from_key(k: u64) -> i64 {
    (k ^ (1 << 63)) as i64
}

fn read_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn read_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Handle on one partition's column family.
#[derive(Clone)]
pub struct PartitionIndex {
    store: Arc<Store>,
    cf: String,
}

/// Index changes gathered during an append, written in one RocksDB batch.
pub struct IndexWrites {
    batch: WriteBatch,
    empty: bool,
}

impl IndexWrites {
    pub fn new() -> Self {
        IndexWrites { batch: WriteBatch::default(), empty: true }
    }
}

impl Default for IndexWrites {
    fn default() -> Self {
        Self::new()
    }
}

impl PartitionIndex {
    pub fn new(store: Arc<Store>, cf: String) -> Self {
        PartitionIndex { store, cf }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn put_offset(&self, w: &mut IndexWrites, offset: i64, position: u32) -> Result<()> {
        w.batch.put_cf(&self.store.cf(&self.cf)?, key_u64(OFFSET, offset as u64), position.to_be_bytes());
        w.empty = false;
        Ok(())
    }

    pub fn put_time(&self, w: &mut IndexWrites, timestamp: i64, offset: i64) -> Result<()> {
        w.batch.put_cf(
            &self.store.cf(&self.cf)?,
            key_u64(TIME, ts_key(timestamp)),
            (offset as u64).to_be_bytes(),
        );
        w.empty = false;
        Ok(())
    }

    pub fn put_segment_max_ts(&self, w: &mut IndexWrites, base: i64, max_ts: i64) -> Result<()> {
        w.batch.put_cf(&self.store.cf(&self.cf)?, key_u64(SEGMENT, base as u64), max_ts.to_be_bytes());
        w.empty = false;
        Ok(())
    }

    pub fn put_meta(&self, w: &mut IndexWrites, name: &str, value: &[u8]) -> Result<()> {
        let mut k = vec![META];
        k.extend_from_slice(name.as_bytes());
        w.batch.put_cf(&self.store.cf(&self.cf)?, k, value);
        w.empty = false;
        Ok(())
    }

    pub fn delete_meta(&self, w: &mut IndexWrites, name: &str) -> Result<()> {
        let mut k = vec![META];
        k.extend_from_slice(name.as_bytes());
        w.batch.delete_cf(&self.store.cf(&self.cf)?, k);
        w.empty = false;
        Ok(())
    }

    pub fn put_epoch(&self, w: &mut IndexWrites, epoch: i32, start_offset: i64) -> Result<()> {
        let mut k = [0u8; 5];
        k[0] = EPOCH;
        k[1..].copy_from_slice(&(epoch as u32).to_be_bytes());
        w.batch.put_cf(&self.store.cf(&self.cf)?, k, (start_offset as u64).to_be_bytes());
        w.empty = false;
        Ok(())
    }

    /// Removes offset-index entries for offsets in `[from, to)`.
    pub fn delete_offsets(&self, w: &mut IndexWrites, from: i64, to: i64) -> Result<()> {
        let cf = self.store.cf(&self.cf)?;
        w.batch.delete_range_cf(&cf, key_u64(OFFSET, from.max(0) as u64), key_u64(OFFSET, to.max(0) as u64));
        w.empty = false;
        Ok(())
    }

    pub fn delete_segment_meta(&self, w: &mut IndexWrites, base: i64) -> Result<()> {
        w.batch.delete_cf(&self.store.cf(&self.cf)?, key_u64(SEGMENT, base as u64));
        w.empty = false;
        Ok(())
    }

    /// Removes time-index entries pointing at offsets `>= from` (they come
    /// last: the time index only grows with offsets).
    pub fn delete_time_from_offset(&self, w: &mut IndexWrites, from: i64) -> Result<()> {
        let cf = self.store.cf(&self.cf)?;
        let end = [TIME + 1];
        let iter = self.store.db().iterator_cf(&cf, IteratorMode::From(&end, Direction::Reverse));
        for item in iter {
            let (k, v) = item?;
            if k.first() != Some(&TIME) {
                break;
            }
            match read_u64(&v) {
                Some(off) if off as i64 >= from => {
                    w.batch.delete_cf(&cf, k);
                    w.empty = false;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Removes time-index entries pointing at offsets `< before`.
    pub fn delete_time_below_offset(&self, w: &mut IndexWrites, before: i64) -> Result<()> {
        let cf = self.store.cf(&self.cf)?;
        let iter = self.store.db().iterator_cf(&cf, IteratorMode::From(&[TIME], Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if k.first() != Some(&TIME) {
                break;
            }
            match read_u64(&v) {
                Some(off) if (off as i64) < before => {
                    w.batch.delete_cf(&cf, k);
                    w.empty = false;
                }
                _ => break,
            }
        }
        Ok(())
    }

    pub fn write(&self, w: IndexWrites) -> Result<()> {
        if !w.empty {
            self.store.write(w.batch)?;
        }
        Ok(())
    }

    pub fn write_durable(&self, w: IndexWrites) -> Result<()> {
        if !w.empty {
            self.store.write_durable(w.batch)?;
        }
        Ok(())
    }

    /// The indexed batch with the greatest base offset `<= offset`, if any:
    /// `(base_offset, position)`.
    pub fn offset_floor(&self, offset: i64) -> Result<Option<(i64, u32)>> {
        let cf = self.store.cf(&self.cf)?;
        let mut it = self.store.db().raw_iterator_cf(&cf);
        it.seek_for_prev(key_u64(OFFSET, offset.max(0) as u64));
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() == 9 && k[0] == OFFSET {
                if let (Some(off), Some(pos)) = (read_u64(&k[1..]), read_u32(v)) {
                    return Ok(Some((off as i64, pos)));
                }
            }
        }
        it.status()?;
        Ok(None)
    }

    /// Every offset-index entry in `[from, to)`, ascending.
    pub fn offsets_in(&self, from: i64, to: i64) -> Result<Vec<(i64, u32)>> {
        let cf = self.store.cf(&self.cf)?;
        let start = key_u64(OFFSET, from.max(0) as u64);
        let mut out = Vec::new();
        for item in self.store.db().iterator_cf(&cf, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            if k.len() != 9 || k[0] != OFFSET {
                break;
            }
            let (Some(off), Some(pos)) = (read_u64(&k[1..]), read_u32(&v)) else { break };
            if off as i64 >= to {
                break;
            }
            out.push((off as i64, pos));
        }
        Ok(out)
    }

    /// The first time-index entry with timestamp `>= ts`: `(timestamp, offset)`.
    pub fn time_ceiling(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        let cf = self.store.cf(&self.cf)?;
        let mut it = self.store.db().raw_iterator_cf(&cf);
        it.seek(key_u64(TIME, ts_key(ts)));
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() == 9 && k[0] == TIME {
                if let (Some(t), Some(off)) = (read_u64(&k[1..]), read_u64(v)) {
                    return Ok(Some((ts_from_key(t), off as i64)));
                }
            }
        }
        it.status()?;
        Ok(None)
    }

    /// The newest time-index entry: `(timestamp, offset)`.
    pub fn last_time(&self) -> Result<Option<(i64, i64)>> {
        let cf = self.store.cf(&self.cf)?;
        let mut it = self.store.db().raw_iterator_cf(&cf);
        it.seek_for_prev([TIME, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() == 9 && k[0] == TIME {
                if let (Some(t), Some(off)) = (read_u64(&k[1..]), read_u64(v)) {
                    return Ok(Some((ts_from_key(t), off as i64)));
                }
            }
        }
        it.status()?;
        Ok(None)
    }

    pub fn segment_max_ts(&self, base: i64) -> Result<Option<i64>> {
        let cf = self.store.cf(&self.cf)?;
        Ok(self
            .store
            .db()
            .get_cf(&cf, key_u64(SEGMENT, base as u64))?
            .and_then(|v| read_u64(&v))
            .map(|v| v as i64))
    }

    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let cf = self.store.cf(&self.cf)?;
        let mut k = vec![META];
        k.extend_from_slice(name.as_bytes());
        Ok(self.store.db().get_cf(&cf, k)?)
    }

    pub fn meta_i64(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.meta(name)?.and_then(|v| read_u64(&v)).map(|v| v as i64))
    }

    // ---- idempotent producers ----

    pub fn put_producer(&self, w: &mut IndexWrites, producer_id: i64, entry: &[u8]) -> Result<()> {
        w.batch.put_cf(&self.store.cf(&self.cf)?, key_u64(PRODUCER, producer_id as u64), entry);
        w.empty = false;
        Ok(())
    }

    /// Every stored producer entry: `(producer_id, encoded entry)`.
    pub fn producers(&self) -> Result<Vec<(i64, Vec<u8>)>> {
        let cf = self.store.cf(&self.cf)?;
        let mut out = Vec::new();
        for item in self.store.db().iterator_cf(&cf, IteratorMode::From(&[PRODUCER], Direction::Forward)) {
            let (k, v) = item?;
            if k.len() != 9 || k[0] != PRODUCER {
                break;
            }
            if let Some(pid) = read_u64(&k[1..]) {
                out.push((pid as i64, v.to_vec()));
            }
        }
        Ok(out)
    }

    // ---- compaction key map ----

    pub fn key_offset(&self, key: &[u8]) -> Result<Option<i64>> {
        let cf = self.store.cf(&self.cf)?;
        let k = map_key(key);
        Ok(self.store.db().get_cf(&cf, k)?.and_then(|v| read_u64(&v)).map(|v| v as i64))
    }

    pub fn put_key_offset(&self, w: &mut IndexWrites, key: &[u8], offset: i64) -> Result<()> {
        let k = map_key(key);
        w.batch.put_cf(&self.store.cf(&self.cf)?, k, (offset as u64).to_be_bytes());
        w.empty = false;
        Ok(())
    }

    pub fn delete_key(&self, w: &mut IndexWrites, key: &[u8]) -> Result<()> {
        let k = map_key(key);
        w.batch.delete_cf(&self.store.cf(&self.cf)?, k);
        w.empty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_keys_sort_like_timestamps() {
        let ts = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for w in ts.windows(2) {
            assert!(ts_key(w[0]) < ts_key(w[1]));
            assert_eq!(ts_from_key(ts_key(w[0])), w[0]);
        }
    }
}

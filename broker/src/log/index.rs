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
//! 's' base_offset:u64     -> max_timestamp:i64, size:u64
//!                                                per closed segment: retention.ms, and the
//!                                                size its offset index was written for
//! 'e' epoch:u32           -> start_offset:u64   leader-epoch checkpoints
//! 'k' key bytes           -> offset:u64         compacted topics: latest offset per key
//! 'p' producer_id:u64     -> entry              idempotent producers (legacy: read once
//!                                                on open, then replaced by snapshots)
//! 'P' offset:u64          -> snapshot           every producer's state as of `offset`:
//!                                                taken at each roll and at clean shutdown
//! 'm' name                -> value              partition metadata (log start, cleaner
//!                                                checkpoint, clean-shutdown marker,
//!                                                high-watermark checkpoint)
//! ```
//! (*) timestamps are stored with the sign bit flipped so negative ones sort first.
//!
//! Everything except `m`, `e`, `k` and `P` can be rebuilt from the segment
//! files, which is what recovery does for the tail of the log. The store is
//! reached through [`IndexStore`] so tests can fail its writes and lose what
//! was not synced.

use std::sync::Arc;

use super::index_store::{IndexOp, IndexStore};
use crate::error::Result;

const OFFSET: u8 = b'o';
const TIME: u8 = b't';
const SEGMENT: u8 = b's';
const EPOCH: u8 = b'e';
const KEY: u8 = b'k';
const META: u8 = b'm';
const PRODUCER: u8 = b'p';
const SNAPSHOT: u8 = b'P';

pub const META_LOG_START: &str = "log_start";
pub const META_CLEAN_SHUTDOWN: &str = "clean_shutdown";
pub const META_CLEANER_CHECKPOINT: &str = "cleaner_checkpoint";
pub const META_RECOVERY_POINT: &str = "recovery_point";
/// The high watermark as last checkpointed (replication): where a restarted
/// replica's high watermark may start.
pub const META_HIGH_WATERMARK: &str = "high_watermark";

fn key_u64(kind: u8, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(kind);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The compaction key map's key for a record key.
fn map_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(KEY);
    k.extend_from_slice(key);
    k
}

/// Epochs are never negative (the cache ignores unstamped batches), so the
/// u32 form sorts like the epoch.
fn epoch_key(epoch: i32) -> Vec<u8> {
    let mut k = vec![EPOCH];
    k.extend_from_slice(&(epoch as u32).to_be_bytes());
    k
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
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

/// The number in a `kind`+u64 key.
fn key_number(k: &[u8], kind: u8) -> Option<u64> {
    if k.len() == 9 && k[0] == kind {
        read_u64(&k[1..])
    } else {
        None
    }
}

/// What the index knows of a closed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    pub max_timestamp: i64,
    /// File size the segment's offset-index entries were written for; None
    /// for entries written before sizes were recorded.
    pub size: Option<u64>,
}

/// Handle on one partition's column family.
#[derive(Clone)]
pub struct PartitionIndex {
    store: Arc<dyn IndexStore>,
    cf: String,
}

/// Index changes gathered during an operation, written in one atomic batch.
#[derive(Debug, Default)]
pub struct IndexWrites {
    ops: Vec<IndexOp>,
}

impl IndexWrites {
    pub fn new() -> Self {
        IndexWrites { ops: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.ops.push(IndexOp::Put(k, v));
    }

    fn delete(&mut self, k: Vec<u8>) {
        self.ops.push(IndexOp::Delete(k));
    }
}

impl PartitionIndex {
    pub fn new(store: Arc<dyn IndexStore>, cf: String) -> Self {
        PartitionIndex { store, cf }
    }

    pub fn cf_name(&self) -> &str {
        &self.cf
    }

    pub fn put_offset(&self, w: &mut IndexWrites, offset: i64, position: u32) {
        w.put(key_u64(OFFSET, offset as u64), position.to_be_bytes().to_vec());
    }

    pub fn put_time(&self, w: &mut IndexWrites, timestamp: i64, offset: i64) {
        w.put(key_u64(TIME, ts_key(timestamp)), (offset as u64).to_be_bytes().to_vec());
    }

    pub fn put_segment_meta(&self, w: &mut IndexWrites, base: i64, meta: SegmentMeta) {
        let mut v = meta.max_timestamp.to_be_bytes().to_vec();
        if let Some(size) = meta.size {
            v.extend_from_slice(&size.to_be_bytes());
        }
        w.put(key_u64(SEGMENT, base as u64), v);
    }

    pub fn put_meta(&self, w: &mut IndexWrites, name: &str, value: &[u8]) {
        w.put(meta_key(name), value.to_vec());
    }

    pub fn delete_meta(&self, w: &mut IndexWrites, name: &str) {
        w.delete(meta_key(name));
    }

    pub fn put_epoch(&self, w: &mut IndexWrites, epoch: i32, start_offset: i64) {
        w.put(epoch_key(epoch), (start_offset as u64).to_be_bytes().to_vec());
    }

    pub fn delete_epoch(&self, w: &mut IndexWrites, epoch: i32) {
        w.delete(epoch_key(epoch));
    }

    /// Every leader-epoch checkpoint, ascending: `(epoch, start_offset)`.
    pub fn epochs(&self) -> Result<Vec<(i32, i64)>> {
        let mut out = Vec::new();
        self.store.range(&self.cf, &[EPOCH], &[EPOCH + 1], false, &mut |k, v| {
            let epoch = k.get(1..5).and_then(read_u32).filter(|_| k.len() == 5);
            if let (Some(epoch), Some(start)) = (epoch, read_u64(v)) {
                out.push((epoch as i32, start as i64));
            }
            true
        })?;
        Ok(out)
    }

    /// Removes offset-index entries for offsets in `[from, to)`.
    pub fn delete_offsets(&self, w: &mut IndexWrites, from: i64, to: i64) {
        w.ops.push(IndexOp::DeleteRange(
            key_u64(OFFSET, from.max(0) as u64),
            key_u64(OFFSET, to.max(0) as u64),
        ));
    }

    pub fn delete_segment_meta(&self, w: &mut IndexWrites, base: i64) {
        w.delete(key_u64(SEGMENT, base as u64));
    }

    /// Removes the metadata of every segment based at `from` or above.
    pub fn delete_segment_metas_from(&self, w: &mut IndexWrites, from: i64) {
        w.ops.push(IndexOp::DeleteRange(key_u64(SEGMENT, from.max(0) as u64), vec![SEGMENT + 1]));
    }

    /// Removes time-index entries pointing at offsets `>= from` (they come
    /// last: the time index only grows with offsets).
    pub fn delete_time_from_offset(&self, w: &mut IndexWrites, from: i64) -> Result<()> {
        self.delete_time_while(w, true, |off| off >= from)
    }

    /// Removes time-index entries pointing at offsets `< before`.
    pub fn delete_time_below_offset(&self, w: &mut IndexWrites, before: i64) -> Result<()> {
        self.delete_time_while(w, false, |off| off < before)
    }

    /// Deletes time-index entries from one end while `doomed(offset)` holds.
    fn delete_time_while(
        &self,
        w: &mut IndexWrites,
        from_end: bool,
        doomed: impl Fn(i64) -> bool,
    ) -> Result<()> {
        let mut keys = Vec::new();
        self.store.range(&self.cf, &[TIME], &[TIME + 1], from_end, &mut |k, v| match read_u64(v) {
            Some(off) if doomed(off as i64) => {
                keys.push(k.to_vec());
                true
            }
            _ => false,
        })?;
        for k in keys {
            w.delete(k);
        }
        Ok(())
    }

    pub fn write(&self, w: IndexWrites) -> Result<()> {
        if w.ops.is_empty() {
            return Ok(());
        }
        self.store.write(&self.cf, &w.ops, false)
    }

    pub fn write_durable(&self, w: IndexWrites) -> Result<()> {
        if w.ops.is_empty() {
            return Ok(());
        }
        self.store.write(&self.cf, &w.ops, true)
    }

    /// The first entry of kind `kind` in `[from, to)` (last when `reverse`).
    fn first(&self, from: &[u8], to: &[u8], reverse: bool) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut found = None;
        self.store.range(&self.cf, from, to, reverse, &mut |k, v| {
            found = Some((k.to_vec(), v.to_vec()));
            false
        })?;
        Ok(found)
    }

    /// The indexed batch with the greatest base offset `<= offset`, if any:
    /// `(base_offset, position)`.
    pub fn offset_floor(&self, offset: i64) -> Result<Option<(i64, u32)>> {
        let to = key_u64(OFFSET, offset.max(0) as u64 + 1);
        Ok(self.first(&[OFFSET], &to, true)?.and_then(|(k, v)| {
            let off = key_number(&k, OFFSET)?;
            Some((off as i64, read_u32(&v)?))
        }))
    }

    /// Every offset-index entry in `[from, to)`, ascending.
    pub fn offsets_in(&self, from: i64, to: i64) -> Result<Vec<(i64, u32)>> {
        let mut out = Vec::new();
        let (from, to) = (key_u64(OFFSET, from.max(0) as u64), key_u64(OFFSET, to.max(0) as u64));
        self.store.range(&self.cf, &from, &to, false, &mut |k, v| {
            if let (Some(off), Some(pos)) = (key_number(k, OFFSET), read_u32(v)) {
                out.push((off as i64, pos));
            }
            true
        })?;
        Ok(out)
    }

    /// The first time-index entry with timestamp `>= ts`: `(timestamp, offset)`.
    pub fn time_ceiling(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        let from = key_u64(TIME, ts_key(ts));
        Ok(self
            .first(&from, &[TIME + 1], false)?
            .and_then(|(k, v)| Some((ts_from_key(key_number(&k, TIME)?), read_u64(&v)? as i64))))
    }

    /// The newest time-index entry: `(timestamp, offset)`.
    pub fn last_time(&self) -> Result<Option<(i64, i64)>> {
        Ok(self
            .first(&[TIME], &[TIME + 1], true)?
            .and_then(|(k, v)| Some((ts_from_key(key_number(&k, TIME)?), read_u64(&v)? as i64))))
    }

    pub fn segment_meta(&self, base: i64) -> Result<Option<SegmentMeta>> {
        Ok(self.store.get(&self.cf, &key_u64(SEGMENT, base as u64))?.and_then(|v| {
            Some(SegmentMeta { max_timestamp: read_u64(&v)? as i64, size: v.get(8..).and_then(read_u64) })
        }))
    }

    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.store.get(&self.cf, &meta_key(name))
    }

    pub fn meta_i64(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.meta(name)?.and_then(|v| read_u64(&v)).map(|v| v as i64))
    }

    // ---- idempotent producers ----

    /// Legacy per-producer entries: `(producer_id, encoded entry)`.
    pub fn legacy_producers(&self) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut out = Vec::new();
        self.store.range(&self.cf, &[PRODUCER], &[PRODUCER + 1], false, &mut |k, v| {
            if let Some(pid) = key_number(k, PRODUCER) {
                out.push((pid as i64, v.to_vec()));
            }
            true
        })?;
        Ok(out)
    }

    pub fn delete_legacy_producers(&self, w: &mut IndexWrites) {
        w.ops.push(IndexOp::DeleteRange(vec![PRODUCER], vec![PRODUCER + 1]));
    }

    pub fn put_producer_snapshot(&self, w: &mut IndexWrites, offset: i64, snapshot: Vec<u8>) {
        w.put(key_u64(SNAPSHOT, offset as u64), snapshot);
    }

    /// The newest producer snapshot at or below `offset`: `(offset, bytes)`.
    pub fn producer_snapshot_floor(&self, offset: i64) -> Result<Option<(i64, Vec<u8>)>> {
        let to = key_u64(SNAPSHOT, offset.max(0) as u64 + 1);
        Ok(self.first(&[SNAPSHOT], &to, true)?.and_then(|(k, v)| Some((key_number(&k, SNAPSHOT)? as i64, v))))
    }

    /// Removes snapshots for offsets in `[from, to)`.
    pub fn delete_producer_snapshots(&self, w: &mut IndexWrites, from: i64, to: i64) {
        w.ops.push(IndexOp::DeleteRange(
            key_u64(SNAPSHOT, from.max(0) as u64),
            key_u64(SNAPSHOT, to.max(0) as u64),
        ));
    }

    // ---- compaction key map ----

    pub fn key_offset(&self, key: &[u8]) -> Result<Option<i64>> {
        Ok(self.store.get(&self.cf, &map_key(key))?.and_then(|v| read_u64(&v)).map(|v| v as i64))
    }

    pub fn put_key_offset(&self, w: &mut IndexWrites, key: &[u8], offset: i64) {
        w.put(map_key(key), (offset as u64).to_be_bytes().to_vec());
    }

    pub fn delete_key(&self, w: &mut IndexWrites, key: &[u8]) {
        w.delete(map_key(key));
    }

    /// Keys of the compaction key map whose latest offset is `>= offset`
    /// (their records are gone: a truncation removed them).
    pub fn keys_from(&self, offset: i64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.store.range(&self.cf, &[KEY], &[KEY + 1], false, &mut |k, v| {
            if read_u64(v).is_some_and(|o| (o as i64) >= offset) {
                out.push(k[1..].to_vec());
            }
            true
        })?;
        Ok(out)
    }

    /// Keys of the compaction key map whose latest offset is below `offset`
    /// (their records are gone: retention deleted them).
    pub fn keys_below(&self, offset: i64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.store.range(&self.cf, &[KEY], &[KEY + 1], false, &mut |k, v| {
            if read_u64(v).is_some_and(|o| (o as i64) < offset) {
                out.push(k[1..].to_vec());
            }
            true
        })?;
        Ok(out)
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

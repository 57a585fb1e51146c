//! Opening a partition's log: the crash path.
//!
//! After a clean shutdown a marker in the column family says where the log
//! ends and nothing is scanned. Otherwise the tail of the active segment is
//! re-read from the recovery point (the end of the last fsync, recorded after
//! each one): every batch is checked (length, CRC32C, offsets following on),
//! the file is truncated at the first torn or corrupt one, and index entries
//! past the new end are dropped. Closed segments were fsynced when they were
//! rolled, so they are trusted.
//!
//! What this promises: every batch whose append returned is in the file (the
//! write happened before the answer), so a killed process loses nothing that
//! was acknowledged; with `flush.messages=1` the segment was also fsynced
//! before the answer, so a power loss loses nothing acknowledged either.

use std::fs;
use std::path::{Path, PathBuf};

use tributary_proto::batch::{self, BatchHeader, HEADER_LEN};

use super::index::{self, IndexWrites, PartitionIndex};
use super::segment::{self, Segment};
use super::PartitionLog;
use crate::config::TopicConfig;
use crate::error::{Error, Result};

/// The end of the last fsync: `position` bytes of the segment at
/// `base_offset`, holding offsets below `next_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPoint {
    pub base_offset: i64,
    pub position: u64,
    pub next_offset: i64,
}

impl RecoveryPoint {
    pub fn encode(&self) -> [u8; 24] {
        let mut v = [0u8; 24];
        v[..8].copy_from_slice(&(self.base_offset as u64).to_be_bytes());
        v[8..16].copy_from_slice(&self.position.to_be_bytes());
        v[16..].copy_from_slice(&(self.next_offset as u64).to_be_bytes());
        v
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 24 {
            return None;
        }
        let n = |i: usize| u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Some(RecoveryPoint { base_offset: n(0) as i64, position: n(1), next_offset: n(2) as i64 })
    }
}

/// Where the log ended at a clean shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanShutdown {
    pub base_offset: i64,
    pub size: u64,
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub time_index_max: i64,
    pub bytes_since_index: u64,
}

impl CleanShutdown {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        for n in [
            self.base_offset as u64,
            self.size,
            self.next_offset as u64,
            self.max_timestamp as u64,
            self.time_index_max as u64,
            self.bytes_since_index,
        ] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 48 {
            return None;
        }
        let n = |i: usize| u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Some(CleanShutdown {
            base_offset: n(0) as i64,
            size: n(1),
            next_offset: n(2) as i64,
            max_timestamp: n(3) as i64,
            time_index_max: n(4) as i64,
            bytes_since_index: n(5),
        })
    }
}

/// Segment files in `dir`, sorted by base offset. Leftovers of an interrupted
/// compaction swap (`*.cleaned`) are removed: the original is still in place.
fn list_segments(dir: &Path) -> Result<Vec<(i64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".cleaned") {
            tracing::warn!(file = %entry.path().display(), "removing unfinished compaction output");
            fs::remove_file(entry.path())?;
        } else if let Some(base) = segment::parse_file_name(&name) {
            found.push((base, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

impl PartitionLog {
    /// Creates (if new) or recovers the log of one partition.
    pub fn open(
        dir: PathBuf,
        topic: String,
        partition: u32,
        index: PartitionIndex,
        config: &TopicConfig,
        now_ms: i64,
    ) -> Result<PartitionLog> {
        fs::create_dir_all(&dir)?;
        let files = list_segments(&dir)?;
        let stored_start = index.meta_i64(index::META_LOG_START)?;
        let clean = index.meta(index::META_CLEAN_SHUTDOWN)?.as_deref().and_then(CleanShutdown::decode);

        let mut log = PartitionLog {
            topic,
            partition,
            dir: dir.clone(),
            index,
            segments: Default::default(),
            log_start_offset: 0,
            log_end_offset: 0,
            leader_epoch: 0,
            bytes_since_index: 0,
            time_index_max: i64::MIN,
            unflushed: 0,
            last_flush_ms: now_ms,
            producers: Default::default(),
        };
        for (pid, bytes) in log.index.producers()? {
            if let Some(entry) = super::producer_state::ProducerEntry::decode(&bytes) {
                log.producers.insert(pid, entry);
            }
        }

        if files.is_empty() {
            let start = stored_start.unwrap_or(0);
            let mut w = IndexWrites::new();
            log.index.put_epoch(&mut w, 0, start)?;
            log.index.write_durable(w)?;
            log.segments.insert(start, Segment::create(&dir, start)?);
            log.log_start_offset = start;
            log.log_end_offset = start;
            return Ok(log);
        }

        let last = files.len() - 1;
        for (i, (base, path)) in files.iter().enumerate() {
            let mut seg = Segment::open(path.clone(), *base)?;
            if i < last {
                seg.next_offset = files[i + 1].0;
                seg.max_timestamp = match log.index.segment_max_ts(*base)? {
                    Some(ts) => ts,
                    None => scan_max_timestamp(&seg)?,
                };
            }
            log.segments.insert(*base, seg);
        }
        log.log_start_offset = stored_start.unwrap_or(files[0].0).max(files[0].0);

        match clean {
            Some(m) if m.base_offset == files[last].0 && m.size == log.active().size => {
                let active = log.active();
                active.next_offset = m.next_offset;
                active.max_timestamp = m.max_timestamp;
                log.time_index_max = m.time_index_max;
                log.bytes_since_index = m.bytes_since_index;
            }
            _ => {
                tracing::info!(topic = %log.topic, partition = log.partition, "no clean-shutdown marker: checking the log tail");
                log.recover_tail(config)?;
            }
        }
        let active = log.active();
        if !active.is_empty() {
            active.first_append_ms = Some(now_ms);
        }
        log.log_end_offset = log.active().next_offset;
        // From now on a crash must scan again.
        let mut w = IndexWrites::new();
        log.index.delete_meta(&mut w, index::META_CLEAN_SHUTDOWN)?;
        log.index.write_durable(w)?;
        Ok(log)
    }

    /// Re-reads the active segment's tail; see the module docs.
    fn recover_tail(&mut self, config: &TopicConfig) -> Result<()> {
        let index = self.index.clone();
        let seg = self.active();
        let (base, size) = (seg.base_offset, seg.size);

        // Start at the recovery point: the end of what was last fsynced. Up
        // to there the bytes are known good; after it a power loss may have
        // left anything, so every batch is checked.
        let start: (u64, i64) =
            match index.meta(index::META_RECOVERY_POINT)?.as_deref().and_then(RecoveryPoint::decode) {
                Some(rp) if rp.base_offset == base && rp.position <= size => (rp.position, rp.next_offset),
                _ => (0, base),
            };

        // Max timestamp of the part that is not re-read: header by header.
        let mut max_ts = i64::MIN;
        let mut pos = 0u64;
        while pos < start.0 {
            let Some(h) = segment::header_at(&seg.file, pos, start.0)? else { break };
            max_ts = max_ts.max(h.max_timestamp);
            pos += h.total_len() as u64;
        }

        // Re-read and verify the rest, re-indexing as appends would have.
        let mut w = IndexWrites::new();
        let (mut pos, mut next) = start;
        let mut since_index = 0u64;
        // Time entries from the re-read part are rebuilt below.
        let mut stale = IndexWrites::new();
        index.delete_time_from_offset(&mut stale, start.1)?;
        index.write(stale)?;
        let mut time_max = index.last_time()?.map_or(i64::MIN, |(ts, _)| ts);
        let mut rescanned = Vec::new();
        loop {
            match read_valid_batch(seg, pos, size)? {
                Some((h, len)) if h.base_offset >= next => {
                    if pos == 0 || since_index >= config.index_interval_bytes {
                        index.put_offset(&mut w, h.base_offset, pos as u32)?;
                        since_index = 0;
                    }
                    since_index += len;
                    if h.max_timestamp > time_max {
                        index.put_time(&mut w, h.max_timestamp, h.base_offset)?;
                        time_max = h.max_timestamp;
                    }
                    max_ts = max_ts.max(h.max_timestamp);
                    next = h.next_offset();
                    pos += len;
                    rescanned.push(h);
                }
                _ => break,
            }
        }
        if pos < size {
            tracing::warn!(
                segment = %seg.path.display(),
                kept = pos,
                dropped = size - pos,
                "truncating a torn or corrupt log tail"
            );
            seg.truncate(pos)?;
        }
        seg.next_offset = next;
        seg.max_timestamp = max_ts;
        self.bytes_since_index = since_index;
        // Producer state may predate batches that were appended but whose
        // state write was lost: replay what was re-read.
        for h in &rescanned {
            if h.producer_id >= 0
                && matches!(self.producers.check(h), super::producer_state::SeqCheck::Append)
            {
                if let Some(entry) = self.producers.record(h, h.base_offset) {
                    index.put_producer(&mut w, h.producer_id, &entry.encode())?;
                }
            }
        }

        // Forget index entries for what is no longer in the log.
        index.write(w)?;
        let mut w = IndexWrites::new();
        index.delete_offsets(&mut w, next, i64::MAX)?;
        index.delete_time_from_offset(&mut w, next)?;
        index.write_durable(w)?;
        self.time_index_max = index.last_time()?.map_or(i64::MIN, |(ts, _)| ts);
        Ok(())
    }
}

/// The batch at `pos` if it is complete and its CRC matches: `(header, len)`.
fn read_valid_batch(seg: &Segment, pos: u64, size: u64) -> Result<Option<(BatchHeader, u64)>> {
    if pos + HEADER_LEN as u64 > size {
        return Ok(None);
    }
    let Some(h) = segment::header_at(&seg.file, pos, size)? else {
        return Ok(None);
    };
    let len = h.total_len() as u64;
    if pos + len > size {
        return Ok(None);
    }
    let bytes = segment::read_at(&seg.file, pos, len as usize)?;
    match batch::verify(&bytes) {
        Ok(h) => Ok(Some((h, len))),
        Err(e) => {
            tracing::warn!(segment = %seg.path.display(), pos, error = %e, "invalid batch in log tail");
            Ok(None)
        }
    }
}

/// Largest timestamp in a closed segment whose max was not recorded.
fn scan_max_timestamp(seg: &Segment) -> Result<i64> {
    let mut max_ts = i64::MIN;
    let mut pos = 0u64;
    while let Some(h) = segment::header_at(&seg.file, pos, seg.size).map_err(Error::from)? {
        max_ts = max_ts.max(h.max_timestamp);
        pos += h.total_len() as u64;
    }
    Ok(max_ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_shutdown_marker_round_trips() {
        let m = CleanShutdown {
            base_offset: 10,
            size: 4096,
            next_offset: 99,
            max_timestamp: -1,
            time_index_max: i64::MIN,
            bytes_since_index: 12,
        };
        assert_eq!(CleanShutdown::decode(&m.encode()), Some(m));
        assert_eq!(CleanShutdown::decode(&[1, 2, 3]), None);
    }
}

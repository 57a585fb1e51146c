//! Opening a partition's log: the crash path.
//!
//! After a clean shutdown a marker in the column family says where the log
//! ends and nothing is scanned. Otherwise the tail of the active segment is
//! re-read from the recovery point (the end of the last fsync, recorded after
//! each one): every batch is checked (length, CRC32C, offsets following on),
//! the file is truncated at the first torn or corrupt one, and index entries
//! past the new end are dropped. Producer state is rebuilt from the newest
//! snapshot at or below the recovered end plus the batches after it, so it
//! never remembers a batch the truncation removed. The leader-epoch cache
//! is brought in line the same way: entries past the recovered end are
//! dropped, and epochs are re-learned from the batches the tail re-read.
//! A high-watermark checkpoint past the recovered end is cut down to it.
//!
//! Closed segments were fsynced when they were rolled. Their offset index is
//! checked against the size it was written for (compaction rewrites a
//! segment, and a crash between the file swap and the index rewrite would
//! otherwise leave positions into the old layout); a mismatch rebuilds that
//! segment's index from the file. A compaction swap in flight is finished
//! (`.swap` file present: the cleaned file is complete) or rolled back
//! (`.cleaned` file: still being written), as Kafka does.
//!
//! What this promises: every batch whose append returned is in the file (the
//! write happened before the answer), so a killed process loses nothing that
//! was acknowledged; with `flush.messages=1` the segment was also fsynced
//! before the answer, so a power loss loses nothing acknowledged either.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tributary_proto::batch::{self, BatchHeader, HEADER_LEN};

use super::epochs::EpochCache;
use super::fs::{self, LogFs};
use super::index::{self, IndexWrites, PartitionIndex};
use super::producer_state::{ProducerEntry, ProducerStates};
use super::segment::{self, Segment};
use super::{LogShared, PartitionLog};
use crate::config::TopicConfig;
use crate::error::Result;

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

/// Suffix of a compaction output that is being written.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a complete compaction output that is being swapped in.
pub const SWAP_SUFFIX: &str = ".swap";

/// Segment files in `dir`, sorted by base offset, and the bases whose file a
/// compaction swap replaced during this call (their index must be rebuilt).
/// An unfinished compaction output (`*.cleaned`) is removed: the original is
/// still in place. A complete one (`*.swap`) replaces its original.
type SegmentFiles = Vec<(i64, PathBuf)>;

fn list_segments(fs: &dyn LogFs, dir: &Path) -> Result<(SegmentFiles, BTreeSet<i64>)> {
    let mut names = fs.list(dir)?;
    names.sort();
    let mut swapped = BTreeSet::new();
    for name in &names {
        let path = dir.join(name);
        if name.ends_with(CLEANED_SUFFIX) {
            tracing::warn!(file = %path.display(), "removing unfinished compaction output");
            fs.remove_file(&path)?;
        } else if let Some(log_name) = name.strip_suffix(SWAP_SUFFIX) {
            if let Some(base) = segment::parse_file_name(log_name) {
                tracing::warn!(file = %path.display(), "finishing an interrupted compaction swap");
                fs.rename(&path, &dir.join(log_name))?;
                swapped.insert(base);
            }
        }
    }
    if !swapped.is_empty() {
        fs.sync_dir(dir)?;
    }
    let mut found = Vec::new();
    for name in fs.list(dir)? {
        if let Some(base) = segment::parse_file_name(&name) {
            found.push((base, dir.join(name)));
        }
    }
    found.sort();
    Ok((found, swapped))
}

impl PartitionLog {
    /// Creates (if new) or recovers the log of one partition.
    pub fn open(
        fs: Arc<dyn LogFs>,
        dir: PathBuf,
        topic: String,
        partition: u32,
        index: PartitionIndex,
        config: &TopicConfig,
        now_ms: i64,
    ) -> Result<PartitionLog> {
        fs.create_dir_all(&dir)?;
        let (files, swapped) = list_segments(&*fs, &dir)?;
        let stored_start = index.meta_i64(index::META_LOG_START)?;
        let clean = index.meta(index::META_CLEAN_SHUTDOWN)?.as_deref().and_then(CleanShutdown::decode);
        let name = format!("{topic}-{partition}");

        let mut log = PartitionLog {
            topic,
            partition,
            dir: dir.clone(),
            fs: fs.clone(),
            index,
            segments: Default::default(),
            log_start_offset: 0,
            log_end_offset: 0,
            leader_epoch: 0,
            current_epoch: -1,
            following: false,
            epochs: EpochCache::default(),
            hw_checkpointed: false,
            lowest_truncation: i64::MAX,
            bytes_since_index: 0,
            time_index_max: i64::MIN,
            unflushed: 0,
            last_flush_ms: now_ms,
            producers: Default::default(),
            shared: LogShared::new(name, 0),
        };
        log.apply_visibility(config);

        // Epochs are learned from the batches appended (and `become_leader`);
        // logs from before replication hold (0 -> start), which their
        // epoch-0 batches agree with.
        log.epochs = EpochCache::from_entries(log.index.epochs()?);

        if files.is_empty() {
            let start = stored_start.unwrap_or(0);
            log.segments.insert(start, Segment::create(&*fs, &dir, start)?);
            log.log_start_offset = start;
            log.log_end_offset = start;
            let mut w = IndexWrites::new();
            log.index.delete_legacy_producers(&mut w);
            log.epochs.truncate_from_end(start + 1, &log.index, &mut w);
            log.load_hw_checkpoint(&mut w)?;
            log.index.write_durable(w)?;
            log.leader_epoch = log.epochs.latest_epoch().max(0);
            log.shared.durable_end.store(start, std::sync::atomic::Ordering::Release);
            log.publish_high_watermark();
            return Ok(log);
        }

        let last = files.len() - 1;
        for (i, (base, path)) in files.iter().enumerate() {
            let mut seg = Segment::open(&*fs, path.clone(), *base)?;
            if i < last {
                seg.next_offset = files[i + 1].0;
                let meta = log.index.segment_meta(*base)?;
                seg.max_timestamp = match meta {
                    Some(m) => m.max_timestamp,
                    None => scan_max_timestamp(&seg)?,
                };
                let stale = swapped.contains(base)
                    || match meta.and_then(|m| m.size) {
                        Some(size) => size != seg.size,
                        // Written before sizes were recorded: check the
                        // entries themselves after an unclean stop.
                        None => clean.is_none() && !offset_index_matches(&log.index, &seg)?,
                    };
                if stale {
                    tracing::warn!(segment = %seg.path.display(), "offset index does not match the segment: rebuilding it");
                    reindex_segment(&log.index, &seg, config)?;
                }
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
                log.log_end_offset = m.next_offset;
                log.load_producers_after_clean_stop(now_ms)?;
            }
            _ => {
                tracing::info!(topic = %log.topic, partition = log.partition, "no clean-shutdown marker: checking the log tail");
                log.recover_tail(config)?;
                log.log_end_offset = log.active().next_offset;
                // What survived a kill -9 may still be only in the page
                // cache: make it durable before anything counts on it.
                log.active().file.sync()?;
                log.rebuild_producers(now_ms)?;
            }
        }
        let active = log.active();
        if !active.is_empty() {
            active.first_append_ms = Some(now_ms);
        }
        let end = log.log_end_offset;
        log.shared.durable_end.store(end, std::sync::atomic::Ordering::Release);
        // From now on a crash must scan again; snapshots and epochs past the
        // end describe data that is gone.
        let mut w = IndexWrites::new();
        log.index.delete_meta(&mut w, index::META_CLEAN_SHUTDOWN);
        log.index.delete_legacy_producers(&mut w);
        log.index.delete_producer_snapshots(&mut w, end + 1, i64::MAX);
        log.epochs.truncate_from_end(end + 1, &log.index, &mut w);
        log.load_hw_checkpoint(&mut w)?;
        log.index.write_durable(w)?;
        log.leader_epoch = log.epochs.latest_epoch().max(0);
        log.publish_high_watermark();
        Ok(log)
    }

    /// A stored high-watermark checkpoint becomes the replica bound, cut to
    /// the log end (also in the store: records appended past the end later
    /// must not count as committed after the next restart).
    fn load_hw_checkpoint(&mut self, w: &mut IndexWrites) -> Result<()> {
        let Some(checkpoint) = self.index.meta_i64(index::META_HIGH_WATERMARK)? else {
            return Ok(());
        };
        let bound = checkpoint.min(self.log_end_offset);
        if bound != checkpoint {
            self.index.put_meta(w, index::META_HIGH_WATERMARK, &(bound as u64).to_be_bytes());
        }
        self.hw_checkpointed = true;
        self.shared.set_replica_bound(Some(bound));
        Ok(())
    }

    /// After a clean stop: the snapshot taken at the log end, or (data
    /// directories from before snapshots) the per-producer entries.
    fn load_producers_after_clean_stop(&mut self, now_ms: i64) -> Result<()> {
        let end = self.log_end_offset;
        if let Some((at, bytes)) = self.index.producer_snapshot_floor(end)? {
            if at == end {
                if let Some(states) = ProducerStates::from_snapshot(&bytes) {
                    self.producers = states;
                    return Ok(());
                }
            }
        }
        let legacy = self.index.legacy_producers()?;
        if legacy.is_empty() {
            return self.rebuild_producers(now_ms);
        }
        for (pid, bytes) in legacy {
            if let Some(mut entry) = ProducerEntry::decode(&bytes) {
                if entry.last_append_ms == 0 {
                    entry.last_append_ms = now_ms;
                }
                self.producers.insert(pid, entry);
            }
        }
        Ok(())
    }

    /// Producer state as the log says: the newest snapshot at or below the
    /// log end, then every batch after it.
    pub(crate) fn rebuild_producers(&mut self, now_ms: i64) -> Result<()> {
        let end = self.log_end_offset;
        let (from, mut states) = match self.index.producer_snapshot_floor(end)? {
            Some((at, bytes)) => match ProducerStates::from_snapshot(&bytes) {
                Some(states) => (at, states),
                None => {
                    tracing::warn!(topic = %self.topic, partition = self.partition, "damaged producer snapshot: replaying the whole log");
                    (i64::MIN, ProducerStates::default())
                }
            },
            None => (i64::MIN, ProducerStates::default()),
        };
        for seg in self.segments.values() {
            if seg.next_offset <= from {
                continue;
            }
            for item in segment::headers(&*seg.file, 0, seg.size) {
                let (_, h) = item?;
                if h.base_offset >= from && h.base_offset < end {
                    states.replay(&h, now_ms);
                }
            }
        }
        self.producers = states;
        Ok(())
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
        for item in segment::headers(&*seg.file, 0, start.0) {
            max_ts = max_ts.max(item?.1.max_timestamp);
        }

        // Re-read and verify the rest, re-indexing as appends would have.
        let mut w = IndexWrites::new();
        let (mut pos, mut next) = start;
        let mut since_index = 0u64;
        // Time entries and epochs from the re-read part are rebuilt below
        // (an epoch starting exactly at the recovery point is kept: it may
        // be a new leader's, recorded before it appended anything).
        let mut stale = IndexWrites::new();
        index.delete_time_from_offset(&mut stale, start.1)?;
        let mut epochs = std::mem::take(&mut self.epochs);
        epochs.truncate_from_end(start.1 + 1, &index, &mut stale);
        index.write(stale)?;
        let mut time_max = index.last_time()?.map_or(i64::MIN, |(ts, _)| ts);
        let seg = self.active();
        loop {
            match read_valid_batch(seg, pos, size)? {
                Some((h, len)) if h.base_offset >= next => {
                    if h.leader_epoch > epochs.latest_epoch() {
                        epochs.assign(h.leader_epoch, h.base_offset, &index, &mut w);
                    }
                    if pos == 0 || since_index >= config.index_interval_bytes {
                        index.put_offset(&mut w, h.base_offset, pos as u32);
                        since_index = 0;
                    }
                    since_index += len;
                    if h.max_timestamp > time_max {
                        index.put_time(&mut w, h.max_timestamp, h.base_offset);
                        time_max = h.max_timestamp;
                    }
                    max_ts = max_ts.max(h.max_timestamp);
                    next = h.next_offset();
                    pos += len;
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
        self.epochs = epochs;

        // Forget index entries for what is no longer in the log.
        index.write(w)?;
        let mut w = IndexWrites::new();
        index.delete_offsets(&mut w, next, i64::MAX);
        index.delete_time_from_offset(&mut w, next)?;
        index.write_durable(w)?;
        self.time_index_max = index.last_time()?.map_or(i64::MIN, |(ts, _)| ts);
        Ok(())
    }
}

/// True when every offset-index entry of a closed segment points at the
/// start of the batch it names.
fn offset_index_matches(index: &PartitionIndex, seg: &Segment) -> Result<bool> {
    for (offset, pos) in index.offsets_in(seg.base_offset, seg.next_offset)? {
        match segment::header_at(&*seg.file, u64::from(pos), seg.size)? {
            Some(h) if h.base_offset == offset => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Rewrites a closed segment's offset index from its file.
pub(crate) fn reindex_segment(index: &PartitionIndex, seg: &Segment, config: &TopicConfig) -> Result<()> {
    let mut w = IndexWrites::new();
    index.delete_offsets(&mut w, seg.base_offset, seg.next_offset);
    let mut since = 0u64;
    let mut max_timestamp = i64::MIN;
    for item in segment::headers(&*seg.file, 0, seg.size) {
        let (pos, h) = item?;
        if pos == 0 || since >= config.index_interval_bytes {
            index.put_offset(&mut w, h.base_offset, pos as u32);
            since = 0;
        }
        since += h.total_len() as u64;
        max_timestamp = max_timestamp.max(h.max_timestamp);
    }
    index.put_segment_meta(
        &mut w,
        seg.base_offset,
        index::SegmentMeta { max_timestamp, size: Some(seg.size) },
    );
    index.write_durable(w)
}

/// The batch at `pos` if it is complete and its CRC matches: `(header, len)`.
fn read_valid_batch(seg: &Segment, pos: u64, size: u64) -> Result<Option<(BatchHeader, u64)>> {
    if pos + HEADER_LEN as u64 > size {
        return Ok(None);
    }
    let Some(h) = segment::header_at(&*seg.file, pos, size)? else {
        return Ok(None);
    };
    let len = h.total_len() as u64;
    if pos + len > size {
        return Ok(None);
    }
    let bytes = fs::read_exact_or_eof(&*seg.file, pos, len as usize)?;
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
    for item in segment::headers(&*seg.file, 0, seg.size) {
        max_ts = max_ts.max(item?.1.max_timestamp);
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

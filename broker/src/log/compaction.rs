//! Log compaction (`cleanup.policy=compact`): keep the latest record per key.
//!
//! A pass has three steps, and only the last takes the partition lock:
//! 1. [`PartitionLog::cleaning_plan`] (locked, quick): which closed segments
//!    may be cleaned — those whose newest record is older than
//!    `min.compaction.lag.ms` — and which part of them is new since the last
//!    pass (the "dirty" part).
//! 2. [`CleaningPlan::run`] (unlocked): read the dirty part and record
//!    key → latest offset in the partition's column family (`k` keys, kept
//!    between passes); then rewrite each cleanable segment to a
//!    `<base>.log.cleaned` file holding only records that are the latest for
//!    their key. Tombstones (null values) are kept until they are older than
//!    `delete.retention.ms`, so consumers get to see the delete.
//! 3. [`PartitionLog::swap_cleaned`] (locked, quick): swap each cleaned file
//!    in, crash-safely: `.cleaned` (fsynced) is renamed to `.swap` — from
//!    then on recovery finishes the swap — then the segment's offset index
//!    is rewritten for the new layout (durably, with the new size), then
//!    `.swap` is renamed over the segment. Recovery removes a `.cleaned`
//!    file (the original is intact) and completes a `.swap` file, rebuilding
//!    that segment's index from the file.
//!
//! Offsets never change: a rewritten batch keeps its base offset and each
//! record its offset delta. Appends and reads go on during step 2; reads that
//! opened the old file keep reading it.
//!
//! A truncation during step 2 (a follower cut back to its leader) voids the
//! pass: the cleaned files hold records the truncation removed, and the key
//! map may now name offsets that are gone, so step 3 drops the files and
//! forgets those keys instead of swapping.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tributary_proto::batch::{self, BatchBuilder, ProducerStamp};

use super::fs::{self, LogFile, LogFs};
use super::index::{self, IndexWrites, PartitionIndex};
use super::recovery::{CLEANED_SUFFIX, SWAP_SUFFIX};
use super::segment;
use super::PartitionLog;
use crate::config::TopicConfig;
use crate::error::{Error, Result};

/// One cleanable segment as it was when the plan was made.
struct Target {
    base: i64,
    path: PathBuf,
    file: Arc<dyn LogFile>,
    size: u64,
    max_timestamp: i64,
}

pub struct CleaningPlan {
    fs: Arc<dyn LogFs>,
    index: PartitionIndex,
    log_start: i64,
    targets: Vec<Target>,
    /// Offsets in `[dirty_from, first_uncleanable)` are new since last pass.
    dirty_from: i64,
    first_uncleanable: i64,
    delete_retention_ms: i64,
    now_ms: i64,
    /// The log's truncation count when the plan was made.
    generation: u64,
}

/// A rewritten segment, ready to swap in.
pub struct Cleaned {
    base: i64,
    /// The log's truncation count when its plan was made.
    generation: u64,
    old_file: Arc<dyn LogFile>,
    cleaned_path: PathBuf,
    max_timestamp: i64,
    /// Offset-index entries of the new file.
    entries: Vec<(i64, u32)>,
    size: u64,
}

/// What a pass did, for logs and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct CleaningStats {
    pub segments: usize,
    pub records_kept: u64,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("compaction: {e}"))
}

impl PartitionLog {
    /// Decides what a cleaning pass would do, or None when there is nothing
    /// to do.
    pub fn cleaning_plan(&self, config: &TopicConfig, now_ms: i64) -> Result<Option<CleaningPlan>> {
        self.shared.check()?;
        if !config.cleanup_policy.compact {
            return Ok(None);
        }
        let mut targets = Vec::new();
        let mut first_uncleanable = self.log_start_offset;
        for seg in self.segments.values().take(self.segments.len().saturating_sub(1)) {
            if seg.max_timestamp > now_ms - config.min_compaction_lag_ms {
                break;
            }
            first_uncleanable = seg.next_offset;
            targets.push(Target {
                base: seg.base_offset,
                path: seg.path.clone(),
                file: seg.file.clone(),
                size: seg.size,
                max_timestamp: seg.max_timestamp,
            });
        }
        let dirty_from = self
            .index
            .meta_i64(index::META_CLEANER_CHECKPOINT)?
            .unwrap_or(self.log_start_offset)
            .max(self.log_start_offset);
        let tombstones_due = self.index.meta_i64(META_TOMBSTONE_DUE)?.is_some_and(|due| due <= now_ms);
        if targets.is_empty() || (dirty_from >= first_uncleanable && !tombstones_due) {
            return Ok(None);
        }
        Ok(Some(CleaningPlan {
            fs: self.fs.clone(),
            index: self.index.clone(),
            log_start: self.log_start_offset,
            targets,
            dirty_from,
            first_uncleanable,
            delete_retention_ms: config.delete_retention_ms,
            now_ms,
            generation: self.shared.generation(),
        }))
    }

    /// Step 3: swaps rewritten segments in (see the module docs for the
    /// crash-safe order). A segment that retention deleted meanwhile is
    /// skipped (its cleaned file removed).
    pub fn swap_cleaned(&mut self, cleaned: Vec<Cleaned>) -> Result<()> {
        self.shared.check()?;
        let generation = self.shared.generation();
        if cleaned.iter().any(|c| c.generation != generation) {
            return self.void_cleaning(cleaned);
        }
        for c in cleaned {
            let live = self.segments.get(&c.base).is_some_and(|s| Arc::ptr_eq(&s.file, &c.old_file));
            if !live {
                self.fs.remove_file(&c.cleaned_path).ok();
                continue;
            }
            let path = self
                .segments
                .get(&c.base)
                .map(|s| s.path.clone())
                .ok_or_else(|| storage("segment vanished"))?;
            let next_offset = self.segments.get(&c.base).map_or(c.base, |s| s.next_offset);
            let swap_path = fs::with_suffix(&path, SWAP_SUFFIX);
            self.fs.rename(&c.cleaned_path, &swap_path)?;
            self.fs.sync_dir(&self.dir)?;
            let mut w = IndexWrites::new();
            self.index.delete_offsets(&mut w, c.base, next_offset);
            for (offset, pos) in &c.entries {
                self.index.put_offset(&mut w, *offset, *pos);
            }
            self.index.put_segment_meta(
                &mut w,
                c.base,
                index::SegmentMeta { max_timestamp: c.max_timestamp, size: Some(c.size) },
            );
            self.index.write_durable(w)?;
            // From here the index describes the new file: failing to put it
            // in place would serve wrong positions, so that takes the log
            // offline (the next start finishes the swap).
            let reopened = self.fs.rename(&swap_path, &path).and_then(|()| {
                self.fs.sync_dir(&self.dir)?;
                self.fs.open(&path)
            });
            match reopened {
                Ok(file) => {
                    if let Some(seg) = self.segments.get_mut(&c.base) {
                        seg.file = file;
                        seg.size = c.size;
                    }
                }
                Err(e) => {
                    self.shared.fail(format!("compaction swap of {} failed: {e}", path.display()));
                    return self.shared.check();
                }
            }
        }
        Ok(())
    }

    /// A pass that overlapped a truncation: its files are dropped, and keys
    /// it may have mapped to truncated offsets are forgotten (a key without
    /// an entry is kept, never cleaned away), with the cleaner checkpoint
    /// moved back so the next pass maps them again.
    fn void_cleaning(&mut self, cleaned: Vec<Cleaned>) -> Result<()> {
        for c in cleaned {
            self.fs.remove_file(&c.cleaned_path).ok();
        }
        let from = self.lowest_truncation;
        let mut w = IndexWrites::new();
        for key in self.index.keys_from(from)? {
            self.index.delete_key(&mut w, &key);
        }
        if self.index.meta_i64(index::META_CLEANER_CHECKPOINT)?.is_some_and(|c| c > from) {
            self.index.put_meta(&mut w, index::META_CLEANER_CHECKPOINT, &(from as u64).to_be_bytes());
        }
        self.index.write_durable(w)
    }
}

const META_TOMBSTONE_DUE: &str = "tombstone_due";

impl CleaningPlan {
    /// Step 2. Returns the rewritten segments to swap in and what changed.
    pub fn run(self) -> Result<(Vec<Cleaned>, CleaningStats)> {
        self.record_latest_offsets()?;
        let mut stats = CleaningStats::default();
        let mut out = Vec::new();
        let mut expired_tombstones: Vec<(Bytes, i64)> = Vec::new();
        let mut next_tombstone_due: Option<i64> = None;
        for t in &self.targets {
            let cleaned = self.rewrite(t, &mut stats, &mut expired_tombstones, &mut next_tombstone_due)?;
            if let Some(c) = cleaned {
                out.push(c);
            }
        }
        // Advance the checkpoint and forget expired tombstones' keys (only if
        // no newer record for the key has come since), and keys whose
        // records retention deleted (`compact,delete`), so the key map
        // stays as large as the log, not as every key ever seen.
        let mut w = IndexWrites::new();
        for (key, offset) in expired_tombstones {
            if self.index.key_offset(&key)? == Some(offset) {
                self.index.delete_key(&mut w, &key);
            }
        }
        for key in self.index.keys_below(self.log_start)? {
            self.index.delete_key(&mut w, &key);
        }
        self.index.put_meta(
            &mut w,
            index::META_CLEANER_CHECKPOINT,
            &(self.first_uncleanable as u64).to_be_bytes(),
        );
        match next_tombstone_due {
            Some(due) => self.index.put_meta(&mut w, META_TOMBSTONE_DUE, &(due as u64).to_be_bytes()),
            None => self.index.delete_meta(&mut w, META_TOMBSTONE_DUE),
        }
        self.index.write(w)?;
        Ok((out, stats))
    }

    /// Reads the dirty part and stores key → latest offset.
    fn record_latest_offsets(&self) -> Result<()> {
        let mut w = IndexWrites::new();
        let mut pending = 0usize;
        for t in &self.targets {
            for_each_batch(&*t.file, t.size, |batch_bytes| {
                let header = batch::BatchHeader::parse(batch_bytes).map_err(storage)?;
                if header.next_offset() <= self.dirty_from || header.base_offset >= self.first_uncleanable {
                    return Ok(());
                }
                let bytes = Bytes::copy_from_slice(batch_bytes);
                for r in batch::records(&bytes).map_err(storage)? {
                    let r = r.map_err(storage)?;
                    if r.offset < self.dirty_from || r.offset >= self.first_uncleanable {
                        continue;
                    }
                    if let Some(key) = &r.key {
                        self.index.put_key_offset(&mut w, key, r.offset);
                        pending += 1;
                    }
                }
                if pending >= 10_000 {
                    self.index.write(std::mem::take(&mut w))?;
                    pending = 0;
                }
                Ok(())
            })?;
        }
        self.index.write(w)
    }

    fn rewrite(
        &self,
        t: &Target,
        stats: &mut CleaningStats,
        expired: &mut Vec<(Bytes, i64)>,
        next_due: &mut Option<i64>,
    ) -> Result<Option<Cleaned>> {
        let cleaned_path = fs::with_suffix(&t.path, CLEANED_SUFFIX);
        let file = self.fs.create(&cleaned_path)?;
        let mut out = ChunkWriter { file: &*file, buf: Vec::with_capacity(1 << 20), written: 0 };
        let mut entries = Vec::new();
        let mut size = 0u64;
        let mut changed = false;
        let mut seg_stats = CleaningStats { segments: 1, bytes_before: t.size, ..Default::default() };
        for_each_batch(&*t.file, t.size, |batch_bytes| {
            let header = batch::BatchHeader::parse(batch_bytes).map_err(storage)?;
            let bytes = Bytes::copy_from_slice(batch_bytes);
            let mut keep = Vec::new();
            let mut total = 0u32;
            for r in batch::records(&bytes).map_err(storage)? {
                let r = r.map_err(storage)?;
                total += 1;
                let latest = match &r.key {
                    // Keyless records (from before the topic was compacted)
                    // cannot be compacted; they are kept.
                    None => true,
                    Some(k) => self.index.key_offset(k)?.is_none_or(|o| o <= r.offset),
                };
                if !latest {
                    continue;
                }
                if r.value.is_none() {
                    let due = r.timestamp.saturating_add(self.delete_retention_ms);
                    if due <= self.now_ms {
                        if let Some(k) = &r.key {
                            expired.push((k.clone(), r.offset));
                        }
                        continue;
                    }
                    *next_due = Some(next_due.map_or(due, |d: i64| d.min(due)));
                }
                keep.push(r);
            }
            seg_stats.records_kept += keep.len() as u64;
            seg_stats.records_removed += u64::from(total) - keep.len() as u64;
            if keep.is_empty() {
                changed = true;
                return Ok(());
            }
            let rewritten;
            let piece: &[u8] = if keep.len() as u32 == total {
                batch_bytes
            } else {
                changed = true;
                rewritten = reencode(&header, &keep)?;
                &rewritten
            };
            entries.push((header.base_offset, size as u32));
            out.write(piece)?;
            size += piece.len() as u64;
            Ok(())
        })?;
        out.flush()?;
        if !changed {
            drop(file);
            self.fs.remove_file(&cleaned_path)?;
            stats.records_kept += seg_stats.records_kept;
            stats.bytes_before += t.size;
            stats.bytes_after += t.size;
            return Ok(None);
        }
        file.sync()?;
        seg_stats.bytes_after = size;
        stats.segments += 1;
        stats.records_kept += seg_stats.records_kept;
        stats.records_removed += seg_stats.records_removed;
        stats.bytes_before += seg_stats.bytes_before;
        stats.bytes_after += size;
        Ok(Some(Cleaned {
            base: t.base,
            generation: self.generation,
            old_file: t.file.clone(),
            cleaned_path,
            max_timestamp: t.max_timestamp,
            entries,
            size,
        }))
    }
}

/// A batch holding only `keep`, with the original base offset, offsets,
/// timestamps, compression and producer fields.
fn reencode(header: &batch::BatchHeader, keep: &[batch::Record]) -> Result<Vec<u8>> {
    let compression = header.compression().map_err(storage)?;
    let mut b = BatchBuilder::new(compression, header.base_timestamp);
    b.set_producer(ProducerStamp {
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        base_sequence: header.base_sequence,
    });
    for r in keep {
        let headers: Vec<(&str, Option<&[u8]>)> =
            r.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref())).collect();
        let delta = (r.offset - header.base_offset) as i32;
        b.append_at(delta, r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers);
    }
    let mut out = b.build().to_vec();
    batch::set_base_offset(&mut out, header.base_offset);
    batch::set_leader_epoch(&mut out, header.leader_epoch);
    Ok(out)
}

/// Buffers sequential writes into ~1 MiB positioned writes.
struct ChunkWriter<'a> {
    file: &'a dyn LogFile,
    buf: Vec<u8>,
    written: u64,
}

impl ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.written)?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Calls `f` with each whole batch of a segment, in order.
fn for_each_batch(file: &dyn LogFile, size: u64, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    for item in segment::headers(file, 0, size) {
        let (pos, h) = item?;
        let len = h.total_len();
        if pos + len as u64 > size {
            break;
        }
        f(&segment::read_at(file, pos, len)?)?;
    }
    Ok(())
}

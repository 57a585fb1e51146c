//! Cutting a log back to an offset: what a follower does when its log
//! diverged from its leader's (Kafka's `truncateTo`), and how a replicated
//! append that failed part-way is undone.
//!
//! The segment files are the truth, and they change in an order where a
//! crash or power loss at any point leaves a prefix of the old log, with an
//! index recovery can bring in line:
//! 1. Index state that is safe to lose even if the files then stay as they
//!    are goes first, in one durable write: compaction key-map entries at or
//!    past the new end (a key without an entry is kept, never cleaned away),
//!    producer snapshots past it (an older one plus replay gives the same
//!    state), and the cleaner and high-watermark checkpoints come down to it.
//! 2. Segments wholly above the cut are removed, newest first, each removal
//!    made durable (directory fsync) before the next: whatever survives is a
//!    prefix, never a log with a hole.
//! 3. The segment holding the cut is cut and fsynced (so everything kept is
//!    durable).
//! 4. The rest of the index follows in one durable write: offset and time
//!    entries, segment metadata and epochs at or past the new end, and a
//!    recovery point at the cut. A crash before this write is covered by
//!    recovery, which drops the same things past the end it finds.
//!
//! A failure in step 1 changes nothing. A failure after it takes the log
//! offline (files and memory may disagree); the restart's recovery opens a
//! prefix of the old log.

use super::index::{self, IndexWrites};
use super::segment::{self, Segment};
use super::PartitionLog;
use crate::error::{Error, Result};

/// Where a truncation cuts: in the segment at `base`, at byte `position`;
/// the log ends at `end` afterwards.
#[derive(Debug, Clone, Copy)]
struct Cut {
    base: i64,
    position: u64,
    end: i64,
}

impl PartitionLog {
    /// Removes every record at and above `offset`; the whole batch holding
    /// `offset` goes. The log then ends right after the last batch kept (a
    /// batch boundary `<= offset`; below `offset` when compaction left a gap
    /// there, so that no reader is left below the log end with nothing to
    /// read), in that batch's segment: a segment left empty goes too.
    /// Indexes, producer state, the epoch cache, the durable end, the high
    /// watermark (and its checkpoint) and the recovery point come back in
    /// line. Refuses to go below the log start.
    ///
    /// With `offset >= log end` the records stay, but epochs that start at
    /// or past the log end are dropped (as Kafka does): a replica that led
    /// an epoch without appending anything must not go on claiming it, or
    /// a follower's epoch reconciliation would never agree with the leader.
    pub fn truncate_to(&mut self, offset: i64, now_ms: i64) -> Result<()> {
        self.shared.check()?;
        if offset < self.log_start_offset {
            return Err(self.out_of_range(offset));
        }
        if offset >= self.log_end_offset {
            return self.drop_epochs_from(self.log_end_offset);
        }
        let cut = self.find_cut(offset)?;
        tracing::info!(
            topic = %self.topic,
            partition = self.partition,
            offset,
            new_end = cut.end,
            old_end = self.log_end_offset,
            "truncating the log"
        );
        self.forget_past(cut.end)?;
        self.begin_truncation(cut.end);
        let done = self.cut_files(cut).and_then(|()| self.cut_index(cut));
        if let Err(e) = done {
            self.shared.fail(format!("truncating to offset {offset} failed: {e}"));
            return self.shared.check();
        }
        self.finish_truncation(cut, now_ms)
    }

    fn out_of_range(&self, offset: i64) -> Error {
        Error::OffsetOutOfRange {
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
            start: self.log_start_offset,
            end: self.log_end_offset,
        }
    }

    /// Drops epochs starting at or after `end` (durably).
    fn drop_epochs_from(&mut self, end: i64) -> Result<()> {
        let mut epochs = self.epochs.clone();
        let mut w = IndexWrites::new();
        if epochs.truncate_from_end(end, &self.index, &mut w) {
            self.index.write_durable(w)?;
            self.epochs = epochs;
        }
        Ok(())
    }

    /// Where a truncation to `offset` cuts: after the last batch that holds
    /// only offsets below `offset`, searching back through segments that
    /// would be left empty; at the log start when no batch is kept.
    fn find_cut(&self, offset: i64) -> Result<Cut> {
        let start = self.log_start_offset;
        let (&base, seg) = self
            .segments
            .range(..=offset)
            .next_back()
            .ok_or_else(|| Error::Storage(format!("no segment holds offset {offset}")))?;
        let from = match self.index.offset_floor(offset)? {
            Some((indexed, pos)) if indexed >= base => u64::from(pos),
            _ => 0,
        };
        let mut position = seg.size;
        let mut kept_end = None;
        for item in segment::headers(&*seg.file, from, seg.size) {
            let (pos, h) = item?;
            if h.next_offset() > offset {
                position = pos;
                break;
            }
            kept_end = Some(h.next_offset());
        }
        if kept_end.is_none() && position > 0 {
            kept_end = last_batch_end(seg, position)?;
        }
        if let Some(end) = kept_end {
            return Ok(Cut { base, position, end: end.max(start) });
        }
        for (&earlier, seg) in self.segments.range(..base).rev() {
            if let Some(end) = last_batch_end(seg, seg.size)? {
                return Ok(Cut { base: earlier, position: seg.size, end: end.max(start) });
            }
        }
        let first = self.segments.keys().next().copied().unwrap_or(base);
        Ok(Cut { base: first, position: 0, end: start })
    }

    /// Step 1: index state that may go whether or not the files change.
    fn forget_past(&mut self, end: i64) -> Result<()> {
        let mut w = IndexWrites::new();
        for key in self.index.keys_from(end)? {
            self.index.delete_key(&mut w, &key);
        }
        if self.index.meta_i64(index::META_CLEANER_CHECKPOINT)?.is_some_and(|c| c > end) {
            self.index.put_meta(&mut w, index::META_CLEANER_CHECKPOINT, &(end as u64).to_be_bytes());
        }
        self.index.delete_producer_snapshots(&mut w, end + 1, i64::MAX);
        if self.hw_checkpointed {
            let hw = self.high_watermark().min(end);
            self.index.put_meta(&mut w, index::META_HIGH_WATERMARK, &(hw as u64).to_be_bytes());
        }
        self.index.write_durable(w)
    }

    /// From here on nothing may count on offsets at or past `end`: fsyncs
    /// in flight stop recording (the truncation count moves), and the
    /// durable end, the high watermark and the replica bound come down.
    fn begin_truncation(&mut self, end: i64) {
        {
            let mut truncations = self.shared.truncations.lock();
            *truncations += 1;
            self.shared.durable_end.fetch_min(end, std::sync::atomic::Ordering::AcqRel);
        }
        let hw = (*self.shared.hw.borrow()).min(end);
        self.shared.reset_hw(hw);
        if let Some(bound) = self.shared.replica_bound() {
            self.shared.set_replica_bound(Some(bound.min(end)));
        }
        self.lowest_truncation = self.lowest_truncation.min(end);
    }

    /// Steps 2 and 3: the files.
    fn cut_files(&mut self, cut: Cut) -> Result<()> {
        let above: Vec<i64> = self.segments.range(cut.base + 1..).map(|(b, _)| *b).rev().collect();
        for base in above {
            if let Some(seg) = self.segments.remove(&base) {
                // Readers holding the file open keep reading it.
                self.fs
                    .remove_file(&seg.path)
                    .map_err(|e| Error::from_io("removing a truncated segment", e))?;
                self.fs
                    .sync_dir(&self.dir)
                    .map_err(|e| Error::from_io("syncing the partition directory", e))?;
            }
        }
        let seg = self
            .segments
            .get_mut(&cut.base)
            .ok_or_else(|| Error::Storage(format!("segment {} vanished", cut.base)))?;
        seg.truncate(cut.position).map_err(|e| Error::from_io("cutting the segment", e))?;
        self.shared.durable_end.store(cut.end, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Step 4: the index entries that describe what was cut.
    fn cut_index(&mut self, cut: Cut) -> Result<()> {
        let end = cut.end;
        let mut w = IndexWrites::new();
        self.index.delete_offsets(&mut w, end, i64::MAX);
        self.index.delete_time_from_offset(&mut w, end)?;
        // The cut segment is the active one now; its metadata and that of
        // the removed ones describe files that are gone.
        self.index.delete_segment_metas_from(&mut w, cut.base);
        let mut epochs = self.epochs.clone();
        epochs.truncate_from_end(end, &self.index, &mut w);
        let point = super::recovery::RecoveryPoint {
            base_offset: cut.base,
            position: cut.position,
            next_offset: end,
        };
        self.index.put_meta(&mut w, index::META_RECOVERY_POINT, &point.encode());
        self.index.write_durable(w)?;
        self.epochs = epochs;
        Ok(())
    }

    /// In-memory state after the cut: the active segment, the log end, the
    /// index positions appends continue from, producer state.
    fn finish_truncation(&mut self, cut: Cut, now_ms: i64) -> Result<()> {
        let index = self.index.clone();
        let seg = self
            .segments
            .get_mut(&cut.base)
            .ok_or_else(|| Error::Storage(format!("segment {} vanished", cut.base)))?;
        let mut max_ts = i64::MIN;
        for item in segment::headers(&*seg.file, 0, cut.position) {
            max_ts = max_ts.max(item?.1.max_timestamp);
        }
        seg.next_offset = cut.end;
        seg.max_timestamp = max_ts;
        seg.first_append_ms = if seg.is_empty() { None } else { Some(seg.first_append_ms.unwrap_or(now_ms)) };
        // Index entries are written every `index.interval.bytes` from the
        // last one, as on the leader: count from the last entry kept.
        self.bytes_since_index = match index.offset_floor(cut.end - 1)? {
            Some((offset, pos)) if offset >= cut.base => cut.position - u64::from(pos),
            _ => cut.position,
        };
        self.time_index_max = index.last_time()?.map_or(i64::MIN, |(ts, _)| ts);
        self.log_end_offset = cut.end;
        self.unflushed = 0;
        // Snapshots past the end are gone (step 1): the newest left, plus
        // the batches after it, is the producer state at the new end.
        self.rebuild_producers(now_ms)?;
        self.publish_high_watermark();
        Ok(())
    }
}

/// The next offset after the last batch in the first `size` bytes of `seg`.
fn last_batch_end(seg: &Segment, size: u64) -> Result<Option<i64>> {
    let mut end = None;
    for item in segment::headers(&*seg.file, 0, size) {
        end = Some(item?.1.next_offset());
    }
    Ok(end)
}

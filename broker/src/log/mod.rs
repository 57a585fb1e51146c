//! The log of one partition: an ordered run of segment files plus its
//! RocksDB indexes.
//!
//! * [`segment`]: one file of batches.
//! * [`index`]: the partition's column family (offset and time indexes, ...).
//! * [`recovery`]: opening a log after a clean or an unclean stop.
//! * [`retention`]: rolling segments and deleting old ones.
//! * [`compaction`]: keeping the latest record per key.
//!
//! `PartitionLog` is used under its partition's mutex. Appends and index
//! updates happen inside it; reads only take it to find what to read (a file
//! handle and a byte range), then read without it.

pub mod compaction;
pub mod index;
pub mod producer_state;
pub mod recovery;
pub mod retention;
pub mod segment;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tributary_proto::batch::{self, set_base_offset, set_leader_epoch, Batches};

use crate::config::TopicConfig;
use crate::error::{Error, Result};
use index::{IndexWrites, PartitionIndex};
use segment::Segment;

pub struct PartitionLog {
    pub topic: String,
    pub partition: u32,
    dir: PathBuf,
    index: PartitionIndex,
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    log_end_offset: i64,
    leader_epoch: i32,
    /// Bytes appended since the last offset-index entry.
    bytes_since_index: u64,
    /// Largest timestamp the time index has an entry for.
    time_index_max: i64,
    /// Records appended since the last fsync, and when that was.
    unflushed: i64,
    last_flush_ms: i64,
    /// Idempotent producers' recent batches.
    producers: producer_state::ProducerStates,
}

/// Where an append landed.
pub struct AppendInfo {
    /// Offset of the first batch (for a retried batch: the offset it got
    /// the first time).
    pub base_offset: i64,
    /// Base offset of each batch, in the order sent.
    pub batch_base_offsets: Vec<i64>,
    pub last_offset: i64,
    pub records: i64,
    /// Set when the flush policy wants the segment fsynced before the
    /// producer is answered; the caller syncs it outside the partition lock.
    pub sync: Option<FlushTicket>,
}

/// An fsync owed by the flush policy, done outside the partition lock.
pub struct FlushTicket {
    file: Arc<File>,
    index: PartitionIndex,
    point: recovery::RecoveryPoint,
}

impl FlushTicket {
    /// fsyncs the segment, then records the new recovery point (after the
    /// sync, so it never claims more than is on disk).
    pub fn sync(self) -> Result<()> {
        self.file.sync_data()?;
        let mut w = IndexWrites::new();
        self.index.put_meta(&mut w, index::META_RECOVERY_POINT, &self.point.encode())?;
        self.index.write(w)
    }
}

/// What a read has to fetch, found under the partition lock and read
/// without it.
pub enum Locate {
    OutOfRange {
        start: i64,
        end: i64,
    },
    /// The offset is the log end: nothing to read yet.
    AtEnd,
    Read(ReadPlan),
}

pub struct ReadPlan {
    file: Arc<File>,
    /// Position to start looking for the batch that holds `target`.
    scan_from: u64,
    /// End of the readable bytes of this segment.
    end: u64,
    target: i64,
}

impl ReadPlan {
    /// Whole batches from the one holding `target` on, at most `max_bytes`
    /// (but always at least one batch, so a large batch can't wedge a reader).
    pub fn read(&self, max_bytes: usize) -> io::Result<Bytes> {
        let mut pos = self.scan_from;
        let first = loop {
            let Some(h) = segment::header_at(&self.file, pos, self.end)? else {
                return Ok(Bytes::new());
            };
            if h.next_offset() > self.target {
                break h;
            }
            pos += h.total_len() as u64;
        };
        let available = (self.end - pos) as usize;
        let want = first.total_len().max(max_bytes).min(available);
        let mut buf = segment::read_at(&self.file, pos, want)?;
        let mut whole = 0;
        for b in Batches::new(&buf) {
            match b {
                Ok((_, slice)) => whole += slice.len(),
                Err(_) => break,
            }
        }
        buf.truncate(whole);
        Ok(Bytes::from(buf))
    }
}

impl PartitionLog {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn index(&self) -> &PartitionIndex {
        &self.index
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }

    /// Highest offset consumers may read up to (exclusive). Equal to the log
    /// end on a single broker; replication will hold it back to what the
    /// in-sync replicas have.
    pub fn high_watermark(&self) -> i64 {
        self.log_end_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has an active segment")
    }

    /// Appends batches that were already validated (`batch::verify`),
    /// stamping each with its offset and the leader epoch. Batches an
    /// idempotent producer already wrote are skipped (their first offsets are
    /// reported); a sequence gap or a fenced epoch refuses the whole call
    /// before anything is written.
    pub fn append(&mut self, data: &[u8], config: &TopicConfig, now_ms: i64) -> Result<AppendInfo> {
        self.maybe_roll(data.len() as u64, config, now_ms)?;
        let mut buf = Vec::with_capacity(data.len());
        let mut next = self.log_end_offset;
        let mut records = 0i64;
        let mut max_ts = i64::MIN;
        let mut w = IndexWrites::new();
        let segment_pos = self.active().size;
        let segment_was_empty = segment_pos == 0;
        let mut batch_base_offsets = Vec::new();
        // Checked against a copy so a refused call leaves the state as it was.
        let mut producers_touched = Vec::new();
        for b in Batches::new(data) {
            let (header, bytes) =
                b.map_err(|e| Error::Storage(format!("append of an unvalidated batch: {e}")))?;
            match self.producers.check(&header) {
                producer_state::SeqCheck::Append => {}
                producer_state::SeqCheck::Duplicate { base_offset } => {
                    batch_base_offsets.push(base_offset);
                    continue;
                }
                producer_state::SeqCheck::OutOfOrder { expected, got } => {
                    self.rollback_producers(producers_touched);
                    return Err(Error::OutOfOrderSequence {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        producer_id: header.producer_id,
                        expected,
                        got,
                    });
                }
                producer_state::SeqCheck::Fenced { current_epoch, got } => {
                    self.rollback_producers(producers_touched);
                    return Err(Error::InvalidProducerEpoch {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        producer_id: header.producer_id,
                        current_epoch,
                        got,
                    });
                }
            }
            if header.producer_id >= 0 {
                producers_touched.push((header.producer_id, self.producers.get(header.producer_id).cloned()));
                self.producers.record(&header, next);
            }
            let pos = buf.len();
            buf.extend_from_slice(bytes);
            set_base_offset(&mut buf[pos..], next);
            set_leader_epoch(&mut buf[pos..], self.leader_epoch);
            if (segment_was_empty && pos == 0) || self.bytes_since_index >= config.index_interval_bytes {
                self.index.put_offset(&mut w, next, (segment_pos + pos as u64) as u32)?;
                self.bytes_since_index = 0;
            }
            self.bytes_since_index += bytes.len() as u64;
            if header.max_timestamp > self.time_index_max {
                self.index.put_time(&mut w, header.max_timestamp, next)?;
                self.time_index_max = header.max_timestamp;
            }
            batch_base_offsets.push(next);
            max_ts = max_ts.max(header.max_timestamp);
            next += i64::from(header.last_offset_delta) + 1;
            records += i64::from(header.record_count);
        }
        for (pid, _) in &producers_touched {
            if let Some(entry) = self.producers.get(*pid) {
                self.index.put_producer(&mut w, *pid, &entry.encode())?;
            }
        }
        let base_offset = batch_base_offsets.first().copied().unwrap_or(self.log_end_offset);
        if buf.is_empty() {
            // Only retries of batches already stored: nothing to write.
            return Ok(AppendInfo {
                base_offset,
                batch_base_offsets,
                last_offset: next - 1,
                records: 0,
                sync: None,
            });
        }
        let active = self.active();
        // Data first, index second: an index entry never points past the file.
        active.append(&buf)?;
        active.next_offset = next;
        active.max_timestamp = active.max_timestamp.max(max_ts);
        active.first_append_ms.get_or_insert(now_ms);
        self.index.write(w)?;
        self.log_end_offset = next;
        self.unflushed += records;
        let sync =
            if self.unflushed >= config.flush_messages { Some(self.flush_ticket(now_ms)) } else { None };
        Ok(AppendInfo { base_offset, batch_base_offsets, last_offset: next - 1, records, sync })
    }

    /// Undoes producer-state changes of a refused append (newest first).
    fn rollback_producers(&mut self, touched: Vec<(i64, Option<producer_state::ProducerEntry>)>) {
        for (pid, before) in touched.into_iter().rev() {
            match before {
                Some(entry) => self.producers.insert(pid, entry),
                None => self.producers.remove(pid),
            }
        }
    }

    /// The active segment's file when `flush.ms` has passed with records
    /// still unflushed; the caller fsyncs it.
    pub fn due_flush(&mut self, config: &TopicConfig, now_ms: i64) -> Option<FlushTicket> {
        if self.unflushed > 0 && now_ms - self.last_flush_ms >= config.flush_ms {
            return Some(self.flush_ticket(now_ms));
        }
        None
    }

    fn flush_ticket(&mut self, now_ms: i64) -> FlushTicket {
        self.unflushed = 0;
        self.last_flush_ms = now_ms;
        let next_offset = self.log_end_offset;
        let index = self.index.clone();
        let active = self.active();
        FlushTicket {
            file: active.file.clone(),
            index,
            point: recovery::RecoveryPoint {
                base_offset: active.base_offset,
                position: active.size,
                next_offset,
            },
        }
    }

    fn maybe_roll(&mut self, incoming: u64, config: &TopicConfig, now_ms: i64) -> Result<()> {
        let active = self.active();
        if active.is_empty() {
            return Ok(());
        }
        let too_big = active.size + incoming > config.segment_bytes;
        let too_old = active.first_append_ms.is_some_and(|t| now_ms - t >= config.segment_ms);
        if too_big || too_old {
            self.roll()?;
        }
        Ok(())
    }

    /// Closes the active segment (fsynced, its max timestamp recorded) and
    /// starts a new one at the log end.
    pub fn roll(&mut self) -> Result<()> {
        let next = self.log_end_offset;
        let active = self.active();
        if active.is_empty() {
            return Ok(());
        }
        active.file.sync_data()?;
        let (base, max_ts) = (active.base_offset, active.max_timestamp);
        let mut w = IndexWrites::new();
        self.index.put_segment_max_ts(&mut w, base, max_ts)?;
        let point = recovery::RecoveryPoint { base_offset: next, position: 0, next_offset: next };
        self.index.put_meta(&mut w, index::META_RECOVERY_POINT, &point.encode())?;
        // Durable: also makes every index entry of the closed segment durable.
        self.index.write_durable(w)?;
        let segment = Segment::create(&self.dir, next)?;
        self.segments.insert(next, segment);
        Ok(())
    }

    /// Finds what to read for `offset`.
    pub fn locate(&self, offset: i64) -> Result<Locate> {
        let hw = self.high_watermark();
        if offset < self.log_start_offset || offset > hw {
            return Ok(Locate::OutOfRange { start: self.log_start_offset, end: hw });
        }
        if offset == hw {
            return Ok(Locate::AtEnd);
        }
        // The first segment at or after the one whose range holds `offset`
        // that still has data past it (compaction can empty ranges).
        let from = self.segments.range(..=offset).next_back().map_or(i64::MIN, |(b, _)| *b);
        for (_, seg) in self.segments.range(from..) {
            if seg.next_offset <= offset || seg.is_empty() {
                continue;
            }
            let scan_from = match self.index.offset_floor(offset)? {
                Some((indexed, pos)) if indexed >= seg.base_offset && seg.base_offset <= offset => {
                    u64::from(pos)
                }
                _ => 0,
            };
            return Ok(Locate::Read(ReadPlan {
                file: seg.file.clone(),
                scan_from,
                end: seg.size,
                target: offset,
            }));
        }
        Ok(Locate::AtEnd)
    }

    /// First offset whose record timestamp is `>= ts`, with that timestamp.
    pub fn offset_for_time(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        let Some((_, offset)) = self.index.time_ceiling(ts)? else {
            return Ok(None);
        };
        let mut at = offset.max(self.log_start_offset);
        // The indexed batch is the first whose max timestamp reaches `ts`; the
        // record is in it (or, after compaction, in a later batch).
        loop {
            let plan = match self.locate(at)? {
                Locate::Read(plan) => plan,
                _ => return Ok(None),
            };
            let data = plan.read(1)?;
            let Some(Ok((header, _))) = Batches::new(&data).next() else {
                return Ok(None);
            };
            let batch_bytes = data.slice(..header.total_len());
            let records = batch::records(&batch_bytes)
                .map_err(|e| Error::Storage(format!("stored batch unreadable: {e}")))?;
            for r in records {
                let r = r.map_err(|e| Error::Storage(format!("stored record unreadable: {e}")))?;
                if r.offset >= at && r.timestamp >= ts {
                    return Ok(Some((r.offset, r.timestamp)));
                }
            }
            at = header.next_offset();
        }
    }

    /// Clean shutdown: fsync the active segment and record where the log ends,
    /// so the next start skips the recovery scan.
    pub fn close(&mut self) -> Result<()> {
        let time_index_max = self.time_index_max;
        let bytes_since_index = self.bytes_since_index;
        let active = self.active();
        active.file.sync_all()?;
        let marker = recovery::CleanShutdown {
            base_offset: active.base_offset,
            size: active.size,
            next_offset: active.next_offset,
            max_timestamp: active.max_timestamp,
            time_index_max,
            bytes_since_index,
        };
        let mut w = IndexWrites::new();
        self.index.put_meta(&mut w, index::META_CLEAN_SHUTDOWN, &marker.encode())?;
        self.index.write_durable(w)
    }

    /// Segments other than the active one, oldest first: `(base, next_offset,
    /// max_timestamp, size)`.
    pub fn closed_segments(&self) -> Vec<(i64, i64, i64, u64)> {
        let n = self.segments.len();
        self.segments
            .values()
            .take(n.saturating_sub(1))
            .map(|s| (s.base_offset, s.next_offset, s.max_timestamp, s.size))
            .collect()
    }
}

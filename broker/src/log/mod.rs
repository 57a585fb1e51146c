//! The log of one partition: an ordered run of segment files plus its
//! RocksDB indexes.
//!
//! * [`segment`]: one file of batches.
//! * [`index`]: the partition's column family (offset and time indexes, ...).
//! * [`recovery`]: opening a log after a clean or an unclean stop.
//! * [`retention`]: rolling segments and deleting old ones.
//! * [`compaction`]: keeping the latest record per key.
//! * [`replication`]: what partition replication needs of a log: the
//!   follower's append, leader epochs ([`epochs`]), reads up to the log end,
//!   and the replicated bound on the high watermark.
//! * [`truncate`]: cutting a diverged follower's log back.
//! * [`fs`] and [`index_store`]: the seams every file and index write goes
//!   through; [`fault`] is their fault-injecting test implementation.
//!
//! `PartitionLog` is used under its partition's mutex. Appends and index
//! updates happen inside it; reads only take it to find what to read (a file
//! handle and a byte range), then read without it.
//!
//! Failure rules (they are what replication builds on):
//! * An append happens whole or leaves no trace: on any failure the segment
//!   is cut back to where it ended and no in-memory or index state moves.
//! * An fsync failure takes the log offline (as Kafka marks a log directory
//!   offline): after a failed fsync the page cache may have dropped the
//!   data, so nothing that depended on it may be acknowledged or served
//!   until a restart re-verifies the files.
//! * The published high watermark never moves backwards, except when a
//!   truncation removes what it covered: a consumer never sees a record
//!   and then a high watermark below it.

pub mod compaction;
pub mod epochs;
pub mod fault;
pub mod fs;
pub mod index;
pub mod index_store;
pub mod producer_state;
pub mod recovery;
pub mod replication;
pub mod retention;
pub mod segment;
pub mod truncate;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tributary_proto::batch::{self, set_base_offset, set_leader_epoch, BatchHeader, Batches};

use crate::config::TopicConfig;
use crate::error::{Error, Result};
use fs::{LogFile, LogFs};
use index::{IndexWrites, PartitionIndex};
use segment::Segment;

/// State a log shares with work done outside its lock (fsyncs, readers).
pub struct LogShared {
    /// `<topic>-<partition>`, for messages.
    name: String,
    /// Offsets below this are on disk (covered by a completed fsync).
    durable_end: AtomicI64,
    /// flush.messages=1: consumers see only what is durable.
    visible_only_durable: AtomicBool,
    /// Why the log is out of service, once it is.
    offline: Mutex<Option<String>>,
    /// The published high watermark: what consumers may read up to, and the
    /// channel that wakes long-polling fetches when it moves.
    hw: watch::Sender<i64>,
    /// Replication's bound on the high watermark; `NO_BOUND` when there is
    /// none (no other in-sync replica: the local log decides alone).
    replica_bound: AtomicI64,
    /// How many truncations the log has had. Held while an fsync's result is
    /// recorded, so an fsync that began before a truncation never records a
    /// durable end or recovery point the truncation removed.
    truncations: Mutex<u64>,
}

const NO_BOUND: i64 = i64::MAX;

impl LogShared {
    fn new(name: String, durable_end: i64) -> Arc<LogShared> {
        let (hw, _) = watch::channel(durable_end);
        Arc::new(LogShared {
            name,
            durable_end: AtomicI64::new(durable_end),
            visible_only_durable: AtomicBool::new(false),
            offline: Mutex::new(None),
            hw,
            replica_bound: AtomicI64::new(NO_BOUND),
            truncations: Mutex::new(0),
        })
    }

    /// Takes the log out of service (the first reason sticks).
    pub fn fail(&self, reason: String) {
        let mut offline = self.offline.lock();
        if offline.is_none() {
            tracing::error!(partition = %self.name, %reason, "log taken offline until restart");
            *offline = Some(reason);
        }
    }

    pub fn offline_reason(&self) -> Option<String> {
        self.offline.lock().clone()
    }

    /// Err when the log is offline.
    pub fn check(&self) -> Result<()> {
        match &*self.offline.lock() {
            None => Ok(()),
            Some(reason) => Err(Error::LogOffline { partition: self.name.clone(), reason: reason.clone() }),
        }
    }

    pub fn durable_end(&self) -> i64 {
        self.durable_end.load(Ordering::Acquire)
    }

    /// The truncation count, for work that must notice a truncation.
    pub fn generation(&self) -> u64 {
        *self.truncations.lock()
    }

    /// Records that offsets below `next_offset` are on disk, as an fsync
    /// started at truncation count `generation` found; false (nothing
    /// recorded) when a truncation came in between. `then` runs under the
    /// same lock when the record was made (the recovery point's write).
    fn mark_durable(&self, next_offset: i64, generation: u64, then: impl FnOnce()) -> bool {
        let truncations = self.truncations.lock();
        if *truncations != generation {
            return false;
        }
        self.durable_end.fetch_max(next_offset, Ordering::AcqRel);
        if self.visible_only_durable.load(Ordering::Acquire) {
            self.advance_hw(next_offset.min(self.replica_bound.load(Ordering::Acquire)));
        }
        then();
        true
    }

    /// Moves the published high watermark up to `hw` (never down); returns it.
    fn advance_hw(&self, hw: i64) -> i64 {
        // Most calls (every read locates through here) move nothing: only
        // a move takes the channel's write lock.
        let current = *self.hw.borrow();
        if hw <= current {
            return current;
        }
        self.hw.send_if_modified(|v| {
            if hw > *v {
                *v = hw;
                true
            } else {
                false
            }
        });
        *self.hw.borrow()
    }

    /// Sets the published high watermark (opening and truncating only: the
    /// one way it may go down).
    fn reset_hw(&self, hw: i64) {
        self.hw.send_if_modified(|v| {
            let changed = *v != hw;
            *v = hw;
            changed
        });
    }

    /// Replication's bound on the high watermark, if any.
    pub fn replica_bound(&self) -> Option<i64> {
        let b = self.replica_bound.load(Ordering::Acquire);
        (b != NO_BOUND).then_some(b)
    }

    fn set_replica_bound(&self, bound: Option<i64>) {
        self.replica_bound.store(bound.unwrap_or(NO_BOUND), Ordering::Release);
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.hw.subscribe()
    }
}

pub struct PartitionLog {
    pub topic: String,
    pub partition: u32,
    dir: PathBuf,
    fs: Arc<dyn LogFs>,
    index: PartitionIndex,
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    log_end_offset: i64,
    /// The epoch leader appends are stamped with.
    leader_epoch: i32,
    /// The epoch this replica was last told it leads or follows in; -1
    /// before it was told anything.
    current_epoch: i32,
    /// Told to follow (and not to lead since): leader appends are refused.
    following: bool,
    /// Where each leader epoch starts in this log.
    epochs: epochs::EpochCache,
    /// Whether the high watermark is checkpointed (the log is replicated):
    /// then rolls, closes and truncations keep the checkpoint current.
    hw_checkpointed: bool,
    /// The lowest end a truncation cut the log to (`i64::MAX`: none yet),
    /// for a compaction pass that overlapped a truncation.
    lowest_truncation: i64,
    /// Bytes appended since the last offset-index entry.
    bytes_since_index: u64,
    /// Largest timestamp the time index has an entry for.
    time_index_max: i64,
    /// Records appended since the last fsync was asked for, and when.
    unflushed: i64,
    last_flush_ms: i64,
    /// Idempotent producers' recent batches.
    producers: producer_state::ProducerStates,
    shared: Arc<LogShared>,
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
    file: Arc<dyn LogFile>,
    index: PartitionIndex,
    point: recovery::RecoveryPoint,
    shared: Arc<LogShared>,
    /// The truncation count when the ticket was made.
    generation: u64,
}

impl FlushTicket {
    /// fsyncs the segment, then records the new recovery point (after the
    /// sync, so it never claims more than is on disk). An fsync failure
    /// takes the log offline; Ok means everything below the ticket's offset
    /// is on disk.
    pub fn sync(self) -> Result<()> {
        self.shared.check()?;
        if let Err(e) = self.file.sync() {
            self.shared.fail(format!("fsync failed: {e}"));
            return self.shared.check();
        }
        // fsyncgate: once any fsync of this log failed, a later one that
        // "succeeds" proves nothing about the pages the failure dropped.
        self.shared.check()?;
        let recorded = self.shared.mark_durable(self.point.next_offset, self.generation, || {
            let mut w = IndexWrites::new();
            self.index.put_meta(&mut w, index::META_RECOVERY_POINT, &self.point.encode());
            // The recovery point only saves re-reading on the next unclean
            // start; the data is durable whether or not it is recorded.
            if let Err(e) = self.index.write(w) {
                tracing::warn!(partition = %self.shared.name, error = %e, "recording the recovery point");
            }
        });
        if !recorded {
            return Err(Error::Storage(format!(
                "{}: the log was truncated while offsets below {} were being fsynced; the records past the new end are gone",
                self.shared.name, self.point.next_offset
            )));
        }
        Ok(())
    }

    /// The offset this ticket makes durable (exclusive).
    pub fn next_offset(&self) -> i64 {
        self.point.next_offset
    }
}

/// What a read has to fetch, found under the partition lock and read
/// without it.
pub enum Locate {
    OutOfRange {
        start: i64,
        end: i64,
    },
    /// The offset is the high watermark: nothing to read yet.
    AtEnd,
    Read(ReadPlan),
}

pub struct ReadPlan {
    file: Arc<dyn LogFile>,
    /// Position to start looking for the batch that holds `target`.
    scan_from: u64,
    /// End of the readable bytes of this segment.
    end: u64,
    target: i64,
    /// Batches starting at or above this are not visible to this reader
    /// (the high watermark; the log end for a follower).
    visible_end: i64,
    /// Where the next segment's offsets begin: a reader that finds nothing
    /// here (compaction emptied the range) goes on from there.
    segment_next_offset: i64,
}

/// What one segment gave a read.
pub enum ReadOutcome {
    /// Whole batches, the first one holding an offset `>= target`.
    Data(Bytes),
    /// Nothing at or past `target` in this segment: go on at this offset.
    Exhausted(i64),
    /// The next batch is not visible yet (at the high watermark).
    NotYet,
}

impl ReadPlan {
    /// Whole batches from the one holding `target` on, at most `max_bytes`
    /// (but always at least one batch, so a large batch can't wedge a reader).
    pub fn read(&self, max_bytes: usize) -> io::Result<ReadOutcome> {
        let mut pos = self.scan_from;
        let first = loop {
            let Some(h) = segment::header_at(&*self.file, pos, self.end)? else {
                return Ok(ReadOutcome::Exhausted(self.segment_next_offset));
            };
            if h.next_offset() > self.target {
                break h;
            }
            pos += h.total_len() as u64;
        };
        if first.base_offset >= self.visible_end {
            return Ok(ReadOutcome::NotYet);
        }
        let available = (self.end - pos) as usize;
        let want = first.total_len().max(max_bytes).min(available);
        let mut buf = segment::read_at(&*self.file, pos, want)?;
        let mut whole = 0;
        for b in Batches::new(&buf) {
            match b {
                Ok((h, slice)) if h.base_offset < self.visible_end => whole += slice.len(),
                _ => break,
            }
        }
        buf.truncate(whole);
        Ok(ReadOutcome::Data(Bytes::from(buf)))
    }
}

impl PartitionLog {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn index(&self) -> &PartitionIndex {
        &self.index
    }

    pub fn shared(&self) -> &Arc<LogShared> {
        &self.shared
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }

    /// Highest offset consumers may read up to (exclusive). The local log
    /// bounds it — the log end, or with `flush.messages=1` what is durable —
    /// and replication may bound it further ([`Self::set_replica_bound`]:
    /// what the in-sync replicas have). It never moves backwards except by
    /// truncation; reading it publishes any move to waiting fetches.
    pub fn high_watermark(&self) -> i64 {
        let local = if self.shared.visible_only_durable.load(Ordering::Acquire) {
            self.log_end_offset.min(self.shared.durable_end())
        } else {
            self.log_end_offset
        };
        let bound = self.shared.replica_bound().map_or(local, |b| b.min(local));
        let target = bound.max(self.log_start_offset).min(self.log_end_offset);
        self.shared.advance_hw(target).min(self.log_end_offset)
    }

    /// Tells waiting fetches where the high watermark is now.
    pub fn publish_high_watermark(&self) {
        self.high_watermark();
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The idempotent producers this log remembers.
    pub fn producers(&self) -> &producer_state::ProducerStates {
        &self.producers
    }

    fn active(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has an active segment")
    }

    fn active_ref(&self) -> &Segment {
        self.segments.values().next_back().expect("a log always has an active segment")
    }

    /// Follows the topic's flush policy for visibility.
    fn apply_visibility(&self, config: &TopicConfig) {
        self.shared.visible_only_durable.store(config.flush_messages == 1, Ordering::Release);
    }

    /// Appends batches that were already validated (`batch::verify`),
    /// stamping each with its offset and the leader epoch. Batches an
    /// idempotent producer already wrote are skipped (their first offsets are
    /// reported); a sequence gap or a fenced epoch refuses the whole call
    /// before anything is written. On any error nothing changed.
    pub fn append(&mut self, data: &[u8], config: &TopicConfig, now_ms: i64) -> Result<AppendInfo> {
        self.shared.check()?;
        // A replica told to follow a newer epoch than the one it led in is
        // fenced: whatever still tries to write as leader (a queued group
        // commit, a produce that raced the change) is refused here.
        if self.following {
            return Err(Error::NotLeader {
                node: -1,
                topic: self.topic.clone(),
                partition: self.partition,
                leader: None,
            });
        }
        self.apply_visibility(config);
        // Checked before rolling, so a refused append leaves no trace, not
        // even an empty segment (a follower copying this log would not have
        // it, and the two logs' segments would no longer line up).
        let mut staged = self.stage(data, config)?;
        if !staged.buf.is_empty() && self.roll_due(data.len() as u64, config, now_ms) {
            self.roll(config, now_ms)?;
            staged = self.stage(data, config)?;
        }
        if staged.buf.is_empty() {
            // Only retries of batches already stored: nothing to write, but
            // the answer must wait until the originals are durable when the
            // flush policy says acknowledged means fsynced.
            let sync = if config.flush_messages == 1 && self.shared.durable_end() < staged.dup_next {
                Some(self.flush_ticket(now_ms))
            } else {
                None
            };
            return Ok(AppendInfo {
                base_offset: staged.base_offset(self.log_end_offset),
                batch_base_offsets: staged.batch_base_offsets,
                last_offset: staged.next - 1,
                records: 0,
                sync,
            });
        }
        self.write_staged(&mut staged, now_ms)?;
        let records = staged.records;
        self.unflushed += records;
        let sync =
            if self.unflushed >= config.flush_messages { Some(self.flush_ticket(now_ms)) } else { None };
        Ok(AppendInfo {
            base_offset: staged.base_offset(self.log_end_offset),
            batch_base_offsets: staged.batch_base_offsets,
            last_offset: staged.next - 1,
            records,
            sync,
        })
    }

    /// An empty staged append at the log end.
    fn new_staged(&self, capacity: usize) -> Staged {
        Staged {
            buf: Vec::with_capacity(capacity),
            index: IndexWrites::new(),
            next: self.log_end_offset,
            records: 0,
            max_ts: i64::MIN,
            bytes_since_index: self.bytes_since_index,
            time_index_max: self.time_index_max,
            batch_base_offsets: Vec::new(),
            producers: producer_state::Overlay::default(),
            dup_next: i64::MIN,
            epochs: None,
        }
    }

    /// Builds what an append would write without changing anything.
    fn stage(&self, data: &[u8], config: &TopicConfig) -> Result<Staged> {
        let segment_pos = self.active_ref().size;
        let mut st = self.new_staged(data.len());
        for b in Batches::new(data) {
            let (header, bytes) =
                b.map_err(|e| Error::Storage(format!("append of an unvalidated batch: {e}")))?;
            match st.producers.check(&self.producers, &header) {
                producer_state::SeqCheck::Append => {}
                producer_state::SeqCheck::Duplicate { base_offset, next_offset } => {
                    st.batch_base_offsets.push(base_offset);
                    st.dup_next = st.dup_next.max(next_offset);
                    continue;
                }
                producer_state::SeqCheck::OutOfOrder { expected, got } => {
                    return Err(Error::OutOfOrderSequence {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        producer_id: header.producer_id,
                        expected,
                        got,
                    });
                }
                producer_state::SeqCheck::Fenced { current_epoch, got } => {
                    return Err(Error::InvalidProducerEpoch {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        producer_id: header.producer_id,
                        current_epoch,
                        got,
                    });
                }
            }
            st.producers.record(&self.producers, &header, st.next);
            let pos = st.buf.len();
            st.buf.extend_from_slice(bytes);
            set_base_offset(&mut st.buf[pos..], st.next);
            set_leader_epoch(&mut st.buf[pos..], self.leader_epoch);
            let stamped = BatchHeader { base_offset: st.next, leader_epoch: self.leader_epoch, ..header };
            self.stage_stored(&mut st, &stamped, pos, segment_pos, config);
        }
        Ok(st)
    }

    /// Notes a batch that sits at `pos` in `st.buf` with its final offset
    /// and epoch: the index entries every append writes for it (leader and
    /// follower alike, so both logs index the same way), the epoch it may
    /// start, and where the log ends after it.
    fn stage_stored(
        &self,
        st: &mut Staged,
        h: &BatchHeader,
        pos: usize,
        segment_pos: u64,
        config: &TopicConfig,
    ) {
        if (segment_pos == 0 && pos == 0) || st.bytes_since_index >= config.index_interval_bytes {
            self.index.put_offset(&mut st.index, h.base_offset, (segment_pos + pos as u64) as u32);
            st.bytes_since_index = 0;
        }
        st.bytes_since_index += h.total_len() as u64;
        if h.max_timestamp > st.time_index_max {
            self.index.put_time(&mut st.index, h.max_timestamp, h.base_offset);
            st.time_index_max = h.max_timestamp;
        }
        // A batch of an epoch newer than any cached starts that epoch here.
        let latest = st.epochs.as_ref().unwrap_or(&self.epochs).latest_epoch();
        if h.leader_epoch > latest {
            let mut epochs = st.epochs.take().unwrap_or_else(|| self.epochs.clone());
            epochs.assign(h.leader_epoch, h.base_offset, &self.index, &mut st.index);
            st.epochs = Some(epochs);
        }
        st.batch_base_offsets.push(h.base_offset);
        st.max_ts = st.max_ts.max(h.max_timestamp);
        st.next = h.next_offset();
        st.records += i64::from(h.record_count);
    }

    /// Writes a staged append: segment bytes first, index second (an index
    /// entry never points past the file), then the in-memory state. A
    /// failure cuts the segment back to where it was.
    fn write_staged(&mut self, st: &mut Staged, now_ms: i64) -> Result<()> {
        let index = self.index.clone();
        let shared = self.shared.clone();
        let active = self.active();
        let before = active.size;
        if let Err(e) = active.append(&st.buf) {
            undo_write(active, before, &shared);
            return Err(Error::from_io("appending to the segment", e));
        }
        // Index entries are non-durable writes: cheap, and rebuilt from the
        // segment files by recovery if a crash loses them.
        if let Err(e) = index.write(std::mem::take(&mut st.index)) {
            undo_write(active, before, &shared);
            return Err(e);
        }
        active.next_offset = st.next;
        active.max_timestamp = active.max_timestamp.max(st.max_ts);
        active.first_append_ms.get_or_insert(now_ms);
        self.log_end_offset = st.next;
        self.bytes_since_index = st.bytes_since_index;
        self.time_index_max = st.time_index_max;
        st.producers.apply(&mut self.producers, now_ms);
        if let Some(epochs) = st.epochs.take() {
            self.epochs = epochs;
        }
        Ok(())
    }

    /// The active segment's file when `flush.ms` has passed with records
    /// still unflushed; the caller fsyncs it.
    pub fn due_flush(&mut self, config: &TopicConfig, now_ms: i64) -> Option<FlushTicket> {
        if self.shared.check().is_err() {
            return None;
        }
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
        let shared = self.shared.clone();
        let generation = shared.generation();
        let active = self.active();
        FlushTicket {
            file: active.file.clone(),
            index,
            point: recovery::RecoveryPoint {
                base_offset: active.base_offset,
                position: active.size,
                next_offset,
            },
            shared,
            generation,
        }
    }

    fn maybe_roll(&mut self, incoming: u64, config: &TopicConfig, now_ms: i64) -> Result<()> {
        if self.roll_due(incoming, config, now_ms) {
            self.roll(config, now_ms)?;
        }
        Ok(())
    }

    /// Whether `incoming` bytes go into a new segment (`segment.bytes`,
    /// `segment.ms`); never for an empty active segment.
    fn roll_due(&self, incoming: u64, config: &TopicConfig, now_ms: i64) -> bool {
        let active = self.active_ref();
        if active.is_empty() {
            return false;
        }
        let too_big = active.size + incoming > config.segment_bytes;
        let too_old = active.first_append_ms.is_some_and(|t| now_ms - t >= config.segment_ms);
        too_big || too_old
    }

    /// Closes the active segment (fsynced, its max timestamp and size
    /// recorded, a producer-state snapshot taken at the new segment's base)
    /// and starts a new one at the log end.
    pub fn roll(&mut self, config: &TopicConfig, now_ms: i64) -> Result<()> {
        self.shared.check()?;
        let next = self.log_end_offset;
        let shared = self.shared.clone();
        let active = self.active();
        if active.is_empty() {
            return Ok(());
        }
        if let Err(e) = active.file.sync() {
            shared.fail(format!("fsync failed while rolling: {e}"));
            return shared.check();
        }
        let meta = index::SegmentMeta { max_timestamp: active.max_timestamp, size: Some(active.size) };
        let base = active.base_offset;
        // Truncations need the partition lock, which this holds.
        self.shared.mark_durable(next, self.shared.generation(), || {});
        self.producers.expire(now_ms, config.producer_id_expiration_ms);
        let mut w = IndexWrites::new();
        self.index.put_segment_meta(&mut w, base, meta);
        self.index.put_producer_snapshot(&mut w, next, self.producers.snapshot());
        let point = recovery::RecoveryPoint { base_offset: next, position: 0, next_offset: next };
        self.index.put_meta(&mut w, index::META_RECOVERY_POINT, &point.encode());
        self.put_hw_checkpoint(&mut w);
        // Durable: also makes every index entry of the closed segment durable.
        self.index.write_durable(w)?;
        let segment =
            Segment::create(&*self.fs, &self.dir, next).map_err(|e| Error::from_io("rolling", e))?;
        self.segments.insert(next, segment);
        self.unflushed = 0;
        Ok(())
    }

    /// Finds what to read for `offset`. A plan may come back `Exhausted`
    /// (compaction left no batch past `offset` in that segment); the caller
    /// locates again from where it says.
    pub fn locate(&self, offset: i64) -> Result<Locate> {
        self.locate_up_to(offset, self.high_watermark())
    }

    /// `locate` for a reader that may see offsets below `visible_end`.
    fn locate_up_to(&self, offset: i64, visible_end: i64) -> Result<Locate> {
        self.shared.check()?;
        let hw = visible_end;
        // Out of range only past the log end: a new leader's high
        // watermark can trail what its predecessor had shown (it learns
        // the true one from its followers' next fetches), and a consumer
        // already there must wait, not be told its position is gone.
        if offset < self.log_start_offset || offset > hw.max(self.log_end_offset) {
            return Ok(Locate::OutOfRange { start: self.log_start_offset, end: hw });
        }
        if offset >= hw {
            return Ok(Locate::AtEnd);
        }
        // The first segment at or after the one whose range holds `offset`
        // that still has data past it (compaction can empty ranges).
        let from = self.segments.range(..=offset).next_back().map_or(i64::MIN, |(b, _)| *b);
        let mut segs = self.segments.range(from..).peekable();
        while let Some((_, seg)) = segs.next() {
            if seg.next_offset <= offset || seg.is_empty() {
                continue;
            }
            let segment_next_offset = segs.peek().map_or(seg.next_offset, |(b, _)| **b);
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
                visible_end: hw,
                segment_next_offset,
            }));
        }
        Ok(Locate::AtEnd)
    }

    /// Whole batches from the first one holding an offset `>= offset`, at
    /// most `max_bytes` (at least one batch), going on past segments that
    /// hold nothing at or after `offset`. Reads under the caller's lock: for
    /// in-process use (lookups, tests); the servers read via
    /// [`crate::partition::Partition::read`], which drops the lock for I/O.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes> {
        read_located(&self.topic, self.partition, offset, max_bytes, |at| self.locate(at))
    }

    /// First offset whose record timestamp is `>= ts`, with that timestamp.
    pub fn offset_for_time(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        let Some((_, offset)) = self.index.time_ceiling(ts)? else {
            return Ok(None);
        };
        let mut at = offset.max(self.log_start_offset);
        // The indexed batch is the first whose max timestamp reaches `ts`; the
        // record is in it (or, after compaction, in a later batch, possibly
        // in a later segment).
        loop {
            let data = match self.read(at, 1) {
                Ok(d) => d,
                Err(Error::OffsetOutOfRange { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
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

    /// Clean shutdown: fsync the active segment, snapshot producer state at
    /// the log end and record where the log ends, so the next start scans
    /// nothing. An offline log gets no marker: its next start re-verifies.
    pub fn close(&mut self) -> Result<()> {
        self.shared.check()?;
        let time_index_max = self.time_index_max;
        let bytes_since_index = self.bytes_since_index;
        let end = self.log_end_offset;
        let file = self.active_ref().file.clone();
        if let Err(e) = file.sync() {
            self.shared.fail(format!("fsync failed at shutdown: {e}"));
            return self.shared.check();
        }
        let active = self.active_ref();
        let marker = recovery::CleanShutdown {
            base_offset: active.base_offset,
            size: active.size,
            next_offset: active.next_offset,
            max_timestamp: active.max_timestamp,
            time_index_max,
            bytes_since_index,
        };
        let mut w = IndexWrites::new();
        self.index.put_producer_snapshot(&mut w, end, self.producers.snapshot());
        self.index.put_meta(&mut w, index::META_CLEAN_SHUTDOWN, &marker.encode());
        self.put_hw_checkpoint(&mut w);
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

/// Whole batches from the first one holding an offset `>= offset`, at most
/// `max_bytes` (at least one batch), going on past segments that hold
/// nothing at or after it (compaction can empty a segment's end). `locate`
/// finds what to read, under whatever lock the caller needs; the file reads
/// happen outside it.
pub fn read_located(
    topic: &str,
    partition: u32,
    offset: i64,
    max_bytes: usize,
    mut locate: impl FnMut(i64) -> Result<Locate>,
) -> Result<Bytes> {
    let mut at = offset;
    loop {
        let plan = match locate(at)? {
            Locate::Read(plan) => plan,
            Locate::AtEnd => return Ok(Bytes::new()),
            Locate::OutOfRange { start, end } => {
                return Err(Error::OffsetOutOfRange {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    start,
                    end,
                })
            }
        };
        match plan.read(max_bytes)? {
            ReadOutcome::Data(b) => return Ok(b),
            ReadOutcome::Exhausted(next) if next > at => at = next,
            ReadOutcome::NotYet | ReadOutcome::Exhausted(_) => return Ok(Bytes::new()),
        }
    }
}

/// An append as it will be written.
struct Staged {
    buf: Vec<u8>,
    index: IndexWrites,
    /// Log end after the append.
    next: i64,
    records: i64,
    max_ts: i64,
    bytes_since_index: u64,
    time_index_max: i64,
    batch_base_offsets: Vec<i64>,
    producers: producer_state::Overlay,
    /// For retried batches: the offset after the newest one.
    dup_next: i64,
    /// The epoch cache after the append, when a batch starts a new epoch.
    epochs: Option<epochs::EpochCache>,
}

impl Staged {
    fn base_offset(&self, log_end: i64) -> i64 {
        self.batch_base_offsets.first().copied().unwrap_or(log_end)
    }
}

/// Cuts a segment back after a failed append. If even that fails, the file
/// may hold bytes past the log end that a later append would overwrite
/// inconsistently: the log goes offline.
fn undo_write(seg: &mut Segment, size: u64, shared: &LogShared) {
    seg.size = size;
    if let Err(e) = seg.file.set_len(size) {
        shared.fail(format!("could not cut back a failed append: {e}"));
    }
}

//! What partition replication needs of a log, after Kafka's design (KIP-101
//! and KIP-279 leader epochs, the follower's `appendAsFollower`, the
//! high-watermark checkpoint). The replica manager drives these through
//! [`crate::partition::Partition`]; truncation is in [`super::truncate`].
//!
//! * Leadership: [`PartitionLog::become_leader`] stamps later appends with
//!   the new epoch and records, durably, that the epoch starts at the log
//!   end; [`PartitionLog::become_follower`] only remembers the epoch.
//! * The follower's append ([`PartitionLog::append_replicated`]) stores the
//!   leader's batches byte for byte at the leader's offsets and epochs, and
//!   indexes them as the leader's append did, so a follower that takes over
//!   serves, looks up and deduplicates exactly as the old leader would. It
//!   rolls before a batch that would overflow the segment, as the leader
//!   did before each append, so with the same `segment.bytes` and one batch
//!   per leader append the segment files come out identical.
//! * Reads for followers ([`PartitionLog::read_replica`]) go up to the log
//!   end: followers copy records before they are committed.
//! * The high watermark: the local log bounds it (log end, or the durable
//!   end under `flush.messages=1`), and the replica manager bounds it
//!   further with what the in-sync replicas have
//!   ([`PartitionLog::set_replica_bound`]). Its checkpoint
//!   ([`PartitionLog::checkpoint_high_watermark`]) becomes the bound after a
//!   restart, so a restarted replica never shows records that were not known
//!   to be committed.

use std::ops::Range;

use bytes::Bytes;
use tributary_proto::batch::{self, BatchError, BatchHeader, Batches};

use super::index::{self, IndexWrites};
use super::{read_located, AppendInfo, Locate, PartitionLog};
use crate::config::TopicConfig;
use crate::error::{Error, Result};

impl PartitionLog {
    /// This replica leads from now on in `epoch`: appends are stamped with
    /// it, and the epoch cache records (durably, before this returns) that
    /// the epoch starts at the log end. Leading again in the latest epoch
    /// changes nothing; an epoch older than one already seen is refused.
    pub fn become_leader(&mut self, epoch: i32) -> Result<()> {
        self.shared.check()?;
        self.check_epoch(epoch)?;
        let mut epochs = self.epochs.clone();
        let mut w = IndexWrites::new();
        if epochs.assign(epoch, self.log_end_offset, &self.index, &mut w) {
            self.index.write_durable(w)?;
            self.epochs = epochs;
        }
        self.leader_epoch = epoch;
        self.current_epoch = epoch;
        self.following = false;
        Ok(())
    }

    /// This replica follows in `epoch`. Remembered for fencing only: the
    /// epoch cache learns epochs from the batches the follower copies.
    pub fn become_follower(&mut self, epoch: i32) -> Result<()> {
        self.shared.check()?;
        self.check_epoch(epoch)?;
        self.current_epoch = epoch;
        self.following = true;
        Ok(())
    }

    /// Epochs only move forward: a stale leadership decision is refused.
    fn check_epoch(&self, epoch: i32) -> Result<()> {
        let seen = self.current_epoch.max(self.epochs.latest_epoch());
        if epoch < 0 || epoch < seen {
            return Err(Error::InvalidRequest(format!(
                "{}-{}: leader epoch {epoch} is older than epoch {seen}, which this replica has already seen",
                self.topic, self.partition
            )));
        }
        Ok(())
    }

    /// The epoch this replica was last told it leads or follows in; -1 if
    /// it was never told (since it opened).
    pub fn current_epoch(&self) -> i32 {
        self.current_epoch
    }

    /// The newest epoch in the epoch cache; -1 when it is empty.
    pub fn latest_epoch(&self) -> i32 {
        self.epochs.latest_epoch()
    }

    /// The epoch cache: `(epoch, start_offset)`, oldest first.
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.epochs.entries()
    }

    /// Kafka's OffsetsForLeaderEpoch answer: the largest cached epoch
    /// `<= epoch` and its end offset (the start of the next cached epoch,
    /// or the log end for the latest); `(-1, -1)` when every cached epoch
    /// is larger.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Result<(i32, i64)> {
        self.shared.check()?;
        Ok(self.epochs.end_offset_for(epoch, self.log_end_offset))
    }

    /// Appends batches exactly as the leader stored them: offsets and
    /// leader epochs set, CRCs valid (checked again here). The first must
    /// start at the log end and each follow on from the one before
    /// (compacted topics may skip offsets compaction removed from the
    /// leader's log, never go back); epochs never go below the latest
    /// cached. Otherwise nothing is written and the error says why.
    ///
    /// The bytes are stored unchanged, with the index entries a leader
    /// append writes; producer state follows the batches without sequence
    /// checks (the leader decided); a batch of an epoch newer than the
    /// latest cached starts that epoch. Whole or nothing, like `append`
    /// (a failure after a roll cuts the log back to where it ended). Follows
    /// the flush policy and returns a [`super::FlushTicket`] the same way.
    pub fn append_replicated(
        &mut self,
        data: &[u8],
        config: &TopicConfig,
        now_ms: i64,
    ) -> Result<AppendInfo> {
        self.shared.check()?;
        self.apply_visibility(config);
        let batches = self.check_replicated(data, config)?;
        let start = self.log_end_offset;
        let mut info = AppendInfo {
            base_offset: batches.first().map_or(start, |(h, _)| h.base_offset),
            batch_base_offsets: Vec::with_capacity(batches.len()),
            last_offset: start - 1,
            records: 0,
            sync: None,
        };
        let mut rest = &batches[..];
        while !rest.is_empty() {
            match self.append_replicated_chunk(data, rest, config, now_ms) {
                Ok((taken, base_offsets, records)) => {
                    info.batch_base_offsets.extend(base_offsets);
                    info.records += records;
                    rest = &rest[taken..];
                }
                Err(e) => {
                    self.undo_replicated(start, now_ms);
                    return Err(e);
                }
            }
        }
        info.last_offset = self.log_end_offset - 1;
        self.unflushed += info.records;
        if info.records > 0 && self.unflushed >= config.flush_messages {
            info.sync = Some(self.flush_ticket(now_ms));
        }
        Ok(info)
    }

    /// Every batch of a replicated append, checked before anything is
    /// written: `(header, byte range in data)`.
    fn check_replicated(
        &self,
        data: &[u8],
        config: &TopicConfig,
    ) -> Result<Vec<(BatchHeader, Range<usize>)>> {
        let corrupt = |source: BatchError| Error::CorruptBatch {
            topic: self.topic.clone(),
            partition: self.partition,
            source,
        };
        let refuse = |reason: String| Error::ReplicaAppendRefused {
            partition: format!("{}-{}", self.topic, self.partition),
            reason,
        };
        let mut out = Vec::new();
        let mut expected = self.log_end_offset;
        let mut latest_epoch = self.epochs.latest_epoch();
        let mut pos = 0;
        for b in Batches::new(data) {
            let (_, slice) = b.map_err(corrupt)?;
            let h = batch::verify(slice).map_err(corrupt)?;
            let gap_allowed = config.cleanup_policy.compact;
            if h.base_offset < expected || (h.base_offset > expected && !gap_allowed) {
                return Err(refuse(format!(
                    "a batch starts at offset {} where the log expects {expected}",
                    h.base_offset
                )));
            }
            if h.leader_epoch < latest_epoch {
                return Err(refuse(format!(
                    "the batch at offset {} has leader epoch {}, older than epoch {latest_epoch} already in the log",
                    h.base_offset, h.leader_epoch
                )));
            }
            expected = h.next_offset();
            latest_epoch = latest_epoch.max(h.leader_epoch);
            out.push((h, pos..pos + slice.len()));
            pos += slice.len();
        }
        Ok(out)
    }

    /// Writes the batches of `rest` that go into one segment (rolling first
    /// when the first would overflow the active one): `(batches taken,
    /// their base offsets, records)`.
    fn append_replicated_chunk(
        &mut self,
        data: &[u8],
        rest: &[(BatchHeader, Range<usize>)],
        config: &TopicConfig,
        now_ms: i64,
    ) -> Result<(usize, Vec<i64>, i64)> {
        let first_len = rest.first().map_or(0, |(_, r)| r.len() as u64);
        self.maybe_roll(first_len, config, now_ms)?;
        let segment_pos = self.active_ref().size;
        let mut st = self.new_staged(rest.iter().map(|(_, r)| r.len()).sum());
        let mut taken = 0;
        for (h, range) in rest {
            let len = range.len() as u64;
            if taken > 0 && segment_pos + st.buf.len() as u64 + len > config.segment_bytes {
                break;
            }
            let pos = st.buf.len();
            st.buf.extend_from_slice(&data[range.clone()]);
            st.producers.record(&self.producers, h, h.base_offset);
            self.stage_stored(&mut st, h, pos, segment_pos, config);
            taken += 1;
        }
        self.write_staged(&mut st, now_ms)?;
        Ok((taken, std::mem::take(&mut st.batch_base_offsets), st.records))
    }

    /// After a replicated append failed part-way (a later segment's write),
    /// cuts the log back to where it ended before, so the append leaves no
    /// trace. A failed cut takes the log offline (see `truncate_to`).
    fn undo_replicated(&mut self, start: i64, now_ms: i64) {
        if self.log_end_offset <= start || self.shared.check().is_err() {
            return;
        }
        if let Err(e) = self.truncate_to(start, now_ms) {
            tracing::error!(topic = %self.topic, partition = self.partition, error = %e, "cutting back a failed replicated append");
        }
    }

    /// Whole batches from the one holding `offset` on, up to the log end
    /// (a follower's read: it copies records before they are committed).
    pub fn read_replica(&self, offset: i64, max_bytes: usize) -> Result<Bytes> {
        read_located(&self.topic, self.partition, offset, max_bytes, |at| self.locate_replica(at))
    }

    /// `locate` up to the log end.
    pub fn locate_replica(&self, offset: i64) -> Result<Locate> {
        self.locate_up_to(offset, self.log_end_offset)
    }

    /// Replication's bound on the high watermark. None: no other in-sync
    /// replica, so the local log decides (the log end, or the durable end
    /// under `flush.messages=1`). Some(h): at most `h`. The high watermark
    /// still never moves backwards; a move wakes long-polling fetches.
    pub fn set_replica_bound(&self, bound: Option<i64>) {
        self.shared.set_replica_bound(bound);
        self.publish_high_watermark();
    }

    /// Writes the high watermark to the column family (not synced: the
    /// next durable write or roll carries it). From then on rolls, clean
    /// shutdowns and truncations keep it current, and the next open starts
    /// with it as the replica bound.
    pub fn checkpoint_high_watermark(&mut self) -> Result<()> {
        self.shared.check()?;
        self.hw_checkpointed = true;
        let mut w = IndexWrites::new();
        self.put_hw_checkpoint(&mut w);
        self.index.write(w)
    }

    /// Adds the current high watermark to `w` if the log checkpoints it.
    pub(super) fn put_hw_checkpoint(&self, w: &mut IndexWrites) {
        if self.hw_checkpointed {
            let hw = self.high_watermark();
            self.index.put_meta(w, index::META_HIGH_WATERMARK, &(hw as u64).to_be_bytes());
        }
    }
}

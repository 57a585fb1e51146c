//! One partition as the servers see it: its log behind a lock, and a watch
//! channel that wakes long-polling fetches when the high watermark moves.
//! The replica manager drives replication through it: leadership and
//! epochs, the follower's append and reads, truncation, and the bound on
//! the high watermark (see [`crate::log::replication`]).
//!
//! Every method here may block on file I/O (and appends may fsync when a
//! segment rolls): call them from blocking threads, never from an async
//! worker (`tokio::task::spawn_blocking`).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::TopicConfig;
use crate::error::Result;
use crate::log::fs::LogFs;
use crate::log::{read_located, AppendInfo, LogShared, PartitionLog};

pub struct Partition {
    pub topic: String,
    pub id: u32,
    log: Mutex<PartitionLog>,
    shared: Arc<LogShared>,
    fs: Arc<dyn LogFs>,
}

/// What a read found.
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

impl Partition {
    pub fn new(log: PartitionLog, fs: Arc<dyn LogFs>) -> Arc<Partition> {
        Arc::new(Partition {
            topic: log.topic.clone(),
            id: log.partition,
            shared: log.shared().clone(),
            log: Mutex::new(log),
            fs,
        })
    }

    /// `<topic>-<partition>`: the partition's directory name.
    pub fn dir_name(topic: &str, partition: u32) -> String {
        format!("{topic}-{partition}")
    }

    /// Leader path: stamps offsets and the current leader epoch.
    pub fn append(&self, data: &[u8], config: &TopicConfig, now_ms: i64) -> Result<AppendInfo> {
        let mut log = self.log.lock();
        let info = log.append(data, config, now_ms)?;
        log.publish_high_watermark();
        Ok(info)
    }

    /// Follower path: the leader's batches as it stored them, starting at
    /// the log end ([`PartitionLog::append_replicated`]).
    pub fn append_replicated(&self, data: &[u8], config: &TopicConfig, now_ms: i64) -> Result<AppendInfo> {
        let mut log = self.log.lock();
        let info = log.append_replicated(data, config, now_ms)?;
        log.publish_high_watermark();
        Ok(info)
    }

    /// This replica leads from now on with `epoch` (greater than or equal
    /// to every epoch it has seen); the epoch cache records (epoch -> log
    /// end) durably before this returns.
    pub fn become_leader(&self, epoch: i32) -> Result<()> {
        self.log.lock().become_leader(epoch)
    }

    /// This replica follows in `epoch`: remembered for fencing only.
    pub fn become_follower(&self, epoch: i32) -> Result<()> {
        self.log.lock().become_follower(epoch)
    }

    /// The epoch the replica was last told (leader or follower), -1 if never.
    pub fn current_epoch(&self) -> i32 {
        self.log.lock().current_epoch()
    }

    /// Latest epoch in the epoch cache, -1 when empty.
    pub fn latest_epoch(&self) -> i32 {
        self.log.lock().latest_epoch()
    }

    /// OffsetsForLeaderEpoch: the largest cached epoch `<= epoch` and its end
    /// offset; (-1, -1) when every cached epoch is larger.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Result<(i32, i64)> {
        self.log.lock().end_offset_for_epoch(epoch)
    }

    /// Removes every record at and above `offset` ([`PartitionLog::truncate_to`]).
    pub fn truncate_to(&self, offset: i64) -> Result<()> {
        let mut log = self.log.lock();
        let r = log.truncate_to(offset, crate::now_ms());
        log.publish_high_watermark();
        r
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log.lock().log_end_offset()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.lock().log_start_offset()
    }

    /// End of what a completed fsync covers.
    pub fn durable_end(&self) -> i64 {
        self.shared.durable_end()
    }

    pub fn high_watermark(&self) -> i64 {
        self.log.lock().high_watermark()
    }

    /// Replication's bound on the high watermark: None when no other replica
    /// is in sync, Some(h) caps it at `h` ([`PartitionLog::set_replica_bound`]).
    pub fn set_replica_bound(&self, bound: Option<i64>) {
        self.log.lock().set_replica_bound(bound);
    }

    /// Writes the high watermark to the partition's column family; the next
    /// open starts with it as the replica bound.
    pub fn checkpoint_high_watermark(&self) -> Result<()> {
        self.log.lock().checkpoint_high_watermark()
    }

    /// Batches from the first one holding an offset `>= offset`, up to
    /// `max_bytes` (at least one batch). The lock is held only to find what
    /// to read; a segment that holds nothing past `offset` (compaction
    /// emptied its end) is skipped, so a reader below the high watermark
    /// always gets data.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        let (mut high_watermark, mut log_start_offset) = (-1, -1);
        let records = read_located(&self.topic, self.id, offset, max_bytes, |at| {
            let log = self.log.lock();
            (high_watermark, log_start_offset) = (log.high_watermark(), log.log_start_offset());
            log.locate(at)
        })?;
        Ok(ReadResult { records, high_watermark, log_start_offset })
    }

    /// Reads for a follower: like [`Self::read`], but up to the log end
    /// instead of the high watermark (followers copy uncommitted records).
    pub fn read_replica(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        let (mut high_watermark, mut log_start_offset) = (-1, -1);
        let records = read_located(&self.topic, self.id, offset, max_bytes, |at| {
            let log = self.log.lock();
            (high_watermark, log_start_offset) = (log.high_watermark(), log.log_start_offset());
            log.locate_replica(at)
        })?;
        Ok(ReadResult { records, high_watermark, log_start_offset })
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.shared.subscribe()
    }

    /// Why the partition's log is out of service, if it is.
    pub fn offline_reason(&self) -> Option<String> {
        self.shared.offline_reason()
    }

    /// Runs `f` on the log under the partition lock. Keep `f` short.
    pub fn with_log<R>(&self, f: impl FnOnce(&mut PartitionLog) -> R) -> R {
        let mut log = self.log.lock();
        let r = f(&mut log);
        log.publish_high_watermark();
        r
    }

    /// Retention for this partition: rolls and deletes segments.
    pub fn apply_retention(&self, config: &TopicConfig, now_ms: i64) -> Result<Vec<PathBuf>> {
        self.with_log(|log| log.apply_retention(config, now_ms))
    }

    /// Stops all work on the partition before it is deleted: waits for an
    /// append in progress (the lock), then refuses everything after,
    /// including fsyncs and index writes of tickets already handed out.
    pub fn fence(&self, why: &str) {
        let _log = self.log.lock();
        self.shared.fail(why.to_string());
    }

    pub fn fs(&self) -> &Arc<dyn LogFs> {
        &self.fs
    }
}

/// A partition `t`-0 in `dir` (real files and RocksDB), for tests.
#[cfg(test)]
pub(crate) fn test_partition(dir: &std::path::Path) -> Arc<Partition> {
    use crate::log::index::PartitionIndex;
    let store = crate::store::Store::open(&dir.join("rocksdb"), 8 << 20, 32 << 20).unwrap();
    store.create_cf("p/t-0").unwrap();
    let index = PartitionIndex::new(store, "p/t-0".into());
    let config = crate::config::TopicConfig::default();
    let log = crate::log::PartitionLog::open(
        crate::log::fs::real(),
        dir.join("t-0"),
        "t".into(),
        0,
        index,
        &config,
        0,
    )
    .unwrap();
    Partition::new(log, crate::log::fs::real())
}

//! One partition as the servers see it: its log behind a lock, and a watch
//! channel that wakes long-polling fetches when the high watermark moves.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::TopicConfig;
use crate::error::{Error, Result};
use crate::log::{AppendInfo, Locate, PartitionLog};

pub struct Partition {
    pub topic: String,
    pub id: u32,
    log: Mutex<PartitionLog>,
    high_watermark: watch::Sender<i64>,
}

/// What a read found.
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

impl Partition {
    pub fn new(log: PartitionLog) -> Arc<Partition> {
        let (tx, _) = watch::channel(log.high_watermark());
        Arc::new(Partition {
            topic: log.topic.clone(),
            id: log.partition,
            log: Mutex::new(log),
            high_watermark: tx,
        })
    }

    /// `<topic>-<partition>`: directory and column family name.
    pub fn dir_name(topic: &str, partition: u32) -> String {
        format!("{topic}-{partition}")
    }

    pub fn append(&self, data: &[u8], config: &TopicConfig, now_ms: i64) -> Result<AppendInfo> {
        let mut log = self.log.lock();
        let info = log.append(data, config, now_ms)?;
        self.high_watermark.send_replace(log.high_watermark());
        Ok(info)
    }

    /// Batches from `offset` on, up to `max_bytes` (at least one batch).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        let (locate, high_watermark, log_start_offset) = {
            let log = self.log.lock();
            (log.locate(offset)?, log.high_watermark(), log.log_start_offset())
        };
        let records = match locate {
            Locate::OutOfRange { start, end } => {
                return Err(Error::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.id,
                    offset,
                    start,
                    end,
                })
            }
            Locate::AtEnd => Bytes::new(),
            // The file read happens outside the lock.
            Locate::Read(plan) => plan.read(max_bytes)?,
        };
        Ok(ReadResult { records, high_watermark, log_start_offset })
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// Runs `f` on the log under the partition lock. Keep `f` short.
    pub fn with_log<R>(&self, f: impl FnOnce(&mut PartitionLog) -> R) -> R {
        let mut log = self.log.lock();
        let r = f(&mut log);
        self.high_watermark.send_replace(log.high_watermark());
        r
    }
}

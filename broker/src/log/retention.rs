//! Rolling and deleting whole segments: `segment.ms`, `retention.ms`,
//! `retention.bytes`. The active segment is never deleted; an old enough one
//! is rolled first so that it can go at the next check. Nothing above the
//! high watermark is deleted.

use std::path::PathBuf;

use super::index::{self, IndexWrites};
use super::PartitionLog;
use crate::config::TopicConfig;
use crate::error::Result;

impl PartitionLog {
    /// Rolls and deletes what the topic's settings say (and forgets idle
    /// producers). Returns the segments deleted.
    pub fn apply_retention(&mut self, config: &TopicConfig, now_ms: i64) -> Result<Vec<PathBuf>> {
        self.shared.check()?;
        self.producers.expire(now_ms, config.producer_id_expiration_ms);
        let delete = config.cleanup_policy.delete;
        let expired =
            |max_ts: i64| delete && config.retention_ms >= 0 && max_ts < now_ms - config.retention_ms;

        let active = self.active();
        let aged = active.first_append_ms.is_some_and(|t| now_ms - t >= config.segment_ms);
        if !active.is_empty() && (aged || expired(active.max_timestamp)) {
            self.roll(config, now_ms)?;
        }
        if !delete {
            return Ok(Vec::new());
        }

        let mut total = self.size_bytes() as i64;
        let mut doomed = Vec::new();
        // Only what consumers could see goes (Kafka's rule too): records the
        // in-sync replicas do not all have yet are not deleted under them.
        let hw = self.high_watermark();
        for (base, next, max_ts, size) in self.closed_segments() {
            let by_size = config.retention_bytes >= 0 && total - size as i64 >= config.retention_bytes;
            if !(expired(max_ts) || by_size) || next > hw {
                break;
            }
            total -= size as i64;
            doomed.push(base);
        }
        self.delete_segments(&doomed)
    }

    /// Drops the given oldest segments and moves the log start past them.
    ///
    /// Files go first, index work second: deleting needs no free space, so
    /// retention frees a full disk even when RocksDB cannot write. A crash
    /// in between is harmless, since the log start on open is never below
    /// the first segment file.
    fn delete_segments(&mut self, bases: &[i64]) -> Result<Vec<PathBuf>> {
        if bases.is_empty() {
            return Ok(Vec::new());
        }
        let mut paths = Vec::with_capacity(bases.len());
        for base in bases {
            if let Some(seg) = self.segments.remove(base) {
                tracing::info!(
                    topic = %self.topic,
                    partition = self.partition,
                    base_offset = base,
                    bytes = seg.size,
                    "deleting segment by retention"
                );
                // Readers that still hold the file open keep reading it.
                if let Err(e) = self.fs.remove_file(&seg.path) {
                    tracing::warn!(file = %seg.path.display(), error = %e, "removing a deleted segment");
                }
                paths.push(seg.path);
            }
        }
        let new_start = self.segments.keys().next().copied().unwrap_or(self.log_end_offset);
        self.log_start_offset = self.log_start_offset.max(new_start);
        let mut w = IndexWrites::new();
        self.index.put_meta(&mut w, index::META_LOG_START, &(self.log_start_offset as u64).to_be_bytes());
        self.index.delete_offsets(&mut w, 0, self.log_start_offset);
        self.index.delete_time_below_offset(&mut w, self.log_start_offset)?;
        self.index.delete_producer_snapshots(&mut w, 0, self.log_start_offset);
        for base in bases {
            self.index.delete_segment_meta(&mut w, *base);
        }
        if let Err(e) = self.index.write_durable(w) {
            // The files are gone either way; the next start derives the log
            // start from the first file left.
            tracing::warn!(topic = %self.topic, partition = self.partition, error = %e, "recording the new log start");
        }
        Ok(paths)
    }
}

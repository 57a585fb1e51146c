//! The leader-epoch cache (Kafka's KIP-101 / KIP-279): for each leader epoch
//! this replica's log holds records of, the offset where that epoch starts.
//!
//! Offsets alone cannot tell two diverged replicas apart: after a leader
//! change both may hold a record at offset 100, written by different
//! leaders. Every batch carries the epoch of the leader that appended it,
//! and this map of where each epoch starts lets a follower ask the leader
//! "where does my latest epoch end in your log?" ([`EpochCache::end_offset_for`])
//! and cut its own log back to where the two agree.
//!
//! Kept in memory and in the partition's column family (`e` keys). An entry
//! is learned when a batch of an epoch newer than the latest is appended
//! (the epoch starts at its base offset), and by `become_leader` (the new
//! leader's epoch starts at its log end, before it has appended anything).
//! The segment files are the truth: truncation drops entries that start at
//! or past the new end, and recovery drops entries past the recovered end
//! and re-learns epochs from the batches it re-reads.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::index::{IndexWrites, PartitionIndex};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    /// epoch -> start offset; both strictly increasing.
    entries: BTreeMap<i32, i64>,
}

impl EpochCache {
    pub fn from_entries(entries: impl IntoIterator<Item = (i32, i64)>) -> EpochCache {
        let mut cache = EpochCache::default();
        for (epoch, start) in entries {
            // Stored entries are monotonic; a damaged store must not make
            // the in-memory map lie, so anything out of order is dropped.
            if cache.latest().is_none_or(|(e, s)| epoch > e && start >= s) {
                cache.entries.insert(epoch, start);
            }
        }
        cache
    }

    /// `(epoch, start_offset)` of the newest epoch.
    pub fn latest(&self) -> Option<(i32, i64)> {
        self.entries.iter().next_back().map(|(e, s)| (*e, *s))
    }

    /// The newest epoch, -1 when the cache is empty.
    pub fn latest_epoch(&self) -> i32 {
        self.latest().map_or(-1, |(e, _)| e)
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Vec<(i32, i64)> {
        self.entries.iter().map(|(e, s)| (*e, *s)).collect()
    }

    /// Records that `epoch` starts at `start` (Kafka's `assign`), writing the
    /// change to `w`. Entries that would make the map non-monotonic — an
    /// epoch at or above `epoch`, or one starting at or after `start` (an
    /// epoch that never got a record) — are dropped first. Returns whether
    /// anything changed; a negative epoch (an unstamped batch) changes
    /// nothing.
    pub fn assign(&mut self, epoch: i32, start: i64, index: &PartitionIndex, w: &mut IndexWrites) -> bool {
        if epoch < 0 || self.latest().is_some_and(|(e, s)| e == epoch && s <= start) {
            return false;
        }
        let doomed: Vec<i32> =
            self.entries.iter().filter(|(e, s)| **e >= epoch || **s >= start).map(|(e, _)| *e).collect();
        for e in doomed {
            self.entries.remove(&e);
            index.delete_epoch(w, e);
        }
        self.entries.insert(epoch, start);
        index.put_epoch(w, epoch, start);
        true
    }

    /// Drops every entry whose epoch starts at or after `end` (its records
    /// were truncated away). Returns whether anything changed.
    pub fn truncate_from_end(&mut self, end: i64, index: &PartitionIndex, w: &mut IndexWrites) -> bool {
        let doomed: Vec<i32> = self.entries.iter().filter(|(_, s)| **s >= end).map(|(e, _)| *e).collect();
        for e in &doomed {
            self.entries.remove(e);
            index.delete_epoch(w, *e);
        }
        !doomed.is_empty()
    }

    /// Kafka's OffsetsForLeaderEpoch answer for a log ending at `log_end`:
    /// the largest cached epoch `<= epoch` and where it ends (the start of
    /// the next cached epoch, or `log_end` for the latest); `(-1, -1)` when
    /// every cached epoch is larger (or the cache is empty).
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> (i32, i64) {
        let Some((found, _)) = self.entries.range(..=epoch).next_back() else {
            return (-1, -1);
        };
        let end = self
            .entries
            .range((Bound::Excluded(epoch), Bound::Unbounded))
            .next()
            .map_or(log_end, |(_, start)| *start);
        (*found, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::fault::MemIndexStore;
    use std::sync::Arc;

    fn index() -> PartitionIndex {
        PartitionIndex::new(Arc::new(MemIndexStore::new()), "p".into())
    }

    fn stored(index: &PartitionIndex) -> Vec<(i32, i64)> {
        index.epochs().unwrap()
    }

    #[test]
    fn end_offsets_answer_as_kafka_does() {
        let c = EpochCache::from_entries([(1, 0), (3, 40), (4, 90)]);
        assert_eq!(c.end_offset_for(0, 120), (-1, -1), "every epoch is larger");
        assert_eq!(c.end_offset_for(1, 120), (1, 40));
        assert_eq!(c.end_offset_for(2, 120), (1, 40), "unknown epoch: the largest below it");
        assert_eq!(c.end_offset_for(3, 120), (3, 90));
        assert_eq!(c.end_offset_for(4, 120), (4, 120), "the latest ends at the log end");
        assert_eq!(c.end_offset_for(9, 120), (4, 120));
        assert_eq!(c.end_offset_for(i32::MAX, 120), (4, 120));
        assert_eq!(EpochCache::default().end_offset_for(3, 0), (-1, -1));
    }

    #[test]
    fn assign_keeps_the_map_monotonic_and_stored() {
        let index = index();
        let mut c = EpochCache::default();
        let mut w = IndexWrites::new();
        assert!(c.assign(0, 0, &index, &mut w));
        assert!(!c.assign(0, 5, &index, &mut w), "same epoch, later start: nothing new");
        assert!(!c.assign(-1, 5, &index, &mut w), "unstamped batches are not epochs");
        // An epoch that never got a record is replaced by the next one at
        // the same start.
        assert!(c.assign(2, 10, &index, &mut w));
        assert!(c.assign(3, 10, &index, &mut w));
        assert_eq!(c.entries(), vec![(0, 0), (3, 10)]);
        index.write(w).unwrap();
        assert_eq!(stored(&index), c.entries());

        let mut w = IndexWrites::new();
        assert!(c.truncate_from_end(10, &index, &mut w));
        assert!(!c.truncate_from_end(10, &index, &mut w));
        index.write(w).unwrap();
        assert_eq!(c.entries(), vec![(0, 0)]);
        assert_eq!(stored(&index), vec![(0, 0)]);
        assert_eq!(c.latest_epoch(), 0);
    }

    #[test]
    fn damaged_entries_are_dropped_on_load() {
        let c = EpochCache::from_entries([(1, 0), (2, 50), (3, 40), (5, 60)]);
        assert_eq!(c.entries(), vec![(1, 0), (2, 50), (5, 60)]);
    }
}

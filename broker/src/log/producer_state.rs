//! Idempotent producers: per partition, the last few batches each producer
//! wrote, so a retried batch is recognised and written once, and a gap or a
//! reordering is refused.
//!
//! Kept in memory, persisted as `p` keys in the partition's column family
//! with every append (same RocksDB batch as the index entries), and rebuilt
//! from batch headers when recovery re-reads the log tail.

use std::collections::{HashMap, VecDeque};

use tributary_proto::batch::BatchHeader;

/// Batches remembered per producer: as many as a producer may have in
/// flight per partition.
pub const REMEMBERED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMeta>,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Not from an idempotent producer, or the next in sequence: append.
    Append,
    /// Already written (a retry): answer with the offset it got then.
    Duplicate {
        base_offset: i64,
    },
    OutOfOrder {
        expected: i32,
        got: i32,
    },
    Fenced {
        current_epoch: i16,
        got: i16,
    },
}

fn last_seq(h: &BatchHeader) -> i32 {
    h.base_sequence.wrapping_add(h.record_count - 1)
}

#[derive(Debug, Default)]
pub struct ProducerStates {
    map: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn insert(&mut self, producer_id: i64, entry: ProducerEntry) {
        self.map.insert(producer_id, entry);
    }

    pub fn remove(&mut self, producer_id: i64) {
        self.map.remove(&producer_id);
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.map.get(&producer_id)
    }

    pub fn check(&self, h: &BatchHeader) -> SeqCheck {
        if h.producer_id < 0 {
            return SeqCheck::Append;
        }
        let Some(entry) = self.map.get(&h.producer_id) else {
            // A producer's first batch on this partition starts at 0.
            return if h.base_sequence == 0 {
                SeqCheck::Append
            } else {
                SeqCheck::OutOfOrder { expected: 0, got: h.base_sequence }
            };
        };
        if h.producer_epoch < entry.epoch {
            return SeqCheck::Fenced { current_epoch: entry.epoch, got: h.producer_epoch };
        }
        if h.producer_epoch > entry.epoch {
            return if h.base_sequence == 0 {
                SeqCheck::Append
            } else {
                SeqCheck::OutOfOrder { expected: 0, got: h.base_sequence }
            };
        }
        let last = last_seq(h);
        if let Some(b) = entry.batches.iter().find(|b| b.first_seq == h.base_sequence && b.last_seq == last) {
            return SeqCheck::Duplicate { base_offset: b.base_offset };
        }
        let expected = entry.batches.back().map_or(0, |b| b.last_seq.wrapping_add(1));
        if h.base_sequence == expected {
            SeqCheck::Append
        } else {
            SeqCheck::OutOfOrder { expected, got: h.base_sequence }
        }
    }

    /// Notes an appended batch; returns the producer's updated entry (to
    /// persist), or None for non-idempotent batches.
    pub fn record(&mut self, h: &BatchHeader, base_offset: i64) -> Option<&ProducerEntry> {
        if h.producer_id < 0 {
            return None;
        }
        let entry = self
            .map
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry { epoch: h.producer_epoch, batches: VecDeque::new() });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(BatchMeta { first_seq: h.base_sequence, last_seq: last_seq(h), base_offset });
        while entry.batches.len() > REMEMBERED_BATCHES {
            entry.batches.pop_front();
        }
        Some(entry)
    }
}

impl ProducerEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(3 + self.batches.len() * 16);
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.push(self.batches.len() as u8);
        for b in &self.batches {
            v.extend_from_slice(&b.first_seq.to_be_bytes());
            v.extend_from_slice(&b.last_seq.to_be_bytes());
            v.extend_from_slice(&b.base_offset.to_be_bytes());
        }
        v
    }

    pub fn decode(b: &[u8]) -> Option<ProducerEntry> {
        let epoch = i16::from_be_bytes(b.get(..2)?.try_into().ok()?);
        let n = *b.get(2)? as usize;
        let mut batches = VecDeque::with_capacity(n);
        for i in 0..n {
            let at = 3 + i * 16;
            let chunk = b.get(at..at + 16)?;
            batches.push_back(BatchMeta {
                first_seq: i32::from_be_bytes(chunk[..4].try_into().ok()?),
                last_seq: i32::from_be_bytes(chunk[4..8].try_into().ok()?),
                base_offset: i64::from_be_bytes(chunk[8..].try_into().ok()?),
            });
        }
        Some(ProducerEntry { epoch, batches })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 100,
            leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: count,
        }
    }

    #[test]
    fn sequences_dedupe_and_gaps() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(&header(-1, -1, -1, 3)), SeqCheck::Append);
        assert_eq!(s.check(&header(7, 0, 5, 1)), SeqCheck::OutOfOrder { expected: 0, got: 5 });
        let b0 = header(7, 0, 0, 10);
        assert_eq!(s.check(&b0), SeqCheck::Append);
        s.record(&b0, 100);
        let b1 = header(7, 0, 10, 5);
        assert_eq!(s.check(&b1), SeqCheck::Append);
        s.record(&b1, 110);
        // A retry of either is a duplicate with its original offset.
        assert_eq!(s.check(&b0), SeqCheck::Duplicate { base_offset: 100 });
        assert_eq!(s.check(&b1), SeqCheck::Duplicate { base_offset: 110 });
        // Skipping ahead is refused.
        assert_eq!(s.check(&header(7, 0, 20, 1)), SeqCheck::OutOfOrder { expected: 15, got: 20 });
        // An older epoch is fenced; a newer one starts again at 0.
        s.record(&header(7, 1, 0, 1), 200);
        assert_eq!(s.check(&header(7, 0, 15, 1)), SeqCheck::Fenced { current_epoch: 1, got: 0 });
        assert_eq!(s.check(&header(7, 1, 1, 1)), SeqCheck::Append);
    }

    #[test]
    fn only_the_last_batches_are_remembered_and_entries_round_trip() {
        let mut s = ProducerStates::default();
        for i in 0..8 {
            s.record(&header(1, 0, i, 1), i64::from(i));
        }
        let e = s.get(1).unwrap().clone();
        assert_eq!(e.batches.len(), REMEMBERED_BATCHES);
        assert_eq!(e.batches.front().unwrap().first_seq, 3);
        assert_eq!(ProducerEntry::decode(&e.encode()), Some(e));
        assert_eq!(ProducerEntry::decode(&[0, 1, 9]), None);
    }
}

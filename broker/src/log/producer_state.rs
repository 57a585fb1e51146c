//! Idempotent producers: per partition, the last few batches each producer
//! wrote, so a retried batch is recognised and written once, and a gap or a
//! reordering is refused.
//!
//! Kept in memory. Persisted as snapshots at known log positions (`P` keys
//! in the partition's column family): one at every segment roll and one at
//! clean shutdown, as Kafka keeps one per segment. The segment files are the
//! truth: after an unclean stop, recovery loads the newest snapshot at or
//! below the recovered log end and replays batch headers from there, so
//! producer state always agrees with the log (nothing a truncation removed
//! is remembered).

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

impl BatchMeta {
    /// The offset after the batch (its records have consecutive offsets).
    pub fn next_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_seq.wrapping_sub(self.first_seq)) + 1
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMeta>,
    /// Wall-clock ms of the producer's last append here, for
    /// `producer.id.expiration.ms`.
    pub last_append_ms: i64,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Not from an idempotent producer, or the next in sequence: append.
    Append,
    /// Already written (a retry): answer with the offset it got then.
    Duplicate {
        base_offset: i64,
        next_offset: i64,
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

fn check_entry(entry: Option<&ProducerEntry>, h: &BatchHeader) -> SeqCheck {
    if h.producer_id < 0 {
        return SeqCheck::Append;
    }
    let Some(entry) = entry else {
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
        return SeqCheck::Duplicate { base_offset: b.base_offset, next_offset: b.next_offset() };
    }
    let expected = entry.batches.back().map_or(0, |b| b.last_seq.wrapping_add(1));
    if h.base_sequence == expected {
        SeqCheck::Append
    } else {
        SeqCheck::OutOfOrder { expected, got: h.base_sequence }
    }
}

fn record_entry(entry: &mut ProducerEntry, h: &BatchHeader, base_offset: i64) {
    if h.producer_epoch != entry.epoch {
        entry.epoch = h.producer_epoch;
        entry.batches.clear();
    }
    entry.batches.push_back(BatchMeta { first_seq: h.base_sequence, last_seq: last_seq(h), base_offset });
    while entry.batches.len() > REMEMBERED_BATCHES {
        entry.batches.pop_front();
    }
}

fn new_entry(h: &BatchHeader, now_ms: i64) -> ProducerEntry {
    ProducerEntry { epoch: h.producer_epoch, batches: VecDeque::new(), last_append_ms: now_ms }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
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

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn check(&self, h: &BatchHeader) -> SeqCheck {
        check_entry(self.map.get(&h.producer_id), h)
    }

    /// Notes an appended batch (non-idempotent batches are ignored).
    pub fn record(&mut self, h: &BatchHeader, base_offset: i64, now_ms: i64) {
        if h.producer_id < 0 {
            return;
        }
        let entry = self.map.entry(h.producer_id).or_insert_with(|| new_entry(h, now_ms));
        record_entry(entry, h, base_offset);
        entry.last_append_ms = now_ms;
    }

    /// Recovery: applies a batch read back from the log, as its append did.
    pub fn replay(&mut self, h: &BatchHeader, now_ms: i64) {
        if matches!(self.check(h), SeqCheck::Append) {
            self.record(h, h.base_offset, now_ms);
        }
    }

    /// Forgets producers that have not appended for `expiration_ms`
    /// (Kafka's `producer.id.expiration.ms`), so state stays bounded.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) {
        self.map.retain(|_, e| now_ms.saturating_sub(e.last_append_ms) < expiration_ms);
    }

    /// Every producer's state, as stored in a snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut ids: Vec<_> = self.map.keys().copied().collect();
        ids.sort_unstable();
        let mut v = Vec::with_capacity(4 + ids.len() * 40);
        v.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            let e = self.map[&id].encode();
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(&(e.len() as u16).to_be_bytes());
            v.extend_from_slice(&e);
        }
        v
    }

    /// Reads a snapshot; None when it is damaged.
    pub fn from_snapshot(b: &[u8]) -> Option<ProducerStates> {
        let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let mut at = 4;
        let mut map = HashMap::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let id = i64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?);
            let len = u16::from_be_bytes(b.get(at + 8..at + 10)?.try_into().ok()?) as usize;
            let entry = ProducerEntry::decode(b.get(at + 10..at + 10 + len)?)?;
            map.insert(id, entry);
            at += 10 + len;
        }
        (at == b.len()).then_some(ProducerStates { map })
    }
}

/// Producer-state changes of an append in progress: checked and recorded
/// against the log's state plus what earlier batches of the same append
/// did, and applied only once the append was written.
#[derive(Debug, Default)]
pub struct Overlay {
    staged: HashMap<i64, ProducerEntry>,
}

impl Overlay {
    pub fn check(&self, base: &ProducerStates, h: &BatchHeader) -> SeqCheck {
        check_entry(self.staged.get(&h.producer_id).or_else(|| base.get(h.producer_id)), h)
    }

    pub fn record(&mut self, base: &ProducerStates, h: &BatchHeader, base_offset: i64) {
        if h.producer_id < 0 {
            return;
        }
        let entry = self
            .staged
            .entry(h.producer_id)
            .or_insert_with(|| base.get(h.producer_id).cloned().unwrap_or_else(|| new_entry(h, 0)));
        record_entry(entry, h, base_offset);
    }

    pub fn apply(&mut self, states: &mut ProducerStates, now_ms: i64) {
        for (pid, mut entry) in self.staged.drain() {
            entry.last_append_ms = now_ms;
            states.insert(pid, entry);
        }
    }
}

impl ProducerEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(11 + self.batches.len() * 16);
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.push(self.batches.len() as u8);
        for b in &self.batches {
            v.extend_from_slice(&b.first_seq.to_be_bytes());
            v.extend_from_slice(&b.last_seq.to_be_bytes());
            v.extend_from_slice(&b.base_offset.to_be_bytes());
        }
        v.extend_from_slice(&self.last_append_ms.to_be_bytes());
        v
    }

    /// Decodes an entry; entries written before `last_append_ms` existed
    /// get 0 there, and the caller decides what that means.
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
        let rest = b.get(3 + n * 16..)?;
        let last_append_ms = match rest.len() {
            0 => 0,
            8 => i64::from_be_bytes(rest.try_into().ok()?),
            _ => return None,
        };
        Some(ProducerEntry { epoch, batches, last_append_ms })
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
        s.record(&b0, 100, 0);
        let b1 = header(7, 0, 10, 5);
        assert_eq!(s.check(&b1), SeqCheck::Append);
        s.record(&b1, 110, 0);
        // A retry of either is a duplicate with its original offset.
        assert_eq!(s.check(&b0), SeqCheck::Duplicate { base_offset: 100, next_offset: 110 });
        assert_eq!(s.check(&b1), SeqCheck::Duplicate { base_offset: 110, next_offset: 115 });
        // Skipping ahead is refused.
        assert_eq!(s.check(&header(7, 0, 20, 1)), SeqCheck::OutOfOrder { expected: 15, got: 20 });
        // An older epoch is fenced; a newer one starts again at 0.
        s.record(&header(7, 1, 0, 1), 200, 0);
        assert_eq!(s.check(&header(7, 0, 15, 1)), SeqCheck::Fenced { current_epoch: 1, got: 0 });
        assert_eq!(s.check(&header(7, 1, 1, 1)), SeqCheck::Append);
    }

    #[test]
    fn only_the_last_batches_are_remembered_and_entries_round_trip() {
        let mut s = ProducerStates::default();
        for i in 0..8 {
            s.record(&header(1, 0, i, 1), i64::from(i), 0);
        }
        let e = s.get(1).unwrap().clone();
        assert_eq!(e.batches.len(), REMEMBERED_BATCHES);
        assert_eq!(e.batches.front().unwrap().first_seq, 3);
        assert_eq!(ProducerEntry::decode(&e.encode()), Some(e));
        assert_eq!(ProducerEntry::decode(&[0, 1, 9]), None);
        let snap = s.snapshot();
        assert_eq!(ProducerStates::from_snapshot(&snap), Some(s.clone()));
        assert_eq!(ProducerStates::from_snapshot(&snap[..snap.len() - 1]), None);
    }

    #[test]
    fn idle_producers_expire() {
        let mut s = ProducerStates::default();
        s.record(&header(1, 0, 0, 1), 0, 1_000);
        s.record(&header(2, 0, 0, 1), 1, 50_000);
        s.expire(60_000, 30_000);
        assert!(s.get(1).is_none());
        assert!(s.get(2).is_some());
    }
}

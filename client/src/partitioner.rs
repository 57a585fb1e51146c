//! Which partition a record goes to.
//!
//! Keyed records use Kafka's murmur2 of the key, bit for bit, so a key lands
//! on the same partition as it would from a Kafka client (mirrors and mixed
//! producers agree). Keyless records stick to one partition until its batch
//! closes, then move round-robin: full batches, few requests, and still an
//! even spread over time.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with Kafka's seed.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() == 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which
/// overflows on `i32::MIN`).
pub fn to_positive(x: i32) -> i32 {
    x & 0x7fff_ffff
}

/// The partition of a keyed record among `partitions` (> 0).
pub fn key_partition(key: &[u8], partitions: u32) -> u32 {
    to_positive(murmur2(key)) as u32 % partitions.max(1)
}

/// The partition keyless records of one topic currently go to.
#[derive(Debug)]
pub(crate) struct StickyPartition {
    current: AtomicU32,
}

impl StickyPartition {
    /// Starts at a different partition in every producer, so several
    /// producers don't all pile onto partition 0 first.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let start = nanos.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919));
        StickyPartition { current: AtomicU32::new(start) }
    }

    #[cfg(test)]
    fn starting_at(p: u32) -> Self {
        StickyPartition { current: AtomicU32::new(p) }
    }

    pub fn partition(&self, partitions: u32) -> u32 {
        self.current.load(Ordering::Relaxed) % partitions.max(1)
    }

    /// A batch of `partition` closed: if keyless records were going there,
    /// move them on to the next partition.
    pub fn batch_closed(&self, partition: u32, partitions: u32) {
        if partitions <= 1 {
            return;
        }
        let current = self.current.load(Ordering::Relaxed);
        if current % partitions == partition {
            let next = (partition + 1) % partitions;
            // Losing the race means another closer already moved it on.
            let _ = self.current.compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// Picks the partition: explicit, else by key, else sticky.
pub(crate) fn choose(
    explicit: Option<u32>,
    key: Option<&[u8]>,
    sticky: &StickyPartition,
    partitions: u32,
) -> u32 {
    match (explicit, key) {
        (Some(p), _) => p,
        (None, Some(k)) => key_partition(k, partitions),
        (None, None) => sticky.partition(partitions),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: &[(&str, i32)] = &[
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ];
        for (input, want) in cases {
            assert_eq!(murmur2(input.as_bytes()), *want, "murmur2({input:?})");
        }
    }

    #[test]
    fn to_positive_clears_the_sign_bit() {
        assert_eq!(to_positive(-1), 0x7fff_ffff);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(5), 5);
        assert_eq!(to_positive(-973932308), -973932308 & 0x7fff_ffff);
    }

    #[test]
    fn same_key_same_partition() {
        let sticky = StickyPartition::starting_at(0);
        for key in ["a", "user-17", "", "a-little-bit-longer-string"] {
            let first = choose(None, Some(key.as_bytes()), &sticky, 12);
            assert!(first < 12);
            for _ in 0..5 {
                sticky.batch_closed(sticky.partition(12), 12);
                assert_eq!(choose(None, Some(key.as_bytes()), &sticky, 12), first);
            }
            assert_eq!(first, (to_positive(murmur2(key.as_bytes())) % 12) as u32);
        }
    }

    #[test]
    fn explicit_partition_wins() {
        let sticky = StickyPartition::starting_at(0);
        assert_eq!(choose(Some(3), Some(b"k"), &sticky, 4), 3);
        assert_eq!(choose(Some(2), None, &sticky, 4), 2);
    }

    #[test]
    fn keyless_records_stick_until_a_batch_closes() {
        let sticky = StickyPartition::starting_at(1);
        let p = choose(None, None, &sticky, 3);
        assert_eq!(p, 1);
        for _ in 0..100 {
            assert_eq!(choose(None, None, &sticky, 3), p);
        }
        // Closing a batch of another partition changes nothing.
        sticky.batch_closed(0, 3);
        assert_eq!(choose(None, None, &sticky, 3), p);
        sticky.batch_closed(p, 3);
        let q = choose(None, None, &sticky, 3);
        assert_ne!(q, p);
        sticky.batch_closed(q, 3);
        let r = choose(None, None, &sticky, 3);
        sticky.batch_closed(r, 3);
        // Round-robin: every partition gets its turn.
        let mut seen = vec![p, q, r];
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2]);
        assert_eq!(choose(None, None, &sticky, 3), p);
    }

    #[test]
    fn one_partition_always_zero() {
        let sticky = StickyPartition::new();
        assert_eq!(choose(None, None, &sticky, 1), 0);
        sticky.batch_closed(0, 1);
        assert_eq!(choose(None, None, &sticky, 1), 0);
    }
}

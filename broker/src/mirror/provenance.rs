//! The provenance header every mirrored record gains, and the scan that
//! finds where a mirror task resumes.
//!
//! Header `tributary.provenance`, value (UTF-8)
//! `CLUSTER_ID:TOPIC_TAG:PARTITION:OFFSET`: the source cluster's id, a tag
//! of the source topic's id (8 hex digits of its CRC-32C), the source
//! partition and the record's offset there, e.g. `Xy3k...Q:9f3a01c2:2:1047`.
//! Text, so `consume --print-headers` shows it; small (cluster ids are 22
//! characters and never hold a `:`). A record mirrored over several hops
//! carries one header per hop, oldest first: the last one names the
//! cluster it was copied from into this one. The older three-part form
//! `CLUSTER_ID:PARTITION:OFFSET` (no topic tag) is still read.
//!
//! The data is the checkpoint: a task resumes after the last record in its
//! destination partition whose last provenance header names its source
//! cluster and partition. Only the destination leader appends, and after an
//! election the new leader's log is the truth, so this neither loses nor
//! duplicates records (no separate offset store can disagree with it).
//! The topic tag tells a source topic that was deleted and created again
//! (its offsets start over) from the one the last copy came from: without
//! it the task would resume the new topic at the old topic's offset and
//! silently skip its first records.

use bytes::Bytes;
use tributary_proto::batch::{self, Batches};
pub use tributary_proto::provenance::{came_from, hops, last_hop, topic_tag, Provenance, HEADER};

use crate::error::{Error, Result};
use crate::partition::Partition;

/// Offsets per scan step backwards from the log end; doubles each step.
const FIRST_STEP: i64 = 4096;

/// The provenance of the last record in `partition` at offsets
/// `from..upto` that was copied from `cluster_id`'s partition
/// `source_partition`, with its offset here; None when there is none. Scans back from `upto` in
/// growing windows, so a partition fed by one source finds it in its last
/// batch. `from` below the log start means the log start. Blocking.
pub fn last_copied(
    partition: &Partition,
    cluster_id: &str,
    source_partition: u32,
    from: i64,
    upto: i64,
) -> Result<Option<(Provenance, i64)>> {
    let start = partition.log_start_offset().max(from);
    let mut hi = upto.min(partition.log_end_offset());
    let mut step = FIRST_STEP;
    while hi > start {
        let lo = (hi - step).max(start);
        if let Some(found) = last_in(partition, lo, hi, cluster_id, source_partition)? {
            return Ok(Some(found));
        }
        hi = lo;
        step = step.saturating_mul(2);
    }
    Ok(None)
}

/// The last match among the records at offsets `lo..hi`.
fn last_in(
    partition: &Partition,
    lo: i64,
    hi: i64,
    cluster_id: &str,
    source_partition: u32,
) -> Result<Option<(Provenance, i64)>> {
    let mut found = None;
    let mut at = lo;
    while at < hi {
        let read = partition.read_replica(at, 1 << 20)?;
        if read.records.is_empty() {
            break;
        }
        let before = at;
        for b in Batches::new(&read.records) {
            let corrupt = |e| {
                Error::Storage(format!(
                    "{}-{}: reading back mirrored records: {e}",
                    partition.topic, partition.id
                ))
            };
            let (header, slice) = b.map_err(corrupt)?;
            if header.base_offset >= hi {
                return Ok(found);
            }
            at = at.max(header.next_offset());
            let bytes: Bytes = read.records.slice_ref(slice);
            for r in batch::records(&bytes).map_err(corrupt)? {
                let r = r.map_err(corrupt)?;
                if r.offset < lo || r.offset >= hi {
                    continue;
                }
                if let Some(p) = last_hop(&r) {
                    if p.cluster_id == cluster_id && p.partition == source_partition {
                        found = Some((p, r.offset));
                    }
                }
            }
        }
        if at == before {
            break;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::partition::test_partition as partition;

    /// One batch of records copied from `cluster` partition 0 at `offsets`
    /// (or, with `None`, records of the partition's own producers).
    fn copied(cluster: Option<&str>, offsets: std::ops::Range<i64>) -> Bytes {
        let mut b = tributary_proto::batch::BatchBuilder::new(tributary_proto::batch::Compression::Lz4, 0);
        for o in offsets {
            let hop = cluster.map(|c| {
                Provenance { cluster_id: c.into(), topic_tag: topic_tag("t1"), partition: 0, offset: o }
                    .encode()
            });
            let headers: Vec<(&str, Option<&[u8]>)> =
                hop.iter().map(|h| (HEADER, Some(h.as_slice()))).collect();
            b.append(o, None, Some(b"v"), &headers);
        }
        b.build()
    }

    #[test]
    fn the_resume_point_is_the_last_copy_from_that_source_however_far_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        let config = crate::config::TopicConfig::default();
        let last = |cluster: &str, partition: u32| {
            last_copied(&p, cluster, partition, 0, i64::MAX).unwrap().map(|(h, _)| h.offset)
        };
        assert_eq!(last("a", 0), None, "an empty log: start from the link's start");
        // An identity topic fed by sources a and b and written to directly:
        // a's last copy lies far behind the log end (several scan windows).
        p.append(&copied(Some("a"), 0..100), &config, 0).unwrap();
        p.append(&copied(Some("b"), 0..50), &config, 0).unwrap();
        p.append(&copied(Some("a"), 100..120), &config, 0).unwrap();
        for i in 0..10 {
            p.append(&copied(Some("b"), 50 + i * 1000..50 + (i + 1) * 1000), &config, 0).unwrap();
        }
        p.append(&copied(None, 0..700), &config, 0).unwrap();
        assert_eq!(last("a", 0), Some(119));
        assert_eq!(last("b", 0), Some(10_049));
        assert_eq!(last("b", 1), None, "another partition of b");
        assert_eq!(last("c", 0), None);
        let (found, at) = last_copied(&p, "a", 0, 0, i64::MAX).unwrap().unwrap();
        assert_eq!(found.topic_tag, topic_tag("t1"), "the hop names the source topic");
        assert_eq!(at, 169, "a's last copy is the 170th record here");
        // A scan of part of the log (the scan that runs outside the lock,
        // then the one under it from where the first ended).
        assert_eq!(last_copied(&p, "a", 0, 0, 120).unwrap().map(|(h, _)| h.offset), Some(99));
        assert_eq!(last_copied(&p, "a", 0, 170, i64::MAX).unwrap(), None, "a's copies all lie before 170");
        // Log offsets 170.. hold b's 50..: the last below 1150 is b's 1029.
        assert_eq!(last_copied(&p, "b", 0, 150, 1150).unwrap().map(|(h, _)| h.offset), Some(1029));
    }
}

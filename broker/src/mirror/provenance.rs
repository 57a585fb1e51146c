//! The provenance header every mirrored record gains, and the scan that
//! finds where a mirror task resumes.
//!
//! Header `tributary.provenance`, value (UTF-8) `CLUSTER_ID:PARTITION:OFFSET`:
//! the source cluster's id, the source partition and the record's offset
//! there, e.g. `Xy3k...Q:2:1047`. Text, so `consume --print-headers` shows
//! it; small (cluster ids are 22 characters). A record mirrored over
//! several hops carries one header per hop, oldest first: the last one
//! names the cluster it was copied from into this one.
//!
//! The data is the checkpoint: a task resumes after the last record in its
//! destination partition whose last provenance header names its source
//! cluster and partition. Only the destination leader appends, and after an
//! election the new leader's log is the truth, so this neither loses nor
//! duplicates records (no separate offset store can disagree with it).

use bytes::Bytes;
use tributary_proto::batch::{self, Batches, Record};

use crate::error::{Error, Result};
use crate::partition::Partition;

pub const HEADER: &str = "tributary.provenance";

/// Where a mirrored record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub cluster_id: String,
    pub partition: u32,
    pub offset: i64,
}

impl Provenance {
    pub fn encode(&self) -> Vec<u8> {
        format!("{}:{}:{}", self.cluster_id, self.partition, self.offset).into_bytes()
    }

    pub fn decode(value: &[u8]) -> Option<Provenance> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.rsplitn(3, ':');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let cluster_id = parts.next()?.to_string();
        if cluster_id.is_empty() {
            return None;
        }
        Some(Provenance { cluster_id, partition, offset })
    }
}

/// Every provenance header of a record, oldest hop first.
pub fn hops(r: &Record) -> impl Iterator<Item = Provenance> + '_ {
    r.headers
        .iter()
        .filter(|h| h.key == HEADER)
        .filter_map(|h| h.value.as_deref().and_then(Provenance::decode))
}

/// The hop that brought a record into this cluster.
pub fn last_hop(r: &Record) -> Option<Provenance> {
    hops(r).last()
}

/// Whether the record was ever in cluster `cluster_id` as a mirrored copy
/// (copying it there again would loop).
pub fn came_from(r: &Record, cluster_id: &str) -> bool {
    hops(r).any(|p| p.cluster_id == cluster_id)
}

/// Offsets per scan step backwards from the log end; doubles each step.
const FIRST_STEP: i64 = 4096;

/// The source offset of the last record in `partition` (up to its log end)
/// that was copied from `cluster_id`'s partition `source_partition`; None
/// when there is none. Scans back from the log end in growing windows, so a
/// partition fed by one source finds it in its last batch. Blocking.
pub fn last_copied(partition: &Partition, cluster_id: &str, source_partition: u32) -> Result<Option<i64>> {
    let start = partition.log_start_offset();
    let mut hi = partition.log_end_offset();
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
) -> Result<Option<i64>> {
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
                        found = Some(p.offset);
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
    use tributary_proto::batch::RecordHeader;

    /// A partition log in `dir` (real files and RocksDB).
    fn partition(dir: &std::path::Path) -> std::sync::Arc<Partition> {
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

    /// One batch of records copied from `cluster` partition 0 at `offsets`
    /// (or, with `None`, records of the partition's own producers).
    fn copied(cluster: Option<&str>, offsets: std::ops::Range<i64>) -> Bytes {
        let mut b = tributary_proto::batch::BatchBuilder::new(tributary_proto::batch::Compression::Lz4, 0);
        for o in offsets {
            let hop = cluster.map(|c| Provenance { cluster_id: c.into(), partition: 0, offset: o }.encode());
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
        assert_eq!(last_copied(&p, "a", 0).unwrap(), None, "an empty log: start from the link's start");
        // An identity topic fed by sources a and b and written to directly:
        // a's last copy lies far behind the log end (several scan windows).
        p.append(&copied(Some("a"), 0..100), &config, 0).unwrap();
        p.append(&copied(Some("b"), 0..50), &config, 0).unwrap();
        p.append(&copied(Some("a"), 100..120), &config, 0).unwrap();
        for i in 0..10 {
            p.append(&copied(Some("b"), 50 + i * 1000..50 + (i + 1) * 1000), &config, 0).unwrap();
        }
        p.append(&copied(None, 0..700), &config, 0).unwrap();
        assert_eq!(last_copied(&p, "a", 0).unwrap(), Some(119));
        assert_eq!(last_copied(&p, "b", 0).unwrap(), Some(10_049));
        assert_eq!(last_copied(&p, "b", 1).unwrap(), None, "another partition of b");
        assert_eq!(last_copied(&p, "c", 0).unwrap(), None);
    }

    #[test]
    fn provenance_round_trips_and_rejects_garbage() {
        let p = Provenance { cluster_id: "abc:def".into(), partition: 3, offset: 1047 };
        assert_eq!(p.encode(), b"abc:def:3:1047");
        assert_eq!(Provenance::decode(&p.encode()), Some(p));
        for bad in [&b""[..], b"x", b"x:1", b":1:2", b"x:-1:2", b"x:1:y", &[0xff, b':', b'1', b':', b'2']] {
            assert_eq!(Provenance::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_last_hop_names_the_cluster_copied_from_and_every_hop_counts_for_loops() {
        let hop = |c: &str, o: i64| RecordHeader {
            key: HEADER.into(),
            value: Some(Bytes::from(Provenance { cluster_id: c.into(), partition: 0, offset: o }.encode())),
        };
        let r = Record {
            offset: 0,
            timestamp: 0,
            key: None,
            value: None,
            headers: vec![hop("a", 5), RecordHeader { key: "x".into(), value: None }, hop("b", 9)],
        };
        assert_eq!(last_hop(&r).map(|p| (p.cluster_id, p.offset)), Some(("b".to_string(), 9)));
        assert!(came_from(&r, "a") && came_from(&r, "b") && !came_from(&r, "c"));
    }
}

//! The storage engine in-process: append/read across segments, recovery of
//! torn and corrupt tails, retention and compaction, without timing.

use std::path::Path;

use tributary_broker::config::TopicConfig;
use tributary_broker::log::fs;
use tributary_broker::log::index::PartitionIndex;
use tributary_broker::log::{Locate, PartitionLog};
use tributary_broker::store::Store;
use tributary_proto::batch;

mod common;
use common::{batch, config, read_all, value_batch, NOW};

fn open(dir: &Path, config: &TopicConfig) -> PartitionLog {
    let store = Store::open(&dir.join("rocksdb"), 8 << 20, 32 << 20).unwrap();
    store.create_cf("p/t-0").unwrap();
    let index = PartitionIndex::new(store, "p/t-0".into());
    PartitionLog::open(fs::real(), dir.join("t-0"), "t".into(), 0, index, config, NOW).unwrap()
}

#[test]
fn reads_by_offset_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&[("segment.bytes", "1024"), ("index.interval.bytes", "256")]);
    let mut log = open(dir.path(), &cfg);
    let mut expected = Vec::new();
    for i in 0..200 {
        let v = format!("value-{i:04}");
        let info = log.append(&value_batch(&[&v]), &cfg, NOW).unwrap();
        assert_eq!(info.base_offset, i);
        expected.push((i, None, Some(v)));
    }
    assert!(log.segment_count() > 5, "segments rolled at segment.bytes");
    assert_eq!(read_all(&log, 0), expected);
    for from in [1, 57, 123, 199] {
        assert_eq!(read_all(&log, from), expected[from as usize..].to_vec());
    }
    assert!(matches!(log.locate(200).unwrap(), Locate::AtEnd));
    assert!(log.read(200, 1 << 20).unwrap().is_empty());
    assert!(matches!(log.locate(201).unwrap(), Locate::OutOfRange { .. }));
}

#[test]
fn offsets_for_time_use_the_time_index() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&[]);
    let mut log = open(dir.path(), &cfg);
    log.append(&batch(&[(None, Some("a"), 100), (None, Some("b"), 300)]), &cfg, NOW).unwrap();
    log.append(&batch(&[(None, Some("c"), 200)]), &cfg, NOW).unwrap();
    log.append(&batch(&[(None, Some("d"), 500)]), &cfg, NOW).unwrap();
    assert_eq!(log.offset_for_time(50).unwrap(), Some((0, 100)));
    assert_eq!(log.offset_for_time(150).unwrap(), Some((1, 300)));
    assert_eq!(log.offset_for_time(400).unwrap(), Some((3, 500)));
    assert_eq!(log.offset_for_time(501).unwrap(), None);
}

#[test]
fn unclean_stop_recovers_and_truncates_a_corrupt_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&[("index.interval.bytes", "0")]);
    let seg_path;
    {
        let mut log = open(dir.path(), &cfg);
        for i in 0..10 {
            log.append(&value_batch(&[&format!("v{i}")]), &cfg, NOW).unwrap();
        }
        seg_path = dir.path().join("t-0").join("00000000000000000000.log");
        // No close(): as after kill -9.
    }
    // Flip a byte inside the 9th batch: it and everything after must go.
    let mut bytes = std::fs::read(&seg_path).unwrap();
    let mut pos = 0;
    for _ in 0..8 {
        pos += batch::BatchHeader::parse(&bytes[pos..]).unwrap().total_len();
    }
    bytes[pos + 70] ^= 0x55;
    std::fs::write(&seg_path, &bytes).unwrap();

    let mut log = open(dir.path(), &cfg);
    assert_eq!(log.log_end_offset(), 8);
    assert_eq!(std::fs::metadata(&seg_path).unwrap().len() as usize, pos);
    let got = read_all(&log, 0);
    assert_eq!(got.len(), 8);
    // The offsets given after recovery continue the surviving log.
    assert_eq!(log.append(&value_batch(&["next"]), &cfg, NOW).unwrap().base_offset, 8);
    assert_eq!(read_all(&log, 8), vec![(8, None, Some("next".into()))]);
}

#[test]
fn clean_close_skips_the_scan_and_keeps_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&[]);
    {
        let mut log = open(dir.path(), &cfg);
        log.append(&value_batch(&["a", "b", "c"]), &cfg, NOW).unwrap();
        log.close().unwrap();
    }
    let log = open(dir.path(), &cfg);
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(read_all(&log, 1).len(), 2);
}

#[test]
fn retention_by_bytes_and_time_deletes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&[("segment.bytes", "1024"), ("retention.bytes", "2048"), ("retention.ms", "60000")]);
    let mut log = open(dir.path(), &cfg);
    for i in 0..100 {
        log.append(&value_batch(&[&format!("{i:0>40}")]), &cfg, NOW).unwrap();
    }
    let files = log.apply_retention(&cfg, NOW).unwrap();
    assert!(!files.is_empty());
    assert!(log.size_bytes() <= 2048 + 1024);
    let start = log.log_start_offset();
    assert!(start > 0);
    assert!(matches!(log.locate(start - 1).unwrap(), Locate::OutOfRange { .. }));
    assert_eq!(read_all(&log, start).len() as i64, 100 - start);
    // An hour later everything has expired: the active segment is rolled and
    // every closed one goes.
    log.apply_retention(&cfg, NOW + 3_600_000).unwrap();
    log.apply_retention(&cfg, NOW + 3_600_000).unwrap();
    assert_eq!(log.log_start_offset(), 100);
    assert_eq!(log.size_bytes(), 0);
    // A restart remembers the log start.
    drop(log);
    let log = open(dir.path(), &cfg);
    assert_eq!(log.log_start_offset(), 100);
    assert_eq!(log.log_end_offset(), 100);
}

#[test]
fn compaction_keeps_latest_per_key_with_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        config(&[("cleanup.policy", "compact"), ("segment.bytes", "1024"), ("delete.retention.ms", "1000")]);
    let mut log = open(dir.path(), &cfg);
    // 3 keys x 20 versions, two records per batch, then a tombstone for k1.
    for round in 0..20 {
        let a = format!("a{round}");
        let b = format!("b{round}");
        let c = format!("c{round}");
        log.append(&batch(&[(Some("k0"), Some(&a), NOW), (Some("k1"), Some(&b), NOW)]), &cfg, NOW).unwrap();
        log.append(&batch(&[(Some("k2"), Some(&c), NOW)]), &cfg, NOW).unwrap();
    }
    let tomb = log.append(&batch(&[(Some("k1"), None, NOW)]), &cfg, NOW).unwrap().base_offset;
    for i in 0..20 {
        log.append(&batch(&[(Some(&format!("f{i}")), Some("filler-filler-filler"), NOW)]), &cfg, NOW)
            .unwrap();
    }
    let before = read_all(&log, 0);

    let plan = log.cleaning_plan(&cfg, NOW + 10).unwrap().expect("something to clean");
    let (cleaned, stats) = plan.run().unwrap();
    log.swap_cleaned(cleaned).unwrap();
    assert!(stats.records_removed > 0);
    let after = read_all(&log, 0);
    // Every surviving record is unchanged and at its original offset.
    for r in &after {
        assert!(before.contains(r), "{r:?} changed");
    }
    let latest = |k: &str| before.iter().filter(|r| r.1.as_deref() == Some(k)).map(|r| r.0).max().unwrap();
    for k in ["k0", "k2"] {
        let kept: Vec<_> = after.iter().filter(|r| r.1.as_deref() == Some(k)).collect();
        assert_eq!(kept.len(), 1, "{k}: {kept:?}");
        assert_eq!(kept[0].0, latest(k));
    }
    // The tombstone is still there for consumers to see...
    assert!(after.iter().any(|r| r.0 == tomb && r.2.is_none()));
    assert!(!after.iter().any(|r| r.1.as_deref() == Some("k1") && r.2.is_some()));
    // ...until delete.retention.ms has passed.
    let plan = log.cleaning_plan(&cfg, NOW + 5_000).unwrap().expect("tombstone due");
    let (cleaned, _) = plan.run().unwrap();
    log.swap_cleaned(cleaned).unwrap();
    let after = read_all(&log, 0);
    assert!(!after.iter().any(|r| r.1.as_deref() == Some("k1")));
    // Appends continue with the next offset, and a restart sees the result.
    let next = log.log_end_offset();
    assert_eq!(log.append(&batch(&[(Some("k9"), Some("z"), NOW)]), &cfg, NOW).unwrap().base_offset, next);
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), &cfg);
    let mut expect = after.clone();
    expect.push((next, Some("k9".into()), Some("z".into())));
    assert_eq!(read_all(&log, 0), expect);
}

/// Issue 7, defect 1: a cleaned segment's bytes end before its offset range
/// does; a fetch there must go on to the next segment, not return nothing.
#[test]
fn compaction_never_strands_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        config(&[("cleanup.policy", "compact"), ("segment.bytes", "1024"), ("min.compaction.lag.ms", "0")]);
    let mut log = open(dir.path(), &cfg);
    log.append(&batch(&[(Some("a"), Some("first"), NOW)]), &cfg, NOW).unwrap();
    for i in 1..=200 {
        let v = format!("v{i}");
        log.append(&batch(&[(Some("b"), Some(&v), NOW + i)]), &cfg, NOW + i).unwrap();
    }
    let plan = log.cleaning_plan(&cfg, NOW + 1_000).unwrap().expect("something to clean");
    let (cleaned, stats) = plan.run().unwrap();
    log.swap_cleaned(cleaned).unwrap();
    assert!(stats.records_removed > 100, "{stats:?}");
    let got = read_all(&log, 0);
    assert_eq!(got.first().map(|r| r.2.as_deref()), Some(Some("first")));
    assert_eq!(got.last().map(|r| r.2.clone()), Some(Some("v200".to_string())));
    // From any offset a reader reaches the end.
    for from in [1, 50, 150, 199, 200] {
        assert_eq!(read_all(&log, from).last().map(|r| r.0), Some(200), "from {from}");
    }
    // A time lookup landing in an emptied range finds the next record that
    // is still there (record i was written at NOW + i).
    let first_b = got[1].0;
    assert!(first_b > 5, "{got:?}");
    assert_eq!(log.offset_for_time(NOW + 5).unwrap(), Some((first_b, NOW + first_b)));
    let kept: Vec<_> = got.iter().map(|r| r.0).collect();
    assert!(kept.len() < 20, "{kept:?}");
}

/// Defect 8: retention deleting compacted records also forgets their keys.
#[test]
fn compaction_key_map_forgets_keys_retention_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&[
        ("cleanup.policy", "compact,delete"),
        ("segment.bytes", "1024"),
        ("retention.ms", "60000"),
        ("min.compaction.lag.ms", "0"),
    ]);
    let mut log = open(dir.path(), &cfg);
    for i in 0..100 {
        let k = format!("key-{i}");
        log.append(&batch(&[(Some(&k), Some("v"), NOW)]), &cfg, NOW).unwrap();
    }
    let plan = log.cleaning_plan(&cfg, NOW + 10).unwrap().expect("plan");
    let (cleaned, _) = plan.run().unwrap();
    log.swap_cleaned(cleaned).unwrap();
    assert!(log.index().key_offset(b"key-0").unwrap().is_some());
    // Everything expires; later records keep the log alive.
    let later = NOW + 3_600_000;
    log.roll(&cfg, later).unwrap();
    for i in 0..40 {
        let k = format!("new-{i}");
        log.append(&batch(&[(Some(&k), Some("v"), later)]), &cfg, later).unwrap();
    }
    log.apply_retention(&cfg, later).unwrap();
    assert!(log.log_start_offset() >= 100);
    if let Some(plan) = log.cleaning_plan(&cfg, later + 10).unwrap() {
        let (cleaned, _) = plan.run().unwrap();
        log.swap_cleaned(cleaned).unwrap();
    }
    assert_eq!(log.index().key_offset(b"key-0").unwrap(), None, "a deleted key stays in the key map");
}

//! The storage engine under faults, through the fault layer
//! (`tributary_broker::log::fault`): failed writes, failed fsyncs, a full
//! disk, power loss at chosen points. Each test names the defect of issue 7
//! it guards against.

use std::path::PathBuf;
use std::sync::Arc;

use tributary_broker::config::TopicConfig;
use tributary_broker::error::Error;
use tributary_broker::log::fault::{FaultFs, FaultOp, MemIndexStore};
use tributary_broker::log::index::PartitionIndex;
use tributary_broker::log::PartitionLog;

mod common;
use common::{batch, config, idempotent_batch, read_all, value_batch, NOW};

/// A log on the fault layer; `restart` reopens it as a new process would.
struct Rig {
    fs: FaultFs,
    index: MemIndexStore,
    dir: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        Rig { fs: FaultFs::new(), index: MemIndexStore::new(), dir: PathBuf::from("/data/t-0") }
    }

    fn open(&self, cfg: &TopicConfig) -> PartitionLog {
        self.try_open(cfg).unwrap()
    }

    fn try_open(&self, cfg: &TopicConfig) -> Result<PartitionLog, Error> {
        let index = PartitionIndex::new(Arc::new(self.index.clone()), "p/t-0".into());
        PartitionLog::open(Arc::new(self.fs.clone()), self.dir.clone(), "t".into(), 0, index, cfg, NOW)
    }

    /// Power loss: files and index keep only what was synced (the index
    /// also keeps `keep_unsynced` writes past it, as a WAL may).
    fn power_loss(&self, keep_unsynced: usize) {
        self.fs.power_loss();
        self.index.power_loss(keep_unsynced);
    }

    fn segment_len(&self, base: i64) -> usize {
        self.fs.read_file(&self.dir.join(format!("{base:020}.log"))).map_or(0, |b| b.len())
    }
}

fn values(log: &PartitionLog) -> Vec<(i64, String)> {
    read_all(log, log.log_start_offset()).into_iter().map(|(o, _, v)| (o, v.unwrap_or_default())).collect()
}

fn append_synced(log: &mut PartitionLog, data: &[u8], cfg: &TopicConfig) -> Result<i64, Error> {
    let info = log.append(data, cfg, NOW)?;
    if let Some(t) = info.sync {
        t.sync()?;
    }
    Ok(info.base_offset)
}

/// Defect 3: a failed segment write or index write leaves no trace: the
/// file is cut back, the offset is not used up, producer state does not say
/// "written", and the next append (and a restart) see the log as before.
#[test]
fn a_failed_append_leaves_no_trace() {
    for fault in ["segment write", "index write", "disk full"] {
        let rig = Rig::new();
        // Every batch gets an index entry, so every append writes the index.
        let cfg = config(&[("flush.messages", "1"), ("index.interval.bytes", "0")]);
        let mut log = rig.open(&cfg);
        for i in 0..3 {
            append_synced(&mut log, &idempotent_batch(7, i, &[&format!("ok{i}")]), &cfg).unwrap();
        }
        let len = rig.segment_len(0);
        match fault {
            "segment write" => rig.fs.fail_nth(FaultOp::Write, 1, libc::EIO),
            "index write" => rig.index.fail_nth_write(1),
            _ => rig.fs.set_capacity(Some(rig.fs.used_bytes() + 10)),
        }
        let lost = idempotent_batch(7, 3, &["lost"]);
        let err =
            log.append(&lost, &cfg, NOW).err().unwrap_or_else(|| panic!("{fault}: the append succeeded"));
        if fault == "disk full" {
            assert!(err.is_disk_full(), "{err}");
        }
        assert_eq!(log.log_end_offset(), 3, "{fault}: the log end moved");
        assert_eq!(rig.segment_len(0), len, "{fault}: bytes left past the log end");
        rig.fs.heal();
        rig.index.heal();
        rig.fs.set_capacity(None);
        // The retry is new data, not a "duplicate" of something never stored.
        let info = log.append(&lost, &cfg, NOW).unwrap();
        assert_eq!((info.base_offset, info.records), (3, 1), "{fault}");
        info.sync.unwrap().sync().unwrap();
        let expect: Vec<_> = ["ok0", "ok1", "ok2", "lost"]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64, v.to_string()))
            .collect();
        assert_eq!(values(&log), expect, "{fault}");
        drop(log);
        rig.power_loss(usize::MAX);
        let log = rig.open(&cfg);
        assert_eq!(values(&log), expect, "{fault}: after power loss");
    }
}

/// Defect 4: an fsync error is never swallowed: the producer is not told
/// "stored", and the log goes offline (reads and writes refused with the
/// reason) until a restart re-verifies it. Timed flushes too.
#[test]
fn an_fsync_error_takes_the_log_offline() {
    for timed in [false, true] {
        let rig = Rig::new();
        let cfg = if timed { config(&[("flush.ms", "0")]) } else { config(&[("flush.messages", "1")]) };
        let mut log = rig.open(&cfg);
        append_synced(&mut log, &value_batch(&["before"]), &cfg).unwrap();
        if timed {
            log.due_flush(&cfg, NOW + 10).unwrap().sync().unwrap();
        }
        rig.fs.fail_nth(FaultOp::Sync, 1, libc::EIO);
        let info = log.append(&value_batch(&["after"]), &cfg, NOW).unwrap();
        let ticket =
            if timed { log.due_flush(&cfg, NOW + 20).expect("due") } else { info.sync.expect("ticket") };
        let err = ticket.sync().unwrap_err();
        assert!(matches!(err, Error::LogOffline { .. }), "{err}");
        assert!(err.to_string().contains("fsync failed"), "{err}");
        // Nothing more is acknowledged or served, even once fsync "works".
        rig.fs.heal();
        assert!(matches!(log.append(&value_batch(&["x"]), &cfg, NOW), Err(Error::LogOffline { .. })));
        assert!(matches!(log.read(0, 1 << 20), Err(Error::LogOffline { .. })));
        assert!(log.due_flush(&cfg, NOW + 5_000).is_none());
        assert!(log.close().is_err(), "an offline log must not write a clean-shutdown marker");
        drop(log);
        // A restart re-verifies what is on disk and serves it again.
        rig.power_loss(0);
        let log = rig.open(&cfg);
        assert_eq!(values(&log), vec![(0, "before".to_string())], "timed={timed}");
    }
}

/// Defect 5: with flush.messages=1 nothing is visible to consumers before
/// it is fsynced, and a retry of a batch whose fsync is still running is
/// answered only after it.
#[test]
fn flush_messages_1_hides_records_until_they_are_durable() {
    let rig = Rig::new();
    let cfg = config(&[("flush.messages", "1")]);
    let mut log = rig.open(&cfg);
    let data = idempotent_batch(3, 0, &["a", "b"]);
    let first = log.append(&data, &cfg, NOW).unwrap();
    assert_eq!(log.high_watermark(), 0, "visible before fsync");
    assert!(log.read(0, 1 << 20).unwrap().is_empty());
    // The retry comes while the original's fsync is still pending.
    let retry = log.append(&data, &cfg, NOW).unwrap();
    assert_eq!((retry.base_offset, retry.records), (0, 0));
    let wait = retry.sync.expect("a retry must wait for the original's fsync");
    rig.fs.fail_nth(FaultOp::Sync, 1, libc::EIO);
    assert!(wait.sync().is_err(), "the retry is told stored though nothing is on disk");
    assert!(first.sync.unwrap().sync().is_err());
    assert_eq!(log.high_watermark(), 0);

    // And the good path: visible exactly when durable.
    let rig = Rig::new();
    let mut log = rig.open(&cfg);
    let info = log.append(&value_batch(&["x"]), &cfg, NOW).unwrap();
    assert_eq!(log.high_watermark(), 0);
    info.sync.unwrap().sync().unwrap();
    assert_eq!(log.high_watermark(), 1);
    assert_eq!(values(&log), vec![(0, "x".to_string())]);
}

/// Defect 6: after recovery truncates the log, producer state agrees with
/// it: a retried batch that did not survive is written (not answered
/// "duplicate" with an offset someone else then gets), and the producer's
/// sequence continues from what survived.
#[test]
fn producer_state_follows_the_log_through_truncation() {
    let rig = Rig::new();
    let cfg = config(&[]);
    let mut log = rig.open(&cfg);
    append_synced(&mut log, &idempotent_batch(9, 0, &["a"]), &cfg).unwrap();
    log.due_flush(&cfg, NOW + 5_000).unwrap().sync().unwrap();
    // Acknowledged under flush.ms (not fsynced), then the power goes; the
    // index write (with any producer state) made it, the bytes did not.
    log.append(&idempotent_batch(9, 1, &["b"]), &cfg, NOW).unwrap();
    drop(log);
    rig.power_loss(usize::MAX);
    let mut log = rig.open(&cfg);
    assert_eq!(log.log_end_offset(), 1);
    let info = log.append(&idempotent_batch(9, 1, &["b"]), &cfg, NOW).unwrap();
    assert_eq!((info.base_offset, info.records), (1, 1), "the lost batch must be written again");
    let other = log.append(&value_batch(&["someone else"]), &cfg, NOW).unwrap();
    assert_eq!(other.base_offset, 2);
    // A sequence gap is still refused.
    assert!(matches!(
        log.append(&idempotent_batch(9, 5, &["gap"]), &cfg, NOW),
        Err(Error::OutOfOrderSequence { .. })
    ));
    let v: Vec<_> = values(&log).into_iter().map(|(_, v)| v).collect();
    assert_eq!(v, ["a", "b", "someone else"]);
}

/// Defect 6, snapshots: producer state survives a roll and a restart (clean
/// or not) from the snapshot at the segment boundary.
#[test]
fn producer_state_is_rebuilt_from_snapshots() {
    let rig = Rig::new();
    let cfg = config(&[("segment.bytes", "1024"), ("flush.messages", "1")]);
    let mut log = rig.open(&cfg);
    for i in 0..40 {
        append_synced(&mut log, &idempotent_batch(4, i, &[&format!("v{i:03}-padding-padding")]), &cfg)
            .unwrap();
    }
    assert!(log.segment_count() > 2);
    let before = log.producers().clone();
    drop(log);
    rig.power_loss(0);
    let mut log = rig.open(&cfg);
    assert_eq!(log.producers().get(4).map(|e| &e.batches), before.get(4).map(|e| &e.batches));
    let dup = log.append(&idempotent_batch(4, 39, &["v039-padding-padding"]), &cfg, NOW).unwrap();
    assert_eq!((dup.base_offset, dup.records), (39, 0));
    log.close().unwrap();
    drop(log);
    let log = rig.open(&cfg);
    assert_eq!(log.producers().get(4).map(|e| &e.batches), before.get(4).map(|e| &e.batches));
}

fn compacted_log(rig: &Rig, cfg: &TopicConfig) -> PartitionLog {
    let mut log = rig.open(cfg);
    for round in 0..30 {
        for k in ["k0", "k1", "k2"] {
            let v = format!("{k}-{round}");
            append_synced(&mut log, &batch(&[(Some(k), Some(&v), NOW)]), cfg).unwrap();
        }
    }
    log
}

/// Defect 7: a crash anywhere in the compaction swap leaves a log whose
/// index matches its files: an unfinished `.cleaned` file is dropped, a
/// complete `.swap` is finished and its segment re-indexed.
#[test]
fn a_crash_during_the_compaction_swap_is_recovered() {
    let cfg = config(&[("cleanup.policy", "compact"), ("segment.bytes", "1024"), ("flush.messages", "1")]);
    for crash_at in ["index rewrite", "final rename", "after"] {
        let rig = Rig::new();
        let mut log = compacted_log(&rig, &cfg);
        let before = values(&log);
        let plan = log.cleaning_plan(&cfg, NOW + 10).unwrap().expect("plan");
        let (cleaned, _) = plan.run().unwrap();
        match crash_at {
            "index rewrite" => rig.index.fail_nth_write(1),
            "final rename" => rig.fs.fail_nth(FaultOp::Rename, 2, libc::EIO),
            _ => {}
        }
        let swapped = log.swap_cleaned(cleaned);
        assert_eq!(swapped.is_ok(), crash_at == "after", "{crash_at}");
        drop(log);
        rig.fs.heal();
        rig.index.heal();
        rig.power_loss(0);
        let log = rig.open(&cfg);
        let after = values(&log);
        // Whatever was kept is unchanged and at its offset; the latest of
        // every key is there.
        for r in &after {
            assert!(before.contains(r), "{crash_at}: {r:?} is not what was written there");
        }
        for k in ["k0", "k1", "k2"] {
            assert!(
                after.contains(&(before.iter().rfind(|r| r.1.starts_with(k)).unwrap().clone())),
                "{crash_at}"
            );
        }
        assert!(after.len() < before.len(), "{crash_at}: compaction result lost");
    }
}

/// Defect 13, through the fault layer (never skips): a full disk refuses
/// appends with a clear error, loses nothing acknowledged, reuses no
/// offset, keeps reads working; retention frees space and appends resume;
/// after a power loss everything acknowledged is there exactly once.
#[test]
fn a_full_disk_refuses_appends_and_recovers_when_space_is_freed() {
    let rig = Rig::new();
    let cfg = config(&[("flush.messages", "1"), ("segment.bytes", "4096"), ("retention.ms", "60000")]);
    let mut log = rig.open(&cfg);
    rig.fs.set_capacity(Some(20_000));
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..400 {
        let v = format!("record-{i:04}-{}", "x".repeat(40));
        match append_synced(&mut log, &value_batch(&[&v]), &cfg) {
            Ok(offset) => acked.push((offset, v)),
            Err(e) => {
                assert!(e.is_disk_full(), "{e}");
                assert!(e.to_string().contains("disk full"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0 && acked.len() > 50, "acked {} refused {refused}", acked.len());
    assert_eq!(values(&log), acked, "reads while full");
    // Retention (everything is old an hour later) frees the disk.
    let later = NOW + 3_600_000;
    log.apply_retention(&cfg, later).unwrap();
    assert!(rig.fs.used_bytes() < 10_000, "{}", rig.fs.used_bytes());
    let next = log.log_end_offset();
    assert_eq!(next, acked.last().unwrap().0 + 1, "an offset was used up by a refused append");
    let start = log.log_start_offset();
    let info = log.append(&value_batch(&["after"]), &cfg, later).unwrap();
    info.sync.unwrap().sync().unwrap();
    assert_eq!(info.base_offset, next);
    drop(log);
    rig.power_loss(0);
    let log = rig.open(&cfg);
    let mut expect: Vec<_> = acked.into_iter().filter(|(o, _)| *o >= start).collect();
    expect.push((next, "after".to_string()));
    assert_eq!(values(&log), expect);
}

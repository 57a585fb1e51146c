//! Property test of the storage engine under faults: random sequences of
//! appends (plain and idempotent), rolls, retention, compaction, injected
//! I/O errors (EIO, ENOSPC on writes, fsyncs, renames, index writes),
//! restarts and power losses. After every step and every recovery:
//!
//! * every record acknowledged (appended and fsynced, `flush.messages=1`)
//!   that retention has not removed is readable at its offset, with its
//!   value — for compacted topics, the latest acknowledged record of each key;
//! * nothing read is something that was never written, and no offset is
//!   handed out twice (a new acknowledged offset is above every earlier one);
//! * reads from the log start make progress to the high watermark;
//! * producer state agrees with the log: a retry of the last acknowledged
//!   idempotent batch is answered with its original offset.
//!
//! CI runs `PROPTEST_CASES` cases (default 64 per policy); a longer run:
//! `PROPTEST_CASES=5000 cargo test --release -p tributary-broker --test fault_props`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;
use tributary_broker::config::TopicConfig;
use tributary_broker::log::fault::{FaultFs, FaultOp, MemIndexStore};
use tributary_broker::log::index::PartitionIndex;
use tributary_broker::log::PartitionLog;
use tributary_proto::batch::{BatchBuilder, Compression, ProducerStamp};

mod common;
use common::{config, read_all, NOW};

#[derive(Debug, Clone)]
enum Fault {
    WriteEio,
    WriteFull,
    SyncEio,
    RenameEio,
    IndexWrite,
    IndexBroken,
}

#[derive(Debug, Clone)]
enum Step {
    Append { key: u8, idempotent: bool, size: u8 },
    Roll,
    Retention,
    Compact,
    Arm(Fault, u8),
    Restart,
    PowerLoss { keep_unsynced: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    let fault = prop_oneof![
        Just(Fault::WriteEio),
        Just(Fault::WriteFull),
        Just(Fault::SyncEio),
        Just(Fault::RenameEio),
        Just(Fault::IndexWrite),
        Just(Fault::IndexBroken),
    ];
    prop_oneof![
        12 => (0u8..4, any::<bool>(), 0u8..120).prop_map(|(key, idempotent, size)| Step::Append { key, idempotent, size }),
        1 => Just(Step::Roll),
        1 => Just(Step::Retention),
        2 => Just(Step::Compact),
        2 => (fault, 1u8..4).prop_map(|(f, n)| Step::Arm(f, n)),
        1 => Just(Step::Restart),
        2 => (0u8..4).prop_map(|keep_unsynced| Step::PowerLoss { keep_unsynced }),
    ]
}

/// What the test knows: what was acknowledged, and what was only tried.
#[derive(Default)]
struct Model {
    /// offset -> (key, value) of acknowledged records.
    acked: BTreeMap<i64, (String, String)>,
    /// Values appended without an acknowledgement (they may or may not be
    /// in the log).
    tried: BTreeSet<String>,
    /// The idempotent producer's next sequence, and its batch in doubt.
    next_seq: i32,
    pending: Option<(i32, String, String)>,
    /// Its last acknowledged batch: (sequence, key, value, offset).
    last_idempotent: Option<(i32, String, String, i64)>,
    counter: u64,
}

struct Rig {
    fs: FaultFs,
    index: MemIndexStore,
    cfg: TopicConfig,
    compact: bool,
}

impl Rig {
    fn open(&self) -> PartitionLog {
        let index = PartitionIndex::new(Arc::new(self.index.clone()), "p/t-0".into());
        PartitionLog::open(
            Arc::new(self.fs.clone()),
            PathBuf::from("/d/t-0"),
            "t".into(),
            0,
            index,
            &self.cfg,
            NOW,
        )
        .expect("a log must always reopen")
    }

    fn heal(&self) {
        self.fs.heal();
        self.index.heal();
        self.fs.set_capacity(None);
    }
}

fn idempotent(seq: i32, key: &str, value: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None, NOW);
    b.set_producer(ProducerStamp { producer_id: 1, producer_epoch: 0, base_sequence: seq });
    b.append(NOW, Some(key.as_bytes()), Some(value.as_bytes()), &[]);
    b.build().to_vec()
}

fn plain(key: &str, value: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::Lz4, NOW);
    b.append(NOW, Some(key.as_bytes()), Some(value.as_bytes()), &[]);
    b.build().to_vec()
}

/// Appends and fsyncs; Some(offset) when acknowledged.
fn append(log: &mut PartitionLog, cfg: &TopicConfig, data: &[u8]) -> Option<(i64, i64)> {
    let info = log.append(data, cfg, NOW).ok()?;
    if let Some(t) = info.sync {
        t.sync().ok()?;
    }
    Some((info.base_offset, info.records))
}

fn check(log: &PartitionLog, m: &Model, compact: bool) -> Result<(), TestCaseError> {
    if log.shared().offline_reason().is_some() {
        return Ok(());
    }
    let start = log.log_start_offset();
    let got = read_all(log, start);
    let mut seen_keys: BTreeMap<String, i64> = BTreeMap::new();
    for (offset, key, value) in &got {
        let (key, value) = (key.clone().unwrap_or_default(), value.clone().unwrap_or_default());
        match m.acked.get(offset) {
            Some((k, v)) => prop_assert_eq!((k, v), (&key, &value), "offset {} holds something else", offset),
            None => {
                prop_assert!(m.tried.contains(&value), "offset {} holds {:?}, never written", offset, value)
            }
        }
        seen_keys.insert(key, *offset);
    }
    let read: BTreeSet<i64> = got.iter().map(|r| r.0).collect();
    if compact {
        let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
        for (o, (k, _)) in &m.acked {
            latest.insert(k, *o);
        }
        for (k, o) in latest {
            if o >= start {
                prop_assert!(
                    seen_keys.get(k).is_some_and(|s| *s >= o),
                    "latest of {} (offset {}) lost",
                    k,
                    o
                );
            }
        }
    } else {
        for o in m.acked.keys().filter(|o| **o >= start) {
            prop_assert!(
                read.contains(o),
                "acknowledged offset {} lost (log {}..{})",
                o,
                start,
                log.log_end_offset()
            );
        }
    }
    Ok(())
}

fn run(steps: Vec<Step>, compact: bool) -> Result<(), TestCaseError> {
    let policy = if compact { "compact" } else { "delete" };
    let cfg = config(&[
        ("cleanup.policy", policy),
        ("flush.messages", "1"),
        ("segment.bytes", "1024"),
        ("retention.bytes", "4096"),
        ("index.interval.bytes", "200"),
    ]);
    let rig = Rig { fs: FaultFs::new(), index: MemIndexStore::new(), cfg, compact };
    let mut log = rig.open();
    let mut m = Model::default();
    for s in steps {
        match s {
            Step::Append { key, idempotent: idem, size } => {
                let key = format!("k{key}");
                m.counter += 1;
                let (seq, key, value, data) = match (idem, m.pending.clone()) {
                    (true, Some((seq, k, v))) => {
                        let d = idempotent(seq, &k, &v);
                        (Some(seq), k, v, d)
                    }
                    (true, None) => {
                        let v = format!("i{}-{}", m.counter, "p".repeat(size as usize));
                        let seq = m.next_seq;
                        (Some(seq), key.clone(), v.clone(), idempotent(seq, &key, &v))
                    }
                    (false, _) => {
                        let v = format!("v{}-{}", m.counter, "p".repeat(size as usize));
                        (None, key.clone(), v.clone(), plain(&key, &v))
                    }
                };
                match append(&mut log, &rig.cfg, &data) {
                    Some((offset, records)) => {
                        // Every acknowledged offset is new (records == 0:
                        // a retry answered with the original offset).
                        if records > 0 {
                            if let Some((&max, _)) = m.acked.last_key_value() {
                                prop_assert!(
                                    offset > max,
                                    "offset {} handed out again (max {})",
                                    offset,
                                    max
                                );
                            }
                        }
                        m.tried.remove(&value);
                        m.acked.insert(offset, (key.clone(), value.clone()));
                        if let Some(seq) = seq {
                            m.pending = None;
                            m.next_seq = seq + 1;
                            m.last_idempotent = Some((seq, key, value, offset));
                        }
                    }
                    None => {
                        m.tried.insert(value.clone());
                        if let Some(seq) = seq {
                            m.pending = Some((seq, key, value));
                        }
                    }
                }
            }
            Step::Roll => {
                let _ = log.roll(&rig.cfg, NOW);
            }
            Step::Retention => {
                let _ = log.apply_retention(&rig.cfg, NOW);
            }
            Step::Compact => {
                if let Ok(Some(plan)) = log.cleaning_plan(&rig.cfg, NOW + 1) {
                    if let Ok((cleaned, _)) = plan.run() {
                        let _ = log.swap_cleaned(cleaned);
                    }
                }
            }
            Step::Arm(f, n) => {
                let n = u64::from(n);
                match f {
                    Fault::WriteEio => rig.fs.fail_nth(FaultOp::Write, n, libc::EIO),
                    Fault::WriteFull => rig.fs.set_capacity(Some(rig.fs.used_bytes() + 50 * n)),
                    Fault::SyncEio => rig.fs.fail_nth(FaultOp::Sync, n, libc::EIO),
                    Fault::RenameEio => rig.fs.fail_nth(FaultOp::Rename, n, libc::EIO),
                    Fault::IndexWrite => rig.index.fail_nth_write(n),
                    Fault::IndexBroken => rig.index.fail_writes_from(n),
                }
            }
            Step::Restart => {
                let _ = log.close();
                drop(log);
                rig.heal();
                log = rig.open();
                check_producer(&mut log, &rig.cfg, &m)?;
            }
            Step::PowerLoss { keep_unsynced } => {
                drop(log);
                rig.heal();
                rig.fs.power_loss();
                rig.index.power_loss(keep_unsynced as usize);
                log = rig.open();
                check_producer(&mut log, &rig.cfg, &m)?;
            }
        }
        check(&log, &m, rig.compact)?;
    }
    Ok(())
}

/// The last acknowledged idempotent batch, retried after a restart, is
/// recognised (while it is still in the log and nothing newer of the
/// producer is in doubt).
fn check_producer(log: &mut PartitionLog, cfg: &TopicConfig, m: &Model) -> Result<(), TestCaseError> {
    let Some((seq, key, value, offset)) = m.last_idempotent.clone() else { return Ok(()) };
    if m.pending.is_some() || offset < log.log_start_offset() {
        return Ok(());
    }
    let info = log.append(&idempotent(seq, &key, &value), cfg, NOW);
    let info = info.map_err(|e| TestCaseError::fail(format!("retry refused: {e}")))?;
    prop_assert_eq!((info.base_offset, info.records), (offset, 0), "retry of seq {} not recognised", seq);
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn delete_policy_survives_faults(steps in prop::collection::vec(step(), 1..120)) {
        run(steps, false)?;
    }

    #[test]
    fn compact_policy_survives_faults(steps in prop::collection::vec(step(), 1..120)) {
        run(steps, true)?;
    }
}

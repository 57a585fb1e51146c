//! The storage primitives partition replication is built on, through the
//! fault layer: a follower copying its leader byte for byte, epoch
//! reconciliation after logs diverged (KIP-101/279), truncation (and a
//! crash at any point of one), the replicated high watermark and its
//! checkpoint, and a property test of random leader changes, appends,
//! truncations and crashes with followers copying.

use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;
use tributary_broker::config::TopicConfig;
use tributary_broker::error::Error;
use tributary_broker::log::fault::{FaultFs, FaultOp, MemIndexStore};
use tributary_broker::log::fs::LogFs;
use tributary_broker::log::index::PartitionIndex;
use tributary_broker::log::PartitionLog;
use tributary_broker::partition::Partition;
use tributary_proto::batch::{self, BatchHeader, Batches};

mod common;
use common::{batch, config, idempotent_batch, read_all, value_batch, NOW};

type Records = Vec<(i64, Option<String>, Option<String>)>;

/// One replica of partition t-0, with its own disk and index store.
struct Replica {
    fs: FaultFs,
    index: MemIndexStore,
    dir: PathBuf,
    part: Arc<Partition>,
}

fn open(fs: &FaultFs, index: &MemIndexStore, dir: &std::path::Path, cfg: &TopicConfig) -> Arc<Partition> {
    let idx = PartitionIndex::new(Arc::new(index.clone()), "p/t-0".into());
    let log = PartitionLog::open(Arc::new(fs.clone()), dir.to_path_buf(), "t".into(), 0, idx, cfg, NOW)
        .expect("a log must always reopen");
    Partition::new(log, Arc::new(fs.clone()))
}

impl Replica {
    fn new(cfg: &TopicConfig) -> Replica {
        let (fs, index, dir) = (FaultFs::new(), MemIndexStore::new(), PathBuf::from("/data/t-0"));
        let part = open(&fs, &index, &dir, cfg);
        Replica { fs, index, dir, part }
    }

    fn reopen(&mut self, cfg: &TopicConfig) {
        self.part = open(&self.fs, &self.index, &self.dir, cfg);
    }

    /// A clean stop and start.
    fn restart(&mut self, cfg: &TopicConfig) {
        self.part.with_log(|l| l.close()).unwrap();
        self.reopen(cfg);
    }

    /// Power loss: files and index keep only what was synced (the index
    /// also `keep_unsynced` writes past it).
    fn power_loss(&mut self, cfg: &TopicConfig, keep_unsynced: usize) {
        self.fs.heal();
        self.index.heal();
        self.fs.power_loss();
        self.index.power_loss(keep_unsynced);
        self.reopen(cfg);
    }

    /// Every segment file: name and bytes.
    fn segment_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut names = self.fs.list(&self.dir).unwrap();
        names.sort();
        names.into_iter().map(|n| (n.clone(), self.fs.read_file(&self.dir.join(&n)).unwrap())).collect()
    }

    /// What consumers see: every record up to the high watermark.
    fn records(&self) -> Records {
        self.part.with_log(|l| read_all(l, l.log_start_offset()))
    }

    /// Every batch byte from the log start to the log end, as followers read.
    fn raw(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut at, end) = (self.part.log_start_offset(), self.part.log_end_offset());
        while at < end {
            let got = self.part.read_replica(at, 1 << 20).unwrap().records;
            assert!(!got.is_empty(), "replica read at {at} below the log end {end} returned nothing");
            for b in Batches::new(&got) {
                at = b.unwrap().0.next_offset();
            }
            out.extend_from_slice(&got);
        }
        out
    }

    fn epochs(&self) -> Vec<(i32, i64)> {
        self.part.with_log(|l| l.epoch_entries())
    }

    fn offset_index(&self) -> Vec<(i64, u32)> {
        self.part.with_log(|l| l.index().offsets_in(0, i64::MAX).unwrap())
    }
}

/// A leader append, fsynced when the flush policy asks.
fn produce(p: &Partition, cfg: &TopicConfig, data: &[u8]) -> (i64, i64) {
    let info = p.append(data, cfg, NOW).unwrap();
    if let Some(t) = info.sync {
        t.sync().unwrap();
    }
    (info.base_offset, info.records)
}

/// What a follower's fetcher does, `fetches` times (or until caught up):
/// read from the leader at the follower's log end, append as follower,
/// take the leader's high watermark as the bound. Returns fetches that
/// brought data.
fn copy_some(
    leader: &Partition,
    follower: &Partition,
    cfg: &TopicConfig,
    max_bytes: usize,
    fetches: usize,
) -> usize {
    for n in 0..fetches {
        let got = leader.read_replica(follower.log_end_offset(), max_bytes).unwrap();
        follower.set_replica_bound(Some(got.high_watermark));
        if got.records.is_empty() {
            return n;
        }
        let info = follower.append_replicated(&got.records, cfg, NOW).unwrap();
        if let Some(t) = info.sync {
            t.sync().unwrap();
        }
    }
    fetches
}

fn copy(leader: &Partition, follower: &Partition, cfg: &TopicConfig, max_bytes: usize) {
    copy_some(leader, follower, cfg, max_bytes, usize::MAX);
}

/// `reads` replica reads from `from` on, concatenated (a read stops at a
/// segment's end; together they make one append that spans segments).
fn fetch_several(leader: &Partition, from: i64, reads: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = from;
    for _ in 0..reads {
        let got = leader.read_replica(at, 1 << 20).unwrap().records;
        for b in Batches::new(&got) {
            at = b.unwrap().0.next_offset();
        }
        out.extend_from_slice(&got);
    }
    out
}

/// The follower's truncation before it fetches (KIP-279): ask the leader
/// where the follower's latest epoch ends; if the leader answers with an
/// epoch the follower has, cut to the smaller of the two ends and stop;
/// if it answers with an epoch the follower does not have, cut to where the
/// follower's own largest epoch below it ends and ask again. Returns the
/// number of questions asked.
fn reconcile(leader: &Partition, follower: &Partition) -> usize {
    for asked in 1..100 {
        let latest = follower.latest_epoch();
        if latest < 0 {
            return asked - 1;
        }
        let (epoch, end) = leader.end_offset_for_epoch(latest).unwrap();
        let leo = follower.log_end_offset();
        if epoch < 0 {
            // Nothing in common: every epoch the leader has is newer.
            follower.truncate_to(follower.log_start_offset()).unwrap();
            return asked;
        }
        let (own_epoch, own_end) = follower.end_offset_for_epoch(epoch).unwrap();
        if own_epoch == epoch {
            follower.truncate_to(end.min(own_end).min(leo)).unwrap();
            return asked;
        }
        let to = if own_epoch < 0 { follower.log_start_offset() } else { own_end.min(leo) };
        follower.truncate_to(to).unwrap();
    }
    panic!("the follower's epochs never agreed with the leader's");
}

/// A quorum decision made this replica the leader of `epoch`: it leads, and
/// (alone in sync, as far as these tests go) its high watermark follows its
/// own log rather than the bound it had as a follower.
fn lead(r: &Replica, epoch: i32) {
    r.part.become_leader(epoch).unwrap();
    r.part.set_replica_bound(None);
}

fn values(records: &Records) -> Vec<String> {
    records.iter().map(|r| r.2.clone().unwrap_or_default()).collect()
}

fn header_at(p: &Partition, offset: i64) -> BatchHeader {
    let got = p.read_replica(offset, 1).unwrap().records;
    BatchHeader::parse(&got).unwrap()
}

// ---- a follower's copy ----

/// A follower that copies with `append_replicated` from `read_replica`
/// ends up with the leader's segment files byte for byte, indexes that
/// answer the same, the same epochs and producer state — so when it takes
/// over, an idempotent producer's retry is still recognised.
#[test]
fn a_follower_copy_is_byte_identical_and_takes_over_seamlessly() {
    let cfg = config(&[("segment.bytes", "1024"), ("index.interval.bytes", "300")]);
    let leader = Replica::new(&cfg);
    let l = &leader.part;
    let mut seq = 0;
    let mut last_idempotent = (0, 0);
    for (epoch, rounds) in [(1, 12), (2, 9), (4, 14)] {
        l.become_leader(epoch).unwrap();
        for i in 0..rounds {
            let ts = NOW + (epoch as i64) * 1_000 + i * 10 - if i % 4 == 0 { 500 } else { 0 };
            let v = format!("e{epoch}-{i}-{}", "x".repeat(40));
            produce(l, &cfg, &batch(&[(Some("k"), Some(&v), ts), (None, Some("second"), ts + 1)]));
            let (offset, _) = produce(l, &cfg, &idempotent_batch(7, seq, &[&format!("idem-{seq}")]));
            last_idempotent = (seq, offset);
            seq += 1;
        }
    }
    assert!(l.with_log(|l| l.segment_count()) > 4, "the copy must cross segment boundaries");

    let follower = Replica::new(&cfg);
    follower.part.become_follower(4).unwrap();
    // One batch per fetch for a while, then several fetches per append, so
    // that one append spans rolls.
    assert_eq!(copy_some(l, &follower.part, &cfg, 1, 15), 15);
    while follower.part.log_end_offset() < l.log_end_offset() {
        let data = fetch_several(l, follower.part.log_end_offset(), 3);
        follower.part.append_replicated(&data, &cfg, NOW).unwrap();
    }
    follower.part.set_replica_bound(Some(l.high_watermark()));
    let f = &follower.part;

    assert_eq!(follower.segment_files(), leader.segment_files(), "segment files differ");
    assert_eq!(follower.offset_index(), leader.offset_index());
    assert_eq!(follower.epochs(), leader.epochs());
    assert_eq!(follower.epochs().iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 4]);
    assert_eq!(f.high_watermark(), l.high_watermark());
    assert_eq!(follower.records(), leader.records());
    for ts in [NOW, NOW + 1_005, NOW + 2_050, NOW + 4_100, NOW + 4_120] {
        let at = |p: &Partition| p.with_log(|log| log.offset_for_time(ts).unwrap());
        assert_eq!(at(f), at(l), "time lookup of {ts}");
        assert!(at(f).is_some());
    }
    assert_eq!(f.with_log(|l| l.producers().clone()), l.with_log(|l| l.producers().clone()));

    // Failover: the follower leads, the old leader follows.
    lead(&follower, 5);
    leader.part.become_follower(5).unwrap();
    let (s, offset) = last_idempotent;
    let retry = f.append(&idempotent_batch(7, s, &[&format!("idem-{s}")]), &cfg, NOW).unwrap();
    assert_eq!((retry.base_offset, retry.records), (offset, 0), "the retry must be answered as a duplicate");
    let next = f.append(&idempotent_batch(7, s + 1, &["after failover"]), &cfg, NOW).unwrap();
    assert_eq!((next.base_offset, next.records), (l.log_end_offset(), 1));
    assert_eq!(header_at(f, next.base_offset).leader_epoch, 5);
    assert_eq!(reconcile(f, l), 1);
    assert_eq!(l.log_end_offset(), next.base_offset, "nothing of the old leader's was divergent");
    copy(f, l, &cfg, 1 << 20);
    assert_eq!(leader.segment_files(), follower.segment_files());
}

/// Whatever the follower copies is whole or nothing: a failed segment write
/// after a roll in the middle of one fetch cuts the follower back to where
/// it was, and the retry makes it identical.
#[test]
fn a_replicated_append_that_fails_after_a_roll_leaves_no_trace() {
    let cfg = config(&[("segment.bytes", "1024")]);
    let leader = Replica::new(&cfg);
    leader.part.become_leader(1).unwrap();
    for i in 0..30 {
        produce(&leader.part, &cfg, &value_batch(&[&format!("r{i}-{}", "y".repeat(60))]));
    }
    let follower = Replica::new(&cfg);
    let got = fetch_several(&leader.part, 0, 2);
    // The first chunk's write goes through, the one after the roll fails.
    follower.fs.fail_nth(FaultOp::Write, 2, libc::EIO);
    let err = follower.part.append_replicated(&got, &cfg, NOW).err().expect("the second write fails");
    assert!(err.to_string().contains("appending to the segment"), "{err}");
    assert_eq!(follower.part.log_end_offset(), 0);
    assert_eq!(follower.segment_files(), vec![(format!("{:020}.log", 0), vec![])]);
    assert!(follower.part.offline_reason().is_none());
    assert!(follower.epochs().is_empty());
    copy(&leader.part, &follower.part, &cfg, 1 << 20);
    assert_eq!(follower.segment_files(), leader.segment_files());
}

/// The follower's append refuses, writing nothing, batches that do not
/// continue its log: a gap, an overlap, a corrupt batch, an epoch older
/// than one it holds. Compacted topics may skip offsets compaction removed.
#[test]
fn a_replicated_append_refuses_what_does_not_continue_the_log() {
    let cfg = config(&[]);
    let leader = Replica::new(&cfg);
    leader.part.become_leader(1).unwrap();
    for i in 0..6 {
        produce(&leader.part, &cfg, &value_batch(&[&format!("r{i}")]));
    }
    let follower = Replica::new(&cfg);
    let f = &follower.part;
    copy_some(&leader.part, f, &cfg, 1, 3);
    assert_eq!(f.log_end_offset(), 3);
    let one = |offset: i64| leader.part.read_replica(offset, 1).unwrap().records.to_vec();
    let before = follower.segment_files();
    let refused = |data: &[u8], what: &str| {
        let err = f.append_replicated(data, &cfg, NOW).err().unwrap_or_else(|| panic!("{what} was accepted"));
        assert_eq!(f.log_end_offset(), 3, "{what}");
        assert_eq!(follower.segment_files(), before, "{what}: something was written");
        err
    };
    let err = refused(&one(4), "a gap");
    assert!(matches!(err, Error::ReplicaAppendRefused { .. }), "{err}");
    assert!(err.to_string().contains("starts at offset 4 where the log expects 3"), "{err}");
    assert!(matches!(refused(&one(2), "an overlap"), Error::ReplicaAppendRefused { .. }));
    let mut both = one(3);
    both.extend_from_slice(&one(5));
    assert!(matches!(refused(&both, "a gap after a good batch"), Error::ReplicaAppendRefused { .. }));
    let mut corrupt = one(3);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    assert!(matches!(refused(&corrupt, "a corrupt batch"), Error::CorruptBatch { .. }));
    let mut old_epoch = one(3);
    batch::set_leader_epoch(&mut old_epoch, 0);
    let err = refused(&old_epoch, "an older epoch");
    assert!(err.to_string().contains("older than epoch 1"), "{err}");
    copy(&leader.part, f, &cfg, 1 << 20);
    assert_eq!(follower.segment_files(), leader.segment_files());

    // A compacted leader's log has gaps; a new follower copies it anyway.
    let cfg = config(&[("cleanup.policy", "compact"), ("segment.bytes", "1024")]);
    let leader = Replica::new(&cfg);
    for round in 0..30 {
        for k in ["k0", "k1", "k2"] {
            produce(&leader.part, &cfg, &batch(&[(Some(k), Some(&format!("{k}-{round}")), NOW)]));
        }
    }
    leader.part.with_log(|l| {
        let (cleaned, _) = l.cleaning_plan(&cfg, NOW + 10).unwrap().expect("a plan").run().unwrap();
        l.swap_cleaned(cleaned).unwrap();
    });
    let follower = Replica::new(&cfg);
    copy(&leader.part, &follower.part, &cfg, 1 << 20);
    assert_eq!(follower.part.log_end_offset(), leader.part.log_end_offset());
    assert_eq!(follower.records(), leader.records());
    assert!(follower.records().len() < 90, "the leader's log was compacted");
}

// ---- leader epochs and reconciliation ----

/// `become_leader` records its epoch durably; epochs only move forward.
#[test]
fn leader_epochs_are_durable_and_only_move_forward() {
    let cfg = config(&[("flush.messages", "1")]);
    let mut r = Replica::new(&cfg);
    assert_eq!((r.part.current_epoch(), r.part.latest_epoch()), (-1, -1));
    assert_eq!(r.part.end_offset_for_epoch(0).unwrap(), (-1, -1));
    r.part.become_leader(3).unwrap();
    produce(&r.part, &cfg, &value_batch(&["a", "b"]));
    assert_eq!(r.part.end_offset_for_epoch(3).unwrap(), (3, 2));
    assert_eq!(r.part.end_offset_for_epoch(2).unwrap(), (-1, -1));
    assert_eq!(r.part.end_offset_for_epoch(7).unwrap(), (3, 2));
    r.part.become_leader(3).unwrap();
    assert_eq!(r.epochs(), vec![(3, 0)], "leading again in the same epoch changes nothing");
    r.part.become_leader(6).unwrap();
    assert_eq!(r.epochs(), vec![(3, 0), (6, 2)]);
    assert_eq!(r.part.end_offset_for_epoch(3).unwrap(), (3, 2));
    assert_eq!(r.part.end_offset_for_epoch(5).unwrap(), (3, 2));
    assert_eq!(r.part.end_offset_for_epoch(6).unwrap(), (6, 2));
    for stale in [r.part.become_leader(5), r.part.become_follower(4)] {
        let err = stale.unwrap_err();
        assert!(err.to_string().contains("older than epoch 6"), "{err}");
    }
    assert_eq!(r.part.current_epoch(), 6);

    // Power loss right after become_leader: the epoch is still there, and
    // appends are stamped with it.
    r.power_loss(&cfg, 0);
    assert_eq!(r.epochs(), vec![(3, 0), (6, 2)], "become_leader must be durable");
    assert_eq!(r.part.latest_epoch(), 6);
    assert_eq!(r.part.current_epoch(), -1, "nobody told this process yet");
    let (offset, _) = produce(&r.part, &cfg, &value_batch(&["c"]));
    assert_eq!(header_at(&r.part, offset).leader_epoch, 6);
    assert!(r.part.become_follower(6).is_ok());

    // An epoch whose records a power loss took is forgotten with them: the
    // replica must not claim to hold it.
    let cfg = config(&[]);
    let mut r = Replica::new(&cfg);
    r.part.become_leader(1).unwrap();
    produce(&r.part, &cfg, &value_batch(&["a", "b", "c"]));
    r.part.with_log(|l| l.roll(&cfg, NOW)).unwrap();
    produce(&r.part, &cfg, &value_batch(&["d", "e"]));
    r.part.become_leader(2).unwrap();
    produce(&r.part, &cfg, &value_batch(&["f"]));
    assert_eq!(r.epochs(), vec![(1, 0), (2, 5)]);
    r.power_loss(&cfg, usize::MAX);
    assert_eq!(r.part.log_end_offset(), 3, "only the rolled segment was fsynced");
    assert_eq!(r.epochs(), vec![(1, 0)]);
    assert_eq!(r.part.end_offset_for_epoch(2).unwrap(), (1, 3));
}

/// Two logs share a prefix, then diverge in different epochs over several
/// leader changes in quick succession; reconciliation cuts each follower to
/// a prefix of the leader's log, and copying makes them identical.
#[test]
fn divergent_logs_reconcile_to_a_prefix_of_the_leader() {
    let cfg = config(&[("segment.bytes", "1024")]);
    let (a, b, c) = (Replica::new(&cfg), Replica::new(&cfg), Replica::new(&cfg));
    let put = |r: &Replica, tag: &str, n: usize| {
        for i in 0..n {
            produce(&r.part, &cfg, &value_batch(&[&format!("{tag}-{i}-{}", "z".repeat(50))]));
        }
    };
    // Epoch 1: A leads; B and C copy 10, B gets 3 more of A's 5 after that.
    lead(&a, 1);
    put(&a, "a1", 10);
    copy(&a.part, &b.part, &cfg, 1 << 20);
    copy(&a.part, &c.part, &cfg, 1 << 20);
    put(&a, "a1-tail", 5);
    copy_some(&a.part, &b.part, &cfg, 1, 3);
    // Epoch 2: B leads and appends nothing before epoch 3, where C (with
    // only 10) leads and appends 4; epoch 4: B again, appends 3.
    lead(&b, 2);
    lead(&c, 3);
    put(&c, "c3", 4);
    lead(&b, 4);
    put(&b, "b4", 3);
    assert_eq!(b.epochs(), vec![(1, 0), (4, 13)], "epoch 2 got no record and was replaced");
    for r in [&a, &c] {
        r.part.become_follower(4).unwrap();
        assert_eq!(reconcile(&b.part, &r.part), 1);
        let (leader, mine) = (b.raw(), r.raw());
        assert!(leader.starts_with(&mine), "not a prefix of the leader after reconciliation");
    }
    assert_eq!((a.part.log_end_offset(), c.part.log_end_offset()), (13, 10));
    for r in [&a, &c] {
        copy(&b.part, &r.part, &cfg, 1 << 20);
        assert_eq!(r.segment_files(), b.segment_files());
        assert_eq!(r.epochs(), b.epochs());
    }
    let v = values(&a.records());
    assert_eq!(v.len(), 16);
    assert!(v.iter().all(|v| !v.starts_with("c3") && !v.starts_with("a1-tail-3")), "{v:?}");

    // A follower holding an epoch the leader never had: two questions.
    let (x, y) = (Replica::new(&cfg), Replica::new(&cfg));
    lead(&x, 1);
    put(&x, "x1", 8);
    copy(&x.part, &y.part, &cfg, 1 << 20);
    lead(&x, 2);
    put(&x, "x2", 4);
    lead(&y, 3);
    put(&y, "y3", 2);
    lead(&x, 4);
    put(&x, "x4", 2);
    y.part.become_follower(4).unwrap();
    assert_eq!(x.part.end_offset_for_epoch(3).unwrap(), (2, 12));
    assert_eq!(reconcile(&x.part, &y.part), 2);
    assert_eq!(y.part.log_end_offset(), 8);
    assert_eq!(y.epochs(), vec![(1, 0)]);
    copy(&x.part, &y.part, &cfg, 1 << 20);
    assert_eq!(y.segment_files(), x.segment_files());
    assert_eq!(y.epochs(), vec![(1, 0), (2, 8), (4, 12)]);
}

// ---- truncation ----

/// 40 batches of 3 records (offsets 3i..3i+2, value `r<offset>`, timestamp
/// NOW + offset), every one fsynced, over several segments.
fn three_record_log(cfg: &TopicConfig) -> Replica {
    let r = Replica::new(cfg);
    r.part.become_leader(1).unwrap();
    for i in 0..40i64 {
        let recs: Vec<(String, i64)> = (0..3).map(|j| (format!("r{}", 3 * i + j), NOW + 3 * i + j)).collect();
        let recs: Vec<_> = recs.iter().map(|(v, ts)| (Some("k"), Some(v.as_str()), *ts)).collect();
        produce(&r.part, cfg, &batch(&recs));
    }
    r
}

/// The log holds exactly `expect` and its indexes point at nothing past its end.
fn assert_exactly(r: &Replica, expect: &Records, what: &str) {
    let end = expect.last().map_or(0, |r| r.0 + 1);
    assert_eq!(r.part.log_end_offset(), end, "{what}: log end");
    assert_eq!(r.part.high_watermark(), end, "{what}: high watermark");
    assert_eq!(&r.records(), expect, "{what}: records");
    let epochs = r.epochs();
    assert!(epochs.iter().all(|(_, start)| *start <= end), "{what}: epochs {epochs:?} past the end {end}");
    r.part.with_log(|l| {
        assert!(l.index().offsets_in(end, i64::MAX).unwrap().is_empty(), "{what}: offset index past the end");
        if let Some((_, off)) = l.index().last_time().unwrap() {
            assert!(off < end, "{what}: time index points at {off}, past the end {end}");
        }
        assert_eq!(l.offset_for_time(NOW + end).unwrap(), None, "{what}: time lookup past the end");
        if end > 0 {
            assert_eq!(l.offset_for_time(NOW + end - 1).unwrap(), Some((end - 1, NOW + end - 1)), "{what}");
        }
    });
}

/// Truncation at batch starts and in the middle of batches, in closed
/// segments, at a segment's first offset and in the active segment: the
/// log is exactly the kept prefix, its indexes point nowhere past it, and
/// it stays so after a clean restart and after a power loss; appends go on
/// from the new end.
#[test]
fn truncation_keeps_exactly_the_prefix_across_segments_and_restarts() {
    let cfg = config(&[("segment.bytes", "1024"), ("index.interval.bytes", "200"), ("flush.messages", "1")]);
    let probe = three_record_log(&cfg);
    let all = probe.records();
    let bases: Vec<i64> = probe.part.with_log(|l| l.closed_segments().iter().map(|s| s.0).collect());
    assert!(bases.len() >= 3, "{bases:?}");
    let active = probe.part.with_log(|l| l.closed_segments().last().map_or(0, |s| s.1));
    let second = bases[2];
    let targets = [
        ("batch start in a closed segment", bases[1] + 3 - bases[1] % 3),
        ("mid-batch in a closed segment", bases[1] + 4 - bases[1] % 3),
        ("a segment's first offset", second),
        ("mid-batch in the active segment", 118),
        ("the last record", 119),
        ("the first record", 0),
    ];
    for (what, target) in targets {
        for restart in ["none", "clean", "power loss", "index power loss"] {
            let what = format!("{what} ({target}), restart: {restart}");
            let mut r = three_record_log(&cfg);
            let segments_before = r.part.with_log(|l| l.segment_count());
            assert_eq!(segments_before, bases.len() + 1);
            r.part.truncate_to(target).unwrap();
            let end = target - target % 3;
            let kept: Records = all[..end as usize].to_vec();
            assert_exactly(&r, &kept, &what);
            assert_eq!(r.part.durable_end(), end, "{what}: durable end");
            // A segment the cut leaves empty goes too (but the first stays).
            let held = bases.iter().chain([&active]).filter(|b| **b < target).count().max(1);
            assert!(held <= segments_before);
            assert_eq!(r.part.with_log(|l| l.segment_count()), held, "{what}");
            match restart {
                "clean" => r.restart(&cfg),
                "power loss" => r.power_loss(&cfg, 0),
                "index power loss" => {
                    r.index.power_loss(0);
                    r.reopen(&cfg);
                }
                _ => {}
            }
            assert_exactly(&r, &kept, &what);
            // Appends continue from the new end, indexed as usual.
            let (offset, _) =
                produce(&r.part, &cfg, &batch(&[(Some("k"), Some(&format!("r{end}")), NOW + end)]));
            assert_eq!(offset, end, "{what}");
            let mut more = kept.clone();
            more.push((end, Some("k".into()), Some(format!("r{end}"))));
            assert_exactly(&r, &more, &what);
            r.power_loss(&cfg, 0);
            assert_exactly(&r, &more, &format!("{what}, then power loss"));
        }
    }
    // Truncating at or past the end changes nothing.
    let r = three_record_log(&cfg);
    r.part.truncate_to(120).unwrap();
    r.part.truncate_to(500).unwrap();
    assert_exactly(&r, &all, "no-op truncation");
}

/// Compacted topics: truncation into compacted segments (also into a gap
/// compaction left) keeps the prefix, and the key map forgets offsets that
/// are gone — so compaction later keeps the latest record of every key.
#[test]
fn truncation_of_a_compacted_log_keeps_the_key_map_in_line() {
    let cfg = config(&[("cleanup.policy", "compact"), ("segment.bytes", "1024"), ("flush.messages", "1")]);
    let build = || {
        let r = Replica::new(&cfg);
        for round in 0..30 {
            for k in ["k0", "k1", "k2"] {
                produce(&r.part, &cfg, &batch(&[(Some(k), Some(&format!("{k}-{round}")), NOW)]));
            }
        }
        r.part.with_log(|l| {
            let (cleaned, _) = l.cleaning_plan(&cfg, NOW + 10).unwrap().expect("a plan").run().unwrap();
            l.swap_cleaned(cleaned).unwrap();
        });
        r
    };
    let probe = build();
    let compacted = probe.part.with_log(|l| read_all(l, 0));
    let offsets: Vec<i64> = compacted.iter().map(|r| r.0).collect();
    // Just below the first record compaction kept: the cut lands in a gap
    // with nothing kept below it, so the log ends at its start; then at a
    // record compaction kept in a closed segment.
    assert!(offsets[0] > 3, "compaction removed the oldest records: {offsets:?}");
    let gap = offsets[0] - 1;
    let kept_record = offsets[1];
    assert!(probe.part.with_log(|l| l.closed_segments().last().is_some_and(|s| s.1 > kept_record)));
    for (what, target) in [("in a gap", gap), ("at a kept record", kept_record)] {
        let mut r = build();
        r.part.truncate_to(target).unwrap();
        let kept: Records = compacted.iter().filter(|x| x.0 < target).cloned().collect();
        let end = kept.last().map_or(0, |x| x.0 + 1);
        assert_eq!(r.part.log_end_offset(), end, "{what}: the log must end after the last record kept");
        assert_eq!(r.records(), kept, "{what}");
        for k in ["k0", "k1", "k2"] {
            let at = r.part.with_log(|l| l.index().key_offset(k.as_bytes()).unwrap());
            assert!(at.is_none_or(|o| o < end), "{what}: key map points {k} at {at:?}");
        }
        r.power_loss(&cfg, 0);
        assert_eq!(r.records(), kept, "{what}: after power loss");
        // New values after the cut; compaction keeps the latest of each key.
        for k in ["k0", "k1", "k2"] {
            produce(&r.part, &cfg, &batch(&[(Some(k), Some(&format!("{k}-new")), NOW)]));
        }
        r.part.with_log(|l| {
            l.roll(&cfg, NOW).unwrap();
            if let Some(plan) = l.cleaning_plan(&cfg, NOW + 10).unwrap() {
                let (cleaned, _) = plan.run().unwrap();
                l.swap_cleaned(cleaned).unwrap();
            }
        });
        let v = values(&r.records());
        for k in ["k0", "k1", "k2"] {
            assert!(v.contains(&format!("{k}-new")), "{what}: latest of {k} lost: {v:?}");
        }
    }
}

/// A compaction pass that overlaps a truncation is dropped: its cleaned
/// files hold records the truncation removed.
#[test]
fn a_compaction_pass_overlapping_a_truncation_is_dropped() {
    let cfg = config(&[("cleanup.policy", "compact"), ("segment.bytes", "1024"), ("flush.messages", "1")]);
    let r = Replica::new(&cfg);
    for round in 0..30 {
        for k in ["k0", "k1", "k2"] {
            produce(&r.part, &cfg, &batch(&[(Some(k), Some(&format!("{k}-{round}")), NOW)]));
        }
    }
    // The plan is made, then the truncation comes while the pass reads the
    // old files and maps their keys.
    let plan = r.part.with_log(|l| l.cleaning_plan(&cfg, NOW + 10).unwrap().expect("a plan"));
    r.part.truncate_to(20).unwrap();
    let (cleaned, _) = plan.run().unwrap();
    assert!(!cleaned.is_empty());
    r.part.with_log(|l| l.swap_cleaned(cleaned)).unwrap();
    assert_eq!(r.part.log_end_offset(), 20);
    let got: Vec<i64> = r.records().iter().map(|x| x.0).collect();
    assert_eq!(got, (0..20).collect::<Vec<_>>(), "truncated records came back with the cleaned files");
    for k in ["k0", "k1", "k2"] {
        let at = r.part.with_log(|l| l.index().key_offset(k.as_bytes()).unwrap());
        assert!(at.is_none_or(|o| o < 20), "key map points {k} at {at:?}");
    }
    assert!(!r.segment_files().iter().any(|(n, _)| n.ends_with(".cleaned")));
}

/// Producer state follows truncation: a truncated idempotent batch, sent
/// again, is appended again (not a false duplicate); the batch before the
/// cut is still recognised, also after a restart.
#[test]
fn producer_state_follows_truncation() {
    let cfg = config(&[("segment.bytes", "1024"), ("flush.messages", "1")]);
    let mut r = Replica::new(&cfg);
    for seq in 0..40 {
        produce(&r.part, &cfg, &idempotent_batch(9, seq, &[&format!("v{seq:02}-{}", "p".repeat(30))]));
    }
    let bases: Vec<i64> = r.part.with_log(|l| l.closed_segments().iter().map(|s| s.0).collect());
    // Into a closed segment: the snapshot at its base plus replay.
    let cut = bases[1] + 2;
    r.part.truncate_to(cut).unwrap();
    let s = cut as i32;
    let dup = r.part.append(
        &idempotent_batch(9, s - 1, &[&format!("v{:02}-{}", s - 1, "p".repeat(30))]),
        &cfg,
        NOW,
    );
    assert_eq!(dup.map(|i| (i.base_offset, i.records)).unwrap(), (cut - 1, 0));
    assert!(matches!(
        r.part.append(&idempotent_batch(9, s + 1, &["skips one"]), &cfg, NOW),
        Err(Error::OutOfOrderSequence { .. })
    ));
    let again = r.part.append(&idempotent_batch(9, s, &["re-sent"]), &cfg, NOW).unwrap();
    assert_eq!((again.base_offset, again.records), (cut, 1), "a truncated batch must be written again");
    again.sync.unwrap().sync().unwrap();
    r.power_loss(&cfg, 0);
    let retry = r.part.append(&idempotent_batch(9, s, &["re-sent"]), &cfg, NOW).unwrap();
    assert_eq!((retry.base_offset, retry.records), (cut, 0));
}

/// Truncation never goes below the log start.
#[test]
fn truncation_refuses_to_go_below_the_log_start() {
    let cfg = config(&[("segment.bytes", "1024"), ("retention.bytes", "1024")]);
    let r = three_record_log(&cfg);
    r.part.apply_retention(&cfg, NOW).unwrap();
    let start = r.part.log_start_offset();
    assert!(start > 0);
    let before = r.records();
    let err = r.part.truncate_to(start - 1).unwrap_err();
    assert!(matches!(err, Error::OffsetOutOfRange { .. }), "{err}");
    assert_eq!(r.records(), before);
    r.part.truncate_to(start).unwrap();
    assert_eq!(r.part.log_end_offset(), start);
}

/// A crash at any point of a truncation — every failure point of its file
/// and index operations, then a power loss — leaves a log that recovery
/// opens as a prefix of the old one, no shorter than what was kept, with
/// indexes that point nowhere past its end.
#[test]
fn a_crash_anywhere_in_a_truncation_leaves_a_prefix() {
    let cfg = config(&[("segment.bytes", "1024"), ("index.interval.bytes", "200"), ("flush.messages", "1")]);
    let all = three_record_log(&cfg).records();
    let target = 31;
    let end = 30;
    // How many of each operation a truncation does.
    let probe = three_record_log(&cfg);
    let ops = [FaultOp::Remove, FaultOp::SyncDir, FaultOp::SetLen, FaultOp::Sync];
    let before: Vec<u64> = ops.iter().map(|op| probe.fs.count(*op)).collect();
    let index_before = probe.index.writes();
    probe.part.truncate_to(target).unwrap();
    let counts: Vec<u64> = ops.iter().zip(&before).map(|(op, b)| probe.fs.count(*op) - b).collect();
    assert!(counts[0] >= 2, "the cut must remove segments: {counts:?}");
    let index_writes = probe.index.writes() - index_before;

    let mut cases: Vec<(Option<FaultOp>, u64)> = Vec::new();
    for (op, n) in ops.iter().zip(&counts) {
        cases.extend((1..=*n).map(|i| (Some(*op), i)));
    }
    cases.extend((1..=index_writes).map(|i| (None, i)));
    for (op, nth) in cases {
        for keep_unsynced in [0, usize::MAX] {
            let what = format!("{op:?} #{nth} fails, keep_unsynced {keep_unsynced}");
            let mut r = three_record_log(&cfg);
            match op {
                Some(op) => r.fs.fail_nth(op, nth, libc::EIO),
                None => r.index.fail_nth_write(nth),
            }
            let result = r.part.truncate_to(target);
            if result.is_err() && op.is_some() {
                assert!(r.part.offline_reason().is_some(), "{what}: a failed cut must take the log offline");
            }
            r.power_loss(&cfg, keep_unsynced);
            let got = r.records();
            let n = got.len();
            assert!(n >= end as usize, "{what}: kept records lost ({n})");
            assert_eq!(got, all[..n].to_vec(), "{what}: not a prefix of the old log");
            assert_exactly(&r, &got, &what);
        }
    }
}

// ---- the high watermark ----

/// Without a bound the high watermark is the log end; with one it is the
/// smaller of the two; it never goes back; moves wake waiting fetches.
#[test]
fn the_high_watermark_follows_the_replica_bound_and_never_goes_back() {
    let cfg = config(&[]);
    let r = Replica::new(&cfg);
    let p = &r.part;
    let mut rx = p.subscribe();
    p.set_replica_bound(Some(0));
    for i in 0..10 {
        produce(p, &cfg, &value_batch(&[&format!("v{i}")]));
    }
    assert_eq!(p.high_watermark(), 0);
    assert!(p.read(0, 1 << 20).unwrap().records.is_empty(), "uncommitted records served");
    assert!(
        !p.read_replica(0, 1 << 20).unwrap().records.is_empty(),
        "followers must read uncommitted records"
    );
    rx.borrow_and_update();
    p.set_replica_bound(Some(4));
    assert_eq!(p.high_watermark(), 4);
    assert!(rx.has_changed().unwrap(), "a high watermark move must wake fetches");
    assert_eq!(*rx.borrow_and_update(), 4);
    assert_eq!(values(&r.records()), ["v0", "v1", "v2", "v3"]);
    p.set_replica_bound(Some(2));
    assert_eq!(p.high_watermark(), 4, "the high watermark went backwards");
    assert!(!rx.has_changed().unwrap());
    p.set_replica_bound(Some(100));
    assert_eq!(p.high_watermark(), 10, "never past the log end");
    produce(p, &cfg, &value_batch(&["v10"]));
    assert_eq!(p.high_watermark(), 11);
    p.set_replica_bound(Some(5));
    produce(p, &cfg, &value_batch(&["v11"]));
    assert_eq!(p.high_watermark(), 11);
    p.set_replica_bound(None);
    assert_eq!(p.high_watermark(), 12, "no bound: the log end");

    // flush.messages=1: also never past what is durable.
    let cfg = config(&[("flush.messages", "1")]);
    let r = Replica::new(&cfg);
    r.part.set_replica_bound(Some(100));
    let info = r.part.append(&value_batch(&["a"]), &cfg, NOW).unwrap();
    assert_eq!(r.part.high_watermark(), 0);
    assert_eq!(r.part.durable_end(), 0);
    info.sync.unwrap().sync().unwrap();
    assert_eq!((r.part.high_watermark(), r.part.durable_end()), (1, 1));
    r.part.set_replica_bound(Some(1));
    let info = r.part.append(&value_batch(&["b"]), &cfg, NOW).unwrap();
    info.sync.unwrap().sync().unwrap();
    assert_eq!(r.part.high_watermark(), 1, "past the bound");
}

/// The checkpoint becomes the bound at the next start (clean or not), so a
/// restarted replica shows nothing that was not known committed; a log that
/// never checkpointed starts unbounded as before.
#[test]
fn the_high_watermark_checkpoint_survives_restarts_as_the_bound() {
    let cfg = config(&[]);
    let mut r = Replica::new(&cfg);
    for i in 0..10 {
        produce(&r.part, &cfg, &value_batch(&[&format!("v{i}")]));
    }
    r.restart(&cfg);
    assert_eq!(r.part.high_watermark(), 10, "no checkpoint: the log end, as before replication");

    r.part.set_replica_bound(Some(6));
    assert_eq!(r.part.high_watermark(), 10, "never backwards");
    let mut r = Replica::new(&cfg);
    r.part.set_replica_bound(Some(6));
    for i in 0..10 {
        produce(&r.part, &cfg, &value_batch(&[&format!("v{i}")]));
    }
    assert_eq!(r.part.high_watermark(), 6);
    r.part.checkpoint_high_watermark().unwrap();
    r.restart(&cfg);
    assert_eq!(r.part.high_watermark(), 6, "after a clean restart");
    assert_eq!(r.records().len(), 6);
    assert_eq!(r.part.read_replica(6, 1 << 20).unwrap().high_watermark, 6);
    r.part.set_replica_bound(Some(8));
    assert_eq!(r.part.high_watermark(), 8);
    // Rolls keep the checkpoint current (durably).
    r.part.with_log(|l| l.roll(&cfg, NOW)).unwrap();
    r.power_loss(&cfg, 0);
    assert_eq!(r.part.high_watermark(), 8, "after a power loss");
    r.part.set_replica_bound(None);
    assert_eq!(r.part.high_watermark(), 10);

    // A checkpoint past what survived a power loss is cut to the log end,
    // in the store too: records appended after the restart wait for a bound.
    let mut r = Replica::new(&cfg);
    for i in 0..10 {
        produce(&r.part, &cfg, &value_batch(&[&format!("v{i}")]));
    }
    r.part.checkpoint_high_watermark().unwrap();
    r.part.become_leader(1).unwrap(); // a durable index write
    r.power_loss(&cfg, 0);
    assert_eq!(r.part.log_end_offset(), 0, "nothing was fsynced");
    for i in 0..5 {
        produce(&r.part, &cfg, &value_batch(&[&format!("new{i}")]));
    }
    assert_eq!(r.part.high_watermark(), 0);
    r.restart(&cfg);
    assert_eq!(r.part.high_watermark(), 0, "uncommitted records exposed after a restart");
}

/// Truncation brings the high watermark, its bound and its checkpoint down
/// with the log end.
#[test]
fn truncation_lowers_the_high_watermark_and_its_checkpoint() {
    let cfg = config(&[]);
    let mut r = Replica::new(&cfg);
    r.part.set_replica_bound(Some(8));
    for i in 0..10 {
        produce(&r.part, &cfg, &value_batch(&[&format!("v{i}")]));
    }
    r.part.checkpoint_high_watermark().unwrap();
    let mut rx = r.part.subscribe();
    rx.borrow_and_update();
    r.part.truncate_to(4).unwrap();
    assert_eq!(r.part.high_watermark(), 4);
    assert!(rx.has_changed().unwrap());
    for i in 0..6 {
        produce(&r.part, &cfg, &value_batch(&[&format!("w{i}")]));
    }
    assert_eq!(r.part.high_watermark(), 4, "the old bound exposed records appended after the cut");
    r.restart(&cfg);
    assert_eq!(r.part.high_watermark(), 4);
    assert_eq!(values(&r.records()), ["v0", "v1", "v2", "v3"]);
}

// ---- property: followers stay prefixes of the leader ----

#[derive(Debug, Clone)]
enum Step {
    Produce { records: u8, idempotent: bool },
    Elect(u8),
    Fetch { replica: u8, fetches: u8, max_bytes: u16 },
    Truncate { replica: u8, permille: u16 },
    Restart(u8),
    PowerLoss { replica: u8, keep_unsynced: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1u8..4, any::<bool>()).prop_map(|(records, idempotent)| Step::Produce { records, idempotent }),
        2 => (0u8..3).prop_map(Step::Elect),
        6 => (0u8..3, 1u8..6, 1u16..600).prop_map(|(replica, fetches, max_bytes)| Step::Fetch { replica, fetches, max_bytes }),
        1 => (0u8..3, 0u16..1000).prop_map(|(replica, permille)| Step::Truncate { replica, permille }),
        1 => (0u8..3).prop_map(Step::Restart),
        1 => (0u8..3, 0u8..3).prop_map(|(replica, keep_unsynced)| Step::PowerLoss { replica, keep_unsynced }),
    ]
}

struct Cluster {
    replicas: Vec<Replica>,
    leader: usize,
    epoch: i32,
    cfg: TopicConfig,
    next_seq: i32,
    counter: u64,
}

impl Cluster {
    /// A quorum decision: `leader` leads in a new epoch, the rest follow.
    fn elect(&mut self, leader: usize) {
        self.epoch += 1;
        self.leader = leader;
        for (i, r) in self.replicas.iter().enumerate() {
            if i == leader {
                lead(r, self.epoch);
            } else {
                r.part.become_follower(self.epoch).unwrap();
            }
        }
    }

    /// Reconcile, then copy; the follower must be a prefix of the leader.
    fn fetch(&self, i: usize, fetches: usize, max_bytes: usize) -> Result<(), TestCaseError> {
        if i == self.leader {
            return Ok(());
        }
        let (leader, follower) = (&self.replicas[self.leader].part, &self.replicas[i].part);
        reconcile(leader, follower);
        let (l, f) = (self.replicas[self.leader].raw(), self.replicas[i].raw());
        prop_assert!(l.starts_with(&f), "replica {} is not a prefix of the leader after reconciling", i);
        copy_some(leader, follower, &self.cfg, max_bytes, fetches);
        let f = self.replicas[i].raw();
        prop_assert!(l.starts_with(&f), "replica {} copied something the leader does not have", i);
        Ok(())
    }
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let cfg = config(&[("segment.bytes", "1024"), ("index.interval.bytes", "200")]);
    let replicas = (0..3).map(|_| Replica::new(&cfg)).collect();
    let mut c = Cluster { replicas, leader: 0, epoch: 0, cfg, next_seq: 0, counter: 0 };
    c.elect(0);
    for s in steps {
        match s {
            Step::Produce { records, idempotent } => {
                c.counter += 1;
                let values: Vec<String> =
                    (0..records).map(|j| format!("v{}-{j}-{}", c.counter, "q".repeat(20))).collect();
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                let data = if idempotent {
                    c.next_seq += i32::from(records);
                    idempotent_batch(3, c.next_seq - i32::from(records), &values)
                } else {
                    value_batch(&values)
                };
                let leader = &c.replicas[c.leader].part;
                match leader.append(&data, &c.cfg, NOW) {
                    Ok(_) => {}
                    // A new leader that never copied the producer's latest
                    // batches sees a sequence gap: the producer goes on
                    // from what this leader has.
                    Err(Error::OutOfOrderSequence { expected, .. }) => c.next_seq = expected,
                    Err(e) => return Err(TestCaseError::fail(format!("append: {e}"))),
                }
            }
            Step::Elect(i) => c.elect(usize::from(i)),
            Step::Fetch { replica, fetches, max_bytes } => {
                c.fetch(usize::from(replica), usize::from(fetches), usize::from(max_bytes))?
            }
            Step::Truncate { replica, permille } => {
                let i = usize::from(replica);
                if i != c.leader {
                    let p = &c.replicas[i].part;
                    let (start, end) = (p.log_start_offset(), p.log_end_offset());
                    p.truncate_to(start + (end - start) * i64::from(permille) / 1000).unwrap();
                }
            }
            Step::Restart(i) | Step::PowerLoss { replica: i, .. } => {
                let i = usize::from(i);
                let cfg = c.cfg.clone();
                match s {
                    Step::PowerLoss { keep_unsynced, .. } => {
                        c.replicas[i].power_loss(&cfg, keep_unsynced.into())
                    }
                    _ => c.replicas[i].restart(&cfg),
                }
                // A restarted replica is told its role again; a restarted
                // leader loses the lead to a new epoch (it may have lost
                // records followers copied, so that epoch must not go on).
                if i == c.leader {
                    c.elect((i + 1) % 3);
                } else {
                    c.replicas[i].part.become_follower(c.epoch).unwrap();
                }
            }
        }
    }
    // In the end every follower catches up and is the leader's copy.
    let l = c.leader;
    for i in (0..3).filter(|i| *i != l) {
        c.fetch(i, usize::MAX, 1 << 20)?;
        // Byte for byte and offset for offset. (Segment boundaries may differ
        // after crashes and truncations, as in Kafka: a roll is each
        // replica's own.)
        prop_assert_eq!(c.replicas[i].raw(), c.replicas[l].raw(), "replica {} differs after catching up", i);
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn followers_stay_prefixes_of_the_leader(steps in prop::collection::vec(step(), 1..80)) {
        run(steps)?;
    }
}

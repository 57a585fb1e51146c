//! The loss/duplicate checker every replication scenario ends with.
//!
//! Three sources of truth are compared, and every disagreement is a finding:
//!
//! * the [`Ledger`]: what producers were told (record id → partition and
//!   offset, for every acknowledgement; the ids of attempts that failed or
//!   whose outcome is unknown), and what tailing readers saw while faults
//!   were injected;
//! * the log as a fresh reader gets it from the leaders after the cluster
//!   settled ([`PartitionRead`], read from the log start to the high
//!   watermark);
//! * every replica's segment files, read from disk once the brokers are
//!   gone ([`ReplicaLog`]).
//!
//! A clean run has: no acknowledged record missing, none stored twice, none
//! at another offset than acknowledged, offsets in order without gaps, ack
//! order kept per producer and partition, nothing a reader saw that the log
//! no longer holds there, and every replica holding the leader's bytes below
//! the high watermark. Records whose produce failed or timed out may be
//! stored or not — but at most once.
//!
//! [`check`] is a pure function so the checker itself is unit-tested on
//! hand-made logs; [`verify`] runs it against a live [`Cluster`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use tributary_proto::batch::{self, BatchHeader, Batches};

use crate::cluster::Cluster;
use crate::workload::{self, Route};

/// Examples kept per kind of finding.
const EXAMPLES: usize = 5;

/// The value a test record carries: its unique id, readable in a dump.
pub fn value_for(id: u64) -> Vec<u8> {
    format!("rec-{id:012}").into_bytes()
}

/// The id in a value written by [`value_for`].
pub fn id_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.strip_prefix("rec-")?.parse().ok()
}

/// A record whose produce was acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub partition: u32,
    pub offset: i64,
    pub id: u64,
    /// Which producer (see [`Ledger::producer`]): ack order is checked per
    /// producer and partition.
    pub producer: u32,
    /// When its batch was first sent, and when the acknowledgement came.
    pub first_sent: Instant,
    pub acked_at: Instant,
    /// The broker address that acknowledged it.
    pub via: String,
}

/// A record whose produce failed or whose outcome is unknown (timed out,
/// connection lost, producer stopped while retrying).
#[derive(Debug, Clone)]
pub struct Unacked {
    pub partition: u32,
    pub id: u64,
    pub producer: u32,
    pub first_sent: Instant,
    /// The last error its batch got.
    pub reason: String,
}

/// A record a reader was served while the test ran.
#[derive(Debug, Clone)]
pub struct Observed {
    pub partition: u32,
    pub offset: i64,
    /// None: a value not written by [`value_for`].
    pub id: Option<u64>,
    pub via: String,
}

/// Everything a ledger holds (a snapshot).
#[derive(Debug, Clone, Default)]
pub struct Entries {
    pub acked: Vec<Acked>,
    pub unacked: Vec<Unacked>,
    pub observed: Vec<Observed>,
    /// Reads that went wrong in a way no later read can repair (a position
    /// past the log end, records above the high watermark, a skipped offset).
    pub poll_anomalies: Vec<String>,
}

impl Entries {
    /// Records acknowledged whose batch was first sent at or after `t`.
    pub fn acked_sent_after(&self, t: Instant) -> Vec<&Acked> {
        self.acked.iter().filter(|a| a.first_sent >= t).collect()
    }

    /// Records acknowledged at or after `t`.
    pub fn acked_after(&self, t: Instant) -> usize {
        self.acked.iter().filter(|a| a.acked_at >= t).count()
    }
}

/// What producers and readers of one topic were told, shared by all of them
/// (clone it freely).
#[derive(Clone, Default)]
pub struct Ledger {
    entries: Arc<Mutex<Entries>>,
    next_id: Arc<AtomicU64>,
    next_producer: Arc<AtomicU32>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        // A panicking producer task leaves whole entries behind; keep them.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `n` fresh record ids, unique across every producer of this ledger.
    pub fn ids(&self, n: u64) -> std::ops::Range<u64> {
        let first = self.next_id.fetch_add(n, Ordering::SeqCst);
        first..first + n
    }

    /// A number for a new producer.
    pub fn producer(&self) -> u32 {
        self.next_producer.fetch_add(1, Ordering::SeqCst)
    }

    pub fn record_acked(&self, acked: impl IntoIterator<Item = Acked>) {
        self.entries().acked.extend(acked);
    }

    pub fn record_unacked(&self, unacked: impl IntoIterator<Item = Unacked>) {
        self.entries().unacked.extend(unacked);
    }

    pub fn record_observed(&self, observed: impl IntoIterator<Item = Observed>) {
        self.entries().observed.extend(observed);
    }

    pub fn record_poll_anomaly(&self, what: String) {
        self.entries().poll_anomalies.push(what);
    }

    pub fn snapshot(&self) -> Entries {
        self.entries().clone()
    }
}

/// One partition as a fresh reader got it from its leader: every stored
/// batch from the log start to the high watermark, as the broker served it.
#[derive(Debug, Clone)]
pub struct PartitionRead {
    pub partition: u32,
    pub log_start: i64,
    pub high_watermark: i64,
    /// Leader and replica set per metadata when it was read.
    pub leader: i32,
    pub replicas: Vec<i32>,
    /// Whole batches, in offset order.
    pub batches: Vec<Bytes>,
}

/// One replica's copy of a partition, from its segment files.
#[derive(Debug, Clone)]
pub struct ReplicaLog {
    pub node: i32,
    pub partition: u32,
    /// (base offset, next offset, whole batch bytes), in file order.
    pub batches: Vec<(i64, i64, Bytes)>,
    /// The partition directory does not exist on this broker.
    pub missing: bool,
    /// Why reading stopped early (a torn tail, an unreadable file).
    pub problem: Option<String>,
}

/// Reads the segment files of `<data_dir>/<topic>-<partition>` (the
/// broker's layout: `<20-digit base offset>.log` files of whole batches).
pub fn read_replica(node: i32, data_dir: &Path, topic: &str, partition: u32) -> ReplicaLog {
    let mut log = ReplicaLog { node, partition, batches: Vec::new(), missing: false, problem: None };
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let entries = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log.missing = true;
            return log;
        }
        Err(e) => {
            log.problem = Some(format!("{}: {e}", dir.display()));
            return log;
        }
    };
    let mut segments: Vec<(i64, std::path::PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".log")?;
            if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((stem.parse::<i64>().ok()?, e.path()))
        })
        .collect();
    segments.sort();
    for (_, path) in segments {
        let data = match std::fs::read(&path) {
            Ok(d) => Bytes::from(d),
            Err(e) => {
                log.problem = Some(format!("{}: {e}", path.display()));
                return log;
            }
        };
        let mut it = Batches::new(&data);
        loop {
            let start = it.position();
            match it.next() {
                None => break,
                Some(Ok((h, whole))) => {
                    log.batches.push((h.base_offset, h.next_offset(), data.slice(start..start + whole.len())))
                }
                Some(Err(e)) => {
                    // Only the last segment may legitimately end torn (a
                    // kill mid-append); what that costs shows as "short".
                    log.problem = Some(format!("{}: {e}", path.display()));
                    break;
                }
            }
        }
    }
    log
}

/// How many of one kind of problem, with the first few described.
#[derive(Debug, Clone, Default)]
pub struct Finding {
    pub count: usize,
    pub examples: Vec<String>,
}

impl Finding {
    fn add(&mut self, describe: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(describe());
        }
    }
}

/// The checker's verdict; [`is_clean`](Self::is_clean) when every finding
/// is zero. Its `Display` is what a failing test prints.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub acked: usize,
    pub unacked: usize,
    /// Records in the final log, and those of them no ack covers.
    pub stored: usize,
    pub stored_unacked: usize,
    pub observed: usize,
    pub replicas_compared: usize,
    /// Acknowledged, not in the log.
    pub lost: Finding,
    /// One id at more than one offset.
    pub duplicates: Finding,
    /// Acknowledged at one offset, stored at another.
    pub misplaced: Finding,
    /// Offsets not strictly increasing / with gaps / not from log start to
    /// HW; or one producer's acks in a partition stored out of ack order.
    pub out_of_order: Finding,
    /// A reader was served a record the final log does not hold there.
    pub phantom_reads: Finding,
    pub poll_anomalies: Finding,
    /// Values no test producer wrote.
    pub foreign: Finding,
    /// Batches that fail their CRC or cannot be decoded.
    pub unreadable: Finding,
    /// A replica holds other bytes than the leader below the HW.
    pub replica_divergent: Finding,
    /// A replica lacks batches below the HW.
    pub replica_short: Finding,
    /// Every test record id in the final log (for scenario-specific checks:
    /// "none of these may be readable").
    pub stored_ids: std::collections::HashSet<u64>,
}

impl Report {
    fn findings(&self) -> [(&'static str, &Finding); 10] {
        [
            ("lost acknowledged records", &self.lost),
            ("duplicates", &self.duplicates),
            ("acked offset != stored offset", &self.misplaced),
            ("offsets out of order", &self.out_of_order),
            ("reads that vanished", &self.phantom_reads),
            ("non-monotonic polls", &self.poll_anomalies),
            ("foreign records", &self.foreign),
            ("unreadable batches", &self.unreadable),
            ("replicas diverging below HW", &self.replica_divergent),
            ("replicas short of HW", &self.replica_short),
        ]
    }

    pub fn is_clean(&self) -> bool {
        self.findings().iter().all(|(_, f)| f.count == 0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checker: {} acked, {} unacked/uncertain, {} stored ({} of them unacked), {} observed by readers, {} replicas compared",
            self.acked, self.unacked, self.stored, self.stored_unacked, self.observed, self.replicas_compared
        )?;
        for (name, finding) in self.findings() {
            writeln!(f, "  {name}: {}", finding.count)?;
            for e in &finding.examples {
                writeln!(f, "    - {e}")?;
            }
        }
        Ok(())
    }
}

/// One decoded record of the final log.
struct Stored {
    offset: i64,
    id: Option<u64>,
}

/// Decodes a partition's batches into records below the HW, reporting
/// batches that fail their CRC or cannot be decoded.
fn decode(read: &PartitionRead, report: &mut Report) -> Vec<Stored> {
    let mut out = Vec::new();
    for b in &read.batches {
        if let Err(e) = batch::verify(b) {
            report.unreadable.add(|| format!("p{}: batch of {} bytes: {e}", read.partition, b.len()));
            continue;
        }
        let records = match batch::records(b) {
            Ok(r) => r,
            Err(e) => {
                report.unreadable.add(|| format!("p{}: {e}", read.partition));
                continue;
            }
        };
        for r in records {
            match r {
                Ok(r) if r.offset >= read.log_start && r.offset < read.high_watermark => {
                    out.push(Stored { offset: r.offset, id: r.value.as_deref().and_then(id_of) })
                }
                Ok(_) => {}
                Err(e) => {
                    report.unreadable.add(|| format!("p{}: {e}", read.partition));
                    break;
                }
            }
        }
    }
    out
}

/// Offsets strictly increasing, contiguous, from the log start to the HW.
fn check_order(read: &PartitionRead, records: &[Stored], report: &mut Report) {
    let p = read.partition;
    let Some(first) = records.first() else {
        if read.high_watermark > read.log_start {
            report.out_of_order.add(|| {
                format!(
                    "p{p}: no records read, but log start {} < HW {}",
                    read.log_start, read.high_watermark
                )
            });
        }
        return;
    };
    if first.offset != read.log_start {
        report
            .out_of_order
            .add(|| format!("p{p}: first record at {}, log start {}", first.offset, read.log_start));
    }
    for w in records.windows(2) {
        let (a, b) = (w[0].offset, w[1].offset);
        if b <= a {
            report.out_of_order.add(|| format!("p{p}: offset {b} after {a}"));
        } else if b != a + 1 {
            report.out_of_order.add(|| format!("p{p}: offsets {}..{} missing", a + 1, b));
        }
    }
    let last = records[records.len() - 1].offset;
    if last + 1 != read.high_watermark {
        report.out_of_order.add(|| format!("p{p}: last record at {last}, HW {}", read.high_watermark));
    }
}

/// Each replica's batches below the HW must be the leader's, byte for byte,
/// and an assigned replica must hold all of them.
fn check_replicas(reads: &[PartitionRead], replicas: &[ReplicaLog], report: &mut Report) {
    for read in reads {
        let p = read.partition;
        let hw = read.high_watermark;
        let mut canonical: BTreeMap<i64, &Bytes> = BTreeMap::new();
        for b in &read.batches {
            if let Ok(h) = BatchHeader::parse(b) {
                if h.base_offset < hw {
                    canonical.insert(h.base_offset, b);
                }
            }
        }
        for replica in replicas.iter().filter(|r| r.partition == p) {
            let assigned = read.replicas.is_empty() || read.replicas.contains(&replica.node);
            if !assigned {
                continue;
            }
            report.replicas_compared += 1;
            let node = replica.node;
            if replica.missing {
                if hw > read.log_start {
                    report.replica_short.add(|| format!("node {node} p{p}: no partition directory"));
                }
                continue;
            }
            let mut held = 0usize;
            for (base, next, bytes) in replica.batches.iter().filter(|(base, _, _)| *base < hw) {
                match canonical.get(base) {
                    Some(c) if *c == bytes => held += 1,
                    Some(c) => report.replica_divergent.add(|| {
                        let epoch = |b: &Bytes| BatchHeader::parse(b).map_or(-1, |h| h.leader_epoch);
                        format!(
                            "node {node} p{p}: batch {base}..{next} differs from the leader's (epoch {} vs {})",
                            epoch(bytes),
                            epoch(c)
                        )
                    }),
                    // Below the leader's log start: retention, not a
                    // disagreement.
                    None if *next <= read.log_start => {}
                    None => report.replica_divergent.add(|| {
                        format!("node {node} p{p}: batch {base}..{next} does not line up with the leader's batches")
                    }),
                }
            }
            let wanted = canonical.len();
            let have: std::collections::BTreeSet<i64> = replica.batches.iter().map(|(b, _, _)| *b).collect();
            if let Some(first_missing) = canonical.keys().find(|b| !have.contains(b)) {
                let why = replica.problem.clone().unwrap_or_default();
                report.replica_short.add(|| {
                    format!(
                        "node {node} p{p}: holds {held} of the {wanted} batches below HW {hw}, first missing at {first_missing} {why}"
                    )
                });
            }
        }
    }
}

/// Compares the ledger with the final log and the replicas; see the module
/// docs for what counts as a finding.
pub fn check(entries: &Entries, reads: &[PartitionRead], replicas: &[ReplicaLog]) -> Report {
    let mut report = Report {
        acked: entries.acked.len(),
        unacked: entries.unacked.len(),
        observed: entries.observed.len(),
        ..Report::default()
    };
    // (partition, offset) -> id and id -> locations, from the final log.
    let mut at: HashMap<(u32, i64), Option<u64>> = HashMap::new();
    let mut locations: HashMap<u64, Vec<(u32, i64)>> = HashMap::new();
    for read in reads {
        let records = decode(read, &mut report);
        check_order(read, &records, &mut report);
        for r in &records {
            report.stored += 1;
            at.insert((read.partition, r.offset), r.id);
            match r.id {
                Some(id) => locations.entry(id).or_default().push((read.partition, r.offset)),
                None => report
                    .foreign
                    .add(|| format!("p{} offset {}: not a test record", read.partition, r.offset)),
            }
        }
    }
    for (id, locs) in &locations {
        if locs.len() > 1 {
            report.duplicates.add(|| format!("id {id} stored at {locs:?}"));
        }
    }
    let mut acked_ids = std::collections::HashSet::new();
    for a in &entries.acked {
        acked_ids.insert(a.id);
        match locations.get(&a.id) {
            None => report.lost.add(|| {
                format!(
                    "id {} acked at p{} offset {} by {} (producer {})",
                    a.id, a.partition, a.offset, a.via, a.producer
                )
            }),
            Some(locs) if locs.contains(&(a.partition, a.offset)) => {}
            Some(locs) => report.misplaced.add(|| {
                format!(
                    "id {} acked at p{} offset {} by {}, stored at {locs:?}",
                    a.id, a.partition, a.offset, a.via
                )
            }),
        }
    }
    report.stored_unacked = locations.keys().filter(|id| !acked_ids.contains(id)).count();
    report.stored_ids = locations.keys().copied().collect();
    check_ack_order(entries, &mut report);
    for o in &entries.observed {
        let Some(id) = o.id else { continue };
        match at.get(&(o.partition, o.offset)) {
            Some(Some(stored)) if *stored == id => {}
            stored => report.phantom_reads.add(|| {
                format!(
                    "p{} offset {}: a reader got id {id} from {}, the final log has {}",
                    o.partition,
                    o.offset,
                    o.via,
                    match stored {
                        Some(Some(other)) => format!("id {other}"),
                        Some(None) => "a foreign record".into(),
                        None => "nothing".into(),
                    }
                )
            }),
        }
    }
    for a in &entries.poll_anomalies {
        report.poll_anomalies.add(|| a.clone());
    }
    check_replicas(reads, replicas, &mut report);
    report
}

/// One producer writes a partition in order, one batch at a time, so its
/// acked ids must sit at increasing offsets.
fn check_ack_order(entries: &Entries, report: &mut Report) {
    let mut by_stream: BTreeMap<(u32, u32), Vec<&Acked>> = BTreeMap::new();
    for a in &entries.acked {
        by_stream.entry((a.producer, a.partition)).or_default().push(a);
    }
    for ((producer, p), mut acks) in by_stream {
        acks.sort_by_key(|a| a.id);
        for w in acks.windows(2) {
            if w[1].offset <= w[0].offset {
                report.out_of_order.add(|| {
                    format!(
                        "producer {producer} p{p}: id {} acked at {} but later id {} at {}",
                        w[0].id, w[0].offset, w[1].id, w[1].offset
                    )
                });
            }
        }
    }
}

/// Ends a scenario: waits until every partition's ISR is full again (at
/// most `settle`), reads each partition from its leader, freezes and kills
/// every broker, reads every replica from disk, and checks it all against
/// `ledger`. Producers and readers must be stopped first.
pub async fn verify(
    cluster: &mut Cluster,
    ledger: &Ledger,
    topic: &str,
    partitions: &[u32],
    settle: Duration,
) -> Result<Report> {
    cluster.wait_in_sync(topic, partitions, settle).await?;
    let mut reads = Vec::new();
    for &p in partitions {
        reads.push(workload::read_partition(&cluster.bootstrap(), topic, p, &Route::Leader).await?);
    }
    // Frozen first, so no broker reacts to another's death while the rest
    // are killed; what is on disk is what they held.
    cluster.freeze_and_kill_all();
    let mut replicas = Vec::new();
    for &p in partitions {
        for i in 0..cluster.len() {
            replicas.push(read_replica(i as i32, &cluster.broker(i).data_dir(), topic, p));
        }
    }
    Ok(check(&ledger.snapshot(), &reads, &replicas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_proto::batch::{set_base_offset, set_leader_epoch, BatchBuilder, Compression};

    /// A stored batch holding `ids` at `base`.., stamped with `epoch`.
    fn stored(base: i64, epoch: i32, ids: &[u64]) -> Bytes {
        let mut b = BatchBuilder::new(Compression::None, 1_700_000_000_000);
        for id in ids {
            b.append(1_700_000_000_000, None, Some(&value_for(*id)), &[]);
        }
        let mut bytes = b.build().to_vec();
        set_base_offset(&mut bytes, base);
        set_leader_epoch(&mut bytes, epoch);
        Bytes::from(bytes)
    }

    fn read(partition: u32, batches: Vec<Bytes>) -> PartitionRead {
        let hw = batches.last().map_or(0, |b| BatchHeader::parse(b).unwrap().next_offset());
        PartitionRead {
            partition,
            log_start: 0,
            high_watermark: hw,
            leader: 0,
            replicas: vec![0, 1],
            batches,
        }
    }

    fn acked(partition: u32, offset: i64, id: u64) -> Acked {
        let now = Instant::now();
        Acked { partition, offset, id, producer: 0, first_sent: now, acked_at: now, via: "b0".into() }
    }

    fn replica(node: i32, partition: u32, batches: &[Bytes]) -> ReplicaLog {
        let batches = batches
            .iter()
            .map(|b| {
                let h = BatchHeader::parse(b).unwrap();
                (h.base_offset, h.next_offset(), b.clone())
            })
            .collect();
        ReplicaLog { node, partition, batches, missing: false, problem: None }
    }

    fn entries(acked: Vec<Acked>) -> Entries {
        Entries { acked, ..Entries::default() }
    }

    #[test]
    fn ids_round_trip_through_values() {
        assert_eq!(id_of(&value_for(42)), Some(42));
        assert_eq!(id_of(b"hello"), None);
        let ledger = Ledger::new();
        assert_eq!(ledger.ids(3), 0..3);
        assert_eq!(ledger.ids(2), 3..5);
        assert_eq!((ledger.producer(), ledger.producer()), (0, 1));
    }

    #[test]
    fn a_faithful_log_is_clean() {
        let log = vec![stored(0, 0, &[0, 1]), stored(2, 1, &[2])];
        let e = Entries {
            acked: vec![acked(0, 0, 0), acked(0, 1, 1)],
            // An uncertain record may be stored (once).
            unacked: vec![Unacked {
                partition: 0,
                id: 2,
                producer: 0,
                first_sent: Instant::now(),
                reason: "REQUEST_TIMED_OUT".into(),
            }],
            observed: vec![Observed { partition: 0, offset: 1, id: Some(1), via: "b0".into() }],
            poll_anomalies: vec![],
        };
        let reps = [replica(0, 0, &log), replica(1, 0, &log)];
        let report = check(&e, &[read(0, log.clone())], &reps);
        assert!(report.is_clean(), "{report}");
        assert_eq!(
            (report.acked, report.stored, report.stored_unacked, report.replicas_compared),
            (2, 3, 1, 2)
        );
    }

    #[test]
    fn lost_duplicated_and_misplaced_records_are_reported() {
        // id 1 stored twice, id 2 acked at 2 but stored at 3, id 9 not stored.
        let log = vec![stored(0, 0, &[0, 1]), stored(2, 0, &[1, 2])];
        let e = entries(vec![acked(0, 0, 0), acked(0, 1, 1), acked(0, 2, 2), acked(0, 4, 9)]);
        let report = check(&e, &[read(0, log)], &[]);
        assert_eq!(report.lost.count, 1, "{report}");
        assert!(report.lost.examples[0].contains("id 9"), "{report}");
        assert_eq!(report.duplicates.count, 1, "{report}");
        assert_eq!(report.misplaced.count, 1, "{report}");
        assert!(!report.is_clean());
        let text = report.to_string();
        assert!(text.contains("lost acknowledged records: 1"), "{text}");
    }

    #[test]
    fn gaps_reordering_and_short_reads_are_out_of_order() {
        // A gap (offsets 2..4 missing) and a read that stops below the HW.
        let mut r = read(0, vec![stored(0, 0, &[0, 1]), stored(5, 0, &[2])]);
        r.high_watermark = 8;
        let report = check(&entries(vec![]), &[r], &[]);
        assert_eq!(report.out_of_order.count, 2, "{report}");
        // Ack order: a later id of the same producer at a lower offset.
        let log = vec![stored(0, 0, &[1, 0])];
        let report = check(&entries(vec![acked(0, 1, 0), acked(0, 0, 1)]), &[read(0, log)], &[]);
        assert_eq!(report.out_of_order.count, 1, "{report}");
        assert_eq!(report.lost.count + report.misplaced.count, 0, "{report}");
    }

    #[test]
    fn a_read_that_vanished_is_a_phantom() {
        let log = vec![stored(0, 0, &[0, 1])];
        let e = Entries {
            observed: vec![
                Observed { partition: 0, offset: 1, id: Some(7), via: "old leader".into() },
                Observed { partition: 0, offset: 5, id: Some(8), via: "old leader".into() },
                Observed { partition: 0, offset: 0, id: Some(0), via: "leader".into() },
            ],
            poll_anomalies: vec!["p0: position 9 past the log end".into()],
            ..Entries::default()
        };
        let report = check(&e, &[read(0, log)], &[]);
        assert_eq!(report.phantom_reads.count, 2, "{report}");
        assert_eq!(report.poll_anomalies.count, 1, "{report}");
    }

    #[test]
    fn diverging_and_short_replicas_are_reported() {
        let leader = vec![stored(0, 1, &[0, 1]), stored(2, 2, &[2])];
        let other_epoch = vec![stored(0, 1, &[0, 1]), stored(2, 1, &[2])];
        let other_bytes = vec![stored(0, 1, &[0, 1]), stored(2, 2, &[5])];
        let misaligned = vec![stored(0, 1, &[0]), stored(1, 1, &[1, 2])];
        let short = vec![stored(0, 1, &[0, 1])];
        let mut r = read(0, leader.clone());
        r.replicas = vec![0, 1, 2, 3, 4, 5];
        let reps = [
            replica(0, 0, &leader),
            replica(1, 0, &other_epoch),
            replica(2, 0, &other_bytes),
            replica(3, 0, &misaligned),
            replica(4, 0, &short),
            ReplicaLog { node: 5, partition: 0, batches: vec![], missing: true, problem: None },
            // Not a replica of the partition: ignored.
            replica(9, 0, &short),
        ];
        let report = check(&entries(vec![]), &[r], &reps);
        assert_eq!(report.replicas_compared, 6, "{report}");
        assert_eq!(report.replica_divergent.count, 4, "{report}");
        assert!(report.replica_divergent.examples[0].contains("epoch 1 vs 2"), "{report}");
        // misaligned lacks base 2 too; short lacks it; 5 has nothing.
        assert_eq!(report.replica_short.count, 3, "{report}");
    }

    #[test]
    fn data_above_the_high_watermark_is_not_compared() {
        let leader = vec![stored(0, 1, &[0, 1])];
        let mut follower = leader.clone();
        follower.push(stored(2, 1, &[99]));
        let report = check(&entries(vec![]), &[read(0, leader.clone())], &[replica(1, 0, &follower)]);
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn segment_files_are_read_in_order_and_a_torn_tail_is_noted() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("t-0");
        std::fs::create_dir_all(&part).unwrap();
        let (a, b, c) = (stored(0, 0, &[0, 1]), stored(2, 0, &[2]), stored(3, 0, &[3]));
        std::fs::write(part.join(format!("{:020}.log", 2)), [&b[..], &c[..c.len() - 3]].concat()).unwrap();
        std::fs::write(part.join(format!("{:020}.log", 0)), &a[..]).unwrap();
        std::fs::write(part.join("00000000000000000000.index"), b"not a segment").unwrap();
        let log = read_replica(3, dir.path(), "t", 0);
        assert!(!log.missing);
        let bases: Vec<i64> = log.batches.iter().map(|(b, _, _)| *b).collect();
        assert_eq!(bases, vec![0, 2]);
        assert_eq!(log.batches[1].2, b);
        assert!(log.problem.as_deref().unwrap_or_default().contains("truncated"), "{:?}", log.problem);
        assert!(read_replica(3, dir.path(), "t", 1).missing);
    }
}

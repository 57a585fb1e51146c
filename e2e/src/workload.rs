//! The load a replication scenario runs while it injects faults, over raw
//! gRPC so the verdict does not depend on the client library under test:
//!
//! * [`spawn_producer`]: an idempotent producer (id and epoch from
//!   InitProducerId, sequence numbers in every batch) writing uniquely
//!   numbered records one batch at a time per partition. It sends each batch
//!   to the partition's leader ([`Route::Leader`]) or always to one broker
//!   ([`Route::Pinned`], to hold a cut-off leader to account), and on
//!   NOT_LEADER, timeouts or broken connections re-reads metadata and sends
//!   the *same bytes* again, so the broker's deduplication keeps a retry from
//!   writing twice. Every acknowledgement and every batch it stopped
//!   retrying go into the [`Ledger`].
//! * [`spawn_tail`]: a consumer tailing partitions during the faults; what
//!   it is served goes into the ledger, so the checker can prove no reader
//!   ever saw a record that later vanished.
//! * [`read_partition`]: the final read from the log start to the high
//!   watermark, which never mistakes an empty fetch for the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use bytes::Bytes;
use tokio::task::JoinHandle;
use tributary_proto::batch::{self, BatchBuilder, Batches, Compression, ProducerStamp};
use tributary_proto::v1::{
    ErrorCode, FetchPartition, FetchRequest, FetchResponse, InitProducerIdRequest, PartitionError,
    PartitionProduceData, ProduceRequest, TopicProduceData,
};

use crate::checker::{id_of, value_for, Acked, Ledger, Observed, PartitionRead, Unacked};
use crate::routing::{code_name, retriable, transport_failure, Router};

/// Pause after a failed attempt before the next (a failover takes seconds;
/// hammering it only fills the logs).
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Where requests for a partition go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To the partition's leader per metadata, following failovers.
    Leader,
    /// Always to this broker address, leader or not.
    Pinned(String),
}

/// What a producer writes and how.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    pub topic: String,
    /// Written round-robin, one batch at a time.
    pub partitions: Vec<u32>,
    pub records_per_batch: u32,
    /// -1 (all), 1 or 0, as the Produce request's `acks`.
    pub acks: i32,
    /// The request's `timeout_ms`; the client waits this plus 2 s.
    pub request_timeout: Duration,
    /// Pause between batches.
    pub pace: Duration,
    pub route: Route,
    /// Stop retrying a batch after this long (it is recorded as unacked and
    /// the producer starts over with a new producer id); None: retry until
    /// acknowledged or stopped.
    pub give_up_after: Option<Duration>,
}

impl ProducerOptions {
    /// acks=all, 5 records a batch, a batch every 20 ms, to the leaders.
    pub fn new(topic: &str, partitions: &[u32]) -> ProducerOptions {
        ProducerOptions {
            topic: topic.to_string(),
            partitions: partitions.to_vec(),
            records_per_batch: 5,
            acks: -1,
            request_timeout: Duration::from_secs(5),
            pace: Duration::from_millis(20),
            route: Route::Leader,
            give_up_after: None,
        }
    }
}

/// What a producer went through.
#[derive(Debug, Clone, Default)]
pub struct ProducerStats {
    pub batches_acked: u64,
    pub records_acked: u64,
    pub attempts: u64,
    /// Failed attempts by cause ("NOT_LEADER", "client timeout", ...).
    pub errors: BTreeMap<String, u64>,
    /// Errors that are not part of a failover (bad request, out-of-order
    /// sequence, storage error...): each made the producer give up a batch.
    pub non_retriable: Vec<String>,
    /// Batches given up (stopped, `give_up_after`, non-retriable error).
    pub gave_up: u64,
    /// Producer ids obtained (1 + restarts after giving up).
    pub producer_ids: u64,
    /// Times an acknowledgement came from another broker than the last one.
    pub leader_changes: u64,
}

impl ProducerStats {
    fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }
}

/// A running producer task; [`stop`](Self::stop) it to get its figures.
pub struct RunningProducer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    number: u32,
    handle: JoinHandle<ProducerStats>,
}

impl RunningProducer {
    /// Its number in the ledger ([`Acked::producer`]).
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Attempts that failed so far (any cause).
    pub fn failed_attempts(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// Records acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `more` records beyond those acked now are acknowledged
    /// (at most `timeout`): proof that writes flow.
    pub async fn wait_acked(&self, more: u64, timeout: Duration) -> Result<()> {
        let target = self.acked() + more;
        let started = Instant::now();
        while self.acked() < target {
            if started.elapsed() > timeout || self.handle.is_finished() {
                bail!("{} records acknowledged, waited {timeout:?} for {target}", self.acked());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Lets the attempt in flight finish (its batch is then acked or recorded
    /// as unacked) and returns the figures.
    pub async fn stop(self) -> ProducerStats {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.unwrap_or_default()
    }
}

/// Starts a producer writing into `ledger`; see the module docs.
pub fn spawn_producer(bootstrap: &str, ledger: &Ledger, options: ProducerOptions) -> RunningProducer {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let number = ledger.producer();
    let producer = Producer {
        router: Router::new(bootstrap),
        ledger: ledger.clone(),
        number,
        options,
        stop: stop.clone(),
        acked: acked.clone(),
        failed: failed.clone(),
        stats: ProducerStats::default(),
        last_via: None,
    };
    let handle = tokio::spawn(producer.run());
    RunningProducer { stop, acked, failed, number, handle }
}

struct Producer {
    router: Router,
    ledger: Ledger,
    number: u32,
    options: ProducerOptions,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stats: ProducerStats,
    last_via: Option<String>,
}

/// How one batch ended.
enum Sent {
    Acked { base_offset: i64, via: String },
    GaveUp { reason: String },
}

/// How one attempt ended.
enum Attempt {
    Acked { base_offset: i64 },
    Retry { why: String },
    Fatal { why: String },
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Producer {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    async fn run(mut self) -> ProducerStats {
        let mut stamp = match self.init_producer_id().await {
            Some(s) => s,
            None => return self.stats,
        };
        let mut sequences: BTreeMap<u32, i32> = BTreeMap::new();
        let mut round = 0usize;
        while !self.stopped() && !self.options.partitions.is_empty() {
            let partition = self.options.partitions[round % self.options.partitions.len()];
            round += 1;
            let n = self.options.records_per_batch.max(1);
            let ids = self.ledger.ids(u64::from(n));
            let seq = sequences.get(&partition).copied().unwrap_or(0);
            let bytes = build_batch(ids.clone(), ProducerStamp { base_sequence: seq, ..stamp });
            let first_sent = Instant::now();
            match self.send(partition, bytes).await {
                Sent::Acked { base_offset, via } => {
                    sequences.insert(partition, seq + n as i32);
                    let acked_at = Instant::now();
                    self.ledger.record_acked(ids.enumerate().map(|(k, id)| Acked {
                        partition,
                        offset: base_offset + k as i64,
                        id,
                        producer: self.number,
                        first_sent,
                        acked_at,
                        via: via.clone(),
                    }));
                    self.stats.batches_acked += 1;
                    self.stats.records_acked += u64::from(n);
                    self.acked.fetch_add(u64::from(n), Ordering::SeqCst);
                    if self.last_via.as_ref().is_some_and(|v| *v != via) {
                        self.stats.leader_changes += 1;
                    }
                    self.last_via = Some(via);
                }
                Sent::GaveUp { reason } => {
                    self.stats.gave_up += 1;
                    self.ledger.record_unacked(ids.map(|id| Unacked {
                        partition,
                        id,
                        producer: self.number,
                        first_sent,
                        reason: reason.clone(),
                    }));
                    if self.stopped() {
                        break;
                    }
                    // Whether the batch is stored is unknown, so its sequence
                    // cannot be reused or skipped: start over as a new
                    // producer (what a Kafka producer does on such errors).
                    stamp = match self.init_producer_id().await {
                        Some(s) => s,
                        None => break,
                    };
                    sequences.clear();
                }
            }
            tokio::time::sleep(self.options.pace).await;
        }
        self.stats
    }

    /// A producer id from any bootstrap broker, retried until one answers or
    /// the producer is stopped.
    async fn init_producer_id(&mut self) -> Option<ProducerStamp> {
        let addrs = self.router.bootstrap().to_vec();
        let mut i = 0usize;
        while !self.stopped() {
            // From any broker, also for a pinned producer: its broker may be
            // cut off from the quorum that hands out producer ids.
            let Some(addr) = addrs.get(i % addrs.len().max(1)).cloned() else { break };
            i += 1;
            let Ok(mut client) = self.router.client(&addr) else { break };
            match tokio::time::timeout(
                Duration::from_secs(3),
                client.init_producer_id(InitProducerIdRequest {}),
            )
            .await
            {
                Ok(Ok(resp)) => {
                    let r = resp.into_inner();
                    self.stats.producer_ids += 1;
                    return Some(ProducerStamp {
                        producer_id: r.producer_id,
                        producer_epoch: r.producer_epoch as i16,
                        base_sequence: 0,
                    });
                }
                Ok(Err(status)) => {
                    self.stats.error(format!("InitProducerId {:?}", status.code()));
                    self.router.forget(&addr);
                }
                Err(_) => {
                    self.stats.error("InitProducerId timeout".into());
                    self.router.forget(&addr);
                }
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
        None
    }

    /// Sends one batch until it is acknowledged, a non-retriable error comes,
    /// `give_up_after` passes, or the producer is stopped.
    async fn send(&mut self, partition: u32, bytes: Bytes) -> Sent {
        let started = Instant::now();
        let mut last = String::from("never sent");
        loop {
            if self.stopped() && last != "never sent" {
                return Sent::GaveUp { reason: format!("stopped while retrying ({last})") };
            }
            if self.options.give_up_after.is_some_and(|d| started.elapsed() > d) {
                return Sent::GaveUp { reason: format!("gave up after {:?} ({last})", started.elapsed()) };
            }
            let addr = match self.target(partition).await {
                Ok(a) => a,
                Err(e) => {
                    last = format!("no leader: {e}");
                    self.stats.error("no leader in metadata".into());
                    if self.stopped() {
                        return Sent::GaveUp { reason: last };
                    }
                    tokio::time::sleep(RETRY_BACKOFF * 2).await;
                    continue;
                }
            };
            self.stats.attempts += 1;
            let outcome = self.attempt(&addr, partition, bytes.clone()).await;
            if !matches!(outcome, Attempt::Acked { .. }) {
                self.failed.fetch_add(1, Ordering::SeqCst);
            }
            match outcome {
                Attempt::Acked { base_offset } => return Sent::Acked { base_offset, via: addr },
                Attempt::Fatal { why } => {
                    self.stats.non_retriable.push(format!("{addr}: {why}"));
                    return Sent::GaveUp { reason: why };
                }
                Attempt::Retry { why } => {
                    last = format!("{addr}: {why}");
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
            }
        }
    }

    async fn target(&mut self, partition: u32) -> Result<String> {
        match &self.options.route {
            Route::Pinned(a) => Ok(a.clone()),
            Route::Leader => Ok(self.router.leader(&self.options.topic, partition).await?.0),
        }
    }

    async fn attempt(&mut self, addr: &str, partition: u32, bytes: Bytes) -> Attempt {
        let topic = self.options.topic.clone();
        let req = ProduceRequest {
            acks: self.options.acks,
            timeout_ms: self.options.request_timeout.as_millis() as u32,
            topics: vec![TopicProduceData {
                name: topic.clone(),
                partitions: vec![PartitionProduceData { partition, records: bytes }],
            }],
        };
        let mut client = match self.router.client(addr) {
            Ok(c) => c,
            Err(e) => return Attempt::Fatal { why: e.to_string() },
        };
        let wait = self.options.request_timeout + Duration::from_secs(2);
        let resp = match tokio::time::timeout(wait, client.produce(req)).await {
            Err(_) => {
                self.stats.error("client timeout".into());
                self.router.forget(addr);
                self.router.invalidate(&topic, partition);
                return Attempt::Retry { why: format!("no answer within {wait:?}") };
            }
            Ok(Err(status)) if transport_failure(&status) => {
                self.stats.error(format!("grpc {:?}", status.code()));
                self.router.forget(addr);
                self.router.invalidate(&topic, partition);
                return Attempt::Retry { why: format!("{:?}: {}", status.code(), status.message()) };
            }
            Ok(Err(status)) => {
                self.stats.error(format!("grpc {:?}", status.code()));
                return Attempt::Fatal { why: format!("{:?}: {}", status.code(), status.message()) };
            }
            Ok(Ok(resp)) => resp.into_inner(),
        };
        let answer = resp
            .topics
            .iter()
            .filter(|t| t.name == topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition == partition);
        let Some(answer) = answer else {
            self.stats.error("answer without the partition".into());
            return Attempt::Retry { why: "answer without the partition".into() };
        };
        let error = answer.error.clone().unwrap_or_default();
        if error.code == ErrorCode::None as i32 {
            let base_offset = answer.batch_base_offsets.first().copied().unwrap_or(answer.base_offset);
            return Attempt::Acked { base_offset };
        }
        let name = code_name(error.code);
        self.stats.error(name.clone());
        let why = format!("{name}: {}", error.message);
        if !retriable(error.code) {
            return Attempt::Fatal { why };
        }
        self.router.hint(&topic, partition, &error);
        Attempt::Retry { why }
    }
}

/// A batch of test records with `ids`, stamped for an idempotent producer.
fn build_batch(ids: std::ops::Range<u64>, stamp: ProducerStamp) -> Bytes {
    let ts = now_ms();
    let mut b = BatchBuilder::new(Compression::None, ts);
    b.set_producer(stamp);
    for id in ids {
        b.append(ts, None, Some(&value_for(id)), &[]);
    }
    b.build()
}

/// One fetch of one partition at `offset` (a consumer's: below the HW only).
async fn fetch(
    router: &mut Router,
    addr: &str,
    topic: &str,
    partition: u32,
    offset: i64,
) -> Result<FetchResponse, String> {
    let req = FetchRequest {
        max_wait_ms: 200,
        min_bytes: 1,
        max_bytes: 1 << 20,
        partitions: vec![FetchPartition {
            topic: topic.to_string(),
            partition,
            offset,
            max_bytes: 1 << 20,
            current_leader_epoch: -1,
            durable_end: -1,
        }],
        replica_id: -1,
        is_replica: false,
    };
    let mut client = router.client(addr).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(3), client.fetch(req)).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => {
            router.forget(addr);
            Err(format!("{:?}: {}", status.code(), status.message()))
        }
        Err(_) => {
            router.forget(addr);
            Err("no answer within 3 s".into())
        }
    }
}

async fn fetch_target(router: &mut Router, route: &Route, topic: &str, partition: u32) -> Result<String> {
    match route {
        Route::Pinned(a) => Ok(a.clone()),
        Route::Leader => Ok(router.leader(topic, partition).await?.0),
    }
}

/// Reads `partition` from its log start to its high watermark (the highest
/// one any answer reported), keeping the stored batches as served. Empty
/// answers below the HW are retried, not taken for the end; 20 s without
/// progress fails with what the broker said last.
pub async fn read_partition(
    bootstrap: &str,
    topic: &str,
    partition: u32,
    route: &Route,
) -> Result<PartitionRead> {
    let mut router = Router::new(bootstrap);
    let meta = router.refresh(topic).await?.partition(topic, partition).cloned().unwrap_or_default();
    let mut read = PartitionRead {
        partition,
        log_start: 0,
        high_watermark: -1,
        leader: meta.leader,
        replicas: meta.replicas.clone(),
        batches: Vec::new(),
    };
    let mut next = 0i64;
    let mut last_progress = Instant::now();
    let mut last_seen = String::from("nothing yet");
    while read.high_watermark < 0 || next < read.high_watermark {
        if last_progress.elapsed() > Duration::from_secs(20) {
            bail!(
                "{topic}-{partition}: stuck at offset {next} below the high watermark {} ({route:?}); last: {last_seen}",
                read.high_watermark
            );
        }
        let addr = match fetch_target(&mut router, route, topic, partition).await {
            Ok(a) => a,
            Err(e) => {
                last_seen = e.to_string();
                tokio::time::sleep(RETRY_BACKOFF).await;
                continue;
            }
        };
        let answer = match fetch(&mut router, &addr, topic, partition, next).await {
            Ok(resp) => resp.partitions.into_iter().find(|p| p.topic == topic && p.partition == partition),
            Err(e) => {
                last_seen = format!("{addr}: {e}");
                router.invalidate(topic, partition);
                tokio::time::sleep(RETRY_BACKOFF).await;
                continue;
            }
        };
        let Some(answer) = answer else {
            last_seen = format!("{addr}: answer without the partition");
            continue;
        };
        let error = answer.error.clone().unwrap_or_default();
        if error.code == ErrorCode::OffsetOutOfRange as i32 && next < answer.log_start_offset {
            next = answer.log_start_offset;
            read.log_start = next;
            continue;
        }
        if error.code != ErrorCode::None as i32 {
            last_seen = format!("{addr}: {}: {}", code_name(error.code), error.message);
            router.hint(topic, partition, &error);
            tokio::time::sleep(RETRY_BACKOFF).await;
            continue;
        }
        read.high_watermark = read.high_watermark.max(answer.high_watermark);
        if read.batches.is_empty() {
            read.log_start = answer.log_start_offset;
        }
        let before = next;
        for (h, whole) in whole_batches(&answer.records)
            .map_err(|e| anyhow::anyhow!("{topic}-{partition} from {addr} at {next}: {e}"))?
        {
            if h.next_offset() <= next {
                continue;
            }
            read.batches.push(whole);
            next = h.next_offset();
        }
        if next > before {
            last_progress = Instant::now();
        } else {
            last_seen = format!("{addr}: empty answer at {next}, HW {}", answer.high_watermark);
        }
    }
    Ok(read)
}

/// The whole batches of a fetch answer, each as a slice of it.
fn whole_batches(records: &Bytes) -> Result<Vec<(batch::BatchHeader, Bytes)>, batch::BatchError> {
    let mut out = Vec::new();
    let mut it = Batches::new(records);
    loop {
        let start = it.position();
        match it.next() {
            None => return Ok(out),
            Some(Ok((h, whole))) => out.push((h, records.slice(start..start + whole.len()))),
            Some(Err(e)) => return Err(e),
        }
    }
}

/// What a tailing reader went through.
#[derive(Debug, Clone, Default)]
pub struct TailStats {
    pub records: u64,
    pub fetches: u64,
    /// Failed fetches by cause.
    pub errors: BTreeMap<String, u64>,
}

/// A running tailing reader; [`stop`](Self::stop) it to get its figures.
pub struct RunningTail {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    handle: JoinHandle<TailStats>,
}

impl RunningTail {
    /// Records served so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    pub async fn stop(self) -> TailStats {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.unwrap_or_default()
    }
}

/// Starts a reader that follows `partitions` of `topic` from offset 0 on,
/// recording every record it is served (and every anomaly: a record at or
/// above the HW it came with, a skipped offset, a position the log no longer
/// reaches) into `ledger`.
pub fn spawn_tail(
    bootstrap: &str,
    ledger: &Ledger,
    topic: &str,
    partitions: &[u32],
    route: Route,
) -> RunningTail {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let tail = Tail {
        router: Router::new(bootstrap),
        ledger: ledger.clone(),
        topic: topic.to_string(),
        positions: partitions.iter().map(|p| (*p, 0i64)).collect(),
        route,
        stats: TailStats::default(),
        seen: seen.clone(),
    };
    let handle = tokio::spawn(tail.run(stop.clone()));
    RunningTail { stop, seen, handle }
}

struct Tail {
    router: Router,
    ledger: Ledger,
    topic: String,
    /// Next offset to read, per partition.
    positions: BTreeMap<u32, i64>,
    route: Route,
    stats: TailStats,
    seen: Arc<AtomicU64>,
}

impl Tail {
    async fn run(mut self, stop: Arc<AtomicBool>) -> TailStats {
        let partitions: Vec<u32> = self.positions.keys().copied().collect();
        while !stop.load(Ordering::SeqCst) {
            for &p in &partitions {
                if let Err(why) = self.poll(p).await {
                    *self.stats.errors.entry(why).or_default() += 1;
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
            }
        }
        self.stats
    }

    /// One fetch of one partition; Err names what went wrong (for the
    /// figures) when nothing could be read.
    async fn poll(&mut self, partition: u32) -> Result<(), String> {
        let topic = self.topic.clone();
        let pos = self.positions.get(&partition).copied().unwrap_or(0);
        let addr = fetch_target(&mut self.router, &self.route, &topic, partition)
            .await
            .map_err(|_| "no leader in metadata".to_string())?;
        self.stats.fetches += 1;
        let resp = match fetch(&mut self.router, &addr, &topic, partition, pos).await {
            Ok(r) => r,
            Err(e) => {
                self.router.invalidate(&topic, partition);
                return Err(e.split(':').next().unwrap_or_default().to_string());
            }
        };
        let Some(answer) = resp.partitions.into_iter().find(|p| p.topic == topic && p.partition == partition)
        else {
            return Err("answer without the partition".into());
        };
        let error = answer.error.clone().unwrap_or_default();
        if error.code == ErrorCode::OffsetOutOfRange as i32 {
            if pos < answer.log_start_offset && pos == 0 {
                self.positions.insert(partition, answer.log_start_offset);
                return Ok(());
            }
            // Every offset below `pos` was below some leader's HW when it
            // was read, so a leader whose log ends before it lost records.
            self.ledger.record_poll_anomaly(format!(
                "p{partition}: position {pos} out of range at {addr} (log start {}, HW {}): records already read are gone",
                answer.log_start_offset, answer.high_watermark
            ));
            self.positions.insert(partition, answer.high_watermark.max(0));
            return Err("OFFSET_OUT_OF_RANGE".into());
        }
        if error.code != ErrorCode::None as i32 {
            self.router.hint(&topic, partition, &error);
            return Err(code_name(error.code));
        }
        let mut next = pos;
        let mut observed = Vec::new();
        let batches = whole_batches(&answer.records).map_err(|e| {
            self.ledger
                .record_poll_anomaly(format!("p{partition}: undecodable answer from {addr} at {pos}: {e}"));
            "undecodable answer".to_string()
        })?;
        for (h, whole) in batches {
            if h.next_offset() <= next {
                continue;
            }
            let records = batch::records(&whole).map_err(|e| format!("undecodable batch: {e}"))?;
            for r in records {
                let r = r.map_err(|e| format!("undecodable record: {e}"))?;
                if r.offset < next {
                    continue;
                }
                if r.offset != next {
                    self.ledger.record_poll_anomaly(format!(
                        "p{partition}: {addr} served offset {} when {next} was next (skipped or repeated)",
                        r.offset
                    ));
                }
                if r.offset >= answer.high_watermark {
                    self.ledger.record_poll_anomaly(format!(
                        "p{partition}: {addr} served offset {} at or above its HW {}",
                        r.offset, answer.high_watermark
                    ));
                }
                observed.push(Observed {
                    partition,
                    offset: r.offset,
                    id: r.value.as_deref().and_then(id_of),
                    via: addr.clone(),
                });
                next = r.offset + 1;
            }
        }
        self.stats.records += observed.len() as u64;
        self.seen.fetch_add(observed.len() as u64, Ordering::SeqCst);
        self.ledger.record_observed(observed);
        self.positions.insert(partition, next);
        Ok(())
    }
}

/// Error codes of one fetch at `offset`, for tests that only want to know
/// whether a broker serves a partition (NONE) or what it says instead.
pub async fn fetch_error(
    addr: &str,
    topic: &str,
    partition: u32,
    offset: i64,
) -> Result<PartitionError, String> {
    let mut router = Router::new(addr);
    let resp = fetch(&mut router, addr, topic, partition, offset).await?;
    resp.partitions
        .into_iter()
        .find(|p| p.topic == topic && p.partition == partition)
        .map(|p| p.error.unwrap_or_default())
        .ok_or_else(|| "answer without the partition".to_string())
}

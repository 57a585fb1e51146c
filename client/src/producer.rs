//! The producer: buffers records into per-partition batches and sends them
//! in the background, so `send` costs about as much as encoding the record.
//!
//! `send` picks the partition ([`crate::partitioner`]), reserves buffer
//! memory (waiting when the buffer is full: that is the backpressure) and
//! appends the record to its partition's open batch (`accumulator`).
//! Batches close when full or after `linger`; the `sender` tasks send them
//! and settle every record's [`DeliveryFuture`] from the broker's answer.
//!
//! The producer is idempotent unless told otherwise
//! ([`ProducerConfig::enable_idempotence`]): a retry after a lost answer
//! does not store a record twice.
//!
//! In a cluster, each partition's batches go to its leader, found in the
//! client's metadata cache (`cluster`); when leadership moves, batches are
//! retried at the new leader with the same bytes and sequence numbers, so a
//! failover costs latency, not errors or duplicates, within
//! [`ProducerConfig::delivery_timeout`].

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::RwLock;
use tokio::sync::{Notify, TryAcquireError};
use tributary_proto::batch::Compression;
use tributary_proto::v1;

use crate::accumulator::{
    Accounting, Appended, BatchDone, BatchLimits, DeliveryFuture, NewRecord, PartitionState, TopicMeta,
    TopicState,
};
use crate::cluster::Cluster;
use crate::dispatch::Dispatcher;
use crate::error::{Error, Result};
use crate::idempotence::{self, SequenceState};
use crate::partitioner::{self, StickyPartition};
use crate::sender;

/// How many replicas must have a record before the broker acknowledges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Acks {
    /// Don't wait for the broker at all (0 on the wire).
    None,
    /// The leader appended it (1).
    Leader,
    /// Every in-sync replica has it (-1).
    #[default]
    All,
}

impl Acks {
    /// The value of `ProduceRequest.acks`.
    pub fn wire(self) -> i32 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

impl FromStr for Acks {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "none" => Ok(Acks::None),
            "1" | "leader" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            other => Err(format!("invalid acks '{other}': use 0, 1 or all")),
        }
    }
}

impl std::fmt::Display for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        })
    }
}

/// Producer settings; `Default` gives a throughput-friendly setup against a
/// local broker.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Brokers to start from, `HOST:PORT,HOST:PORT,...` (`http://`
    /// optional): any one that answers will do; the rest of the cluster is
    /// learned from it.
    pub bootstrap: String,
    pub acks: Acks,
    /// How long a batch may wait for more records before it is sent.
    pub linger: Duration,
    /// A batch closes when the next record would take it past this many
    /// (uncompressed) bytes. A larger record gets a batch of its own.
    pub batch_size: usize,
    pub compression: Compression,
    /// Bytes of records buffered (not yet acknowledged) before `send` waits.
    pub buffer_memory: usize,
    /// Most times a request failing with a retriable error (the leader
    /// moved or is being elected, too few in-sync replicas, a broker that
    /// cannot be reached, a timeout) is resent; `delivery_timeout` bounds
    /// the time as well. Default: no limit but the delivery timeout.
    pub retries: u32,
    /// Pause before the first retry; it doubles per retry, up to 1 s (or
    /// this, if longer).
    pub retry_backoff: Duration,
    /// How long one Produce request may take before it counts as failed
    /// (and, if retries are left, is resent).
    pub request_timeout: Duration,
    /// How long a record may take from `send` until it is acknowledged,
    /// retries included; past it, it fails with the last error. Leaves room
    /// for a leader failover (seconds) several times over.
    pub delivery_timeout: Duration,
    /// Most batches of one partition sent in one request. Each partition has
    /// one request in flight at a time: the broker handles concurrent
    /// requests in parallel, so several in flight could be stored out of
    /// order; the batches that queue meanwhile travel together instead.
    pub max_in_flight: usize,
    /// Record send→ack latency of every record (see [`Producer::latency`]).
    pub record_latency: bool,
    /// Idempotent producer (default on): the producer gets an id from the
    /// broker at connect and numbers each partition's records, so a batch
    /// retried after a lost answer is stored once, not twice, and keeps its
    /// place in the partition. Batches per request are then capped at 5
    /// (what the broker remembers per producer and partition). A batch the
    /// broker calls out of sequence, or fenced by a newer epoch, fails
    /// without a retry. Has no effect with `acks = 0`, where nothing is
    /// retried. Turn it off only for a broker without `InitProducerId`.
    pub enable_idempotence: bool,
    /// Tracking producer (the audit, issue 10): stamps every record with
    /// the headers `timestamp`, `service` and `host`, never puts records of
    /// two windows in one batch, and reports how many records it sent per
    /// topic and window (by record timestamp) every window and on
    /// `flush`/`close`. `None`: off.
    pub tracking: Option<crate::audit::TrackingConfig>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            bootstrap: "127.0.0.1:7070".to_string(),
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_size: 256 << 10,
            compression: Compression::None,
            buffer_memory: 64 << 20,
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(100),
            request_timeout: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(120),
            max_in_flight: 5,
            record_latency: false,
            enable_idempotence: true,
            tracking: None,
        }
    }
}

/// One record to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    /// Explicit partition; otherwise chosen by key, or sticky without one.
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    /// `None` is a tombstone on compacted topics.
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// ms since the epoch; now when not set.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), Some(value.into())));
        self
    }

    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }

    /// Buffer memory the record is charged: its bytes plus a little for the
    /// varints around them.
    fn footprint(&self) -> usize {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + len(v) + 4).sum();
        24 + len(&self.key) + len(&self.value) + headers
    }
}

/// Send→ack latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// From a histogram of microseconds (as [`Producer::latency_histogram`]
    /// returns).
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Outcome counts of every record this producer finished with, for callers
/// that don't await each [`DeliveryFuture`] (benchmarks, fire-and-forget).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub acknowledged: u64,
    pub failed: u64,
    pub first_error: Option<Error>,
}

/// A producer. Cheap to clone; clones share the buffers and connections.
#[derive(Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

/// Stops the background work when the last `Producer` clone goes away:
/// buffered records are still sent, but nothing new is accepted.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// Connections the producer keeps per broker; its requests are spread over
/// them.
const CONNECTIONS: usize = 2;
/// Headers converted for the batch encoder on the stack, without a `Vec`.
const INLINE_HEADERS: usize = 8;

/// What [`Shared::try_send`] managed.
enum Attempt {
    Done(Result<DeliveryFuture>),
    /// Needs metadata or buffer memory first: the record comes back.
    MustWait(ProducerRecord),
}

/// The producer's state, shared by `send`, the linger timer and the senders.
pub(crate) struct Shared {
    pub config: ProducerConfig,
    pub limits: BatchLimits,
    /// Brokers, leaders and the connections to them.
    pub cluster: Arc<Cluster>,
    /// Produce requests per leader.
    pub dispatcher: Arc<Dispatcher>,
    topics: RwLock<HashMap<String, Arc<TopicState>>>,
    /// Every partition ever used, for the linger timer and `flush`.
    pub partitions: RwLock<Vec<Arc<PartitionState>>>,
    /// One metadata request at a time.
    metadata_lock: tokio::sync::Mutex<()>,
    pub linger_wake: Notify,
    /// The linger timer has a deadline (so a new batch needn't wake it).
    pub armed: AtomicBool,
    /// A `send` is waiting for buffer memory.
    pub exhausted: AtomicBool,
    pub closed: AtomicBool,
    pub acct: Arc<Accounting>,
    runtime: tokio::runtime::Handle,
    /// Producer id and epoch from the broker; `None` without idempotence.
    identity: Option<(i64, i16)>,
    /// The audit counter of a tracking producer.
    tracker: Option<Arc<crate::audit::Tracker>>,
}

impl Shared {
    pub fn spawn_sender(self: &Arc<Self>, part: &Arc<PartitionState>) {
        self.runtime.spawn(sender::run_partition(self.clone(), part.clone()));
    }

    /// Whether batches carry producer id and sequence numbers.
    pub fn idempotent(&self) -> bool {
        self.identity.is_some()
    }

    /// A new producer id, for a partition that used up its epochs.
    pub async fn new_producer_id(&self) -> Result<(i64, i16)> {
        idempotence::init_producer_id(&self.cluster, self.config.request_timeout).await
    }

    fn stop(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.linger_wake.notify_one();
    }

    async fn topic(&self, name: &str) -> Result<Arc<TopicState>> {
        if let Some(t) = self.topics.read().get(name) {
            if !t.meta.stale.load(Ordering::Relaxed) {
                return Ok(t.clone());
            }
        }
        self.refresh(name, false).await
    }

    /// Asks the broker for the topic's partitions. The partitions already
    /// known keep their state (open batches, queues); new ones are added.
    async fn refresh(&self, name: &str, force: bool) -> Result<Arc<TopicState>> {
        let _one_at_a_time = self.metadata_lock.lock().await;
        if !force {
            // Someone else may have refreshed while we waited.
            if let Some(t) = self.topics.read().get(name) {
                if !t.meta.stale.load(Ordering::Relaxed) {
                    return Ok(t.clone());
                }
            }
        }
        self.cluster.refresh_now().await?;
        let Some(count) = self.cluster.partition_count(name) else {
            return Err(Error::status(tonic::Code::NotFound, format!("unknown topic '{name}'")));
        };
        if count == 0 {
            return Err(Error::status(tonic::Code::NotFound, format!("topic '{name}' has no partitions")));
        }
        let mut topics = self.topics.write();
        let old = topics.get(name).cloned();
        let meta = match &old {
            Some(o) => o.meta.clone(),
            None => Arc::new(TopicMeta {
                name: Arc::from(name),
                sticky: StickyPartition::new(),
                count: AtomicU32::new(count),
                stale: AtomicBool::new(false),
            }),
        };
        meta.count.store(count, Ordering::Relaxed);
        meta.stale.store(false, Ordering::Relaxed);
        let mut partitions: Vec<Arc<PartitionState>> = old.map(|o| o.partitions.clone()).unwrap_or_default();
        partitions.truncate(count as usize);
        let mut registry = self.partitions.write();
        for p in partitions.len() as u32..count {
            let sequence = SequenceState::start(self.identity);
            let part = Arc::new(PartitionState::new(meta.clone(), p, sequence));
            registry.push(part.clone());
            partitions.push(part);
        }
        let state = Arc::new(TopicState { meta, partitions });
        topics.insert(name.to_string(), state.clone());
        Ok(state)
    }

    /// The topic's max.message.bytes, when the broker tells.
    pub async fn max_message_bytes(&self, topic: &str) -> Option<usize> {
        let timeout = self.config.request_timeout;
        let described = self
            .cluster
            .call_any(|c| async move {
                let request = v1::DescribeTopicsRequest { names: vec![topic.to_string()] };
                c.call("a describe-topics request", timeout, c.admin().describe_topics(request)).await
            })
            .await
            .ok()?;
        let t = described.topics.into_iter().find(|t| t.name == topic)?;
        t.effective_configs.get("max.message.bytes")?.parse().ok()
    }

    /// Takes `bytes` of buffer memory, waiting while the buffer is full.
    async fn reserve(&self, bytes: usize) -> Result<()> {
        let too_big = || {
            Error::InvalidArgument(format!(
                "a record of {bytes} bytes does not fit in the producer's buffer_memory ({} bytes)",
                self.config.buffer_memory
            ))
        };
        if bytes > self.config.buffer_memory {
            return Err(too_big());
        }
        let permits = u32::try_from(bytes).map_err(|_| too_big())?;
        match self.acct.memory.try_acquire_many(permits) {
            Ok(p) => p.forget(),
            Err(TryAcquireError::Closed) => return Err(Error::Closed),
            Err(TryAcquireError::NoPermits) => {
                // Batches still lingering hold memory nobody is sending:
                // have the timer send those of idle partitions now.
                self.exhausted.store(true, Ordering::SeqCst);
                self.linger_wake.notify_one();
                self.acct.memory.acquire_many(permits).await.map_err(|_| Error::Closed)?.forget();
            }
        }
        Ok(())
    }

    /// `send` without waiting: when the topic is known and buffer memory is
    /// free, the record is appended at once; otherwise it is handed back for
    /// [`Shared::send_slow`].
    fn try_send(self: &Arc<Self>, record: ProducerRecord, sent_at: Option<u64>) -> Attempt {
        if self.closed.load(Ordering::Acquire) {
            return Attempt::Done(Err(Error::Closed));
        }
        let topics = self.topics.read();
        let Some(topic) = topics.get(record.topic.as_str()) else { return Attempt::MustWait(record) };
        if topic.meta.stale.load(Ordering::Relaxed) || record.partition.is_some_and(|p| p >= topic.count()) {
            return Attempt::MustWait(record);
        }
        match self.append(topic, &record, 0, sent_at) {
            Some(done) => Attempt::Done(done),
            None => {
                drop(topics);
                Attempt::MustWait(record)
            }
        }
    }

    /// `send` when it may have to wait: for the topic's metadata, or for
    /// buffer memory.
    async fn send_slow(
        self: &Arc<Self>,
        record: ProducerRecord,
        sent_at: Option<u64>,
    ) -> Result<DeliveryFuture> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut topic = self.topic(&record.topic).await?;
        if let Some(p) = record.partition {
            if p >= topic.count() {
                // Maybe the topic grew since we last looked.
                topic = self.refresh(&record.topic, true).await?;
                if p >= topic.count() {
                    return Err(Error::InvalidArgument(format!(
                        "partition {p} does not exist: topic '{}' has {} partitions (0..{})",
                        record.topic,
                        topic.count(),
                        topic.count()
                    )));
                }
            }
        }
        let footprint = record.footprint();
        loop {
            self.reserve(footprint).await?;
            // With the memory reserved, `None` cannot happen; if it somehow
            // did, the memory was given back and waiting again is right.
            if let Some(done) = self.append(&topic, &record, footprint, sent_at) {
                return done;
            }
        }
    }

    /// Appends a record to its partition's open batch; starts the sender or
    /// wakes the linger timer as needed. `reserved` is the buffer memory
    /// already taken for it; `None` means more is needed (none was kept).
    fn append(
        self: &Arc<Self>,
        topic: &TopicState,
        record: &ProducerRecord,
        reserved: usize,
        sent_at: Option<u64>,
    ) -> Option<Result<DeliveryFuture>> {
        let footprint = record.footprint();
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let mut inline: [(&str, Option<&[u8]>); INLINE_HEADERS] = [("", None); INLINE_HEADERS];
        let spilled: Vec<(&str, Option<&[u8]>)>;
        let headers: &[(&str, Option<&[u8]>)] = if record.headers.len() <= INLINE_HEADERS {
            for (slot, (k, v)) in inline.iter_mut().zip(&record.headers) {
                *slot = (k.as_str(), v.as_deref());
            }
            &inline[..record.headers.len()]
        } else {
            spilled = record.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            &spilled
        };
        let mut switch_if_full = record.partition.is_none() && record.key.is_none();
        loop {
            let p = partitioner::choose(
                record.partition,
                record.key.as_deref(),
                &topic.meta.sticky,
                topic.count(),
            );
            let Some(part) = topic.partitions.get(p as usize) else {
                self.acct.memory.add_permits(reserved);
                return Some(Err(Error::InvalidArgument(format!(
                    "partition {p} does not exist in topic '{}'",
                    record.topic
                ))));
            };
            let new = NewRecord {
                timestamp,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
                headers,
                footprint,
                reserved,
                sent_at,
                switch_if_full,
            };
            match part.append(&self.limits, &self.acct, new) {
                Appended::Switch { start_sender } => {
                    if start_sender {
                        self.spawn_sender(part);
                    }
                    switch_if_full = false;
                }
                Appended::NeedMemory { start_sender } => {
                    if start_sender {
                        self.spawn_sender(part);
                    }
                    self.acct.memory.add_permits(reserved);
                    return None;
                }
                Appended::Done { future, start_sender, opened } => {
                    if start_sender {
                        self.spawn_sender(part);
                    }
                    if opened && !self.limits.linger.is_zero() && !self.armed.load(Ordering::SeqCst) {
                        self.linger_wake.notify_one();
                    }
                    return Some(Ok(future));
                }
            }
        }
    }
}

/// A tracking producer's stamp: the timestamp fixed now (the count and
/// the record must agree on the window) and the audit headers. Returns
/// the timestamp.
fn stamp(record: &mut ProducerRecord, t: &crate::audit::Tracker) -> i64 {
    let timestamp = *record.timestamp.get_or_insert_with(now_ms);
    let (service, host) = t.header_values();
    record.headers.reserve(3);
    record.headers.push((crate::audit::TIMESTAMP_HEADER.into(), Some(Bytes::from(timestamp.to_string()))));
    record.headers.push((crate::audit::SERVICE_HEADER.into(), Some(service.clone())));
    record.headers.push((crate::audit::HOST_HEADER.into(), Some(host.clone())));
    timestamp
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Producer {
    /// Connects to the first broker of the bootstrap list that answers and
    /// starts the background tasks. Must be called within a tokio runtime,
    /// which runs them.
    pub async fn connect(config: ProducerConfig) -> Result<Producer> {
        if config.batch_size == 0 {
            return Err(Error::InvalidArgument("batch_size must be at least 1 byte".into()));
        }
        if config.buffer_memory == 0 {
            return Err(Error::InvalidArgument("buffer_memory must be at least 1 byte".into()));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidArgument("Producer::connect must be called within a tokio runtime".into())
        })?;
        let cluster = Arc::new(Cluster::connect(&config.bootstrap, CONNECTIONS).await?);
        let identity = if config.enable_idempotence && config.acks != Acks::None {
            Some(idempotence::init_producer_id(&cluster, config.request_timeout).await?)
        } else {
            None
        };
        let dispatcher = Arc::new(Dispatcher::new(
            cluster.clone(),
            config.acks.wire(),
            config.request_timeout,
            CONNECTIONS,
        ));
        let tracker = config
            .tracking
            .clone()
            .map(|t| crate::audit::Tracker::start(cluster.clone(), crate::audit::PRODUCER_TIER, t));
        let shared = Arc::new(Shared {
            tracker,
            limits: BatchLimits {
                batch_size: config.batch_size,
                compression: config.compression,
                linger: config.linger,
                window_ms: config.tracking.as_ref().map_or(0, |t| t.window_ms()),
            },
            acct: Arc::new(Accounting::new(config.buffer_memory, config.record_latency)),
            config,
            cluster,
            dispatcher,
            topics: RwLock::new(HashMap::new()),
            partitions: RwLock::new(Vec::new()),
            metadata_lock: tokio::sync::Mutex::new(()),
            linger_wake: Notify::new(),
            armed: AtomicBool::new(false),
            exhausted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            runtime,
            identity,
        });
        shared.runtime.spawn(sender::linger_loop(shared.clone()));
        Ok(Producer { handle: Arc::new(Handle { shared }) })
    }

    /// Buffers the record, waiting while the buffer is full (backpressure),
    /// and returns a future that resolves when the broker acknowledged it
    /// (with its offset) or it finally failed. Errors here mean the record
    /// was not buffered at all (unknown topic or partition, producer closed).
    pub async fn send(&self, mut record: ProducerRecord) -> Result<DeliveryFuture> {
        let shared = &self.handle.shared;
        let sent_at = shared.acct.latency.as_ref().map(|_| shared.acct.micros_now());
        let tracked = shared.tracker.as_ref().map(|t| {
            let timestamp = stamp(&mut record, t);
            (t, record.topic.clone(), timestamp)
        });
        let sent = match shared.try_send(record, sent_at) {
            Attempt::Done(done) => done,
            // Boxed so the common path's future stays small: this one holds
            // metadata RPCs and semaphore waits, and would otherwise be
            // moved around with every record.
            Attempt::MustWait(record) => Box::pin(shared.send_slow(record, sent_at)).await,
        };
        if let (Ok(_), Some((t, topic, timestamp))) = (&sent, tracked) {
            t.count(&topic, timestamp);
        }
        sent
    }

    /// Sends everything buffered now, without waiting for linger, and waits
    /// until each of those records was acknowledged or failed (their
    /// outcomes are in their `DeliveryFuture`s and [`Producer::delivery_report`]).
    pub async fn flush(&self) -> Result<()> {
        let shared = &self.handle.shared;
        let parts = shared.partitions.read().clone();
        let mut waits = Vec::new();
        for p in &parts {
            let (start, batches) = p.close_for_flush();
            if start {
                shared.spawn_sender(p);
            }
            waits.extend(batches);
        }
        for w in waits {
            BatchDone(w).await;
        }
        if let Some(t) = &shared.tracker {
            t.report().await?;
        }
        Ok(())
    }

    /// Stops accepting records, flushes, and stops the background tasks.
    /// Affects every clone of this producer.
    pub async fn close(self) -> Result<()> {
        let shared = self.handle.shared.clone();
        shared.closed.store(true, Ordering::SeqCst);
        let flushed = self.flush().await;
        shared.stop();
        flushed
    }

    /// Send→ack latency percentiles of every acknowledged record so far;
    /// `None` unless `record_latency` is set.
    pub fn latency(&self) -> Option<LatencySummary> {
        let h = self.handle.shared.acct.latency.as_ref()?;
        Some(LatencySummary::from_micros(&h.lock()))
    }

    /// The raw send→ack latency histogram in microseconds (to merge several
    /// producers'); `None` unless `record_latency` is set.
    pub fn latency_histogram(&self) -> Option<Histogram<u64>> {
        Some(self.handle.shared.acct.latency.as_ref()?.lock().clone())
    }

    /// How many records were acknowledged and failed so far, and the first
    /// error.
    pub fn delivery_report(&self) -> DeliveryReport {
        let acct = &self.handle.shared.acct;
        DeliveryReport {
            acknowledged: acct.acknowledged.load(Ordering::Relaxed),
            failed: acct.failed.load(Ordering::Relaxed),
            first_error: acct.first_error.get().cloned(),
        }
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("config", &self.handle.shared.config).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_builder_sets_every_field() {
        let r = ProducerRecord::new("t", "v")
            .key("k")
            .header("h1", "a")
            .header("h2", Bytes::from_static(b"b"))
            .partition(3)
            .timestamp(42);
        assert_eq!(r.topic, "t");
        assert_eq!(r.value.as_deref(), Some(&b"v"[..]));
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.partition, Some(3));
        assert_eq!(r.timestamp, Some(42));
        assert_eq!(
            r.headers,
            vec![
                ("h1".to_string(), Some(Bytes::from_static(b"a"))),
                ("h2".to_string(), Some(Bytes::from_static(b"b")))
            ]
        );
        let plain = ProducerRecord::new(String::from("x"), vec![1u8, 2]);
        assert_eq!(plain.partition, None);
        assert_eq!(plain.key, None);
        assert!(plain.headers.is_empty());
        assert_eq!(plain.timestamp, None);
    }

    #[test]
    fn acks_parse() {
        assert_eq!("0".parse::<Acks>(), Ok(Acks::None));
        assert_eq!("1".parse::<Acks>(), Ok(Acks::Leader));
        assert_eq!("all".parse::<Acks>(), Ok(Acks::All));
        assert_eq!("ALL".parse::<Acks>(), Ok(Acks::All));
        assert_eq!("-1".parse::<Acks>(), Ok(Acks::All));
        assert!("2".parse::<Acks>().is_err());
        assert!("".parse::<Acks>().is_err());
        assert_eq!(Acks::None.wire(), 0);
        assert_eq!(Acks::Leader.wire(), 1);
        assert_eq!(Acks::All.wire(), -1);
        assert_eq!(Acks::default(), Acks::All);
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = ProducerConfig::default();
        assert_eq!(c.bootstrap, "127.0.0.1:7070");
        assert_eq!(c.acks, Acks::All);
        assert_eq!(c.linger, Duration::from_millis(5));
        assert_eq!(c.batch_size, 256 * 1024);
        assert_eq!(c.buffer_memory, 64 * 1024 * 1024);
        assert_eq!(c.retries, u32::MAX);
        assert_eq!(c.delivery_timeout, Duration::from_secs(120));
        assert_eq!(c.max_in_flight, 5);
        assert!(c.enable_idempotence);
    }
}

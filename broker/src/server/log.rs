//! The `Log` service: produce, fetch, list offsets, metadata. Each handler
//! resolves and validates the whole request first, then drives the
//! partitions; bad input fails the call before anything is stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::select_all;
use tonic::{Request, Response, Status};
use tributary_proto::batch::{self, Batches};
use tributary_proto::offset_spec;
use tributary_proto::v1::{self, log_server::Log};

use crate::config::TopicConfig;
use crate::error::Error;
use crate::log::FlushTicket;
use crate::metrics::TopicLabels;
use crate::partition::Partition;
use crate::replication::Replica;
use crate::topics::is_internal;
use crate::{now_ms, BrokerState};

/// Longest a fetch may long-poll.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub struct LogService {
    state: Arc<BrokerState>,
}

impl LogService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        LogService { state }
    }

    fn finish<T>(
        &self,
        rpc: &'static str,
        start: Instant,
        r: Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        super::respond(&self.state, rpc, start, r)
    }
}

/// Checks every batch of one partition's produce data; returns the record
/// count. Nothing is written until every partition of the request passed.
fn validate_produce(topic: &str, partition: u32, data: &[u8], config: &TopicConfig) -> Result<i64, Error> {
    let corrupt = |source| Error::CorruptBatch { topic: topic.to_string(), partition, source };
    if data.is_empty() {
        return Err(Error::InvalidRequest(format!("no records for {topic}-{partition}")));
    }
    let mut records = 0i64;
    for b in Batches::new(data) {
        let (_, bytes) = b.map_err(corrupt)?;
        if bytes.len() as i64 > config.max_message_bytes {
            return Err(Error::RecordTooLarge {
                topic: topic.to_string(),
                partition,
                size: bytes.len(),
                max: config.max_message_bytes,
            });
        }
        let header = batch::verify(bytes).map_err(corrupt)?;
        if header.last_offset_delta != header.record_count - 1 {
            return Err(corrupt(batch::BatchError::Invalid(
                "a produced batch must have last_offset_delta = record_count - 1",
            )));
        }
        if config.cleanup_policy.compact {
            // Compaction needs a key on every record; refuse keyless ones now
            // rather than silently keeping them forever.
            let owned = Bytes::copy_from_slice(bytes);
            for r in batch::records(&owned).map_err(corrupt)? {
                if r.map_err(corrupt)?.key.is_none() {
                    return Err(Error::InvalidRequest(format!(
                        "topic '{topic}' is compacted: every record needs a key"
                    )));
                }
            }
        }
        records += i64::from(header.record_count);
    }
    Ok(records)
}

type ProduceWork = Vec<(Arc<Replica>, Arc<TopicConfig>, Bytes)>;

/// Appends every partition's batches (blocking); returns the responses and
/// the fsyncs owed before answering.
fn append_all(
    state: &BrokerState,
    work: ProduceWork,
    acks: i32,
    expect_epoch: Option<i32>,
) -> Result<Appended, Error> {
    let now = now_ms();
    let mut syncs = Vec::new();
    let mut out: Vec<v1::TopicProduceResponse> = Vec::new();
    let mut appended = Vec::new();
    for (replica, config, records) in work {
        let partition = &replica.partition;
        let transition = replica.transition.lock();
        let role = replica.role();
        let epoch_moved = expect_epoch.is_some_and(|e| role != crate::replication::Role::Leader { epoch: e });
        if !matches!(role, crate::replication::Role::Leader { .. }) || epoch_moved {
            drop(transition);
            let error = crate::replication::not_available(format!(
                "{}-{}: leadership moved while the request waited",
                replica.topic, replica.id
            ));
            push_response(&mut out, &partition.topic, refusal(partition.id, error));
            continue;
        }
        let appended_now = partition.append(&records, &config, now);
        if let Ok(info) = &appended_now {
            // Counted under the transition lock: in log order (the audit's
            // checkpoint depends on it).
            let end = info.last_offset + 1;
            let epoch = match role {
                crate::replication::Role::Leader { epoch } => epoch,
                _ => -1,
            };
            state.audit.appended(&partition.topic, partition.id, epoch, &records, end - info.records, end);
        }
        drop(transition);
        let info = match appended_now {
            Ok(info) => info,
            // Sequence problems are the producer's to handle, per
            // partition; the other partitions of the request go on.
            Err(e @ (Error::OutOfOrderSequence { .. } | Error::InvalidProducerEpoch { .. })) => {
                let code = match e {
                    Error::OutOfOrderSequence { .. } => v1::ErrorCode::OutOfOrderSequence,
                    _ => v1::ErrorCode::InvalidProducerEpoch,
                };
                let resp = v1::PartitionProduceResponse {
                    partition: partition.id,
                    base_offset: -1,
                    log_start_offset: -1,
                    error: Some(v1::PartitionError {
                        code: code as i32,
                        message: e.to_string(),
                        ..Default::default()
                    }),
                    batch_base_offsets: Vec::new(),
                };
                push_response(&mut out, &partition.topic, resp);
                continue;
            }
            Err(e) => return Err(e),
        };
        // Wake replica fetches waiting at the log end. (The high watermark
        // moves with follower fetches; alone in the ISR, the log moves it.)
        replica.publish_log_end();
        appended.push((replica.clone(), info.last_offset, config.min_insync_replicas));
        let labels = TopicLabels { topic: partition.topic.clone() };
        state.metrics.bytes_in.get_or_create(&labels).inc_by(records.len() as u64);
        state.metrics.records_in.get_or_create(&labels).inc_by(info.records as u64);
        if let Some(ticket) = info.sync {
            syncs.push(ticket);
        }
        let acked = acks != 0;
        let resp = v1::PartitionProduceResponse {
            partition: partition.id,
            base_offset: if acked { info.base_offset } else { -1 },
            log_start_offset: -1,
            error: None,
            batch_base_offsets: if acked { info.batch_base_offsets } else { Vec::new() },
        };
        push_response(&mut out, &partition.topic, resp);
    }
    Ok((out, syncs, appended))
}

/// Responses, the fsyncs owed, and what was appended where (replica, last
/// offset, min.insync.replicas) for acks=all.
type Appended = (Vec<v1::TopicProduceResponse>, Vec<FlushTicket>, Vec<(Arc<Replica>, i64, i64)>);

fn push_response(out: &mut Vec<v1::TopicProduceResponse>, topic: &str, resp: v1::PartitionProduceResponse) {
    match out.iter_mut().find(|t| t.name == topic) {
        Some(t) => t.partitions.push(resp),
        None => out.push(v1::TopicProduceResponse { name: topic.to_string(), partitions: vec![resp] }),
    }
}

impl LogService {
    pub(crate) async fn produce_inner(&self, req: v1::ProduceRequest) -> Result<v1::ProduceResponse, Error> {
        produce(&self.state, req, None).await
    }
}

/// The produce path (validation, leadership, min.insync.replicas, append,
/// fsync policy, acks=all wait), for the gRPC `Produce` and for brokers'
/// own writers such as mirror tasks. With `expect_epoch`, a partition led
/// in any other leader epoch is answered "not available" without appending:
/// a writer that started under one leadership never appends under the next.
pub async fn produce(
    state: &Arc<BrokerState>,
    req: v1::ProduceRequest,
    expect_epoch: Option<i32>,
) -> Result<v1::ProduceResponse, Error> {
    ProduceCall { state: state.clone() }.run(req, expect_epoch).await
}

struct ProduceCall {
    state: Arc<BrokerState>,
}

impl ProduceCall {
    async fn run(
        &self,
        req: v1::ProduceRequest,
        expect_epoch: Option<i32>,
    ) -> Result<v1::ProduceResponse, Error> {
        if !matches!(req.acks, -1..=1) {
            return Err(Error::InvalidRequest(format!("acks must be 0, 1 or -1 (all), not {}", req.acks)));
        }
        // Phase 1: resolve and validate everything. Partitions this broker
        // does not lead get a per-partition answer saying who does.
        let mut work = Vec::new();
        let mut refused: Vec<(String, v1::PartitionProduceResponse)> = Vec::new();
        let md = self.state.cluster.metadata();
        for t in req.topics {
            if is_internal(&t.name) {
                return Err(Error::InternalTopic(t.name));
            }
            let Some(meta) = md.topic(&t.name) else {
                return Err(Error::UnknownTopic(t.name));
            };
            // The hosted topic's resolved config (kept in line with the
            // quorum's); resolving it per request is for topics not hosted.
            let config = match self.state.topics.get(&t.name) {
                Ok(local) if local.id == meta.id => local.config(),
                _ => Arc::new(crate::config::TopicConfig::resolve(
                    self.state.topics.defaults(),
                    &meta.configs,
                )?),
            };
            for p in t.partitions {
                if p.partition as usize >= meta.partitions.len() {
                    return Err(Error::UnknownPartition {
                        topic: t.name.clone(),
                        partition: p.partition,
                        count: meta.partitions.len() as u32,
                    });
                }
                validate_produce(&t.name, p.partition, &p.records, &config)?;
                let replica =
                    match self.state.replicas.leader_replica(&self.state, &t.name, p.partition, true) {
                        Ok(r) => r,
                        Err(error) => {
                            refused.push((t.name.clone(), refusal(p.partition, error)));
                            continue;
                        }
                    };
                if req.acks == -1 {
                    let isr = replica.leader.lock().as_ref().map_or(0, |l| l.isr.len()) as i64;
                    if isr < config.min_insync_replicas {
                        let error = v1::PartitionError {
                            code: v1::ErrorCode::NotEnoughReplicas as i32,
                            message: format!(
                                "{}-{} has {isr} in-sync replica(s), fewer than min.insync.replicas={}; nothing was appended",
                                t.name, p.partition, config.min_insync_replicas
                            ),
                            ..Default::default()
                        };
                        refused.push((t.name.clone(), refusal(p.partition, error)));
                        continue;
                    }
                }
                work.push((replica, config.clone(), p.records));
            }
        }
        self.state.disk.check()?;
        // Phase 2: append, on a blocking thread: appends write files and a
        // roll fsyncs, which must never stall the async workers.
        let state = self.state.clone();
        let acks = req.acks;
        let appended = tokio::task::spawn_blocking(move || append_all(&state, work, acks, expect_epoch))
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
        let (mut out, syncs, appended) = match appended {
            Ok(done) => done,
            Err(e) => {
                if e.is_disk_full() {
                    self.state.disk.on_full();
                }
                return Err(e);
            }
        };
        // Phase 3: the flush policy's fsyncs, off the async threads, before
        // the producer hears "stored". With acks=0 nobody waits, but the
        // fsyncs still happen (and a failure still takes the log offline).
        if !syncs.is_empty() {
            let sync = tokio::task::spawn_blocking(move || -> Result<(), Error> {
                for ticket in syncs {
                    ticket.sync()?;
                }
                Ok(())
            });
            if acks != 0 {
                sync.await.map_err(|e| Error::Storage(e.to_string()))??;
            }
        }
        // Phase 4, acks=all: wait until the in-sync replicas have it.
        if acks == -1 {
            let timeout = if req.timeout_ms == 0 {
                Duration::from_millis(self.state.config.replication_timeout_ms)
            } else {
                Duration::from_millis(u64::from(req.timeout_ms))
                    .min(Duration::from_millis(self.state.config.replication_timeout_ms))
            };
            let waits = appended.iter().map(|(r, last, min_isr)| {
                crate::replication::leader::wait_replicated(
                    r,
                    &self.state,
                    *last,
                    (*min_isr).max(1) as usize,
                    timeout,
                )
            });
            let outcomes = futures::future::join_all(waits).await;
            for ((r, _, _), outcome) in appended.iter().zip(outcomes) {
                let Some(error) = outcome else { continue };
                if let Some(resp) = out
                    .iter_mut()
                    .filter(|t| t.name == r.topic)
                    .flat_map(|t| t.partitions.iter_mut())
                    .find(|p| p.partition == r.id)
                {
                    resp.error = Some(error);
                    resp.base_offset = -1;
                    resp.batch_base_offsets.clear();
                }
            }
        }
        for (topic, resp) in refused {
            push_response(&mut out, &topic, resp);
        }
        Ok(v1::ProduceResponse { topics: out })
    }
}

impl LogService {
    /// Each fetched partition: its replica when this broker leads it (in
    /// the epoch the fetch names, if it names one), else the error to
    /// answer for it. Unknown topics and partitions fail the call.
    fn resolve_fetch(&self, req: &v1::FetchRequest) -> Result<Vec<(Target, v1::FetchPartition)>, Error> {
        let md = self.state.cluster.metadata();
        let mut out = Vec::with_capacity(req.partitions.len());
        for p in &req.partitions {
            let internal = is_internal(&p.topic) && md.topic(&p.topic).is_none();
            if internal {
                // Local internal topics (__consumer_offsets) are read here.
                let partition = self.state.topics.partition(&p.topic, p.partition)?;
                out.push((Target::Local(partition), p.clone()));
                continue;
            }
            let Some(meta) = md.topic(&p.topic) else { return Err(Error::UnknownTopic(p.topic.clone())) };
            if p.partition as usize >= meta.partitions.len() {
                return Err(Error::UnknownPartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    count: meta.partitions.len() as u32,
                });
            }
            let target = match self.state.replicas.leader_replica(&self.state, &p.topic, p.partition, false) {
                Ok(r) => match r.role() {
                    crate::replication::Role::Leader { epoch }
                        if p.current_leader_epoch >= 0 && p.current_leader_epoch != epoch =>
                    {
                        let code = if p.current_leader_epoch < epoch {
                            v1::ErrorCode::FencedLeaderEpoch
                        } else {
                            v1::ErrorCode::UnknownLeaderEpoch
                        };
                        Target::Refused(v1::PartitionError {
                            code: code as i32,
                            message: format!(
                                "leader epoch is {epoch}, the fetch said {}",
                                p.current_leader_epoch
                            ),
                            leader_id: self.state.cluster.node_id(),
                            leader_epoch: epoch,
                            ..Default::default()
                        })
                    }
                    _ => Target::Local(r.partition.clone()),
                },
                Err(e) => Target::Refused(e),
            };
            out.push((target, p.clone()));
        }
        Ok(out)
    }

    /// A follower's fetch: served by the replication layer, waiting on the
    /// leader's log end rather than the high watermark.
    async fn replica_fetch(&self, req: v1::FetchRequest) -> Result<v1::FetchResponse, Error> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(u64::from(req.max_wait_ms)).min(MAX_WAIT);
        let cap = self.state.config.fetch_max_bytes.max(1) as usize;
        let max_total = if req.max_bytes == 0 { cap } else { (req.max_bytes as usize).min(cap) };
        let req = Arc::new(req);
        loop {
            let mut watchers: Vec<_> = req
                .partitions
                .iter()
                .filter_map(|p| self.state.replicas.replica(&p.topic, p.partition))
                .map(|r| r.log_end.subscribe())
                .collect();
            let (state, r) = (self.state.clone(), req.clone());
            let (out, total, high_watermark_moved) = tokio::task::spawn_blocking(move || {
                let mut total = 0usize;
                let mut moved = false;
                let mut out = Vec::with_capacity(r.partitions.len());
                for want in &r.partitions {
                    let before = state
                        .replicas
                        .replica(&want.topic, want.partition)
                        .map(|x| x.partition.high_watermark());
                    let asked = if want.max_bytes == 0 { 1 << 20 } else { want.max_bytes as usize };
                    let budget = max_total.saturating_sub(total).min(asked);
                    let resp = crate::replication::leader::serve_replica_fetch(
                        &state.replicas,
                        &state,
                        r.replica_id,
                        want,
                        budget,
                    );
                    // A follower must hear about a high watermark its own
                    // fetch moved, without waiting for new data.
                    moved |=
                        before.is_some_and(|b| resp.high_watermark > b && want.offset >= resp.high_watermark);
                    total += resp.records.len();
                    out.push(resp);
                }
                (out, total, moved)
            })
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
            let now = tokio::time::Instant::now();
            if total >= req.min_bytes as usize
                || now >= deadline
                || high_watermark_moved
                || out.iter().any(|r| r.error.is_some())
                || watchers.is_empty()
            {
                return Ok(v1::FetchResponse { partitions: out });
            }
            let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    pub(crate) async fn fetch_inner(&self, req: v1::FetchRequest) -> Result<v1::FetchResponse, Error> {
        if req.is_replica {
            return self.replica_fetch(req).await;
        }
        let resolved = self.resolve_fetch(&req)?;
        let mut refused = Vec::new();
        let mut targets = Vec::new();
        for (t, want) in resolved {
            match t {
                Target::Local(p) => targets.push((p, want)),
                Target::Refused(e) => refused.push(v1::FetchPartitionResponse {
                    topic: want.topic.clone(),
                    partition: want.partition,
                    high_watermark: -1,
                    log_start_offset: -1,
                    error: Some(e),
                    leader_epoch: -1,
                    ..Default::default()
                }),
            }
        }
        if !refused.is_empty() {
            // Answer at once: the client must go to the leader.
            for (p, want) in &targets {
                refused.push(read_one(p, want, 0, false));
            }
            return Ok(v1::FetchResponse { partitions: refused });
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(u64::from(req.max_wait_ms)).min(MAX_WAIT);
        // Never more than the broker's cap, whatever the client asks: the
        // response is built in memory.
        let cap = self.state.config.fetch_max_bytes.max(1) as usize;
        let max_total = if req.max_bytes == 0 { cap } else { (req.max_bytes as usize).min(cap) };
        let targets: Arc<Vec<_>> = Arc::new(targets);
        loop {
            // Subscribe before reading so an append in between still wakes us.
            let mut watchers: Vec<_> = targets.iter().map(|(p, _)| p.subscribe()).collect();
            let reads = targets.clone();
            // File reads on a blocking thread, like every other file access.
            let (out, total) = tokio::task::spawn_blocking(move || {
                let mut total = 0usize;
                let mut out = Vec::with_capacity(reads.len());
                for (partition, want) in reads.iter() {
                    let asked = if want.max_bytes == 0 { 1 << 20 } else { want.max_bytes as usize };
                    let budget = max_total.saturating_sub(total).min(asked);
                    out.push(read_one(partition, want, budget, total == 0));
                    total += out.last().map_or(0, |r: &v1::FetchPartitionResponse| r.records.len());
                }
                (out, total)
            })
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
            let now = tokio::time::Instant::now();
            if total >= req.min_bytes as usize || now >= deadline || out.iter().any(|r| r.error.is_some()) {
                for r in &out {
                    let labels = TopicLabels { topic: r.topic.clone() };
                    self.state.metrics.bytes_out.get_or_create(&labels).inc_by(r.records.len() as u64);
                    let n: u64 = Batches::new(&r.records)
                        .filter_map(|b| b.ok())
                        .map(|(h, _)| h.record_count as u64)
                        .sum();
                    self.state.metrics.records_out.get_or_create(&labels).inc_by(n);
                }
                return Ok(v1::FetchResponse { partitions: out });
            }
            let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn metadata_inner(&self, req: v1::MetadataRequest) -> Result<v1::MetadataResponse, Error> {
        let md = self.state.cluster.metadata();
        let node = self.state.config.node_id;
        let mut topics = Vec::new();
        let names: Vec<String> = if req.topics.is_empty() {
            let mut all: Vec<String> = md.topics.keys().cloned().collect();
            all.extend(
                self.state
                    .topics
                    .list()
                    .iter()
                    .filter(|t| is_internal(&t.name) && !md.topics.contains_key(&t.name))
                    .map(|t| t.name.clone()),
            );
            all
        } else {
            req.topics.clone()
        };
        for name in names {
            if let Some(t) = md.topic(&name) {
                topics.push(v1::TopicMetadata {
                    name: name.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .enumerate()
                        .map(|(i, p)| v1::PartitionMetadata {
                            partition: i as u32,
                            leader: p.leader,
                            leader_epoch: p.leader_epoch,
                            replicas: p.replicas.clone(),
                            isr: p.isr.clone(),
                        })
                        .collect(),
                });
            } else if is_internal(&name) {
                // Local internal topics: this broker holds them alone.
                let t = self.state.topics.get(&name)?;
                topics.push(v1::TopicMetadata {
                    name: name.clone(),
                    partitions: (0..t.partition_count())
                        .map(|p| v1::PartitionMetadata {
                            partition: p,
                            leader: node,
                            leader_epoch: 0,
                            replicas: vec![node],
                            isr: vec![node],
                        })
                        .collect(),
                });
            } else {
                return Err(Error::UnknownTopic(name));
            }
        }
        Ok(v1::MetadataResponse {
            brokers: md
                .live_brokers()
                .map(|b| v1::BrokerInfo { node_id: b.id, address: b.address.clone(), rack: b.rack.clone() })
                .collect(),
            controller_id: self.state.cluster.controller_id().unwrap_or(-1),
            topics,
            cluster_id: md.cluster_id.clone(),
            cluster_name: self.state.cluster.setup.cluster_name.clone(),
        })
    }
}

/// A fetched partition, resolved.
enum Target {
    Local(Arc<Partition>),
    Refused(v1::PartitionError),
}

fn refusal(partition: u32, error: v1::PartitionError) -> v1::PartitionProduceResponse {
    v1::PartitionProduceResponse {
        partition,
        base_offset: -1,
        log_start_offset: -1,
        error: Some(error),
        batch_base_offsets: Vec::new(),
    }
}

impl LogService {
    /// Producer ids come from the controller's block (forwarded there).
    pub(crate) async fn init_producer_id_inner(&self) -> Result<v1::InitProducerIdResponse, Error> {
        let node = &self.state.cluster;
        let Some(channel) = node.controller_channel()? else {
            let producer_id = self.state.producer_ids.allocate(node).await?;
            return Ok(v1::InitProducerIdResponse { producer_id, producer_epoch: 0 });
        };
        let controller = node.controller_id().unwrap_or(-1);
        let mut client = v1::log_client::LogClient::new(channel);
        let mut req = Request::new(v1::InitProducerIdRequest {});
        req.set_timeout(Duration::from_secs(5));
        Ok(client
            .init_producer_id(req)
            .await
            .map_err(|s| {
                Error::Unavailable(format!("the controller (broker {controller}): {}", s.message()))
            })?
            .into_inner())
    }
}

/// One partition's part of a fetch; out-of-range offsets become a
/// per-partition error so the other partitions still get their data.
fn read_one(
    partition: &Partition,
    want: &v1::FetchPartition,
    budget: usize,
    first: bool,
) -> v1::FetchPartitionResponse {
    let mut resp = v1::FetchPartitionResponse {
        topic: want.topic.clone(),
        partition: want.partition,
        high_watermark: -1,
        log_start_offset: -1,
        records: Bytes::new(),
        error: None,
        leader_epoch: -1,
    };
    // Only the first partition may exceed the budget (by one batch).
    if budget == 0 && !first {
        return resp;
    }
    match partition.read(want.offset, budget.max(1)) {
        Ok(r) => {
            resp.high_watermark = r.high_watermark;
            resp.log_start_offset = r.log_start_offset;
            resp.records = r.records;
        }
        Err(e) => {
            if let Error::OffsetOutOfRange { start, end, .. } = e {
                resp.log_start_offset = start;
                resp.high_watermark = end;
            }
            resp.error = Some(read_failure(&e));
        }
    }
    resp
}

/// A failed read as a fetch answers it: OFFSET_OUT_OF_RANGE, or a storage
/// error (consumer and replica fetches alike).
pub(crate) fn read_failure(e: &Error) -> v1::PartitionError {
    let code = match e {
        Error::OffsetOutOfRange { .. } => v1::ErrorCode::OffsetOutOfRange,
        _ => v1::ErrorCode::StorageError,
    };
    v1::PartitionError { code: code as i32, message: e.to_string(), ..Default::default() }
}

/// ListOffsets (blocking: a time lookup reads segment files).
pub(crate) fn list_offsets_blocking(
    state: &BrokerState,
    req: v1::ListOffsetsRequest,
) -> Result<v1::ListOffsetsResponse, Error> {
    let mut out = Vec::new();
    for p in &req.partitions {
        let local_internal = is_internal(&p.topic) && state.cluster.metadata().topic(&p.topic).is_none();
        let partition = if local_internal {
            state.topics.partition(&p.topic, p.partition)?
        } else {
            let md = state.cluster.metadata();
            let Some(meta) = md.topic(&p.topic) else { return Err(Error::UnknownTopic(p.topic.clone())) };
            if p.partition as usize >= meta.partitions.len() {
                return Err(Error::UnknownPartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    count: meta.partitions.len() as u32,
                });
            }
            match state.replicas.leader_replica(state, &p.topic, p.partition, false) {
                Ok(r) => r.partition.clone(),
                Err(error) => {
                    out.push(v1::ListOffsetsPartitionResponse {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        offset: -1,
                        timestamp: -1,
                        error: Some(error),
                    });
                    continue;
                }
            }
        };
        let found = partition.with_log(|log| -> Result<(i64, i64), Error> {
            Ok(match p.timestamp {
                offset_spec::EARLIEST => (log.log_start_offset(), -1),
                offset_spec::LATEST => (log.high_watermark(), -1),
                ts if ts < 0 => {
                    return Err(Error::InvalidRequest(format!(
                        "timestamp {ts} is neither -2 (earliest), -1 (latest) nor a time in ms"
                    )))
                }
                ts => log.offset_for_time(ts)?.unwrap_or((-1, -1)),
            })
        })?;
        out.push(v1::ListOffsetsPartitionResponse {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: found.0,
            timestamp: found.1,
            error: None,
        });
    }
    Ok(v1::ListOffsetsResponse { partitions: out })
}

#[tonic::async_trait]
impl Log for LogService {
    #[tracing::instrument(name = "produce", skip_all)]
    async fn produce(
        &self,
        request: Request<v1::ProduceRequest>,
    ) -> Result<Response<v1::ProduceResponse>, Status> {
        let start = Instant::now();
        let r = self.produce_inner(request.into_inner()).await;
        self.finish("produce", start, r)
    }

    #[tracing::instrument(name = "fetch", skip_all)]
    async fn fetch(&self, request: Request<v1::FetchRequest>) -> Result<Response<v1::FetchResponse>, Status> {
        let start = Instant::now();
        let r = self.fetch_inner(request.into_inner()).await;
        self.finish("fetch", start, r)
    }

    #[tracing::instrument(name = "list_offsets", skip_all)]
    async fn list_offsets(
        &self,
        request: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let start = Instant::now();
        let state = self.state.clone();
        let req = request.into_inner();
        let r = tokio::task::spawn_blocking(move || list_offsets_blocking(&state, req))
            .await
            .unwrap_or_else(|e| Err(Error::Storage(e.to_string())));
        self.finish("list_offsets", start, r)
    }

    #[tracing::instrument(name = "metadata", skip_all)]
    async fn metadata(
        &self,
        request: Request<v1::MetadataRequest>,
    ) -> Result<Response<v1::MetadataResponse>, Status> {
        let start = Instant::now();
        let r = self.metadata_inner(request.into_inner());
        self.finish("metadata", start, r)
    }

    #[tracing::instrument(name = "init_producer_id", skip_all)]
    async fn init_producer_id(
        &self,
        _request: Request<v1::InitProducerIdRequest>,
    ) -> Result<Response<v1::InitProducerIdResponse>, Status> {
        let start = Instant::now();
        let r = self.init_producer_id_inner().await;
        self.finish("init_producer_id", start, r)
    }
}

//! The schema registry embedded in every broker: Confluent's Schema
//! Registry REST API on the broker's HTTP port ([`api`]), Avro schemas
//! ([`avro`]), state replayed from the internal topic `__schemas`
//! ([`store`]).
//!
//! ## Where the state lives
//! `__schemas` has one partition (so every change has one order), is
//! compacted, and is replicated like `__consumer_offsets` (replication
//! factor min(3, brokers), created by the controller the first time a
//! write needs it). Every broker that hosts a replica replays it up to
//! its high watermark into memory ([`run`]) and answers reads from that
//! (a follower first fetches from the leader what it has not seen committed
//! yet: [`sync_with_leader`]);
//! a restart replays it again before the broker is ready. A broker without
//! a replica (a cluster larger than the replication factor) reads it from
//! the leader over the `Log` service, as a consumer would.
//!
//! ## Who writes
//! Only the leader of `__schemas`, one write at a time ([`commit`]):
//! before deciding anything it waits until everything in its log is
//! committed (high watermark = log end) and applied, so it knows every id
//! given so far; the next id is the largest seen + 1. The records are
//! appended, fsynced, and acknowledged once the in-sync replicas have them;
//! the state changes only when the replay reads them back, so a write the
//! log lost (leadership moved before it committed) never shows. The
//! leader announces its HTTP address in `__schemas`; another broker
//! forwards writes there ([`crate::forward`]) and answers once its own replay
//! has caught up to the write, so a client reads its writes wherever it
//! asks next.

pub mod api;
pub mod avro;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::watch;
use tributary_proto::batch::{self, BatchBuilder, Batches, Compression};

use crate::confluent_error::{ConfluentError, Result};
use crate::partition::Partition;
use crate::shutdown::Shutdown;
use crate::BrokerState;
use store::{LeaderValue, RecordBytes, State, WriteOp};

pub const SCHEMAS_TOPIC: &str = "__schemas";
/// Response header of a write: the leader's `__schemas` offset after it.
pub const OFFSET_HEADER: &str = "x-tributary-registry-offset";
/// How long a write waits for the in-sync replicas, and for a leader.
const WRITE_WAIT: Duration = Duration::from_secs(10);
const READ_BYTES: usize = 1 << 20;

pub struct Registry {
    state: RwLock<State>,
    /// The next offset to replay, for callers waiting for a write.
    applied: watch::Sender<i64>,
    /// One write at a time on the leader.
    writes: tokio::sync::Mutex<()>,
    /// The replica being replayed; another one (the topic was re-created,
    /// or the replica moved away and back) replays from the start.
    partition: Mutex<Option<Arc<Partition>>>,
    /// Without a replica: the channel to the leader replayed from.
    remote: Mutex<Option<(String, tonic::transport::Channel)>>,
    /// Where other brokers reach this one's HTTP port.
    pub http_address: String,
}

impl Registry {
    pub fn new(http_address: String) -> Registry {
        Registry {
            state: RwLock::new(State::default()),
            applied: watch::channel(0).0,
            writes: tokio::sync::Mutex::new(()),
            partition: Mutex::new(None),
            remote: Mutex::new(None),
            http_address,
        }
    }

    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read())
    }

    /// The next `__schemas` offset this broker will replay.
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Waits until this broker's replay has passed `offset`.
    pub async fn wait_applied(&self, offset: i64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|a| *a >= offset)).await.is_ok_and(|r| r.is_ok())
    }

    /// Replays `p` up to its high watermark. Blocking (reads the log).
    fn catch_up(&self, p: &Arc<Partition>) -> Result<(), String> {
        {
            let mut current = self.partition.lock();
            if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, p)) {
                if current.is_some() {
                    *self.state.write() = State::default();
                }
                *current = Some(p.clone());
            }
        }
        let mut at = self.state.read().next_offset;
        loop {
            let hw = p.high_watermark();
            if at >= hw {
                return Ok(());
            }
            let read = match p.read(at, READ_BYTES) {
                Ok(r) => r,
                Err(crate::error::Error::OffsetOutOfRange { start, .. }) if at < start => {
                    at = start;
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            if read.records.is_empty() {
                return Ok(());
            }
            let next = self.apply_batches(&read.records, at, hw)?;
            if next <= at {
                return Ok(());
            }
            at = next;
        }
    }

    /// Applies the records of `batches` from offset `at` below `hw`; the
    /// next offset to replay.
    fn apply_batches(&self, batches: &Bytes, mut at: i64, hw: i64) -> Result<i64, String> {
        let mut state = self.state.write();
        // Two replays may read the same range (the follow loop and a
        // write); what the other already applied is not applied again, so
        // the state never goes back to an older record.
        let floor = state.next_offset;
        let mut pos = 0;
        for b in Batches::new(batches) {
            let (h, slice) = b.map_err(|e| format!("unreadable batch at {at}: {e}"))?;
            let bytes: Bytes = batches.slice(pos..pos + slice.len());
            pos += slice.len();
            let records = batch::records(&bytes).map_err(|e| format!("unreadable batch at {at}: {e}"))?;
            for r in records {
                match r {
                    Ok(r) if r.offset >= at.max(floor) && r.offset < hw => {
                        let Some(key) = r.key.as_deref() else { continue };
                        if let Err(why) = state.apply(key, r.value.as_deref()) {
                            tracing::warn!(offset = r.offset, %why, "skipping a record of {SCHEMAS_TOPIC}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(offset = h.base_offset, error = %e, "skipping an unreadable record of {SCHEMAS_TOPIC}")
                    }
                }
            }
            at = at.max(h.next_offset().min(hw));
        }
        state.next_offset = state.next_offset.max(at);
        let applied = state.next_offset;
        drop(state);
        self.applied.send_replace(applied);
        Ok(applied)
    }
}

/// Before a read on a broker that does not lead `__schemas`: applies what
/// the leader has committed and this broker has not yet (a follower learns
/// the high watermark one fetch late), so a read anywhere sees every write
/// acknowledged before it. If the leader does not answer quickly, the read
/// is served from what this broker has.
pub async fn sync_with_leader(state: &Arc<BrokerState>) {
    if leader(state).is_none_or(|(l, _)| l == state.config.node_id) {
        return;
    }
    match tokio::time::timeout(Duration::from_secs(2), catch_up_remote(state)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "reading {SCHEMAS_TOPIC} from its leader before a read"),
        Err(_) => {
            tracing::debug!("the leader of {SCHEMAS_TOPIC} did not answer within 2 s; reading local state")
        }
    }
}

/// Reads `__schemas` from its leader, as a consumer does, up to the
/// leader's high watermark: how a broker without a replica (a cluster
/// larger than the replication factor) follows it, and how a follower
/// catches up before a read.
async fn catch_up_remote(state: &Arc<BrokerState>) -> Result<(), String> {
    use tributary_proto::v1;
    let Some((leader, _)) = leader(state) else { return Ok(()) };
    let addr = state.cluster.peer_address(leader).ok_or_else(|| format!("no address for broker {leader}"))?;
    let channel = {
        let mut remote = state.registry.remote.lock();
        match remote.as_ref() {
            Some((a, c)) if *a == addr => c.clone(),
            _ => {
                let c = crate::cluster::network::peer_channel(&addr)
                    .ok_or_else(|| format!("bad address {addr}"))?;
                *remote = Some((addr.clone(), c.clone()));
                c
            }
        }
    };
    let mut client = v1::log_client::LogClient::new(channel).max_decoding_message_size(64 << 20);
    loop {
        let at = state.registry.applied();
        let req = v1::FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: READ_BYTES as u32,
            partitions: vec![v1::FetchPartition {
                topic: SCHEMAS_TOPIC.to_string(),
                partition: 0,
                offset: at,
                max_bytes: READ_BYTES as u32,
                current_leader_epoch: -1,
                durable_end: 0,
            }],
            replica_id: -1,
            is_replica: false,
        };
        let resp =
            client.fetch(req).await.map_err(|e| format!("fetching from broker {leader}: {}", e.message()))?;
        let Some(p) = resp.into_inner().partitions.into_iter().next() else { return Ok(()) };
        if let Some(e) = p.error.filter(|e| e.code != 0) {
            if at < p.log_start_offset {
                // Compacted or deleted below: go on from the log start.
                state.registry.state.write().next_offset = p.log_start_offset;
                continue;
            }
            return Err(format!("fetching from broker {leader}: {}", e.message));
        }
        if p.records.is_empty() || state.registry.apply_batches(&p.records, at, p.high_watermark)? <= at {
            return Ok(());
        }
    }
}

/// This broker's replica of `__schemas`, if it hosts one.
pub fn local_partition(state: &BrokerState) -> Option<Arc<Partition>> {
    state.topics.partition(SCHEMAS_TOPIC, 0).ok()
}

/// The leader of `__schemas` and its epoch, per the metadata.
pub fn leader(state: &BrokerState) -> Option<(i32, i32)> {
    state
        .cluster
        .metadata()
        .partition(SCHEMAS_TOPIC, 0)
        .map(|p| (p.leader, p.leader_epoch))
        .filter(|(l, _)| *l >= 0)
}

/// Replays this broker's replica of `__schemas`, if any, to its high
/// watermark (at start, before the broker says it is ready).
pub async fn catch_up_now(state: &Arc<BrokerState>) -> Result<()> {
    let Some(p) = local_partition(state) else { return Ok(()) };
    let s = state.clone();
    tokio::task::spawn_blocking(move || s.registry.catch_up(&p))
        .await
        .map_err(|e| ConfluentError::store(&e.to_string()))?
        .map_err(|e| ConfluentError::store(&e))
}

/// Follows `__schemas`: replays what commits, and when this broker leads
/// it, announces this broker's HTTP address there.
pub async fn run(state: Arc<BrokerState>, mut shutdown: Shutdown) {
    let mut metadata = state.cluster.subscribe();
    loop {
        let part = local_partition(&state);
        let mut hw = part.as_ref().map(|p| p.subscribe());
        if let Some(rx) = hw.as_mut() {
            rx.borrow_and_update();
        }
        if part.is_some() {
            if let Err(e) = catch_up_now(&state).await {
                tracing::warn!(error = %e, "replaying {SCHEMAS_TOPIC}");
            }
            announce(&state).await;
        } else if let Err(e) = catch_up_remote(&state).await {
            tracing::debug!(error = %e, "reading {SCHEMAS_TOPIC} from its leader");
        }
        // Without a replica nothing wakes the loop when records commit: poll.
        let tick = if part.is_some() { Duration::from_secs(1) } else { Duration::from_millis(200) };
        let hw_moved = async {
            match hw.as_mut() {
                Some(rx) => {
                    let _ = rx.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = metadata.changed() => {}
            _ = hw_moved => {}
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// As the leader of `__schemas`, writes where this broker takes writes
/// (once per leader epoch).
async fn announce(state: &Arc<BrokerState>) {
    let Some((node, epoch)) = leader(state) else { return };
    if node != state.config.node_id {
        return;
    }
    let me = LeaderValue { node_id: node, epoch, http: state.registry.http_address.clone() };
    if state.registry.read(|s| s.leader.as_ref() == Some(&me)) {
        return;
    }
    if let Err(e) = commit(state, WriteOp::Announce(me)).await {
        tracing::debug!(error = %e, "announcing the {SCHEMAS_TOPIC} leader (retried)");
    }
}

/// Where a write goes from this broker.
pub enum Route {
    Here,
    /// The leader's HTTP address.
    Forward(String),
}

/// Whether this broker takes writes, or which broker does. Creates
/// `__schemas` if it does not exist yet, and waits (briefly) for a leader
/// to be elected and announced.
pub async fn route(state: &Arc<BrokerState>) -> Result<Route> {
    crate::server::admin::ensure_schemas_topic(state)
        .await
        .map_err(|e| ConfluentError::forwarding(&format!("creating {SCHEMAS_TOPIC}: {e}")))?;
    let deadline = tokio::time::Instant::now() + WRITE_WAIT;
    loop {
        if let Some((node, epoch)) = leader(state) {
            if node == state.config.node_id {
                return Ok(Route::Here);
            }
            let announced = state.registry.read(|s| s.leader.clone());
            if let Some(l) = announced.filter(|l| l.node_id == node && l.epoch == epoch) {
                return Ok(Route::Forward(l.http));
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ConfluentError::forwarding(&format!(
                "no leader of {SCHEMAS_TOPIC} has announced itself yet; retry"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `cond` holds for `p`, waking when its high watermark moves.
async fn wait_for(p: &Partition, cond: impl Fn(&Partition) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WRITE_WAIT;
    let mut rx = p.subscribe();
    loop {
        rx.borrow_and_update();
        if cond(p) {
            return true;
        }
        // A poll as well: the watch may not fire for every change.
        let tick = tokio::time::sleep(Duration::from_millis(5));
        if tokio::time::timeout_at(deadline, async {
            tokio::select! {
                _ = rx.changed() => {}
                _ = tick => {}
            }
        })
        .await
        .is_err()
        {
            return cond(p);
        }
    }
}

/// Carries out a change on the leader of `__schemas`: plans it against the
/// complete state, appends its records, and returns the answer and the
/// offset after them once they are committed and applied. Called only by
/// [`api`]'s one entry point for changes, and for the leader's announce.
pub async fn commit(state: &Arc<BrokerState>, op: WriteOp) -> Result<(Value, i64)> {
    let registry = &state.registry;
    let _one_at_a_time = registry.writes.lock().await;
    let not_leader = || ConfluentError::forwarding("this broker no longer leads __schemas; retry");
    if leader(state).map(|(l, _)| l) != Some(state.config.node_id) {
        return Err(not_leader());
    }
    let (Ok(topic), Some(p)) = (state.topics.get(SCHEMAS_TOPIC), local_partition(state)) else {
        return Err(not_leader());
    };
    // Everything earlier leaders wrote is committed, and applied here.
    if !wait_for(&p, |p| p.high_watermark() >= p.log_end_offset()).await {
        return Err(ConfluentError::timeout("the in-sync replicas of __schemas did not catch up"));
    }
    catch_up_now(state).await?;
    if registry.applied() < p.log_end_offset() {
        return Err(ConfluentError::store("__schemas could not be replayed to its end"));
    }
    let plan = registry.read(|s| s.plan(&op))?;
    if plan.records.is_empty() {
        return Ok((plan.answer, registry.applied()));
    }
    let end = append(topic, p.clone(), plan.records).await?;
    if !wait_for(&p, |p| p.high_watermark() >= end).await {
        return Err(ConfluentError::timeout("the in-sync replicas of __schemas did not confirm the write"));
    }
    catch_up_now(state).await?;
    Ok((plan.answer, end))
}

/// Appends `records` as one batch and fsyncs it; the offset after it.
async fn append(
    topic: Arc<crate::topics::Topic>,
    p: Arc<Partition>,
    records: Vec<RecordBytes>,
) -> Result<i64> {
    tokio::task::spawn_blocking(move || {
        let now = crate::now_ms();
        let mut b = BatchBuilder::new(Compression::None, now);
        for (k, v) in &records {
            b.append(now, Some(k), v.as_deref(), &[]);
        }
        let info = p.append(&b.build(), &topic.config(), now).map_err(|e| e.to_string())?;
        if let Some(ticket) = info.sync {
            ticket.sync().map_err(|e| e.to_string())?;
        }
        Ok::<i64, String>(info.last_offset + 1)
    })
    .await
    .map_err(|e| ConfluentError::store(&e.to_string()))?
    .map_err(|e| ConfluentError::store(&format!("appending to {SCHEMAS_TOPIC}: {e}")))
}

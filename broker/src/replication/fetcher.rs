//! A follower's fetch loop: one task per leader broker, fetching every
//! partition this broker follows on it in one request.
//!
//! Before a partition's first fetch in an epoch the follower reconciles its
//! log with the leader's (KIP-101/279): it asks where its latest epoch ends
//! on the leader and truncates to the smaller of that and its own end of
//! that epoch, repeating until both agree — so a follower never keeps
//! records a deposed leader wrote and the new leader does not have, even
//! after several leader changes in a row. Then it appends exactly the bytes
//! the leader stored, fsyncs them when the topic's flush policy asks (and
//! reports its fsynced end in the next fetch), and keeps its high watermark
//! at the leader's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::transport::Channel;
use tributary_proto::v1;
use tributary_proto::v1::cluster_client::ClusterClient;
use tributary_proto::v1::log_client::LogClient;

use super::{Replica, ReplicaManager, Role};
use crate::error::{Error, Result};
use crate::BrokerState;

/// How long a replica fetch waits at the leader for new data.
const FETCH_WAIT_MS: u32 = 500;
/// Pause after a failed round (leader unreachable, epoch not known yet).
const BACKOFF: Duration = Duration::from_millis(200);

struct Followed {
    replica: Arc<Replica>,
    epoch: i32,
    reconciled: bool,
}

pub struct Fetcher {
    leader: i32,
    parts: Mutex<BTreeMap<(String, u32), Followed>>,
    wake: Notify,
}

fn channel(address: &str) -> Option<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20));
    Some(endpoint.connect_lazy())
}

impl Fetcher {
    pub fn spawn(manager: Arc<ReplicaManager>, state: Arc<BrokerState>, leader: i32) -> Arc<Fetcher> {
        let f = Arc::new(Fetcher { leader, parts: Mutex::new(BTreeMap::new()), wake: Notify::new() });
        let this = f.clone();
        tokio::spawn(async move { this.run(manager, state).await });
        f
    }

    pub fn add(&self, replica: Arc<Replica>, epoch: i32) {
        let key = (replica.topic.clone(), replica.id);
        self.parts.lock().insert(key, Followed { replica, epoch, reconciled: false });
        self.wake.notify_one();
    }

    pub fn remove(&self, topic: &str, partition: u32) {
        self.parts.lock().remove(&(topic.to_string(), partition));
    }

    async fn run(self: Arc<Self>, manager: Arc<ReplicaManager>, state: Arc<BrokerState>) {
        let mut shutdown = state.shutdown.clone();
        let mut conn: Option<(String, Channel)> = None;
        loop {
            if shutdown.is_triggered() {
                return;
            }
            if self.parts.lock().is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait() => return,
                }
                continue;
            }
            let Some(address) = manager.node.peer_address(self.leader) else {
                tokio::time::sleep(BACKOFF).await;
                continue;
            };
            if conn.as_ref().is_none_or(|(a, _)| *a != address) {
                conn = channel(&address).map(|c| (address.clone(), c));
            }
            let Some((_, ch)) = conn.clone() else {
                tokio::time::sleep(BACKOFF).await;
                continue;
            };
            let ok = match self.round(&manager, &state, ch).await {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::debug!(leader = self.leader, error = %e, "replica fetch");
                    false
                }
            };
            if !ok {
                tokio::select! {
                    _ = tokio::time::sleep(BACKOFF) => {}
                    _ = shutdown.wait() => return,
                }
            }
        }
    }

    /// Reconciles what needs it, then one fetch. Ok(false): back off.
    async fn round(&self, manager: &ReplicaManager, state: &Arc<BrokerState>, ch: Channel) -> Result<bool> {
        let pending: Vec<(Arc<Replica>, i32)> = self
            .parts
            .lock()
            .values()
            .filter(|f| !f.reconciled)
            .map(|f| (f.replica.clone(), f.epoch))
            .collect();
        for (replica, epoch) in pending {
            match reconcile(&replica, epoch, ClusterClient::new(ch.clone()), manager.node.node_id()).await {
                Ok(()) => {
                    if let Some(f) = self.parts.lock().get_mut(&(replica.topic.clone(), replica.id)) {
                        if f.epoch == epoch {
                            f.reconciled = true;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(topic = %replica.topic, partition = replica.id, error = %e, "reconciling with the leader");
                    return Ok(false);
                }
            }
        }
        let asked: Vec<(Arc<Replica>, i32)> = self
            .parts
            .lock()
            .values()
            .filter(|f| f.reconciled)
            .map(|f| (f.replica.clone(), f.epoch))
            .collect();
        if asked.is_empty() {
            return Ok(false);
        }
        let request = v1::FetchRequest {
            max_wait_ms: FETCH_WAIT_MS,
            min_bytes: 1,
            max_bytes: state.config.fetch_max_bytes,
            partitions: asked
                .iter()
                .map(|(r, epoch)| v1::FetchPartition {
                    topic: r.topic.clone(),
                    partition: r.id,
                    offset: r.partition.log_end_offset(),
                    max_bytes: 8 << 20,
                    current_leader_epoch: *epoch,
                    durable_end: r.partition.durable_end(),
                })
                .collect(),
            replica_id: manager.node.node_id(),
            is_replica: true,
        };
        let mut client = LogClient::new(ch).max_decoding_message_size(256 << 20);
        let mut req = tonic::Request::new(request);
        req.set_timeout(Duration::from_millis(u64::from(FETCH_WAIT_MS) + 5000));
        let response =
            client.fetch(req).await.map_err(|s| Error::Unavailable(s.message().to_string()))?.into_inner();
        let mut all_ok = true;
        for p in response.partitions {
            let Some((r, epoch)) = asked.iter().find(|(r, _)| r.topic == p.topic && r.id == p.partition)
            else {
                continue;
            };
            if p.error.is_none() && p.high_watermark >= 0 {
                manager.note_start_target(&p.topic, p.partition, p.high_watermark);
            }
            if let Some(e) = &p.error {
                all_ok = false;
                tracing::debug!(topic = %p.topic, partition = p.partition, code = e.code, message = %e.message, "replica fetch refused");
                continue;
            }
            let expected = Role::Follower { leader: self.leader, epoch: *epoch };
            if r.role() != expected {
                continue;
            }
            let st = state.clone();
            let rr = r.clone();
            tokio::task::spawn_blocking(move || apply_fetched(&st, &rr, &p, &expected))
                .await
                .map_err(|e| Error::Storage(e.to_string()))??;
        }
        Ok(all_ok)
    }
}

/// Appends what the leader sent (same bytes, same offsets), fsyncs when the
/// flush policy asks, and follows the leader's high watermark.
fn apply_fetched(
    state: &BrokerState,
    r: &Replica,
    p: &v1::FetchPartitionResponse,
    expected: &Role,
) -> Result<()> {
    let _transition = r.transition.lock();
    if r.role() != *expected {
        // The role changed while the fetch was out: drop its answer.
        return Ok(());
    }
    if !p.records.is_empty() {
        let topic = state.topics.get(&r.topic)?;
        let config = topic.config();
        let info = r.partition.append_replicated(&p.records, &config, crate::now_ms())?;
        if let Some(ticket) = info.sync {
            ticket.sync()?;
        }
        r.publish_log_end();
    }
    if p.high_watermark >= 0 {
        r.partition.set_replica_bound(Some(p.high_watermark));
    }
    Ok(())
}

/// Truncates `replica` to where its log agrees with the leader's.
async fn reconcile(
    replica: &Arc<Replica>,
    epoch: i32,
    mut client: ClusterClient<Channel>,
    me: i32,
) -> Result<()> {
    for _ in 0..64 {
        let latest = replica.partition.latest_epoch();
        if latest < 0 {
            return Ok(());
        }
        let request = v1::OffsetForLeaderEpochRequest {
            replica_id: me,
            partitions: vec![v1::EpochQuery {
                topic: replica.topic.clone(),
                partition: replica.id,
                current_leader_epoch: epoch,
                leader_epoch: latest,
            }],
        };
        let mut req = tonic::Request::new(request);
        req.set_timeout(Duration::from_secs(5));
        let answer = client
            .offset_for_leader_epoch(req)
            .await
            .map_err(|s| Error::Unavailable(s.message().to_string()))?
            .into_inner();
        let Some(a) = answer.partitions.into_iter().next() else {
            return Err(Error::Unavailable("empty epoch answer".into()));
        };
        if let Some(e) = a.error.filter(|e| e.code != 0) {
            return Err(Error::Unavailable(e.message));
        }
        let p = replica.partition.clone();
        let (leader_epoch, leader_end) = (a.leader_epoch, a.end_offset);
        let done = tokio::task::spawn_blocking(move || -> Result<bool> {
            let own_end = p.log_end_offset();
            let target = if leader_epoch < 0 {
                // The leader has nothing as old as our oldest epoch.
                p.log_start_offset()
            } else if leader_epoch == latest {
                leader_end
            } else {
                let (_, own_epoch_end) = p.end_offset_for_epoch(leader_epoch)?;
                leader_end.min(own_epoch_end.max(p.log_start_offset()))
            };
            if target >= own_end {
                return Ok(true);
            }
            tracing::info!(partition = %format!("{}-{}", p.topic, p.id), from = own_end, to = target, leader_epoch, "truncating to the leader's epoch boundary");
            p.truncate_to(target)?;
            Ok(leader_epoch == latest || leader_epoch < 0)
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))??;
        replica.publish_log_end();
        if done {
            return Ok(());
        }
    }
    Err(Error::Storage(format!("{}-{}: epoch reconciliation did not converge", replica.topic, replica.id)))
}

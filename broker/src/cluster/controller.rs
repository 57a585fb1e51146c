//! The controller: what the Raft leader does for the cluster.
//!
//! * Broker sessions: every broker heartbeats the controller; one whose
//!   last heartbeat is older than the session timeout is fenced (a quorum
//!   decision that also elects new leaders for what it led). A broker that
//!   heartbeats again is registered again, which gives leaderless
//!   partitions whose ISR holds it a leader.
//! * A new controller gives every broker a full session from the moment it
//!   took over, so no broker is fenced for heartbeats sent to its
//!   predecessor.
//! * Brokers that are not Raft members yet join as learners.
//!
//! Sessions are kept in memory on the controller only: they are liveness,
//! not state, and are rebuilt by the next controller within one session.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::BasicNode;
use parking_lot::Mutex;
use tributary_proto::v1;

use super::raft_store::NodeId;
use super::state::Command;
use super::ClusterNode;
use crate::shutdown::Shutdown;

pub struct Controller {
    node: Arc<ClusterNode>,
    session_timeout: Duration,
    /// Last heartbeat received per broker.
    sessions: Mutex<HashMap<i32, Instant>>,
    /// The Raft term in which `sessions` was started.
    term: Mutex<Option<u64>>,
    /// Proposals in flight, so a burst of heartbeats proposes once.
    pending: Mutex<HashSet<(i32, &'static str)>>,
}

impl Controller {
    pub fn new(node: Arc<ClusterNode>, session_timeout: Duration) -> Arc<Controller> {
        Arc::new(Controller {
            node,
            session_timeout,
            sessions: Mutex::new(HashMap::new()),
            term: Mutex::new(None),
            pending: Mutex::new(HashSet::new()),
        })
    }

    /// A broker's heartbeat (on any broker; only the controller accepts).
    pub fn heartbeat(self: &Arc<Self>, req: &v1::BrokerHeartbeatRequest) -> v1::BrokerHeartbeatResponse {
        let controller = self.node.controller_id();
        let mut response = v1::BrokerHeartbeatResponse {
            accepted: false,
            controller_id: controller.unwrap_or(-1),
            controller_address: controller.and_then(|c| self.node.peer_address(c)).unwrap_or_default(),
            session_timeout_ms: self.session_timeout.as_millis() as u32,
            metadata_index: 0,
            registered: false,
        };
        if controller != Some(self.node.node_id()) {
            return response;
        }
        self.start_term_if_new();
        let id = req.node_id;
        let md = self.node.metadata();
        if md.removed.get(&id) == Some(&req.incarnation) {
            // Removed from the cluster and still running until its pod
            // goes: no session, no lease, not a learner again.
            self.sessions.lock().remove(&id);
            response.accepted = true;
            response.metadata_index = self.node.applied_index();
            return response;
        }
        self.sessions.lock().insert(id, Instant::now());
        if req.shutting_down {
            if md.brokers.get(&id).is_some_and(|b| !b.fenced) {
                self.propose_once(id, "fence", Command::Fence { id });
            }
        } else {
            let current = md.brokers.get(&id);
            let changed = current.is_none_or(|b| {
                b.fenced
                    || b.address != req.address
                    || b.rack != req.rack
                    || b.incarnation != req.incarnation
                    || b.kafka_address != req.kafka_address
                    || b.http_address != req.http_address
            });
            if changed {
                let cmd = Command::Register {
                    id,
                    address: req.address.clone(),
                    rack: req.rack.clone(),
                    incarnation: req.incarnation,
                    kafka_address: req.kafka_address.clone(),
                    http_address: req.http_address.clone(),
                };
                self.propose_once(id, "register", cmd);
            }
        }
        if !self.node.member_ids().contains(&id) {
            self.add_learner(id, &req.address);
        }
        response.accepted = true;
        // Read before the index: the registration is then in what the
        // broker waits to apply.
        response.registered = md.brokers.get(&id).is_some_and(|b| b.incarnation == req.incarnation);
        response.metadata_index = self.node.applied_index();
        response
    }

    fn start_term_if_new(&self) -> bool {
        let term = self.node.raft_term();
        let mut current = self.term.lock();
        if *current == Some(term) {
            return false;
        }
        *current = Some(term);
        // Everyone gets a whole session from now.
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        sessions.clear();
        for id in self.node.metadata().brokers.keys() {
            sessions.insert(*id, now);
        }
        true
    }

    fn propose_once(self: &Arc<Self>, id: i32, what: &'static str, command: Command) {
        if !self.pending.lock().insert((id, what)) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.node.propose(command).await {
                tracing::warn!(broker = id, what, error = %e, "controller proposal");
            }
            this.pending.lock().remove(&(id, what));
        });
    }

    fn add_learner(self: &Arc<Self>, id: i32, address: &str) {
        if !self.pending.lock().insert((id, "learner")) {
            return;
        }
        let this = self.clone();
        let address = self.node.peer_address(id).unwrap_or_else(|| address.to_string());
        tokio::spawn(async move {
            tracing::info!(broker = id, %address, "adding a broker to the metadata quorum as a learner");
            if let Err(e) = this.node.raft.add_learner(id as NodeId, BasicNode::new(address), false).await {
                tracing::warn!(broker = id, error = %e, "adding a learner");
            }
            this.pending.lock().remove(&(id, "learner"));
        });
    }

    /// Fences brokers whose session expired; forms the cluster id.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            if !self.node.is_controller() {
                *self.term.lock() = None;
                continue;
            }
            if self.start_term_if_new() {
                tracing::info!(term = self.node.raft_term(), "this broker is the controller");
            }
            let md = self.node.metadata();
            if md.cluster_id.is_empty() {
                self.propose_once(-1, "form", Command::Form { cluster_id: new_cluster_id() });
            }
            let expired: Vec<i32> = {
                let sessions = self.sessions.lock();
                md.live_brokers()
                    .filter(|b| sessions.get(&b.id).is_none_or(|t| t.elapsed() > self.session_timeout))
                    .map(|b| b.id)
                    .collect()
            };
            for id in expired {
                tracing::warn!(broker = id, "broker session expired: fencing it");
                self.propose_once(id, "fence", Command::Fence { id });
            }
            for (topic, partition) in md.completable_reassignments() {
                if self.pending.lock().insert((partition as i32, "reassign")) {
                    let this = self.clone();
                    tokio::spawn(async move {
                        tracing::info!(%topic, partition, "reassignment caught up: switching to the new replicas");
                        let cmd = Command::CompleteReassignment { topic: topic.clone(), partition };
                        if let Err(e) = this.node.propose(cmd).await {
                            tracing::warn!(%topic, partition, error = %e, "completing a reassignment");
                        }
                        this.pending.lock().remove(&(partition as i32, "reassign"));
                    });
                }
            }
        }
    }

    /// Whether `id` holds a live session (for cluster describe).
    pub fn alive(&self, id: i32) -> Option<bool> {
        if !self.node.is_controller() {
            return None;
        }
        Some(self.sessions.lock().get(&id).is_some_and(|t| t.elapsed() <= self.session_timeout))
    }
}

/// A random-enough 22-character id (Kafka's cluster ids are base64 UUIDs).
fn new_cluster_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = nanos ^ (u128::from(std::process::id()) << 64);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    (0..22)
        .map(|_| {
            let c = alphabet[(x & 63) as usize] as char;
            x = x.rotate_right(6) ^ (x >> 3).wrapping_mul(31);
            c
        })
        .collect()
}

/// Brokers' client addresses from the metadata, for `Peers`.
pub fn registered_addresses(md: &super::state::MetadataState) -> BTreeMap<i32, String> {
    md.brokers.values().map(|b| (b.id, b.address.clone())).collect()
}

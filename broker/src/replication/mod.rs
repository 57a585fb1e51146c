//! Partition replication (Kafka's ISR design) on top of the metadata quorum.
//!
//! * [`ReplicaManager`] turns the committed metadata into local roles: for
//!   every partition this broker hosts it opens the log, and becomes leader
//!   (stamping the new leader epoch) or follower (truncating to the
//!   leader's epoch boundary, then fetching) as the metadata says.
//! * [`leader`]: a leader's view of its followers — their log ends, when
//!   each last caught up, the high watermark (the minimum over the ISR) and
//!   ISR shrinks and expansions, which it asks the controller for.
//! * [`fetcher`]: a follower's fetch loop, one per leader broker.
//! * [`throttle`]: the byte-rate limit on replicas copying for a
//!   reassignment.
//!
//! Safety rests on three rules: only the metadata makes a broker leader (and
//! then with a new epoch); a leader acknowledges only while its session
//! lease holds; a follower copies only from the leader of its current epoch
//! and truncates to the leader's epoch boundary first. So logs never diverge
//! below the high watermark and an `acks=all` record is on every ISR member.

pub mod fetcher;
pub mod leader;
pub mod throttle;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tributary_proto::v1;

use crate::cluster::state::{MetadataState, PartitionRecord, NO_LEADER};
use crate::cluster::ClusterNode;
use crate::error::{Error, Result};
use crate::groups::offsets::OFFSETS_TOPIC;
use crate::partition::Partition;
use crate::shutdown::Shutdown;
use crate::BrokerState;
use leader::LeaderState;

/// What this broker is for one partition.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    Leader {
        epoch: i32,
    },
    Follower {
        leader: i32,
        epoch: i32,
    },
    /// No leader, or this broker is no longer a replica.
    Offline {
        epoch: i32,
    },
}

/// One hosted partition.
pub struct Replica {
    pub topic: String,
    pub id: u32,
    pub partition: Arc<Partition>,
    pub role: RwLock<Role>,
    /// Held across a role change and across every append (leader or
    /// follower), so no append lands in the log under the wrong role: a
    /// deposed leader's produce or a stale fetch response after the change
    /// would put batches of an old epoch above the new epoch's start.
    pub transition: Mutex<()>,
    /// Set while this broker leads.
    pub leader: Mutex<Option<LeaderState>>,
    /// The log end, for long-polling replica fetches (consumers wait on the
    /// high watermark instead).
    pub log_end: watch::Sender<i64>,
}

impl Replica {
    pub fn role(&self) -> Role {
        self.role.read().clone()
    }

    pub fn publish_log_end(&self) {
        let end = self.partition.log_end_offset();
        self.log_end.send_if_modified(|v| {
            let changed = *v != end;
            *v = end;
            changed
        });
    }
}

pub struct ReplicaManager {
    pub node: Arc<ClusterNode>,
    replicas: RwLock<HashMap<(String, u32), Arc<Replica>>>,
    pub fetchers: Mutex<BTreeMap<i32, Arc<fetcher::Fetcher>>>,
    /// The metadata this broker has applied to its local roles (bumped after
    /// each pass), for admin calls that wait until their change is live.
    applied: watch::Sender<u64>,
    pub lag_time: Duration,
    /// Bytes sent to replicas copying for a reassignment (all partitions).
    pub throttle: throttle::Throttle,
    /// Until the broker is ready after a start: per followed partition, the
    /// leader's high watermark at the first fetch answer. The broker is
    /// ready once every followed partition's log reaches it.
    start_targets: Mutex<Option<HashMap<(String, u32), i64>>>,
}

impl ReplicaManager {
    pub fn new(node: Arc<ClusterNode>, lag_time: Duration) -> Arc<ReplicaManager> {
        let (applied, _) = watch::channel(0);
        Arc::new(ReplicaManager {
            node,
            replicas: RwLock::new(HashMap::new()),
            fetchers: Mutex::new(BTreeMap::new()),
            applied,
            lag_time,
            throttle: throttle::Throttle::default(),
            start_targets: Mutex::new(Some(HashMap::new())),
        })
    }

    pub fn replica(&self, topic: &str, partition: u32) -> Option<Arc<Replica>> {
        self.replicas.read().get(&(topic.to_string(), partition)).cloned()
    }

    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        self.replicas.read().values().cloned().collect()
    }

    /// The replica, if this broker leads it now with a valid lease; else the
    /// per-partition error to answer (NOT_LEADER with the leader hint,
    /// LEADER_NOT_AVAILABLE).
    ///
    /// Writes need the lease; reads do not: what is below a deposed
    /// leader's high watermark was committed, so a leader cut off from the
    /// quorum still serves it (it just cannot acknowledge anything new).
    pub fn leader_replica(
        &self,
        state: &BrokerState,
        topic: &str,
        partition: u32,
        write: bool,
    ) -> std::result::Result<Arc<Replica>, v1::PartitionError> {
        let md = self.node.metadata();
        let hint = md.partition(topic, partition);
        let r = self.replica(topic, partition);
        match (&r, hint) {
            (Some(r), Some(h))
                if h.leader == self.node.node_id()
                    && r.role() == (Role::Leader { epoch: h.leader_epoch }) =>
            {
                if write && !state.session.lease_valid() {
                    return Err(not_available(format!(
                        "broker {} leads {topic}-{partition} but its session with the controller lapsed",
                        self.node.node_id()
                    )));
                }
                Ok(r.clone())
            }
            _ => Err(not_leader(&md, self.node.node_id(), topic, partition, hint)),
        }
    }

    /// Waits until the local roles reflect metadata at least as new as what
    /// this broker has applied now (admin calls use it).
    /// A follower's first fetch answer since the start: where it must get
    /// to before the broker reports ready.
    pub fn note_start_target(&self, topic: &str, partition: u32, high_watermark: i64) {
        if let Some(targets) = self.start_targets.lock().as_mut() {
            targets.entry((topic.to_string(), partition)).or_insert(high_watermark);
        }
    }

    /// Followed partitions not yet caught up with where their leader was at
    /// the start (empty: this broker serves its replicas); partitions with
    /// no leader to copy from don't count. Once empty it stays so.
    pub fn lagging_since_start(&self) -> Vec<String> {
        let mut guard = self.start_targets.lock();
        let Some(targets) = guard.as_ref() else { return Vec::new() };
        let mut lagging = Vec::new();
        for r in self.replicas() {
            if !matches!(r.role(), Role::Follower { .. }) {
                continue;
            }
            let caught_up = targets
                .get(&(r.topic.clone(), r.id))
                .is_some_and(|target| r.partition.log_end_offset() >= *target);
            if !caught_up {
                lagging.push(format!("{}-{}", r.topic, r.id));
            }
        }
        if lagging.is_empty() {
            *guard = None;
        }
        lagging
    }

    pub async fn wait_caught_up(&self, timeout: Duration) {
        let target = self.node.metadata_version();
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v >= target)).await;
    }

    /// Applies every metadata change to the local roles, until shutdown.
    pub async fn run(self: Arc<Self>, state: Arc<BrokerState>, mut shutdown: Shutdown) {
        // A restarted broker's metadata is what it had when it stopped: wait
        // until its session proves it caught up with the controller before
        // acting on any leadership in it.
        let deadline = tokio::time::Instant::now() + 2 * state.session.session_timeout;
        while !state.session.lease_valid() && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.wait() => return,
            }
        }
        let mut rx = self.node.subscribe();
        loop {
            let md = rx.borrow_and_update().clone();
            let index = md.applied_index;
            self.node.peers.set_registered(crate::cluster::controller::registered_addresses(&md));
            let this = self.clone();
            let st = state.clone();
            let md2 = md.clone();
            let done = tokio::task::spawn_blocking(move || this.apply(&st, &md2)).await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "applying metadata to local replicas"),
                Err(e) => tracing::error!(error = %e, "applying metadata to local replicas"),
            }
            self.applied.send_replace(index);
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = shutdown.wait() => return,
            }
        }
    }

    /// One pass: opens hosted partitions, changes roles, drops what is gone.
    fn apply(self: &Arc<Self>, state: &Arc<BrokerState>, md: &MetadataState) -> Result<()> {
        let me = self.node.node_id();
        let now = crate::now_ms();
        let mut seen = std::collections::HashSet::new();
        for t in md.topics.values() {
            let hosted: Vec<u32> = t
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.replicas.contains(&me))
                .map(|(i, _)| i as u32)
                .collect();
            if hosted.is_empty() {
                continue;
            }
            state.topics.ensure_hosted(t, &hosted, now)?;
            let local = state.topics.get(&t.name)?;
            for id in hosted {
                seen.insert((t.name.clone(), id));
                let Some(record) = t.partitions.get(id as usize) else { continue };
                let partition = local.partition(id)?;
                let replica = self.replica_for(&t.name, id, partition);
                if let Err(e) = self.set_role(state, &replica, record) {
                    tracing::error!(topic = %t.name, partition = id, error = %e, "changing replica role");
                }
            }
        }
        // Partitions this broker no longer hosts: topics deleted, or
        // replicas moved elsewhere by a reassignment (their data goes).
        let gone: Vec<(String, u32)> =
            self.replicas.read().keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for key in gone {
            if let Some(r) = self.replicas.write().remove(&key) {
                self.stop_following(&r);
                let _transition = r.transition.lock();
                *r.role.write() = Role::Offline { epoch: -1 };
                *r.leader.lock() = None;
                if md.topics.contains_key(&key.0) {
                    state.topics.remove_partition(&key.0, key.1)?;
                }
            }
        }
        for local in state.topics.list() {
            // Internal topics are broker-local; a quorum that is not formed
            // yet says nothing about what exists.
            if crate::topics::is_internal(&local.name) || md.cluster_id.is_empty() {
                continue;
            }
            if md.topics.get(&local.name).is_none_or(|t| t.id != local.id) {
                state.topics.delete_local(&local.name)?;
            }
        }
        Ok(())
    }

    fn replica_for(&self, topic: &str, id: u32, partition: Arc<Partition>) -> Arc<Replica> {
        let key = (topic.to_string(), id);
        if let Some(r) = self.replicas.read().get(&key) {
            if Arc::ptr_eq(&r.partition, &partition) {
                return r.clone();
            }
        }
        let (log_end, _) = watch::channel(partition.log_end_offset());
        let r = Arc::new(Replica {
            topic: topic.to_string(),
            id,
            partition,
            role: RwLock::new(Role::Offline { epoch: -1 }),
            transition: Mutex::new(()),
            leader: Mutex::new(None),
            log_end,
        });
        self.replicas.write().insert(key, r.clone());
        r
    }

    fn set_role(
        self: &Arc<Self>,
        state: &Arc<BrokerState>,
        r: &Arc<Replica>,
        p: &PartitionRecord,
    ) -> Result<()> {
        let me = self.node.node_id();
        let wanted = if p.leader == me {
            Role::Leader { epoch: p.leader_epoch }
        } else if p.leader == NO_LEADER {
            Role::Offline { epoch: p.leader_epoch }
        } else {
            Role::Follower { leader: p.leader, epoch: p.leader_epoch }
        };
        let _transition = r.transition.lock();
        let current = r.role();
        if current == wanted {
            if let Role::Leader { .. } = wanted {
                // Same epoch: only the ISR may have changed.
                if let Some(l) = r.leader.lock().as_mut() {
                    l.set_isr(&p.isr, &p.replicas);
                }
                leader::update_high_watermark(r, state);
            }
            return Ok(());
        }
        self.stop_following(r);
        let offsets = r.topic == OFFSETS_TOPIC;
        if offsets && matches!(current, Role::Leader { .. }) {
            state.coordinator.resigned(r.id);
        }
        match wanted {
            Role::Leader { epoch } => {
                r.partition.become_leader(epoch)?;
                *r.leader.lock() =
                    Some(LeaderState::new(me, epoch, &p.isr, &p.replicas, r.partition.log_end_offset()));
                tracing::info!(topic = %r.topic, partition = r.id, epoch, isr = ?p.isr, "leading");
                *r.role.write() = wanted;
                leader::update_high_watermark(r, state);
                if offsets {
                    load_groups(state.clone(), r.clone(), epoch);
                }
            }
            Role::Follower { leader, epoch } => {
                r.partition.become_follower(epoch)?;
                *r.leader.lock() = None;
                *r.role.write() = wanted;
                tracing::info!(topic = %r.topic, partition = r.id, leader, epoch, "following");
                self.fetcher(state, leader).add(r.clone(), epoch);
            }
            Role::Offline { epoch } => {
                r.partition.become_follower(epoch.max(0))?;
                *r.leader.lock() = None;
                *r.role.write() = wanted;
            }
        }
        Ok(())
    }

    fn stop_following(&self, r: &Replica) {
        for f in self.fetchers.lock().values() {
            f.remove(&r.topic, r.id);
        }
    }

    fn fetcher(self: &Arc<Self>, state: &Arc<BrokerState>, leader: i32) -> Arc<fetcher::Fetcher> {
        let mut fetchers = self.fetchers.lock();
        fetchers
            .entry(leader)
            .or_insert_with(|| fetcher::Fetcher::spawn(self.clone(), state.clone(), leader))
            .clone()
    }
}

/// A new group coordinator: once the high watermark reached the log end
/// (every commit the previous coordinator acknowledged is committed here
/// too), replays the partition and starts coordinating its groups — unless
/// leadership moved on meanwhile.
fn load_groups(state: Arc<BrokerState>, r: Arc<Replica>, epoch: i32) {
    tokio::task::spawn_blocking(move || {
        let end = r.partition.log_end_offset();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while r.partition.high_watermark() < end && std::time::Instant::now() < deadline {
            if r.role() != (Role::Leader { epoch }) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _transition = r.transition.lock();
        if r.role() != (Role::Leader { epoch }) {
            return;
        }
        if let Err(e) = state.coordinator.elected(&r.partition) {
            tracing::error!(partition = r.id, error = %e, "loading the groups of a __consumer_offsets partition");
        }
    });
}

pub fn not_available(message: String) -> v1::PartitionError {
    v1::PartitionError {
        code: v1::ErrorCode::LeaderNotAvailable as i32,
        message,
        leader_id: -1,
        ..Default::default()
    }
}

/// NOT_LEADER with where the leader is, or LEADER_NOT_AVAILABLE.
pub fn not_leader(
    md: &MetadataState,
    me: i32,
    topic: &str,
    partition: u32,
    p: Option<&PartitionRecord>,
) -> v1::PartitionError {
    match p {
        Some(p) if p.leader != NO_LEADER && p.leader != me => v1::PartitionError {
            code: v1::ErrorCode::NotLeader as i32,
            message: format!("broker {me} does not lead {topic}-{partition}; broker {} does", p.leader),
            leader_id: p.leader,
            leader_address: md.brokers.get(&p.leader).map(|b| b.address.clone()).unwrap_or_default(),
            leader_epoch: p.leader_epoch,
        },
        Some(_) => not_available(format!("{topic}-{partition} has no leader right now")),
        None => v1::PartitionError {
            code: v1::ErrorCode::UnknownTopicOrPartition as i32,
            message: format!("unknown partition {topic}-{partition}"),
            leader_id: -1,
            ..Default::default()
        },
    }
}

/// Error for a request that is not a per-partition outcome.
pub fn unknown(topic: &str) -> Error {
    Error::UnknownTopic(topic.to_string())
}

//! The cluster metadata the Raft quorum agrees on, and the commands that
//! change it.
//!
//! `MetadataState::apply` is a pure function of the state and one command:
//! every broker applies the same committed commands in the same order and
//! reaches the same state. Leader elections happen *inside* apply (fencing a
//! broker elects new leaders for what it led, deterministically from the
//! ISR), so a leadership change is exactly one quorum decision and never a
//! broker deciding alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// No leader (the partition is offline) / no broker.
pub const NO_LEADER: i32 = -1;

/// The topic config that allows electing a replica out of sync.
pub const UNCLEAN_ELECTION: &str = "unclean.leader.election.enable";

/// Producer ids are handed out in blocks of this many per request.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub id: i32,
    /// Where clients reach it.
    pub address: String,
    pub rack: String,
    /// Where other brokers reach its HTTP port (REST consumer instances
    /// live on one broker; a request for one that reaches another broker
    /// is forwarded there). Empty from brokers older than the field.
    #[serde(default)]
    pub http_address: String,
    /// Its session with the controller expired (or it shut down): it leads
    /// nothing and is in no ISR until it comes back.
    pub fenced: bool,
    /// The process run that registered (see `Command::Register`).
    #[serde(default)]
    pub incarnation: u64,
    /// Where Kafka clients reach it (empty: no Kafka listener; metadata
    /// from before the listener has none until the broker registers again).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kafka_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Assigned replicas; the first is the preferred leader.
    pub replicas: Vec<i32>,
    pub leader: i32,
    /// Bumped on every leader change (including to "no leader").
    pub leader_epoch: i32,
    /// In-sync replicas. Never empty: when the last in-sync replica is
    /// fenced it stays listed (the partition goes offline) so that it, and
    /// only it, can lead again when it returns (no unclean election).
    pub isr: Vec<i32>,
    /// A reassignment in progress: the replicas the partition will have.
    /// Meanwhile `replicas` holds old and new ones, so the new ones copy
    /// first; the switch happens once every target replica is in sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<i32>>,
}

impl PartitionRecord {
    /// A partition to create on `replicas`: its leader and ISR are set when
    /// the creating command is applied.
    pub fn new(replicas: Vec<i32>) -> PartitionRecord {
        PartitionRecord { isr: replicas.clone(), replicas, leader: NO_LEADER, leader_epoch: 0, target: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub id: String,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionRecord>,
}

impl TopicRecord {
    pub fn replication_factor(&self) -> u32 {
        self.partitions.first().map_or(0, |p| p.replicas.len() as u32)
    }
}

/// How a mirror link names a source topic in this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MirrorNaming {
    /// `<source alias>.<topic>`.
    #[default]
    Prefix,
    /// The same name (several sources may feed one topic).
    Identity,
}

/// Where a mirror link starts a source partition it has copied nothing of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MirrorStart {
    #[default]
    Earliest,
    Latest,
}

/// A mirror link: what to copy from which source cluster into this one.
/// Its progress is not kept here: the copied records carry it (their
/// provenance headers), see [`crate::mirror::provenance`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorLinkRecord {
    pub name: String,
    pub source_alias: String,
    pub source_bootstrap: String,
    /// Whole-name regex of the source topics to copy.
    pub topics: String,
    /// Whole-name regex of source topics to leave out; empty: none.
    #[serde(default)]
    pub exclude: String,
    pub naming: MirrorNaming,
    pub start: MirrorStart,
    #[serde(default)]
    pub paused: bool,
    /// Of destination topics the link creates; 0: the broker default.
    #[serde(default)]
    pub replication_factor: u32,
    /// When the link was first created (ms since the epoch; kept by
    /// updates). `--start latest` means records the source got from then
    /// on: a task that restarts before its first copy, or a topic found
    /// later, starts from this time, not from whatever "latest" is by then.
    #[serde(default)]
    pub created_ms: i64,
}

impl MirrorLinkRecord {
    /// The destination topic for source topic `topic`.
    pub fn destination_topic(&self, topic: &str) -> String {
        match self.naming {
            MirrorNaming::Prefix => format!("{}.{topic}", self.source_alias),
            MirrorNaming::Identity => topic.to_string(),
        }
    }
}

/// How far a mirror task has copied one source partition into one
/// destination partition (see [`crate::mirror`]): the resume point when
/// the copies themselves are gone (retention, compaction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorCheckpoint {
    /// The last source offset copied or passed over.
    pub source_offset: i64,
    /// The provenance topic tag of the source topic.
    #[serde(default)]
    pub topic_tag: String,
    /// Where the last copied record is in the destination partition.
    pub destination_offset: i64,
}

impl MirrorCheckpoint {
    /// Later in the destination log (which every leader shares), so
    /// checkpoints sent by a deposed leader's task never win.
    fn newer_than(&self, other: &MirrorCheckpoint) -> bool {
        (self.destination_offset, self.source_offset) > (other.destination_offset, other.source_offset)
    }
}

/// The key of a checkpoint in [`MetadataState::mirror_checkpoints`]: the
/// destination topic's id (a re-created destination starts with none), its
/// partition, and the source cluster.
pub fn mirror_checkpoint_key(topic_id: &str, partition: u32, source_cluster: &str) -> String {
    format!("{topic_id}/{partition}/{source_cluster}")
}

/// Everything the quorum holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    /// Generated once, by the first controller, at formation.
    pub cluster_id: String,
    pub brokers: BTreeMap<i32, BrokerRecord>,
    pub topics: BTreeMap<String, TopicRecord>,
    /// The first producer id not yet handed out to any broker.
    pub next_producer_id: i64,
    /// Brokers removed from the cluster, with the process run that was
    /// removed: that run's heartbeats are refused (it may still be up until
    /// its pod goes), while a later run of the same id may join again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub removed: BTreeMap<i32, u64>,
    /// Bytes per second a leader sends, in all, to replicas that are
    /// copying for a reassignment (0: no limit). Cleared when the last
    /// reassignment completes.
    #[serde(default)]
    pub reassignment_throttle: u64,
    /// Mirror links into this cluster, by name (see [`crate::mirror`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirror_links: BTreeMap<String, MirrorLinkRecord>,
    /// By [`mirror_checkpoint_key`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirror_checkpoints: BTreeMap<String, MirrorCheckpoint>,
    /// The Raft log index this state reflects (set when it is published;
    /// not part of the replicated state).
    #[serde(skip)]
    pub applied_index: u64,
}

/// A change to the metadata, decided by the controller and committed by the
/// quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster id if none is set yet (the first controller proposes
    /// it; a later proposal changes nothing).
    Form {
        cluster_id: String,
    },
    /// A broker's address or rack, and (re)admission: unfences it and gives
    /// leaderless partitions whose ISR holds it a leader again. A new
    /// `incarnation` of a broker that was not fenced means it restarted
    /// within its session: its previous run is fenced first, because a
    /// restart after a power loss may have taken records it had not
    /// fsynced — it must not lead in an epoch whose records its followers
    /// hold and it no longer does, nor count as in sync.
    Register {
        id: i32,
        address: String,
        rack: String,
        #[serde(default)]
        incarnation: u64,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        kafka_address: String,
        #[serde(default)]
        http_address: String,
    },
    /// The broker's session ended: it leaves every ISR it was in (unless it
    /// was the last member) and every partition it led gets a new leader.
    Fence {
        id: i32,
    },
    CreateTopic {
        topic: TopicRecord,
    },
    DeleteTopic {
        name: String,
    },
    SetConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// New partitions for an existing topic (their replicas; the first
    /// unfenced one leads).
    AddPartitions {
        name: String,
        replicas: Vec<Vec<i32>>,
    },
    /// A leader's ISR change; refused when `leader_epoch` is not current
    /// (the leader was deposed meanwhile).
    AlterIsr {
        topic: String,
        partition: u32,
        leader: i32,
        leader_epoch: i32,
        isr: Vec<i32>,
    },
    /// Moves leadership to `leader` (must be in the ISR and unfenced).
    ElectLeader {
        topic: String,
        partition: u32,
        leader: i32,
    },
    /// Starts moving a partition to `target` replicas (its first the
    /// preferred leader): the new replicas join and copy; see
    /// `CompleteReassignment`.
    Reassign {
        topic: String,
        partition: u32,
        target: Vec<i32>,
    },
    /// Finishes a reassignment whose target replicas are all in sync: the
    /// others leave, and leadership moves into the target if it must.
    CompleteReassignment {
        topic: String,
        partition: u32,
    },
    /// Removes a broker that hosts no replica (drained) from the cluster;
    /// refused while it hosts any.
    Unregister {
        id: i32,
    },
    /// Sets `MetadataState::reassignment_throttle`.
    SetReassignmentThrottle {
        bytes_per_sec: u64,
    },
    /// Reserves a block of producer ids starting at or above `at_least`
    /// (ids a one-node broker handed out before it had a quorum); the result
    /// is its first id.
    AllocateProducerIds {
        at_least: i64,
    },
    /// A new mirror link (refused when the name is taken), or with
    /// `replace` the link of that name replaced (or created).
    PutMirrorLink {
        link: MirrorLinkRecord,
        #[serde(default)]
        replace: bool,
    },
    /// Mirror tasks' progress: (destination topic, partition, source
    /// cluster, checkpoint). Each replaces an older one; ones for topics
    /// that are gone are dropped.
    RecordMirrorCheckpoints {
        checkpoints: Vec<(String, u32, String, MirrorCheckpoint)>,
    },
    SetMirrorLinkPaused {
        name: String,
        paused: bool,
    },
    DeleteMirrorLink {
        name: String,
    },
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    /// Refused; the state did not change.
    Refused(String),
    ProducerIds {
        start: i64,
        count: i64,
    },
}

impl MetadataState {
    pub fn topic(&self, name: &str) -> Option<&TopicRecord> {
        self.topics.get(name)
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionRecord> {
        self.topics.get(topic)?.partitions.get(partition as usize)
    }

    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    fn is_live(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    pub fn apply(&mut self, command: &Command) -> Outcome {
        match command {
            Command::Form { cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id.clone();
                }
                Outcome::Done
            }
            Command::Register { id, address, rack, incarnation, kafka_address, http_address } => {
                if self.removed.get(id) == Some(incarnation) {
                    return Outcome::Refused(format!(
                        "broker {id} was removed from the cluster; a restarted broker {id} may join again"
                    ));
                }
                self.register(*id, address, rack, *incarnation, kafka_address, http_address);
                self.elect_unclean();
                Outcome::Done
            }
            Command::Unregister { id } => self.unregister(*id),
            Command::SetReassignmentThrottle { bytes_per_sec } => {
                self.reassignment_throttle = *bytes_per_sec;
                Outcome::Done
            }
            Command::Fence { id } => {
                self.fence(*id);
                self.elect_unclean();
                Outcome::Done
            }
            Command::CreateTopic { topic } => {
                if self.topics.contains_key(&topic.name) {
                    return Outcome::Refused(format!("topic '{}' already exists", topic.name));
                }
                let mut topic = topic.clone();
                for p in &mut topic.partitions {
                    self.initial_leader(p);
                }
                self.topics.insert(topic.name.clone(), topic);
                Outcome::Done
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(t) => {
                    let prefix = format!("{}/", t.id);
                    self.mirror_checkpoints.retain(|k, _| !k.starts_with(&prefix));
                    Outcome::Done
                }
                None => Outcome::Refused(format!("unknown topic '{name}'")),
            },
            Command::SetConfigs { name, configs } => match self.topics.get_mut(name) {
                Some(t) => {
                    t.configs = configs.clone();
                    // Turning unclean election on brings offline partitions
                    // back at once.
                    self.elect_unclean();
                    Outcome::Done
                }
                None => Outcome::Refused(format!("unknown topic '{name}'")),
            },
            Command::AddPartitions { name, replicas } => {
                let mut added = Vec::new();
                for r in replicas {
                    let mut p = PartitionRecord::new(r.clone());
                    self.initial_leader(&mut p);
                    added.push(p);
                }
                match self.topics.get_mut(name) {
                    Some(t) => {
                        t.partitions.extend(added);
                        Outcome::Done
                    }
                    None => Outcome::Refused(format!("unknown topic '{name}'")),
                }
            }
            Command::AlterIsr { topic, partition, leader, leader_epoch, isr } => {
                self.alter_isr(topic, *partition, *leader, *leader_epoch, isr)
            }
            Command::ElectLeader { topic, partition, leader } => self.elect(topic, *partition, *leader),
            Command::Reassign { topic, partition, target } => self.reassign(topic, *partition, target),
            Command::CompleteReassignment { topic, partition } => {
                let out = self.complete_reassignment(topic, *partition);
                if self.reassignments_in_progress() == 0 {
                    // The throttle was asked for the moves that just ended.
                    self.reassignment_throttle = 0;
                }
                out
            }
            Command::RecordMirrorCheckpoints { checkpoints } => {
                for (topic, partition, source, c) in checkpoints {
                    let Some(t) = self.topics.get(topic) else { continue };
                    if *partition as usize >= t.partitions.len() {
                        continue;
                    }
                    let key = mirror_checkpoint_key(&t.id, *partition, source);
                    if self.mirror_checkpoints.get(&key).is_none_or(|old| c.newer_than(old)) {
                        self.mirror_checkpoints.insert(key, c.clone());
                    }
                }
                Outcome::Done
            }
            Command::PutMirrorLink { link, replace } => {
                if !replace && self.mirror_links.contains_key(&link.name) {
                    return Outcome::Refused(format!("mirror link '{}' already exists", link.name));
                }
                self.mirror_links.insert(link.name.clone(), link.clone());
                Outcome::Done
            }
            Command::SetMirrorLinkPaused { name, paused } => match self.mirror_links.get_mut(name) {
                Some(l) => {
                    l.paused = *paused;
                    Outcome::Done
                }
                None => Outcome::Refused(format!("unknown mirror link '{name}'")),
            },
            Command::DeleteMirrorLink { name } => match self.mirror_links.remove(name) {
                Some(_) => Outcome::Done,
                None => Outcome::Refused(format!("unknown mirror link '{name}'")),
            },
            Command::AllocateProducerIds { at_least } => {
                let start = self.next_producer_id.max(*at_least);
                self.next_producer_id = start + PRODUCER_ID_BLOCK;
                Outcome::ProducerIds { start, count: PRODUCER_ID_BLOCK }
            }
        }
    }

    /// A new partition's first leader: its first live replica.
    fn initial_leader(&self, p: &mut PartitionRecord) {
        p.isr = p.replicas.clone();
        p.leader = p.replicas.iter().copied().find(|r| self.is_live(*r)).unwrap_or(NO_LEADER);
        p.leader_epoch = 0;
    }

    fn register(
        &mut self,
        id: i32,
        address: &str,
        rack: &str,
        incarnation: u64,
        kafka_address: &str,
        http_address: &str,
    ) {
        let restarted = self.brokers.get(&id).is_some_and(|b| !b.fenced && b.incarnation != incarnation);
        if restarted {
            self.fence(id);
        }
        self.removed.remove(&id);
        self.brokers.insert(
            id,
            BrokerRecord {
                id,
                address: address.to_string(),
                rack: rack.to_string(),
                http_address: http_address.to_string(),
                fenced: false,
                incarnation,
                kafka_address: kafka_address.to_string(),
            },
        );
        // Offline partitions whose last in-sync replica is back lead again.
        for t in self.topics.values_mut() {
            for p in &mut t.partitions {
                if p.leader == NO_LEADER && p.isr.contains(&id) {
                    p.leader = id;
                    p.leader_epoch += 1;
                }
            }
        }
    }

    fn unregister(&mut self, id: i32) -> Outcome {
        let Some(b) = self.brokers.get(&id) else {
            return Outcome::Refused(format!("broker {id} is not in the cluster"));
        };
        let incarnation = b.incarnation;
        let hosted = self.hosted_by(id);
        if let Some(first) = hosted.first() {
            return Outcome::Refused(format!(
                "broker {id} still hosts {} replica(s) (first {first}); drain it first (`tributary broker drain {id}`) and wait until the reassignments complete",
                hosted.len()
            ));
        }
        self.brokers.remove(&id);
        self.removed.insert(id, incarnation);
        Outcome::Done
    }

    /// Partitions (`topic-N`) with a replica on `id`, now or as a target.
    pub fn hosted_by(&self, id: i32) -> Vec<String> {
        let mut out = Vec::new();
        for (name, t) in &self.topics {
            for (i, p) in t.partitions.iter().enumerate() {
                if p.replicas.contains(&id) || p.target.as_ref().is_some_and(|t| t.contains(&id)) {
                    out.push(format!("{name}-{i}"));
                }
            }
        }
        out
    }

    pub fn reassignments_in_progress(&self) -> usize {
        self.topics.values().flat_map(|t| &t.partitions).filter(|p| p.target.is_some()).count()
    }

    /// Leaderless partitions of topics with `unclean.leader.election.enable`
    /// take their first live replica as leader, in sync or not: available
    /// again, at the price of what only the lost in-sync replicas held.
    fn elect_unclean(&mut self) {
        let live: BTreeSet<i32> = self.live_brokers().map(|b| b.id).collect();
        for t in self.topics.values_mut() {
            if t.configs.get(UNCLEAN_ELECTION).map(String::as_str) != Some("true") {
                continue;
            }
            for p in &mut t.partitions {
                if p.leader != NO_LEADER {
                    continue;
                }
                if let Some(r) = p.replicas.iter().copied().find(|r| live.contains(r)) {
                    p.leader = r;
                    p.isr = vec![r];
                    p.leader_epoch += 1;
                }
            }
        }
    }

    fn fence(&mut self, id: i32) {
        let Some(b) = self.brokers.get_mut(&id) else { return };
        b.fenced = true;
        let live: BTreeSet<i32> = self.live_brokers().map(|b| b.id).collect();
        for t in self.topics.values_mut() {
            for p in &mut t.partitions {
                if !p.isr.contains(&id) {
                    continue;
                }
                if p.isr.len() > 1 {
                    p.isr.retain(|r| *r != id);
                }
                if p.leader == id {
                    // The new leader comes from the ISR only: every member
                    // has everything below the high watermark.
                    p.leader = p.isr.iter().copied().find(|r| live.contains(r)).unwrap_or(NO_LEADER);
                    p.leader_epoch += 1;
                }
            }
        }
    }

    fn alter_isr(&mut self, topic: &str, partition: u32, leader: i32, epoch: i32, isr: &[i32]) -> Outcome {
        let live: BTreeSet<i32> = self.live_brokers().map(|b| b.id).collect();
        let Some(p) = self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(partition as usize))
        else {
            return Outcome::Refused(format!("unknown partition {topic}-{partition}"));
        };
        if p.leader != leader || p.leader_epoch != epoch {
            return Outcome::Refused(format!(
                "{topic}-{partition}: broker {leader} at epoch {epoch} is not the leader (leader {} at epoch {})",
                p.leader, p.leader_epoch
            ));
        }
        if !isr.contains(&leader) || isr.iter().any(|r| !p.replicas.contains(r)) {
            return Outcome::Refused(format!(
                "{topic}-{partition}: ISR {isr:?} must hold the leader and only replicas"
            ));
        }
        // A fenced broker may not join (it could not lead if elected).
        let added = isr.iter().filter(|r| !p.isr.contains(r));
        if let Some(r) = added.into_iter().find(|r| !live.contains(r)) {
            return Outcome::Refused(format!("{topic}-{partition}: broker {r} is fenced"));
        }
        let mut isr = isr.to_vec();
        isr.sort_unstable();
        isr.dedup();
        p.isr = isr;
        Outcome::Done
    }

    fn elect(&mut self, topic: &str, partition: u32, leader: i32) -> Outcome {
        let live = self.is_live(leader);
        let Some(p) = self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(partition as usize))
        else {
            return Outcome::Refused(format!("unknown partition {topic}-{partition}"));
        };
        if !p.isr.contains(&leader) || !live {
            return Outcome::Refused(format!(
                "{topic}-{partition}: broker {leader} is not a live in-sync replica"
            ));
        }
        if p.leader != leader {
            p.leader = leader;
            p.leader_epoch += 1;
        }
        Outcome::Done
    }

    fn reassign(&mut self, topic: &str, partition: u32, target: &[i32]) -> Outcome {
        let mut distinct = target.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if target.is_empty() || distinct.len() != target.len() {
            return Outcome::Refused(format!(
                "{topic}-{partition}: target replicas {target:?} must be distinct and not empty"
            ));
        }
        if let Some(b) = target.iter().find(|b| !self.brokers.contains_key(b)) {
            return Outcome::Refused(format!("{topic}-{partition}: broker {b} is not in the cluster"));
        }
        let Some(p) = self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(partition as usize))
        else {
            return Outcome::Refused(format!("unknown partition {topic}-{partition}"));
        };
        if p.target.is_some() {
            return Outcome::Refused(format!("{topic}-{partition} is already being reassigned"));
        }
        if p.replicas == target {
            return Outcome::Done;
        }
        // Target first (preferred leader order), then the leaving ones.
        let mut replicas = target.to_vec();
        replicas.extend(p.replicas.iter().filter(|r| !target.contains(r)));
        p.replicas = replicas;
        p.target = Some(target.to_vec());
        Outcome::Done
    }

    fn complete_reassignment(&mut self, topic: &str, partition: u32) -> Outcome {
        let live: BTreeSet<i32> = self.live_brokers().map(|b| b.id).collect();
        let Some(p) = self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(partition as usize))
        else {
            return Outcome::Refused(format!("unknown partition {topic}-{partition}"));
        };
        let Some(target) = p.target.clone() else {
            return Outcome::Refused(format!("{topic}-{partition} is not being reassigned"));
        };
        if let Some(r) = target.iter().find(|r| !p.isr.contains(r)) {
            return Outcome::Refused(format!("{topic}-{partition}: target replica {r} is not in sync yet"));
        }
        p.isr.retain(|r| target.contains(r));
        p.replicas = target.clone();
        p.target = None;
        if !target.contains(&p.leader) {
            p.leader =
                target.iter().copied().find(|r| p.isr.contains(r) && live.contains(r)).unwrap_or(NO_LEADER);
            p.leader_epoch += 1;
        }
        Outcome::Done
    }

    /// Reassignments whose target replicas are all in sync now.
    pub fn completable_reassignments(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for (name, t) in &self.topics {
            for (i, p) in t.partitions.iter().enumerate() {
                if p.target.as_ref().is_some_and(|target| target.iter().all(|r| p.isr.contains(r))) {
                    out.push((name.clone(), i as u32));
                }
            }
        }
        out
    }

    /// Partitions with fewer in-sync replicas than replicas, and those with
    /// no leader.
    pub fn health(&self) -> (u32, u32, u32) {
        let (mut total, mut under, mut offline) = (0, 0, 0);
        for t in self.topics.values() {
            for p in &t.partitions {
                total += 1;
                if p.leader == NO_LEADER {
                    offline += 1;
                }
                let live_isr = p.isr.iter().filter(|r| self.is_live(**r)).count();
                let wanted = p.target.as_ref().map_or(p.replicas.len(), Vec::len);
                if live_isr < wanted {
                    under += 1;
                }
            }
        }
        (total, under, offline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: i32) -> MetadataState {
        let mut s = MetadataState::default();
        for id in 0..n {
            s.apply(&Command::Register {
                id,
                address: format!("b{id}"),
                rack: String::new(),
                incarnation: 1,
                kafka_address: String::new(),
                http_address: String::new(),
            });
        }
        s
    }

    fn topic(name: &str, replicas: Vec<Vec<i32>>) -> Command {
        Command::CreateTopic {
            topic: TopicRecord {
                name: name.into(),
                id: "id".into(),
                configs: BTreeMap::new(),
                partitions: replicas
                    .into_iter()
                    .map(|r| PartitionRecord {
                        replicas: r,
                        leader: NO_LEADER,
                        leader_epoch: 0,
                        isr: vec![],
                        target: None,
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn a_reassignment_copies_first_and_switches_once_the_target_is_in_sync() {
        let mut s = cluster(4);
        s.apply(&topic("t", vec![vec![0, 1, 2]]));
        assert_eq!(
            s.apply(&Command::Reassign { topic: "t".into(), partition: 0, target: vec![3, 1] }),
            Outcome::Done
        );
        let p = s.partition("t", 0).cloned().unwrap();
        // 3 joins as a replica; nothing leaves yet; 0 still leads.
        assert_eq!((p.replicas.clone(), p.leader, p.isr.clone()), (vec![3, 1, 0, 2], 0, vec![0, 1, 2]));
        assert!(s.completable_reassignments().is_empty());
        let early = s.apply(&Command::CompleteReassignment { topic: "t".into(), partition: 0 });
        assert!(matches!(early, Outcome::Refused(_)));
        s.apply(&Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader: 0,
            leader_epoch: 0,
            isr: vec![0, 1, 2, 3],
        });
        assert_eq!(s.completable_reassignments(), vec![("t".to_string(), 0)]);
        s.apply(&Command::CompleteReassignment { topic: "t".into(), partition: 0 });
        let p = s.partition("t", 0).cloned().unwrap();
        // 0 left, so leadership moved into the target with a new epoch.
        assert_eq!(
            (p.replicas, p.isr, p.leader, p.leader_epoch, p.target),
            (vec![3, 1], vec![1, 3], 3, 1, None)
        );
    }

    #[test]
    fn fencing_the_leader_elects_from_the_isr_and_bumps_the_epoch() {
        let mut s = cluster(3);
        s.apply(&topic("t", vec![vec![0, 1, 2]]));
        assert_eq!(s.partition("t", 0).map(|p| (p.leader, p.leader_epoch)), Some((0, 0)));
        // 1 fell out of the ISR earlier: only 2 may take over.
        s.apply(&Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader: 0,
            leader_epoch: 0,
            isr: vec![0, 2],
        });
        s.apply(&Command::Fence { id: 0 });
        let p = s.partition("t", 0).cloned().unwrap();
        assert_eq!((p.leader, p.leader_epoch, p.isr), (2, 1, vec![2]));
    }

    #[test]
    fn the_last_in_sync_replica_stays_listed_and_leads_again_on_return() {
        let mut s = cluster(2);
        s.apply(&topic("t", vec![vec![0, 1]]));
        s.apply(&Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader: 0,
            leader_epoch: 0,
            isr: vec![0],
        });
        s.apply(&Command::Fence { id: 0 });
        let p = s.partition("t", 0).cloned().unwrap();
        // No unclean election: 1 is live but was not in sync.
        assert_eq!((p.leader, p.isr.clone()), (NO_LEADER, vec![0]));
        assert_eq!(s.health(), (1, 1, 1));
        s.apply(&Command::Register {
            id: 0,
            address: "b0".into(),
            rack: String::new(),
            incarnation: 1,
            kafka_address: String::new(),
            http_address: String::new(),
        });
        let p = s.partition("t", 0).cloned().unwrap();
        assert_eq!((p.leader, p.leader_epoch), (0, 2));
    }

    #[test]
    fn a_broker_back_with_a_new_run_before_it_was_fenced_gives_up_what_it_led() {
        // It may have lost records to a power loss that its followers hold:
        // another in-sync replica leads, in a new epoch, and it is out of
        // every ISR it was in until it catches up again.
        let mut s = cluster(3);
        s.apply(&topic("t", vec![vec![0, 1, 2], vec![1, 0, 2]]));
        let before: Vec<PartitionRecord> = s.topics["t"].partitions.clone();
        let register = |incarnation| Command::Register {
            id: 0,
            address: "b0".into(),
            rack: String::new(),
            incarnation,
            kafka_address: String::new(),
            http_address: String::new(),
        };
        // The same run heartbeating again changes nothing.
        s.apply(&register(1));
        assert_eq!(s.topics["t"].partitions, before);
        s.apply(&register(2));
        let (p0, p1) = (&s.topics["t"].partitions[0], &s.topics["t"].partitions[1]);
        assert_eq!((p0.leader, p0.leader_epoch, p0.isr.clone()), (1, before[0].leader_epoch + 1, vec![1, 2]));
        assert_eq!((p1.leader, p1.leader_epoch, p1.isr.clone()), (1, before[1].leader_epoch, vec![1, 2]));
        assert!(!s.brokers[&0].fenced);
        assert_eq!(s.brokers[&0].incarnation, 2);
        // Where it was the only in-sync replica it leads again, but in a new
        // epoch, so followers reconcile with what it still has.
        let mut s = cluster(2);
        s.apply(&topic("u", vec![vec![0, 1]]));
        s.apply(&Command::AlterIsr {
            topic: "u".into(),
            partition: 0,
            leader: 0,
            leader_epoch: 0,
            isr: vec![0],
        });
        s.apply(&register(2));
        let p = s.partition("u", 0).cloned().unwrap();
        assert_eq!((p.leader, p.isr), (0, vec![0]));
        assert!(p.leader_epoch > 0);
    }

    #[test]
    fn unclean_election_is_per_topic_and_off_by_default() {
        let mut s = cluster(2);
        s.apply(&topic("clean", vec![vec![0, 1]]));
        s.apply(&topic("unclean", vec![vec![0, 1]]));
        for t in ["clean", "unclean"] {
            s.apply(&Command::AlterIsr {
                topic: t.into(),
                partition: 0,
                leader: 0,
                leader_epoch: 0,
                isr: vec![0],
            });
        }
        let on: BTreeMap<String, String> = [(UNCLEAN_ELECTION.to_string(), "true".to_string())].into();
        s.apply(&Command::SetConfigs { name: "unclean".into(), configs: on.clone() });
        s.apply(&Command::Fence { id: 0 });
        let clean = s.partition("clean", 0).cloned().unwrap();
        assert_eq!((clean.leader, clean.isr), (NO_LEADER, vec![0]));
        let unclean = s.partition("unclean", 0).cloned().unwrap();
        assert_eq!((unclean.leader, unclean.isr), (1, vec![1]));
        assert!(unclean.leader_epoch > 0);
        // Turned on while offline: elected at once.
        s.apply(&Command::SetConfigs { name: "clean".into(), configs: on });
        assert_eq!(s.partition("clean", 0).unwrap().leader, 1);
    }

    #[test]
    fn a_broker_is_removed_only_once_drained_and_its_removed_run_cannot_come_back() {
        let mut s = cluster(3);
        s.apply(&topic("t", vec![vec![0, 1]]));
        let out = s.apply(&Command::Unregister { id: 1 });
        assert!(matches!(&out, Outcome::Refused(why) if why.contains("t-0")), "{out:?}");
        assert!(s.brokers.contains_key(&1));
        s.apply(&Command::Reassign { topic: "t".into(), partition: 0, target: vec![0, 2] });
        // A target counts as hosted too.
        assert!(matches!(s.apply(&Command::Unregister { id: 2 }), Outcome::Refused(_)));
        s.apply(&Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader: 0,
            leader_epoch: 0,
            isr: vec![0, 1, 2],
        });
        s.apply(&Command::SetReassignmentThrottle { bytes_per_sec: 1000 });
        s.apply(&Command::CompleteReassignment { topic: "t".into(), partition: 0 });
        assert_eq!(s.reassignment_throttle, 0, "the throttle ends with the last reassignment");
        assert_eq!(s.apply(&Command::Unregister { id: 1 }), Outcome::Done);
        assert!(!s.brokers.contains_key(&1));
        let again = |incarnation| Command::Register {
            id: 1,
            address: "b1".into(),
            rack: String::new(),
            incarnation,
            kafka_address: String::new(),
            http_address: String::new(),
        };
        assert!(matches!(s.apply(&again(1)), Outcome::Refused(_)));
        assert!(!s.brokers.contains_key(&1));
        assert_eq!(s.apply(&again(2)), Outcome::Done);
        assert!(s.brokers.contains_key(&1));
    }

    #[test]
    fn a_deposed_leader_cannot_change_the_isr() {
        let mut s = cluster(3);
        s.apply(&topic("t", vec![vec![0, 1, 2]]));
        s.apply(&Command::Fence { id: 0 });
        let before = s.clone();
        let out = s.apply(&Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader: 0,
            leader_epoch: 0,
            isr: vec![0],
        });
        assert!(matches!(out, Outcome::Refused(_)));
        assert_eq!(s, before);
    }

    #[test]
    fn fenced_brokers_may_not_join_the_isr_and_elections_need_an_in_sync_replica() {
        let mut s = cluster(3);
        s.apply(&topic("t", vec![vec![0, 1, 2]]));
        s.apply(&Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader: 0,
            leader_epoch: 0,
            isr: vec![0, 1],
        });
        s.apply(&Command::Fence { id: 2 });
        let out = s.apply(&Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader: 0,
            leader_epoch: 0,
            isr: vec![0, 1, 2],
        });
        assert!(matches!(out, Outcome::Refused(_)));
        assert!(matches!(
            s.apply(&Command::ElectLeader { topic: "t".into(), partition: 0, leader: 2 }),
            Outcome::Refused(_)
        ));
        assert_eq!(
            s.apply(&Command::ElectLeader { topic: "t".into(), partition: 0, leader: 1 }),
            Outcome::Done
        );
        assert_eq!(s.partition("t", 0).map(|p| (p.leader, p.leader_epoch)), Some((1, 1)));
    }

    fn link(name: &str) -> MirrorLinkRecord {
        MirrorLinkRecord {
            name: name.into(),
            source_alias: "east".into(),
            source_bootstrap: "127.0.0.1:7070".into(),
            topics: "orders.*".into(),
            exclude: String::new(),
            naming: MirrorNaming::Prefix,
            start: MirrorStart::Earliest,
            paused: false,
            replication_factor: 0,
            created_ms: 0,
        }
    }

    #[test]
    fn mirror_checkpoints_only_move_forward_and_go_with_their_topic() {
        let mut s = MetadataState::default();
        s.apply(&topic("t", vec![vec![1]]));
        let ck = |source_offset, destination_offset| MirrorCheckpoint {
            source_offset,
            topic_tag: "tag".into(),
            destination_offset,
        };
        let record = |topic: &str, partition, c| Command::RecordMirrorCheckpoints {
            checkpoints: vec![(topic.to_string(), partition, "src".to_string(), c)],
        };
        let key = mirror_checkpoint_key("id", 0, "src");
        assert_eq!(s.apply(&record("t", 0, ck(10, 4))), Outcome::Done);
        assert_eq!(s.mirror_checkpoints[&key], ck(10, 4));
        // A deposed leader's older checkpoint arriving late changes nothing.
        s.apply(&record("t", 0, ck(8, 2)));
        assert_eq!(s.mirror_checkpoints[&key], ck(10, 4));
        s.apply(&record("t", 0, ck(12, 6)));
        assert_eq!(s.mirror_checkpoints[&key], ck(12, 6));
        // Unknown topics and partitions are dropped.
        s.apply(&record("nope", 0, ck(1, 1)));
        s.apply(&record("t", 5, ck(1, 1)));
        assert_eq!(s.mirror_checkpoints.len(), 1);
        assert_eq!(s.apply(&Command::DeleteTopic { name: "t".into() }), Outcome::Done);
        assert!(s.mirror_checkpoints.is_empty(), "a deleted topic's checkpoints go with it");
    }

    #[test]
    fn mirror_links_are_created_once_paused_and_deleted_by_name() {
        let mut s = MetadataState::default();
        let put = |l: MirrorLinkRecord, replace| Command::PutMirrorLink { link: l, replace };
        assert_eq!(s.apply(&put(link("a"), false)), Outcome::Done);
        let mut other = link("a");
        other.topics = "x".into();
        // A duplicate name changes nothing; an update replaces.
        assert!(
            matches!(s.apply(&put(other.clone(), false)), Outcome::Refused(w) if w.contains("already exists"))
        );
        assert_eq!(s.mirror_links["a"].topics, "orders.*");
        assert_eq!(s.apply(&put(other, true)), Outcome::Done);
        assert_eq!(s.mirror_links["a"].topics, "x");
        assert_eq!(s.apply(&Command::SetMirrorLinkPaused { name: "a".into(), paused: true }), Outcome::Done);
        assert!(s.mirror_links["a"].paused);
        let before = s.clone();
        assert!(matches!(
            s.apply(&Command::SetMirrorLinkPaused { name: "b".into(), paused: true }),
            Outcome::Refused(_)
        ));
        assert!(matches!(s.apply(&Command::DeleteMirrorLink { name: "b".into() }), Outcome::Refused(_)));
        assert_eq!(s, before);
        assert_eq!(s.apply(&Command::DeleteMirrorLink { name: "a".into() }), Outcome::Done);
        assert!(s.mirror_links.is_empty());
        assert_eq!(link("a").destination_topic("orders"), "east.orders");
        let identity = MirrorLinkRecord { naming: MirrorNaming::Identity, ..link("i") };
        assert_eq!(identity.destination_topic("orders"), "orders");
    }

    #[test]
    fn metadata_without_mirror_links_reads_back_the_same() {
        // Snapshots written before links existed still load.
        let mut s = cluster(1);
        s.apply(&topic("t", vec![vec![0]]));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("mirror_links"));
        let back: MetadataState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        s.apply(&Command::PutMirrorLink { link: link("a"), replace: false });
        let back: MetadataState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.mirror_links, s.mirror_links);
    }

    #[test]
    fn producer_id_blocks_never_overlap_and_the_cluster_id_is_set_once() {
        let mut s = MetadataState::default();
        let a = s.apply(&Command::AllocateProducerIds { at_least: 0 });
        let b = s.apply(&Command::AllocateProducerIds { at_least: 0 });
        let c = s.apply(&Command::AllocateProducerIds { at_least: 5000 });
        assert_eq!(a, Outcome::ProducerIds { start: 0, count: PRODUCER_ID_BLOCK });
        assert_eq!(b, Outcome::ProducerIds { start: PRODUCER_ID_BLOCK, count: PRODUCER_ID_BLOCK });
        assert_eq!(c, Outcome::ProducerIds { start: 5000, count: PRODUCER_ID_BLOCK });
        assert_eq!(s.next_producer_id, 5000 + PRODUCER_ID_BLOCK);
        s.apply(&Command::Form { cluster_id: "one".into() });
        s.apply(&Command::Form { cluster_id: "two".into() });
        assert_eq!(s.cluster_id, "one");
    }
}

//! The group coordinator: membership, generations, assignment and committed
//! offsets of consumer groups.
//!
//! The coordinator computes assignments itself with the group's strategy
//! ([`assignor`]). A rebalance starts when a member joins, leaves, times out
//! or rejoins; every member must then JoinGroup again (they learn it from
//! their heartbeats) until the rebalance timeout, after which stragglers are
//! removed. Completing a rebalance bumps the generation and hands out the
//! new assignment. With a cooperative strategy a partition that moves is
//! withheld until its previous owner has given it up (rejoined without it),
//! so no partition ever has two owners in one generation. Commits are
//! accepted only from members of the current generation, for partitions they
//! own — or, with a cooperative strategy, are giving up and nobody owns yet,
//! so their final positions can be committed ([`offsets`] stores them).
//!
//! State lives under one mutex that is never held across an await; a member
//! waiting for a rebalance to complete waits on a watch channel. Writes
//! (commits, group records, deletions) are validated and queued to the offset
//! store's group-commit writer under that mutex, and waited for outside it:
//! they reach disk in the order they were validated, so a commit refused to a
//! fenced member can't have been overtaken, and one accepted before the fence
//! can't land after the new owner's. Nothing here does file I/O on an async
//! runtime thread: [`Coordinator::join`] and [`Coordinator::start_commit`]
//! only queue and await; the other writers are blocking calls.
//!
//! An empty group's offsets expire `offsets.retention.minutes` after the
//! later of its becoming empty and its last commit, so a consumer that
//! commits outside the group protocol keeps its offsets while it commits.

pub mod assignor;
pub mod offsets;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tributary_proto::v1::{self, ErrorCode};

use crate::error::{Error, Result};
use crate::topics::Topics;
use assignor::Tp;
use offsets::{Committed, GroupRecord, OffsetStore, Pending, Records};

const MIN_SESSION: Duration = Duration::from_millis(1000);
const MAX_SESSION: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    topics: Vec<String>,
    /// What the member said it owns when it last joined.
    owned: Vec<Tp>,
    last_seen: Instant,
    /// Joined during the current rebalance.
    rejoined: bool,
    assignment: Vec<Tp>,
    /// Cooperative: partitions the member owned that this generation
    /// withholds from everyone until it gives them up. It may still commit
    /// them (its final positions) while it revokes.
    revoking: Vec<Tp>,
}

struct Group {
    state: GroupState,
    generation: i32,
    assignor: String,
    members: BTreeMap<String, Member>,
    leader: String,
    rebalance_deadline: Option<Instant>,
    /// Static instance id → its current member id.
    instances: HashMap<String, String>,
    /// Generations completed; JoinGroup callers wait on it.
    done: watch::Sender<i32>,
    empty_since_ms: Option<i64>,
    /// When an offset of the group was last committed.
    last_commit_ms: Option<i64>,
}

impl Group {
    fn new(generation: i32, assignor: String, empty_since_ms: Option<i64>) -> Group {
        Group {
            state: GroupState::Empty,
            generation,
            assignor,
            members: BTreeMap::new(),
            leader: String::new(),
            rebalance_deadline: None,
            instances: HashMap::new(),
            done: watch::channel(generation).0,
            empty_since_ms,
            last_commit_ms: None,
        }
    }

    fn record(&self) -> GroupRecord {
        GroupRecord {
            generation: self.generation,
            assignor: self.assignor.clone(),
            empty_since_ms: self.empty_since_ms,
        }
    }

    /// Empty, with nothing committed for longer than `retention`.
    fn expired(&self, now_ms: i64, retention: Duration) -> bool {
        let idle_since = self.empty_since_ms.max(self.last_commit_ms);
        self.state == GroupState::Empty
            && idle_since.is_some_and(|t| now_ms - t > retention.as_millis() as i64)
    }

    fn start_rebalance(&mut self, now: Instant) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        self.state = GroupState::PreparingRebalance;
        let wait = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or(MIN_SESSION);
        self.rebalance_deadline = Some(now + wait);
        for m in self.members.values_mut() {
            m.rejoined = false;
        }
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(m) = self.members.remove(id) {
            if let Some(inst) = m.instance_id {
                if self.instances.get(&inst).map(String::as_str) == Some(id) {
                    self.instances.remove(&inst);
                }
            }
        }
    }

    fn member_error(&self, member_id: &str, instance_id: &str) -> Option<ErrorCode> {
        if !instance_id.is_empty() {
            if let Some(current) = self.instances.get(instance_id) {
                if current != member_id {
                    return Some(ErrorCode::FencedInstanceId);
                }
            }
        }
        if !self.members.contains_key(member_id) {
            return Some(ErrorCode::UnknownMemberId);
        }
        None
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Option<v1::PartitionError> {
    Some(v1::PartitionError { code: code as i32, message: message.into(), ..Default::default() })
}

fn to_proto(tps: &[Tp]) -> Vec<v1::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in tps {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic.into_iter().map(|(t, ps)| v1::TopicPartitions { topic: t.to_string(), partitions: ps }).collect()
}

fn from_proto(tps: &[v1::TopicPartitions]) -> Vec<Tp> {
    tps.iter().flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p))).collect()
}

/// Where a reset moves a group's offsets.
#[derive(Debug, Clone, Copy)]
pub enum ResetTo {
    Earliest,
    Latest,
    Timestamp(i64),
    Offset(i64),
}

pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    offsets: OffsetStore,
    retention: Duration,
    next_member: AtomicU64,
    /// `__consumer_offsets` partitions this broker leads and has loaded:
    /// it coordinates exactly the groups that hash to them. None until the
    /// replication layer takes over ([`Coordinator::follow_leadership`]):
    /// a coordinator on its own (tests) coordinates every group.
    loaded: Mutex<Option<std::collections::HashSet<u32>>>,
}

impl Coordinator {
    /// Loads groups and their generations from the offset store.
    pub fn load(offsets: OffsetStore, retention: Duration) -> Result<Coordinator> {
        let now = crate::now_ms();
        let mut groups = HashMap::new();
        for (id, stored) in offsets.groups()? {
            let mut g = match stored.record {
                Some(r) => Group::new(r.generation, r.assignor, r.empty_since_ms.or(Some(now))),
                None => Group::new(0, assignor::RANGE.into(), Some(now)),
            };
            g.last_commit_ms = stored.last_commit_ms;
            groups.insert(id, g);
        }
        Ok(Coordinator {
            groups: Mutex::new(groups),
            offsets,
            retention,
            next_member: AtomicU64::new(0),
            loaded: Mutex::new(None),
        })
    }

    /// From now on this broker coordinates only the groups of the
    /// `__consumer_offsets` partitions it leads ([`Coordinator::elected`]).
    pub fn follow_leadership(&self) {
        let mut loaded = self.loaded.lock();
        if loaded.is_none() {
            *loaded = Some(std::collections::HashSet::new());
        }
    }

    fn owns_partition(&self, pid: u32) -> bool {
        self.loaded.lock().as_ref().is_none_or(|l| l.contains(&pid))
    }

    /// Whether this broker coordinates `group` now.
    pub fn owns(&self, group: &str) -> bool {
        self.owns_partition(self.offsets.partition_for(group))
    }

    /// This broker became the leader of `__consumer_offsets` partition
    /// `partition`: replays what its replica holds beyond what was applied
    /// (commits the previous coordinator wrote), reloads those groups, and
    /// starts coordinating them. Blocking (reads the log).
    pub fn elected(&self, partition: &crate::partition::Partition) -> Result<()> {
        let pid = partition.id;
        self.offsets.replay_partition(partition)?;
        let now = crate::now_ms();
        let stored = self.offsets.groups()?;
        let mut groups = self.groups.lock();
        groups.retain(|id, _| self.offsets.partition_for(id) != pid);
        for (id, s) in stored {
            if self.offsets.partition_for(&id) != pid {
                continue;
            }
            let mut g = match s.record {
                Some(r) => Group::new(r.generation, r.assignor, r.empty_since_ms.or(Some(now))),
                None => Group::new(0, assignor::RANGE.into(), Some(now)),
            };
            g.last_commit_ms = s.last_commit_ms;
            groups.insert(id, g);
        }
        if let Some(l) = self.loaded.lock().as_mut() {
            l.insert(pid);
        }
        tracing::info!(partition = pid, "coordinating the groups of this __consumer_offsets partition");
        Ok(())
    }

    /// This broker no longer leads `partition`: its groups are coordinated
    /// elsewhere now (members asking here get NOT_COORDINATOR and move).
    pub fn resigned(&self, pid: u32) {
        let removed = self.loaded.lock().as_mut().is_some_and(|l| l.remove(&pid));
        if removed {
            self.groups.lock().retain(|id, _| self.offsets.partition_for(id) != pid);
            tracing::info!(
                partition = pid,
                "no longer coordinating the groups of this __consumer_offsets partition"
            );
        }
    }

    pub fn offsets(&self) -> &OffsetStore {
        &self.offsets
    }

    fn new_member_id(&self, client_id: &str) -> String {
        let n = self.next_member.fetch_add(1, Ordering::Relaxed);
        let prefix = if client_id.is_empty() { "member" } else { client_id };
        format!("{prefix}-{:x}-{n}", crate::now_ms())
    }

    /// Queues the group record of `group` (call it under the groups lock).
    fn put_group(&self, topics: &Topics, group: &str, g: &Group) -> Pending {
        match Records::group(group, &g.record()) {
            Ok(records) => self.offsets.write(topics, group, records),
            Err(e) => Pending::ready(Err(e)),
        }
    }

    /// JoinGroup: waits until the rebalance this join is part of completes.
    /// The join that completes a rebalance queues the group record and waits
    /// for it without blocking the runtime; `__consumer_offsets` must exist
    /// ([`OffsetStore::ensure_topic`], blocking), or that join fails.
    pub async fn join(
        &self,
        topics: &Topics,
        req: v1::JoinGroupRequest,
        host: String,
    ) -> Result<v1::JoinGroupResponse> {
        if req.group_id.is_empty() {
            return Err(Error::InvalidRequest("group_id must not be empty".into()));
        }
        if req.topics.is_empty() {
            return Err(Error::InvalidRequest("a member must subscribe to at least one topic".into()));
        }
        let assignor =
            if req.assignor.is_empty() { assignor::RANGE.to_string() } else { req.assignor.clone() };
        if !assignor::is_known(&assignor) {
            return Err(Error::InvalidRequest(format!(
                "unknown assignor '{assignor}' (range, roundrobin, cooperative-sticky)"
            )));
        }
        let session = Duration::from_millis(u64::from(req.session_timeout_ms));
        if !(MIN_SESSION..=MAX_SESSION).contains(&session) {
            return Err(Error::InvalidRequest(format!(
                "session_timeout_ms {} is outside {}..={}",
                req.session_timeout_ms,
                MIN_SESSION.as_millis(),
                MAX_SESSION.as_millis()
            )));
        }
        let rebalance =
            Duration::from_millis(u64::from(req.rebalance_timeout_ms)).clamp(MIN_SESSION, MAX_SESSION);

        let (member_id, mut rx, started_gen, wait, record) = {
            let now = Instant::now();
            let mut groups = self.groups.lock();
            let g =
                groups.entry(req.group_id.clone()).or_insert_with(|| Group::new(0, assignor.clone(), None));
            if g.members.is_empty() {
                g.assignor = assignor.clone();
            } else if g.assignor != assignor {
                return Err(Error::InvalidRequest(format!(
                    "group '{}' uses the '{}' assignor; every member must use the same one",
                    req.group_id, g.assignor
                )));
            }
            let instance = (!req.group_instance_id.is_empty()).then(|| req.group_instance_id.clone());

            let member_id = if req.member_id.is_empty() {
                let new_id = self.new_member_id(&req.client_id);
                if let Some(old_id) = instance.as_ref().and_then(|i| g.instances.get(i)).cloned() {
                    let same = g.members.get(&old_id).is_some_and(|m| m.topics == req.topics);
                    if same && g.state == GroupState::Stable {
                        // A static member back within its session: same
                        // partitions, no rebalance; the old id is fenced.
                        if let Some(mut m) = g.members.remove(&old_id) {
                            m.last_seen = now;
                            m.session_timeout = session;
                            m.rebalance_timeout = rebalance;
                            g.members.insert(new_id.clone(), m);
                        }
                        if let Some(inst) = &instance {
                            g.instances.insert(inst.clone(), new_id.clone());
                        }
                        if g.leader == old_id {
                            g.leader = new_id.clone();
                        }
                        return Ok(join_response(g, &new_id, None));
                    }
                    g.remove_member(&old_id);
                }
                new_id
            } else {
                if let Some(code) = g.member_error(&req.member_id, &req.group_instance_id) {
                    return Ok(v1::JoinGroupResponse {
                        error: error(
                            code,
                            format!(
                                "member '{}' is not in group '{}'; join again without a member id",
                                req.member_id, req.group_id
                            ),
                        ),
                        ..Default::default()
                    });
                }
                req.member_id.clone()
            };

            let owned = from_proto(&req.owned);
            let member = Member {
                instance_id: instance.clone(),
                client_id: req.client_id.clone(),
                host,
                session_timeout: session,
                rebalance_timeout: rebalance,
                topics: req.topics.clone(),
                owned,
                last_seen: now,
                rejoined: true,
                assignment: g.members.get(&member_id).map(|m| m.assignment.clone()).unwrap_or_default(),
                revoking: Vec::new(),
            };
            g.members.insert(member_id.clone(), member);
            if let Some(inst) = instance {
                g.instances.insert(inst, member_id.clone());
            }
            g.empty_since_ms = None;
            let started_gen = g.generation;
            g.start_rebalance(now);
            if let Some(m) = g.members.get_mut(&member_id) {
                m.rejoined = true;
            }
            let wait = g.rebalance_deadline.map_or(rebalance, |d| d.saturating_duration_since(now));
            let rx = g.done.subscribe();
            let record = self.complete_if_ready(topics, &req.group_id, g);
            (member_id, rx, started_gen, wait, record)
        };
        if let Some(record) = record {
            record.wait().await?;
        }

        // Wait (without the lock) for the rebalance to complete.
        let _ = tokio::time::timeout(wait + Duration::from_secs(2), rx.wait_for(|g| *g > started_gen)).await;
        let groups = self.groups.lock();
        let Some(g) = groups.get(&req.group_id) else {
            return Ok(v1::JoinGroupResponse {
                error: error(ErrorCode::UnknownMemberId, "the group was removed while joining"),
                ..Default::default()
            });
        };
        if !g.members.contains_key(&member_id) {
            return Ok(v1::JoinGroupResponse {
                error: error(
                    ErrorCode::UnknownMemberId,
                    "removed from the group during the rebalance; join again",
                ),
                ..Default::default()
            });
        }
        if g.state != GroupState::Stable {
            return Ok(v1::JoinGroupResponse {
                member_id,
                error: error(ErrorCode::RebalanceInProgress, "the rebalance has not completed; join again"),
                ..Default::default()
            });
        }
        Ok(join_response(g, &member_id, None))
    }

    /// Completes the group's rebalance if every member has rejoined; returns
    /// the queued write of its new record. Call it under the groups lock.
    fn complete_if_ready(&self, topics: &Topics, id: &str, g: &mut Group) -> Option<Pending> {
        let all_in = g.members.values().all(|m| m.rejoined);
        if g.state != GroupState::PreparingRebalance || !all_in {
            return None;
        }
        complete(g, topics);
        Some(self.put_group(topics, id, g))
    }

    pub fn sync(&self, req: &v1::SyncGroupRequest) -> Result<v1::SyncGroupResponse> {
        let mut groups = self.groups.lock();
        let g = groups.get_mut(&req.group_id).ok_or_else(|| Error::UnknownGroup(req.group_id.clone()))?;
        if let Some(code) = g.member_error(&req.member_id, &req.group_instance_id) {
            return Ok(v1::SyncGroupResponse {
                error: error(code, "not a member of the group; join again"),
                assignment: vec![],
            });
        }
        if g.state == GroupState::PreparingRebalance {
            return Ok(v1::SyncGroupResponse {
                error: error(ErrorCode::RebalanceInProgress, "a rebalance is in progress; join again"),
                assignment: vec![],
            });
        }
        if req.generation != g.generation {
            return Ok(v1::SyncGroupResponse {
                error: error(
                    ErrorCode::IllegalGeneration,
                    format!("generation {} is not the group's current {}", req.generation, g.generation),
                ),
                assignment: vec![],
            });
        }
        let m = g.members.get_mut(&req.member_id).ok_or_else(|| Error::Storage("member vanished".into()))?;
        m.last_seen = Instant::now();
        Ok(v1::SyncGroupResponse { error: None, assignment: to_proto(&m.assignment) })
    }

    pub fn heartbeat(&self, req: &v1::HeartbeatRequest) -> Result<v1::HeartbeatResponse> {
        let mut groups = self.groups.lock();
        let g = groups.get_mut(&req.group_id).ok_or_else(|| Error::UnknownGroup(req.group_id.clone()))?;
        if let Some(code) = g.member_error(&req.member_id, &req.group_instance_id) {
            return Ok(v1::HeartbeatResponse { error: error(code, "not a member of the group; join again") });
        }
        let (state, generation) = (g.state, g.generation);
        let m = g.members.get_mut(&req.member_id).ok_or_else(|| Error::Storage("member vanished".into()))?;
        m.last_seen = Instant::now();
        if state == GroupState::PreparingRebalance && !m.rejoined {
            return Ok(v1::HeartbeatResponse {
                error: error(ErrorCode::RebalanceInProgress, "the group is rebalancing; join again"),
            });
        }
        if req.generation != generation {
            return Ok(v1::HeartbeatResponse {
                error: error(
                    ErrorCode::IllegalGeneration,
                    format!("generation {} is not the group's current {generation}", req.generation),
                ),
            });
        }
        Ok(v1::HeartbeatResponse { error: None })
    }

    /// LeaveGroup. Blocking: waits for the group record it writes.
    pub fn leave(&self, topics: &Topics, req: &v1::LeaveGroupRequest) -> Result<()> {
        self.offsets.ensure_topic(topics)?;
        let record = {
            let mut groups = self.groups.lock();
            let g = groups.get_mut(&req.group_id).ok_or_else(|| Error::UnknownGroup(req.group_id.clone()))?;
            let id = if !req.member_id.is_empty() {
                req.member_id.clone()
            } else {
                g.instances.get(&req.group_instance_id).cloned().unwrap_or_default()
            };
            if !g.members.contains_key(&id) {
                return Ok(());
            }
            g.remove_member(&id);
            if on_membership_change(g, Instant::now()) {
                Some(self.put_group(topics, &req.group_id, g))
            } else {
                // The others rebalance; they may all have rejoined already.
                self.complete_if_ready(topics, &req.group_id, g)
            }
        };
        record.map_or(Ok(()), Pending::wait_blocking)
    }

    /// Removes members whose session expired and completes rebalances whose
    /// timeout passed; expires offsets of long-idle empty groups. Called every
    /// ~100 ms, blocking: waits for the writes it queues.
    pub fn tick(&self, topics: &Topics) {
        let now = Instant::now();
        let now_ms = crate::now_ms();
        let mut to_complete = Vec::new();
        let mut to_expire = Vec::new();
        let mut writes: Vec<(String, &'static str, Pending)> = Vec::new();
        {
            let mut groups = self.groups.lock();
            // Only the groups this broker coordinates: another broker's are
            // written by it.
            for (id, g) in groups.iter_mut().filter(|(id, _)| self.owns(id)) {
                let expired: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, m)| {
                        // Members waiting in JoinGroup don't heartbeat.
                        let waiting = g.state == GroupState::PreparingRebalance && m.rejoined;
                        !waiting && now.duration_since(m.last_seen) > m.session_timeout
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for m in &expired {
                    tracing::info!(group = %id, member = %m, "member session expired");
                    g.remove_member(m);
                }
                if !expired.is_empty() && on_membership_change(g, now) {
                    writes.push((id.clone(), "persisting group", self.put_group(topics, id, g)));
                }
                if g.state == GroupState::PreparingRebalance {
                    let late = g.rebalance_deadline.is_some_and(|d| now >= d);
                    if late || g.members.values().all(|m| m.rejoined) {
                        to_complete.push(id.clone());
                    }
                }
                if g.expired(now_ms, self.retention) {
                    to_expire.push(id.clone());
                }
            }
            for id in to_complete {
                if let Some(g) = groups.get_mut(&id) {
                    complete(g, topics);
                    let write = self.put_group(topics, &id, g);
                    writes.push((id, "persisting group", write));
                }
            }
            for id in to_expire {
                groups.remove(&id);
                tracing::info!(group = %id, "offsets expired (group empty and no commit for offsets.retention.minutes)");
                let write = self.offsets.delete_group(topics, &id);
                writes.push((id, "expiring group offsets", write));
            }
        }
        for (id, what, write) in writes {
            if let Err(e) = write.wait_blocking() {
                tracing::error!(group = %id, error = %e, "{what}");
            }
        }
    }

    /// Validates and stores a commit. Blocking: creates `__consumer_offsets`
    /// if needed and waits until the commit is durable.
    pub fn commit(&self, topics: &Topics, req: &v1::CommitOffsetsRequest) -> Result<()> {
        self.offsets.ensure_topic(topics)?;
        self.start_commit(topics, req)?.wait_blocking()
    }

    /// Validates a commit and queues it, in the order commits are validated;
    /// the result resolves once it is durable and applied. Never blocks;
    /// `__consumer_offsets` must exist ([`OffsetStore::ensure_topic`]).
    pub fn start_commit(&self, topics: &Topics, req: &v1::CommitOffsetsRequest) -> Result<Pending> {
        if req.group_id.is_empty() {
            return Err(Error::InvalidRequest("group_id must not be empty".into()));
        }
        let mut entries = Vec::with_capacity(req.offsets.len());
        let now = crate::now_ms();
        for o in &req.offsets {
            if o.offset < 0 {
                return Err(Error::InvalidRequest(format!(
                    "offset {} for {}-{} is negative; commit the next offset to read (>= 0)",
                    o.offset, o.topic, o.partition
                )));
            }
            topics.partition(&o.topic, o.partition)?;
            entries.push((
                o.topic.clone(),
                o.partition,
                Committed { offset: o.offset, metadata: o.metadata.clone(), commit_ms: now },
            ));
        }
        // Encoded before the lock: metadata can be large.
        let records = Records::commit(&req.group_id, &entries)?;
        let mut groups = self.groups.lock();
        {
            let standalone = req.member_id.is_empty() && req.generation < 0;
            if standalone {
                let g = groups
                    .entry(req.group_id.clone())
                    .or_insert_with(|| Group::new(0, assignor::RANGE.into(), Some(now)));
                if !g.members.is_empty() {
                    return Err(Error::CommitRejected(format!(
                        "group '{}' has active members; commit as a member (with member id and generation)",
                        req.group_id
                    )));
                }
            } else {
                let g = groups.get(&req.group_id).ok_or_else(|| Error::UnknownGroup(req.group_id.clone()))?;
                if let Some(code) = g.member_error(&req.member_id, &req.group_instance_id) {
                    let why = if code == ErrorCode::FencedInstanceId {
                        "is fenced by a newer instance"
                    } else {
                        "is not a member"
                    };
                    return Err(Error::CommitRejected(format!(
                        "commit rejected: '{}' {why} of group '{}'; rejoin the group",
                        req.member_id, req.group_id
                    )));
                }
                if req.generation != g.generation {
                    return Err(Error::CommitRejected(format!(
                        "commit rejected: member '{}' is at generation {} but group '{}' is at generation {} (fenced; rejoin the group)",
                        req.member_id, req.generation, req.group_id, g.generation
                    )));
                }
                let m = &g.members[&req.member_id];
                for (t, p, _) in &entries {
                    let owns = |tps: &[Tp]| tps.iter().any(|(at, ap)| at == t && ap == p);
                    if !owns(&m.assignment) && !owns(&m.revoking) {
                        return Err(Error::CommitRejected(format!(
                            "commit rejected: {t}-{p} is not assigned to member '{}' in generation {}",
                            req.member_id, g.generation
                        )));
                    }
                }
            }
        }
        if let Some(g) = groups.get_mut(&req.group_id) {
            g.last_commit_ms = Some(now);
        }
        // Queued under the lock: the write order is the validation order.
        Ok(self.offsets.write(topics, &req.group_id, records))
    }

    fn known(&self, group: &str) -> Result<()> {
        if self.groups.lock().contains_key(group) {
            Ok(())
        } else {
            Err(Error::UnknownGroup(group.to_string()))
        }
    }

    pub fn fetch_offsets(&self, req: &v1::FetchOffsetsRequest) -> Result<v1::FetchOffsetsResponse> {
        self.known(&req.group_id)?;
        let committed = self.offsets.offsets(&req.group_id)?;
        let wanted = from_proto(&req.partitions);
        let offsets = if wanted.is_empty() {
            committed
                .into_iter()
                .map(|(topic, partition, c)| v1::OffsetEntry {
                    topic,
                    partition,
                    offset: c.offset,
                    metadata: c.metadata,
                })
                .collect()
        } else {
            wanted
                .into_iter()
                .map(|(topic, partition)| {
                    let c = committed.iter().find(|(t, p, _)| *t == topic && *p == partition);
                    v1::OffsetEntry {
                        offset: c.map_or(-1, |c| c.2.offset),
                        metadata: c.map(|c| c.2.metadata.clone()).unwrap_or_default(),
                        topic,
                        partition,
                    }
                })
                .collect()
        };
        Ok(v1::FetchOffsetsResponse { offsets })
    }

    /// The groups this broker coordinates.
    pub fn list(&self) -> v1::ListGroupsResponse {
        let groups = self.groups.lock();
        let mut out: Vec<v1::GroupListing> = groups
            .iter()
            .filter(|(id, _)| self.owns(id))
            .map(|(id, g)| v1::GroupListing {
                group_id: id.clone(),
                state: g.state.name().to_string(),
                members: g.members.len() as u32,
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        v1::ListGroupsResponse { groups: out }
    }

    pub fn describe(&self, topics: &Topics, group: &str) -> Result<v1::DescribeGroupResponse> {
        let (mut resp, owners) = {
            let groups = self.groups.lock();
            let g = groups.get(group).ok_or_else(|| Error::UnknownGroup(group.to_string()))?;
            let mut owners: BTreeMap<Tp, String> = BTreeMap::new();
            let members = g
                .members
                .iter()
                .map(|(id, m)| {
                    for tp in &m.assignment {
                        owners.insert(tp.clone(), id.clone());
                    }
                    v1::MemberDescription {
                        member_id: id.clone(),
                        group_instance_id: m.instance_id.clone().unwrap_or_default(),
                        client_id: m.client_id.clone(),
                        host: m.host.clone(),
                        assignment: to_proto(&m.assignment),
                    }
                })
                .collect();
            let resp = v1::DescribeGroupResponse {
                group_id: group.to_string(),
                state: g.state.name().to_string(),
                generation: g.generation,
                assignor: g.assignor.clone(),
                members,
                offsets: vec![],
            };
            (resp, owners)
        };
        let mut rows: BTreeMap<Tp, i64> =
            self.offsets.offsets(group)?.into_iter().map(|(t, p, c)| ((t, p), c.offset)).collect();
        for tp in owners.keys() {
            rows.entry(tp.clone()).or_insert(-1);
        }
        for ((topic, partition), committed) in rows {
            let end =
                topics.partition(&topic, partition).map(|p| p.with_log(|l| l.high_watermark())).unwrap_or(-1);
            let lag = if committed >= 0 && end >= 0 { (end - committed).max(0) } else { -1 };
            resp.offsets.push(v1::PartitionLag {
                member_id: owners.get(&(topic.clone(), partition)).cloned().unwrap_or_default(),
                topic,
                partition,
                committed_offset: committed,
                log_end_offset: end,
                lag,
            });
        }
        Ok(resp)
    }

    /// Deletes an empty group and its offsets. Blocking.
    pub fn delete(&self, topics: &Topics, group: &str) -> Result<()> {
        self.offsets.ensure_topic(topics)?;
        let (write, removed) = {
            let mut groups = self.groups.lock();
            require_empty(&groups, group)?;
            (self.offsets.delete_group(topics, group), groups.remove(group))
        };
        if let Err(e) = write.wait_blocking() {
            // Still stored: still there.
            if let Some(g) = removed {
                self.groups.lock().entry(group.to_string()).or_insert(g);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Moves a group's offsets for one topic; only while the group is empty.
    /// Blocking.
    pub fn reset(
        &self,
        topics: &Topics,
        group: &str,
        topic: &str,
        partitions: &[u32],
        to: ResetTo,
        dry_run: bool,
    ) -> Result<Vec<v1::OffsetEntry>> {
        require_empty(&self.groups.lock(), group)?;
        let t = topics.get(topic)?;
        let chosen: Vec<u32> =
            if partitions.is_empty() { (0..t.partition_count()).collect() } else { partitions.to_vec() };
        let mut entries = Vec::new();
        let now = crate::now_ms();
        for p in chosen {
            let part = t.partition(p)?;
            let offset = part.with_log(|log| -> Result<i64> {
                let (start, end) = (log.log_start_offset(), log.high_watermark());
                Ok(match to {
                    ResetTo::Earliest => start,
                    ResetTo::Latest => end,
                    ResetTo::Timestamp(ts) => log.offset_for_time(ts)?.map_or(end, |(o, _)| o),
                    ResetTo::Offset(o) if o < 0 => {
                        return Err(Error::InvalidRequest(format!("offset {o} is negative")));
                    }
                    // Kafka's rule: an offset outside the log is moved to its nearest end.
                    ResetTo::Offset(o) => o.clamp(start, end),
                })
            })?;
            entries.push((
                topic.to_string(),
                p,
                Committed { offset, metadata: String::new(), commit_ms: now },
            ));
        }
        if !dry_run {
            let records = Records::commit(group, &entries)?;
            self.offsets.ensure_topic(topics)?;
            let write = {
                let mut groups = self.groups.lock();
                require_empty(&groups, group)?;
                if let Some(g) = groups.get_mut(group) {
                    g.last_commit_ms = Some(now);
                }
                self.offsets.write(topics, group, records)
            };
            write.wait_blocking()?;
        }
        Ok(entries
            .into_iter()
            .map(|(topic, partition, c)| v1::OffsetEntry {
                topic,
                partition,
                offset: c.offset,
                metadata: String::new(),
            })
            .collect())
    }
}

fn join_response(g: &Group, member_id: &str, err: Option<v1::PartitionError>) -> v1::JoinGroupResponse {
    v1::JoinGroupResponse {
        error: err,
        member_id: member_id.to_string(),
        generation: g.generation,
        assignor: g.assignor.clone(),
        leader_id: g.leader.clone(),
        members: g.members.keys().cloned().collect(),
    }
}

fn require_empty(groups: &HashMap<String, Group>, group: &str) -> Result<()> {
    let g = groups.get(group).ok_or_else(|| Error::UnknownGroup(group.to_string()))?;
    if !g.members.is_empty() {
        return Err(Error::GroupNotEmpty(group.to_string(), g.members.len()));
    }
    Ok(())
}

/// After members left or expired: empty the group, or rebalance the rest.
/// Returns true when the group became empty (its record is to be persisted).
fn on_membership_change(g: &mut Group, now: Instant) -> bool {
    if g.members.is_empty() {
        g.state = GroupState::Empty;
        g.rebalance_deadline = None;
        g.empty_since_ms = Some(crate::now_ms());
        // Wake anyone still waiting in JoinGroup.
        g.done.send_replace(g.generation);
        return true;
    }
    g.start_rebalance(now);
    false
}

/// Ends a rebalance: drops members that did not rejoin, bumps the
/// generation, assigns.
fn complete(g: &mut Group, topics: &Topics) {
    let stragglers: Vec<String> =
        g.members.iter().filter(|(_, m)| !m.rejoined).map(|(id, _)| id.clone()).collect();
    for id in stragglers {
        tracing::info!(member = %id, "removed: did not rejoin within the rebalance timeout");
        g.remove_member(&id);
    }
    g.generation += 1;
    g.rebalance_deadline = None;
    if g.members.is_empty() {
        g.state = GroupState::Empty;
        g.empty_since_ms = Some(crate::now_ms());
        g.done.send_replace(g.generation);
        return;
    }
    let mut partitions = BTreeMap::new();
    for m in g.members.values() {
        for t in &m.topics {
            if let Ok(topic) = topics.get(t) {
                partitions.insert(t.clone(), topic.partition_count());
            }
        }
    }
    let subs: Vec<assignor::MemberSubscription<'_>> = g
        .members
        .iter()
        .map(|(id, m)| assignor::MemberSubscription { id, topics: &m.topics, owned: &m.owned })
        .collect();
    let mut target = assignor::assign(&g.assignor, &subs, &partitions);
    if assignor::is_cooperative(&g.assignor) {
        // A partition still owned by someone else is withheld this
        // generation; its owner gives it up and rejoins, and the next
        // rebalance hands it over.
        let owners: HashMap<&Tp, &str> =
            g.members.iter().flat_map(|(id, m)| m.owned.iter().map(move |tp| (tp, id.as_str()))).collect();
        for (id, tps) in target.iter_mut() {
            tps.retain(|tp| owners.get(tp).is_none_or(|o| *o == id.as_str()));
        }
    }
    for (id, m) in g.members.iter_mut() {
        m.assignment = target.remove(id).unwrap_or_default();
    }
    let assigned: std::collections::HashSet<Tp> =
        g.members.values().flat_map(|m| m.assignment.iter().cloned()).collect();
    for m in g.members.values_mut() {
        m.revoking = m.owned.iter().filter(|tp| !assigned.contains(*tp)).cloned().collect();
    }
    g.leader = g.members.keys().next().cloned().unwrap_or_default();
    g.state = GroupState::Stable;
    tracing::info!(generation = g.generation, members = g.members.len(), "group rebalanced");
    g.done.send_replace(g.generation);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::TopicConfig;
    use crate::store::Store;
    use crate::topics::NewTopic;

    /// A broker's storage (RocksDB + topics) in a temporary directory with a
    /// coordinator over it, the way `Broker::start` opens them; `restart`
    /// closes everything and opens the directory again.
    pub(crate) struct Env {
        pub dir: tempfile::TempDir,
        open: Option<(Arc<Store>, Topics, Coordinator)>,
        retention: Duration,
        partitions: u32,
    }

    impl Env {
        /// Topic `t` (4 partitions) and `partitions` partitions of
        /// `__consumer_offsets`.
        pub(crate) fn new(partitions: u32, retention: Duration) -> Env {
            let mut env = Env { dir: tempfile::tempdir().unwrap(), open: None, retention, partitions };
            let (store, topics) = env.open_storage();
            let new =
                NewTopic { name: "t".into(), partitions: 4, replication_factor: 1, configs: BTreeMap::new() };
            topics.create(vec![new], false, crate::now_ms()).unwrap();
            let c = env.load(&store, &topics).unwrap();
            env.open = Some((store, topics, c));
            env
        }

        fn open_storage(&self) -> (Arc<Store>, Topics) {
            let dir = self.dir.path();
            let store = Store::open(&dir.join("rocksdb"), 8 << 20, 8 << 20).unwrap();
            let topics = Topics::load(
                store.clone(),
                crate::log::fs::real(),
                dir,
                TopicConfig::default(),
                crate::now_ms(),
            )
            .unwrap();
            (store, topics)
        }

        fn load(&self, store: &Arc<Store>, topics: &Topics) -> Result<Coordinator> {
            let offsets = OffsetStore::open(store.clone(), topics, self.partitions)?;
            Coordinator::load(offsets, self.retention)
        }

        pub(crate) fn store(&self) -> &Arc<Store> {
            &self.open.as_ref().unwrap().0
        }

        pub(crate) fn topics(&self) -> &Topics {
            &self.open.as_ref().unwrap().1
        }

        pub(crate) fn c(&self) -> &Coordinator {
            &self.open.as_ref().unwrap().2
        }

        /// Closes everything and opens the same directory again, as a broker
        /// restart does; returns what loading the groups said.
        pub(crate) fn restart(&mut self) -> Result<()> {
            if let Some((store, topics, c)) = self.open.take() {
                drop(c);
                topics.close_all();
                drop(topics);
                drop(store);
            }
            let (store, topics) = self.open_storage();
            let c = self.load(&store, &topics)?;
            self.open = Some((store, topics, c));
            Ok(())
        }
    }

    pub(crate) fn standalone(group: &str, partition: u32, offset: i64) -> v1::CommitOffsetsRequest {
        member_commit(group, "", -1, partition, offset, String::new())
    }

    pub(crate) fn member_commit(
        group: &str,
        member: &str,
        generation: i32,
        partition: u32,
        offset: i64,
        metadata: String,
    ) -> v1::CommitOffsetsRequest {
        v1::CommitOffsetsRequest {
            group_id: group.into(),
            member_id: member.into(),
            generation,
            group_instance_id: String::new(),
            offsets: vec![v1::OffsetEntry { topic: "t".into(), partition, offset, metadata }],
        }
    }

    /// The group's committed offset for `t-partition` (-1: none).
    pub(crate) fn committed(c: &Coordinator, group: &str, partition: u32) -> Result<i64> {
        let resp = c.fetch_offsets(&v1::FetchOffsetsRequest {
            group_id: group.into(),
            partitions: vec![v1::TopicPartitions { topic: "t".into(), partitions: vec![partition] }],
        })?;
        Ok(resp.offsets.first().map_or(-1, |o| o.offset))
    }

    /// A group that keeps committing (outside any membership, as a
    /// standalone consumer does) keeps its offsets past
    /// offsets.retention.minutes; once it stops, they expire.
    #[test]
    fn a_group_that_keeps_committing_keeps_its_offsets_past_retention() {
        let env = Env::new(1, Duration::from_millis(1000));
        let (c, topics) = (env.c(), env.topics());
        c.commit(topics, &standalone("busy", 0, 1)).unwrap();
        let start = Instant::now();
        let mut offset = 1;
        while start.elapsed() < Duration::from_millis(3000) {
            std::thread::sleep(Duration::from_millis(200));
            offset += 1;
            c.commit(topics, &standalone("busy", 0, offset)).unwrap();
            c.tick(topics);
            let got = committed(c, "busy", 0).map_err(|e| e.to_string());
            assert_eq!(
                got,
                Ok(offset),
                "after {:?} of commits every 200 ms (retention 1 s) the group's offset is {got:?}",
                start.elapsed()
            );
        }
        // Silent for longer than the retention: expired.
        std::thread::sleep(Duration::from_millis(1300));
        c.tick(topics);
        let after = committed(c, "busy", 0);
        assert!(matches!(after, Err(Error::UnknownGroup(_))), "{after:?}");
    }

    /// A member validated in generation N whose write is slow (large
    /// metadata to encode) must not land after the commit of the member that
    /// owns the partition in generation N+1.
    #[test]
    fn a_fenced_members_commit_never_overwrites_the_new_owners() {
        let env = Env::new(1, Duration::from_secs(3600));
        let (c, topics) = (env.c(), env.topics());
        // Creates __consumer_offsets.
        c.commit(topics, &standalone("warm-up", 0, 1)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        for round in 0..3i64 {
            let group = format!("fenced-{round}");
            let join = v1::JoinGroupRequest {
                group_id: group.clone(),
                member_id: String::new(),
                group_instance_id: String::new(),
                session_timeout_ms: 30_000,
                rebalance_timeout_ms: 30_000,
                topics: vec!["t".into()],
                assignor: String::new(),
                owned: vec![],
                client_id: "old".into(),
            };
            let joined = rt.block_on(c.join(topics, join, "test".into())).unwrap();
            assert!(joined.error.is_none(), "{joined:?}");
            let (old, generation) = (joined.member_id.clone(), joined.generation);
            // 2 Mi control characters: ~12 MiB of JSON to encode.
            let slow = "\u{1}".repeat(2 << 20);
            let (old_offset, new_offset) = (100 + round, 200 + round);
            let old_result = std::thread::scope(|s| {
                let writer = s.spawn(|| {
                    c.commit(topics, &member_commit(&group, &old, generation, 0, old_offset, slow))
                });
                std::thread::sleep(Duration::from_millis(3));
                // The partition moves to a new member in the next generation;
                // the old member id is gone (fenced).
                {
                    let mut groups = c.groups.lock();
                    let g = groups.get_mut(&group).unwrap();
                    let m = g.members.remove(&old).unwrap();
                    g.members.insert("new".into(), m);
                    g.generation += 1;
                }
                let new = member_commit(&group, "new", generation + 1, 0, new_offset, String::new());
                c.commit(topics, &new).unwrap();
                writer.join().unwrap()
            });
            let stored = committed(c, &group, 0).unwrap();
            assert_eq!(
                stored,
                new_offset,
                "round {round}: the new owner committed {new_offset} after the old member was fenced \
                 (the old member's commit of {old_offset} returned {:?}), but {stored} is stored",
                old_result.map_err(|e| e.to_string())
            );
        }
    }
}

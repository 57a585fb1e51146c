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
//!
//! The coordinator's work is split by what it does — [`membership`] (join,
//! sync, heartbeat, leave), [`rebalance`] (completing a rebalance and the
//! assignment), [`commits`], [`admin`] and [`expiry`] — all `impl
//! Coordinator` blocks over the one state defined here.

mod admin;
pub mod assignor;
pub mod client;
mod commits;
mod expiry;
mod membership;
pub mod offsets;
mod rebalance;

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
    /// A Kafka-protocol member's (protocol, metadata) offers; empty for
    /// native members.
    protocols: Vec<(String, Vec<u8>)>,
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
    /// Set for a Kafka classic-protocol group (client-side assignment).
    client: Option<client::ClientGroup>,
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
            client: None,
        }
    }

    /// A group as stored (its record, if any, and last commit): members
    /// rejoin after a restart or a coordinator move.
    fn restored(record: Option<GroupRecord>, last_commit_ms: Option<i64>, now_ms: i64) -> Group {
        let mut g = match record {
            Some(r) => Group::new(r.generation, r.assignor, r.empty_since_ms.or(Some(now_ms))),
            None => Group::new(0, assignor::RANGE.into(), Some(now_ms)),
        };
        g.last_commit_ms = last_commit_ms;
        g
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
            groups.insert(id, Group::restored(stored.record, stored.last_commit_ms, now));
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
            groups.insert(id, Group::restored(s.record, s.last_commit_ms, now));
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

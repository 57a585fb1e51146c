//! The client's picture of the cluster: which brokers there are and how to
//! reach them, and which broker leads each partition, at which leader epoch.
//!
//! Why a cache: every produce and fetch must go to the partition's leader,
//! and asking for metadata before each request would double the round
//! trips. So the cache is read on every request and refreshed only when a
//! request says it is wrong — a NOT_LEADER (whose hint, when it has one,
//! fixes the entry without a round trip), a partition without a leader, a
//! broker that cannot be reached.
//!
//! Refreshes are single-flight (callers that asked while one was on its way
//! take its result) and rate limited, with a growing pause while they fail,
//! so a storm of errors from many partitions costs one Metadata request
//! every [`MIN_REFRESH_INTERVAL`] at most. A refresh asks any broker that
//! answers: the one that answered last first, then every broker the
//! metadata named, then the bootstrap list — the bootstrap broker may be
//! the one that died.
//!
//! Connections are opened lazily per broker, reused by everything that
//! talks to it, and dropped when a call on them fails in transport, so the
//! next call connects again (maybe to a new address).
//!
//! One rule keeps clients working behind a port-forward or proxy: when the
//! cluster is a single broker, the address that answered is that broker's,
//! whatever it advertises. With more brokers, their advertised addresses
//! are used, as they must be reachable from clients anyway.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;
use tributary_proto::v1;

use crate::connection::{bootstrap_list, same_address, Connection};
use crate::error::{Error, Recovery, Result};

/// Least time between two metadata requests caused by errors.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest pause between metadata requests while they fail.
const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(2);
/// How long one broker may take to answer Metadata before the next is
/// asked: a healthy broker answers from memory.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A partition's leader as the cache knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Leader {
    /// Broker id; -1 while the partition has no leader.
    pub id: i32,
    /// -1 when not known.
    pub epoch: i32,
}

impl Leader {
    pub const NONE: Leader = Leader { id: -1, epoch: -1 };

    /// The broker to send to, if there is one.
    pub fn broker(self) -> Option<i32> {
        (self.id >= 0).then_some(self.id)
    }
}

/// A broker the cluster told us about.
#[derive(Clone, Debug)]
pub(crate) struct BrokerEntry {
    pub id: i32,
    /// The address it advertises.
    pub address: String,
    /// Where we connect to it: the advertised address, or for a one-broker
    /// cluster the address that answered.
    dial: String,
    /// Opened lazily, up to the cluster's connections per broker.
    conns: Vec<Connection>,
}

/// What the cache holds.
#[derive(Debug, Default)]
struct State {
    brokers: BTreeMap<i32, BrokerEntry>,
    topics: HashMap<String, TopicLeaders>,
    /// Metadata was read at least once.
    fetched: bool,
}

#[derive(Debug, Default, Clone)]
struct TopicLeaders {
    /// Partition count (the highest partition number + 1).
    count: u32,
    leaders: HashMap<u32, Leader>,
}

/// The refresh gate: one metadata request at a time, and when the next may
/// go out.
#[derive(Debug, Default)]
struct Gate {
    last_attempt: Option<Instant>,
    failures: u32,
}

impl Gate {
    /// When an error-driven refresh may go out next.
    fn next_allowed(&self) -> Option<Instant> {
        let pause = if self.failures == 0 {
            MIN_REFRESH_INTERVAL
        } else {
            MIN_REFRESH_INTERVAL.saturating_mul(1 << self.failures.min(5)).min(MAX_REFRESH_BACKOFF)
        };
        self.last_attempt.map(|t| t + pause)
    }
}

/// The cluster metadata cache and the connections to its brokers; shared by
/// everything one client (producer, consumer, admin, group member) does.
pub(crate) struct Cluster {
    bootstrap: Vec<String>,
    /// Connections kept per broker (the producer spreads requests over two).
    per_broker: usize,
    state: RwLock<State>,
    /// The connection that answered last: where calls any broker can serve
    /// go first.
    home: RwLock<Connection>,
    gate: tokio::sync::Mutex<Gate>,
    /// Bumped by every metadata answer applied.
    version: AtomicU64,
    /// Spreads requests over a broker's connections.
    next_conn: AtomicUsize,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("bootstrap", &self.bootstrap)
            .field("brokers", &self.state.read().brokers.len())
            .finish()
    }
}

impl Cluster {
    /// Connects to the first broker of the bootstrap list
    /// (`HOST:PORT,HOST:PORT,...`) that answers; the error names every
    /// address tried when none does.
    pub async fn connect(bootstrap: &str, per_broker: usize) -> Result<Cluster> {
        let list = bootstrap_list(bootstrap)?;
        let mut failed = Vec::new();
        for address in &list {
            match Connection::open(address).await {
                Ok(conn) => return Ok(Cluster::with_home(list.clone(), conn, per_broker)),
                Err(e) => failed.push((address.clone(), e)),
            }
        }
        Err(none_answered("cannot connect to any bootstrap broker", failed))
    }

    /// A cluster known so far only by one open connection (also for tests).
    pub fn with_home(bootstrap: Vec<String>, home: Connection, per_broker: usize) -> Cluster {
        Cluster {
            bootstrap,
            per_broker: per_broker.max(1),
            state: RwLock::new(State::default()),
            home: RwLock::new(home),
            gate: tokio::sync::Mutex::new(Gate::default()),
            version: AtomicU64::new(0),
            next_conn: AtomicUsize::new(0),
        }
    }

    /// The connection that answered last.
    pub fn home(&self) -> Connection {
        self.home.read().clone()
    }

    /// Changes with every metadata answer applied: a caller that saw the
    /// cache wrong passes the version it saw to [`Cluster::refresh_soon`].
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The leader of `topic`-`partition`, when the cache has the partition.
    pub fn leader(&self, topic: &str, partition: u32) -> Option<Leader> {
        let state = self.state.read();
        let t = state.topics.get(topic)?;
        (partition < t.count).then(|| t.leaders.get(&partition).copied().unwrap_or(Leader::NONE))
    }

    /// How many partitions `topic` has, when the cache knows the topic.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.state.read().topics.get(topic).map(|t| t.count)
    }

    /// Every topic with its partition count.
    pub fn topics(&self) -> BTreeMap<String, u32> {
        self.state.read().topics.iter().map(|(name, t)| (name.clone(), t.count)).collect()
    }

    /// The brokers as last described, by id.
    pub fn brokers(&self) -> Vec<BrokerEntry> {
        self.state.read().brokers.values().cloned().collect()
    }

    /// A connection to broker `id` (one of its connections, in turn), opened
    /// lazily; `None` when the broker is not known.
    pub fn connection(&self, id: i32) -> Option<Connection> {
        let turn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.connection_at(id, turn)
    }

    /// Connection number `index` (modulo the connections per broker) of
    /// broker `id`.
    fn connection_at(&self, id: i32, index: usize) -> Option<Connection> {
        let index = index % self.per_broker;
        if let Some(c) = self.state.read().brokers.get(&id).and_then(|b| b.conns.get(index)) {
            return Some(c.clone());
        }
        let mut state = self.state.write();
        let broker = state.brokers.get_mut(&id)?;
        while broker.conns.len() <= index {
            match Connection::lazy(&broker.dial) {
                Ok(c) => broker.conns.push(c),
                Err(e) => {
                    tracing::warn!("broker {id} advertises an unusable address '{}': {e}", broker.dial);
                    return None;
                }
            }
        }
        broker.conns.get(index).cloned()
    }

    /// A call to broker `id` failed in transport: its connections are
    /// dropped, so the next call connects again.
    pub fn broker_failed(&self, id: i32) {
        if let Some(b) = self.state.write().brokers.get_mut(&id) {
            b.conns.clear();
        }
    }

    /// The partition's cached leader is wrong and no hint said who leads
    /// now: the next lookup finds no leader, and whatever the next metadata
    /// says is taken.
    pub fn invalidate(&self, topic: &str, partition: u32) {
        if let Some(t) = self.state.write().topics.get_mut(topic) {
            t.leaders.insert(partition, Leader::NONE);
        }
    }

    /// Applies the leader hint of a NOT_LEADER (or FENCED_LEADER_EPOCH)
    /// answer. True when the cache now names a leader to try; otherwise the
    /// entry is invalidated and a refresh is due.
    pub fn apply_hint(&self, topic: &str, partition: u32, e: &v1::PartitionError) -> bool {
        let applied = self.state.write().apply_hint(topic, partition, e, self.per_broker);
        if !applied {
            self.invalidate(topic, partition);
        }
        applied
    }

    /// The connection to the broker `id`, as a FindCoordinator answer named
    /// it: the cluster's own connection when metadata lists the broker,
    /// otherwise one to `address`.
    pub async fn broker_connection(&self, id: i32, address: &str) -> Result<Connection> {
        if !self.state.read().fetched {
            // The one-broker rule needs the broker list.
            if let Err(e) = self.refresh_now().await {
                tracing::debug!("metadata before reaching broker {id} failed: {e}");
            }
        }
        if let Some(c) = self.connection(id) {
            return Ok(c);
        }
        if address.trim().is_empty() {
            return Err(Error::status(
                tonic::Code::Unavailable,
                format!("broker {id} is not in the cluster metadata and no address was given for it"),
            ));
        }
        self.state.write().brokers.insert(
            id,
            BrokerEntry {
                id,
                address: address.to_string(),
                dial: address.trim().to_string(),
                conns: Vec::new(),
            },
        );
        self.connection(id)
            .ok_or_else(|| Error::InvalidArgument(format!("broker {id} has an unusable address '{address}'")))
    }

    /// Reads metadata now (a lookup that must see the current topics):
    /// single-flight, but not rate limited.
    pub async fn refresh_now(&self) -> Result<()> {
        let seen = self.version();
        let mut gate = self.gate.lock().await;
        if self.version() != seen {
            return Ok(());
        }
        self.fetch(&mut gate).await
    }

    /// Reads metadata after a request found the cache wrong, unless someone
    /// already did since the caller looked (`seen`); waits out the rate
    /// limit (and the backoff while refreshes fail) first.
    pub async fn refresh_soon(&self, seen: u64) -> Result<()> {
        let mut gate = self.gate.lock().await;
        if self.version() != seen {
            return Ok(());
        }
        if let Some(at) = gate.next_allowed() {
            tokio::time::sleep_until(at).await;
        }
        self.fetch(&mut gate).await
    }

    async fn fetch(&self, gate: &mut Gate) -> Result<()> {
        gate.last_attempt = Some(Instant::now());
        let asked = self
            .call_any_with(|c| async move {
                let request = v1::MetadataRequest { topics: Vec::new() };
                c.call("a metadata request", METADATA_TIMEOUT, c.log().metadata(request)).await
            })
            .await;
        match asked {
            Ok((response, answered)) => {
                self.state.write().apply(response, &answered, self.per_broker);
                self.version.fetch_add(1, Ordering::AcqRel);
                gate.failures = 0;
                Ok(())
            }
            Err(e) => {
                gate.failures = gate.failures.saturating_add(1);
                tracing::debug!(failures = gate.failures, "metadata refresh failed: {e}");
                Err(e)
            }
        }
    }

    /// Runs a call any broker can answer: on the broker that answered last,
    /// and while it fails in a way another broker may not (unreachable,
    /// unavailable), on each known broker and bootstrap address in turn.
    /// The error names every address tried.
    pub async fn call_any<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.call_any_with(call).await.map(|(answer, _)| answer)
    }

    /// [`Cluster::call_any`], also returning the connection that answered.
    async fn call_any_with<T, F, Fut>(&self, call: F) -> Result<(T, Connection)>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let home = self.home();
        let first = match call(home.clone()).await {
            Ok(answer) => return Ok((answer, home)),
            Err(e) if e.recovery() == Recovery::Fail => return Err(e),
            Err(e) => e,
        };
        let mut failed: Vec<(String, Error)> = vec![(home.addr.clone(), first)];
        for conn in self.other_candidates() {
            if failed.iter().any(|(addr, _)| same_address(addr, &conn.addr)) {
                continue;
            }
            match call(conn.clone()).await {
                Ok(answer) => {
                    tracing::info!(
                        "{} did not answer; using the broker at {}",
                        addresses(&failed),
                        conn.addr
                    );
                    *self.home.write() = conn.clone();
                    return Ok((answer, conn));
                }
                Err(e) if e.recovery() == Recovery::Fail => return Err(e),
                Err(e) => failed.push((conn.addr.clone(), e)),
            }
        }
        Err(none_answered("no broker answered", failed))
    }

    /// Where a call goes when the broker that answered last did not: every
    /// broker of the metadata, then the bootstrap list.
    fn other_candidates(&self) -> Vec<Connection> {
        let ids: Vec<i32> = self.state.read().brokers.keys().copied().collect();
        let mut out: Vec<Connection> = ids.into_iter().filter_map(|id| self.connection_at(id, 0)).collect();
        out.extend(self.bootstrap.iter().filter_map(|a| Connection::lazy(a).ok()));
        out
    }

    /// Takes a metadata answer as if the broker that answered last had sent
    /// it.
    #[cfg(test)]
    pub fn learn(&self, response: v1::MetadataResponse) {
        let home = self.home();
        self.state.write().apply(response, &home, self.per_broker);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

impl State {
    /// Takes a metadata answer (from the broker at `answered`). A partition
    /// keeps a leader the cache knows at a newer epoch than the answer's: a
    /// broker that has not caught up with the controller must not send us
    /// back to a deposed leader.
    fn apply(&mut self, response: v1::MetadataResponse, answered: &Connection, per_broker: usize) {
        if !response.brokers.is_empty() {
            let single = response.brokers.len() == 1;
            let mut next = BTreeMap::new();
            for b in response.brokers {
                let dial = if single { answered.addr.clone() } else { b.address.trim().to_string() };
                let mut conns = match self.brokers.remove(&b.node_id) {
                    Some(old) if same_address(&old.dial, &dial) => old.conns,
                    _ => Vec::new(),
                };
                if conns.is_empty() && per_broker > 0 && same_address(&dial, &answered.addr) {
                    // Reuse the connection that just answered.
                    conns.push(answered.clone());
                }
                next.insert(b.node_id, BrokerEntry { id: b.node_id, address: b.address, dial, conns });
            }
            self.brokers = next;
        }
        let mut topics = HashMap::with_capacity(response.topics.len());
        for t in response.topics {
            let count = t.partitions.iter().map(|p| p.partition.saturating_add(1)).max().unwrap_or(0);
            let known = self.topics.get(&t.name);
            let leaders = t
                .partitions
                .iter()
                .map(|p| {
                    let told = Leader { id: p.leader, epoch: p.leader_epoch };
                    let cached = known.and_then(|k| k.leaders.get(&p.partition)).copied();
                    let leader = match cached {
                        Some(c) if c.epoch > told.epoch => c,
                        _ => told,
                    };
                    (p.partition, leader)
                })
                .collect();
            topics.insert(t.name, TopicLeaders { count, leaders });
        }
        self.topics = topics;
        self.fetched = true;
    }

    /// See [`Cluster::apply_hint`]. A hint is used only when it names the
    /// leader's address (a hint without one, or an unset one that reads as
    /// broker 0, cannot be told from "unknown") and is not older than what
    /// the cache knows.
    fn apply_hint(&mut self, topic: &str, partition: u32, e: &v1::PartitionError, per_broker: usize) -> bool {
        let address = e.leader_address.trim();
        if e.leader_id < 0 || address.is_empty() {
            return false;
        }
        let Some(t) = self.topics.get_mut(topic) else { return false };
        let cached = t.leaders.get(&partition).copied().unwrap_or(Leader::NONE);
        if e.leader_epoch < cached.epoch {
            return false;
        }
        t.leaders.insert(partition, Leader { id: e.leader_id, epoch: e.leader_epoch });
        let single = self.brokers.len() == 1 && self.brokers.contains_key(&e.leader_id);
        match self.brokers.get_mut(&e.leader_id) {
            // The one-broker rule: its dial address stays the one that answered.
            Some(_) if single => {}
            Some(b) if same_address(&b.address, address) => {}
            Some(b) => {
                b.address = address.to_string();
                b.dial = address.to_string();
                b.conns.clear();
            }
            None => {
                self.brokers.insert(
                    e.leader_id,
                    BrokerEntry {
                        id: e.leader_id,
                        address: address.to_string(),
                        dial: address.to_string(),
                        conns: Vec::with_capacity(per_broker),
                    },
                );
            }
        }
        true
    }
}

/// "a:1, b:2" of what was tried.
fn addresses(failed: &[(String, Error)]) -> String {
    failed.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>().join(", ")
}

/// The error when no address of a list answered: one address's error as it
/// is; for several, every address with its error, in one line.
fn none_answered(what: &str, mut failed: Vec<(String, Error)>) -> Error {
    if failed.len() == 1 {
        if let Some((_, e)) = failed.pop() {
            return e;
        }
    }
    // Most errors name their address already.
    let details: Vec<String> = failed
        .iter()
        .map(|(a, e)| {
            let text = e.to_string();
            if text.contains(a.as_str()) {
                text
            } else {
                format!("{a}: {text}")
            }
        })
        .collect();
    Error::Transport(format!("{what} (tried {}): {}", addresses(&failed), details.join("; ")))
}

/// Items split by the leader they must go to, in their order; the items
/// whose partition has no usable leader come back apart.
pub(crate) fn group_by_leader<T>(
    items: impl IntoIterator<Item = T>,
    leader_of: impl Fn(&T) -> Option<Leader>,
) -> (BTreeMap<i32, Vec<T>>, Vec<T>) {
    let mut routed: BTreeMap<i32, Vec<T>> = BTreeMap::new();
    let mut leaderless = Vec::new();
    for item in items {
        match leader_of(&item).and_then(Leader::broker) {
            Some(id) => routed.entry(id).or_default().push(item),
            None => leaderless.push(item),
        }
    }
    (routed, leaderless)
}

/// Pause before retry number `attempt` (1 = the first): `base` doubling,
/// at most `max` (or `base` if that is larger).
pub(crate) fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(max.max(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(addr: &str) -> Connection {
        match Connection::lazy(addr) {
            Ok(c) => c,
            Err(e) => panic!("{addr}: {e}"),
        }
    }

    fn broker(id: i32, address: &str) -> v1::BrokerInfo {
        v1::BrokerInfo { node_id: id, address: address.into(), rack: format!("r{id}") }
    }

    fn partition(p: u32, leader: i32, epoch: i32) -> v1::PartitionMetadata {
        v1::PartitionMetadata { partition: p, leader, leader_epoch: epoch, replicas: vec![], isr: vec![] }
    }

    fn metadata(
        brokers: Vec<v1::BrokerInfo>,
        partitions: Vec<v1::PartitionMetadata>,
    ) -> v1::MetadataResponse {
        v1::MetadataResponse {
            brokers,
            controller_id: 1,
            topics: vec![v1::TopicMetadata { name: "t".into(), partitions }],
            cluster_id: "id".into(),
            cluster_name: "name".into(),
        }
    }

    fn cluster(home: &str) -> Cluster {
        Cluster::with_home(vec![home.to_string()], conn(home), 2)
    }

    fn hint(id: i32, address: &str, epoch: i32) -> v1::PartitionError {
        v1::PartitionError {
            code: v1::ErrorCode::NotLeader as i32,
            message: String::new(),
            leader_id: id,
            leader_address: address.into(),
            leader_epoch: epoch,
        }
    }

    #[tokio::test]
    async fn metadata_fills_leaders_and_brokers() {
        let c = cluster("b0:1");
        let answered = c.home();
        c.state.write().apply(
            metadata(
                vec![broker(0, "b0:1"), broker(1, "b1:1")],
                vec![partition(0, 0, 3), partition(2, -1, 1)],
            ),
            &answered,
            2,
        );
        assert_eq!(c.partition_count("t"), Some(3));
        assert_eq!(c.leader("t", 0), Some(Leader { id: 0, epoch: 3 }));
        // Listed without a leader, or not listed at all: no leader.
        assert_eq!(c.leader("t", 2).and_then(Leader::broker), None);
        assert_eq!(c.leader("t", 1), Some(Leader::NONE));
        assert_eq!(c.leader("t", 3), None);
        assert_eq!(c.leader("other", 0), None);
        // The broker that answered keeps the connection it answered on.
        let b0 = c.connection_at(0, 0).unwrap();
        assert!(b0.channel_is(&answered));
        assert_eq!(c.connection_at(1, 0).unwrap().addr, "b1:1");
        assert_eq!(c.brokers().iter().map(|b| b.address.as_str()).collect::<Vec<_>>(), ["b0:1", "b1:1"]);
        assert!(c.connection(7).is_none());
    }

    #[tokio::test]
    async fn a_one_broker_cluster_is_reached_where_it_answered() {
        // Behind a proxy or port-forward: the broker advertises an address
        // the client cannot (or should not) use.
        let c = cluster("proxy:9");
        let answered = c.home();
        c.state.write().apply(
            metadata(vec![broker(0, "10.0.0.5:7070")], vec![partition(0, 0, 0)]),
            &answered,
            2,
        );
        assert_eq!(c.connection_at(0, 0).unwrap().addr, "proxy:9");
        assert_eq!(c.connection_at(0, 1).unwrap().addr, "proxy:9");
        assert_eq!(c.brokers()[0].address, "10.0.0.5:7070");
        // A hint naming the advertised address keeps it that way.
        assert!(c.apply_hint("t", 0, &hint(0, "10.0.0.5:7070", 1)));
        assert_eq!(c.connection_at(0, 0).unwrap().addr, "proxy:9");
        // Once the cluster has grown, brokers are reached where they say.
        c.state.write().apply(
            metadata(vec![broker(0, "10.0.0.5:7070"), broker(1, "10.0.0.6:7070")], vec![partition(0, 1, 2)]),
            &answered,
            2,
        );
        assert_eq!(c.connection_at(0, 0).unwrap().addr, "10.0.0.5:7070");
    }

    #[tokio::test]
    async fn an_older_epoch_from_a_lagging_broker_does_not_win() {
        let c = cluster("b0:1");
        let answered = c.home();
        let brokers = || vec![broker(0, "b0:1"), broker(1, "b1:1")];
        c.state.write().apply(metadata(brokers(), vec![partition(0, 1, 5)]), &answered, 1);
        c.state.write().apply(metadata(brokers(), vec![partition(0, 0, 4)]), &answered, 1);
        assert_eq!(c.leader("t", 0), Some(Leader { id: 1, epoch: 5 }));
        c.state.write().apply(metadata(brokers(), vec![partition(0, 0, 6)]), &answered, 1);
        assert_eq!(c.leader("t", 0), Some(Leader { id: 0, epoch: 6 }));
        // Once the leader we knew said it is not, anything goes.
        c.invalidate("t", 0);
        assert_eq!(c.leader("t", 0), Some(Leader::NONE));
        c.state.write().apply(metadata(brokers(), vec![partition(0, 1, 2)]), &answered, 1);
        assert_eq!(c.leader("t", 0), Some(Leader { id: 1, epoch: 2 }));
    }

    #[tokio::test]
    async fn leader_hints_update_the_cache_without_a_round_trip() {
        let c = cluster("b0:1");
        let answered = c.home();
        c.state.write().apply(
            metadata(vec![broker(0, "b0:1"), broker(1, "b1:1")], vec![partition(0, 0, 3)]),
            &answered,
            1,
        );
        assert!(c.apply_hint("t", 0, &hint(1, "b1:1", 4)));
        assert_eq!(c.leader("t", 0), Some(Leader { id: 1, epoch: 4 }));
        // A broker the metadata did not list yet is added from the hint.
        assert!(c.apply_hint("t", 0, &hint(2, "b2:1", 5)));
        assert_eq!(c.connection_at(2, 0).unwrap().addr, "b2:1");
        // A broker that moved is dialled at its new address.
        assert!(c.apply_hint("t", 0, &hint(1, "b1-new:1", 6)));
        assert_eq!(c.connection_at(1, 0).unwrap().addr, "b1-new:1");
        // Stale, or without an address: not used; the entry is invalidated.
        assert!(!c.apply_hint("t", 0, &hint(0, "b0:1", 2)));
        assert_eq!(c.leader("t", 0), Some(Leader::NONE));
        assert!(!c.apply_hint("t", 0, &hint(0, "", 9)));
        assert!(!c.apply_hint("t", 0, &hint(-1, "b0:1", 9)));
        assert!(!c.apply_hint("unknown", 0, &hint(0, "b0:1", 9)));
    }

    #[tokio::test]
    async fn a_failed_broker_is_connected_again() {
        let c = Cluster::with_home(vec!["b0:1".into()], conn("b0:1"), 1);
        let answered = c.home();
        c.state.write().apply(
            metadata(vec![broker(0, "b0:1"), broker(1, "b1:1")], vec![partition(0, 1, 0)]),
            &answered,
            1,
        );
        let first = c.connection(1).unwrap();
        assert!(c.connection(1).unwrap().channel_is(&first), "connections are reused");
        c.broker_failed(1);
        assert!(!c.connection(1).unwrap().channel_is(&first));
    }

    #[test]
    fn items_are_grouped_by_leader_in_order() {
        let leaders = |p: &u32| match p {
            0 | 3 => Some(Leader { id: 1, epoch: 0 }),
            1 => Some(Leader { id: 0, epoch: 0 }),
            2 => Some(Leader::NONE),
            _ => None,
        };
        let (routed, leaderless) = group_by_leader([0u32, 1, 2, 3, 4], leaders);
        assert_eq!(routed.into_iter().collect::<Vec<_>>(), [(0, vec![1]), (1, vec![0, 3])]);
        assert_eq!(leaderless, [2, 4]);
    }

    #[test]
    fn refreshes_back_off_while_they_fail() {
        let now = Instant::now();
        let mut g = Gate::default();
        assert_eq!(g.next_allowed(), None);
        g.last_attempt = Some(now);
        assert_eq!(g.next_allowed(), Some(now + MIN_REFRESH_INTERVAL));
        g.failures = 2;
        assert_eq!(g.next_allowed(), Some(now + MIN_REFRESH_INTERVAL * 4));
        g.failures = 30;
        assert_eq!(g.next_allowed(), Some(now + MAX_REFRESH_BACKOFF));
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let b = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        assert_eq!(backoff(b, 1, max), b);
        assert_eq!(backoff(b, 2, max), Duration::from_millis(200));
        assert_eq!(backoff(b, 4, max), Duration::from_millis(800));
        assert_eq!(backoff(b, 30, max), max);
        assert_eq!(backoff(Duration::from_secs(9), 3, max), Duration::from_secs(9));
    }

    #[test]
    fn several_failed_addresses_are_named_in_one_error() {
        let one = none_answered("x", vec![("a:1".into(), Error::Transport("cannot connect to a:1".into()))]);
        assert_eq!(one, Error::Transport("cannot connect to a:1".into()));
        let two = none_answered(
            "no broker answered",
            vec![
                ("a:1".into(), Error::Transport("cannot connect to a:1: refused".into())),
                ("b:2".into(), Error::Timeout("the broker at b:2 did not answer".into())),
            ],
        );
        let text = two.to_string();
        assert!(text.starts_with("no broker answered (tried a:1, b:2): cannot connect to a:1"), "{text}");
        assert!(text.ends_with("refused; the broker at b:2 did not answer"), "{text}");
        let unnamed = none_answered(
            "no broker answered",
            vec![
                ("a:1".into(), Error::status(tonic::Code::Unavailable, "shutting down")),
                ("b:2".into(), Error::Timeout("late".into())),
            ],
        );
        assert!(unnamed.to_string().ends_with("a:1: unavailable: shutting down; b:2: late"), "{unnamed}");
        assert!(two.is_retriable());
    }
}

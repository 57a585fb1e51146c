//! The group consumer: members of one consumer group share the partitions of
//! the topics they subscribe to (each partition read by exactly one member
//! at a time), and the group remembers how far it got (committed offsets),
//! so a member that takes a partition over goes on where the last one
//! stopped. Different groups read the same topics independently.
//!
//! The coordinator (a broker) decides who gets what: members join, the
//! coordinator computes the assignment with the group's strategy
//! ([`Assignor`]) and hands each member its share; a member that stops
//! heartbeating is evicted after its session timeout and the rest rebalance.
//! This module is the member's side:
//!
//! * [`GroupConsumer::poll`] does all state changes, on the caller's task:
//!   joining and rejoining, moving partitions in and out of the fetcher
//!   (the plain [`Consumer`]'s fetch path, with its prefetch), and
//!   auto-committing.
//! * `membership`: the protocol calls, the join task and the heartbeat
//!   task, which only reports what it learns.
//! * `assignment`: the pure parts (names, diffs, starting positions).
//! * `subscription`: topic names or a pattern, re-checked every few seconds.
//!
//! Delivery is at least once: what is committed is the position after the
//! records `poll` already returned, before a partition is given up (commit
//! on rebalance), at the auto-commit interval and on close. A member that
//! dies between a poll and the next commit has those records read again by
//! the next owner; a member never skips a record.
//!
//! ```no_run
//! use std::time::Duration;
//! use tributary_client::{GroupConfig, GroupConsumer};
//! # async fn demo() -> tributary_client::Result<()> {
//! let mut consumer = GroupConsumer::connect(GroupConfig::new("127.0.0.1:7070", "billing")).await?;
//! consumer.subscribe(&["orders"]).await?;
//! loop {
//!     for record in consumer.poll(Duration::from_secs(1)).await? {
//!         println!("{}-{}@{}", record.topic, record.partition, record.offset);
//!     }
//! }
//! # }
//! ```

mod assignment;
mod membership;
mod subscription;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use assignment::{Assignor, OffsetReset, TopicPartition};

use crate::cluster::Cluster;
use crate::connection::Connection;
use crate::consumer::{
    Consumer, ConsumerConfig, ConsumerRecord, Delivery, FetchedBatches, RawBatches, Records,
};
use crate::coordinator::Coordinators;
use crate::error::{Error, Recovery, Result};
use crate::metadata;
use membership::{Event, JoinRequest, Joined, Liveness, Params, RPC_TIMEOUT};
use subscription::{Subscription, View};

/// Group consumer settings; [`GroupConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// Brokers to start from, `HOST:PORT,HOST:PORT,...` (`http://`
    /// optional): any one that answers will do.
    pub bootstrap: String,
    pub group_id: String,
    /// Static membership: a consumer restarting with the same instance id
    /// within the session timeout gets its partitions back without a
    /// rebalance. Static members do not leave the group on close (that is
    /// what lets the restart skip the rebalance); the coordinator removes
    /// them when their session times out. Two running consumers must never
    /// share one: the older one is fenced ([`Error::Fenced`]).
    pub group_instance_id: Option<String>,
    /// Shown by `group describe`.
    pub client_id: String,
    /// Without a heartbeat for this long, the coordinator evicts the member
    /// and gives its partitions to the others.
    pub session_timeout: Duration,
    /// Longest time between two `poll` calls. Past it the consumer leaves
    /// the group (its partitions count as lost) and rejoins on the next
    /// poll. Also how long the coordinator waits for members to rejoin.
    pub max_poll_interval: Duration,
    /// How often the background task heartbeats; well below the session
    /// timeout (a third is usual).
    pub heartbeat_interval: Duration,
    /// Every member of a group must use the same one.
    pub assignor: Assignor,
    /// Commit the position after the records `poll` returned, every
    /// `auto_commit_interval`, before giving partitions up, and on close.
    pub auto_commit: bool,
    pub auto_commit_interval: Duration,
    /// Where to start in a partition the group never committed.
    pub auto_offset_reset: OffsetReset,
    /// Longest one Fetch long-polls.
    pub max_wait: Duration,
    /// Most bytes per partition in one fetch answer.
    pub max_partition_bytes: u32,
    /// Tracking consumer (the audit, issue 10): counts the records `poll`
    /// returns per topic and window (by record timestamp) and reports them
    /// as tier `consumer:GROUP` every window and on `close`. `None`: off.
    pub tracking: Option<crate::audit::TrackingConfig>,
}

impl GroupConfig {
    pub fn new(bootstrap: impl Into<String>, group_id: impl Into<String>) -> Self {
        GroupConfig {
            bootstrap: bootstrap.into(),
            group_id: group_id.into(),
            group_instance_id: None,
            client_id: "tributary".to_string(),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(3),
            assignor: Assignor::Range,
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            auto_offset_reset: OffsetReset::Latest,
            max_wait: Duration::from_millis(500),
            max_partition_bytes: 1 << 20,
            tracking: None,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.group_id.trim().is_empty() {
            return bad("the group id is empty".into());
        }
        if self.group_instance_id.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return bad("the group instance id is empty; leave it unset for a dynamic member".into());
        }
        if self.session_timeout.is_zero() || self.heartbeat_interval.is_zero() {
            return bad("session_timeout and heartbeat_interval must be more than 0".into());
        }
        if self.heartbeat_interval >= self.session_timeout {
            return bad(format!(
                "heartbeat_interval ({:?}) must be shorter than session_timeout ({:?}), a third of it is usual",
                self.heartbeat_interval, self.session_timeout
            ));
        }
        if self.max_poll_interval.is_zero() {
            return bad("max_poll_interval must be more than 0".into());
        }
        if self.auto_commit && self.auto_commit_interval.is_zero() {
            return bad("auto_commit_interval must be more than 0".into());
        }
        Ok(())
    }
}

/// Told about partitions coming and going, inside [`GroupConsumer::poll`]
/// (and `close`), on the caller's task.
pub trait RebalanceListener: Send {
    /// These partitions are now this member's (their positions are looked
    /// up right after).
    fn on_assigned(&mut self, _partitions: &[TopicPartition]) {}
    /// These are given up in an orderly way; with auto-commit their
    /// positions were just committed.
    fn on_revoked(&mut self, _partitions: &[TopicPartition]) {}
    /// These were taken away without a chance to commit (the session
    /// expired, or poll was not called in time): others may already be
    /// reading them.
    fn on_lost(&mut self, _partitions: &[TopicPartition]) {}
}

/// A member of a consumer group. See the module docs.
pub struct GroupConsumer {
    config: GroupConfig,
    params: Arc<Params>,
    cluster: Arc<Cluster>,
    /// Where the group's coordinator is (shared with the heartbeat task).
    coordinators: Arc<Coordinators>,
    fetcher: Consumer,
    listener: Option<Box<dyn RebalanceListener>>,
    subscription: Option<Subscription>,
    /// The subscribed topics as last read, and when.
    view: View,
    checked: Instant,
    /// The topics of the last join: a different `view` means rejoin.
    joined_view: View,
    member_id: String,
    generation: i32,
    assigned: BTreeSet<TopicPartition>,
    /// Assigned, but where to start is not known yet.
    unpositioned: BTreeSet<TopicPartition>,
    rejoin: bool,
    join: Option<JoinHandle<Result<Joined>>>,
    heartbeat: Option<JoinHandle<()>>,
    liveness: Arc<Liveness>,
    wake: Arc<Notify>,
    /// Set once fenced: every later call fails with it.
    fatal: Option<Error>,
    /// What this member last committed (or found committed), per partition.
    committed: Arc<Mutex<HashMap<TopicPartition, i64>>>,
    last_auto_commit: Instant,
    async_commit: Option<JoinHandle<()>>,
    async_error: Arc<Mutex<Option<Error>>>,
    /// The audit counter of a tracking consumer.
    tracker: Option<Arc<crate::audit::Tracker>>,
    /// Retriable failures in a row (for the pause and the log).
    failures: u32,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.config.group_id)
            .field("member_id", &self.member_id)
            .field("generation", &self.generation)
            .field("assigned", &self.assigned.len())
            .finish()
    }
}

impl Drop for GroupConsumer {
    /// Dropping without `close` stops the background tasks and sends
    /// nothing: the coordinator evicts the member after its session timeout.
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

/// A year stands in for "forever" without overflowing the clock.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

impl GroupConsumer {
    /// Connects to the bootstrap broker and finds the group's coordinator.
    /// Nothing is joined until the first `poll` after a `subscribe`.
    pub async fn connect(config: GroupConfig) -> Result<GroupConsumer> {
        config.check()?;
        let cluster = Arc::new(Cluster::connect(&config.bootstrap, 1).await?);
        let coordinators = Arc::new(Coordinators::new(cluster.clone()));
        // Fails early when no broker can say where the coordinator is.
        coordinators.for_group(&config.group_id, RPC_TIMEOUT).await?;
        let fetcher = Consumer::with_cluster(
            cluster.clone(),
            ConsumerConfig {
                bootstrap: config.bootstrap.clone(),
                max_wait: config.max_wait,
                max_partition_bytes: config.max_partition_bytes,
                ..ConsumerConfig::default()
            },
        );
        let params = Arc::new(Params {
            group_id: config.group_id.clone(),
            instance_id: config.group_instance_id.clone().unwrap_or_default(),
            client_id: config.client_id.clone(),
            assignor: config.assignor,
            session_timeout: config.session_timeout,
            rebalance_timeout: config.max_poll_interval,
            heartbeat_interval: config.heartbeat_interval,
        });
        let wake = Arc::new(Notify::new());
        let tracker = config.tracking.clone().map(|t| {
            crate::audit::Tracker::start(cluster.clone(), &crate::audit::consumer_tier(&config.group_id), t)
        });
        Ok(GroupConsumer {
            tracker,
            params,
            cluster,
            coordinators,
            fetcher,
            listener: None,
            subscription: None,
            view: View::new(),
            checked: Instant::now(),
            joined_view: View::new(),
            member_id: String::new(),
            generation: -1,
            assigned: BTreeSet::new(),
            unpositioned: BTreeSet::new(),
            rejoin: false,
            join: None,
            heartbeat: None,
            liveness: Arc::new(Liveness::new(wake.clone())),
            wake,
            fatal: None,
            committed: Arc::new(Mutex::new(HashMap::new())),
            last_auto_commit: Instant::now(),
            async_commit: None,
            async_error: Arc::new(Mutex::new(None)),
            failures: 0,
            config,
        })
    }

    /// Replaces the rebalance listener.
    pub fn set_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(listener);
    }

    /// Consumes these topics (replacing any earlier subscription); they
    /// must exist. Takes effect at the next `poll`.
    pub async fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
            return Err(Error::InvalidArgument("subscribe needs one or more topic names".into()));
        }
        let all = subscription::all_topics(&self.cluster).await?;
        if let Some(missing) = topics.iter().find(|t| !all.contains_key(**t)) {
            return Err(Error::status(tonic::Code::NotFound, format!("unknown topic '{missing}'")));
        }
        let s = Subscription::Topics(topics.iter().map(|t| t.to_string()).collect());
        self.set_subscription(s, &all);
        Ok(())
    }

    /// Consumes every topic whose whole name matches `regex` (internal
    /// `__…` topics excepted), now and as topics come and go: the match is
    /// re-checked about every 5 s.
    pub async fn subscribe_pattern(&mut self, regex: &str) -> Result<()> {
        let s = Subscription::pattern(regex)?;
        let all = subscription::all_topics(&self.cluster).await?;
        self.set_subscription(s, &all);
        Ok(())
    }

    fn set_subscription(&mut self, s: Subscription, all: &View) {
        self.view = s.select(all);
        self.checked = Instant::now();
        self.subscription = Some(s);
        if self.generation >= 0 && self.view != self.joined_view {
            self.rejoin = true;
        }
    }

    /// Waits up to `timeout` for records of this member's partitions,
    /// joining or rejoining the group first when needed (and revoking,
    /// committing and looking up positions as that requires); an empty vec
    /// when none arrived in time. Brief broker outages are retried inside
    /// (and logged); bad input, a fenced static member and other lasting
    /// problems are errors.
    ///
    /// A partition with a batch that cannot be read stops there, as with
    /// [`Consumer::poll`]: this poll returns what came before it, later ones
    /// report [`Error::CorruptRecord`] (taking turns with the other
    /// partitions' records), and no commit goes past it until
    /// [`GroupConsumer::skip_corrupt`] or a seek.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let records = self.poll_as::<Records>(timeout).await?;
        if let Some(t) = &self.tracker {
            for r in &records {
                t.count(&r.topic, r.timestamp);
            }
        }
        Ok(records)
    }

    /// Like [`GroupConsumer::poll`], but returns each partition's batches
    /// raw (CRC-checked, not decoded); positions move past them all. A
    /// batch that cannot be decoded is found only by
    /// [`FetchedBatches::for_each_record`]: seek the partition back to the
    /// error's offset before the next poll, or the next commit passes it.
    pub async fn poll_batches(&mut self, timeout: Duration) -> Result<Vec<FetchedBatches>> {
        self.poll_as::<RawBatches>(timeout).await
    }

    async fn poll_as<D: Delivery>(&mut self, timeout: Duration) -> Result<Vec<D::Item>> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        if self.subscription.is_none() {
            return Err(Error::InvalidArgument(
                "not subscribed: call subscribe() or subscribe_pattern() before poll()".into(),
            ));
        }
        let deadline = Instant::now() + timeout.min(FOREVER);
        let _polling = self.liveness.polling();
        loop {
            if let Err(e) = self.maintain().await {
                if !e.is_retriable() {
                    return Err(e);
                }
                if !self.retry_later(&e, deadline).await {
                    return Ok(Vec::new());
                }
                continue;
            }
            let until = deadline.min(self.next_maintenance());
            let wake = self.wake.clone();
            if !self.fetcher.has_assignments() {
                // Nothing to read (joining, or more members than
                // partitions): wait for the group or the clock.
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            } else {
                let wait = until.saturating_duration_since(Instant::now());
                let polled = tokio::select! {
                    r = self.fetcher.poll_as::<D>(wait) => Some(r),
                    _ = wake.notified() => None,
                };
                match polled {
                    // Woken up by the group, or quiet until `until`: look
                    // at the group, then go on fetching.
                    None => {}
                    Some(Ok(fetched)) if !fetched.is_empty() => {
                        self.failures = 0;
                        return Ok(fetched);
                    }
                    Some(Ok(_)) => self.failures = 0,
                    Some(Err(Error::OffsetOutOfRange { topic, partition, offset, start, end })) => {
                        tracing::info!(
                            group = %self.config.group_id,
                            "offset {offset} of {topic}-{partition} is out of range ({start}..={end}); \
                             starting from the {:?} offset",
                            self.config.auto_offset_reset
                        );
                        self.unpositioned.insert(TopicPartition::new(topic.clone(), partition));
                        self.fetcher.unassign(&topic, partition);
                    }
                    Some(Err(e)) if !e.is_retriable() => return Err(e),
                    Some(Err(e)) => {
                        let go_on = self.retry_later(&e, deadline).await;
                        if !go_on {
                            return Ok(Vec::new());
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// After a retriable failure: logs it (the first and every tenth in a
    /// row), forgets a coordinator that may have moved, and waits a growing
    /// pause, but not past `deadline`; false when the deadline came.
    async fn retry_later(&mut self, e: &Error, deadline: Instant) -> bool {
        self.failures += 1;
        if e.recovery() == Recovery::Reroute {
            self.coordinators.forget(&self.config.group_id);
        }
        if self.failures == 1 || self.failures.is_multiple_of(10) {
            tracing::warn!(group = %self.config.group_id, failures = self.failures, "retrying: {e}");
        }
        pause(deadline, backoff(self.failures)).await
    }

    /// When `poll` must look at the group again even without records: the
    /// next auto-commit or topic re-check.
    fn next_maintenance(&self) -> Instant {
        let recheck = self.checked + subscription::RECHECK;
        if self.config.auto_commit && self.generation >= 0 {
            recheck.min(self.last_auto_commit + self.config.auto_commit_interval)
        } else {
            recheck
        }
    }

    /// Everything `poll` does besides fetching, in order: act on what the
    /// heartbeat task reported, finish a completed join, notice topic
    /// changes, start a join when one is due, position new partitions, and
    /// auto-commit.
    async fn maintain(&mut self) -> Result<()> {
        match self.liveness.take(self.generation) {
            None => {}
            Some(Event::Rejoin) => self.rejoin = true,
            Some(Event::Lost) | Some(Event::PollTimeout) => {
                self.stop_heartbeat();
                self.lose_all();
                self.member_id.clear();
                self.generation = -1;
                self.rejoin = true;
            }
            Some(Event::Fenced(message)) => {
                self.stop_heartbeat();
                self.lose_all();
                let e = Error::Fenced(message);
                self.fatal = Some(e.clone());
                return Err(e);
            }
        }
        if self.join.as_ref().is_some_and(JoinHandle::is_finished) {
            if let Some(task) = self.join.take() {
                let outcome = task.await.unwrap_or_else(|e| {
                    Err(Error::Transport(format!(
                        "joining group '{}' was interrupted: {e}",
                        self.config.group_id
                    )))
                });
                self.finish_join(outcome).await?;
            }
        }
        if self.checked.elapsed() >= subscription::RECHECK {
            self.recheck_topics().await?;
        }
        // The coordinator refuses a member without topics: with a pattern
        // that matches nothing yet, wait for the next re-check.
        if self.join.is_none() && (self.rejoin || self.generation < 0) && !self.view.is_empty() {
            self.start_join().await?;
        }
        if !self.unpositioned.is_empty() {
            self.position_new().await?;
        }
        // Also while a cooperative join is under way: until the rebalance
        // completes this generation's commits are still accepted.
        if self.config.auto_commit
            && self.generation >= 0
            && self.last_auto_commit.elapsed() >= self.config.auto_commit_interval
        {
            self.last_auto_commit = Instant::now();
            if let Err(e) = self.commit_positions(None).await {
                tracing::warn!(group = %self.config.group_id, "auto-commit failed: {e}");
            }
        }
        Ok(())
    }

    async fn recheck_topics(&mut self) -> Result<()> {
        let Some(s) = &self.subscription else { return Ok(()) };
        let all = subscription::all_topics(&self.cluster).await?;
        self.view = s.select(&all);
        self.checked = Instant::now();
        if self.generation >= 0 && self.view != self.joined_view && !self.rejoin {
            tracing::info!(group = %self.config.group_id, "subscribed topics changed: rejoining");
            self.rejoin = true;
        }
        Ok(())
    }

    async fn coordinator(&mut self) -> Result<Connection> {
        self.coordinators.for_group(&self.config.group_id, RPC_TIMEOUT).await
    }

    /// Sends JoinGroup (in a task). Positions are committed first (with
    /// auto-commit), while this generation's commits are still accepted.
    /// Eager assignors then give everything up; cooperative members keep
    /// reading what they own until the new assignment says otherwise.
    async fn start_join(&mut self) -> Result<()> {
        let conn = self.coordinator().await?;
        if self.config.auto_commit && self.generation >= 0 && !self.assigned.is_empty() {
            if let Err(e) = self.commit_positions(None).await {
                tracing::warn!(group = %self.config.group_id, "commit before the rebalance failed: {e}");
            }
        }
        if !self.config.assignor.is_cooperative() && !self.assigned.is_empty() {
            let all: Vec<TopicPartition> = std::mem::take(&mut self.assigned).into_iter().collect();
            self.drop_partitions(&all);
            if let Some(l) = self.listener.as_mut() {
                l.on_revoked(&all);
            }
        }
        self.stop_heartbeat();
        self.joined_view = self.view.clone();
        let request = JoinRequest {
            member_id: self.member_id.clone(),
            topics: self.view.keys().cloned().collect(),
            owned: self.assigned.clone(),
        };
        let params = self.params.clone();
        let wake = self.wake.clone();
        self.join = Some(tokio::spawn(async move {
            let outcome = membership::join(conn, params, request).await;
            wake.notify_one();
            outcome
        }));
        self.rejoin = false;
        Ok(())
    }

    /// Applies a new assignment: revoked partitions are committed and
    /// dropped, new ones queued for positioning, heartbeats restart for the
    /// new generation. A cooperative member that gave something up rejoins
    /// at once, so the coordinator can hand it on.
    async fn finish_join(&mut self, outcome: Result<Joined>) -> Result<()> {
        let joined = match outcome {
            Ok(j) => j,
            Err(Error::Fenced(message)) => {
                self.lose_all();
                let e = Error::Fenced(message);
                self.fatal = Some(e.clone());
                return Err(e);
            }
            Err(e) => {
                self.rejoin = true;
                return Err(e);
            }
        };
        if joined.lost {
            self.lose_all();
        }
        tracing::debug!(
            group = %self.config.group_id,
            member = %joined.member_id,
            generation = joined.generation,
            "joined with {} partitions",
            joined.assignment.len()
        );
        self.member_id = joined.member_id;
        self.generation = joined.generation;
        let changes = assignment::changes(&self.assigned, &joined.assignment);
        if !changes.revoked.is_empty() {
            // What was read since the commit made before joining. A
            // coordinator that accepts commits only for partitions assigned
            // in the new generation refuses this: those records are then
            // read again by the next owner (at least once).
            if self.config.auto_commit {
                if let Err(e) = self.commit_positions(Some(&changes.revoked)).await {
                    tracing::info!(
                        group = %self.config.group_id,
                        "commit of revoked partitions refused; records read since the last commit \
                         will be read again by their next owner: {e}"
                    );
                }
            }
            self.drop_partitions(&changes.revoked);
            if let Some(l) = self.listener.as_mut() {
                l.on_revoked(&changes.revoked);
            }
        }
        self.assigned = joined.assignment;
        self.start_heartbeat();
        if !changes.assigned.is_empty() {
            self.unpositioned.extend(changes.assigned.iter().cloned());
            if let Some(l) = self.listener.as_mut() {
                l.on_assigned(&changes.assigned);
            }
        }
        if self.config.assignor.is_cooperative() && !changes.revoked.is_empty() {
            self.rejoin = true;
        }
        self.last_auto_commit = Instant::now();
        Ok(())
    }

    /// Looks up where newly assigned partitions start: the group's committed
    /// offset, else `auto_offset_reset`.
    async fn position_new(&mut self) -> Result<()> {
        let wanted: Vec<TopicPartition> = self.unpositioned.iter().cloned().collect();
        let committed = membership::committed(&self.coordinators, &self.config.group_id, &wanted).await?;
        let (known, reset) = assignment::starting_positions(&wanted, &committed);
        let mut positions = known.clone();
        let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for tp in &reset {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        for (topic, partitions) in by_topic {
            let spec = self.config.auto_offset_reset.spec();
            let found = metadata::list_offsets(&self.cluster, RPC_TIMEOUT, topic, &partitions, spec).await?;
            for (p, offset) in partitions.into_iter().zip(found) {
                positions.push((TopicPartition::new(topic, p), offset.max(0)));
            }
        }
        let mut map = self.committed.lock();
        for (tp, offset) in &known {
            map.insert(tp.clone(), *offset);
        }
        drop(map);
        for (tp, offset) in positions {
            if self.assigned.contains(&tp) && self.unpositioned.remove(&tp) {
                self.fetcher.seek(&tp.topic, tp.partition, offset);
            }
        }
        Ok(())
    }

    /// Commits the fetch positions of `only` (default: every assigned
    /// partition) that moved since the last commit.
    async fn commit_positions(&mut self, only: Option<&[TopicPartition]>) -> Result<()> {
        let offsets = self.moved_positions(only);
        if offsets.is_empty() {
            return Ok(());
        }
        membership::commit(&self.coordinators, &self.params, &self.member_id, self.generation, &offsets)
            .await?;
        let mut map = self.committed.lock();
        for (tp, offset) in offsets {
            map.insert(tp, offset);
        }
        Ok(())
    }

    fn moved_positions(&self, only: Option<&[TopicPartition]>) -> Vec<(TopicPartition, i64)> {
        let committed = self.committed.lock();
        let pick = |tp: &TopicPartition| {
            let position = self.fetcher.position(&tp.topic, tp.partition)?;
            (committed.get(tp) != Some(&position)).then(|| (tp.clone(), position))
        };
        match only {
            Some(tps) => tps.iter().filter_map(pick).collect(),
            None => self.assigned.iter().filter_map(pick).collect(),
        }
    }

    /// Stops fetching `tps` and forgets what this member knew of them (the
    /// next owner may commit other offsets meanwhile).
    fn drop_partitions(&mut self, tps: &[TopicPartition]) {
        let mut committed = self.committed.lock();
        for tp in tps {
            self.fetcher.unassign(&tp.topic, tp.partition);
            self.unpositioned.remove(tp);
            committed.remove(tp);
        }
    }

    /// Every partition was taken away without a chance to commit.
    fn lose_all(&mut self) {
        let all: Vec<TopicPartition> = std::mem::take(&mut self.assigned).into_iter().collect();
        self.drop_partitions(&all);
        if !all.is_empty() {
            tracing::warn!(group = %self.config.group_id, "lost {} partitions", all.len());
            if let Some(l) = self.listener.as_mut() {
                l.on_lost(&all);
            }
        }
    }

    fn start_heartbeat(&mut self) {
        self.stop_heartbeat();
        self.heartbeat = Some(membership::spawn_heartbeat(
            self.coordinators.clone(),
            self.params.clone(),
            self.member_id.clone(),
            self.generation,
            self.liveness.clone(),
            self.config.max_poll_interval,
        ));
    }

    fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    /// Waits for an earlier `commit_async` to finish (commits stay in order).
    async fn settle_async(&mut self) {
        if let Some(task) = self.async_commit.take() {
            let _ = task.await;
        }
    }

    /// An earlier `commit_async`'s failure, if one was not reported yet.
    fn async_failure(&self) -> Result<()> {
        match self.async_error.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Commits the position of every assigned partition (the offset after
    /// the last record `poll` returned) and waits for the coordinator. Also
    /// reports a failed earlier `commit_async`.
    pub async fn commit_sync(&mut self) -> Result<()> {
        self.settle_async().await;
        self.commit_positions(None).await?;
        self.async_failure()
    }

    /// Like [`GroupConsumer::commit_sync`] without waiting: the commit runs
    /// in the background, after any earlier one. A failure is logged and
    /// returned by the next `commit_sync`, `commit` or `close`.
    pub fn commit_async(&mut self) {
        let offsets = self.moved_positions(None);
        if offsets.is_empty() {
            return;
        }
        let coordinators = self.coordinators.clone();
        let earlier = self.async_commit.take();
        let params = self.params.clone();
        let member_id = self.member_id.clone();
        let generation = self.generation;
        let committed = self.committed.clone();
        let errors = self.async_error.clone();
        self.async_commit = Some(tokio::spawn(async move {
            if let Some(task) = earlier {
                let _ = task.await;
            }
            match membership::commit(&coordinators, &params, &member_id, generation, &offsets).await {
                Ok(()) => {
                    let mut map = committed.lock();
                    for (tp, offset) in offsets {
                        map.insert(tp, offset);
                    }
                }
                Err(e) => {
                    tracing::warn!(group = %params.group_id, "commit_async failed: {e}");
                    *errors.lock() = Some(e);
                }
            }
        }));
    }

    /// Commits explicit offsets (each the offset of the next record to read)
    /// and waits. The coordinator accepts only partitions assigned to this
    /// member in its current generation; outside any generation, only while
    /// the group has no members.
    pub async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        if let Some((tp, offset)) = offsets.iter().find(|(_, o)| *o < 0) {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} for {tp} is negative; commit the offset of the next record to read (0 or more)"
            )));
        }
        if offsets.is_empty() {
            return self.async_failure();
        }
        self.settle_async().await;
        membership::commit(&self.coordinators, &self.params, &self.member_id, self.generation, offsets)
            .await?;
        let mut map = self.committed.lock();
        for (tp, offset) in offsets {
            map.insert(tp.clone(), *offset);
        }
        drop(map);
        self.async_failure()
    }

    /// Continues an assigned partition from `offset` at the next poll. A
    /// partition not assigned to this member is ignored (with a warning).
    pub fn seek(&mut self, tp: &TopicPartition, offset: i64) {
        if !self.assigned.contains(tp) {
            tracing::warn!(group = %self.config.group_id, "seek: {tp} is not assigned to this member; ignored");
            return;
        }
        self.unpositioned.remove(tp);
        self.fetcher.seek(&tp.topic, tp.partition, offset);
    }

    /// Moves an assigned partition stopped by a batch it cannot read (see
    /// [`Error::CorruptRecord`]) past that batch; returns the new position,
    /// or `None` when the partition is not stopped (or not assigned). The
    /// next commit covers the skipped records: they are lost to the group.
    /// See [`Consumer::skip_corrupt`].
    pub fn skip_corrupt(&mut self, tp: &TopicPartition) -> Option<i64> {
        if !self.assigned.contains(tp) {
            return None;
        }
        self.fetcher.skip_corrupt(&tp.topic, tp.partition)
    }

    /// This member's partitions in its current generation, sorted.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.assigned.iter().cloned().collect()
    }

    /// The offset of the next record `poll` returns for an assigned
    /// partition, once known.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.assigned.contains(tp).then(|| self.fetcher.position(&tp.topic, tp.partition)).flatten()
    }

    /// The group generation this member belongs to; -1 before the first
    /// join completes.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The id the coordinator gave this member; `None` before the first
    /// join.
    pub fn member_id(&self) -> Option<&str> {
        (!self.member_id.is_empty()).then_some(self.member_id.as_str())
    }

    /// Leaves in an orderly way: commits positions (with auto-commit),
    /// revokes the partitions, and sends LeaveGroup so the others rebalance
    /// at once — except for a static member, whose partitions wait for it
    /// to come back until its session times out. Reports a failed earlier
    /// `commit_async` too.
    pub async fn close(mut self) -> Result<()> {
        if let Some(j) = self.join.take() {
            j.abort();
        }
        self.stop_heartbeat();
        self.settle_async().await;
        let mut result = Ok(());
        if self.config.auto_commit && self.generation >= 0 {
            result = self.commit_positions(None).await;
        }
        result = result.and(self.async_failure());
        if let Some(t) = &self.tracker {
            result = result.and(t.report().await);
        }
        let all = self.assignment();
        if !all.is_empty() {
            if let Some(l) = self.listener.as_mut() {
                l.on_revoked(&all);
            }
        }
        if self.config.group_instance_id.is_none() && !self.member_id.is_empty() {
            let left = membership::leave(&self.coordinators, &self.params, &self.member_id).await;
            result = result.and(left);
        }
        result
    }
}

/// Sleeps `wait`, but not past `deadline`; false when the deadline came.
async fn pause(deadline: Instant, wait: Duration) -> bool {
    let until = deadline.min(Instant::now() + wait);
    tokio::time::sleep_until(until).await;
    Instant::now() < deadline
}

/// 100 ms doubling per failure, at most 2 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = GroupConfig::new("b:1", "g");
        assert_eq!(c.session_timeout, Duration::from_secs(10));
        assert_eq!(c.max_poll_interval, Duration::from_secs(300));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(c.assignor, Assignor::Range);
        assert!(c.auto_commit);
        assert_eq!(c.auto_commit_interval, Duration::from_secs(5));
        assert_eq!(c.auto_offset_reset, OffsetReset::Latest);
        assert!(c.group_instance_id.is_none());
        assert!(c.check().is_ok());
    }

    #[test]
    fn nonsense_settings_are_refused_before_connecting() {
        let bad = |f: fn(&mut GroupConfig)| {
            let mut c = GroupConfig::new("b:1", "g");
            f(&mut c);
            c.check().unwrap_err().to_string()
        };
        assert!(bad(|c| c.group_id = " ".into()).contains("group id"));
        assert!(bad(|c| c.heartbeat_interval = c.session_timeout).contains("shorter than session_timeout"));
        assert!(bad(|c| c.group_instance_id = Some(String::new())).contains("instance id"));
        assert!(bad(|c| c.auto_commit_interval = Duration::ZERO).contains("auto_commit_interval"));
    }

    #[test]
    fn retry_backoff_grows_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(30), Duration::from_secs(2));
    }
}

//! REST Proxy v2 consumer instances: each one is a real member of its
//! consumer group, a [`GroupConsumer`] of the project's client connected to
//! this broker's gRPC port, so REST consumers and native consumers share a
//! group (partitions split between them, commits seen by both, `group
//! describe` lists them with client id `rest-proxy/INSTANCE`).
//!
//! An instance lives on the broker that created it: its `base_uri` names
//! that broker's advertised HTTP address, and a request for it that reaches
//! another broker is forwarded ([`super::consumers`]). Instances not used
//! for `rest_consumer_instance_timeout_ms` are closed (their positions
//! committed when auto-commit is on, and the group told they left), as are
//! all of them when the broker shuts down.
//!
//! ## Reading at least once
//! A poll may bring more than one answer may carry (`max_bytes`). The rest
//! is not kept in a buffer here: the partitions are moved back to the first
//! record not returned, so the member's position (and so every commit,
//! automatic or not) never passes a record the HTTP client has not been
//! given. An instance that dies has those records read again by the
//! partition's next owner; none is skipped.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tributary_client::{ConsumerRecord, GroupConfig, GroupConsumer, OffsetReset, TopicPartition};

use super::v2::Format;
use crate::confluent_error::{ConfluentError, Result};
use crate::BrokerState;

/// The longest one records request waits for records.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// An instance's settings, from its creation request.
#[derive(Debug, Clone)]
pub struct Settings {
    pub format: Format,
    pub auto_offset_reset: OffsetReset,
    pub auto_commit: bool,
    /// How long a records request waits when it names no `timeout`.
    pub request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            format: Format::Binary,
            auto_offset_reset: OffsetReset::Latest,
            auto_commit: true,
            request_timeout: Duration::from_millis(1000),
        }
    }
}

/// What an instance consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    Topics(Vec<String>),
    Pattern(String),
}

/// One consumer instance.
pub struct Instance {
    pub group: String,
    pub id: String,
    pub settings: Settings,
    member: tokio::sync::Mutex<Member>,
    used: Mutex<Instant>,
}

/// The group member behind an instance: there is one only while the
/// instance is subscribed (unsubscribing leaves the group).
#[derive(Default)]
struct Member {
    consumer: Option<GroupConsumer>,
    subscription: Option<Subscription>,
}

impl Instance {
    fn touch(&self) {
        *self.used.lock() = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.used.lock().elapsed()
    }

    fn group_config(&self, bootstrap: String) -> GroupConfig {
        let mut config = GroupConfig::new(bootstrap, self.group.clone());
        config.client_id = format!("rest-proxy/{}", self.id);
        config.auto_commit = self.settings.auto_commit;
        config.auto_offset_reset = self.settings.auto_offset_reset;
        config
    }

    /// Subscribes (replacing any earlier subscription): the member is
    /// created on the first one.
    pub async fn subscribe(&self, state: &BrokerState, s: Subscription) -> Result<()> {
        let mut m = self.member.lock().await;
        if m.consumer.is_none() {
            let consumer = GroupConsumer::connect(self.group_config(super::own_grpc_address(state)))
                .await
                .map_err(client_error)?;
            m.consumer = Some(consumer);
        }
        let consumer = m.consumer.as_mut().ok_or_else(|| ConfluentError::unavailable("no group member"))?;
        match &s {
            Subscription::Topics(topics) => {
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer.subscribe(&names).await
            }
            Subscription::Pattern(p) => consumer.subscribe_pattern(p).await,
        }
        .map_err(client_error)?;
        m.subscription = Some(s);
        Ok(())
    }

    pub async fn subscription(&self) -> Option<Subscription> {
        self.member.lock().await.subscription.clone()
    }

    /// Leaves the group (committing first with auto-commit).
    pub async fn unsubscribe(&self) -> Result<()> {
        let mut m = self.member.lock().await;
        m.subscription = None;
        match m.consumer.take() {
            Some(c) => c.close().await.map_err(client_error),
            None => Ok(()),
        }
    }

    /// Records of this instance's partitions: waits up to `timeout` for
    /// some, returns at most `max_bytes` of keys and values (at least one
    /// record when any arrived), and moves each partition back to its first
    /// record not returned.
    pub async fn poll(&self, timeout: Duration, max_bytes: usize) -> Result<Vec<ConsumerRecord>> {
        let mut m = self.member.lock().await;
        let consumer = m.consumer.as_mut().ok_or_else(not_subscribed)?;
        let records = consumer.poll(timeout.min(MAX_POLL_WAIT)).await.map_err(client_error)?;
        let (keep, rewind) = cut_at(records, max_bytes);
        for (tp, offset) in rewind {
            consumer.seek(&tp, offset);
        }
        Ok(keep)
    }

    /// Moves partitions of this instance back to `offset` (used when a
    /// polled record cannot be shown: it is then read again, not lost).
    pub async fn seek(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let mut m = self.member.lock().await;
        let consumer = m.consumer.as_mut().ok_or_else(not_subscribed)?;
        let assigned: BTreeSet<TopicPartition> = consumer.assignment().into_iter().collect();
        if let Some((tp, _)) = offsets.iter().find(|(tp, _)| !assigned.contains(tp)) {
            return Err(ConfluentError::illegal_state(format!(
                "partition {tp} is not assigned to this consumer instance (poll records first; the group \
                 decides which partitions each member gets)"
            )));
        }
        for (tp, offset) in offsets {
            consumer.seek(tp, *offset);
        }
        Ok(())
    }

    /// Commits the given offsets (each the offset of the next record to
    /// read), or with `None` the positions after everything returned.
    pub async fn commit(&self, offsets: Option<Vec<(TopicPartition, i64)>>) -> Result<()> {
        let mut m = self.member.lock().await;
        let consumer = m.consumer.as_mut().ok_or_else(not_subscribed)?;
        match offsets {
            Some(o) => consumer.commit(&o).await,
            None => consumer.commit_sync().await,
        }
        .map_err(client_error)
    }

    /// The partitions the group gave this instance.
    pub async fn assignment(&self) -> Vec<TopicPartition> {
        let m = self.member.lock().await;
        m.consumer.as_ref().map(GroupConsumer::assignment).unwrap_or_default()
    }

    async fn close(&self) {
        if let Err(e) = self.unsubscribe().await {
            tracing::warn!(group = %self.group, instance = %self.id, error = %e, "closing a REST consumer instance");
        }
    }
}

/// Keeps records until their keys and values pass `max_bytes` (always at
/// least one); for every partition that lost records, the offset of its
/// first one not kept.
fn cut_at(
    records: Vec<ConsumerRecord>,
    max_bytes: usize,
) -> (Vec<ConsumerRecord>, Vec<(TopicPartition, i64)>) {
    let mut size = 0usize;
    let mut keep = Vec::new();
    let mut rewind: Vec<(TopicPartition, i64)> = Vec::new();
    for r in records {
        let len = r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len());
        let over = !keep.is_empty() && size + len > max_bytes;
        let partition_cut = rewind.iter().any(|(tp, _)| tp.topic == r.topic && tp.partition == r.partition);
        if over || partition_cut {
            if !partition_cut {
                rewind.push((TopicPartition::new(r.topic.clone(), r.partition), r.offset));
            }
            continue;
        }
        size += len;
        keep.push(r);
    }
    (keep, rewind)
}

fn not_subscribed() -> ConfluentError {
    ConfluentError::illegal_state("this consumer instance is not subscribed to any topic")
}

/// A client error as the REST proxy answers it.
pub fn client_error(e: tributary_client::Error) -> ConfluentError {
    use tributary_client::Error as E;
    match &e {
        E::Status { code: tonic::Code::NotFound, message } => {
            ConfluentError::new(404, 40401, message.clone())
        }
        E::Status { code: tonic::Code::InvalidArgument, message } | E::InvalidArgument(message) => {
            ConfluentError::unprocessable(message.clone())
        }
        _ => ConfluentError::unavailable(e),
    }
}

/// Every consumer instance of this broker.
#[derive(Default)]
pub struct Instances {
    by_key: Mutex<HashMap<(String, String), Arc<Instance>>>,
    /// Instances found on other brokers by forwarding: `HOST:PORT` of the
    /// broker that answered for them.
    owners: Mutex<HashMap<(String, String), String>>,
    created: AtomicU64,
}

impl Instances {
    /// A new instance of `group`, named `name` or given a unique id.
    pub fn create(
        &self,
        state: &BrokerState,
        group: &str,
        name: Option<String>,
        settings: Settings,
    ) -> Result<Arc<Instance>> {
        let id = match name {
            Some(n) => n,
            None => {
                let n = self.created.fetch_add(1, Ordering::Relaxed);
                format!("rest-consumer-{}-{}-{n}", state.config.node_id, state.session.incarnation)
            }
        };
        let mut all = self.by_key.lock();
        if all.len() >= state.config.rest_max_consumer_instances {
            return Err(ConfluentError::too_many_instances(state.config.rest_max_consumer_instances));
        }
        let key = (group.to_string(), id.clone());
        if all.contains_key(&key) {
            return Err(ConfluentError::instance_exists(group, &id));
        }
        let instance = Arc::new(Instance {
            group: group.to_string(),
            id,
            settings,
            member: tokio::sync::Mutex::new(Member::default()),
            used: Mutex::new(Instant::now()),
        });
        all.insert(key, instance.clone());
        Ok(instance)
    }

    /// The instance, marked as used now.
    pub fn get(&self, group: &str, id: &str) -> Option<Arc<Instance>> {
        let i = self.by_key.lock().get(&(group.to_string(), id.to_string())).cloned();
        if let Some(i) = &i {
            i.touch();
        }
        i
    }

    /// Removes and closes the instance; false when there is none.
    pub async fn delete(&self, group: &str, id: &str) -> bool {
        let removed = self.by_key.lock().remove(&(group.to_string(), id.to_string()));
        match removed {
            Some(i) => {
                i.close().await;
                true
            }
            None => false,
        }
    }

    pub fn owner(&self, group: &str, id: &str) -> Option<String> {
        self.owners.lock().get(&(group.to_string(), id.to_string())).cloned()
    }

    pub fn set_owner(&self, group: &str, id: &str, owner: Option<String>) {
        let key = (group.to_string(), id.to_string());
        let mut owners = self.owners.lock();
        match owner {
            Some(o) => owners.insert(key, o),
            None => owners.remove(&key),
        };
    }

    /// Closes the instances idle longer than `timeout`.
    pub async fn expire(&self, timeout: Duration) {
        let idle: Vec<Arc<Instance>> = {
            let mut all = self.by_key.lock();
            let keys: Vec<_> =
                all.iter().filter(|(_, i)| i.idle_for() > timeout).map(|(k, _)| k.clone()).collect();
            keys.iter().filter_map(|k| all.remove(k)).collect()
        };
        for i in idle {
            tracing::info!(group = %i.group, instance = %i.id, "closing an idle REST consumer instance");
            i.close().await;
        }
    }

    async fn close_all(&self) {
        let all: Vec<Arc<Instance>> = self.by_key.lock().drain().map(|(_, i)| i).collect();
        for i in all {
            i.close().await;
        }
    }
}

/// Closes idle instances every second, and every instance at shutdown.
pub async fn run(state: Arc<BrokerState>, mut shutdown: crate::shutdown::Shutdown) {
    let timeout = Duration::from_millis(state.config.rest_consumer_instance_timeout_ms.max(1));
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => state.rest_instances.expire(timeout).await,
            _ = shutdown.wait() => break,
        }
    }
    state.rest_instances.close_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(partition: u32, offset: i64, len: usize) -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition,
            offset,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(vec![b'x'; len])),
            headers: vec![],
        }
    }

    #[test]
    fn a_cut_answer_moves_each_partition_back_to_its_first_record_not_returned() {
        let records = vec![record(0, 10, 40), record(1, 5, 40), record(0, 11, 40), record(1, 6, 10)];
        let (keep, rewind) = cut_at(records, 90);
        let kept: Vec<(u32, i64)> = keep.iter().map(|r| (r.partition, r.offset)).collect();
        // 0@11 does not fit; 1@6 still does (partition 1 lost nothing).
        assert_eq!(kept, vec![(0, 10), (1, 5), (1, 6)]);
        assert_eq!(rewind, vec![(TopicPartition::new("t", 0), 11)]);
    }

    #[test]
    fn nothing_after_a_partitions_first_cut_record_is_returned() {
        // 0@12 would fit, but returning it would skip 0@11.
        let (keep, rewind) = cut_at(vec![record(0, 10, 40), record(0, 11, 60), record(0, 12, 5)], 90);
        assert_eq!(keep.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![10]);
        assert_eq!(rewind, vec![(TopicPartition::new("t", 0), 11)]);
    }

    #[test]
    fn one_record_larger_than_the_limit_is_still_returned() {
        let (keep, rewind) = cut_at(vec![record(0, 0, 500), record(0, 1, 1)], 100);
        assert_eq!(keep.len(), 1);
        assert_eq!(rewind, vec![(TopicPartition::new("t", 0), 1)]);
    }
}

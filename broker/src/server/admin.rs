//! The `Admin` service: topic lifecycle, thin over [`crate::topics::Topics`].

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tributary_proto::v1::{self, admin_server::Admin};

use std::time::Duration;

use tributary_proto::v1::admin_client::AdminClient;

use crate::cluster::placement;
use crate::cluster::state::{Command, Outcome, PartitionRecord, TopicRecord};
use crate::error::Error;
use crate::groups::offsets::OFFSETS_TOPIC;
use crate::topics::{is_internal, NewTopic};
use crate::BrokerState;

pub struct AdminService {
    state: Arc<BrokerState>,
}

impl AdminService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        AdminService { state }
    }

    fn finish<T>(
        &self,
        rpc: &'static str,
        start: Instant,
        r: Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        super::respond(&self.state, rpc, start, r)
    }

    fn describe(&self, names: &[String]) -> Result<v1::DescribeTopicsResponse, Error> {
        let md = self.state.cluster.metadata();
        let names: Vec<String> =
            if names.is_empty() { md.topics.keys().cloned().collect() } else { names.to_vec() };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Some(t) = md.topic(&name) else { return Err(Error::UnknownTopic(name)) };
            let config = crate::config::TopicConfig::resolve(self.state.topics.defaults(), &t.configs)?;
            let local = self.state.topics.get(&name).ok();
            let partitions = t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut d = v1::PartitionDescription {
                        partition: i as u32,
                        leader: p.leader,
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                        leader_epoch: p.leader_epoch,
                        log_start_offset: -1,
                        high_watermark: -1,
                        log_end_offset: -1,
                        ..Default::default()
                    };
                    if let Some(part) = local.as_ref().and_then(|l| l.partition(i as u32).ok()) {
                        part.with_log(|log| {
                            d.log_start_offset = log.log_start_offset();
                            d.high_watermark = log.high_watermark();
                            d.log_end_offset = log.log_end_offset();
                            d.size_bytes = log.size_bytes();
                            d.segments = log.segment_count() as u32;
                        });
                    }
                    d
                })
                .collect();
            out.push(v1::TopicDescription {
                name: t.name.clone(),
                topic_id: t.id.clone(),
                replication_factor: t.replication_factor(),
                configs: t.configs.clone().into_iter().collect(),
                effective_configs: config.to_map().into_iter().collect(),
                partitions,
            });
        }
        Ok(v1::DescribeTopicsResponse { topics: out })
    }

    fn forget_metrics(&self, names: &[String]) {
        for n in names {
            if let Ok(t) = self.state.topics.get(n) {
                for p in 0..t.partition_count() {
                    self.state.metrics.forget_partition(n, p);
                }
            }
        }
    }

    /// The controller's admin client, when this broker is not the
    /// controller (admin calls are decided there).
    fn forward(&self) -> Result<Option<AdminClient<tonic::transport::Channel>>, Error> {
        Ok(self.state.cluster.controller_channel()?.map(AdminClient::new))
    }

    async fn create_here(&self, req: v1::CreateTopicsRequest) -> Result<v1::CreateTopicsResponse, Error> {
        // Brokers ask the controller for the internal offsets topic this way
        // (clients get "reserved"); its settings are the brokers' own.
        if let [t] = req.topics.as_slice() {
            let asked = t.configs.get(BROKER_REQUEST_KEY).map(String::as_str);
            if let Some(kind) =
                InternalTopic::ALL.into_iter().find(|k| k.name() == t.name && Some(k.request()) == asked)
            {
                create_internal_topic_here(&self.state, kind).await?;
                return Ok(v1::CreateTopicsResponse { created: vec![kind.name().to_string()] });
            }
        }
        let md = self.state.cluster.metadata();
        let live: Vec<(i32, String)> = md.live_brokers().map(|b| (b.id, b.rack.clone())).collect();
        let mut seen = std::collections::HashSet::new();
        let mut checked = Vec::new();
        for t in req.topics {
            if !seen.insert(t.name.clone()) {
                return Err(Error::InvalidRequest(format!("topic '{}' is named twice", t.name)));
            }
            let new = NewTopic {
                name: t.name,
                partitions: t.partitions,
                replication_factor: t.replication_factor,
                configs: t.configs.into_iter().collect(),
            };
            let exists = md.topics.contains_key(&new.name)
                || self.state.topics.get(&new.name).is_ok_and(|l| is_internal(&l.name));
            let rf = self.state.topics.validate_spec(
                &new,
                false,
                exists,
                live.len() as u32,
                self.state.config.default_replication_factor,
            )?;
            let replicas =
                placement::assign(&live, 0, new.partitions, rf).map_err(Error::InvalidReplicationFactor)?;
            checked.push((new, replicas));
        }
        if req.validate_only {
            return Ok(v1::CreateTopicsResponse {
                created: checked.into_iter().map(|(t, _)| t.name).collect(),
            });
        }
        let mut created = Vec::new();
        for (t, replicas) in checked {
            let record = TopicRecord {
                name: t.name.clone(),
                id: crate::topics::new_topic_id(),
                configs: t.configs,
                partitions: replicas.into_iter().map(PartitionRecord::new).collect(),
            };
            match self.state.cluster.propose(Command::CreateTopic { topic: record }).await? {
                Outcome::Refused(why) if why.contains("already exists") => {
                    return Err(Error::TopicExists(t.name))
                }
                Outcome::Refused(why) => return Err(Error::InvalidRequest(why)),
                _ => created.push(t.name),
            }
        }
        Ok(v1::CreateTopicsResponse { created })
    }

    async fn delete_here(&self, names: Vec<String>) -> Result<v1::DeleteTopicsResponse, Error> {
        let md = self.state.cluster.metadata();
        for n in &names {
            if is_internal(n) {
                return Err(Error::InternalTopic(n.clone()));
            }
            if !md.topics.contains_key(n) {
                return Err(Error::UnknownTopic(n.clone()));
            }
        }
        self.forget_metrics(&names);
        let mut deleted = Vec::new();
        for n in names {
            self.state.cluster.propose(Command::DeleteTopic { name: n.clone() }).await?;
            deleted.push(n);
        }
        Ok(v1::DeleteTopicsResponse { deleted })
    }

    async fn alter_here(
        &self,
        req: v1::AlterTopicConfigsRequest,
    ) -> Result<v1::AlterTopicConfigsResponse, Error> {
        if is_internal(&req.name) {
            return Err(Error::InternalTopic(req.name));
        }
        let md = self.state.cluster.metadata();
        let Some(t) = md.topic(&req.name) else { return Err(Error::UnknownTopic(req.name)) };
        let mut overrides = t.configs.clone();
        for k in &req.delete {
            if !crate::config::TOPIC_KEYS.iter().any(|(key, _)| key == k) {
                return Err(Error::UnknownConfig(k.clone()));
            }
            overrides.remove(k);
        }
        overrides.extend(req.set);
        let config = crate::config::TopicConfig::resolve(self.state.topics.defaults(), &overrides)?;
        if config.min_insync_replicas > i64::from(t.replication_factor()) {
            return Err(Error::InvalidConfigValue {
                key: "min.insync.replicas".into(),
                value: config.min_insync_replicas.to_string(),
                reason: format!("must not exceed the replication factor ({})", t.replication_factor()),
            });
        }
        if !req.validate_only {
            self.state
                .cluster
                .propose(Command::SetConfigs { name: req.name.clone(), configs: overrides.clone() })
                .await?;
        }
        Ok(v1::AlterTopicConfigsResponse { configs: overrides.into_iter().collect() })
    }

    async fn grow_here(
        &self,
        req: v1::CreatePartitionsRequest,
    ) -> Result<v1::CreatePartitionsResponse, Error> {
        let name = req.name;
        if is_internal(&name) {
            return Err(Error::InternalTopic(name));
        }
        let md = self.state.cluster.metadata();
        let Some(t) = md.topic(&name) else { return Err(Error::UnknownTopic(name)) };
        let current = t.partitions.len() as u32;
        let total = req.total_count;
        if total < current {
            return Err(Error::InvalidPartitions(format!(
                "topic '{name}' has {current} partitions; the count can only grow (asked for {total})"
            )));
        }
        if total == current {
            return Err(Error::InvalidPartitions(format!("topic '{name}' already has {current} partitions")));
        }
        if total > crate::topics::MAX_PARTITIONS {
            return Err(Error::InvalidPartitions(format!(
                "at most {} partitions per topic",
                crate::topics::MAX_PARTITIONS
            )));
        }
        let live: Vec<(i32, String)> = md.live_brokers().map(|b| (b.id, b.rack.clone())).collect();
        let replicas = placement::assign(&live, current, total - current, t.replication_factor())
            .map_err(Error::InvalidReplicationFactor)?;
        if !req.validate_only {
            self.state.cluster.propose(Command::AddPartitions { name, replicas }).await?;
        }
        Ok(v1::CreatePartitionsResponse { partitions: total })
    }

    /// After a forwarded create or delete: waits (briefly) until this
    /// broker's metadata shows it, so the caller's next request here sees it.
    async fn wait_visible(&self, names: &[String], exist: bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut rx = self.state.cluster.subscribe();
        loop {
            let md = rx.borrow_and_update().clone();
            if names.iter().all(|n| md.topics.contains_key(n) == exist) {
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return;
            }
        }
    }

    /// After a change: this broker's local replicas follow it before the
    /// call returns (a produce right after a create finds its leader).
    async fn settle(&self) {
        self.state.replicas.wait_caught_up(Duration::from_secs(5)).await;
    }
}

impl AdminService {
    /// Creates topics, on the controller (forwarded when this broker is not
    /// it); returns once this broker's metadata and replicas show them. The
    /// gRPC and Kafka doors both call this.
    pub(crate) async fn create_topics_routed(
        &self,
        req: v1::CreateTopicsRequest,
    ) -> Result<v1::CreateTopicsResponse, Error> {
        let r = match self.forward() {
            Ok(Some(mut c)) => match c.create_topics(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    self.wait_visible(&r.created, true).await;
                    Ok(r)
                }
                Err(s) => Err(Error::Forwarded(s)),
            },
            Ok(None) => self.create_here(req).await,
            Err(e) => Err(e),
        };
        self.settle().await;
        r
    }

    /// Grows a topic, like [`Self::create_topics_routed`].
    pub(crate) async fn create_partitions_routed(
        &self,
        req: v1::CreatePartitionsRequest,
    ) -> Result<v1::CreatePartitionsResponse, Error> {
        let r = match self.forward() {
            Ok(Some(mut c)) => {
                c.create_partitions(req).await.map(|r| r.into_inner()).map_err(Error::Forwarded)
            }
            Ok(None) => self.grow_here(req).await,
            Err(e) => Err(e),
        };
        self.settle().await;
        r
    }

    /// Changes a topic's config overrides (set and delete keys), like
    /// [`Self::create_topics_routed`]; `tributary topic alter` and Kafka's
    /// AlterConfigs and IncrementalAlterConfigs all come here.
    pub(crate) async fn alter_topic_configs_routed(
        &self,
        req: v1::AlterTopicConfigsRequest,
    ) -> Result<v1::AlterTopicConfigsResponse, Error> {
        let r = match self.forward() {
            Ok(Some(mut c)) => {
                c.alter_topic_configs(req).await.map(|r| r.into_inner()).map_err(Error::Forwarded)
            }
            Ok(None) => self.alter_here(req).await,
            Err(e) => Err(e),
        };
        self.settle().await;
        r
    }

    /// Deletes topics, like [`Self::create_topics_routed`].
    pub(crate) async fn delete_topics_routed(
        &self,
        req: v1::DeleteTopicsRequest,
    ) -> Result<v1::DeleteTopicsResponse, Error> {
        let r = match self.forward() {
            Ok(Some(mut c)) => match c.delete_topics(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    self.wait_visible(&r.deleted, false).await;
                    Ok(r)
                }
                Err(s) => Err(Error::Forwarded(s)),
            },
            Ok(None) => self.delete_here(req.names).await,
            Err(e) => Err(e),
        };
        self.settle().await;
        r
    }
}

/// Marks a broker's request to the controller for `__consumer_offsets`.
/// Anyone could send it; it only creates the topic early, with the
/// brokers' settings.
const BROKER_REQUEST_KEY: &str = "tributary.broker.request";

/// The settings of `__consumer_offsets` and `__schemas`: compacted, every
/// write fsynced before it is acknowledged.
fn offsets_topic_configs(rf: u32) -> std::collections::BTreeMap<String, String> {
    [
        ("cleanup.policy", "compact".to_string()),
        ("flush.messages", "1".to_string()),
        ("segment.bytes", "104857600".to_string()),
        ("min.insync.replicas", rf.min(2).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Makes sure `__consumer_offsets` exists in the quorum: created by the
/// controller with replication factor min(3, brokers the cluster was formed
/// with) once that many brokers are live, `min.insync.replicas` 2 where
/// possible (Kafka's `offsets.topic.replication.factor`).
pub async fn ensure_offsets_topic(state: &BrokerState) -> Result<(), Error> {
    ensure_internal_topic(state, InternalTopic::Offsets).await
}

/// Makes sure `__schemas` (the schema registry's log) exists, like
/// [`ensure_offsets_topic`]: one partition, so every change has one order.
pub async fn ensure_schemas_topic(state: &BrokerState) -> Result<(), Error> {
    ensure_internal_topic(state, InternalTopic::Schemas).await
}

/// Makes sure `__audit` (the audit's counts) exists, like
/// [`ensure_offsets_topic`]: one partition, compacted by count key.
pub async fn ensure_audit_topic(state: &BrokerState) -> Result<(), Error> {
    ensure_internal_topic(state, InternalTopic::Audit).await
}

/// The internal topics brokers create through the controller.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InternalTopic {
    Offsets,
    Schemas,
    Audit,
}

impl InternalTopic {
    const ALL: [InternalTopic; 3] = [InternalTopic::Offsets, InternalTopic::Schemas, InternalTopic::Audit];

    fn name(self) -> &'static str {
        match self {
            InternalTopic::Offsets => OFFSETS_TOPIC,
            InternalTopic::Schemas => crate::registry::SCHEMAS_TOPIC,
            InternalTopic::Audit => crate::audit::AUDIT_TOPIC,
        }
    }

    /// The [`BROKER_REQUEST_KEY`] value asking for it.
    fn request(self) -> &'static str {
        match self {
            InternalTopic::Offsets => "offsets",
            InternalTopic::Schemas => "schemas",
            InternalTopic::Audit => "audit",
        }
    }

    /// Its topic configs: compacted, synced per write; `__audit` also
    /// deletes counts older than `audit_retention_ms`.
    fn configs(self, state: &BrokerState, rf: u32) -> std::collections::BTreeMap<String, String> {
        let mut configs = offsets_topic_configs(rf);
        if self == InternalTopic::Audit {
            configs.insert("cleanup.policy".into(), "compact,delete".into());
            configs.insert("retention.ms".into(), state.config.audit_retention_ms.to_string());
        }
        configs
    }

    fn partitions(self, state: &BrokerState) -> u32 {
        match self {
            InternalTopic::Offsets => state.config.offsets_topic_partitions.max(1),
            InternalTopic::Schemas | InternalTopic::Audit => 1,
        }
    }
}

async fn ensure_internal_topic(state: &BrokerState, kind: InternalTopic) -> Result<(), Error> {
    let name = kind.name();
    if state.cluster.metadata().topic(name).is_some() {
        return Ok(());
    }
    let node = &state.cluster;
    if let Some(channel) = node.controller_channel()? {
        let spec = v1::TopicSpec {
            name: name.to_string(),
            configs: [(BROKER_REQUEST_KEY.to_string(), kind.request().to_string())].into_iter().collect(),
            ..Default::default()
        };
        AdminClient::new(channel)
            .create_topics(v1::CreateTopicsRequest { topics: vec![spec], validate_only: false })
            .await
            .map_err(Error::Forwarded)?;
    } else {
        create_internal_topic_here(state, kind).await?;
    }
    // Until this broker's metadata has it, its callers cannot use it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut rx = node.subscribe();
    while rx.borrow_and_update().topic(name).is_none() {
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            return Err(Error::Unavailable(format!("{name} is being created; retry")));
        }
    }
    state.replicas.wait_caught_up(Duration::from_secs(5)).await;
    Ok(())
}

async fn create_internal_topic_here(state: &BrokerState, kind: InternalTopic) -> Result<(), Error> {
    let name = kind.name();
    let md = state.cluster.metadata();
    if md.topic(name).is_some() {
        return Ok(());
    }
    let expected = state.cluster.setup.peers.len().max(1) as u32;
    let rf = expected.min(3);
    let live: Vec<(i32, String)> = md.live_brokers().map(|b| (b.id, b.rack.clone())).collect();
    if (live.len() as u32) < rf {
        return Err(Error::Unavailable(format!(
            "{name} needs {rf} live brokers for its replication factor; {} are live",
            live.len()
        )));
    }
    let replicas =
        placement::assign(&live, 0, kind.partitions(state), rf).map_err(Error::InvalidReplicationFactor)?;
    let record = TopicRecord {
        name: name.to_string(),
        id: crate::topics::new_topic_id(),
        configs: kind.configs(state, rf),
        partitions: replicas.into_iter().map(PartitionRecord::new).collect(),
    };
    match state.cluster.propose(Command::CreateTopic { topic: record }).await? {
        Outcome::Refused(why) if !why.contains("already exists") => Err(Error::InvalidRequest(why)),
        _ => Ok(()),
    }
}

/// Moves leadership of each partition to its preferred (first) replica
/// where that one is a live in-sync replica. Decided by the controller.
pub async fn elect_preferred(state: &BrokerState, topics: &[String]) -> Result<u32, Error> {
    let node = &state.cluster;
    if let Some(channel) = node.controller_channel()? {
        let r = crate::cluster::network::wrap_cluster(channel)
            .elect_leaders(v1::ElectLeadersRequest { topics: topics.to_vec() })
            .await
            .map_err(|s| Error::Unavailable(s.message().to_string()))?;
        return Ok(r.into_inner().moved);
    }
    let md = node.metadata();
    let mut moved = 0;
    for (name, t) in &md.topics {
        if !topics.is_empty() && !topics.contains(name) {
            continue;
        }
        for (i, p) in t.partitions.iter().enumerate() {
            let Some(&preferred) = p.replicas.first() else { continue };
            let live = md.brokers.get(&preferred).is_some_and(|b| !b.fenced);
            if p.leader != preferred && live && p.isr.contains(&preferred) {
                let cmd =
                    Command::ElectLeader { topic: name.clone(), partition: i as u32, leader: preferred };
                if node.propose(cmd).await? == Outcome::Done {
                    moved += 1;
                }
            }
        }
    }
    Ok(moved)
}

#[tonic::async_trait]
impl Admin for AdminService {
    #[tracing::instrument(name = "create_topics", skip_all)]
    async fn create_topics(
        &self,
        request: Request<v1::CreateTopicsRequest>,
    ) -> Result<Response<v1::CreateTopicsResponse>, Status> {
        let start = Instant::now();
        let r = self.create_topics_routed(request.into_inner()).await;
        self.finish("create_topics", start, r)
    }

    #[tracing::instrument(name = "delete_topics", skip_all)]
    async fn delete_topics(
        &self,
        request: Request<v1::DeleteTopicsRequest>,
    ) -> Result<Response<v1::DeleteTopicsResponse>, Status> {
        let start = Instant::now();
        let r = self.delete_topics_routed(request.into_inner()).await;
        self.finish("delete_topics", start, r)
    }

    #[tracing::instrument(name = "describe_topics", skip_all)]
    async fn describe_topics(
        &self,
        request: Request<v1::DescribeTopicsRequest>,
    ) -> Result<Response<v1::DescribeTopicsResponse>, Status> {
        let start = Instant::now();
        let r = self.describe(&request.into_inner().names);
        self.finish("describe_topics", start, r)
    }

    #[tracing::instrument(name = "alter_topic_configs", skip_all)]
    async fn alter_topic_configs(
        &self,
        request: Request<v1::AlterTopicConfigsRequest>,
    ) -> Result<Response<v1::AlterTopicConfigsResponse>, Status> {
        let start = Instant::now();
        let r = self.alter_topic_configs_routed(request.into_inner()).await;
        self.finish("alter_topic_configs", start, r)
    }

    #[tracing::instrument(name = "create_partitions", skip_all)]
    async fn create_partitions(
        &self,
        request: Request<v1::CreatePartitionsRequest>,
    ) -> Result<Response<v1::CreatePartitionsResponse>, Status> {
        let start = Instant::now();
        let r = self.create_partitions_routed(request.into_inner()).await;
        self.finish("create_partitions", start, r)
    }
}

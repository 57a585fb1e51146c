//! # tributary-broker
//!
//! One Tributary broker: a replicated-commit-log node (the Kafka model) that
//! speaks gRPC. Read it in the order data flows:
//!
//! 1. [`server::log`] turns a Produce request into validated record batches
//!    (format: `tributary_proto::batch`) and hands them to a [`partition`].
//! 2. [`partition::Partition`] owns a [`log::PartitionLog`] behind a lock and
//!    wakes long-polling fetches when data arrives.
//! 3. [`log`] appends batches to segment files ([`log::segment`]) and indexes
//!    them in the partition's RocksDB column family ([`log::index`],
//!    [`store`]); [`log::recovery`] is the crash path, [`log::retention`] and
//!    [`log::compaction`] the clean-up.
//! 4. [`topics`] holds the partitions this broker hosts; [`cluster`] is the
//!    metadata quorum (openraft) that decides which topics exist, where
//!    their replicas are, who leads them and which replicas are in sync;
//!    [`replication`] turns those decisions into local leader and follower
//!    roles, follower fetching and the high watermark. [`server::admin`]
//!    and [`server::cluster`] expose them.
//!
//! [`mirror`] copies topics of other clusters into this one (mirror
//! links, their tasks and provenance). [`kafka`] is the Kafka wire-protocol
//! listener: a second door onto the same handlers. [`registry`] is the schema registry on the HTTP port, kept in
//! `__schemas`. [`maintenance`] runs timed flushes, retention and compaction;
//! [`metrics`] and [`telemetry`] are the observability; [`config`] the
//! settings; [`error`] the one error type and its gRPC mapping.

pub mod alloc;
pub mod audit;
pub mod cluster;
pub mod config;
pub mod confluent_error;
pub mod disk;
pub mod error;
pub mod forward;
pub mod groups;
pub mod kafka;
pub mod log;
pub mod maintenance;
pub mod metrics;
pub mod mirror;
pub mod partition;
pub mod producer_ids;
pub mod registry;
pub mod replication;
pub mod rest;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod topics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use config::BrokerConfig;
use metrics::Metrics;
use topics::Topics;

// The unit tests decode hostile Kafka requests too (see `alloc`).
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: alloc::LazyHuge = alloc::LazyHuge;

/// RocksDB's directory inside the data directory.
pub const STORE_DIR: &str = "rocksdb";

/// Wall-clock milliseconds since the Unix epoch (record timestamps' unit).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Everything the request handlers and background tasks share.
pub struct BrokerState {
    pub config: BrokerConfig,
    pub topics: Topics,
    pub metrics: Metrics,
    pub producer_ids: producer_ids::ProducerIds,
    pub coordinator: groups::Coordinator,
    pub disk: disk::DiskReserve,
    pub ready: AtomicBool,
    pub cluster: Arc<cluster::ClusterNode>,
    pub session: Arc<cluster::session::Session>,
    pub controller: Arc<cluster::controller::Controller>,
    pub replicas: Arc<replication::ReplicaManager>,
    pub registry: registry::Registry,
    /// Mirror links' copy tasks on this broker.
    pub mirror: Arc<mirror::MirrorManager>,
    /// The audit's append counts ([`audit`]).
    pub audit: audit::Audit,
    /// The REST proxy's producer (started on its first request).
    pub rest: rest::Proxy,
    /// The REST proxy's consumer instances held by this broker.
    pub rest_instances: rest::instances::Instances,
    pub shutdown: shutdown::Shutdown,
}

/// The quorum settings from the broker's configuration.
fn cluster_setup(config: &BrokerConfig, kafka_advertised: String) -> anyhow::Result<cluster::ClusterSetup> {
    let peers = cluster::peers::parse_peers(&config.peers).map_err(|e| anyhow::anyhow!("--peers: {e}"))?;
    if !peers.is_empty() && !peers.contains_key(&config.node_id) {
        anyhow::bail!("--peers does not list this broker's --node-id {}", config.node_id);
    }
    let controllers =
        cluster::peers::parse_ids(&config.controllers).map_err(|e| anyhow::anyhow!("--controllers: {e}"))?;
    if let Some(c) = controllers.iter().find(|c| !peers.is_empty() && !peers.contains_key(c)) {
        anyhow::bail!("--controllers names broker {c}, which --peers does not list");
    }
    Ok(cluster::ClusterSetup {
        node_id: config.node_id,
        peers,
        controllers,
        cluster_name: config.cluster_name.clone(),
        rack: config.rack.clone(),
        advertised: config.advertised(),
        kafka_advertised,
        http_advertised: config.http_advertised(),
    })
}

/// A started broker.
pub struct Broker {
    state: Arc<BrokerState>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    kafka_addr: Option<SocketAddr>,
    trigger: shutdown::ShutdownTrigger,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Broker {
    /// Opens (recovering if needed) the data directory, binds both ports and
    /// starts serving.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Broker> {
        Self::start_with_fs(config, log::fs::real()).await
    }

    /// Starts with segment files on `fs` (tests inject faults through it;
    /// RocksDB always uses the real data directory).
    pub async fn start_with_fs(
        mut config: BrokerConfig,
        fs: Arc<dyn log::fs::LogFs>,
    ) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let grpc = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding gRPC {}", config.listen))?;
        let http = TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("binding HTTP {}", config.http_listen))?;
        let kafka = kafka::bind(&config).await?;
        let (grpc_addr, http_addr) = (server::local_addr(&grpc), server::local_addr(&http));
        let kafka_addr = kafka.as_ref().map(server::local_addr);
        config.listen = grpc_addr;
        config.http_listen = http_addr;
        let kafka_advertised = kafka_addr.map(|a| config.kafka_advertised(a)).unwrap_or_default();

        // Before anything writes: a full disk must not stop the start.
        let disk = disk::DiskReserve::open(&config.data_dir, config.disk_reserve_bytes);
        let store = store::Store::open(
            &config.data_dir.join(STORE_DIR),
            config.block_cache_bytes,
            config.write_buffer_bytes,
        )
        .map_err(|e| {
            let hint = if e.is_disk_full() {
                "the disk is full: free space in it"
            } else {
                "is another broker using it?"
            };
            anyhow::anyhow!("opening the index store in {} ({hint}): {e}", config.data_dir.display())
        })?;
        let defaults = config.topic_defaults();
        let data_dir = config.data_dir.clone();
        let producer_ids = producer_ids::ProducerIds::load(&store)?;
        let setup = cluster_setup(&config, kafka_advertised)?;
        let raft_store = store.clone();
        let offsets_partitions = config.offsets_topic_partitions;
        let retention = std::time::Duration::from_secs_f64(config.offsets_retention_minutes.max(0.0) * 60.0);
        let (topics, coordinator) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let topics =
                Topics::load(store.clone(), fs, &data_dir, defaults, now_ms()).context("loading topics")?;
            let offsets = groups::offsets::OffsetStore::open(store, &topics, offsets_partitions)
                .context("loading committed offsets")?;
            let coordinator = groups::Coordinator::load(offsets, retention).context("loading groups")?;
            Ok((topics, coordinator))
        })
        .await??;
        let cluster = cluster::ClusterNode::start(setup, raft_store).await?;
        let session = cluster::session::Session::new(
            std::time::Duration::from_millis(config.broker_session_timeout_ms.max(100)),
            std::time::Duration::from_millis(config.broker_heartbeat_interval_ms.max(10)),
        );
        let controller = cluster::controller::Controller::new(cluster.clone(), session.session_timeout);
        let replicas = replication::ReplicaManager::new(
            cluster.clone(),
            std::time::Duration::from_millis(config.replica_lag_time_max_ms.max(1)),
        );
        let (trigger, shutdown) = shutdown::channel();
        let registry = registry::Registry::new(config.http_advertised());
        let audit = audit::Audit::new(config.audit_window_ms, config.audit_retention_ms);
        let state = Arc::new(BrokerState {
            config,
            topics,
            metrics: Metrics::new(),
            producer_ids,
            coordinator,
            disk,
            ready: AtomicBool::new(false),
            cluster: cluster.clone(),
            session: session.clone(),
            controller: controller.clone(),
            replicas: replicas.clone(),
            registry,
            mirror: mirror::MirrorManager::new(),
            audit,
            rest: rest::Proxy::default(),
            rest_instances: rest::instances::Instances::default(),
            shutdown: shutdown.clone(),
        });

        // The gRPC port first: the quorum talks through it.
        let mut tasks = Vec::new();
        let (s, sd) = (state.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server::serve_grpc(s, grpc, sd).await {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        }));
        tasks.push(tokio::spawn(controller.run(shutdown.clone())));
        tasks.push(tokio::spawn(session.clone().run(cluster.clone(), shutdown.clone())));
        if state.cluster.setup.peers.is_empty() {
            adopt_local_topics(&state).await?;
        }
        state.coordinator.follow_leadership();
        tasks.push(tokio::spawn(replicas.clone().run(state.clone(), shutdown.clone())));
        tasks.extend(maintenance::spawn(state.clone(), shutdown.clone()));
        tasks.push(tokio::spawn(state.mirror.clone().run(state.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(audit::run(state.clone(), shutdown.clone())));
        if let Some(listener) = kafka {
            tasks.push(tokio::spawn(kafka::serve(state.clone(), listener, shutdown.clone())));
        }
        let (s, sd) = (state.clone(), shutdown);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server::serve_http(s, http, sd).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }));
        // Ready once the local roles follow the metadata, and the schema
        // registry has replayed what this broker holds of `__schemas`.
        replicas.wait_caught_up(std::time::Duration::from_secs(10)).await;
        if let Err(e) = registry::catch_up_now(&state).await {
            tracing::warn!(error = %e, "replaying the schema registry's log");
        }
        tasks.push(tokio::spawn(registry::run(state.clone(), state.shutdown.clone())));
        tasks.push(tokio::spawn(rest::instances::run(state.clone(), state.shutdown.clone())));
        // ... and it may lead (its session lease holds).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !state.session.lease_valid() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::info!(node_id = state.config.node_id, grpc = %grpc_addr, "broker serving");
        // ... and what it follows has caught up with where its leaders were
        // (a restarted broker is not back until then: the operator's roll
        // waits on this before it takes down the next one).
        tasks.push(tokio::spawn(become_ready(state.clone(), grpc_addr, http_addr, kafka_addr)));
        Ok(Broker { state, grpc_addr, http_addr, kafka_addr, trigger, tasks })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The Kafka listener's bound address (None: running without it).
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka_addr
    }

    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// Stops accepting work, lets in-flight requests finish, then flushes and
    /// closes every log (a clean stop: the next start scans nothing).
    pub async fn shutdown(self) {
        self.state.ready.store(false, Ordering::Release);
        if !self.state.cluster.setup.peers.is_empty() {
            controlled_shutdown(&self.state).await;
        }
        self.trigger.trigger();
        for t in self.tasks {
            let _ = t.await;
        }
        let state = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || state.topics.close_all()).await;
        self.state.cluster.shutdown().await;
        tracing::info!("broker stopped cleanly");
    }
}

/// Sets `/readyz` once every partition this broker follows has caught up
/// with its leader's high watermark as of the start.
async fn become_ready(
    state: Arc<BrokerState>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    kafka_addr: Option<SocketAddr>,
) {
    let mut shutdown = state.shutdown.clone();
    let mut last_report = std::time::Instant::now();
    loop {
        let lagging = state.replicas.lagging_since_start();
        if lagging.is_empty() {
            break;
        }
        if last_report.elapsed() > std::time::Duration::from_secs(10) {
            last_report = std::time::Instant::now();
            tracing::info!(count = lagging.len(), first = %lagging[0], "not ready yet: replicas still catching up with their leaders");
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            _ = shutdown.wait() => return,
        }
    }
    state.ready.store(true, Ordering::Release);
    // Tests and scripts read the addresses off this line.
    let kafka = kafka_addr.map_or_else(|| "none".to_string(), |a| a.to_string());
    tracing::info!(node_id = state.config.node_id, grpc = %grpc_addr, http = %http_addr, kafka = %kafka, data_dir = %state.config.data_dir.display(), "broker ready");
}

/// A one-node broker's topics from before the quorum existed become the
/// quorum's (same ids, this broker the only replica), so upgrading keeps
/// every topic. Internal topics stay local.
async fn adopt_local_topics(state: &Arc<BrokerState>) -> anyhow::Result<()> {
    let node = &state.cluster;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !node.is_controller() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the one-node metadata quorum elected no leader within 30 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The broker must be registered before its topics get a leader.
    let me = node.node_id();
    let incarnation = state.session.incarnation;
    let registered = node.metadata().brokers.get(&me).is_some_and(|b| {
        !b.fenced
            && b.address == node.setup.advertised
            && b.kafka_address == node.setup.kafka_advertised
            && b.http_address == node.setup.http_advertised
            && b.incarnation == incarnation
    });
    if !registered {
        node.propose(cluster::state::Command::Register {
            id: me,
            address: node.setup.advertised.clone(),
            rack: node.setup.rack.clone(),
            incarnation,
            kafka_address: node.setup.kafka_advertised.clone(),
            http_address: node.setup.http_advertised.clone(),
        })
        .await?;
    }
    let md = node.metadata();
    for t in state.topics.list() {
        // Internal topics other than the offsets topic are broker-local.
        let adoptable = !topics::is_internal(&t.name) || t.name == groups::offsets::OFFSETS_TOPIC;
        if !adoptable || md.topics.contains_key(&t.name) {
            continue;
        }
        let record = cluster::state::TopicRecord {
            name: t.name.clone(),
            id: t.id.clone(),
            configs: t.overrides(),
            partitions: (0..t.partition_count())
                .map(|_| cluster::state::PartitionRecord::new(vec![me]))
                .collect(),
        };
        tracing::info!(topic = %t.name, "adopting a local topic into the metadata quorum");
        node.propose(cluster::state::Command::CreateTopic { topic: record }).await?;
    }
    Ok(())
}

/// Before stopping: tells the controller, which moves this broker's
/// leaderships to other in-sync replicas, and waits (briefly) until they
/// moved, so clients see a leader change instead of a timeout.
async fn controlled_shutdown(state: &Arc<BrokerState>) {
    state.session.begin_shutdown();
    let me = state.cluster.node_id();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let _ = state.session.beat(&state.cluster).await;
        let md = state.cluster.metadata();
        let leads = md.topics.values().flat_map(|t| &t.partitions).any(|p| p.leader == me && p.isr.len() > 1);
        if md.brokers.get(&me).is_some_and(|b| b.fenced) || !leads {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

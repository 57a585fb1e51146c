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
//! 4. [`topics`] holds topic metadata and creates/deletes partitions;
//!    [`server::admin`] exposes it.
//!
//! [`maintenance`] runs timed flushes, retention and compaction;
//! [`metrics`] and [`telemetry`] are the observability; [`config`] the
//! settings; [`error`] the one error type and its gRPC mapping.

pub mod config;
pub mod disk;
pub mod error;
pub mod groups;
pub mod log;
pub mod maintenance;
pub mod metrics;
pub mod partition;
pub mod producer_ids;
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
}

/// A started broker.
pub struct Broker {
    state: Arc<BrokerState>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
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
        let (grpc_addr, http_addr) = (server::local_addr(&grpc), server::local_addr(&http));
        config.listen = grpc_addr;
        config.http_listen = http_addr;

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
        let producer_ids = producer_ids::ProducerIds::load(store.clone())?;
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
        let state = Arc::new(BrokerState {
            config,
            topics,
            metrics: Metrics::new(),
            producer_ids,
            coordinator,
            disk,
            ready: AtomicBool::new(false),
        });

        let (trigger, shutdown) = shutdown::channel();
        let mut tasks = maintenance::spawn(state.clone(), shutdown.clone());
        let (s, sd) = (state.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server::serve_grpc(s, grpc, sd).await {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        }));
        let (s, sd) = (state.clone(), shutdown);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server::serve_http(s, http, sd).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }));
        state.ready.store(true, Ordering::Release);
        tracing::info!(node_id = state.config.node_id, grpc = %grpc_addr, http = %http_addr, data_dir = %state.config.data_dir.display(), "broker ready");
        Ok(Broker { state, grpc_addr, http_addr, trigger, tasks })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// Stops accepting work, lets in-flight requests finish, then flushes and
    /// closes every log (a clean stop: the next start scans nothing).
    pub async fn shutdown(self) {
        self.state.ready.store(false, Ordering::Release);
        self.trigger.trigger();
        for t in self.tasks {
            let _ = t.await;
        }
        let state = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || state.topics.close_all()).await;
        tracing::info!("broker stopped cleanly");
    }
}

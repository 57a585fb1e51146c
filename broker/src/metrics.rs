//! Prometheus metrics, served on the HTTP port at `/metrics`.
//!
//! The group coordinator's counters ([`GroupMetrics`]) are process-wide: the
//! offset store is opened (and replays) before [`Metrics`] exists, so it
//! counts into [`group_metrics`], which every [`Metrics`] registers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: u32,
}

/// One mirror task: link, source topic and partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub link: String,
    pub topic: String,
    pub partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: &'static str,
}

/// Counters of the group coordinator's offset store and its group-commit
/// writer.
#[derive(Default)]
pub struct GroupMetrics {
    /// Records of `__consumer_offsets` and rows of the `groups` column
    /// family skipped because they could not be parsed.
    pub records_skipped: Counter,
    /// Group commits: one append per touched partition and one fsync each.
    pub commit_batches: Counter,
    /// Writes (offset commits, group records, deletions) those batches held.
    pub commit_writes: Counter,
    /// fsyncs of `__consumer_offsets` partitions done by the writer.
    pub commit_fsyncs: Counter,
    /// Writes answered with an error (their batch's append, fsync or apply failed).
    pub commit_failures: Counter,
}

/// The process's [`GroupMetrics`].
pub fn group_metrics() -> &'static GroupMetrics {
    static GROUPS: std::sync::LazyLock<GroupMetrics> = std::sync::LazyLock::new(GroupMetrics::default);
    &GROUPS
}

type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub bytes_in: Family<TopicLabels, Counter>,
    pub records_in: Family<TopicLabels, Counter>,
    pub bytes_out: Family<TopicLabels, Counter>,
    pub records_out: Family<TopicLabels, Counter>,
    pub request_seconds: HistogramFamily,
    pub request_errors: Family<RpcLabels, Counter>,
    pub log_size_bytes: Family<PartitionLabels, Gauge>,
    pub log_end_offset: Family<PartitionLabels, Gauge>,
    pub log_start_offset: Family<PartitionLabels, Gauge>,
    /// ISR changes this broker asked the controller for (shrinks and expansions).
    pub isr_changes: Counter,
    pub under_replicated_partitions: Gauge,
    pub offline_partitions: Gauge,
    pub raft_term: Gauge,
    pub raft_applied_index: Gauge,
    /// 1 while this broker is the controller (Raft leader).
    pub controller: Gauge,
    /// Per led partition: how many offsets the slowest follower is behind
    /// the leader's log end.
    pub follower_lag: Family<PartitionLabels, Gauge>,
    /// Bytes this leader sent to replicas copying for a reassignment under
    /// the throttle.
    pub throttled_bytes: Counter,
    pub reassignments: Gauge,
    /// Per mirror task on this broker: source records not copied yet.
    pub mirror_lag: Family<MirrorLabels, Gauge>,
    /// Per mirror task: records copied into this cluster.
    pub mirror_records: Family<MirrorLabels, Counter>,
}

fn request_histogram() -> Histogram {
    // 50 µs .. ~27 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tributary");
        let m = Metrics {
            bytes_in: Family::default(),
            records_in: Family::default(),
            bytes_out: Family::default(),
            records_out: Family::default(),
            request_seconds: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            request_errors: Family::default(),
            log_size_bytes: Family::default(),
            log_end_offset: Family::default(),
            log_start_offset: Family::default(),
            isr_changes: Counter::default(),
            under_replicated_partitions: Gauge::default(),
            offline_partitions: Gauge::default(),
            raft_term: Gauge::default(),
            raft_applied_index: Gauge::default(),
            controller: Gauge::default(),
            follower_lag: Family::default(),
            throttled_bytes: Counter::default(),
            reassignments: Gauge::default(),
            mirror_lag: Family::default(),
            mirror_records: Family::default(),
            registry: Registry::default(),
        };
        registry.register("bytes_in", "Record batch bytes appended", m.bytes_in.clone());
        registry.register("records_in", "Records appended", m.records_in.clone());
        registry.register("bytes_out", "Record batch bytes served to fetches", m.bytes_out.clone());
        registry.register("records_out", "Records served to fetches", m.records_out.clone());
        registry.register("request_duration_seconds", "gRPC request latency", m.request_seconds.clone());
        registry.register("request_errors", "gRPC requests answered with an error", m.request_errors.clone());
        registry.register("log_size_bytes", "Bytes of segment files per partition", m.log_size_bytes.clone());
        registry.register("log_end_offset", "Next offset per partition", m.log_end_offset.clone());
        registry.register(
            "log_start_offset",
            "First stored offset per partition",
            m.log_start_offset.clone(),
        );
        registry.register(
            "isr_changes",
            "ISR shrinks and expansions asked of the controller",
            m.isr_changes.clone(),
        );
        registry.register(
            "under_replicated_partitions",
            "Partitions with fewer live in-sync replicas than replicas (cluster-wide)",
            m.under_replicated_partitions.clone(),
        );
        registry.register(
            "offline_partitions",
            "Partitions with no leader (cluster-wide)",
            m.offline_partitions.clone(),
        );
        registry.register("raft_term", "Current term of the metadata quorum", m.raft_term.clone());
        registry.register(
            "raft_applied_index",
            "Last metadata entry applied here",
            m.raft_applied_index.clone(),
        );
        registry.register("controller", "1 while this broker is the controller", m.controller.clone());
        registry.register(
            "follower_lag_offsets",
            "Per led partition: offsets the slowest follower is behind the log end",
            m.follower_lag.clone(),
        );
        registry.register(
            "reassignment_throttled_bytes",
            "Bytes sent to replicas copying for a reassignment, under the throttle",
            m.throttled_bytes.clone(),
        );
        registry.register(
            "reassignments_in_progress",
            "Partitions being reassigned (cluster-wide)",
            m.reassignments.clone(),
        );
        registry.register(
            "mirror_lag",
            "Source records a mirror task has not copied yet",
            m.mirror_lag.clone(),
        );
        registry.register(
            "mirror_records",
            "Records mirror tasks copied into this cluster",
            m.mirror_records.clone(),
        );
        let g = group_metrics();
        registry.register(
            "group_records_skipped",
            "Group records and offsets skipped on load because they could not be parsed",
            g.records_skipped.clone(),
        );
        registry.register(
            "group_commit_batches",
            "Group commits to __consumer_offsets (one fsync per touched partition)",
            g.commit_batches.clone(),
        );
        registry.register(
            "group_commit_writes",
            "Offset commits and group records written by group commits",
            g.commit_writes.clone(),
        );
        registry.register(
            "group_commit_fsyncs",
            "fsyncs of __consumer_offsets partitions by group commits",
            g.commit_fsyncs.clone(),
        );
        registry.register(
            "group_commit_failures",
            "Offset commits and group records refused because their group commit failed",
            g.commit_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn observe(&self, rpc: &'static str, seconds: f64, ok: bool) {
        self.request_seconds.get_or_create(&RpcLabels { rpc }).observe(seconds);
        if !ok {
            self.request_errors.get_or_create(&RpcLabels { rpc }).inc();
        }
    }

    pub fn set_partition(&self, topic: &str, partition: u32, size: u64, start: i64, end: i64) {
        let l = PartitionLabels { topic: topic.to_string(), partition };
        self.log_size_bytes.get_or_create(&l).set(size as i64);
        self.log_start_offset.get_or_create(&l).set(start);
        self.log_end_offset.get_or_create(&l).set(end);
    }

    pub fn forget_partition(&self, topic: &str, partition: u32) {
        let l = PartitionLabels { topic: topic.to_string(), partition };
        self.log_size_bytes.remove(&l);
        self.log_start_offset.remove(&l);
        self.log_end_offset.remove(&l);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

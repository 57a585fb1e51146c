//! The `Cluster` kind: a set of brokers run as one StatefulSet.
//!
//! The spec says what a platform team chooses (how many brokers, which image,
//! how much disk, where pods may run, topic defaults); the operator turns it
//! into a ConfigMap, two Services, a StatefulSet and a PodDisruptionBudget.
//! The status says how many brokers are ready, which one is the metadata
//! controller, and why a rolling restart waits when it does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::{conditions_schema, Condition};

/// Default number of brokers. It stays 1 (as before brokers replicated):
/// raising it would scale up every existing Cluster that never set
/// `replicas`.
pub const DEFAULT_REPLICAS: i32 = 1;
/// How long a restarted broker may take to come back (ready, alive and in
/// every ISR) before the roll reports `Stalled`.
pub const DEFAULT_BROKER_TIMEOUT_SECONDS: i64 = 600;
/// Default volume size for each broker.
pub const DEFAULT_STORAGE_SIZE: &str = "10Gi";
/// Default gRPC port (the broker's own default).
pub const DEFAULT_GRPC_PORT: i32 = 7070;
/// Default HTTP port: metrics, `/healthz`, `/readyz`.
pub const DEFAULT_HTTP_PORT: i32 = 7071;
/// Default Kafka-protocol port (Kafka's own).
pub const DEFAULT_KAFKA_PORT: i32 = 9092;

/// Topic config keys the broker understands (see the README's topic table).
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "delete.retention.ms",
    "min.compaction.lag.ms",
    "max.message.bytes",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "min.insync.replicas",
    "unclean.leader.election.enable",
    "producer.id.expiration.ms",
];

/// A set of Tributary brokers.
// Each printer column is its own `printcolumn(...)`: not a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "Cluster",
    namespaced,
    status = "ClusterStatus",
    derive = "PartialEq",
    shortname = "trc",
    shortname = "tcluster",
    category = "tributary",
    doc = "A Tributary cluster: brokers run as a StatefulSet managed by the Tributary operator.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Brokers Ready", type_ = "integer", json_path = ".status.readyBrokers"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Number of brokers. Broker ids are the pod ordinals 0..replicas-1.
    /// Scaling down drains the leaving (highest) brokers, removes them from
    /// the quorum, and only then shrinks the StatefulSet.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Container image for the brokers. When unset, the operator's default
    /// image is used, tagged with `version` when that is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Tributary version to run (the image tag when `image` is unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"))]
    pub version: Option<String>,
    /// Image pull policy for the broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Persistent storage for each broker.
    #[serde(default)]
    pub storage: Storage,
    /// CPU and memory for each broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Spread brokers over failure domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<RackAwareness>,
    /// Where this cluster sits in the flow: `Local` clusters feed `Aggregate` ones.
    #[serde(default)]
    pub tier: Tier,
    /// Broker-wide settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerSettings>,
    /// Defaults for topic configs on this cluster (the broker's `[topic_defaults]`),
    /// by Kafka-style key such as `retention.ms`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(k, k in ['cleanup.policy', 'retention.ms', 'retention.bytes', 'segment.bytes', 'segment.ms', 'delete.retention.ms', 'min.compaction.lag.ms', 'max.message.bytes', 'flush.messages', 'flush.ms', 'index.interval.bytes', 'min.insync.replicas', 'unclean.leader.election.enable', 'producer.id.expiration.ms'])",
        "message": "unknown topic config key; see the topic config table in the README",
    }]))]
    pub topic_defaults: BTreeMap<String, String>,
    /// Ports and TLS.
    #[serde(default)]
    pub listeners: Listeners,
    /// Additions to the broker pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodOverrides>,
    /// Metrics and tracing.
    #[serde(default)]
    pub observability: Observability,
    /// How rolling restarts proceed.
    #[serde(default)]
    pub roll: RollSettings,
    /// After a scale-up, move replicas onto the new brokers (with the
    /// reassignment throttle) so that every broker holds a fair share.
    #[serde(default)]
    pub rebalance_on_scale: bool,
    /// Partition reassignments the operator starts (drains, rebalances,
    /// replication-factor changes).
    #[serde(default)]
    pub reassignment: ReassignmentSettings,
}

/// How rolling restarts proceed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollSettings {
    /// Restart brokers even though a topic with replication factor 1 has
    /// its only replica there (the topic is unavailable while it restarts).
    /// Otherwise such a topic blocks the roll with `Stalled`.
    #[serde(default)]
    pub allow_single_replica_downtime: bool,
    /// How long a restarted broker may take to be ready, alive and back in
    /// every ISR before the roll reports `Stalled` naming it.
    #[serde(default = "default_broker_timeout_seconds")]
    #[schemars(range(min = 30, max = 86400))]
    pub broker_timeout_seconds: i64,
}

fn default_broker_timeout_seconds() -> i64 {
    DEFAULT_BROKER_TIMEOUT_SECONDS
}

impl Default for RollSettings {
    fn default() -> Self {
        RollSettings {
            allow_single_replica_downtime: false,
            broker_timeout_seconds: DEFAULT_BROKER_TIMEOUT_SECONDS,
        }
    }
}

/// Reassignments the operator starts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReassignmentSettings {
    /// Cluster-wide limit on the bytes per second new replicas copy while
    /// reassignments run; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub throttle_bytes_per_second: Option<i64>,
}

fn default_replicas() -> i32 {
    DEFAULT_REPLICAS
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            replicas: DEFAULT_REPLICAS,
            image: None,
            version: None,
            image_pull_policy: None,
            storage: Storage::default(),
            resources: None,
            rack: None,
            tier: Tier::default(),
            broker: None,
            topic_defaults: BTreeMap::new(),
            listeners: Listeners::default(),
            pod_template: None,
            observability: Observability::default(),
            roll: RollSettings::default(),
            rebalance_on_scale: false,
            reassignment: ReassignmentSettings::default(),
        }
    }
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Volumes for broker data (one PersistentVolumeClaim per broker).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of each broker's volume, e.g. `100Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(pattern(r"^([+]?[0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"))]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when unset.
    /// Fixed once the cluster exists (volume claims cannot change class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "storageClassName is immutable"}]))]
    pub storage_class_name: Option<String>,
    /// Annotations put on each generated PersistentVolumeClaim
    /// (for example Argo CD's `argocd.argoproj.io/sync-options: Prune=false`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Delete a removed broker's volume claim when the Cluster scales down
    /// (the StatefulSet's `persistentVolumeClaimRetentionPolicy.whenScaled`).
    /// Kept by default: a claim left behind costs disk, a deleted one
    /// cannot be brought back.
    #[serde(default)]
    pub delete_claims_on_scale_down: bool,
}

fn default_storage_size() -> String {
    DEFAULT_STORAGE_SIZE.to_string()
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            size: default_storage_size(),
            storage_class_name: None,
            annotations: BTreeMap::new(),
            delete_claims_on_scale_down: false,
        }
    }
}

/// Rack awareness: brokers spread evenly over the values of a node label.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RackAwareness {
    /// Node label naming the failure domain, e.g. `topology.kubernetes.io/zone`.
    #[schemars(length(min = 1, max = 316))]
    pub topology_key: String,
}

/// The cluster's tier.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Tier {
    #[default]
    Local,
    Aggregate,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Aggregate => "aggregate",
        }
    }
}

/// Broker-wide settings (the broker's TOML keys). Unset keys keep the broker's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSettings {
    /// How often retention runs, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000))]
    pub retention_check_interval_ms: Option<i64>,
    /// How often compacted topics are cleaned, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000))]
    pub cleaner_interval_ms: Option<i64>,
    /// RocksDB block cache shared by all partitions, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576))]
    pub block_cache_bytes: Option<i64>,
    /// RocksDB memtable budget shared by all partitions, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576))]
    pub write_buffer_bytes: Option<i64>,
}

/// Where the brokers listen.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    /// gRPC port (produce, fetch, admin).
    #[serde(default = "default_grpc_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub grpc_port: i32,
    /// HTTP port (metrics, `/healthz`, `/readyz`).
    #[serde(default = "default_http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub http_port: i32,
    /// Kafka wire-protocol port (Kafka clients and tools: librdkafka,
    /// kcat, kafka-python, the Java client).
    #[serde(default = "default_kafka_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub kafka_port: i32,
    /// TLS for the gRPC listener. Reserved: the broker does not serve TLS
    /// yet, and the operator reports `Stalled` while this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsListener>,
}

fn default_grpc_port() -> i32 {
    DEFAULT_GRPC_PORT
}

fn default_http_port() -> i32 {
    DEFAULT_HTTP_PORT
}

fn default_kafka_port() -> i32 {
    DEFAULT_KAFKA_PORT
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            grpc_port: DEFAULT_GRPC_PORT,
            http_port: DEFAULT_HTTP_PORT,
            kafka_port: DEFAULT_KAFKA_PORT,
            tls: None,
        }
    }
}

/// TLS settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsListener {
    /// A `kubernetes.io/tls` Secret in the cluster's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Additions to the broker pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels (the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Service account for the broker pods (the namespace's `default` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// Metrics and tracing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Observability {
    /// Add `prometheus.io/scrape` annotations for the broker's `/metrics`.
    #[serde(default = "default_true")]
    pub metrics_annotations: bool,
    /// OTLP/gRPC endpoint for traces (`OTEL_EXPORTER_OTLP_ENDPOINT`), e.g.
    /// `http://otel-collector.observability:4317`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^https?://.+$"))]
    pub otlp_endpoint: Option<String>,
    /// Log filter (`RUST_LOG`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Default for Observability {
    fn default() -> Self {
        Observability { metrics_annotations: true, otlp_endpoint: None, log_level: None }
    }
}

/// What the operator observed about a Cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Brokers whose `/readyz` answers.
    #[serde(default)]
    pub ready_brokers: i32,
    /// Brokers the StatefulSet runs.
    #[serde(default)]
    pub replicas: i32,
    /// Brokers the Cluster declares (`spec.replicas`).
    #[serde(default)]
    pub declared_brokers: i32,
    /// Brokers holding a live session with the controller.
    #[serde(default)]
    pub alive_brokers: i32,
    /// Partitions with fewer in-sync replicas than replicas, as the brokers
    /// report them.
    #[serde(default)]
    pub under_replicated_partitions: i32,
    /// Partitions without a leader.
    #[serde(default)]
    pub offline_partitions: i32,
    /// Node id of the metadata controller (the Raft quorum leader), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<i32>,
    /// Image the brokers run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Tributary version the brokers run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address clients bootstrap from (`host:port` of the client Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<String>,
    /// Why a rolling restart is waiting, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll_blocked: Option<String>,
    /// The rolling restart in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll: Option<RollProgress>,
    /// What a scale-down or rebalance is doing, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<String>,
}

/// A rolling restart in progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollProgress {
    /// Brokers running the current pod template.
    #[serde(default)]
    pub updated: i32,
    /// Brokers in the StatefulSet.
    #[serde(default)]
    pub total: i32,
    /// Node id of the broker restarted last, until it is back in every ISR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarting: Option<i32>,
    /// When that broker was restarted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<String>,
}

//! The `Topic` kind: one topic on one Cluster, managed one way.
//!
//! Kubernetes is the source of truth: the operator creates the topic, grows
//! its partitions and sets its configs to match the spec, and reverts changes
//! made behind its back. What the schema can refuse it refuses at admission
//! (shrinking partitions, moving a topic to another cluster, unknown config
//! keys); what needs the cluster's state (a replication factor above the
//! number of brokers) the operator refuses with a `Stalled` condition,
//! because a CEL rule sees one object and cannot read the Cluster's replicas.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::{conditions_schema, Condition};

/// Most partitions a topic may have (the broker's own limit).
pub const MAX_PARTITIONS: i32 = 10_000;

/// A topic on a Tributary cluster.
// Each printer column is its own `printcolumn(...)`: not a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "Topic",
    namespaced,
    status = "TopicStatus",
    derive = "PartialEq",
    shortname = "trt",
    shortname = "ttopic",
    category = "tributary",
    doc = "A topic on a Tributary cluster, created and kept in line with this spec by the Tributary operator.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterRef.name"),
    printcolumn(name = "Partitions", type_ = "integer", json_path = ".spec.partitions"),
    printcolumn(name = "RF", type_ = "integer", json_path = ".spec.replicationFactor"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Topic", type_ = "string", json_path = ".status.topicName", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.topicName) ? self.topicName : '') == (has(oldSelf.topicName) ? oldSelf.topicName : '')",
    "message": "topicName is immutable: create a new Topic instead",
}]))]
pub struct TopicSpec {
    /// The Cluster (in this namespace) that holds the topic. Immutable.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "clusterRef is immutable"}]))]
    pub cluster_ref: ClusterRef,
    /// The topic's name on the brokers; `metadata.name` when unset. Use it
    /// for names Kubernetes does not allow, such as ones with `_` or capitals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), pattern(r"^[A-Za-z0-9._-]+$"))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self != '.' && self != '..'", "message": "'.' and '..' are not topic names"}]))]
    pub topic_name: Option<String>,
    /// Number of partitions. May grow, never shrink (records are placed by
    /// key hash: removing partitions would lose data and reorder keys).
    #[schemars(range(min = 1, max = 10000))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self >= oldSelf", "message": "partitions may only grow"}]))]
    pub partitions: i32,
    /// Copies of each partition. At most the Cluster's broker count, which
    /// the operator checks (a schema rule cannot read another object).
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i32,
    /// Topic configs by Kafka-style key (`retention.ms`, `cleanup.policy`, ...).
    /// Keys not set here take the cluster's defaults; values set on the
    /// brokers by other means are reverted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.all(k, k in ['cleanup.policy', 'retention.ms', 'retention.bytes', 'segment.bytes', 'segment.ms', 'delete.retention.ms', 'min.compaction.lag.ms', 'max.message.bytes', 'flush.messages', 'flush.ms', 'index.interval.bytes', 'min.insync.replicas', 'unclean.leader.election.enable', 'producer.id.expiration.ms'])",
            "message": "unknown topic config key; see the topic config table in the README",
        },
        {
            "rule": "!('cleanup.policy' in self) || self['cleanup.policy'] in ['delete', 'compact', 'compact,delete']",
            "message": "cleanup.policy must be delete, compact or compact,delete",
        },
        {
            "rule": "self.all(k, k == 'cleanup.policy' || k == 'unclean.leader.election.enable' || self[k].matches('^-?[0-9]{1,19}$'))",
            "message": "numeric topic configs must be whole numbers",
        },
        {
            "rule": "!('unclean.leader.election.enable' in self) || self['unclean.leader.election.enable'] in ['true', 'false']",
            "message": "unclean.leader.election.enable must be true or false",
        },
    ]))]
    pub config: BTreeMap<String, String>,
    /// What deleting this object does to the topic: `Retain` (the default)
    /// keeps the topic and its data; `Delete` deletes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A Cluster in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ClusterRef {
    /// The Cluster's `metadata.name`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What happens to a topic when its Topic object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the topic and its data.
    Delete,
    /// Keep the topic on the cluster; only the Kubernetes object goes.
    #[default]
    Retain,
}

impl Topic {
    /// The topic's name on the brokers.
    pub fn topic_name(&self) -> &str {
        match &self.spec.topic_name {
            Some(n) => n,
            None => self.metadata.name.as_deref().unwrap_or_default(),
        }
    }
}

/// What the operator observed about a Topic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The topic's name on the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// The broker's id for the topic (changes if the topic is recreated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// Partitions the topic has on the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replication factor the topic has on the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Partitions with fewer in-sync replicas than the replication factor.
    #[serde(default)]
    pub under_replicated_partitions: i32,
    /// Partitions without a leader.
    #[serde(default)]
    pub offline_partitions: i32,
    /// A replication-factor change in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reassignment: Option<Reassignment>,
}

/// A running replication-factor change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reassignment {
    pub from_replication_factor: i32,
    pub to_replication_factor: i32,
    /// Partitions already at the target.
    pub partitions_done: i32,
}

//! The `MirrorLink` kind: copy chosen topics from a source cluster into a
//! destination cluster (local tier → aggregate tier).
//!
//! The object lives in the destination's namespace, next to the destination
//! Cluster it names. The source is either another Cluster object or any
//! broker reachable at a bootstrap address. Copied topics are named
//! `<alias>.<topic>` by default; `Identity` naming keeps the source name,
//! which the operator accepts only while the graph of all MirrorLinks stays
//! acyclic (a cycle would copy records around forever).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::{conditions_schema, Condition};
use crate::topic::ClusterRef;

/// Copies topics from a source cluster into a destination cluster.
// Each printer column is its own `printcolumn(...)`: not a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "MirrorLink",
    namespaced,
    status = "MirrorLinkStatus",
    derive = "PartialEq",
    shortname = "trm",
    shortname = "mirror",
    category = "tributary",
    doc = "Copies topics from a source Tributary cluster into a destination cluster.",
    printcolumn(name = "Source", type_ = "string", json_path = ".status.source"),
    printcolumn(name = "Destination", type_ = "string", json_path = ".spec.destination.clusterRef.name"),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.totalLag"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MirrorLinkSpec {
    /// Where records come from.
    pub source: MirrorSource,
    /// Where records go. Immutable.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "destination is immutable"}]))]
    pub destination: MirrorDestination,
    /// Which source topics to copy.
    pub topics: TopicSelector,
    /// How copied topics are named in the destination.
    #[serde(default)]
    pub naming: Naming,
    /// Where copying starts for a topic the link has not copied before.
    #[serde(default)]
    pub start_position: StartPosition,
    /// Stop copying (progress is kept) while true.
    #[serde(default)]
    pub paused: bool,
}

/// The source cluster: a Cluster object, or a bootstrap address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.clusterRef) != has(self.bootstrap)", "message": "give exactly one of clusterRef and bootstrap"},
    {"rule": "has(self.clusterRef) || has(self.alias)", "message": "alias is required when the source is a bootstrap address"},
]))]
pub struct MirrorSource {
    /// A Cluster object, possibly in another namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<NamespacedClusterRef>,
    /// `host:port` of brokers of a cluster not managed here: one, or a
    /// comma-separated list (any broker that answers will do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9.-]+:[0-9]{1,5}(,[A-Za-z0-9.-]+:[0-9]{1,5})*$"))]
    pub bootstrap: Option<String>,
    /// Short name of the source, used as the prefix of copied topics and in
    /// provenance headers; the Cluster's name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub alias: Option<String>,
}

impl MirrorSource {
    /// The alias copied topics are prefixed with.
    pub fn alias(&self) -> Option<&str> {
        self.alias.as_deref().or(self.cluster_ref.as_ref().map(|c| c.name.as_str()))
    }
}

/// A Cluster in any namespace (this one when `namespace` is unset).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct NamespacedClusterRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// The destination cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorDestination {
    /// A Cluster in the MirrorLink's namespace.
    pub cluster_ref: ClusterRef,
}

/// Source topics chosen by name and by regular expression, minus exclusions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "size(self.names) + size(self.patterns) > 0", "message": "name at least one topic or pattern"},
]))]
pub struct TopicSelector {
    /// Exact topic names.
    #[serde(default)]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 249), pattern(r"^[A-Za-z0-9._-]+$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub names: Vec<String>,
    /// Regular expressions (RE2 syntax) matched against whole topic names.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 1024)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub patterns: Vec<String>,
    /// Topic names never copied, even when named or matched above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 249)))]
    pub exclude: Vec<String>,
    /// Regular expressions for topics never copied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 1024)))]
    pub exclude_patterns: Vec<String>,
}

/// How a copied topic is named in the destination.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Naming {
    /// `<alias>.<topic>`: topics from several sources never collide, and
    /// records cannot loop.
    #[default]
    Prefix,
    /// The source topic's own name. Several local clusters may feed one
    /// aggregate topic; refused when the links would form a cycle.
    Identity,
}

/// Where a link starts reading a topic it has not copied before.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StartPosition {
    /// From the oldest record still stored: nothing already produced is missed.
    #[default]
    Earliest,
    /// Only records produced after the link starts.
    Latest,
}

/// What the operator observed about a MirrorLink.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorLinkStatus {
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The source as a person reads it (`namespace/cluster` or `host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Records behind, summed over all copied partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_lag: Option<i64>,
    /// Per copied topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<MirroredTopic>,
}

/// One copied topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirroredTopic {
    pub source: String,
    pub destination: String,
    /// Records behind the source's high watermark, summed over partitions.
    pub lag: i64,
    /// Whether the audit found every produced record in the destination
    /// (unset until audit counts exist for the topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_complete: Option<bool>,
}

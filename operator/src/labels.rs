//! Names and labels of the objects the operator owns.
//!
//! Kept in one place because they are an interface: selectors of a
//! StatefulSet are immutable once created, Services find pods by them, and
//! people grep for them (`kubectl get pods -l tributary.dev/cluster=NAME`).

use std::collections::BTreeMap;

/// The field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "tributary-operator";
/// Label naming the Cluster an object belongs to.
pub const CLUSTER_LABEL: &str = "tributary.dev/cluster";
/// Label carrying the Cluster's tier (`local` / `aggregate`).
pub const TIER_LABEL: &str = "tributary.dev/tier";
/// Pod annotation holding a hash of the broker config, so a config change
/// changes the pod template and shows which pods still run the old one.
pub const CONFIG_HASH_ANNOTATION: &str = "tributary.dev/config-hash";
/// Label the StatefulSet controller puts on each pod with its ordinal
/// (Kubernetes ≥ 1.28); the broker's node id is read from it.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Labels that select a Cluster's broker pods. Never change these: a
/// StatefulSet's selector cannot be changed after creation.
pub fn selector_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "tributary".to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.to_string()),
        ("app.kubernetes.io/component".to_string(), "broker".to_string()),
    ])
}

/// Labels put on every object the operator creates for a Cluster.
pub fn common_labels(cluster: &str, tier: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster);
    l.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    l.insert("app.kubernetes.io/part-of".into(), "tributary".into());
    l.insert(CLUSTER_LABEL.into(), cluster.into());
    l.insert(TIER_LABEL.into(), tier.into());
    l
}

/// The ConfigMap holding `broker.toml`.
pub fn config_map_name(cluster: &str) -> String {
    format!("{cluster}-config")
}

/// The headless Service giving each broker a stable DNS name
/// (`<cluster>-<ordinal>.<cluster>-brokers.<namespace>.svc`).
pub fn headless_service_name(cluster: &str) -> String {
    format!("{cluster}-brokers")
}

/// The Service clients bootstrap from; also the StatefulSet's and PDB's name.
pub fn client_service_name(cluster: &str) -> String {
    cluster.to_string()
}

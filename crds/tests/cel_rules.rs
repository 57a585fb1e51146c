//! The CEL rules (`x-kubernetes-validations`) of the generated CRDs, compiled
//! and evaluated client-side by kube's CEL validator (the `kube/cel`
//! feature, with the Kubernetes CEL extension library). A rule that does not
//! compile fails every object here, so these tests also check that each rule
//! is valid CEL. Whether the API server accepts each rule's cost estimate is
//! only checked against a real API server (operator/tests/kube_e2e.rs).

use kube::core::cel::{validate_cel, validate_cel_update};
use serde_json::{json, Value};
use tributary_crds::{Cluster, MirrorLink, Topic};

fn topic(spec: Value) -> Topic {
    serde_json::from_value(json!({
        "apiVersion": "tributary.dev/v1alpha1", "kind": "Topic",
        "metadata": {"name": "clicks", "namespace": "ns"},
        "spec": spec,
    }))
    .expect("topic")
}

fn base() -> Value {
    json!({
        "clusterRef": {"name": "local-a"},
        "partitions": 3,
        "replicationFactor": 1,
        "config": {"retention.ms": "86400000", "cleanup.policy": "compact,delete"},
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn messages<T: std::fmt::Debug>(r: Result<(), T>) -> String {
    match r {
        Ok(()) => String::new(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn a_valid_topic_passes_every_rule() {
    let t = topic(base());
    assert_eq!(messages(validate_cel(&t)), "");
    assert_eq!(messages(validate_cel_update(&t, &t)), "");
}

#[test]
fn partitions_may_only_grow() {
    let old = topic(base());
    let grown = topic(with(base(), "partitions", json!(6)));
    assert_eq!(messages(validate_cel_update(&grown, &old)), "");
    let shrunk = topic(with(base(), "partitions", json!(2)));
    assert!(messages(validate_cel_update(&shrunk, &old)).contains("partitions may only grow"));
    // On creation there is no oldSelf: any count in range is fine.
    assert_eq!(messages(validate_cel(&shrunk)), "");
}

#[test]
fn cluster_ref_and_topic_name_are_immutable() {
    let old = topic(base());
    let moved = topic(with(base(), "clusterRef", json!({"name": "other"})));
    assert!(messages(validate_cel_update(&moved, &old)).contains("clusterRef is immutable"));

    let named = topic(with(base(), "topicName", json!("clicks_v2")));
    assert!(messages(validate_cel_update(&named, &old)).contains("topicName is immutable"), "adding it");
    assert!(messages(validate_cel_update(&old, &named)).contains("topicName is immutable"), "removing it");
    let renamed = topic(with(base(), "topicName", json!("clicks_v3")));
    assert!(
        messages(validate_cel_update(&renamed, &named)).contains("topicName is immutable"),
        "changing it"
    );
    assert_eq!(messages(validate_cel_update(&named, &named)), "");
    assert!(messages(validate_cel(&topic(with(base(), "topicName", json!("..")))))
        .contains("'.' and '..' are not topic names"));
}

#[test]
fn topic_configs_are_checked() {
    let bad_key = topic(with(base(), "config", json!({"retention.hours": "1"})));
    assert!(messages(validate_cel(&bad_key)).contains("unknown topic config key"));
    let bad_policy = topic(with(base(), "config", json!({"cleanup.policy": "archive"})));
    assert!(messages(validate_cel(&bad_policy)).contains("cleanup.policy must be"));
    let not_a_number = topic(with(base(), "config", json!({"retention.ms": "1d"})));
    assert!(messages(validate_cel(&not_a_number)).contains("whole numbers"));
    let forever = topic(with(base(), "config", json!({"retention.ms": "-1", "cleanup.policy": "delete"})));
    assert_eq!(messages(validate_cel(&forever)), "");
}

#[test]
fn replication_settings_are_accepted() {
    let replicated = topic(with(
        base(),
        "config",
        json!({"min.insync.replicas": "2", "unclean.leader.election.enable": "false", "producer.id.expiration.ms": "60000"}),
    ));
    assert_eq!(messages(validate_cel(&replicated)), "");
    let unclean = topic(with(base(), "config", json!({"unclean.leader.election.enable": "yes"})));
    assert!(messages(validate_cel(&unclean)).contains("unclean.leader.election.enable must be true or false"));
    let isr = topic(with(base(), "config", json!({"min.insync.replicas": "two"})));
    assert!(messages(validate_cel(&isr)).contains("whole numbers"));
}

fn link(spec: Value) -> MirrorLink {
    serde_json::from_value(json!({
        "apiVersion": "tributary.dev/v1alpha1", "kind": "MirrorLink",
        "metadata": {"name": "l", "namespace": "ns"},
        "spec": spec,
    }))
    .expect("link")
}

#[test]
fn mirror_link_rules() {
    let spec = |source: Value, topics: Value| json!({"source": source, "destination": {"clusterRef": {"name": "agg"}}, "topics": topics});
    let clicks = json!({"names": ["clicks"]});
    let ok = link(spec(json!({"clusterRef": {"name": "local-a"}}), clicks.clone()));
    assert_eq!(messages(validate_cel(&ok)), "");
    let by_address =
        link(spec(json!({"bootstrap": "edge-a.example:7070", "alias": "edge-a"}), clicks.clone()));
    assert_eq!(messages(validate_cel(&by_address)), "");

    let both = link(spec(json!({"clusterRef": {"name": "a"}, "bootstrap": "a:7070"}), clicks.clone()));
    assert!(messages(validate_cel(&both)).contains("exactly one of clusterRef and bootstrap"));
    let neither = link(spec(json!({"alias": "a"}), clicks.clone()));
    assert!(messages(validate_cel(&neither)).contains("exactly one of clusterRef and bootstrap"));
    let no_alias = link(spec(json!({"bootstrap": "a:7070"}), clicks.clone()));
    assert!(messages(validate_cel(&no_alias)).contains("alias is required"));
    let nothing = link(spec(json!({"clusterRef": {"name": "a"}}), json!({})));
    assert!(messages(validate_cel(&nothing)).contains("name at least one topic or pattern"));

    let mut moved = ok.clone();
    moved.spec.destination.cluster_ref.name = "elsewhere".into();
    assert!(messages(validate_cel_update(&moved, &ok)).contains("destination is immutable"));
    let mut paused = ok.clone();
    paused.spec.paused = true;
    assert_eq!(messages(validate_cel_update(&paused, &ok)), "");
}

#[test]
fn cluster_rules() {
    let cluster = |spec: Value| -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "tributary.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "c", "namespace": "ns"}, "spec": spec,
        }))
        .expect("cluster")
    };
    let old = cluster(json!({"storage": {"size": "10Gi", "storageClassName": "fast"}}));
    assert_eq!(messages(validate_cel(&old)), "");
    let resized = cluster(json!({"replicas": 5, "storage": {"size": "20Gi", "storageClassName": "fast"}}));
    assert_eq!(messages(validate_cel_update(&resized, &old)), "");
    let reclassed = cluster(json!({"storage": {"size": "10Gi", "storageClassName": "slow"}}));
    assert!(messages(validate_cel_update(&reclassed, &old)).contains("storageClassName is immutable"));
    let bad_default = cluster(json!({"topicDefaults": {"retention": "1"}}));
    assert!(messages(validate_cel(&bad_default)).contains("unknown topic config key"));
}

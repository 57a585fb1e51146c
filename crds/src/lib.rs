//! Tributary's Kubernetes custom resources: `Cluster`, `Topic` and
//! `MirrorLink` in API group `tributary.dev`, version `v1alpha1`.
//!
//! These types are the contract between a platform team's YAML and the
//! operator. Each one is a `kube::CustomResource` whose OpenAPI schema is
//! derived with schemars, so the CRD installed in a cluster is generated from
//! this code (`tributary-operator crd`) and never edited by hand; a test in
//! the operator crate fails when `crds/generated/` or the Helm chart drift
//! from it.
//!
//! Validation lives in the schema, so the API server refuses bad objects at
//! admission without a webhook:
//!
//! - ranges, enums and patterns (replicas, partitions, ports, topic names,
//!   quantities, config keys and values);
//! - CEL transition rules (`x-kubernetes-validations`): a Topic's partitions
//!   may only grow (`self >= oldSelf`), its `clusterRef` and `topicName` are
//!   immutable, a MirrorLink's destination is immutable, and a Cluster's
//!   storage class cannot change.
//!
//! `tests/cel_rules.rs` compiles and evaluates every CEL rule client-side
//! (kube's `cel` feature) on valid and invalid objects and updates.
//!
//! One rule cannot be a schema rule: a Topic's replication factor must not
//! exceed its Cluster's brokers, and CEL sees one object at a time. The
//! operator checks it and reports `Stalled` with reason
//! `ReplicationFactorTooHigh`.
//!
//! Every status carries `observedGeneration` and the kstatus conditions
//! `Ready`, `Reconciling` and `Stalled` ([`conditions`]).

pub mod cluster;
pub mod conditions;
pub mod mirror_link;
pub mod topic;

pub use cluster::{Cluster, ClusterSpec, ClusterStatus};
pub use conditions::{Condition, ConditionStatus};
pub use mirror_link::{MirrorLink, MirrorLinkSpec, MirrorLinkStatus};
pub use topic::{Topic, TopicSpec, TopicStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Tributary kind.
pub const GROUP: &str = "tributary.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// The three CRDs, in the order they are printed and installed.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![Cluster::crd(), Topic::crd(), MirrorLink::crd()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn schema_of(crd: &CustomResourceDefinition) -> Value {
        let v = serde_json::to_value(crd).expect("crd serializes");
        v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    fn rules(v: &Value) -> Vec<String> {
        v["x-kubernetes-validations"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["rule"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    #[test]
    fn names_group_and_scope() {
        let expect = [
            ("clusters.tributary.dev", "Cluster", vec!["trc", "tcluster"]),
            ("topics.tributary.dev", "Topic", vec!["trt", "ttopic"]),
            ("mirrorlinks.tributary.dev", "MirrorLink", vec!["trm", "mirror"]),
        ];
        for (crd, (name, kind, short)) in all_crds().iter().zip(expect) {
            assert_eq!(crd.metadata.name.as_deref(), Some(name));
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.names.kind, kind);
            assert_eq!(
                crd.spec.names.short_names.as_deref(),
                Some(&short.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..])
            );
            assert_eq!(crd.spec.names.categories.as_deref(), Some(&["tributary".to_string()][..]));
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, VERSION);
            assert!(version.served && version.storage);
            assert!(
                version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
                "{kind} has /status"
            );
            let columns: Vec<_> =
                version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
            assert!(columns.contains(&"Ready") && columns.contains(&"Age"), "{kind}: {columns:?}");
        }
    }

    #[test]
    fn topic_schema_has_transition_rules_and_ranges() {
        let s = schema_of(&Topic::crd());
        let spec = &s["properties"]["spec"];
        assert_eq!(rules(&spec["properties"]["partitions"]), ["self >= oldSelf"]);
        assert_eq!(spec["properties"]["partitions"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(
            spec["properties"]["partitions"]["maximum"].as_f64(),
            Some(f64::from(topic::MAX_PARTITIONS))
        );
        assert_eq!(rules(&spec["properties"]["clusterRef"]), ["self == oldSelf"]);
        assert!(rules(spec).iter().any(|r| r.contains("oldSelf.topicName")), "topicName immutable");
        assert_eq!(spec["properties"]["replicationFactor"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(spec["properties"]["topicName"]["pattern"], "^[A-Za-z0-9._-]+$");
        assert_eq!(spec["properties"]["topicName"]["maxLength"], 249);
        assert_eq!(spec["properties"]["deletionPolicy"]["enum"], serde_json::json!(["Delete", "Retain"]));
        assert_eq!(spec["properties"]["deletionPolicy"]["default"], "Retain");
        let config_rules = rules(&spec["properties"]["config"]);
        assert_eq!(config_rules.len(), 4);
        for key in cluster::TOPIC_CONFIG_KEYS {
            assert!(config_rules[0].contains(&format!("'{key}'")), "{key} allowed");
        }
        let required: Vec<_> = spec["required"].as_array().expect("required").iter().collect();
        for f in ["clusterRef", "partitions", "replicationFactor"] {
            assert!(required.contains(&&Value::from(f)), "{f} required");
        }
    }

    #[test]
    fn statuses_have_keyed_conditions() {
        for crd in all_crds() {
            let s = schema_of(&crd);
            let status = &s["properties"]["status"]["properties"];
            assert_eq!(status["observedGeneration"]["type"], "integer");
            let conditions = &status["conditions"];
            assert_eq!(conditions["x-kubernetes-list-type"], "map");
            assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
            let cond = &conditions["items"]["properties"];
            for f in ["type", "status", "observedGeneration", "lastTransitionTime", "reason", "message"] {
                assert!(cond.get(f).is_some(), "condition.{f}");
            }
            assert_eq!(cond["status"]["enum"], serde_json::json!(["True", "False", "Unknown"]));
        }
    }

    #[test]
    fn cluster_and_mirror_link_rules() {
        let c = schema_of(&Cluster::crd());
        let spec = &c["properties"]["spec"]["properties"];
        assert_eq!(spec["replicas"]["default"], 1);
        assert_eq!(spec["replicas"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(spec["tier"]["enum"], serde_json::json!(["Local", "Aggregate"]));
        assert_eq!(rules(&spec["storage"]["properties"]["storageClassName"]), ["self == oldSelf"]);
        assert!(spec["storage"]["properties"]["size"]["pattern"].is_string());
        // Embedded Kubernetes types come with their own schemas.
        assert!(spec["podTemplate"]["properties"]["tolerations"]["items"]["properties"]["key"].is_object());
        assert!(spec["resources"]["properties"]["limits"].is_object());

        let m = schema_of(&MirrorLink::crd());
        let spec = &m["properties"]["spec"]["properties"];
        assert_eq!(rules(&spec["destination"]), ["self == oldSelf"]);
        assert_eq!(rules(&spec["source"]).len(), 2);
        assert_eq!(spec["naming"]["default"], "Prefix");
        assert_eq!(spec["startPosition"]["default"], "Earliest");
        assert_eq!(rules(&spec["topics"]), ["size(self.names) + size(self.patterns) > 0"]);
    }

    #[test]
    fn cluster_defaults_from_minimal_yaml() {
        let c: Cluster = serde_norway::from_str(
            "apiVersion: tributary.dev/v1alpha1\nkind: Cluster\nmetadata: {name: c, namespace: ns}\nspec: {}\n",
        )
        .expect("parses");
        assert_eq!(c.spec, ClusterSpec::default());
        assert_eq!(c.spec.replicas, 1);
        assert_eq!(c.spec.storage.size, "10Gi");
        assert_eq!(c.spec.listeners.grpc_port, 7070);
        assert_eq!(c.spec.listeners.http_port, 7071);
        assert!(c.spec.observability.metrics_annotations);
        assert_eq!(c.spec.tier, cluster::Tier::Local);
        assert!(c.status.is_none());
    }

    #[test]
    fn topic_round_trip_and_name() {
        let yaml = r#"
apiVersion: tributary.dev/v1alpha1
kind: Topic
metadata: {name: clicks, namespace: ns, generation: 2}
spec:
  clusterRef: {name: local-a}
  partitions: 6
  replicationFactor: 3
  config: {retention.ms: "86400000", cleanup.policy: compact}
status:
  observedGeneration: 1
  conditions:
  - {type: Ready, status: "False", reason: Creating, message: "", lastTransitionTime: "2024-05-01T10:00:00Z"}
"#;
        let t: Topic = serde_norway::from_str(yaml).expect("parses");
        assert_eq!(t.topic_name(), "clicks");
        assert_eq!(t.spec.deletion_policy, topic::DeletionPolicy::Retain);
        assert_eq!(t.spec.config.get("cleanup.policy").map(String::as_str), Some("compact"));
        let status = t.status.as_ref().expect("status");
        assert_eq!(status.conditions[0].status, ConditionStatus::False);
        let back: Topic = serde_json::from_value(serde_json::to_value(&t).expect("ser")).expect("de");
        assert_eq!(back, t);

        let mut renamed = t.clone();
        renamed.spec.topic_name = Some("Clicks_v2".into());
        assert_eq!(renamed.topic_name(), "Clicks_v2");
    }

    #[test]
    fn mirror_link_defaults_and_alias() {
        let yaml = r#"
apiVersion: tributary.dev/v1alpha1
kind: MirrorLink
metadata: {name: a-to-agg, namespace: ns}
spec:
  source: {clusterRef: {name: local-a, namespace: edge}}
  destination: {clusterRef: {name: aggregate}}
  topics: {names: [clicks], patterns: ["orders\\..*"]}
"#;
        let m: MirrorLink = serde_norway::from_str(yaml).expect("parses");
        assert_eq!(m.spec.naming, mirror_link::Naming::Prefix);
        assert_eq!(m.spec.start_position, mirror_link::StartPosition::Earliest);
        assert!(!m.spec.paused);
        assert_eq!(m.spec.source.alias(), Some("local-a"));
        assert_eq!(m.spec.topics.patterns, ["orders\\..*"]);
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let bad = "clusterRef: {name: c}\npartitions: 1\nreplicationFactor: 1\ndeletionPolicy: Purge\n";
        assert!(serde_norway::from_str::<TopicSpec>(bad).is_err());
    }
}

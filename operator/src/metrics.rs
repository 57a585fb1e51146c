//! Prometheus metrics of the controller: reconciles, failures and how long
//! reconciles take, per kind; and per Cluster what its status says (brokers
//! declared, ready and alive, the metadata controller, under-replicated and
//! offline partitions, brokers a roll still has to restart, stalled or not),
//! per Topic its under-replicated and offline partitions. Served on
//! `/metrics` by [`crate::server`].

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// One Cluster or Topic object.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabel {
    pub namespace: String,
    pub name: String,
}

/// What a Cluster's status says, as numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterGauges {
    pub declared: i64,
    pub ready: i64,
    pub alive: i64,
    pub under_replicated: i64,
    pub offline: i64,
    /// -1 when there is none.
    pub controller: i64,
    pub outdated: i64,
    pub stalled: bool,
}

/// The controller's metrics and the registry that exports them.
pub struct Metrics {
    pub registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    failures: Family<KindLabel, Counter>,
    duration: Family<KindLabel, Histogram>,
    cluster: [Family<ObjectLabel, Gauge>; 8],
    topic_under_replicated: Family<ObjectLabel, Gauge>,
    topic_offline: Family<ObjectLabel, Gauge>,
}

/// Name and help of each per-Cluster gauge, in [`ClusterGauges`] order.
const CLUSTER_GAUGES: [(&str, &str); 8] = [
    ("cluster_brokers_declared", "Brokers a Cluster declares (spec.replicas)"),
    ("cluster_brokers_ready", "Broker pods ready"),
    ("cluster_brokers_alive", "Brokers holding a session with the controller"),
    ("cluster_under_replicated_partitions", "Partitions with fewer in-sync replicas than replicas"),
    ("cluster_offline_partitions", "Partitions without a leader"),
    ("cluster_controller", "Node id of the metadata controller (-1: none)"),
    ("cluster_roll_outdated_brokers", "Brokers a rolling restart still has to restart"),
    ("cluster_stalled", "1 while the Cluster's Stalled condition is True"),
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tributary_operator");
        let reconciles = Family::<KindLabel, Counter>::default();
        let failures = Family::<KindLabel, Counter>::default();
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register("reconcile_failures", "Reconciles that ended in an error", failures.clone());
        registry.register("reconcile_duration_seconds", "How long reconciles took", duration.clone());
        let cluster: [Family<ObjectLabel, Gauge>; 8] = Default::default();
        for ((name, help), family) in CLUSTER_GAUGES.iter().zip(&cluster) {
            registry.register(*name, *help, family.clone());
        }
        let topic_under_replicated = Family::<ObjectLabel, Gauge>::default();
        let topic_offline = Family::<ObjectLabel, Gauge>::default();
        registry.register(
            "topic_under_replicated_partitions",
            "A Topic's partitions with fewer in-sync replicas than replicas",
            topic_under_replicated.clone(),
        );
        registry.register(
            "topic_offline_partitions",
            "A Topic's partitions without a leader",
            topic_offline.clone(),
        );
        Metrics { registry, reconciles, failures, duration, cluster, topic_under_replicated, topic_offline }
    }
}

impl Metrics {
    pub fn reconciled(&self, kind: &'static str, took: Duration) {
        self.reconciles.get_or_create(&KindLabel { kind }).inc();
        self.duration.get_or_create(&KindLabel { kind }).observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &'static str) {
        self.failures.get_or_create(&KindLabel { kind }).inc();
    }

    /// Records what a Cluster's status says.
    pub fn cluster(&self, namespace: &str, name: &str, g: &ClusterGauges) {
        let label = ObjectLabel { namespace: namespace.into(), name: name.into() };
        let values = [
            g.declared,
            g.ready,
            g.alive,
            g.under_replicated,
            g.offline,
            g.controller,
            g.outdated,
            i64::from(g.stalled),
        ];
        for (family, v) in self.cluster.iter().zip(values) {
            family.get_or_create(&label).set(v);
        }
    }

    /// Records a Topic's partition health.
    pub fn topic(&self, namespace: &str, name: &str, under_replicated: i64, offline: i64) {
        let label = ObjectLabel { namespace: namespace.into(), name: name.into() };
        self.topic_under_replicated.get_or_create(&label).set(under_replicated);
        self.topic_offline.get_or_create(&label).set(offline);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_kind() {
        let m = Metrics::default();
        m.reconciled("Topic", Duration::from_millis(3));
        m.reconciled("Topic", Duration::from_millis(3));
        m.failed("Cluster");
        let text = m.encode();
        assert!(text.contains(r#"tributary_operator_reconciles_total{kind="Topic"} 2"#), "{text}");
        assert!(text.contains(r#"tributary_operator_reconcile_failures_total{kind="Cluster"} 1"#), "{text}");
        assert!(text.contains("tributary_operator_reconcile_duration_seconds_bucket"), "{text}");
    }

    #[test]
    fn cluster_and_topic_health_gauges() {
        let m = Metrics::default();
        let g = ClusterGauges {
            declared: 3,
            ready: 2,
            alive: 3,
            under_replicated: 4,
            controller: 1,
            outdated: 1,
            ..ClusterGauges::default()
        };
        m.cluster("prod", "events", &g);
        m.topic("prod", "clicks", 2, 0);
        let text = m.encode();
        for line in [
            r#"tributary_operator_cluster_brokers_declared{namespace="prod",name="events"} 3"#,
            r#"tributary_operator_cluster_brokers_ready{namespace="prod",name="events"} 2"#,
            r#"tributary_operator_cluster_under_replicated_partitions{namespace="prod",name="events"} 4"#,
            r#"tributary_operator_cluster_controller{namespace="prod",name="events"} 1"#,
            r#"tributary_operator_cluster_roll_outdated_brokers{namespace="prod",name="events"} 1"#,
            r#"tributary_operator_cluster_stalled{namespace="prod",name="events"} 0"#,
            r#"tributary_operator_topic_under_replicated_partitions{namespace="prod",name="clicks"} 2"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}

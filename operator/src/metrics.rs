//! Prometheus metrics of the controller: reconciles, failures and how long
//! reconciles take, per kind. Served on `/metrics` by [`crate::server`].

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// The controller's metrics and the registry that exports them.
pub struct Metrics {
    pub registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    failures: Family<KindLabel, Counter>,
    duration: Family<KindLabel, Histogram>,
}

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
        Metrics { registry, reconciles, failures, duration }
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
}

//! `tributary-operator rack-init`: the init step of rack-aware broker pods.
//!
//! The downward API exposes a pod's own labels, not its node's, so the
//! broker cannot learn its zone from the pod spec alone. This step reads the
//! node's `spec.rack.topologyKey` label through the API server (the chart's
//! ClusterRole grants `get` on nodes, only when rack awareness is enabled)
//! and writes the broker's config with `rack = "<value>"` in front of the
//! ConfigMap's `broker.toml` (in front: a key after a `[table]` header would
//! belong to that table).

use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;

/// The broker config with `rack` set.
pub fn with_rack(config: &str, rack: &str) -> String {
    let line = toml::to_string(&toml::Table::from_iter([("rack".to_string(), toml::Value::from(rack))]))
        .unwrap_or_default();
    format!("# rack from the node's topology label (tributary-operator rack-init)\n{line}{config}")
}

/// The rack of `node`: its `key` label, empty when the node has none.
pub fn rack_of(node: &Node, key: &str) -> Option<String> {
    node.metadata.labels.as_ref().and_then(|l| l.get(key)).cloned()
}

/// Reads the node, writes `config_out`.
pub async fn run(node: &str, key: &str, config_in: &Path, config_out: &Path) -> anyhow::Result<()> {
    let config =
        std::fs::read_to_string(config_in).with_context(|| format!("reading {}", config_in.display()))?;
    let client = kube::Client::try_default().await.context("finding the Kubernetes API")?;
    let n = kube::Api::<Node>::all(client)
        .get(node)
        .await
        .with_context(|| format!("reading node {node} (the broker's service account needs get on nodes)"))?;
    let rack = rack_of(&n, key).unwrap_or_else(|| {
        eprintln!("node {node} has no label {key}: the broker runs without a rack");
        String::new()
    });
    std::fs::write(config_out, with_rack(&config, &rack))
        .with_context(|| format!("writing {}", config_out.display()))?;
    println!("broker rack: {rack:?} (node {node}, label {key})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rack_goes_before_any_table() {
        let config = "retention_check_interval_ms = 5000\n[topic_defaults]\n\"retention.ms\" = \"1\"\n";
        let out = with_rack(config, "eu-west-1a \"b\"");
        let parsed: toml::Table = out.parse().expect("valid TOML");
        assert_eq!(parsed["rack"].as_str(), Some("eu-west-1a \"b\""));
        assert_eq!(parsed["topic_defaults"].as_table().map(|t| t.contains_key("rack")), Some(false));
        let mut node = Node::default();
        assert_eq!(rack_of(&node, "zone"), None);
        node.metadata.labels = Some([("zone".to_string(), "a".to_string())].into_iter().collect());
        assert_eq!(rack_of(&node, "zone").as_deref(), Some("a"));
    }
}

//! End to end: `tributary-operator local` runs real broker processes from
//! manifests, creates the declared topics, and converges when a manifest
//! changes (more partitions, new config), through the controller's plan;
//! a Cluster declaring three brokers runs three that form one cluster,
//! each with its own Kafka-protocol port.
//!
//! Needs the `tributary-broker` binary: `$TRIBUTARY_BROKER_BIN`, or the one
//! cargo built next to this test's operator binary. Without it the test says
//! so and passes (build it with `cargo build --release -p tributary-broker`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn broker_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRIBUTARY_BROKER_BIN") {
        return Some(PathBuf::from(p));
    }
    let sibling = Path::new(env!("CARGO_BIN_EXE_tributary-operator")).parent()?.join("tributary-broker");
    sibling.is_file().then_some(sibling)
}

fn manifests(partitions: u32, config: &str) -> String {
    format!(
        r#"apiVersion: tributary.dev/v1alpha1
kind: Cluster
metadata: {{name: dev}}
spec:
  replicas: 1
  topicDefaults: {{retention.ms: "3600000"}}
---
apiVersion: tributary.dev/v1alpha1
kind: Topic
metadata: {{name: clicks}}
spec:
  clusterRef: {{name: dev}}
  partitions: {partitions}
  replicationFactor: 1
  config: {{{config}}}
---
apiVersion: tributary.dev/v1alpha1
kind: Cluster
metadata: {{name: wide}}
spec:
  replicas: 3
---
apiVersion: tributary.dev/v1alpha1
kind: Topic
metadata: {{name: copies}}
spec:
  clusterRef: {{name: dev}}
  partitions: 1
  replicationFactor: 2
"#
    )
}

fn run_once(dir: &Path, broker: &Path, base_port: u16) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tributary-operator"))
        .args(["local", "--once", "-f"])
        .arg(dir.join("manifests"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--base-port")
        .arg(base_port.to_string())
        .arg("--broker-bin")
        .arg(broker)
        .output()
        .expect("run tributary-operator local");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "local mode failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?} in:\n{out}"))
}

#[test]
fn local_mode_creates_grows_and_converges() {
    let Some(broker) = broker_bin() else {
        eprintln!("skipped: no tributary-broker binary (set TRIBUTARY_BROKER_BIN or build tributary-broker)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("manifests")).expect("mkdir");
    let write = |m: String| std::fs::write(dir.path().join("manifests/all.yaml"), m).expect("write manifest");
    // Below the ephemeral range (32768+), where other tests' ports come from.
    let base_port = 10000 + (std::process::id() % 90) as u16 * 100;

    write(manifests(3, r#"retention.ms: "86400000""#));
    let out = run_once(dir.path(), &broker, base_port);
    let dev = line(&out, "cluster default/dev:");
    assert!(dev.contains("1 broker(s) ready") && !dev.contains("Stalled"), "{out}");
    let wide = line(&out, "cluster default/wide:");
    assert!(wide.contains("3 broker(s) ready"), "{out}");
    let (grpc, kafka) = wide.split_once(", kafka ").unwrap_or_else(|| panic!("no Kafka bootstrap: {wide}"));
    assert_eq!(grpc.matches("127.0.0.1:").count(), 3, "the bootstrap lists every broker: {wide}");
    // Each broker has its own Kafka port, and its Kafka listener bound it.
    let kafka: Vec<&str> = kafka.trim().split(',').collect();
    let mut distinct = kafka.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{wide}");
    for (node, addr) in kafka.iter().enumerate() {
        assert!(!grpc.contains(addr), "{wide}");
        let log = dir.path().join(format!("state/default/wide/broker-{node}.log"));
        let log = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let ready = log.lines().rev().find(|l| l.contains("broker ready")).unwrap_or_else(|| panic!("{log}"));
        assert!(ready.contains(&format!("kafka={addr}")), "broker {node} serves Kafka on {addr}: {ready}");
    }
    assert!(line(&out, "topic default/clicks:").contains("Ready Created (partitions 3, rf 1)"), "{out}");
    let copies = line(&out, "topic default/copies:");
    assert!(copies.contains("Stalled ReplicationFactorTooHigh"), "{out}");

    // The broker keeps its data between runs: a changed manifest converges.
    write(manifests(5, r#"retention.ms: "86400000", cleanup.policy: compact"#));
    let out = run_once(dir.path(), &broker, base_port);
    let clicks = line(&out, "topic default/clicks:");
    assert!(clicks.contains("Ready Updated (partitions 5, rf 1)"), "{out}");
    assert!(clicks.contains("grew partitions from 3 to 5") && clicks.contains("set cleanup.policy"), "{out}");

    let out = run_once(dir.path(), &broker, base_port);
    assert!(line(&out, "topic default/clicks:").contains("Ready UpToDate (partitions 5, rf 1)"), "{out}");

    // Removing a key reverts it to the cluster default; shrinking is refused.
    write(manifests(4, r#"cleanup.policy: compact"#));
    let out = run_once(dir.path(), &broker, base_port);
    let clicks = line(&out, "topic default/clicks:");
    assert!(clicks.contains("Stalled PartitionShrinkRefused (partitions 5"), "{out}");
    assert!(clicks.contains("reverted retention.ms"), "{out}");

    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/state.json")).expect("state.json"))
            .expect("json");
    assert_eq!(state["topics"]["default/clicks"]["partitions"], 5);
    assert_eq!(state["clusters"]["default/dev"]["bootstrap"], format!("127.0.0.1:{base_port}"));
    assert_eq!(state["clusters"]["default/dev"]["outcome"], "Ready");
    let wide = &state["clusters"]["default/wide"];
    assert_eq!(wide["brokers"].as_array().map(Vec::len), Some(3), "{wide}");
    assert_eq!((wide["replicas"].as_i64(), wide["runningBrokers"].as_i64()), (Some(3), Some(3)));
    assert_ne!(wide["outcome"], "Stalled", "{wide}");
}

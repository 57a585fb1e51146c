//! Three real brokers run by `tributary-operator local` from manifests:
//!
//! - a changed `broker.toml` rolls the brokers one at a time under the
//!   controller's gates while an `acks=all` producer writes to an RF-3 topic
//!   with `min.insync.replicas=2`: every acknowledged record is still there
//!   afterwards, every broker was restarted, and the Cluster ends Ready;
//! - a Topic whose `replicationFactor` goes from 1 to 3 is reassigned and
//!   reports Ready with three in-sync replicas;
//! - scale 3→4 (the new broker gets replicas: `rebalanceOnScale`) →3 (the
//!   leaving broker is drained, removed from the quorum, then stopped, in
//!   that order) under an `acks=all` producer loses nothing.
//!
//! The two tests run one after the other (each starts its own brokers).
//!
//! Needs the `tributary-broker` binary (`$TRIBUTARY_BROKER_BIN`, or next to
//! this test's operator binary); without it the test says so and passes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tributary_client::{
    Acks, Admin, Consumer, ConsumerConfig, OffsetSpec, Producer, ProducerConfig, ProducerRecord,
};

/// One multi-broker cluster at a time: two on two cores slow both down.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn broker_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRIBUTARY_BROKER_BIN") {
        return Some(PathBuf::from(p));
    }
    let sibling = Path::new(env!("CARGO_BIN_EXE_tributary-operator")).parent()?.join("tributary-broker");
    sibling.is_file().then_some(sibling)
}

fn manifests(retention_check_ms: u32, grow_rf: u32) -> String {
    format!(
        r#"apiVersion: tributary.dev/v1alpha1
kind: Cluster
metadata: {{name: r}}
spec:
  replicas: 3
  broker: {{retentionCheckIntervalMs: {retention_check_ms}}}
  roll: {{brokerTimeoutSeconds: 120}}
---
apiVersion: tributary.dev/v1alpha1
kind: Topic
metadata: {{name: orders}}
spec:
  clusterRef: {{name: r}}
  partitions: 3
  replicationFactor: 3
  config: {{min.insync.replicas: "2"}}
---
apiVersion: tributary.dev/v1alpha1
kind: Topic
metadata: {{name: grow}}
spec:
  clusterRef: {{name: r}}
  partitions: 2
  replicationFactor: {grow_rf}
"#
    )
}

/// The operator process; SIGTERM (it stops its brokers cleanly) on drop.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator {
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

fn state(dir: &Path) -> Value {
    std::fs::read(dir.join("state/state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn ready(status: &Value) -> bool {
    status["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

async fn wait_until(
    dir: &Path,
    op: &Operator,
    what: &str,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = state(dir);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; state:\n{s:#}\noperator log:\n{}",
            op.tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pids(s: &Value) -> Vec<i64> {
    s["clusters"]["default/r"]["brokers"]
        .as_array()
        .map_or(vec![], |b| b.iter().filter_map(|b| b["pid"].as_i64()).collect())
}

fn start_operator(dir: &Path, broker: &Path, base_port: u16) -> Operator {
    let log = dir.join("operator.log");
    let out = std::fs::File::create(&log).expect("log");
    Operator {
        child: Command::new(env!("CARGO_BIN_EXE_tributary-operator"))
            .args(["local", "--interval", "1", "-f"])
            .arg(dir.join("manifests"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--base-port")
            .arg(base_port.to_string())
            .arg("--broker-bin")
            .arg(broker)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start tributary-operator local"),
        log,
    }
}

/// Below the ephemeral range (32768+), where other tests' ports come from.
fn base_port(offset: u16) -> u16 {
    10000 + (std::process::id() % 90) as u16 * 100 + offset
}

/// An `acks=all` producer writing numbered records to `topic` until stopped.
struct Writer {
    producer: Arc<Producer>,
    acked: Arc<Mutex<Vec<u64>>>,
    failed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Writer {
    async fn start(bootstrap: &str, topic: &'static str) -> Writer {
        let config =
            ProducerConfig { bootstrap: bootstrap.to_string(), acks: Acks::All, ..ProducerConfig::default() };
        let producer = Arc::new(Producer::connect(config).await.expect("producer"));
        let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
        let failed: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (producer, acked, failed, stop) =
                (producer.clone(), acked.clone(), failed.clone(), stop.clone());
            async move {
                let mut pending = Vec::new();
                let mut id = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let record = ProducerRecord::new(topic, id.to_string()).key(id.to_string());
                    match producer.send(record).await {
                        Ok(ack) => {
                            let (acked, failed) = (acked.clone(), failed.clone());
                            pending.push(tokio::spawn(async move {
                                match ack.await {
                                    Ok(_) => acked.lock().expect("lock").push(id),
                                    Err(e) => failed.lock().expect("lock").push(format!("{id}: {e}")),
                                }
                            }));
                        }
                        Err(e) => failed.lock().expect("lock").push(format!("{id}: {e}")),
                    }
                    id += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                for p in pending {
                    let _ = p.await;
                }
                id
            }
        });
        Writer { producer, acked, failed, stop, task }
    }

    /// Stops writing; (records sent, the acknowledged ones, failures).
    async fn stop(self) -> (u64, BTreeSet<u64>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.task.await.expect("writer");
        self.producer.flush().await.expect("flush");
        let acked = self.acked.lock().expect("lock").iter().copied().collect();
        let failed = self.failed.lock().expect("lock").len();
        (sent, acked, failed)
    }
}

/// The acknowledged ids not found when reading `topic` from the start.
async fn lost(bootstrap: &str, topic: &str, acked: &BTreeSet<u64>) -> Vec<u64> {
    let config = ConsumerConfig { bootstrap: bootstrap.to_string(), ..ConsumerConfig::default() };
    let mut consumer = Consumer::connect(config).await.expect("consumer");
    consumer.assign_all(topic, OffsetSpec::Earliest).await.expect("assign");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !acked.is_subset(&seen) && Instant::now() < deadline {
        for r in consumer.poll(Duration::from_millis(500)).await.expect("poll") {
            let id = r
                .value
                .as_ref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok());
            seen.extend(id);
        }
    }
    acked.difference(&seen).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_roll_under_acks_all_loses_nothing_and_rf_grows_to_three() {
    let Some(broker) = broker_bin() else {
        eprintln!("skipped: no tributary-broker binary (set TRIBUTARY_BROKER_BIN or build tributary-broker)");
        return;
    };
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("manifests")).expect("mkdir");
    let write = |m: String| std::fs::write(dir.path().join("manifests/all.yaml"), m).expect("write manifest");
    write(manifests(30000, 1));
    let op = start_operator(dir.path(), &broker, base_port(0));

    let s =
        wait_until(dir.path(), &op, "three brokers and both topics Ready", Duration::from_secs(120), |s| {
            ready(&s["topics"]["default/orders"])
                && ready(&s["topics"]["default/grow"])
                && s["clusters"]["default/r"]["outcome"] == "Ready"
        })
        .await;
    let before = pids(&s);
    assert_eq!(before.len(), 3, "{s:#}");
    let bootstrap = s["clusters"]["default/r"]["bootstrap"].as_str().expect("bootstrap").to_string();
    assert_eq!(bootstrap.split(',').count(), 3, "{bootstrap}");

    // An acks=all producer writes throughout the roll.
    let writer = Writer::start(&bootstrap, "orders").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A new broker config (a roll) and RF 1 -> 3 for `grow`, in one edit.
    let rolled_at = Instant::now();
    write(manifests(31000, 3));
    let s = wait_until(
        dir.path(),
        &op,
        "every broker restarted, the roll over, grow at RF 3",
        Duration::from_secs(420),
        |s| {
            let now = pids(s);
            let cluster = &s["clusters"]["default/r"];
            now.len() == 3
                && now.iter().all(|p| !before.contains(p))
                && cluster["roll"].is_null()
                && cluster["outcome"] == "Ready"
                && ready(&s["topics"]["default/grow"])
                && s["topics"]["default/grow"]["replicationFactor"] == 3
        },
    )
    .await;
    let roll_took = rolled_at.elapsed();
    let grow = &s["topics"]["default/grow"];
    assert!(grow.get("reassignment").is_none_or(Value::is_null), "{grow:#}");
    assert_eq!(grow["underReplicatedPartitions"], 0, "{grow:#}");
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    assert!(log.contains("roll finished; preferred leaders elected"), "{}", op.tail());
    for node in 0..3 {
        assert!(log.contains(&format!("restarted broker {node} for the new config")), "{}", op.tail());
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, acked, failed) = writer.stop().await;
    assert!(acked.len() > 100, "the producer made progress: {} of {sent} acked", acked.len());
    let lost = lost(&bootstrap, "orders", &acked).await;
    eprintln!(
        "roll of 3 brokers + RF 1->3 took {roll_took:?}; sent {sent}, acked {}, failed {failed}, lost {}",
        acked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged records lost: {:?}\n{}", &lost[..lost.len().min(20)], op.tail());
}

fn scale_manifests(replicas: u32) -> String {
    format!(
        r#"apiVersion: tributary.dev/v1alpha1
kind: Cluster
metadata: {{name: s}}
spec:
  replicas: {replicas}
  rebalanceOnScale: true
---
apiVersion: tributary.dev/v1alpha1
kind: Topic
metadata: {{name: events}}
spec:
  clusterRef: {{name: s}}
  partitions: 4
  replicationFactor: 3
  config: {{min.insync.replicas: "2"}}
"#
    )
}

/// Replicas broker `node` holds, as the brokers describe their topics.
async fn replicas_on(admin: &Admin, node: i32) -> usize {
    let topics = admin.describe_topics().await.unwrap_or_default();
    topics.iter().flat_map(|t| &t.partitions).filter(|p| p.replicas.contains(&node)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_three_four_three_with_drain_loses_nothing() {
    let Some(broker) = broker_bin() else {
        eprintln!("skipped: no tributary-broker binary (set TRIBUTARY_BROKER_BIN or build tributary-broker)");
        return;
    };
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("manifests")).expect("mkdir");
    let write = |m: String| std::fs::write(dir.path().join("manifests/all.yaml"), m).expect("write manifest");
    write(scale_manifests(3));
    let op = start_operator(dir.path(), &broker, base_port(50));
    let cluster_ready = |s: &Value, n: usize| {
        let c = &s["clusters"]["default/s"];
        c["runningBrokers"].as_u64() == Some(n as u64)
            && c["outcome"] == "Ready"
            && ready(&s["topics"]["default/events"])
    };
    let s = wait_until(dir.path(), &op, "three brokers and the topic Ready", Duration::from_secs(120), |s| {
        cluster_ready(s, 3)
    })
    .await;
    let first = s["clusters"]["default/s"]["bootstrap"].as_str().expect("bootstrap").to_string();
    let writer = Writer::start(&first, "events").await;
    let admin = Admin::connect(&first).await.expect("admin");

    // 3 -> 4: the new broker starts and the rebalance moves replicas onto it.
    write(scale_manifests(4));
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let s = state(dir.path());
        if cluster_ready(&s, 4) && replicas_on(&admin, 3).await > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "broker 3 got no replicas; state:\n{s:#}\n{}", op.tail());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 4 -> 3: drain broker 3, remove it from the quorum, stop it.
    write(scale_manifests(3));
    let s =
        wait_until(dir.path(), &op, "broker 3 drained, removed and stopped", Duration::from_secs(240), |s| {
            cluster_ready(s, 3)
        })
        .await;
    assert_eq!(s["clusters"]["default/s"]["brokers"].as_array().map(Vec::len), Some(3), "{s:#}");
    assert_eq!(replicas_on(&admin, 3).await, 0, "broker 3 holds nothing\n{}", op.tail());
    let members = admin.describe_cluster().await.expect("describe cluster");
    let ids: Vec<i32> = members.brokers.iter().map(|b| b.node_id).collect();
    assert_eq!(ids, [0, 1, 2], "broker 3 left the quorum and the metadata");
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    let order = ["DrainBroker", "RemoveBroker", "stopped broker 3"].map(|w| log.find(w));
    assert!(
        order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
        "drain, then remove, then stop:\n{}",
        op.tail()
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, acked, failed) = writer.stop().await;
    assert!(acked.len() > 100, "the producer made progress: {} of {sent} acked", acked.len());
    let lost = lost(&first, "events", &acked).await;
    eprintln!("scale 3->4->3: sent {sent}, acked {}, failed {failed}, lost {}", acked.len(), lost.len());
    assert!(lost.is_empty(), "acknowledged records lost: {:?}\n{}", &lost[..lost.len().min(20)], op.tail());
}

//! Local mode: the same Cluster, Topic and MirrorLink manifests, run on one
//! machine without Kubernetes (`tributary-operator local -f DIR`).
//!
//! Each Cluster becomes `spec.replicas` `tributary-broker` processes with
//! their own data directory and ports on 127.0.0.1, configured from the
//! same `broker.toml` the operator puts in a ConfigMap and started with the
//! same `--peers` / `--controllers` / `--cluster-name` flags (the peers at
//! their loopback ports). Each broker also gets its own Kafka-protocol
//! port (the Kafka listener's default, 9092, would go to whichever broker
//! binds first, and the others would run without one). Every pass runs the controller's plans on them:
//! [`crate::scale::plan_scale`] (new brokers start; a scale-down drains,
//! removes and then stops the highest broker), [`crate::roll::decide`] on
//! the brokers as if they were pods (a changed `broker.toml` restarts them
//! one at a time under the same gates, ending with a preferred-leader
//! election), and [`crate::topic_plan`] for Topics, all through the same
//! admin client ([`crate::admin::ClientBrokers`]). MirrorLinks get the
//! controller's checks and are then made on their destination cluster. The manifests are read again every few seconds, so
//! an edited file converges like an applied one (Clusters are fixed at
//! start: a new Cluster needs a restart of local mode); status is printed
//! when it changes and kept in `state.json` under the state directory.
//! Ctrl-C (or SIGTERM) stops every broker cleanly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tributary_crds::{Cluster, MirrorLink, Topic, TopicStatus};

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tributary_crds::cluster::RollProgress;

use crate::admin::{AdminError, Brokers, ClientBrokers};
use crate::cluster::{broker_toml, controllers, fingerprint};
use crate::controller::cluster::cluster_verdict;
use crate::controller::topic::older_claimant;
use crate::health::ClusterCall;
use crate::mirror_plan::{self, ClustersSeen};
use crate::roll::{decide, progress_after, RollDecision, RollInput, RollPolicy, REVISION_LABEL};
use crate::scale::{plan_scale, ScaleInput};
use crate::topic_plan::{self, ClusterView, Outcome, PlanInput, Verdict};

/// Most brokers one Cluster may have in local mode.
pub const MAX_LOCAL_BROKERS: i32 = 16;

/// How `local` was started.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// A manifest file, or a directory of them (`*.yaml`, `*.yml`).
    pub manifests: PathBuf,
    /// Data directories, logs and `state.json`.
    pub state_dir: PathBuf,
    /// First port; each Cluster gets a block of 100 from here.
    pub base_port: u16,
    pub broker_bin: PathBuf,
    /// Namespace for objects that name none.
    pub namespace: String,
    /// How often the manifests are read again.
    pub interval: Duration,
    /// Reconcile once, print, stop the brokers and exit.
    pub once: bool,
}

/// The objects found in the manifests.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub clusters: Vec<Cluster>,
    pub topics: Vec<Topic>,
    pub links: Vec<MirrorLink>,
}

fn manifest_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every manifest. Objects get the default namespace when they name
/// none, generation 1, and creation times in file order (so that of two
/// Topics naming the same topic, the one read first is the older).
pub fn read_manifests(path: &Path, namespace: &str) -> anyhow::Result<Manifests> {
    let mut m = Manifests::default();
    let mut order = 0i64;
    for file in manifest_files(path)? {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value =
                serde_json::Value::deserialize(doc).with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue;
            }
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
            let api = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default();
            if api != "tributary.dev/v1alpha1" {
                continue;
            }
            order += 1;
            let fill = |meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                meta.namespace.get_or_insert_with(|| namespace.to_string());
                meta.generation.get_or_insert(1);
                meta.creation_timestamp
                    .get_or_insert(Time(Timestamp::from_second(order).unwrap_or_default()));
            };
            let what = || format!("a {kind} in {}", file.display());
            match kind.as_str() {
                "Cluster" => {
                    let mut c: Cluster = serde_json::from_value(value).with_context(what)?;
                    fill(&mut c.metadata);
                    m.clusters.push(c);
                }
                "Topic" => {
                    let mut t: Topic = serde_json::from_value(value).with_context(what)?;
                    fill(&mut t.metadata);
                    m.topics.push(t);
                }
                "MirrorLink" => {
                    let mut l: MirrorLink = serde_json::from_value(value).with_context(what)?;
                    fill(&mut l.metadata);
                    m.links.push(l);
                }
                other => bail!("{}: unknown kind {other:?}", file.display()),
            }
        }
    }
    Ok(m)
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Where the Kafka ports start in a Cluster's block of 100: after the
/// gRPC and HTTP pairs of [`MAX_LOCAL_BROKERS`] brokers.
const KAFKA_OFFSET: u32 = 50;
const _: () =
    assert!(2 * MAX_LOCAL_BROKERS as u32 <= KAFKA_OFFSET && KAFKA_OFFSET + MAX_LOCAL_BROKERS as u32 <= 100);

/// Ports of broker `node` of the `index`-th Cluster: (gRPC, HTTP, Kafka).
pub fn ports(base: u16, index: usize, node: i32) -> Option<(u16, u16, u16)> {
    if !(0..MAX_LOCAL_BROKERS).contains(&node) {
        return None;
    }
    let block = u32::from(base) + 100 * index as u32;
    let grpc = block + 2 * node as u32;
    let kafka = block + KAFKA_OFFSET + node as u32;
    Some((u16::try_from(grpc).ok()?, u16::try_from(grpc + 1).ok()?, u16::try_from(kafka).ok()?))
}

struct LocalBroker {
    node_id: i32,
    grpc: SocketAddr,
    http: SocketAddr,
    kafka: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Child,
    /// Fingerprint of the config it was started with (its "pod revision").
    revision: String,
}

struct LocalCluster {
    cluster: Cluster,
    /// Position among the Clusters: its block of ports.
    index: usize,
    dir: PathBuf,
    brokers: Vec<LocalBroker>,
    /// The roll in progress, as the controller keeps it in the status.
    roll: Option<RollProgress>,
    verdict: Verdict,
}

/// The line printed for a Cluster once its brokers are ready: the gRPC
/// bootstrap list and the Kafka one.
pub fn cluster_line(key: &str, brokers: usize, bootstrap: &str, kafka: &str) -> String {
    format!("cluster {key}: {brokers} broker(s) ready, bootstrap {bootstrap}, kafka {kafka}")
}

/// `--peers` for brokers `0..n` of the `index`-th Cluster.
pub fn local_peers(base: u16, index: usize, n: i32) -> String {
    (0..n)
        .filter_map(|node| ports(base, index, node).map(|(grpc, _, _)| format!("{node}@127.0.0.1:{grpc}")))
        .collect::<Vec<_>>()
        .join(",")
}

impl LocalCluster {
    /// Every broker's address, the bootstrap list clients use.
    fn address(&self) -> Option<String> {
        (!self.brokers.is_empty())
            .then(|| self.brokers.iter().map(|b| b.grpc.to_string()).collect::<Vec<_>>().join(","))
    }

    /// Every broker's Kafka address, the bootstrap list Kafka clients use.
    fn kafka_address(&self) -> String {
        self.brokers.iter().map(|b| b.kafka.to_string()).collect::<Vec<_>>().join(",")
    }

    fn key(&self) -> String {
        key(&self.cluster.namespace().unwrap_or_default(), &self.cluster.name_any())
    }
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 64];
    let n = s.read(&mut buf).await.ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// How one broker is started: its config and the cluster-forming flags.
struct BrokerLaunch<'a> {
    config: &'a str,
    node_id: i32,
    ports: (u16, u16, u16),
    peers: String,
    controllers: String,
    cluster_name: String,
}

async fn start_broker(
    opts: &LocalOptions,
    dir: &Path,
    launch: BrokerLaunch<'_>,
) -> anyhow::Result<LocalBroker> {
    let BrokerLaunch { config, node_id, ports: (grpc, http, kafka), peers, controllers, cluster_name } =
        launch;
    let data_dir = dir.join(format!("broker-{node_id}"));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let config_file = dir.join(format!("broker-{node_id}.toml"));
    std::fs::write(&config_file, config).with_context(|| format!("writing {}", config_file.display()))?;
    let log = dir.join(format!("broker-{node_id}.log"));
    // Appended: a restarted broker's log follows the previous run's.
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let grpc: SocketAddr = ([127, 0, 0, 1], grpc).into();
    let http: SocketAddr = ([127, 0, 0, 1], http).into();
    let kafka: SocketAddr = ([127, 0, 0, 1], kafka).into();
    let child = Command::new(&opts.broker_bin)
        .arg("--config")
        .arg(&config_file)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--listen")
        .arg(grpc.to_string())
        .arg("--http-listen")
        .arg(http.to_string())
        .arg("--kafka-listen")
        .arg(kafka.to_string())
        .arg("--kafka-advertised-address")
        .arg(kafka.to_string())
        .arg("--node-id")
        .arg(node_id.to_string())
        .arg("--advertised-address")
        .arg(grpc.to_string())
        .arg("--peers")
        .arg(peers)
        .arg("--controllers")
        .arg(controllers)
        .arg("--cluster-name")
        .arg(cluster_name)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", opts.broker_bin.display()))?;
    Ok(LocalBroker { node_id, grpc, http, kafka, data_dir, log, child, revision: fingerprint(config) })
}

async fn wait_ready(b: &mut LocalBroker, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(status) = b.child.try_wait()? {
            bail!(
                "broker {} exited ({status}) while starting; its log ends:\n{}",
                b.node_id,
                log_tail(&b.log)
            );
        }
        if http_status(b.http, "/readyz").await == Some(200) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "broker {} not ready on {} after {within:?}; its log ends:\n{}",
                b.node_id,
                b.http,
                log_tail(&b.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks a broker to stop (SIGTERM: it fsyncs and closes its logs), then waits.
async fn stop_broker(b: &mut LocalBroker) {
    if let Some(pid) = b.child.id() {
        // SAFETY: kill(2) on the pid of a child this process spawned and has
        // not reaped yet; it touches no memory.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(30), b.child.wait()).await.is_err() {
        let _ = b.child.kill().await;
    }
}

/// Starts broker `node` of `lc` with the Cluster's current config, among
/// `count` brokers.
async fn launch(
    opts: &LocalOptions,
    lc: &LocalCluster,
    node: i32,
    count: i32,
) -> anyhow::Result<LocalBroker> {
    let config = broker_toml(&lc.cluster)?;
    let p = ports(opts.base_port, lc.index, node)
        .with_context(|| format!("Cluster {}: out of ports", lc.key()))?;
    let launch = BrokerLaunch {
        config: &config,
        node_id: node,
        ports: p,
        peers: local_peers(opts.base_port, lc.index, count),
        controllers: controllers(count),
        cluster_name: lc.cluster.name_any(),
    };
    start_broker(opts, &lc.dir, launch).await
}

async fn start_clusters(
    opts: &LocalOptions,
    m: &Manifests,
) -> anyhow::Result<BTreeMap<String, LocalCluster>> {
    let mut clusters: Vec<&Cluster> = m.clusters.iter().collect();
    clusters.sort_by_key(|c| key(&c.namespace().unwrap_or_default(), &c.name_any()));
    let mut out = BTreeMap::new();
    for (index, c) in clusters.into_iter().enumerate() {
        let ns = c.namespace().unwrap_or_default();
        let k = key(&ns, &c.name_any());
        check_replicas(c)?;
        let waiting = Verdict {
            outcome: Outcome::Progressing,
            reason: "WaitingForBrokers",
            message: "starting".into(),
        };
        let mut lc = LocalCluster {
            cluster: c.clone(),
            index,
            dir: opts.state_dir.join(&ns).join(c.name_any()),
            brokers: Vec::new(),
            roll: None,
            verdict: waiting,
        };
        for node in 0..c.spec.replicas {
            let b = launch(opts, &lc, node, c.spec.replicas).await?;
            lc.brokers.push(b);
        }
        for b in &mut lc.brokers {
            if let Err(e) = wait_ready(b, Duration::from_secs(60)).await {
                stop_all(&mut out).await;
                for b in &mut lc.brokers {
                    stop_broker(b).await;
                }
                return Err(e.context(format!("Cluster {k}")));
            }
        }
        println!(
            "{}",
            cluster_line(&k, lc.brokers.len(), &lc.address().unwrap_or_default(), &lc.kafka_address())
        );
        out.insert(k, lc);
    }
    Ok(out)
}

fn check_replicas(c: &Cluster) -> anyhow::Result<()> {
    if !(1..=MAX_LOCAL_BROKERS).contains(&c.spec.replicas) {
        bail!(
            "Cluster {}: local mode runs 1 to {MAX_LOCAL_BROKERS} brokers, not {}",
            c.name_any(),
            c.spec.replicas
        );
    }
    Ok(())
}

/// The brokers as the roll sees pods: a StatefulSet whose update revision
/// is the current config's fingerprint, and one "pod" per broker, ready
/// when its `/readyz` answers 200.
async fn as_pods(lc: &mut LocalCluster) -> anyhow::Result<(StatefulSet, Vec<Pod>)> {
    let revision = fingerprint(&broker_toml(&lc.cluster)?);
    let name = lc.cluster.name_any();
    let mut pods = Vec::new();
    for b in &mut lc.brokers {
        let running = b.child.try_wait().ok().flatten().is_none();
        let ready = running && http_status(b.http, "/readyz").await == Some(200);
        pods.push(Pod {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{}", b.node_id)),
                labels: Some([(REVISION_LABEL.to_string(), b.revision.clone())].into_iter().collect()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        });
    }
    let count = i32::try_from(lc.brokers.len()).unwrap_or(i32::MAX);
    let ready = pods
        .iter()
        .filter(|p| {
            p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c[0].status == "True")
        })
        .count();
    let sts = StatefulSet {
        spec: Some(StatefulSetSpec { replicas: Some(count), ..StatefulSetSpec::default() }),
        status: Some(StatefulSetStatus {
            replicas: count,
            ready_replicas: Some(i32::try_from(ready).unwrap_or(i32::MAX)),
            update_revision: Some(revision),
            ..StatefulSetStatus::default()
        }),
        ..StatefulSet::default()
    };
    Ok((sts, pods))
}

/// One pass of the controller's Cluster plans over a local cluster.
async fn step_cluster(
    opts: &LocalOptions,
    lc: &mut LocalCluster,
    brokers: &dyn Brokers,
) -> anyhow::Result<()> {
    let Some(address) = lc.address() else { bail!("Cluster {} has no broker left", lc.key()) };
    let health = brokers.cluster_health(&address).await.map_err(|e| e.to_string());
    let running = i32::try_from(lc.brokers.len()).unwrap_or(i32::MAX);
    let throttle = lc.cluster.spec.reassignment.throttle_bytes_per_second.and_then(|t| u64::try_from(t).ok());
    let scale = plan_scale(ScaleInput {
        declared: lc.cluster.spec.replicas.clamp(1, MAX_LOCAL_BROKERS),
        running: Some(running),
        health: health.as_ref().map_err(String::as_str),
        rebalance: lc.cluster.spec.rebalance_on_scale,
        throttle,
    });
    while (lc.brokers.len() as i32) < scale.replicas {
        let node = lc.brokers.len() as i32;
        let b = launch(opts, lc, node, scale.replicas).await?;
        println!("cluster {}: started broker {node}", lc.key());
        lc.brokers.push(b);
    }
    let mut refused = None;
    for call in &scale.calls {
        match brokers.cluster_call(&address, call).await {
            Ok(()) => println!(
                "cluster {}: {} ({})",
                lc.key(),
                call.name(),
                scale.verdict.as_ref().map(|v| v.message.as_str()).unwrap_or_default()
            ),
            Err(e @ AdminError::Refused { .. }) if !e.to_string().contains("being reassigned") => {
                refused = Some(Verdict {
                    outcome: Outcome::Stalled,
                    reason: "BrokersRefused",
                    message: e.to_string(),
                });
            }
            Err(e) => println!("cluster {}: {} failed, retrying: {e}", lc.key(), call.name()),
        }
    }
    while (lc.brokers.len() as i32) > scale.replicas {
        if let Some(mut b) = lc.brokers.pop() {
            stop_broker(&mut b).await;
            println!("cluster {}: stopped broker {} (drained and removed)", lc.key(), b.node_id);
            if lc.cluster.spec.storage.delete_claims_on_scale_down {
                let _ = std::fs::remove_dir_all(&b.data_dir);
            }
        }
    }
    let (sts, pods) = as_pods(lc).await?;
    let mut decision = decide(RollInput {
        sts: &sts,
        pods: &pods,
        health: health.as_ref().map_err(String::as_str),
        policy: RollPolicy::of(&lc.cluster),
        progress: lc.roll.as_ref(),
        now: Timestamp::now(),
    });
    if scale.busy() {
        if let RollDecision::Restart { outdated, .. } = decision {
            decision =
                RollDecision::Blocked { reason: "waiting for replicas to stop moving".into(), outdated };
        }
    }
    match &decision {
        RollDecision::Restart { node, outdated, .. } => {
            let count = lc.brokers.len() as i32;
            if let Some(i) = lc.brokers.iter().position(|b| b.node_id == *node) {
                stop_broker(&mut lc.brokers[i]).await;
                lc.brokers[i] = launch(opts, lc, *node, count).await?;
                println!(
                    "cluster {}: restarted broker {node} for the new config ({outdated} outdated)",
                    lc.key()
                );
            }
        }
        RollDecision::UpToDate { elect_leaders: true } => {
            brokers.cluster_call(&address, &ClusterCall::ElectLeaders).await?;
            println!("cluster {}: roll finished; preferred leaders elected", lc.key());
        }
        _ => {}
    }
    lc.roll = progress_after(lc.roll.as_ref(), &decision, running, Timestamp::now());
    lc.verdict =
        refused.unwrap_or_else(|| cluster_verdict(&lc.cluster, &sts, &decision, &scale, health.as_ref()));
    Ok(())
}

async fn stop_all(clusters: &mut BTreeMap<String, LocalCluster>) {
    for c in clusters.values_mut() {
        for b in &mut c.brokers {
            stop_broker(b).await;
        }
    }
}

/// The result of one pass over the Topics.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicReport {
    pub key: String,
    pub status: TopicStatus,
    pub verdict: Verdict,
}

/// Reconciles every Topic once, with the controller's plan. `clusters` maps
/// `namespace/name` to (declared brokers, bootstrap list, reassignment throttle).
pub async fn reconcile_topics(
    m: &Manifests,
    clusters: &BTreeMap<String, (i32, String, Option<u64>)>,
    brokers: &dyn Brokers,
    previous: &BTreeMap<String, TopicStatus>,
    now: Timestamp,
) -> Vec<TopicReport> {
    let all: Vec<Arc<Topic>> = m.topics.iter().cloned().map(Arc::new).collect();
    let mut out = Vec::new();
    for topic in &m.topics {
        let ns = topic.namespace().unwrap_or_default();
        let k = key(&ns, &topic.name_any());
        let conflict = older_claimant(topic, &all);
        let found = clusters.get(&key(&ns, &topic.spec.cluster_ref.name));
        let view = found.map_or(ClusterView::Missing, |(n, _, _)| ClusterView::Present { brokers: *n });
        let report = |status: TopicStatus, verdict: Verdict| TopicReport { key: k.clone(), status, verdict };
        let unreachable = |e: AdminError| {
            let verdict = Verdict {
                outcome: Outcome::Progressing,
                reason: "BrokersUnreachable",
                message: e.to_string(),
            };
            let status = TopicStatus {
                conditions: topic_plan::conditions(&[], &verdict, topic.metadata.generation, now),
                ..TopicStatus::default()
            };
            report(status, verdict)
        };
        let observed = match (found, &conflict) {
            (Some((_, address, _)), None) => match brokers.describe(address, topic.topic_name()).await {
                Ok(o) => o,
                Err(e) => {
                    out.push(unreachable(e));
                    continue;
                }
            },
            _ => None,
        };
        // Local mode has no status store: the previous pass's report stands in.
        let mut topic = topic.clone();
        topic.status = previous.get(&k).cloned();
        let topic = &topic;
        let p = topic_plan::plan(PlanInput {
            topic,
            cluster: view,
            observed: observed.as_ref(),
            conflicts_with: conflict.as_deref(),
            throttle: found.and_then(|(_, _, t)| *t),
        });
        let mut verdict = p.verdict.clone();
        if let Some((_, address, _)) = found {
            for call in &p.calls {
                if let Err(e) = brokers.execute(address, call).await {
                    if e.to_string().contains("being reassigned") {
                        continue;
                    }
                    verdict = Verdict {
                        outcome: Outcome::Stalled,
                        reason: "BrokersRefused",
                        message: e.to_string(),
                    };
                    break;
                }
            }
        }
        let mut status = topic_plan::status_after(
            topic,
            &topic_plan::TopicPlan { calls: p.calls, verdict: verdict.clone(), reassignment: p.reassignment },
            observed.as_ref(),
            now,
        );
        if verdict.reason == "BrokersRefused" {
            status.partitions = observed.as_ref().map(|o| o.partitions as i32);
        }
        out.push(report(status, verdict));
    }
    out
}

fn print_reports(topics: &[TopicReport], links: &[(String, Verdict)]) {
    for r in topics {
        let s = &r.status;
        println!(
            "topic {}: {:?} {} (partitions {}, rf {}): {}",
            r.key,
            r.verdict.outcome,
            r.verdict.reason,
            s.partitions.map_or("-".into(), |p| p.to_string()),
            s.replication_factor.map_or("-".into(), |p| p.to_string()),
            r.verdict.message
        );
    }
    for (k, v) in links {
        println!("mirrorlink {k}: {:?} {}: {}", v.outcome, v.reason, v.message);
    }
}

fn write_state(
    opts: &LocalOptions,
    clusters: &BTreeMap<String, LocalCluster>,
    topics: &[TopicReport],
    links: &[(String, Verdict)],
) -> anyhow::Result<()> {
    let state = serde_json::json!({
        "clusters": clusters.iter().map(|(k, c)| (k.clone(), serde_json::json!({
            "bootstrap": c.address(),
            "replicas": c.cluster.spec.replicas,
            "runningBrokers": c.brokers.len(),
            "outcome": format!("{:?}", c.verdict.outcome),
            "reason": c.verdict.reason,
            "message": c.verdict.message,
            "roll": c.roll,
            "brokers": c.brokers.iter().map(|b| serde_json::json!({
                "nodeId": b.node_id,
                "grpc": b.grpc.to_string(),
                "http": b.http.to_string(),
                "kafka": b.kafka.to_string(),
                "pid": b.child.id(),
                "dataDir": b.data_dir,
                "revision": b.revision,
            })).collect::<Vec<_>>(),
        }))).collect::<serde_json::Map<_, _>>(),
        "topics": topics.iter().map(|r| (r.key.clone(), serde_json::to_value(&r.status).unwrap_or_default())).collect::<serde_json::Map<_, _>>(),
        "mirrorLinks": links.iter().map(|(k, v)| (k.clone(), serde_json::json!({"outcome": format!("{:?}", v.outcome), "reason": v.reason, "message": v.message}))).collect::<serde_json::Map<_, _>>(),
    });
    let path = opts.state_dir.join("state.json");
    let tmp = opts.state_dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Each MirrorLink: checked as the controller does, then made (created,
/// updated) on its destination cluster through the admin API; the verdict
/// comes from the destination's description of it.
async fn link_reports(
    m: &Manifests,
    addresses: &BTreeMap<String, (i32, String, Option<u64>)>,
    brokers: &dyn Brokers,
) -> Vec<(String, Verdict)> {
    let clusters: Vec<String> =
        m.clusters.iter().map(|c| key(&c.namespace().unwrap_or_default(), &c.name_any())).collect();
    let mut out = Vec::new();
    for l in &m.links {
        let source_node = mirror_plan::source_node(l);
        let source = match (&l.spec.source.cluster_ref, &source_node) {
            (Some(_), Some(node)) => clusters.contains(node),
            _ => true,
        };
        let destination = mirror_plan::destination_node(l);
        let seen = ClustersSeen { source, destination: clusters.contains(&destination) };
        let k = key(&l.namespace().unwrap_or_default(), &l.name_any());
        let verdict = match mirror_plan::refusal(l, &m.links, seen) {
            Some(v) => v,
            None => {
                let source_bootstrap = match &l.spec.source.cluster_ref {
                    Some(_) => source_node.as_ref().and_then(|n| addresses.get(n)).map(|a| a.1.clone()),
                    None => l.spec.source.bootstrap.clone(),
                };
                match (addresses.get(&destination), source_bootstrap) {
                    (Some((_, address, _)), Some(source)) => make_link(l, address, &source, brokers).await,
                    _ => Verdict {
                        outcome: Outcome::Progressing,
                        reason: "BrokersUnreachable",
                        message: "the link's clusters have no running brokers yet".into(),
                    },
                }
            }
        };
        out.push((k, verdict));
    }
    out
}

/// Puts the link on the destination when it differs, then reads its state.
async fn make_link(l: &MirrorLink, address: &str, source: &str, brokers: &dyn Brokers) -> Verdict {
    let unreachable = |e: AdminError| Verdict {
        outcome: Outcome::Progressing,
        reason: "BrokersUnreachable",
        message: e.to_string(),
    };
    let describe = crate::admin::MirrorCall::Describe { name: mirror_plan::link_name(l) };
    let observed = match brokers.mirror_call(address, &describe).await {
        Ok(o) => o,
        Err(e) => return unreachable(e),
    };
    let want = mirror_plan::desired(l, source);
    if let Some(call) = mirror_plan::plan(&want, observed.as_ref().and_then(|d| d.link.as_ref())) {
        if let Err(e) = brokers.mirror_call(address, &call).await {
            return match e {
                AdminError::Refused { .. } => {
                    Verdict { outcome: Outcome::Stalled, reason: "BrokersRefused", message: e.to_string() }
                }
                other => unreachable(other),
            };
        }
    }
    match brokers.mirror_call(address, &describe).await {
        Ok(Some(d)) => mirror_plan::observed_verdict(&d),
        Ok(None) => Verdict { outcome: Outcome::Progressing, reason: "Creating", message: String::new() },
        Err(e) => unreachable(e),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs local mode until Ctrl-C (or once, with `opts.once`).
pub async fn run(opts: LocalOptions) -> anyhow::Result<()> {
    let mut manifests = read_manifests(&opts.manifests, &opts.namespace)?;
    if manifests.clusters.is_empty() {
        bail!("{} declares no Cluster", opts.manifests.display());
    }
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating {}", opts.state_dir.display()))?;
    let mut clusters = start_clusters(&opts, &manifests).await?;
    let brokers = ClientBrokers::default();
    let mut last_printed = None;
    let mut last_clusters: BTreeMap<String, Verdict> = BTreeMap::new();
    let mut previous: BTreeMap<String, TopicStatus> = BTreeMap::new();
    let mut warned: Vec<String> = Vec::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let result = loop {
        for (k, lc) in clusters.iter_mut() {
            if let Err(e) = step_cluster(&opts, lc, &brokers).await {
                lc.verdict = Verdict {
                    outcome: Outcome::Progressing,
                    reason: "BrokersUnreachable",
                    message: format!("{e:#}"),
                };
            }
            if last_clusters.get(k) != Some(&lc.verdict) {
                println!(
                    "cluster {k}: {:?} {}: {}",
                    lc.verdict.outcome, lc.verdict.reason, lc.verdict.message
                );
                last_clusters.insert(k.clone(), lc.verdict.clone());
            }
        }
        let addresses: BTreeMap<String, (i32, String, Option<u64>)> = clusters
            .iter()
            .filter_map(|(k, c)| {
                let throttle =
                    c.cluster.spec.reassignment.throttle_bytes_per_second.and_then(|t| u64::try_from(t).ok());
                c.address().map(|a| (k.clone(), (c.cluster.spec.replicas, a, throttle)))
            })
            .collect();
        let topics = reconcile_topics(&manifests, &addresses, &brokers, &previous, Timestamp::now()).await;
        previous = topics.iter().map(|r| (r.key.clone(), r.status.clone())).collect();
        let links = link_reports(&manifests, &addresses, &brokers).await;
        let summary: Vec<_> =
            topics.iter().map(|r| (r.key.clone(), r.verdict.clone(), r.status.partitions)).collect();
        if last_printed.as_ref() != Some(&summary) {
            print_reports(&topics, &links);
            last_printed = Some(summary);
        }
        if let Err(e) = write_state(&opts, &clusters, &topics, &links) {
            break Err(e);
        }
        if opts.once {
            break Ok(());
        }
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tokio::time::sleep(opts.interval) => {}
        }
        match read_manifests(&opts.manifests, &opts.namespace) {
            Ok(m) => {
                // Changed Clusters converge through the plans; new ones
                // would need ports and processes of their own: say so.
                let mut new = Vec::new();
                for c in &m.clusters {
                    let k = key(&c.namespace().unwrap_or_default(), &c.name_any());
                    match clusters.get_mut(&k) {
                        Some(lc) if lc.cluster.spec != c.spec => match check_replicas(c) {
                            Ok(()) => lc.cluster = c.clone(),
                            Err(e) => eprintln!("keeping the previous spec: {e:#}"),
                        },
                        Some(_) => {}
                        None => new.push(c.name_any()),
                    }
                }
                if !new.is_empty() && new != warned {
                    println!("new Cluster(s) {}: restart local mode to run them", new.join(", "));
                }
                warned = new;
                manifests = m;
            }
            Err(e) => eprintln!("keeping the previous manifests: {e:#}"),
        }
    };
    println!("stopping brokers");
    stop_all(&mut clusters).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_directory_in_file_order_with_defaults() {
        let dir = std::env::temp_dir().join(format!("tributary-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("a.yaml"),
            "apiVersion: tributary.dev/v1alpha1\nkind: Cluster\nmetadata: {name: c}\nspec: {replicas: 1}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ignored}\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("b.yml"),
            "apiVersion: tributary.dev/v1alpha1\nkind: Topic\nmetadata: {name: t, namespace: x}\n\
             spec: {clusterRef: {name: c}, partitions: 2, replicationFactor: 1}\n",
        )
        .expect("write");
        std::fs::write(dir.join("notes.txt"), "not yaml").expect("write");
        let m = read_manifests(&dir, "dev").expect("read");
        assert_eq!(m.clusters.len(), 1);
        assert_eq!(m.clusters[0].namespace().as_deref(), Some("dev"));
        assert_eq!(m.topics[0].namespace().as_deref(), Some("x"));
        assert!(m.clusters[0].metadata.creation_timestamp < m.topics[0].metadata.creation_timestamp);
        std::fs::write(dir.join("c.yaml"), "apiVersion: tributary.dev/v1alpha1\nkind: Bogus\n")
            .expect("write");
        assert!(read_manifests(&dir, "dev").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn local_brokers_find_each_other_on_their_ports() {
        assert_eq!(local_peers(17070, 0, 3), "0@127.0.0.1:17070,1@127.0.0.1:17072,2@127.0.0.1:17074");
        assert_eq!(local_peers(17070, 1, 1), "0@127.0.0.1:17170");
        assert_eq!(
            cluster_line("dev/c", 2, "127.0.0.1:17070,127.0.0.1:17072", "127.0.0.1:17120,127.0.0.1:17121"),
            "cluster dev/c: 2 broker(s) ready, bootstrap 127.0.0.1:17070,127.0.0.1:17072, kafka 127.0.0.1:17120,127.0.0.1:17121"
        );
    }

    #[test]
    fn port_blocks_do_not_overlap() {
        assert_eq!(ports(17070, 0, 0), Some((17070, 17071, 17120)));
        assert_eq!(ports(17070, 0, 1), Some((17072, 17073, 17121)));
        assert_eq!(ports(17070, 1, 0), Some((17170, 17171, 17220)));
        assert_eq!(ports(65500, 1, 0), None);
        assert_eq!(ports(17070, 0, MAX_LOCAL_BROKERS), None);
        // Every port of every broker of two neighbouring Clusters is its own.
        let mut all: Vec<u16> = (0..2)
            .flat_map(|i| (0..MAX_LOCAL_BROKERS).filter_map(move |n| ports(17070, i, n)))
            .flat_map(|(g, h, k)| [g, h, k])
            .collect();
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count);
        assert_eq!(count, 2 * 3 * MAX_LOCAL_BROKERS as usize);
    }
}

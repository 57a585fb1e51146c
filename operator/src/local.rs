//! Local mode: the same Cluster, Topic and MirrorLink manifests, run on one
//! machine without Kubernetes (`tributary-operator local -f DIR`).
//!
//! Each Cluster becomes `tributary-broker` processes with their own data
//! directory and ports on 127.0.0.1, configured from the same `broker.toml`
//! the operator puts in a ConfigMap, as many as the controller would run
//! ([`crate::cluster::replica_plan`]): one until brokers replicate, with the
//! same `Stalled` reason printed and kept in `state.json` when more are
//! declared. Topics are reconciled by the same plan the controller uses
//! ([`crate::topic_plan`]) through the same gRPC admin client
//! ([`crate::admin::GrpcBrokers`]). MirrorLinks get the controller's checks.
//! The manifests are read again every few seconds, so an edited file
//! converges like an applied one; status is printed when it changes and kept
//! in `state.json` under the state directory. Ctrl-C (or SIGTERM) stops every
//! broker cleanly.

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

use crate::admin::{AdminError, Brokers, GrpcBrokers};
use crate::cluster::{broker_toml, replica_plan, ReplicaPlan};
use crate::controller::topic::older_claimant;
use crate::mirror_plan::{self, ClustersSeen};
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

/// Ports of broker `node` of the `index`-th Cluster: (gRPC, HTTP).
pub fn ports(base: u16, index: usize, node: i32) -> Option<(u16, u16)> {
    let grpc = u32::from(base) + 100 * index as u32 + 2 * node as u32;
    Some((u16::try_from(grpc).ok()?, u16::try_from(grpc + 1).ok()?))
}

struct LocalBroker {
    node_id: i32,
    grpc: SocketAddr,
    http: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Child,
}

struct LocalCluster {
    cluster: Cluster,
    /// How many brokers run, and the `Stalled` verdict when not `replicas`.
    plan: ReplicaPlan,
    brokers: Vec<LocalBroker>,
}

/// The brokers local mode runs for `cluster`: the controller's plan for a
/// Cluster with no StatefulSet yet (local brokers start afresh each run).
pub fn local_replicas(cluster: &Cluster) -> ReplicaPlan {
    replica_plan(cluster.spec.replicas, None)
}

/// The line printed for a Cluster once its brokers are ready.
pub fn cluster_line(key: &str, brokers: usize, bootstrap: &str, plan: &ReplicaPlan) -> String {
    let ready = format!("cluster {key}: {brokers} broker(s) ready, bootstrap {bootstrap}");
    match &plan.held {
        Some(v) => format!("{ready}; {:?} {}: {}", v.outcome, v.reason, v.message),
        None => ready,
    }
}

impl LocalCluster {
    fn address(&self) -> Option<String> {
        self.brokers.first().map(|b| b.grpc.to_string())
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

async fn start_broker(
    opts: &LocalOptions,
    dir: &Path,
    config: &str,
    node_id: i32,
    (grpc, http): (u16, u16),
) -> anyhow::Result<LocalBroker> {
    let data_dir = dir.join(format!("broker-{node_id}"));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let config_file = dir.join(format!("broker-{node_id}.toml"));
    std::fs::write(&config_file, config).with_context(|| format!("writing {}", config_file.display()))?;
    let log = dir.join(format!("broker-{node_id}.log"));
    let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let grpc: SocketAddr = ([127, 0, 0, 1], grpc).into();
    let http: SocketAddr = ([127, 0, 0, 1], http).into();
    let child = Command::new(&opts.broker_bin)
        .arg("--config")
        .arg(&config_file)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--listen")
        .arg(grpc.to_string())
        .arg("--http-listen")
        .arg(http.to_string())
        .arg("--node-id")
        .arg(node_id.to_string())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", opts.broker_bin.display()))?;
    Ok(LocalBroker { node_id, grpc, http, data_dir, log, child })
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
        if !(1..=MAX_LOCAL_BROKERS).contains(&c.spec.replicas) {
            bail!("Cluster {k}: local mode runs 1 to {MAX_LOCAL_BROKERS} brokers, not {}", c.spec.replicas);
        }
        let dir = opts.state_dir.join(&ns).join(c.name_any());
        let config = broker_toml(c)?;
        let plan = local_replicas(c);
        let mut brokers = Vec::new();
        for node in 0..plan.replicas {
            let p =
                ports(opts.base_port, index, node).with_context(|| format!("Cluster {k}: out of ports"))?;
            brokers.push(start_broker(opts, &dir, &config, node, p).await?);
        }
        let mut lc = LocalCluster { cluster: c.clone(), plan, brokers };
        for b in &mut lc.brokers {
            if let Err(e) = wait_ready(b, Duration::from_secs(60)).await {
                stop_all(&mut out).await;
                for b in &mut lc.brokers {
                    stop_broker(b).await;
                }
                return Err(e.context(format!("Cluster {k}")));
            }
        }
        println!("{}", cluster_line(&k, lc.brokers.len(), &lc.address().unwrap_or_default(), &lc.plan));
        out.insert(k, lc);
    }
    Ok(out)
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
/// `namespace/name` to (brokers, bootstrap address).
pub async fn reconcile_topics(
    m: &Manifests,
    clusters: &BTreeMap<String, (i32, String)>,
    brokers: &dyn Brokers,
    now: Timestamp,
) -> Vec<TopicReport> {
    let all: Vec<Arc<Topic>> = m.topics.iter().cloned().map(Arc::new).collect();
    let mut out = Vec::new();
    for topic in &m.topics {
        let ns = topic.namespace().unwrap_or_default();
        let k = key(&ns, &topic.name_any());
        let conflict = older_claimant(topic, &all);
        let found = clusters.get(&key(&ns, &topic.spec.cluster_ref.name));
        let view = found.map_or(ClusterView::Missing, |(n, _)| ClusterView::Present { brokers: *n });
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
            (Some((_, address)), None) => match brokers.describe(address, topic.topic_name()).await {
                Ok(o) => o,
                Err(e) => {
                    out.push(unreachable(e));
                    continue;
                }
            },
            _ => None,
        };
        let p = topic_plan::plan(PlanInput {
            topic,
            cluster: view,
            observed: observed.as_ref(),
            conflicts_with: conflict.as_deref(),
        });
        let mut verdict = p.verdict.clone();
        if let Some((_, address)) = found {
            for call in &p.calls {
                if let Err(e) = brokers.execute(address, call).await {
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
            &topic_plan::TopicPlan { calls: p.calls, verdict: verdict.clone() },
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
            "outcome": format!("{:?}", c.plan.held.as_ref().map_or(Outcome::Ready, |v| v.outcome)),
            "reason": c.plan.held.as_ref().map(|v| v.reason),
            "message": c.plan.held.as_ref().map(|v| v.message.clone()),
            "brokers": c.brokers.iter().map(|b| serde_json::json!({
                "nodeId": b.node_id,
                "grpc": b.grpc.to_string(),
                "http": b.http.to_string(),
                "pid": b.child.id(),
                "dataDir": b.data_dir,
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

fn link_reports(m: &Manifests) -> Vec<(String, Verdict)> {
    let clusters: Vec<String> =
        m.clusters.iter().map(|c| key(&c.namespace().unwrap_or_default(), &c.name_any())).collect();
    m.links
        .iter()
        .map(|l| {
            let source = match (&l.spec.source.cluster_ref, mirror_plan::source_node(l)) {
                (Some(_), Some(node)) => clusters.contains(&node),
                _ => true,
            };
            let seen =
                ClustersSeen { source, destination: clusters.contains(&mirror_plan::destination_node(l)) };
            (key(&l.namespace().unwrap_or_default(), &l.name_any()), mirror_plan::verdict(l, &m.links, seen))
        })
        .collect()
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
    let brokers = GrpcBrokers::default();
    let mut last_printed = None;
    let mut warned: Vec<String> = Vec::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let result = loop {
        let addresses: BTreeMap<String, (i32, String)> = clusters
            .iter()
            .filter_map(|(k, c)| c.address().map(|a| (k.clone(), (c.brokers.len() as i32, a))))
            .collect();
        let topics = reconcile_topics(&manifests, &addresses, &brokers, Timestamp::now()).await;
        let links = link_reports(&manifests);
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
                let changed: Vec<String> = m
                    .clusters
                    .iter()
                    .filter(|c| {
                        let k = key(&c.namespace().unwrap_or_default(), &c.name_any());
                        clusters.get(&k).is_some_and(|lc| lc.cluster.spec != c.spec)
                    })
                    .map(|c| c.name_any())
                    .collect();
                if !changed.is_empty() && changed != warned {
                    println!(
                        "cluster spec changed for {}: restart local mode to apply it",
                        changed.join(", ")
                    );
                }
                warned = changed;
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

    fn cluster_with(replicas: i32) -> Cluster {
        Cluster::new("c", tributary_crds::ClusterSpec { replicas, ..Default::default() })
    }

    #[test]
    fn one_local_broker_runs_until_replication_lands() {
        let one = local_replicas(&cluster_with(1));
        assert_eq!((one.replicas, &one.held), (1, &None));
        assert_eq!(
            cluster_line("dev/c", 1, "127.0.0.1:17070", &one),
            "cluster dev/c: 1 broker(s) ready, bootstrap 127.0.0.1:17070"
        );

        let three = local_replicas(&cluster_with(3));
        assert_eq!(three.replicas, 1, "the same cap as the controller");
        let line = cluster_line("dev/c", 1, "127.0.0.1:17070", &three);
        assert!(
            line.starts_with(
                "cluster dev/c: 1 broker(s) ready, bootstrap 127.0.0.1:17070; Stalled ReplicationNotAvailable: "
            ),
            "{line}"
        );
        assert!(line.contains("set replicas: 1"), "{line}");
    }

    #[test]
    fn port_blocks_do_not_overlap() {
        assert_eq!(ports(17070, 0, 0), Some((17070, 17071)));
        assert_eq!(ports(17070, 0, 1), Some((17072, 17073)));
        assert_eq!(ports(17070, 1, 0), Some((17170, 17171)));
        assert_eq!(ports(65500, 1, 0), None);
    }
}

//! A replicated cluster of real broker processes on loopback, with the
//! network between them in the test's hands.
//!
//! Broker `i` is started with `--peers` naming itself at its real address
//! and every other broker `j` at the address of a [`Proxy`] for the link
//! `i -> j`; clients use the real (advertised) addresses that Metadata
//! returns, so they bypass the proxies. Cutting `i -> j` therefore stops
//! Raft messages, heartbeats and replica fetches from `i` to `j` and nothing
//! else — the partition a test wants, without root or iptables.
//!
//! Ports are fixed before anything starts (peers must know each other): the
//! OS picks free ones, they are released, and a start that loses a port to
//! another process is retried with new ones. A restarted broker keeps its
//! ports and data directory.
//!
//! Leadership questions ("who leads t-0?", "is the ISR full?") are answered
//! from every live broker's Metadata merged by leader epoch (see
//! [`routing`](crate::routing)), so a stale broker never misleads a test.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tonic::transport::Endpoint;
use tributary_proto::v1::admin_client::AdminClient;
use tributary_proto::v1::cluster_client::ClusterClient;
use tributary_proto::v1::{
    CreateTopicsRequest, DescribeClusterRequest, DescribeClusterResponse, PartitionMetadata, TopicSpec,
};

use crate::proxy::{CutMode, Proxy};
use crate::routing::{self, View};
use crate::{wait_for, Broker, Launch};

/// Lines of each broker's log a failure message carries.
const LOG_TAIL: usize = 40;

/// Broker settings that make a failover take seconds, not tens of them: a
/// broker's session expires 3 s after its last heartbeat, and a follower
/// 2 s behind leaves the ISR.
pub const FAST_FAILOVER: &str = "broker_session_timeout_ms = 3000\n\
                                 broker_heartbeat_interval_ms = 300\n\
                                 replica_lag_time_max_ms = 2000\n";

/// Unwraps a result or panics with the error *and* every broker's log tail:
/// a failed cluster test is undiagnosable without them.
pub trait OkOrLogs<T> {
    fn ok_or_logs(self, cluster: &Cluster) -> T;
}

impl<T> OkOrLogs<T> for Result<T> {
    fn ok_or_logs(self, cluster: &Cluster) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{e:#}\n{}", cluster.logs_tail()),
        }
    }
}

/// N brokers and the proxies between them; see the module docs. Dropping it
/// kills every broker and removes their directories.
pub struct Cluster {
    brokers: Vec<Broker>,
    /// `links[i][j]`: the proxy broker `i` reaches broker `j` through
    /// (None on the diagonal).
    links: Vec<Vec<Option<Proxy>>>,
    paused: Vec<bool>,
    /// Last, so it is removed after the processes using it are gone.
    root: tempfile::TempDir,
}

/// Free loopback ports, all distinct (held until all are picked).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

fn port_collision(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}").to_ascii_lowercase();
    text.contains("address already in use") || text.contains("addrinuse") || text.contains("os error 98")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// Starts `n` brokers (node ids 0..n, the first three voters) with the
    /// TOML `config` each, and waits until every one is ready (`/readyz`).
    pub fn start(n: usize, config: &str) -> Result<Cluster> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(n, config) {
                Ok(c) => return Ok(c),
                Err(e) if port_collision(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("cluster did not start")))
    }

    fn try_start(n: usize, config: &str) -> Result<Cluster> {
        let root = tempfile::Builder::new().prefix("tributary-cluster-").tempdir()?;
        let ports = free_ports(2 * n)?;
        let grpc: Vec<SocketAddr> =
            (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], ports[2 * i]))).collect();
        let http: Vec<SocketAddr> =
            (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1]))).collect();
        let mut links = Vec::new();
        for i in 0..n {
            let mut row = Vec::new();
            for (j, target) in grpc.iter().enumerate() {
                row.push(if i == j { None } else { Some(Proxy::start(*target)?) });
            }
            links.push(row);
        }
        let controllers: Vec<String> = (0..n.min(3)).map(|i| i.to_string()).collect();
        let mut brokers = Vec::new();
        for i in 0..n {
            let peers: Vec<String> = (0..n)
                .map(|j| {
                    let addr = links[i][j].as_ref().map_or(grpc[i], Proxy::addr);
                    format!("{j}@{addr}")
                })
                .collect();
            brokers.push(Broker::launch(Launch {
                root: root.path().join(format!("broker-{i}")),
                grpc: grpc[i],
                http: http[i],
                config: config.to_string(),
                args: vec![
                    "--node-id".into(),
                    i.to_string(),
                    "--peers".into(),
                    peers.join(","),
                    "--controllers".into(),
                    controllers.join(","),
                    "--advertised-address".into(),
                    grpc[i].to_string(),
                ],
            })?);
        }
        let mut cluster = Cluster { brokers, links, paused: vec![false; n], root };
        for i in 0..n {
            cluster.wait_ready(i, Duration::from_secs(60))?;
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.brokers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.brokers.is_empty()
    }

    pub fn broker(&self, i: usize) -> &Broker {
        &self.brokers[i]
    }

    /// The directory holding every broker's files.
    pub fn root(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    /// Every broker's client address, "a,b,c" (whether it runs or not: a
    /// client must cope with dead entries in its bootstrap list).
    pub fn bootstrap(&self) -> String {
        self.brokers.iter().map(|b| b.grpc.to_string()).collect::<Vec<_>>().join(",")
    }

    /// The client addresses of the brokers that run and are not paused.
    pub fn bootstrap_up(&mut self) -> String {
        self.up_addrs().join(",")
    }

    /// Broker `i`'s client address.
    pub fn addr(&self, i: usize) -> String {
        self.brokers[i].grpc.to_string()
    }

    /// The broker index with client address `addr`.
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.brokers.iter().position(|b| b.grpc.to_string() == addr)
    }

    /// Running and not paused.
    pub fn is_up(&mut self, i: usize) -> bool {
        !self.paused[i] && self.brokers[i].is_running()
    }

    /// SIGKILL (also of a paused broker).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.brokers[i].kill9()?;
        self.paused[i] = false;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit (a paused broker is resumed first so
    /// it can act on the signal).
    pub fn stop(&mut self, i: usize) -> Result<()> {
        if self.paused[i] {
            self.resume(i)?;
        }
        self.brokers[i].terminate()
    }

    /// Starts a stopped or killed broker again (same ports, same data) and
    /// returns at once; [`wait_ready`](Self::wait_ready) waits for it.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.brokers[i].is_running() {
            bail!("broker {i} is still running");
        }
        self.brokers[i].restart()
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing, as a
    /// broker stuck in a long GC pause or on a frozen VM.
    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.brokers[i].signal(libc::SIGSTOP)?;
        self.paused[i] = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) -> Result<()> {
        self.brokers[i].signal(libc::SIGCONT)?;
        self.paused[i] = false;
        Ok(())
    }

    /// Stops every broker at once (SIGSTOP to all, then SIGKILL), so none
    /// reacts to another's death: what is on disk afterwards is what they
    /// held at that moment.
    pub fn freeze_and_kill_all(&mut self) {
        for b in &self.brokers {
            let _ = b.signal(libc::SIGSTOP);
        }
        for (b, paused) in self.brokers.iter_mut().zip(&mut self.paused) {
            let _ = b.kill9();
            *paused = false;
        }
    }

    /// Waits until broker `i` answers `/readyz` with 200; fails early if the
    /// process exits, and with its log tail and last answer on timeout.
    pub fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let mut last: String;
        loop {
            if let Some(status) = self.brokers[i].exit_status() {
                bail!("broker {i} exited with {status} before it was ready:\n{}", self.log_tail(i));
            }
            match self.brokers[i].http_get_within("/readyz", Duration::from_secs(1)) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("{code} {}", body.trim()),
                Err(e) => last = e.to_string(),
            }
            if started.elapsed() > timeout {
                bail!("broker {i} not ready after {timeout:?} (last /readyz: {last}):\n{}", self.log_tail(i));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`wait_ready`](Self::wait_ready) from async code: the blocking polls
    /// run off the runtime's worker so producer tasks keep going (needs the
    /// multi-threaded runtime).
    pub async fn wait_ready_async(&mut self, i: usize, timeout: Duration) -> Result<()> {
        tokio::task::block_in_place(|| self.wait_ready(i, timeout))
    }

    /// The last lines of broker `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        tail(&self.brokers[i].logs(), LOG_TAIL)
    }

    /// Every broker's log tail, for a failure message.
    pub fn logs_tail(&self) -> String {
        (0..self.len()).map(|i| format!("--- broker {i} ---\n{}\n", self.log_tail(i))).collect()
    }

    /// The proxy broker `i` reaches broker `j` through.
    pub fn link(&self, i: usize, j: usize) -> &Proxy {
        self.links[i][j].as_ref().expect("no link from a broker to itself")
    }

    /// Cuts the link `i -> j` (black hole: requests hang).
    pub fn cut(&self, i: usize, j: usize) {
        self.cut_with(i, j, CutMode::Blackhole);
    }

    pub fn cut_with(&self, i: usize, j: usize, mode: CutMode) {
        self.link(i, j).cut(mode);
    }

    pub fn heal(&self, i: usize, j: usize) {
        self.link(i, j).heal();
    }

    /// Cuts broker `i` off from every other broker, both directions; its
    /// clients still reach it.
    pub fn isolate(&self, i: usize) {
        for j in (0..self.len()).filter(|&j| j != i) {
            self.cut(i, j);
            self.cut(j, i);
        }
    }

    pub fn heal_all(&self) {
        for proxy in self.links.iter().flatten().flatten() {
            proxy.heal();
        }
    }

    /// Client addresses of the brokers that are up.
    fn up_addrs(&mut self) -> Vec<String> {
        let up: Vec<usize> = (0..self.len()).filter(|&i| self.is_up(i)).collect();
        up.into_iter().map(|i| self.addr(i)).collect()
    }

    /// Metadata of `topics` (empty: all) merged from every broker that is up.
    pub async fn view(&mut self, topics: &[&str]) -> Result<View> {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        routing::view(&self.up_addrs(), &topics).await
    }

    /// The newest metadata entry of one partition.
    pub async fn partition(&mut self, topic: &str, partition: u32) -> Result<PartitionMetadata> {
        let view = self.view(&[topic]).await?;
        view.partition(topic, partition)
            .cloned()
            .with_context(|| format!("{topic}-{partition} not in metadata"))
    }

    /// The index of the partition's leader; None while it has none.
    pub async fn leader_of(&mut self, topic: &str, partition: u32) -> Result<Option<usize>> {
        let p = self.partition(topic, partition).await?;
        Ok(usize::try_from(p.leader).ok().filter(|&i| i < self.len()))
    }

    /// Waits until the partition has a leader other than `not` (any leader
    /// when None) and returns it with its epoch.
    pub async fn wait_leader(
        &mut self,
        topic: &str,
        partition: u32,
        not: Option<usize>,
        timeout: Duration,
    ) -> Result<(usize, i32)> {
        let what = format!("a leader of {topic}-{partition} other than {not:?}");
        let addrs = self.up_addrs();
        let topics = vec![topic.to_string()];
        wait_for(&what, timeout, || async {
            let view = routing::view(&addrs, &topics).await.map_err(|e| e.to_string())?;
            let p = view.partition(topic, partition).ok_or("not in metadata")?;
            match usize::try_from(p.leader) {
                Ok(l) if Some(l) != not => Ok((l, p.leader_epoch)),
                _ => Err(format!("{p:?}")),
            }
        })
        .await
    }

    /// Waits until every partition listed has a leader and a full ISR (the
    /// whole replica set).
    pub async fn wait_in_sync(&mut self, topic: &str, partitions: &[u32], timeout: Duration) -> Result<()> {
        let what = format!("{topic} {partitions:?} led with a full ISR");
        let addrs = self.up_addrs();
        let topics = vec![topic.to_string()];
        // Every live broker's own metadata must say so (and name the same
        // leaders): a test may ask any of them next.
        wait_for(&what, timeout, || async {
            let mut leaders: Option<Vec<i32>> = None;
            for addr in &addrs {
                let view =
                    routing::view(std::slice::from_ref(addr), &topics).await.map_err(|e| e.to_string())?;
                let mut these = Vec::new();
                for &p in partitions {
                    let Some(m) = view.partition(topic, p) else {
                        return Err(format!("{addr}: p{p} not in metadata"));
                    };
                    let (mut isr, mut replicas) = (m.isr.clone(), m.replicas.clone());
                    isr.sort_unstable();
                    replicas.sort_unstable();
                    if m.leader < 0 || replicas.is_empty() || isr != replicas {
                        return Err(format!("{addr}: p{p}: {m:?}"));
                    }
                    these.push(m.leader);
                }
                match &leaders {
                    Some(l) if *l != these => {
                        return Err(format!("{addr} names other leaders: {these:?} vs {l:?}"))
                    }
                    _ => leaders = Some(these),
                }
            }
            Ok(())
        })
        .await
    }

    /// Creates a topic through any live broker (retried while the controller
    /// is being elected) and waits until every partition has a leader and a
    /// full ISR.
    pub async fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let spec = TopicSpec {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let addrs = self.up_addrs();
        let what = format!("creating topic {name}");
        wait_for(&what, Duration::from_secs(30), || {
            let (addrs, spec) = (addrs.clone(), spec.clone());
            async move {
                let mut last = String::new();
                for addr in addrs {
                    let channel = Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|e| e.to_string())?
                        .connect_timeout(Duration::from_secs(1))
                        .connect_lazy();
                    let mut admin = AdminClient::new(channel);
                    let call = admin.create_topics(CreateTopicsRequest {
                        topics: vec![spec.clone()],
                        validate_only: false,
                    });
                    match tokio::time::timeout(Duration::from_secs(10), call).await {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(s)) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
                        Ok(Err(s)) if !routing::transport_failure(&s) => {
                            return Err(format!("refused by {addr}: {:?}: {}", s.code(), s.message()))
                        }
                        Ok(Err(s)) => last = format!("{addr}: {:?}: {}", s.code(), s.message()),
                        Err(_) => last = format!("{addr}: no answer"),
                    }
                }
                Err(last)
            }
        })
        .await?;
        let all: Vec<u32> = (0..partitions).collect();
        self.wait_in_sync(name, &all, Duration::from_secs(30)).await
    }

    /// DescribeCluster, from the controller when it is up (the liveness it
    /// reports is the controller's knowledge), else from any live broker.
    pub async fn describe(&mut self) -> Result<DescribeClusterResponse> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.retain(|&i| self.is_up(i));
        if let Ok(view) = self.view(&[]).await {
            if let Some(c) = usize::try_from(view.controller_id).ok().filter(|c| order.contains(c)) {
                order.retain(|&i| i != c);
                order.insert(0, c);
            }
        }
        let mut failures = BTreeMap::new();
        for i in order {
            let channel = Endpoint::from_shared(format!("http://{}", self.addr(i)))?
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy();
            let mut client = ClusterClient::new(channel);
            let call = client.describe_cluster(DescribeClusterRequest {});
            match tokio::time::timeout(Duration::from_secs(3), call).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(s)) => failures.insert(i, format!("{:?}: {}", s.code(), s.message())),
                Err(_) => failures.insert(i, "no answer".into()),
            };
        }
        bail!("no broker answered DescribeCluster: {failures:?}")
    }
}

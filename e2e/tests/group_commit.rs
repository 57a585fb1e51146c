//! Offset commits under load, against a real broker: many committers at once
//! must not stall the rest of the group protocol (heartbeats answer while
//! commits and joins queue for the disk), and the commit rate is measured
//! (`group_commit_throughput`, ignored by default: it only prints figures).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tributary_e2e::Broker;
use tributary_proto::v1::admin_client::AdminClient;
use tributary_proto::v1::group_client::GroupClient;
use tributary_proto::v1::*;

/// Latency samples shared by tasks.
#[derive(Default)]
struct Samples(Mutex<Vec<Duration>>);

impl Samples {
    fn push(&self, d: Duration) {
        self.0.lock().unwrap().push(d);
    }

    /// (count, p50, p99, max), the last three in ms.
    fn summary(&self) -> (usize, f64, f64, f64) {
        let mut v = self.0.lock().unwrap().clone();
        v.sort();
        if v.is_empty() {
            return (0, 0.0, 0.0, 0.0);
        }
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        (v.len(), at(0.5), at(0.99), at(1.0))
    }
}

async fn channel(b: &Broker) -> Channel {
    Channel::from_shared(format!("http://{}", b.grpc)).unwrap().connect().await.unwrap()
}

async fn channels(b: &Broker, n: usize) -> Vec<Channel> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(channel(b).await);
    }
    out
}

async fn create_topic(b: &Broker, name: &str, partitions: u32) {
    AdminClient::new(channel(b).await)
        .create_topics(CreateTopicsRequest {
            topics: vec![TopicSpec {
                name: name.into(),
                partitions,
                replication_factor: 1,
                configs: HashMap::new(),
            }],
            validate_only: false,
        })
        .await
        .unwrap();
}

fn standalone_commit(group: &str, partition: u32, offset: i64) -> CommitOffsetsRequest {
    CommitOffsetsRequest {
        group_id: group.into(),
        member_id: String::new(),
        generation: -1,
        group_instance_id: String::new(),
        offsets: vec![OffsetEntry { topic: "t".into(), partition, offset, metadata: String::new() }],
    }
}

fn join_request(group: &str, member: &str) -> JoinGroupRequest {
    JoinGroupRequest {
        group_id: group.into(),
        member_id: member.into(),
        group_instance_id: String::new(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        topics: vec!["t".into()],
        assignor: String::new(),
        owned: vec![],
        client_id: "e2e".into(),
    }
}

/// `committers` tasks, each committing for its own group as fast as the
/// broker answers, over a few shared connections, until `stop`.
fn spawn_committers(
    channels: &[Channel],
    committers: usize,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
    latencies: &Arc<Samples>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..committers)
        .map(|i| {
            let mut g = GroupClient::new(channels[i % channels.len()].clone());
            let (stop, done, latencies) = (stop.clone(), done.clone(), latencies.clone());
            tokio::spawn(async move {
                let group = format!("committer-{i}");
                let mut offset = 0;
                while !stop.load(Ordering::Relaxed) {
                    offset += 1;
                    let t = Instant::now();
                    g.commit_offsets(standalone_commit(&group, 0, offset)).await.unwrap();
                    latencies.push(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

/// Keeps the disk of `dir` busy until `stop`: appends 4 MiB and fsyncs it,
/// over and over (cutting the file back at 64 MiB), so every fsync on that
/// filesystem waits behind it, as on a busy disk.
fn busy_disk(dir: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let path = dir.join("busy-disk");
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let chunk = vec![7u8; 4 << 20];
        let mut written = 0;
        while !stop.load(Ordering::Relaxed) {
            f.write_all(&chunk).unwrap();
            f.sync_data().unwrap();
            written += chunk.len();
            if written >= 64 << 20 {
                f.set_len(0).unwrap();
                written = 0;
            }
        }
        drop(f);
        let _ = std::fs::remove_file(&path);
    })
}

/// Issue 7, defect 11: joins wrote their group record on the async runtime
/// behind the one commit mutex, each commit with its own fsync; with two
/// runtime threads, two joins waiting on the disk stalled the whole broker,
/// heartbeats included. Heartbeats must keep answering quickly while, on a
/// busy disk, 64 committers and 4 joining-and-leaving members wait for their
/// fsyncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_flowing_while_commits_and_joins_wait_for_the_disk() {
    let b = Broker::start().unwrap();
    create_topic(&b, "t", 1).await;
    let channels: Vec<Channel> = channels(&b, 4).await;

    // A stable member whose heartbeats we time.
    let mut hb = GroupClient::new(channels[0].clone());
    let joined = hb.join_group(join_request("steady", "")).await.unwrap().into_inner();
    assert!(joined.error.is_none(), "{joined:?}");
    let (member, generation) = (joined.member_id, joined.generation);

    let stop = Arc::new(AtomicBool::new(false));
    let disk = busy_disk(b.data_dir().parent().unwrap(), stop.clone());
    let commits = Arc::new(AtomicU64::new(0));
    let commit_latency = Arc::new(Samples::default());
    let mut tasks = spawn_committers(&channels, 64, &stop, &commits, &commit_latency);
    let joins = Arc::new(AtomicU64::new(0));
    for k in 0..4 {
        let mut g = GroupClient::new(channels[k % channels.len()].clone());
        let (stop, joins) = (stop.clone(), joins.clone());
        tasks.push(tokio::spawn(async move {
            let group = format!("churn-{k}");
            while !stop.load(Ordering::Relaxed) {
                let r = g.join_group(join_request(&group, "")).await.unwrap().into_inner();
                if r.error.is_none() {
                    joins.fetch_add(1, Ordering::Relaxed);
                    g.leave_group(LeaveGroupRequest {
                        group_id: group.clone(),
                        member_id: r.member_id,
                        group_instance_id: String::new(),
                    })
                    .await
                    .unwrap();
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let heartbeats = Samples::default();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        let r = hb
            .heartbeat(HeartbeatRequest {
                group_id: "steady".into(),
                member_id: member.clone(),
                generation,
                group_instance_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        heartbeats.push(t.elapsed());
        assert!(r.error.is_none(), "the steady member lost its membership: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    disk.join().unwrap();
    let (n, p50, p99, max) = heartbeats.summary();
    let (cn, cp50, cp99, _) = commit_latency.summary();
    let summary = format!(
        "heartbeats: {n}, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; commits: {cn} \
         (p50 {cp50:.1} ms, p99 {cp99:.1} ms); joins: {}",
        joins.load(Ordering::Relaxed)
    );
    println!("{summary}");
    assert!(commits.load(Ordering::Relaxed) > 100, "the committers made no progress: {summary}");
    // Each join and leave waits for an fsync behind the busy disk (up to a
    // second each on a slow one): one round per member shows progress.
    assert!(joins.load(Ordering::Relaxed) >= 4, "the joining members made no progress: {summary}");
    // A heartbeat stuck behind the disk waits about as long as a commit
    // does; a heartbeat answered beside it, a small fraction of that.
    let bound = (cp50 / 4.0).max(40.0);
    assert!(
        p99 < bound,
        "heartbeats stall while commits wait for the disk (p99 bound {bound:.1} ms): {summary}"
    );
}

/// Commits per second with many committers at once (each its own group,
/// standalone commits, one fsync'd `__consumer_offsets`). Prints one JSON
/// line. `TRIBUTARY_BENCH_COMMITTERS` (default 64) and
/// `TRIBUTARY_BENCH_SECS` (default 5) size it; `TRIBUTARY_BIN_DIR` picks the
/// broker binary to measure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn group_commit_throughput() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let committers = env("TRIBUTARY_BENCH_COMMITTERS", 64) as usize;
    let secs = env("TRIBUTARY_BENCH_SECS", 5);
    let b = Broker::start().unwrap();
    create_topic(&b, "t", 1).await;
    let channels = channels(&b, 4).await;
    // Creates __consumer_offsets before the clock starts.
    GroupClient::new(channels[0].clone()).commit_offsets(standalone_commit("warm-up", 0, 1)).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Samples::default());
    let start = Instant::now();
    let tasks = spawn_committers(&channels, committers, &stop, &commits, &latency);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = commits.load(Ordering::Relaxed);
    let (_, p50, p99, max) = latency.summary();
    // The broker's own account of its group commits, where it keeps one.
    let (_, metrics) = b.http_get("/metrics").unwrap();
    for line in metrics.lines().filter(|l| l.starts_with("tributary_group_commit")) {
        println!("{line}");
    }
    println!(
        "{{\"committers\":{committers},\"secs\":{elapsed:.2},\"commits\":{n},\"commits_per_s\":{:.0},\
         \"p50_ms\":{p50:.2},\"p99_ms\":{p99:.2},\"max_ms\":{max:.2}}}",
        n as f64 / elapsed
    );
}

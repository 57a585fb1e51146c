//! Issue 8, black-box: changing who is in the cluster. A broker is removed
//! only once drained; removing a controller hands its vote to a learner;
//! the removed process cannot come back as it is, a restarted one can; and
//! the reassignment throttle bounds how fast replicas copy.

use std::time::{Duration, Instant};

use tributary_client::tributary_proto::v1::DescribeClusterResponse;
use tributary_client::Admin;
use tributary_e2e::checker::{verify, Ledger};
use tributary_e2e::cluster::{Cluster, OkOrLogs, FAST_FAILOVER};
use tributary_e2e::workload::{spawn_producer, ProducerOptions};
use tributary_e2e::{run_cli, wait_for};

const WAIT: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(40);

fn cli(c: &Cluster, args: &[&str]) -> std::process::Output {
    run_cli(&c.bootstrap(), args, "").ok_or_logs(c)
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Four brokers (0, 1, 2 voters, 3 a learner), an `acks=all` producer
/// throughout. Broker 2 cannot be removed while it hosts replicas; once
/// drained it is, and broker 3 takes its vote, so the quorum keeps three
/// voters and survives losing another one. Its process, still running,
/// gets no session back; restarted, it joins again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_broker_is_removed_and_its_vote_goes_to_a_learner() {
    let mut c = Cluster::start(4, FAST_FAILOVER).unwrap();
    c.create_topic("m", 2, 3, &[("min.insync.replicas", "2")]).await.ok_or_logs(&c);
    let ledger = Ledger::new();
    let producer = spawn_producer(&c.bootstrap(), &ledger, ProducerOptions::new("m", &[0, 1]));
    producer.wait_acked(50, WAIT).await.ok_or_logs(&c);
    let hosting = c.describe().await.ok_or_logs(&c);
    assert!(hosting.brokers.iter().any(|b| b.node_id == 2));

    let refused = cli(&c, &["broker", "remove", "2"]);
    assert!(!refused.status.success(), "removed while hosting replicas: {}", text(&refused));
    assert!(text(&refused).contains("drain it first"), "{}", text(&refused));
    assert_eq!(c.describe().await.ok_or_logs(&c).brokers.len(), 4, "a refused removal changed the cluster");

    let drained = cli(&c, &["broker", "drain", "2"]);
    assert!(drained.status.success(), "{}", text(&drained));
    wait_for("no replica left on broker 2", SETTLE, || {
        let boot: Vec<String> = c.bootstrap().split(',').map(str::to_string).collect();
        async move {
            let topics = vec!["m".to_string()];
            let view = tributary_e2e::routing::view(&boot, &topics).await.map_err(|e| e.to_string())?;
            for p in 0..2 {
                let m = view.partition("m", p).ok_or("no partition")?;
                if m.replicas.contains(&2) || m.replicas.len() != 3 || m.isr.len() != 3 {
                    return Err(format!("{m:?}"));
                }
            }
            Ok(())
        }
    })
    .await
    .ok_or_logs(&c);

    let removed = cli(&c, &["broker", "remove", "2"]);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(text(&removed).contains("voters: 0,1,3"), "broker 3 did not take the vote: {}", text(&removed));
    let d = c.describe().await.ok_or_logs(&c);
    assert!(!d.brokers.iter().any(|b| b.node_id == 2), "still listed: {d:?}");
    assert!(d.brokers.iter().any(|b| b.node_id == 3 && b.voter), "{d:?}");

    // The removed process is still up, heartbeating: it stays out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = c.describe().await.ok_or_logs(&c);
    assert!(!d.brokers.iter().any(|b| b.node_id == 2), "the removed run came back: {d:?}");
    c.kill(2).ok_or_logs(&c);
    producer.wait_acked(30, WAIT).await.ok_or_logs(&c);

    // Quorum {0, 1, 3} survives losing 0 (the controller or not).
    c.kill(0).ok_or_logs(&c);
    wait_for("a controller among 1 and 3", SETTLE, || {
        let addrs = vec![c.addr(1), c.addr(3)];
        async move {
            let view = tributary_e2e::routing::view(&addrs, &[]).await.map_err(|e| e.to_string())?;
            if view.controller_id == 1 || view.controller_id == 3 {
                Ok(())
            } else {
                Err(format!("controller {}", view.controller_id))
            }
        }
    })
    .await
    .ok_or_logs(&c);
    c.restart(0).ok_or_logs(&c);
    c.wait_ready_async(0, Duration::from_secs(60)).await.ok_or_logs(&c);
    producer.wait_acked(30, WAIT).await.ok_or_logs(&c);

    // A new run of broker 2 joins again (as a learner, hosting nothing).
    c.restart(2).ok_or_logs(&c);
    wait_for("broker 2 back in the cluster", SETTLE, || {
        let addrs = vec![c.addr(1), c.addr(3)];
        async move {
            let view = tributary_e2e::routing::view(&addrs, &[]).await.map_err(|e| e.to_string())?;
            if view.brokers.contains_key(&2) {
                Ok(())
            } else {
                Err(format!("{:?}", view.brokers))
            }
        }
    })
    .await
    .ok_or_logs(&c);

    let stats = producer.stop().await;
    assert!(stats.non_retriable.is_empty(), "{stats:?}");
    let report = verify(&mut c, &ledger, "m", &[0, 1], SETTLE).await.ok_or_logs(&c);
    eprintln!("{report}");
    assert!(report.is_clean(), "{report}\n{}", c.logs_tail());
}

/// DescribeCluster through any of the cluster's brokers, afresh.
async fn describe(bootstrap: String) -> Result<DescribeClusterResponse, String> {
    let admin = Admin::connect(&bootstrap).await.map_err(|e| e.to_string())?;
    admin.describe_cluster().await.map_err(|e| e.to_string())
}

/// Bytes of a partition's segment files on one broker.
fn partition_bytes(c: &Cluster, broker: usize, dir: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(c.broker(broker).data_dir().join(dir)) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// A partition of ~3 MB gets a second replica with a 400 KB/s throttle: the
/// copy takes at least what the rate allows (less the one-second burst),
/// `cluster describe` shows the throttle while it runs, and it is gone once
/// the reassignment completes. Unthrottled, the same copy takes well under a
/// second on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reassignment_throttle_bounds_the_copy_rate() {
    const RATE: u64 = 400_000;
    let mut c = Cluster::start(3, FAST_FAILOVER).unwrap();
    c.create_topic("big", 1, 1, &[]).await.ok_or_logs(&c);
    // Incompressible lines: the bytes stored are the bytes to copy.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut input = String::new();
    for _ in 0..3000 {
        for _ in 0..125 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            input.push_str(&format!("{:08x}", x as u32));
        }
        input.push('\n');
    }
    let out = run_cli(&c.bootstrap(), &["produce", "big", "--acks", "all"], &input).ok_or_logs(&c);
    assert!(out.status.success(), "{}", text(&out));
    let leader = c.leader_of("big", 0).await.ok_or_logs(&c).expect("big-0 has a leader");
    let size = partition_bytes(&c, leader, "big-0");
    assert!(size > 6 * RATE, "only {size} bytes stored: too little to see a {RATE} B/s throttle");
    let target = (0..3).find(|i| *i != leader).unwrap_or(0);
    let started = Instant::now();
    let replicas = format!("{leader},{target}");
    let out = cli(
        &c,
        &[
            "partition",
            "reassign",
            "--topic",
            "big",
            "--partition",
            "0",
            "--replicas",
            &replicas,
            "--throttle",
            &RATE.to_string(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The broker answering may apply the reassignment a moment after the
    // controller: asked again for up to 3 s (the copy takes longer).
    let mut shown = cli(&c, &["cluster", "describe"]);
    let asked = Instant::now();
    while !text(&shown).contains(&RATE.to_string()) && asked.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        shown = cli(&c, &["cluster", "describe"]);
    }
    assert!(text(&shown).contains(&RATE.to_string()), "throttle not shown while copying:\n{}", text(&shown));
    c.wait_in_sync("big", &[0], Duration::from_secs(120)).await.ok_or_logs(&c);
    let took = started.elapsed();
    let least = Duration::from_secs_f64((size - RATE) as f64 / RATE as f64 * 0.8);
    eprintln!("copied {size} bytes at a {RATE} B/s throttle in {took:?} (at least {least:?} expected)");
    assert!(took >= least, "{size} bytes copied in {took:?}: faster than {RATE} B/s allows");
    wait_for("the throttle to end with the reassignment", WAIT, || {
        let bootstrap = c.bootstrap();
        async move {
            let d = describe(bootstrap).await?;
            if d.reassignments_in_progress == 0 && d.reassignment_throttle_bytes_per_sec == 0 {
                Ok(())
            } else {
                Err(format!("{d:?}"))
            }
        }
    })
    .await
    .ok_or_logs(&c);
}

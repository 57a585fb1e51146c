//! Issue 8, black-box: a three-broker cluster under failures. Each scenario
//! writes uniquely numbered records with an idempotent `acks=all` producer
//! while it kills, pauses or cuts off brokers, and ends with the checker:
//! no acknowledged record lost, none twice, each at the offset it was
//! acknowledged with, in order, nothing a reader saw later gone, and every
//! replica byte-identical to the leader below the high watermark.
//!
//! Topics use RF 3 and `min.insync.replicas=2`; brokers run with
//! [`FAST_FAILOVER`] (3 s sessions, 2 s replica lag) so each scenario takes
//! well under a minute.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tributary_e2e::checker::{verify, Ledger, Report};
use tributary_e2e::cluster::{Cluster, OkOrLogs, FAST_FAILOVER};
use tributary_e2e::routing;
use tributary_e2e::workload::{read_partition, spawn_producer, spawn_tail, ProducerOptions, Route};
use tributary_e2e::{run_cli, wait_for};

const MIN_ISR: (&str, &str) = ("min.insync.replicas", "2");
const WAIT: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(30);

fn start() -> Cluster {
    Cluster::start(3, FAST_FAILOVER).unwrap()
}

fn assert_clean(report: &Report, cluster_logs: &str) {
    // On the real stderr, so a passing run shows its figures too.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{report}");
    assert!(report.is_clean(), "{report}\n{cluster_logs}");
    assert!(report.acked > 0, "nothing was acknowledged: the scenario tested nothing\n{report}");
}

/// The scenario of the issue: the leader of partition 0 is killed with
/// SIGKILL and restarted, three rounds, while the producer writes both
/// partitions; writes go on through every failover and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_three_times_loses_no_acknowledged_record() {
    let mut c = start();
    c.create_topic("k", 2, 3, &[MIN_ISR]).await.ok_or_logs(&c);
    let ledger = Ledger::new();
    let producer = spawn_producer(&c.bootstrap(), &ledger, ProducerOptions::new("k", &[0, 1]));
    let tail = spawn_tail(&c.bootstrap(), &ledger, "k", &[0, 1], Route::Leader);
    producer.wait_acked(50, WAIT).await.ok_or_logs(&c);
    for round in 0..3 {
        let (old, epoch) = c.wait_leader("k", 0, None, WAIT).await.ok_or_logs(&c);
        c.kill(old).ok_or_logs(&c);
        let (new, new_epoch) = c.wait_leader("k", 0, Some(old), WAIT).await.ok_or_logs(&c);
        assert!(
            new_epoch > epoch,
            "round {round}: leader {old}->{new} without a new epoch ({epoch}->{new_epoch})"
        );
        // Writes go on while the old leader is down...
        producer.wait_acked(30, WAIT).await.ok_or_logs(&c);
        c.restart(old).ok_or_logs(&c);
        c.wait_ready_async(old, Duration::from_secs(60)).await.ok_or_logs(&c);
        // ...and once it is back in sync (so the next kill leaves two).
        c.wait_in_sync("k", &[0, 1], SETTLE).await.ok_or_logs(&c);
        producer.wait_acked(30, WAIT).await.ok_or_logs(&c);
    }
    let stats = producer.stop().await;
    tail.stop().await;
    assert!(stats.non_retriable.is_empty(), "{stats:?}");
    assert!(stats.leader_changes >= 3, "the producer never followed a failover: {stats:?}");
    let report = verify(&mut c, &ledger, "k", &[0, 1], SETTLE).await.ok_or_logs(&c);
    assert_clean(&report, &c.logs_tail());
}

/// A leader frozen (SIGSTOP) past its session and the replica lag timeout:
/// the others elect a new leader, and once resumed the old one steps down
/// and follows — truncating whatever only it had, so nothing it held alone
/// is readable, not even from it (a reader and a writer pinned to it from
/// the moment it resumes are held to account by the checker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_steps_down_and_nothing_divergent_is_readable() {
    let mut c = start();
    c.create_topic("p", 1, 3, &[MIN_ISR]).await.ok_or_logs(&c);
    let ledger = Ledger::new();
    let producer = spawn_producer(&c.bootstrap(), &ledger, ProducerOptions::new("p", &[0]));
    let tail = spawn_tail(&c.bootstrap(), &ledger, "p", &[0], Route::Leader);
    producer.wait_acked(50, WAIT).await.ok_or_logs(&c);
    let (old, epoch) = c.wait_leader("p", 0, None, WAIT).await.ok_or_logs(&c);
    c.pause(old).ok_or_logs(&c);
    let paused_at = Instant::now();
    let (new, new_epoch) = c.wait_leader("p", 0, Some(old), WAIT).await.ok_or_logs(&c);
    assert!(new_epoch > epoch, "leader {old}->{new} without a new epoch");
    producer.wait_acked(30, WAIT).await.ok_or_logs(&c);
    // Past the session (3 s) and the lag timeout (2 s) with margin.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(paused_at.elapsed())).await;
    c.resume(old).ok_or_logs(&c);
    let old_addr = c.addr(old);
    let pinned_tail = spawn_tail(&old_addr, &ledger, "p", &[0], Route::Pinned(old_addr.clone()));
    let mut pinned_options = ProducerOptions::new("p", &[0]);
    pinned_options.route = Route::Pinned(old_addr.clone());
    let pinned = spawn_producer(&c.bootstrap(), &ledger, pinned_options);
    // It steps down: its own metadata names another leader soon.
    let asked = vec![old_addr.clone()];
    let topics = vec!["p".to_string()];
    wait_for("the resumed leader to know it was replaced", WAIT, || async {
        let view = routing::view(&asked, &topics).await.map_err(|e| e.to_string())?;
        let p = view.partition("p", 0).ok_or("p-0 not in its metadata")?;
        if p.leader != old as i32 && p.leader_epoch >= new_epoch {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await
    .ok_or_logs(&c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pinned_stats = pinned.stop().await;
    pinned_tail.stop().await;
    assert!(pinned_stats.non_retriable.is_empty(), "{pinned_stats:?}");
    // It rejoins the ISR as a follower.
    c.wait_in_sync("p", &[0], SETTLE).await.ok_or_logs(&c);
    producer.wait_acked(30, WAIT).await.ok_or_logs(&c);
    let stats = producer.stop().await;
    tail.stop().await;
    assert!(stats.non_retriable.is_empty(), "{stats:?}");
    let report = verify(&mut c, &ledger, "p", &[0], SETTLE).await.ok_or_logs(&c);
    assert_clean(&report, &c.logs_tail());
}

/// Sessions long enough that a restarted broker is back before the
/// controller would have fenced it.
const LONG_SESSION: &str = "broker_session_timeout_ms = 10000\n\
                            broker_heartbeat_interval_ms = 300\n\
                            replica_lag_time_max_ms = 2000\n";

/// What a power loss does to a partition on one broker: the end of its
/// active segment, written but never fsynced, is gone (kill -9 alone keeps
/// it: the page cache survives the process). Answers the bytes cut.
fn lose_unsynced_tail(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut segments: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let active = segments.pop().ok_or_else(|| anyhow::anyhow!("no segment in {}", dir.display()))?;
    let len = std::fs::metadata(&active)?.len();
    std::fs::OpenOptions::new().write(true).open(&active)?.set_len(len / 2)?;
    Ok(len - len / 2)
}

/// The leader loses its unsynced tail to a power loss and is back within
/// its session, before the controller noticed it was gone. Its followers
/// hold records it no longer has, all acknowledged with `acks=all`: the
/// restarted run must not lead on in the old epoch (appending new records
/// at offsets the followers hold others at, and moving the high watermark
/// over them). The controller ends the old run's session when the new one
/// registers, so an in-sync follower leads in a new epoch and the restarted
/// broker truncates and copies back what it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_back_from_a_power_loss_within_its_session_takes_nothing_from_its_followers() {
    let mut c = Cluster::start(3, LONG_SESSION).unwrap();
    c.create_topic("w", 1, 3, &[MIN_ISR]).await.ok_or_logs(&c);
    let ledger = Ledger::new();
    let producer = spawn_producer(&c.bootstrap(), &ledger, ProducerOptions::new("w", &[0]));
    producer.wait_acked(300, WAIT).await.ok_or_logs(&c);
    let (old, epoch) = c.wait_leader("w", 0, None, WAIT).await.ok_or_logs(&c);
    let killed_at = Instant::now();
    c.kill(old).ok_or_logs(&c);
    let cut = lose_unsynced_tail(&c.broker(old).data_dir().join("w-0")).ok_or_logs(&c);
    assert!(cut > 0, "the active segment was empty: the power loss took nothing");
    c.restart(old).ok_or_logs(&c);
    // Back well within the 10 s session (its first heartbeat follows in
    // well under a second), so the controller has not fenced it.
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "the restart took {:?}: the scenario needs it back before its session ends",
        killed_at.elapsed()
    );
    c.wait_ready_async(old, Duration::from_secs(60)).await.ok_or_logs(&c);
    producer.wait_acked(100, WAIT).await.ok_or_logs(&c);
    let (_, now_epoch) = c.wait_leader("w", 0, None, WAIT).await.ok_or_logs(&c);
    let stats = producer.stop().await;
    assert!(stats.non_retriable.is_empty(), "{stats:?}");
    let report = verify(&mut c, &ledger, "w", &[0], SETTLE).await.ok_or_logs(&c);
    assert_clean(&report, &c.logs_tail());
    assert!(now_epoch > epoch, "still leader epoch {epoch} after the restart: the old run's epoch went on");
}

/// The leader cut off from both other brokers by the proxies while clients
/// still reach it. Nothing first sent to it after the cut may be
/// acknowledged (it cannot be replicated), the majority elects a new leader
/// and takes the writes, and after healing none of the records only the
/// cut-off leader held is readable anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_peers_acknowledges_nothing_it_alone_holds() {
    let mut c = start();
    c.create_topic("c", 1, 3, &[MIN_ISR]).await.ok_or_logs(&c);
    let ledger = Ledger::new();
    let producer = spawn_producer(&c.bootstrap(), &ledger, ProducerOptions::new("c", &[0]));
    let tail = spawn_tail(&c.bootstrap(), &ledger, "c", &[0], Route::Leader);
    producer.wait_acked(50, WAIT).await.ok_or_logs(&c);
    let (old, epoch) = c.wait_leader("c", 0, None, WAIT).await.ok_or_logs(&c);
    let others: Vec<usize> = (0..3).filter(|&j| j != old).collect();
    // The followers really fetch through the proxies, or the cut is no cut.
    for &j in &others {
        let link = c.link(j, old);
        assert!(link.bytes_forwarded() > 0, "broker {j} never reached leader {old} through its proxy");
    }
    c.isolate(old);
    let cut_at = Instant::now();
    let old_addr = c.addr(old);
    let majority: Vec<String> = others.iter().map(|&j| c.addr(j)).collect();
    let mut pinned_options = ProducerOptions::new("c", &[0]);
    pinned_options.route = Route::Pinned(old_addr.clone());
    // Its producer id comes from the majority (the cut-off broker cannot
    // reach the quorum to hand one out); its writes go to the old leader.
    let pinned = spawn_producer(&majority.join(","), &ledger, pinned_options);
    let pinned_tail = spawn_tail(&old_addr, &ledger, "c", &[0], Route::Pinned(old_addr.clone()));
    // The majority side elects a new leader.
    let topics = vec!["c".to_string()];
    let new_epoch = wait_for("a new leader among the majority", WAIT, || async {
        let view = routing::view(&majority, &topics).await.map_err(|e| e.to_string())?;
        let p = view.partition("c", 0).ok_or("c-0 not in metadata")?;
        if p.leader >= 0 && p.leader != old as i32 && p.leader_epoch > epoch {
            Ok(p.leader_epoch)
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await
    .ok_or_logs(&c);
    producer.wait_acked(30, WAIT).await.ok_or_logs(&c);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pinned_number = pinned.number();
    let pinned_stats = pinned.stop().await;
    pinned_tail.stop().await;
    assert!(pinned_stats.attempts > 0, "nothing was sent to the cut-off leader");
    assert!(pinned_stats.non_retriable.is_empty(), "{pinned_stats:?}");
    c.heal_all();
    c.wait_in_sync("c", &[0], SETTLE).await.ok_or_logs(&c);
    let after = c.partition("c", 0).await.ok_or_logs(&c);
    assert!(after.leader_epoch >= new_epoch, "{after:?}");
    producer.wait_acked(30, WAIT).await.ok_or_logs(&c);
    let stats = producer.stop().await;
    tail.stop().await;
    assert!(stats.non_retriable.is_empty(), "{stats:?}");
    let entries = ledger.snapshot();
    let acked_by_cut_leader: Vec<_> =
        entries.acked.iter().filter(|a| a.via == old_addr && a.first_sent > cut_at).collect();
    assert!(
        acked_by_cut_leader.is_empty(),
        "the cut-off leader acknowledged {} records sent after the cut, e.g. {:?}",
        acked_by_cut_leader.len(),
        acked_by_cut_leader.first()
    );
    let only_on_cut_leader: HashSet<u64> =
        entries.unacked.iter().filter(|u| u.producer == pinned_number).map(|u| u.id).collect();
    let report = verify(&mut c, &ledger, "c", &[0], SETTLE).await.ok_or_logs(&c);
    let readable: Vec<_> = only_on_cut_leader.intersection(&report.stored_ids).collect();
    assert!(readable.is_empty(), "records only the cut-off leader had are readable: {readable:?}");
    assert_clean(&report, &c.logs_tail());
}

/// Two of three brokers killed: the quorum and the ISR are gone, so
/// `acks=all` produces fail with retriable errors (nothing sent after the
/// kill is acknowledged), while what is below the high watermark stays
/// readable from the surviving leader. Restarted, the cluster takes writes
/// again without anyone intervening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_dead_writes_fail_retriably_and_resume_on_their_own() {
    let mut c = start();
    c.create_topic("q", 1, 3, &[MIN_ISR]).await.ok_or_logs(&c);
    let ledger = Ledger::new();
    let mut options = ProducerOptions::new("q", &[0]);
    options.request_timeout = Duration::from_secs(2);
    let producer = spawn_producer(&c.bootstrap(), &ledger, options);
    producer.wait_acked(50, WAIT).await.ok_or_logs(&c);
    let (leader, _) = c.wait_leader("q", 0, None, WAIT).await.ok_or_logs(&c);
    let others: Vec<usize> = (0..3).filter(|&j| j != leader).collect();
    for &j in &others {
        c.kill(j).ok_or_logs(&c);
    }
    let killed_at = Instant::now();
    let failed_before = producer.failed_attempts();
    // Past the session and lag timeouts: whatever the leader tries (ISR
    // shrink, step down), it has no quorum to do it with.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = ledger.snapshot();
    let acked_during = during.acked_sent_after(killed_at);
    assert!(acked_during.is_empty(), "acknowledged with one broker of three: {:?}", acked_during.first());
    assert!(producer.failed_attempts() > failed_before, "no produce attempt failed during the outage");
    // Reads below the HW still work on the surviving leader.
    let leader_addr = c.addr(leader);
    let read = read_partition(&leader_addr, "q", 0, &Route::Pinned(leader_addr.clone())).await.ok_or_logs(&c);
    let survivors = tributary_e2e::checker::check(
        &tributary_e2e::checker::Entries {
            acked: during.acked.iter().filter(|a| a.acked_at < killed_at).cloned().collect(),
            ..Default::default()
        },
        &[read],
        &[],
    );
    assert!(survivors.lost.count == 0 && survivors.misplaced.count == 0, "{survivors}");
    for &j in &others {
        c.restart(j).ok_or_logs(&c);
    }
    for &j in &others {
        c.wait_ready_async(j, Duration::from_secs(60)).await.ok_or_logs(&c);
    }
    producer.wait_acked(50, Duration::from_secs(40)).await.ok_or_logs(&c);
    let stats = producer.stop().await;
    assert!(stats.non_retriable.is_empty(), "a failure during the outage was not retriable: {stats:?}");
    let report = verify(&mut c, &ledger, "q", &[0], SETTLE).await.ok_or_logs(&c);
    assert_clean(&report, &c.logs_tail());
}

/// The cell under `header`'s column on `line` (tables pad every column, so
/// a header's position is its column's, whatever cells are empty).
fn cell<'a>(header_line: &str, header: &str, line: &'a str) -> Option<&'a str> {
    let at = header_line.to_ascii_uppercase().find(header)?;
    line.get(at..)?.split_whitespace().next()
}

/// `tributary cluster describe` and DescribeCluster: three live brokers, a
/// controller and no under-replicated partition once settled; after a kill
/// the dead broker is shown not alive and partitions under-replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_describe_shows_liveness_controller_and_under_replication() {
    let mut c = start();
    c.create_topic("d", 3, 3, &[MIN_ISR]).await.ok_or_logs(&c);
    let settled = {
        let deadline = Instant::now() + SETTLE;
        loop {
            let d = c.describe().await.ok_or_logs(&c);
            if d.brokers.len() == 3
                && d.brokers.iter().all(|b| b.alive)
                && d.controller_id >= 0
                && d.under_replicated_partitions == 0
                && d.offline_partitions == 0
            {
                break d;
            }
            assert!(Instant::now() < deadline, "cluster never settled: {d:?}\n{}", c.logs_tail());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(!settled.cluster_id.is_empty(), "{settled:?}");
    assert!(settled.partitions >= 3, "{settled:?}");
    let out = run_cli(&c.bootstrap(), &["cluster", "describe"], "").unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(&settled.cluster_id), "{text}");
    assert!(text.to_ascii_lowercase().contains("controller"), "{text}");
    for i in 0..3 {
        assert!(text.contains(&c.addr(i)), "broker {i} missing:\n{text}");
    }
    // Kill a broker that is not the controller (so the controller's view
    // of the liveness is what is asked).
    let victim = (0..3).find(|&i| i as i32 != settled.controller_id).unwrap_or(0);
    c.kill(victim).ok_or_logs(&c);
    let victim_id = victim as i32;
    let after = {
        let deadline = Instant::now() + WAIT;
        loop {
            let d = c.describe().await.ok_or_logs(&c);
            let dead = d.brokers.iter().any(|b| b.node_id == victim_id && !b.alive);
            if dead && d.under_replicated_partitions > 0 {
                break d;
            }
            assert!(Instant::now() < deadline, "kill not reflected: {d:?}\n{}", c.logs_tail());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(after.controller_id >= 0 && after.controller_id != victim_id, "{after:?}");
    let controller = usize::try_from(after.controller_id).unwrap_or(0);
    // The ISRs shrink one partition at a time, so the count can still grow
    // while the CLI runs: take the CLI's output only when DescribeCluster
    // gave the same count just before and just after it.
    let (text, want) = {
        let deadline = Instant::now() + WAIT;
        loop {
            let before = c.describe().await.ok_or_logs(&c).under_replicated_partitions;
            // Asked of the controller, as DescribeCluster was: another
            // broker's view of liveness and ISRs trails it.
            let out = run_cli(&c.addr(controller), &["cluster", "describe"], "").unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let after = c.describe().await.ok_or_logs(&c).under_replicated_partitions;
            if before == after {
                break (String::from_utf8_lossy(&out.stdout).into_owned(), after.to_string());
            }
            assert!(Instant::now() < deadline, "under-replicated count never settled\n{}", c.logs_tail());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let header =
        text.lines().find(|l| l.split_whitespace().any(|w| w == "ALIVE")).unwrap_or_else(|| panic!("{text}"));
    let alive_of = |i: usize| {
        // Table rows only (the controller line names an address too).
        let row = text
            .lines()
            .skip_while(|l| *l != header)
            .skip(1)
            .find(|l| l.contains(&c.addr(i)))
            .unwrap_or_else(|| panic!("no row for {i}:\n{text}"));
        cell(header, "ALIVE", row).unwrap_or_else(|| panic!("no ALIVE cell for {i}:\n{text}")).to_string()
    };
    let live: Vec<String> = (0..3).filter(|&i| i != victim).map(alive_of).collect();
    assert_eq!(live[0], live[1], "{text}");
    assert_ne!(alive_of(victim), live[0], "the killed broker shows as alive:\n{text}");
    // The under-replicated count is printed (on its line, or under its
    // column header).
    let lines: Vec<&str> = text.lines().collect();
    let shown = lines.iter().enumerate().any(|(n, l)| {
        if !l.to_ascii_lowercase().contains("under") {
            return false;
        }
        let numbers = |s: &str| -> Vec<String> {
            s.split(|ch: char| !ch.is_ascii_digit()).filter(|t| !t.is_empty()).map(String::from).collect()
        };
        numbers(l).contains(&want)
            || lines.get(n + 1).and_then(|next| cell(l, "UNDER", next)).is_some_and(|c| c == want)
    });
    assert!(shown, "under-replicated count {want} not shown:\n{text}");
}

/// Replication factor 1 -> 3 -> 2 on a live topic under load: the new
/// replicas copy first and the switch happens once they are in sync, so
/// writes go on (no failure the producer could not retry), nothing
/// acknowledged is lost, and the replicas agree byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_factor_changes_under_load_lose_nothing() {
    let mut c = start();
    c.create_topic("rf", 2, 1, &[]).await.ok_or_logs(&c);
    let ledger = Ledger::new();
    let producer = spawn_producer(&c.bootstrap(), &ledger, ProducerOptions::new("rf", &[0, 1]));
    let tail = spawn_tail(&c.bootstrap(), &ledger, "rf", &[0, 1], Route::Leader);
    producer.wait_acked(50, WAIT).await.ok_or_logs(&c);
    for (rf, isr) in [(3usize, 3usize), (2, 2)] {
        let out =
            run_cli(&c.bootstrap(), &["topic", "alter", "rf", "--replication-factor", &rf.to_string()], "")
                .ok_or_logs(&c);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let topic = ["rf".to_string()];
        let boot: Vec<String> = c.bootstrap().split(',').map(str::to_string).collect();
        wait_for(&format!("replication factor {rf} with a full ISR"), SETTLE, || async {
            let view = routing::view(&boot, &topic).await.map_err(|e| e.to_string())?;
            for p in 0..2 {
                let m = view.partition("rf", p).ok_or("partition missing")?;
                if m.replicas.len() != rf || m.isr.len() != isr {
                    return Err(format!("{m:?}"));
                }
            }
            Ok(())
        })
        .await
        .ok_or_logs(&c);
        producer.wait_acked(30, WAIT).await.ok_or_logs(&c);
    }
    let stats = producer.stop().await;
    tail.stop().await;
    assert!(stats.non_retriable.is_empty(), "{stats:?}");
    let report = verify(&mut c, &ledger, "rf", &[0, 1], SETTLE).await.ok_or_logs(&c);
    assert_clean(&report, &c.logs_tail());
}

//! Issue 10, mirroring, black-box: real broker processes on 127.0.0.1.
//!
//! * Two local clusters feed one aggregate: a prefix-named link (`a.ev*`,
//!   including a topic created after the link) and two identity-named links
//!   that both feed the aggregate's `orders`. Mid-way the broker running
//!   the copy of `orders`-0 (the destination leader) and a source leader
//!   are killed with SIGKILL. Afterwards every source record is in the
//!   aggregate exactly once (by provenance, and by key/value), with key,
//!   value, timestamp and headers kept.
//! * Loop refusal: two identity links in opposite directions copy each
//!   record once and never back; bad input to `mirror create` changes
//!   nothing; pause, resume and delete work through the CLI.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_client::tributary_proto::v1;
use tributary_client::{Acks, Admin, ConsumerRecord, OffsetSpec, Producer, ProducerConfig, ProducerRecord};
use tributary_e2e::cluster::{Cluster, OkOrLogs, FAST_FAILOVER};
use tributary_e2e::{read_to_end, run_cli, wait_for, FAST_MAINTENANCE};

const PROVENANCE: &str = "tributary.provenance";
const WAIT: Duration = Duration::from_secs(20);

/// Writes keyed records with headers and explicit timestamps until `stop`.
fn spawn_writer(
    bootstrap: String,
    topic: &'static str,
    tag: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let config = ProducerConfig {
            bootstrap,
            acks: Acks::All,
            linger: Duration::from_millis(5),
            ..Default::default()
        };
        let Ok(p) = Producer::connect(config).await else { return 0 };
        let mut pending = Vec::new();
        let mut i = 0u64;
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        while !stop.load(Ordering::Relaxed) {
            let mut r = ProducerRecord::new(topic, Bytes::from(format!("{tag}:{topic}:{i}")));
            r.key = Some(Bytes::from(format!("k{}", i % 97)));
            r.headers = vec![("seq".into(), Some(Bytes::from(i.to_string()))), ("empty".into(), None)];
            // Not the broker's clock: a copy must keep the producer's.
            r.timestamp = Some(start_ms - 60_000 + i as i64);
            if let Ok(f) = p.send(r).await {
                pending.push(f);
            }
            i += 1;
            if i.is_multiple_of(10) {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        let _ = p.flush().await;
        for f in pending {
            let _ = f.await;
        }
        let _ = p.close().await;
        i
    })
}

async fn cluster_id(bootstrap: &str) -> String {
    Admin::connect(bootstrap).await.unwrap().describe_cluster().await.unwrap().cluster_id
}

fn cli_ok(bootstrap: &str, args: &[&str]) -> String {
    let out = run_cli(bootstrap, args, "").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tributary {args:?} failed: {stderr}{stdout}");
    stdout.into_owned()
}

fn cli_err(bootstrap: &str, args: &[&str]) -> String {
    let out = run_cli(bootstrap, args, "").unwrap();
    assert!(!out.status.success(), "tributary {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Key, value, timestamp and headers.
type Content = (Option<Bytes>, Option<Bytes>, i64, Vec<(String, Option<Bytes>)>);

/// The record without its provenance header, for comparing with the source.
fn content(r: &ConsumerRecord) -> Content {
    let headers = r.headers.iter().filter(|(k, _)| k != PROVENANCE).cloned().collect();
    (r.key.clone(), r.value.clone(), r.timestamp, headers)
}

/// (cluster id, partition, offset) of the last hop, whose header reads
/// `CLUSTER_ID:TOPIC_TAG:PARTITION:OFFSET`.
fn provenance(r: &ConsumerRecord) -> Option<(String, u32, i64)> {
    let (_, v) = r.headers.iter().rev().find(|(k, _)| k == PROVENANCE)?;
    let text = std::str::from_utf8(v.as_deref()?).ok()?;
    match text.split(':').collect::<Vec<_>>()[..] {
        [cluster, tag, partition, offset] if tag.len() == 8 => {
            Some((cluster.to_string(), partition.parse().ok()?, offset.parse().ok()?))
        }
        _ => None,
    }
}

async fn high_watermark(bootstrap: &str, topic: &str, partition: u32) -> i64 {
    match Admin::connect(bootstrap).await {
        Ok(a) => a.list_offsets(topic, partition, OffsetSpec::Latest).await.unwrap_or(-1),
        Err(_) => -1,
    }
}

/// Every record of `topic`'s partitions.
async fn read_all(bootstrap: &str, topic: &str, partitions: u32) -> Vec<ConsumerRecord> {
    let mut out = Vec::new();
    for p in 0..partitions {
        out.extend(read_to_end(bootstrap, topic, p).await.unwrap());
    }
    out
}

/// A source: (bootstrap, cluster id, topic, partitions, destination topic).
struct Feed {
    bootstrap: String,
    cluster: String,
    topic: &'static str,
    partitions: u32,
    destination: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_locals_flow_into_an_aggregate_exactly_once_through_kills() {
    let mut a = Cluster::start(3, FAST_FAILOVER).unwrap();
    let mut b = Cluster::start(1, FAST_FAILOVER).unwrap();
    let mut agg = Cluster::start(3, FAST_FAILOVER).unwrap();
    let min_isr = [("min.insync.replicas", "1")];
    a.create_topic("orders", 2, 3, &min_isr).await.ok_or_logs(&a);
    a.create_topic("events", 1, 3, &min_isr).await.ok_or_logs(&a);
    b.create_topic("orders", 2, 1, &[]).await.ok_or_logs(&b);
    // The identity destination exists already (as LinkedIn's aggregate
    // topics do); the prefixed ones the link creates.
    agg.create_topic("orders", 2, 2, &min_isr).await.ok_or_logs(&agg);
    let (ab, bb, gb) = (a.bootstrap(), b.bootstrap(), agg.bootstrap());
    cli_ok(
        &gb,
        &[
            "mirror",
            "create",
            "a-events",
            "--source-alias",
            "a",
            "--source",
            &ab,
            "--topics",
            "ev.*",
            "--naming",
            "prefix",
            "--start",
            "earliest",
            "--replication-factor",
            "2",
        ],
    );
    cli_ok(
        &gb,
        &[
            "mirror",
            "create",
            "a-orders",
            "--source-alias",
            "a",
            "--source",
            &ab,
            "--topics",
            "orders",
            "--naming",
            "identity",
            "--start",
            "earliest",
        ],
    );
    cli_ok(
        &gb,
        &[
            "mirror",
            "create",
            "b-orders",
            "--source-alias",
            "b",
            "--source",
            &bb,
            "--topics",
            "orders",
            "--naming",
            "identity",
            "--start",
            "earliest",
        ],
    );
    let list = cli_ok(&gb, &["mirror", "list"]);
    assert!(list.contains("a-events") && list.contains("a-orders") && list.contains("b-orders"), "{list}");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = vec![
        spawn_writer(ab.clone(), "orders", "a", stop.clone()),
        spawn_writer(ab.clone(), "events", "a", stop.clone()),
        spawn_writer(bb.clone(), "orders", "b", stop.clone()),
    ];
    // Copying has begun before anything is killed.
    wait_for("records in the aggregate's orders-0", WAIT, || async {
        let hw = high_watermark(&gb, "orders", 0).await;
        if hw > 50 {
            Ok(())
        } else {
            Err(format!("high watermark {hw}"))
        }
    })
    .await
    .ok_or_logs(&agg);

    // The broker copying into orders-0 dies; the new leader's task resumes
    // from its own log.
    let (mirroring, _) = agg.wait_leader("orders", 0, None, WAIT).await.ok_or_logs(&agg);
    let at_kill = high_watermark(&gb, "orders", 0).await;
    agg.kill(mirroring).ok_or_logs(&agg);
    agg.wait_leader("orders", 0, Some(mirroring), WAIT).await.ok_or_logs(&agg);
    tokio::time::sleep(Duration::from_secs(2)).await;
    agg.restart(mirroring).ok_or_logs(&agg);
    // A source leader dies; the tasks follow the source's new leader.
    let (source_leader, _) = a.wait_leader("orders", 0, None, WAIT).await.ok_or_logs(&a);
    a.kill(source_leader).ok_or_logs(&a);
    a.wait_leader("orders", 0, Some(source_leader), WAIT).await.ok_or_logs(&a);
    // A topic created after the link is picked up.
    // (Two of a's three brokers are up: replication factor 2.)
    a.create_topic("evlate", 1, 2, &min_isr).await.ok_or_logs(&a);
    let late = spawn_writer(ab.clone(), "evlate", "a", stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.restart(source_leader).ok_or_logs(&a);
    agg.wait_ready_async(mirroring, Duration::from_secs(60)).await.ok_or_logs(&agg);
    a.wait_ready_async(source_leader, Duration::from_secs(60)).await.ok_or_logs(&a);
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers.into_iter().chain([late]) {
        written += w.await.unwrap();
    }
    assert!(written > 300, "only {written} records were written: the scenario tested little");

    let (ca, cb) = (cluster_id(&ab).await, cluster_id(&bb).await);
    let feeds = [
        Feed {
            bootstrap: ab.clone(),
            cluster: ca.clone(),
            topic: "orders",
            partitions: 2,
            destination: "orders",
        },
        Feed {
            bootstrap: bb.clone(),
            cluster: cb.clone(),
            topic: "orders",
            partitions: 2,
            destination: "orders",
        },
        Feed {
            bootstrap: ab.clone(),
            cluster: ca.clone(),
            topic: "events",
            partitions: 1,
            destination: "a.events",
        },
        Feed {
            bootstrap: ab.clone(),
            cluster: ca.clone(),
            topic: "evlate",
            partitions: 1,
            destination: "a.evlate",
        },
    ];
    // Source truth: every record up to each source high watermark.
    let mut source: BTreeMap<(String, String, u32, i64), ConsumerRecord> = BTreeMap::new();
    for f in &feeds {
        for r in read_all(&f.bootstrap, f.topic, f.partitions).await {
            source.insert((f.cluster.clone(), f.destination.to_string(), r.partition, r.offset), r);
        }
    }
    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &feeds {
        expected
            .entry(f.destination)
            .or_insert_with(|| source.keys().filter(|k| k.1 == f.destination).count());
    }
    let destinations = [("orders", 2u32), ("a.events", 1), ("a.evlate", 1)];
    wait_for("the aggregate to hold every source record", Duration::from_secs(45), || async {
        let mut seen = Vec::new();
        for (t, n) in destinations {
            let mut total = 0;
            for p in 0..n {
                total += high_watermark(&gb, t, p).await.max(0) as usize;
            }
            if total < expected[t] {
                return Err(format!("{t}: {total} of {} ({seen:?})", expected[t]));
            }
            seen.push((t, total));
        }
        Ok(())
    })
    .await
    .ok_or_logs(&agg);
    // Late duplicates would show up now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = high_watermark(&gb, "orders", 0).await;
    assert!(after > at_kill, "orders-0 got nothing after its mirroring broker died ({at_kill} -> {after})");
    eprintln!(
        "mirrored {} source records ({written} written); orders-0: {at_kill} at the kill, {after} at the end",
        source.len()
    );

    let mut copied = HashSet::new();
    for (t, n) in destinations {
        for r in read_all(&gb, t, n).await {
            let Some((cluster, partition, offset)) = provenance(&r) else {
                panic!("{t}-{}@{}: a record without provenance: {r:?}", r.partition, r.offset)
            };
            assert_eq!(partition, r.partition, "copied into another partition: {r:?}");
            let key = (cluster, t.to_string(), partition, offset);
            let Some(original) = source.get(&key) else {
                panic!("{t}: a copy of no source record: {key:?}\n{}", agg.logs_tail())
            };
            assert_eq!(content(&r), content(original), "{t}: key, value, timestamp or headers changed");
            assert!(copied.insert(key.clone()), "{t}: copied twice: {key:?}\n{}", agg.logs_tail());
        }
    }
    let missing: Vec<_> = source.keys().filter(|k| !copied.contains(*k)).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} source records never reached the aggregate, e.g. {missing:?}",
        source.len() - copied.len()
    );
    // The status shows the copy done: no lag, a source high watermark.
    let status = Admin::connect(&gb).await.unwrap().describe_mirror_link("a-orders").await.unwrap();
    assert_eq!(status.partitions.len(), 2, "{status:?}");
    assert_eq!(status.total_lag, 0, "{status:?}");
    assert!(
        status.partitions.iter().all(|p| p.source_high_watermark > 0 && p.state == "Copying"),
        "{status:?}"
    );
    let text = cli_ok(&gb, &["mirror", "status", "a-orders"]);
    assert!(text.contains("LAG") && text.contains("orders"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_links_copy_once_and_never_back_and_bad_input_changes_nothing() {
    let mut x = Cluster::start(1, FAST_FAILOVER).unwrap();
    let mut y = Cluster::start(1, FAST_FAILOVER).unwrap();
    x.create_topic("t", 1, 1, &[]).await.ok_or_logs(&x);
    y.create_topic("t", 1, 1, &[]).await.ok_or_logs(&y);
    let (xb, yb) = (x.bootstrap(), y.bootstrap());
    cli_ok(
        &yb,
        &[
            "mirror",
            "create",
            "from-x",
            "--source-alias",
            "x",
            "--source",
            &xb,
            "--topics",
            "t",
            "--naming",
            "identity",
            "--start",
            "earliest",
        ],
    );
    cli_ok(
        &xb,
        &[
            "mirror",
            "create",
            "from-y",
            "--source-alias",
            "y",
            "--source",
            &yb,
            "--topics",
            "t",
            "--naming",
            "identity",
            "--start",
            "earliest",
        ],
    );

    // Bad input: a clear error, and nothing stored or changed.
    let before = cli_ok(&yb, &["mirror", "list"]);
    let bad = cli_err(
        &yb,
        &["mirror", "create", "bad", "--source-alias", "x", "--source", &xb, "--topics", "orders("],
    );
    assert!(bad.contains("invalid topics regex"), "{bad}");
    let bad = cli_err(
        &yb,
        &[
            "mirror",
            "create",
            "bad",
            "--source-alias",
            "x",
            "--source",
            &xb,
            "--topics",
            "t",
            "--exclude",
            "[z",
        ],
    );
    assert!(bad.contains("invalid exclude regex"), "{bad}");
    let dup = cli_err(
        &yb,
        &["mirror", "create", "from-x", "--source-alias", "z", "--source", &xb, "--topics", "other"],
    );
    assert!(dup.contains("already exists"), "{dup}");
    let me = cli_err(
        &yb,
        &[
            "mirror",
            "create",
            "self",
            "--source-alias",
            "y",
            "--source",
            &yb,
            "--topics",
            "t",
            "--naming",
            "identity",
        ],
    );
    assert!(me.contains("is this cluster"), "{me}");
    let unknown = cli_err(&yb, &["mirror", "status", "nope"]);
    assert!(unknown.contains("unknown mirror link"), "{unknown}");
    assert!(cli_err(&yb, &["mirror", "pause", "nope"]).contains("unknown mirror link"));
    assert_eq!(cli_ok(&yb, &["mirror", "list"]), before, "a refused create changed the links");
    assert!(before.contains("from-x") && before.contains("identity"), "{before}");

    let produce = |bootstrap: &str, tag: &str, from: u32, n: u32| {
        let lines: String = (from..from + n).map(|i| format!("{tag}{i}\n")).collect();
        let out = run_cli(bootstrap, &["produce", "t"], &lines).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    produce(&xb, "x", 0, 20);
    produce(&yb, "y", 0, 20);
    let settle = |bootstrap: String, want: i64| async move {
        wait_for(&format!("{want} records in t at {bootstrap}"), WAIT, || {
            let bootstrap = bootstrap.clone();
            async move {
                let hw = high_watermark(&bootstrap, "t", 0).await;
                if hw >= want {
                    Ok(())
                } else {
                    Err(format!("high watermark {hw}"))
                }
            }
        })
        .await
    };
    settle(xb.clone(), 40).await.ok_or_logs(&x);
    settle(yb.clone(), 40).await.ok_or_logs(&y);
    // Time for a loop to show, were there one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cx, cy) = (cluster_id(&xb).await, cluster_id(&yb).await);
    for (bootstrap, own, other, other_id) in [(&xb, "x", "y", &cy), (&yb, "y", "x", &cx)] {
        let records = read_to_end(bootstrap, "t", 0).await.unwrap();
        assert_eq!(
            records.len(),
            40,
            "{own}: {} records, not 20 own + 20 copied\n{}{}",
            records.len(),
            x.logs_tail(),
            y.logs_tail()
        );
        for r in &records {
            let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
            match provenance(r) {
                None => assert!(value.starts_with(own), "{own}: {value} without provenance"),
                Some((id, _, _)) => {
                    assert_eq!(&id, other_id, "{own}: {value} copied from {id}");
                    assert!(value.starts_with(other), "{own}: {value} came back");
                }
            }
        }
    }

    // Pause: nothing more is copied; resume: the rest arrives.
    cli_ok(&yb, &["mirror", "pause", "from-x"]);
    assert!(cli_ok(&yb, &["mirror", "list"]).contains("paused"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    produce(&xb, "x", 20, 5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(high_watermark(&yb, "t", 0).await, 40, "a paused link copied\n{}", y.logs_tail());
    cli_ok(&yb, &["mirror", "resume", "from-x"]);
    settle(yb.clone(), 45).await.ok_or_logs(&y);
    let series = "tributary_mirror_lag{link=\"from-x\"";
    let metrics = || y.broker(0).http_get("/metrics").map(|(_, body)| body).unwrap_or_default();
    assert!(metrics().contains(series), "no lag series for a copying link:\n{}", metrics());
    cli_ok(&yb, &["mirror", "delete", "from-x"]);
    assert!(!cli_ok(&yb, &["mirror", "list"]).contains("from-x"));
    produce(&xb, "x", 25, 5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(high_watermark(&yb, "t", 0).await, 45, "a deleted link copied\n{}", y.logs_tail());
    // A deleted link's series are gone, not frozen at their last value.
    assert!(!metrics().contains(series), "a deleted link's lag is still exported:\n{}", metrics());
}

/// Values of every record in `topic`-0 at `bootstrap`, in offset order.
async fn values(bootstrap: &str, topic: &str) -> Vec<String> {
    let records = read_to_end(bootstrap, topic, 0).await.unwrap();
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

/// Until `topic`-0 at `bootstrap` holds `want` records.
async fn settle_at(bootstrap: &str, topic: &str, want: i64) -> anyhow::Result<()> {
    wait_for(&format!("{want} records in {topic} at {bootstrap}"), WAIT, || async move {
        match high_watermark(bootstrap, topic, 0).await {
            hw if hw >= want => Ok(()),
            hw => Err(format!("high watermark {hw}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_means_from_the_links_creation_overlapping_links_copy_once_and_a_recreated_source_starts_over()
{
    let mut s = Cluster::start(1, FAST_FAILOVER).unwrap();
    let mut d = Cluster::start(1, &format!("{FAST_FAILOVER}{FAST_MAINTENANCE}")).unwrap();
    s.create_topic("t", 1, 1, &[]).await.ok_or_logs(&s);
    let (sb, db) = (s.bootstrap(), d.bootstrap());
    let produce = |tag: &str, n: u32| {
        let lines: String = (0..n).map(|i| format!("{tag}{i}\n")).collect();
        let out = run_cli(&sb, &["produce", "t"], &lines).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let link = |name: &str, topics: &str| {
        let args = [
            "mirror",
            "create",
            name,
            "--source-alias",
            "s",
            "--source",
            &sb,
            "--topics",
            topics,
            "--naming",
            "identity",
            "--start",
            "latest",
        ];
        cli_ok(&db, &args);
    };
    produce("old", 5);
    // --start latest, paused before anything is copied: records that come
    // while it is paused are after the link's creation, so they are copied
    // on resume (a task that looked "latest" up again would skip them).
    link("l1", "t");
    cli_ok(&db, &["mirror", "pause", "l1"]);
    produce("new", 5);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cli_ok(&db, &["mirror", "resume", "l1"]);
    settle_at(&db, "t", 5).await.ok_or_logs(&d);
    assert_eq!(values(&db, "t").await, ["new0", "new1", "new2", "new3", "new4"], "{}", d.logs_tail());

    // A second link from the same source overlapping on `t`: it leaves `t`
    // to l1 and says so; each record is copied once.
    link("l2", "t|u");
    wait_for("l2 reports its conflict over t", WAIT, || async {
        let status = cli_ok(&db, &["mirror", "status", "l2"]);
        if status.contains("Conflict") && status.contains("link 'l1' already copies 't'") {
            Ok(())
        } else {
            Err(status)
        }
    })
    .await
    .ok_or_logs(&d);
    produce("more", 5);
    settle_at(&db, "t", 10).await.ok_or_logs(&d);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(high_watermark(&db, "t", 0).await, 10, "a record was copied twice\n{}", d.logs_tail());
    cli_ok(&db, &["mirror", "delete", "l2"]);

    // Offset translation: group g read the source's t up to offset 8
    // ("new3", the copy at 3 here); g2 read all 15 records, of which the
    // destination has all it will get so far (it goes on at the end).
    let source = Admin::connect(&sb).await.unwrap();
    let at =
        |offset| vec![v1::OffsetEntry { topic: "t".into(), partition: 0, offset, metadata: String::new() }];
    source.commit_offsets("g", at(8)).await.unwrap();
    source.commit_offsets("g2", at(15)).await.unwrap();
    let shown = cli_ok(&db, &["mirror", "translate-offsets", "l1", "--group", "g", "--apply"]);
    assert!(shown.contains("committed 1 offsets for group g"), "{shown}");
    let dest = Admin::connect(&db).await.unwrap();
    let committed = dest.fetch_offsets("g").await.unwrap();
    assert_eq!(
        committed.iter().map(|e| (e.topic.as_str(), e.partition, e.offset)).collect::<Vec<_>>(),
        [("t", 0, 3)]
    );
    assert_eq!(values(&db, "t").await[3], "new3");
    let shown = cli_ok(&db, &["mirror", "translate-offsets", "l1", "--group", "g2"]);
    let row = shown
        .lines()
        .find(|l| l.starts_with("t "))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(row[..5], ["t", "0", "15", "t", "10"], "{shown}");
    assert!(shown.contains("not yet"), "{shown}");
    match dest.fetch_offsets("g2").await {
        Ok(offsets) => assert!(offsets.is_empty(), "without --apply nothing is committed: {offsets:?}"),
        Err(e) => assert!(e.to_string().contains("unknown group 'g2'"), "{e}"),
    }
    let none = cli_err(&db, &["mirror", "translate-offsets", "l1", "--group", "nobody"]);
    assert!(none.contains("no committed offsets"), "{none}");

    // The source topic is deleted and created again: its offsets start
    // over below what was copied. The new topic is copied from its start.
    let out = run_cli(&sb, &["topic", "delete", "t"], "").unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.create_topic("t", 1, 1, &[]).await.ok_or_logs(&s);
    produce("re", 3);
    settle_at(&db, "t", 13).await.ok_or_logs(&d);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = values(&db, "t").await;
    assert_eq!(got.len(), 13, "{got:?}\n{}", d.logs_tail());
    assert_eq!(got[10..], ["re0", "re1", "re2"], "{got:?}");

    // Retention at the destination removes every copy: the task restarts
    // (pause, resume) and goes on from the checkpoint in the metadata,
    // not from the link's start again.
    s.create_topic("r", 1, 1, &[]).await.ok_or_logs(&s);
    d.create_topic("r", 1, 1, &[("retention.ms", "1500")]).await.ok_or_logs(&d);
    cli_ok(
        &db,
        &[
            "mirror",
            "create",
            "l3",
            "--source-alias",
            "s",
            "--source",
            &sb,
            "--topics",
            "r",
            "--naming",
            "identity",
        ],
    );
    let lines: String = (0..5).map(|i| format!("r{i}\n")).collect();
    let out = run_cli(&sb, &["produce", "r"], &lines).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    settle_at(&db, "r", 5).await.ok_or_logs(&d);
    let copied = Instant::now();
    let dest = Admin::connect(&db).await.unwrap();
    wait_for("retention removes the copies", WAIT, || async {
        match dest.list_offsets("r", 0, OffsetSpec::Earliest).await {
            Ok(5) => Ok(()),
            other => Err(format!("log start {other:?}")),
        }
    })
    .await
    .ok_or_logs(&d);
    // Past the checkpoint interval (5 s) since the copy, with room for a
    // late tick.
    tokio::time::sleep((copied + Duration::from_secs(8)).saturating_duration_since(Instant::now())).await;
    // Paused long enough for every broker to see it: the task ends, and
    // the one after the resume starts from its resume point.
    cli_ok(&db, &["mirror", "pause", "l3"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cli_ok(&db, &["mirror", "resume", "l3"]);
    let out = run_cli(&sb, &["produce", "r"], "r5\nr6\n").unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    settle_at(&db, "r", 7).await.ok_or_logs(&d);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(high_watermark(&db, "r", 0).await, 7, "copied again after retention\n{}", d.logs_tail());
}

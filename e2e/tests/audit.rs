//! Issue 10, the completeness audit, black-box: real broker processes on
//! 127.0.0.1 with 2 s windows and 1 s grace.
//!
//! * Two local clusters feed one aggregate (prefix links for `orders`,
//!   identity links for `clicks`). Tracking producers (library and
//!   `tributary produce --track`) write to both locals (local-a has three
//!   brokers and replication factor 3); mid-way the aggregate's broker
//!   (which runs the mirror tasks) and a leader of local-a are killed with
//!   SIGKILL and restarted. Afterwards a tracking consumer of the aggregate
//!   got every record exactly once and `tributary audit report` against
//!   the aggregate says every closed window is complete, across every tier
//!   (producer, local-a, local-b, aggregate, consumer:GROUP).
//! * Loss detection: records removed from a source by retention before the
//!   link copies them: the report names the topic and window with the
//!   missing count and exits non-zero.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_client::audit::TrackingConfig;
use tributary_client::{
    Acks, GroupConfig, GroupConsumer, OffsetReset, Producer, ProducerConfig, ProducerRecord,
};
use tributary_e2e::cluster::{Cluster, OkOrLogs, FAST_FAILOVER};
use tributary_e2e::{read_to_end, run_cli, wait_for};

const WINDOW_MS: i64 = 2000;
const GRACE_MS: i64 = 1000;
const WAIT: Duration = Duration::from_secs(30);

fn config(tier: &str) -> String {
    format!(
        "{FAST_FAILOVER}cluster_name = \"{tier}\"\naudit_window_ms = {WINDOW_MS}\naudit_grace_ms = {GRACE_MS}\n\
         audit_publish_interval_ms = 300\nretention_check_interval_ms = 200\n"
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn tracking(service: &str) -> TrackingConfig {
    TrackingConfig {
        service: service.into(),
        host: "e2e-host".into(),
        window: Duration::from_millis(WINDOW_MS as u64),
    }
}

/// A tracking producer writing `tag:topic:i` values until `stop`; returns
/// how many it wrote (all acknowledged).
fn spawn_writer(
    bootstrap: String,
    topics: &'static [&'static str],
    tag: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let config = ProducerConfig {
            bootstrap,
            acks: Acks::All,
            linger: Duration::from_millis(5),
            tracking: Some(tracking(&format!("svc-{tag}"))),
            ..Default::default()
        };
        let p = Producer::connect(config).await.unwrap();
        let mut pending = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for topic in topics {
                let r = ProducerRecord::new(*topic, Bytes::from(format!("{tag}:{topic}:{i}")))
                    .key(format!("k{}", i % 13));
                pending.push(p.send(r).await.unwrap());
            }
            i += 1;
            if i.is_multiple_of(10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        p.flush().await.unwrap();
        for f in pending {
            f.await.unwrap();
        }
        p.close().await.unwrap();
        i * topics.len() as u64
    })
}

fn link(dest: &str, name: &str, alias: &str, source: &str, topics: &str, naming: &str) {
    let args = [
        "mirror",
        "create",
        name,
        "--source-alias",
        alias,
        "--source",
        source,
        "--topics",
        topics,
        "--naming",
        naming,
        "--start",
        "earliest",
    ];
    let out = run_cli(dest, &args, "").unwrap();
    assert!(out.status.success(), "mirror create {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `audit report --json` against `bootstrap`: (exit ok, the document).
fn report(bootstrap: &str, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let mut args = vec!["audit", "report", "--json"];
    args.extend_from_slice(extra);
    let out = run_cli(bootstrap, &args, "").unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (out.status.success(), doc, format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
}

fn checks(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    doc["checks"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_line_up_complete_through_kills_of_the_mirroring_broker_and_a_source_leader() {
    // local-a is replicated (three brokers): its leaders count what they
    // append, and one of them is killed mid-way.
    let mut a = Cluster::start(3, &config("local-a")).unwrap();
    let mut b = Cluster::start(1, &config("local-b")).unwrap();
    let mut agg = Cluster::start(1, &config("aggregate")).unwrap();
    let (ab, bb, gb) = (a.bootstrap(), b.bootstrap(), agg.bootstrap());
    let min_isr = [("min.insync.replicas", "2")];
    a.create_topic("orders", 2, 3, &min_isr).await.ok_or_logs(&a);
    a.create_topic("clicks", 1, 3, &min_isr).await.ok_or_logs(&a);
    b.create_topic("orders", 2, 1, &[]).await.ok_or_logs(&b);
    b.create_topic("clicks", 1, 1, &[]).await.ok_or_logs(&b);
    agg.create_topic("clicks", 1, 1, &[]).await.ok_or_logs(&agg);
    link(&gb, "a-orders", "a", &ab, "orders", "prefix");
    link(&gb, "b-orders", "b", &bb, "orders", "prefix");
    link(&gb, "a-clicks", "a", &ab, "clicks", "identity");
    link(&gb, "b-clicks", "b", &bb, "clicks", "identity");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = vec![
        spawn_writer(ab.clone(), &["orders", "clicks"], "a", stop.clone()),
        spawn_writer(bb.clone(), &["orders", "clicks"], "b", stop.clone()),
    ];
    // The CLI's tracking producer too (b's clicks).
    let cli_lines: String = (0..50).map(|i| format!("cli-{i}\n")).collect();
    let cli_bb = bb.clone();
    let cli_lines2 = cli_lines.clone();
    let cli = tokio::task::spawn_blocking(move || {
        run_cli(
            &cli_bb,
            &["produce", "clicks", "--track", "--service", "cli", "--audit-window-ms", "2000"],
            &cli_lines2,
        )
    });
    wait_for("copies in the aggregate", WAIT, || async {
        let n = read_to_end(&gb, "a.orders", 0).await.map_err(|e| e.to_string())?.len();
        if n > 100 {
            Ok(())
        } else {
            Err(format!("{n} records in a.orders-0"))
        }
    })
    .await
    .ok_or_logs(&agg);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The mirroring broker and the leader of local-a's orders-0 die with
    // SIGKILL: what the leader appended after its last published count is
    // recounted when it is back, and only what committed.
    agg.kill(0).ok_or_logs(&agg);
    let (source_leader, _) = a.wait_leader("orders", 0, None, WAIT).await.ok_or_logs(&a);
    a.kill(source_leader).ok_or_logs(&a);
    a.wait_leader("orders", 0, Some(source_leader), WAIT).await.ok_or_logs(&a);
    tokio::time::sleep(Duration::from_secs(1)).await;
    agg.restart(0).ok_or_logs(&agg);
    a.restart(source_leader).ok_or_logs(&a);
    agg.wait_ready_async(0, Duration::from_secs(60)).await.ok_or_logs(&agg);
    a.wait_ready_async(source_leader, Duration::from_secs(60)).await.ok_or_logs(&a);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    let out = cli.await.unwrap().unwrap();
    assert!(out.status.success(), "produce --track: {}", String::from_utf8_lossy(&out.stderr));
    written += 50;
    let last_write = now_ms();
    assert!(written > 400, "only {written} records were written: the scenario tested little");

    // A tracking consumer of the aggregate gets every record exactly once.
    let mut gc = GroupConfig::new(gb.clone(), "g");
    gc.auto_offset_reset = OffsetReset::Earliest;
    gc.tracking = Some(tracking("reader"));
    let mut consumer = GroupConsumer::connect(gc).await.unwrap();
    consumer.subscribe(&["a.orders", "b.orders", "clicks"]).await.unwrap();
    let mut values = Vec::new();
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3) || (values.len() as u64) < written {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "consumed {} of {written} records",
            values.len()
        );
        let got = consumer.poll(Duration::from_millis(300)).await.unwrap();
        if !got.is_empty() {
            quiet_since = Instant::now();
        }
        values.extend(got.into_iter().filter_map(|r| r.value));
    }
    consumer.close().await.unwrap();
    let unique: HashSet<&Bytes> = values.iter().collect();
    assert_eq!(unique.len(), values.len(), "a record was consumed twice");
    assert_eq!(values.len() as u64, written, "consumed {} of {written}", values.len());

    // Once the last window closes, every tier agrees on every window.
    let closes = crate_window_end(last_write) + GRACE_MS;
    let wait = Duration::from_millis((closes - now_ms()).max(0) as u64);
    tokio::time::sleep(wait).await;
    let deadline = Instant::now() + WAIT;
    let doc = loop {
        let (ok, doc, text) = report(&gb, &[]);
        let all_closed = checks(&doc).iter().all(|c| c["closed"] == true);
        if ok && all_closed {
            break doc;
        }
        assert!(Instant::now() < deadline, "the audit report never became complete: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let rows = checks(&doc);
    let pairs: HashSet<(String, String)> = rows
        .iter()
        .map(|c| (c["upstream"].as_str().unwrap_or("").into(), c["downstream"].as_str().unwrap_or("").into()))
        .collect();
    for want in [
        ("producer", "local-a"),
        ("producer", "local-b"),
        ("local-a", "aggregate"),
        ("local-b", "aggregate"),
        ("local-a+local-b", "aggregate"),
        ("aggregate", "consumer:g"),
    ] {
        assert!(pairs.contains(&(want.0.into(), want.1.into())), "no {want:?} check in {doc}");
    }
    for c in &rows {
        assert_eq!(c["verdict"], "complete", "{c}");
    }
    // Every record the producers wrote was counted once at the producer tier.
    let produced: u64 = rows
        .iter()
        .filter(|c| c["upstream"] == "producer")
        .map(|c| c["expected"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(produced, written);
    // --tiers narrows the checks to the tiers named.
    let (ok, narrowed, text) = report(&gb, &["--tiers", "producer,local-a"]);
    assert!(ok, "{text}");
    assert!(checks(&narrowed).iter().all(|c| c["upstream"] == "producer" && c["downstream"] == "local-a"));
}

/// End of the window holding `t`.
fn crate_window_end(t: i64) -> i64 {
    tributary_client::audit::window_start(t, WINDOW_MS) + WINDOW_MS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_lost_before_mirroring_are_reported_missing() {
    let mut src = Cluster::start(1, &config("src")).unwrap();
    let agg = Cluster::start(1, &config("agg")).unwrap();
    let (sb, gb) = (src.bootstrap(), agg.bootstrap());
    src.create_topic("tiny", 1, 1, &[("segment.bytes", "2048"), ("retention.bytes", "4096")])
        .await
        .ok_or_logs(&src);
    // One record per batch, all in one (already ended) window.
    let p = Producer::connect(ProducerConfig {
        bootstrap: sb.clone(),
        linger: Duration::ZERO,
        batch_size: 1,
        tracking: Some(tracking("lossy")),
        ..Default::default()
    })
    .await
    .unwrap();
    let window = tributary_client::audit::window_start(now_ms(), WINDOW_MS) - 2 * WINDOW_MS;
    const SENT: u64 = 200;
    for i in 0..SENT {
        let r = ProducerRecord::new("tiny", format!("{i:0>60}")).timestamp(window + 1);
        p.send(r).await.unwrap().await.unwrap();
    }
    p.close().await.unwrap();
    // Retention removes the oldest segments before anything copies them.
    let left = wait_for("retention on tiny", WAIT, || async {
        let n = read_to_end(&sb, "tiny", 0).await.map_err(|e| e.to_string())?.len() as u64;
        if n < SENT {
            Ok(n)
        } else {
            Err(format!("{n} records left"))
        }
    })
    .await
    .ok_or_logs(&src);
    link(&gb, "src-tiny", "src", &sb, "tiny", "prefix");
    // Retention may go on while the link copies: done when the copy holds
    // everything the source still has.
    let copied = wait_for("the copy", WAIT, || async {
        let there = read_to_end(&sb, "tiny", 0).await.map_err(|e| e.to_string())?.len() as u64;
        let here = read_to_end(&gb, "src.tiny", 0).await.map_err(|e| e.to_string())?.len() as u64;
        if here == there && here > 0 {
            Ok(here)
        } else {
            Err(format!("{here} copied, {there} in the source"))
        }
    })
    .await
    .ok_or_logs(&agg);
    assert!(copied <= left);
    let missing = SENT - copied;
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, doc, text) = report(&gb, &["--topic", "tiny"]);
        let lost = checks(&doc).into_iter().find(|c| {
            c["downstream_topic"] == "src.tiny"
                && c["window_start_ms"] == window
                && c["verdict"] == "missing"
                && c["n"] == missing
                && c["closed"] == true
        });
        if let Some(c) = lost {
            assert!(!ok, "a report with a missing window exited 0: {text}");
            assert_eq!(c["upstream"], "src");
            break;
        }
        assert!(Instant::now() < deadline, "the loss of {missing} records was never reported: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The text report names topic, window and count, and fails.
    let out = run_cli(&gb, &["audit", "report"], "").unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    let line = text.lines().find(|l| l.contains("src.tiny")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(&format!("window {window}")) && line.contains(&format!("missing {missing}")),
        "{line}"
    );
    // Nothing copied is lost at the producer tier: the source has them all.
    assert!(text.contains("producer -> src") && text.contains("complete"), "{text}");
}

//! The replication harness checked against what exists without it: one
//! broker. The raw-gRPC idempotent producer rides through a kill -9 and
//! restart by resending the same batch bytes, the broker deduplicates, and
//! the checker — final read, segment files from disk, ledger — finds
//! nothing wrong; then the same checker, fed a log with a record taken out,
//! finds exactly that. So a clean verdict in the cluster scenarios means
//! something.

use std::collections::BTreeMap;
use std::time::Duration;

use tributary_client::Admin;
use tributary_e2e::checker::{check, id_of, read_replica, Ledger};
use tributary_e2e::workload::{read_partition, spawn_producer, spawn_tail, ProducerOptions, Route};
use tributary_e2e::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_passes_a_broker_that_survives_kill_9_and_catches_a_lost_record() {
    let mut b = Broker::start().unwrap();
    let admin = Admin::connect(&b.bootstrap()).await.unwrap();
    admin.create_topic("h", 2, 1, BTreeMap::new()).await.unwrap();
    let ledger = Ledger::new();
    let producer = spawn_producer(&b.bootstrap(), &ledger, ProducerOptions::new("h", &[0, 1]));
    let tail = spawn_tail(&b.bootstrap(), &ledger, "h", &[0, 1], Route::Leader);
    producer.wait_acked(100, Duration::from_secs(20)).await.unwrap();
    let failed_before = producer.failed_attempts();
    b.kill9().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.restart().unwrap();
    producer.wait_acked(100, Duration::from_secs(30)).await.unwrap();
    let failed_during = producer.failed_attempts() - failed_before;
    let stats = producer.stop().await;
    let tail_stats = tail.stop().await;
    assert!(failed_during > 0, "the kill never failed an attempt: {stats:?}");
    assert!(stats.non_retriable.is_empty(), "{stats:?}");
    assert!(tail_stats.records > 0, "{tail_stats:?}");
    let mut reads = Vec::new();
    for p in [0, 1] {
        reads.push(read_partition(&b.bootstrap(), "h", p, &Route::Leader).await.unwrap());
    }
    b.kill9().unwrap();
    let replicas: Vec<_> = [0, 1].iter().map(|&p| read_replica(0, &b.data_dir(), "h", p)).collect();
    let entries = ledger.snapshot();
    let report = check(&entries, &reads, &replicas);
    assert!(report.is_clean(), "{report}\n{}", b.logs());
    assert_eq!(report.replicas_compared, 2, "{report}");
    assert!(report.acked >= 200, "{report}");
    assert!(report.observed > 0, "{report}");

    // The same data with partition 0's last batch missing from the log:
    // its acknowledged records are lost, and what the reader saw of them
    // vanished.
    let mut cut = reads.clone();
    let dropped = cut[0].batches.pop().expect("partition 0 has batches");
    let ids: Vec<u64> = tributary_proto::batch::records(&dropped)
        .unwrap()
        .map(|r| r.unwrap().value.as_deref().and_then(id_of).unwrap())
        .collect();
    cut[0].high_watermark -= ids.len() as i64;
    let acked_in_dropped = entries.acked.iter().filter(|a| ids.contains(&a.id)).count();
    assert!(acked_in_dropped > 0);
    let report = check(&entries, &cut, &replicas);
    assert_eq!(report.lost.count, acked_in_dropped, "{report}");
    assert!(!report.is_clean());
}

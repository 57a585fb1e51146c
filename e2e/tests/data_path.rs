//! Produce and consume through a real broker: keys, headers, order, offsets
//! by time, long-poll, and everything surviving restarts and kill -9.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tributary_client::{
    Acks, Admin, Compression, Consumer, ConsumerConfig, ConsumerRecord, OffsetSpec, Producer, ProducerConfig,
    ProducerRecord,
};
use tributary_e2e::Broker;

fn producer_config(b: &Broker) -> ProducerConfig {
    ProducerConfig { bootstrap: b.bootstrap(), acks: Acks::All, ..ProducerConfig::default() }
}

fn consumer_config(b: &Broker) -> ConsumerConfig {
    ConsumerConfig { bootstrap: b.bootstrap(), ..ConsumerConfig::default() }
}

async fn create(b: &Broker, topic: &str, partitions: u32, configs: &[(&str, &str)]) {
    let admin = Admin::connect(&b.bootstrap()).await.expect("admin connects");
    let configs: BTreeMap<String, String> =
        configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    admin.create_topic(topic, partitions, 1, configs).await.expect("topic created");
}

/// Reads every partition of `topic` from the beginning until `want` records
/// arrived (or 20 s passed).
async fn read_all(b: &Broker, topic: &str, want: usize) -> Vec<ConsumerRecord> {
    let mut c = Consumer::connect(consumer_config(b)).await.expect("consumer connects");
    c.assign_all(topic, OffsetSpec::Earliest).await.expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want && std::time::Instant::now() < deadline {
        out.extend(c.poll(Duration::from_millis(200)).await.expect("poll"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_with_keys_headers_and_order() {
    let b = Broker::start().unwrap();
    create(&b, "orders", 3, &[]).await;
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let p = Producer::connect(ProducerConfig { compression, ..producer_config(&b) }).await.unwrap();
        let mut acks = Vec::new();
        for i in 0..300u32 {
            let r = ProducerRecord::new("orders", format!("{compression:?}-{i}"))
                .key(format!("customer-{}", i % 7))
                .header("seq", i.to_string())
                .header("empty", Bytes::new());
            acks.push(p.send(r).await.unwrap());
        }
        for a in acks {
            let meta = a.await.expect("acknowledged");
            assert!(meta.offset >= 0);
        }
        p.close().await.unwrap();
    }
    let got = read_all(&b, "orders", 900).await;
    assert_eq!(got.len(), 900);
    for r in &got {
        let value = String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap();
        let i: u32 = value.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(r.key.as_deref(), Some(format!("customer-{}", i % 7).as_bytes()));
        assert_eq!(r.headers[0], ("seq".to_string(), Some(Bytes::from(i.to_string()))));
        assert_eq!(r.headers[1], ("empty".to_string(), Some(Bytes::new())));
    }
    // Same key → same partition; within a partition, send order is offset order.
    let mut by_key: BTreeMap<Vec<u8>, Vec<&ConsumerRecord>> = BTreeMap::new();
    for r in &got {
        by_key.entry(r.key.clone().unwrap().to_vec()).or_default().push(r);
    }
    for records in by_key.values() {
        assert!(records.windows(2).all(|w| w[0].partition == w[1].partition));
        let mut sorted = records.clone();
        sorted.sort_by_key(|r| r.offset);
        let seqs: Vec<u32> = sorted
            .iter()
            .map(|r| String::from_utf8_lossy(r.headers[0].1.as_ref().unwrap()).parse::<u32>().unwrap())
            .collect();
        // Three producers ran one after another, each in ascending order.
        let mut runs = 1;
        for w in seqs.windows(2) {
            if w[1] < w[0] {
                runs += 1;
            }
        }
        assert_eq!(runs, 3, "order within a partition broken: {seqs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_by_time_and_long_poll() {
    let b = Broker::start().unwrap();
    // The records carry 1970 timestamps: with the default retention.ms (7
    // days) the broker's 200 ms retention pass may roll and delete them
    // while the test still produces, which is retention working, not what
    // this test is about.
    create(&b, "clock", 1, &[("retention.ms", "-1")]).await;
    let p = Producer::connect(producer_config(&b)).await.unwrap();
    for (i, ts) in [1_000i64, 2_000, 3_000, 3_000, 5_000].iter().enumerate() {
        p.send(ProducerRecord::new("clock", format!("v{i}")).timestamp(*ts)).await.unwrap().await.unwrap();
    }
    let admin = Admin::connect(&b.bootstrap()).await.unwrap();
    assert_eq!(admin.list_offsets("clock", 0, OffsetSpec::Earliest).await.unwrap(), 0);
    assert_eq!(admin.list_offsets("clock", 0, OffsetSpec::Latest).await.unwrap(), 5);
    assert_eq!(admin.list_offsets("clock", 0, OffsetSpec::Timestamp(2_500)).await.unwrap(), 2);
    assert_eq!(admin.list_offsets("clock", 0, OffsetSpec::Timestamp(3_000)).await.unwrap(), 2);
    assert_eq!(admin.list_offsets("clock", 0, OffsetSpec::Timestamp(4_000)).await.unwrap(), 4);
    assert_eq!(admin.list_offsets("clock", 0, OffsetSpec::Timestamp(9_000)).await.unwrap(), -1);

    // A consumer at the end waits for new data instead of spinning.
    let mut c = Consumer::connect(consumer_config(&b)).await.unwrap();
    c.assign("clock", 0, OffsetSpec::Latest).await.unwrap();
    let waited = std::time::Instant::now();
    assert!(c.poll(Duration::from_millis(300)).await.unwrap().is_empty());
    assert!(waited.elapsed() >= Duration::from_millis(250), "fetch returned before max wait");
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.send(ProducerRecord::new("clock", "late")).await.unwrap().await.unwrap();
    });
    let got = c.poll(Duration::from_secs(10)).await.unwrap();
    late.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].offset, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    let mut b = Broker::start().unwrap();
    create(&b, "keep", 2, &[("segment.bytes", "4096")]).await;
    let p = Producer::connect(producer_config(&b)).await.unwrap();
    for i in 0..500 {
        p.send(ProducerRecord::new("keep", format!("r{i}")).key(format!("k{i}"))).await.unwrap();
    }
    p.close().await.unwrap();
    let before = read_all(&b, "keep", 500).await;
    assert_eq!(before.len(), 500);

    b.terminate().unwrap();
    b.restart().unwrap();
    assert!(!b.logs().contains("checking the log tail"), "a clean stop must not need recovery");
    let after = read_all(&b, "keep", 500).await;
    let key = |r: &ConsumerRecord| (r.partition, r.offset, r.value.clone());
    assert_eq!(after.iter().map(key).collect::<Vec<_>>(), before.iter().map(key).collect::<Vec<_>>());

    // And the log goes on where it stopped.
    let p = Producer::connect(producer_config(&b)).await.unwrap();
    let meta = p.send(ProducerRecord::new("keep", "next").partition(0)).await.unwrap().await.unwrap();
    let last_p0 = before.iter().filter(|r| r.partition == 0).map(|r| r.offset).max().unwrap();
    assert_eq!(meta.offset, last_p0 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_produce_loses_no_acknowledged_record() {
    let mut b = Broker::start().unwrap();
    create(&b, "durable", 2, &[("flush.messages", "1"), ("segment.bytes", "65536")]).await;
    let bootstrap = b.bootstrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn(async move {
        let p = Producer::connect(ProducerConfig {
            bootstrap,
            acks: Acks::All,
            linger: Duration::from_millis(1),
            retries: 0,
            ..ProducerConfig::default()
        })
        .await
        .unwrap();
        for i in 0..100_000u32 {
            let value = format!("value-{i}");
            let Ok(fut) = p.send(ProducerRecord::new("durable", value.clone()).key(format!("{i}"))).await
            else {
                break;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(meta) = fut.await {
                    let _ = tx.send((meta.partition, meta.offset, value));
                }
            });
        }
    });
    // Let it write for a while, then pull the plug mid-stream.
    let mut acked = Vec::new();
    while acked.len() < 3_000 {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(a)) => acked.push(a),
            _ => panic!("producer stalled:\n{}", b.logs()),
        }
    }
    b.kill9().unwrap();
    writer.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(a) = rx.try_recv() {
        acked.push(a);
    }

    b.restart().unwrap();
    let stored = read_all(&b, "durable", acked.len()).await;
    let stored: std::collections::HashMap<(u32, i64), Option<Bytes>> =
        stored.into_iter().map(|r| ((r.partition, r.offset), r.value)).collect();
    for (partition, offset, value) in &acked {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(&Some(Bytes::from(value.clone()))),
            "acknowledged record {partition}/{offset} lost or changed"
        );
    }
    // Writing goes on after recovery.
    let p = Producer::connect(producer_config(&b)).await.unwrap();
    p.send(ProducerRecord::new("durable", "after")).await.unwrap().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_and_the_rest_kept() {
    let mut b = Broker::start().unwrap();
    create(&b, "torn", 1, &[]).await;
    let p = Producer::connect(producer_config(&b)).await.unwrap();
    for i in 0..50 {
        p.send(ProducerRecord::new("torn", format!("ok-{i}"))).await.unwrap().await.unwrap();
    }
    b.kill9().unwrap();
    // A half-written batch at the end, as a crash mid-write leaves it.
    let segment = b.segment_files("torn", 0).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let whole = bytes.len();
    let first_batch: Vec<u8> = bytes[..200.min(whole)].to_vec();
    bytes.extend_from_slice(&first_batch[..first_batch.len() / 2]);
    std::fs::write(&segment, &bytes).unwrap();

    b.restart().unwrap();
    assert!(b.logs().contains("truncating a torn or corrupt log tail"), "{}", b.logs());
    assert_eq!(std::fs::metadata(&segment).unwrap().len() as usize, whole);
    let got = read_all(&b, "torn", 50).await;
    assert_eq!(got.len(), 50);
    let p = Producer::connect(producer_config(&b)).await.unwrap();
    let meta = p.send(ProducerRecord::new("torn", "after")).await.unwrap().await.unwrap();
    assert_eq!(meta.offset, 50);
}

//! Retention by size and time deletes whole old segments; compaction keeps the
//! latest value per key, drops tombstones after delete.retention.ms, and never
//! changes an offset.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tributary_client::{
    Acks, Admin, Consumer, ConsumerConfig, ConsumerRecord, OffsetSpec, Producer, ProducerConfig,
    ProducerRecord,
};
use tributary_e2e::{eventually, read_to_end, Broker};

async fn create(b: &Broker, topic: &str, configs: &[(&str, &str)]) -> Admin {
    let admin = Admin::connect(&b.bootstrap()).await.unwrap();
    let configs: BTreeMap<String, String> =
        configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    admin.create_topic(topic, 1, 1, configs).await.unwrap();
    admin
}

async fn producer(b: &Broker) -> Producer {
    // One record per batch, so segments fill predictably.
    Producer::connect(ProducerConfig {
        bootstrap: b.bootstrap(),
        acks: Acks::Leader,
        linger: Duration::ZERO,
        batch_size: 1,
        ..ProducerConfig::default()
    })
    .await
    .unwrap()
}

async fn read_from_start(b: &Broker, topic: &str) -> Vec<ConsumerRecord> {
    read_to_end(&b.bootstrap(), topic, 0).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bytes_deletes_whole_old_segments() {
    let b = Broker::start().unwrap();
    let admin = create(&b, "sized", &[("segment.bytes", "2048"), ("retention.bytes", "4096")]).await;
    let p = producer(&b).await;
    for i in 0..200 {
        p.send(ProducerRecord::new("sized", format!("{i:0>60}"))).await.unwrap().await.unwrap();
    }
    // Retention runs every 200 ms; wait for the pass that sees the last
    // record (an earlier one may have left more).
    let start = eventually(Duration::from_secs(10), || async {
        let start = admin.list_offsets("sized", 0, OffsetSpec::Earliest).await.unwrap();
        let size = admin.describe_topic("sized").await.unwrap().partitions[0].size_bytes;
        (start > 0 && b.segment_files("sized", 0).len() <= 4 && size <= 4096 + 2048).then_some(start)
    })
    .await
    .expect("old segments deleted");
    // What is left starts exactly at the log start (a segment boundary) and
    // runs without gaps to the end. One more pass may still move the start:
    // the read counts when the start was the same before and after it.
    let mut start = start;
    let left = loop {
        let left = read_from_start(&b, "sized").await;
        let after = admin.list_offsets("sized", 0, OffsetSpec::Earliest).await.unwrap();
        if after == start {
            break left;
        }
        start = after;
    };
    assert_eq!(left.first().unwrap().offset, start);
    assert_eq!(left.last().unwrap().offset, 199);
    assert!(left.windows(2).all(|w| w[1].offset == w[0].offset + 1));
    let d = admin.describe_topic("sized").await.unwrap();
    assert!(d.partitions[0].size_bytes <= 4096 + 2048, "{:?}", d.partitions[0]);
    // Reading below the log start is an error, not silently skipped.
    let mut c = Consumer::connect(ConsumerConfig { bootstrap: b.bootstrap(), ..ConsumerConfig::default() })
        .await
        .unwrap();
    c.assign("sized", 0, OffsetSpec::Offset(0)).await.unwrap();
    let err = c.poll(Duration::from_millis(300)).await.unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_ms_deletes_segments_past_their_age() {
    let b = Broker::start().unwrap();
    let admin = create(&b, "aged", &[("segment.bytes", "2048"), ("retention.ms", "60000")]).await;
    let p = producer(&b).await;
    let old = tributary_broker_now() - 3_600_000;
    for i in 0..100 {
        p.send(ProducerRecord::new("aged", format!("old-{i:0>50}")).timestamp(old))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Every segment, the active one included (it is rolled once all it
    // holds has expired), goes; the offsets carry on where they were.
    eventually(Duration::from_secs(10), || async {
        (admin.list_offsets("aged", 0, OffsetSpec::Earliest).await.unwrap() == 100).then_some(())
    })
    .await
    .expect("records an hour old are gone");
    assert!(read_from_start(&b, "aged").await.is_empty());
    for i in 0..5 {
        let meta = p.send(ProducerRecord::new("aged", format!("new-{i}"))).await.unwrap().await.unwrap();
        assert_eq!(meta.offset, 100 + i);
    }
    // Fresh records stay.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let left = read_from_start(&b, "aged").await;
    assert_eq!(left.len(), 5);
    assert_eq!(left[0].offset, 100);
}

fn tributary_broker_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_latest_per_key_and_drops_old_tombstones() {
    let b = Broker::start().unwrap();
    create(
        &b,
        "latest",
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "2048"),
            ("min.compaction.lag.ms", "0"),
            ("delete.retention.ms", "1500"),
        ],
    )
    .await;
    let p = producer(&b).await;
    let mut latest: HashMap<String, (i64, Option<String>)> = HashMap::new();
    for round in 0..10 {
        for k in 0..10 {
            let key = format!("key-{k}");
            let value = format!("{key}-v{round}-{:0>40}", 0);
            let meta = p
                .send(ProducerRecord::new("latest", value.clone()).key(key.clone()))
                .await
                .unwrap()
                .await
                .unwrap();
            latest.insert(key, (meta.offset, Some(value)));
        }
    }
    // Delete two keys with tombstones.
    for k in [3, 7] {
        let key = format!("key-{k}");
        let r = ProducerRecord { value: None, ..ProducerRecord::new("latest", "").key(key.clone()) };
        let meta = p.send(r).await.unwrap().await.unwrap();
        latest.insert(key, (meta.offset, None));
    }
    // Filler in other keys so the records above end up in closed segments.
    for i in 0..40 {
        let key = format!("filler-{i}");
        let meta = p
            .send(ProducerRecord::new("latest", format!("{:0>60}", i)).key(key.clone()))
            .await
            .unwrap()
            .await
            .unwrap();
        latest.insert(key, (meta.offset, Some(format!("{:0>60}", i))));
    }

    // Compacted: at most one record per key, and it's the latest, at the
    // offset it was given when produced. Tombstones are visible for a while.
    let compacted = eventually(Duration::from_secs(15), || async {
        let left = read_from_start(&b, "latest").await;
        let keys: Vec<_> =
            left.iter().filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"key-"))).collect();
        (keys.len() <= 10).then_some(left)
    })
    .await
    .expect("compaction removed superseded records");
    let mut seen = HashMap::new();
    for r in &compacted {
        let key = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
        assert!(seen.insert(key.clone(), r.offset).is_none() || key.starts_with("filler"), "{key} twice");
        if let Some((offset, value)) = latest.get(&key) {
            // Records still in the active segment may not be compacted yet,
            // but whatever is there for a key-N is its latest version.
            if key.starts_with("key-") {
                assert_eq!(r.offset, *offset, "{key} kept at a different offset");
                assert_eq!(r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()), *value);
            }
        }
    }
    assert!(compacted.windows(2).all(|w| w[0].offset < w[1].offset));

    // After delete.retention.ms the tombstones themselves go.
    eventually(Duration::from_secs(15), || async {
        let left = read_from_start(&b, "latest").await;
        let gone = left.iter().all(|r| {
            let k = r.key.as_deref().unwrap_or_default();
            k != b"key-3" && k != b"key-7"
        });
        gone.then_some(())
    })
    .await
    .expect("tombstones removed after delete.retention.ms");
    let left = read_from_start(&b, "latest").await;
    for k in [0, 1, 2, 4, 5, 6, 8, 9] {
        let key = format!("key-{k}");
        let r = left.iter().find(|r| r.key.as_deref() == Some(key.as_bytes())).expect("live key kept");
        assert_eq!(r.offset, latest[&key].0);
    }
}

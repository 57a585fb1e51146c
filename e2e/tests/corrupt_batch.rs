//! A stored batch the consumer cannot decode (its CRC32C is valid, so the
//! broker took it) must not make a consumer skip data: `poll` returns what
//! came before it, positions and commits stay at it, and the error names
//! topic, partition and offset.
//!
//! The bad batches are sent with raw gRPC (the generated `Log` client): the
//! broker's produce path checks only the CRC and the header of batches for
//! non-compacted topics, so it stores what the client library would never
//! build.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_client::{Admin, Consumer, ConsumerConfig, ConsumerRecord, GroupConfig, GroupConsumer};
use tributary_client::{Error, OffsetReset, OffsetSpec, TopicPartition};
use tributary_e2e::Broker;
use tributary_proto::batch::{BatchBuilder, Compression};
use tributary_proto::v1::log_client::LogClient;
use tributary_proto::v1::{PartitionProduceData, ProduceRequest, TopicProduceData};

// Byte positions in a batch, from the documented layout (proto/src/batch.rs).
const LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const RECORD_COUNT_AT: usize = 57;
const HEADER_LEN: usize = 61;

/// Now, so retention (by record time) leaves the records alone.
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    since.as_millis() as i64
}

fn good(values: &[&str]) -> Bytes {
    let ts = now_ms();
    let mut b = BatchBuilder::new(Compression::None, ts);
    for v in values {
        b.append(ts, None, Some(v.as_bytes()), &[]);
    }
    b.build()
}

/// Writes `batch_length` and the CRC32C again after an edit, so the batch
/// passes the broker's checks.
fn reseal(mut buf: Vec<u8>) -> Bytes {
    let length = (buf.len() - 12) as i32;
    buf[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&buf[ATTRIBUTES_AT..]);
    buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(buf)
}

/// `count` records that say they are lz4-compressed, over bytes that are
/// not an lz4 block.
fn lz4_garbage(count: usize) -> Bytes {
    let values: Vec<String> = (0..count).map(|i| format!("lost-{i}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let mut buf = good(&refs)[..HEADER_LEN].to_vec();
    buf[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&Compression::Lz4.id().to_be_bytes());
    buf.extend_from_slice(&64u32.to_le_bytes());
    buf.extend_from_slice(&[0xff; 24]);
    reseal(buf)
}

/// The records `values`, then one more the header counts but whose bytes
/// are missing (the decoder runs out in the middle of a varint).
fn missing_last_record(values: &[&str]) -> Bytes {
    let mut buf = good(values).to_vec();
    let count = values.len() as i32 + 1;
    buf[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
    buf[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&(count - 1).to_be_bytes());
    reseal(buf)
}

/// Appends `batches` to `topic`/`partition` one request each (so each gets
/// its own offsets); returns their base offsets.
async fn produce_raw(b: &Broker, topic: &str, partition: u32, batches: &[Bytes]) -> Vec<i64> {
    let mut log = LogClient::connect(format!("http://{}", b.grpc)).await.expect("log client connects");
    let mut bases = Vec::new();
    for records in batches {
        let request = ProduceRequest {
            acks: 1,
            timeout_ms: 5000,
            topics: vec![TopicProduceData {
                name: topic.into(),
                partitions: vec![PartitionProduceData { partition, records: records.clone() }],
            }],
        };
        let response = log.produce(request).await.expect("the broker stores the batch").into_inner();
        let part = &response.topics[0].partitions[0];
        assert!(part.error.as_ref().is_none_or(|e| e.code == 0), "produce refused: {:?}", part.error);
        bases.push(part.base_offset);
    }
    bases
}

async fn create(b: &Broker, topic: &str, partitions: u32) -> Admin {
    let admin = Admin::connect(&b.bootstrap()).await.expect("admin connects");
    admin.create_topic(topic, partitions, 1, BTreeMap::new()).await.expect("topic created");
    admin
}

/// t-0: a0 a1 a2 | 3 undecodable records (3..=5) | c6 c7 c8
/// t-1: b0 b1 b2 | b3 b4 b5
async fn plant(b: &Broker) -> Admin {
    let admin = create(b, "t", 2).await;
    let bases =
        produce_raw(b, "t", 0, &[good(&["a0", "a1", "a2"]), lz4_garbage(3), good(&["c6", "c7", "c8"])]).await;
    assert_eq!(bases, vec![0, 3, 6]);
    produce_raw(b, "t", 1, &[good(&["b0", "b1", "b2"]), good(&["b3", "b4", "b5"])]).await;
    admin
}

fn value(r: &ConsumerRecord) -> String {
    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
}

fn values(records: &[ConsumerRecord], partition: u32) -> Vec<String> {
    records.iter().filter(|r| r.partition == partition).map(value).collect()
}

/// Polls until a poll fails (or `secs` pass); returns what came first and
/// the error.
async fn poll_until_error(c: &mut Consumer, secs: u64) -> (Vec<ConsumerRecord>, Option<Error>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)).await {
            Ok(records) => got.extend(records),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

fn consumer_config(b: &Broker) -> ConsumerConfig {
    ConsumerConfig { bootstrap: b.bootstrap(), max_wait: Duration::from_millis(100), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_returns_what_precedes_a_bad_batch_and_stays_at_it() {
    let b = Broker::start().unwrap();
    plant(&b).await;
    let mut c = Consumer::connect(consumer_config(&b)).await.unwrap();
    c.assign_all("t", OffsetSpec::Earliest).await.unwrap();

    let (got, err) = poll_until_error(&mut c, 10).await;
    assert_eq!(values(&got, 0), ["a0", "a1", "a2"], "t-0 before the bad batch");
    assert_eq!(values(&got, 1), ["b0", "b1", "b2", "b3", "b4", "b5"], "t-1, same fetch");
    let err = err.expect("the bad batch is reported");
    let text = err.to_string();
    assert!(text.contains("t-0") && text.contains("offset 3"), "{text}");
    assert_corrupt_at(&err, 0, 3);
    assert_eq!(c.position("t", 0), Some(3), "t-0 stays at the bad batch");
    assert_eq!(c.position("t", 1), Some(6));

    // It stays there, reported poll after poll, while t-1 goes on.
    produce_raw(&b, "t", 1, &[good(&["b6", "b7"])]).await;
    let mut later = Vec::new();
    let mut reports = 0;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until && (later.len() < 2 || reports < 3) {
        match c.poll(Duration::from_millis(200)).await {
            Ok(records) => later.extend(records),
            Err(e) => {
                assert_corrupt_at(&e, 0, 3);
                reports += 1;
            }
        }
    }
    assert!(reports >= 3, "reported {reports} times");
    assert_eq!(values(&later, 0), Vec::<String>::new());
    assert_eq!(values(&later, 1), ["b6", "b7"], "the other partition keeps flowing");
    assert_eq!(c.position("t", 0), Some(3));

    // Only when asked does it move on, past the whole batch.
    assert_eq!(c.skip_corrupt("t", 1), None, "t-1 is not stopped");
    assert_eq!(c.skip_corrupt("t", 0), Some(6));
    let (rest, err) = poll_for(&mut c, 3).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(values(&rest, 0), ["c6", "c7", "c8"]);
    assert_eq!(c.position("t", 0), Some(9));
}

/// Polls until `want` records came (or 10 s passed, or a poll failed).
async fn poll_for(c: &mut Consumer, want: usize) -> (Vec<ConsumerRecord>, Option<Error>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)).await {
            Ok(records) => got.extend(records),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

fn assert_corrupt_at(e: &Error, want_partition: u32, want_offset: i64) {
    match e {
        Error::CorruptRecord { topic, partition, offset, reason } => {
            assert_eq!((topic.as_str(), *partition, *offset), ("t", want_partition, want_offset), "{e}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected CorruptRecord at t-{want_partition}@{want_offset}, got: {other}"),
    }
    assert!(!e.is_retriable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_before_a_broken_record_inside_a_batch_are_returned() {
    let b = Broker::start().unwrap();
    create(&b, "t", 1).await;
    let bases =
        produce_raw(&b, "t", 0, &[good(&["a0", "a1"]), missing_last_record(&["a2", "a3"]), good(&["a5"])])
            .await;
    assert_eq!(bases, vec![0, 2, 5]);
    let mut c = Consumer::connect(consumer_config(&b)).await.unwrap();
    c.assign("t", 0, OffsetSpec::Earliest).await.unwrap();
    let (got, err) = poll_until_error(&mut c, 10).await;
    assert_eq!(values(&got, 0), ["a0", "a1", "a2", "a3"]);
    let err = err.expect("the broken record is reported");
    let text = err.to_string();
    assert!(text.contains("t-0") && text.contains("offset 4"), "{text}");
    assert_corrupt_at(&err, 0, 4);
    assert_eq!(c.position("t", 0), Some(4));
    // The only partition is stopped: every poll says so at once.
    for _ in 0..3 {
        assert_corrupt_at(&c.poll(Duration::from_secs(5)).await.unwrap_err(), 0, 4);
    }
    // A seek back to an earlier offset reads up to the same place again.
    c.seek("t", 0, 1);
    let (again, err) = poll_until_error(&mut c, 10).await;
    assert_eq!(values(&again, 0), ["a1", "a2", "a3"]);
    assert_corrupt_at(&err.expect("reported again"), 0, 4);
    // A skip passes the rest of that batch only.
    assert_eq!(c.skip_corrupt("t", 0), Some(5));
    let (rest, err) = poll_for(&mut c, 1).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(values(&rest, 0), ["a5"]);
}

fn group_config(b: &Broker, group: &str) -> GroupConfig {
    let mut c = GroupConfig::new(b.bootstrap(), group);
    c.session_timeout = Duration::from_secs(3);
    c.heartbeat_interval = Duration::from_millis(300);
    c.auto_offset_reset = OffsetReset::Earliest;
    c.auto_commit_interval = Duration::from_millis(100);
    c.max_wait = Duration::from_millis(100);
    c
}

async fn committed(admin: &Admin, group: &str) -> Vec<(u32, i64)> {
    let offsets = admin.fetch_offsets(group).await.expect("offsets fetched");
    offsets.iter().map(|o| (o.partition, o.offset)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_auto_commit_never_passes_a_bad_batch() {
    let b = Broker::start().unwrap();
    let admin = plant(&b).await;
    let mut g = GroupConsumer::connect(group_config(&b, "g")).await.unwrap();
    g.subscribe(&["t"]).await.unwrap();
    // Keep polling well past several auto-commit intervals, errors or not.
    let mut got = Vec::new();
    let mut errors = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        match g.poll(Duration::from_millis(200)).await {
            Ok(records) => got.extend(records),
            Err(e) => {
                errors.push(e.to_string());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    g.close().await.unwrap();
    assert_eq!(values(&got, 0), ["a0", "a1", "a2"]);
    assert_eq!(values(&got, 1), ["b0", "b1", "b2", "b3", "b4", "b5"]);
    assert!(errors.len() >= 2, "the bad batch is reported, again and again: {errors:?}");
    assert!(errors.iter().all(|e| e.contains("t-0") && e.contains("offset 3")), "{errors:?}");
    assert_eq!(committed(&admin, "g").await, vec![(0, 3), (1, 6)], "nothing past the bad batch is committed");

    // So the next member of the group stops at the same batch, and only
    // its explicit skip commits past it.
    let mut g = GroupConsumer::connect(group_config(&b, "g")).await.unwrap();
    g.subscribe(&["t"]).await.unwrap();
    let tp0 = TopicPartition::new("t", 0);
    let until = Instant::now() + Duration::from_secs(15);
    let err = loop {
        assert!(Instant::now() < until, "the bad batch was not reported to the next member");
        match g.poll(Duration::from_millis(200)).await {
            Ok(records) => assert!(records.is_empty(), "nothing new: {records:?}"),
            Err(e) => break e,
        }
    };
    assert_corrupt_at(&err, 0, 3);
    assert_eq!(g.position(&tp0), Some(3));
    assert_eq!(g.skip_corrupt(&TopicPartition::new("t", 1)), None);
    assert_eq!(g.skip_corrupt(&tp0), Some(6));
    let mut rest = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while rest.len() < 3 && Instant::now() < until {
        rest.extend(g.poll(Duration::from_millis(200)).await.unwrap());
    }
    assert_eq!(values(&rest, 0), ["c6", "c7", "c8"]);
    g.commit_sync().await.unwrap();
    assert_eq!(committed(&admin, "g").await, vec![(0, 9), (1, 6)]);
    g.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_what_precedes_a_bad_batch_then_fails_naming_it() {
    let b = Broker::start().unwrap();
    let admin = plant(&b).await;
    for group in [None, Some("cli")] {
        let mut args = vec!["consume", "t", "--from-beginning", "--print-offset", "--timeout-ms", "3000"];
        if let Some(g) = group {
            args.extend(["--group", g]);
        }
        let out = b.cli(&args, "").unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success(), "{group:?}: must fail; stdout: {stdout}");
        let mut lines: Vec<&str> = stdout.lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "0:0\ta0", "0:1\ta1", "0:2\ta2", "1:0\tb0", "1:1\tb1", "1:2\tb2", "1:3\tb3", "1:4\tb4",
                "1:5\tb5"
            ],
            "{group:?}: everything before the bad batch, nothing after; stderr: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{group:?}: one line: {stderr}");
        assert!(stderr.contains("t-0") && stderr.contains("offset 3"), "{group:?}: {stderr}");
    }
    assert_eq!(committed(&admin, "cli").await, vec![(0, 3), (1, 6)]);

    // --skip-corrupt: everything readable, one warning naming what was
    // skipped, success; the group commits past it.
    let args = ["consume", "t", "--group", "cli", "--skip-corrupt", "--print-offset", "--timeout-ms", "3000"];
    let out = b.cli(&args, "").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["0:6\tc6", "0:7\tc7", "0:8\tc8"]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("warning: skipped t-0 offsets 3..=5: "), "{stderr}");
    assert_eq!(committed(&admin, "cli").await, vec![(0, 9), (1, 6)]);
}

//! Bad input gets a clear gRPC error and changes nothing stored.
//!
//! Talks raw gRPC (the generated clients) so it can send what the client
//! library would never build: corrupt batches, bad names, bad configs.

use std::collections::HashMap;

use bytes::Bytes;
use tonic::Code;
use tributary_e2e::Broker;
use tributary_proto::batch::{BatchBuilder, Compression};
use tributary_proto::v1::admin_client::AdminClient;
use tributary_proto::v1::log_client::LogClient;
use tributary_proto::v1::*;

type Log = LogClient<tonic::transport::Channel>;
type Adm = AdminClient<tonic::transport::Channel>;

async fn clients(b: &Broker) -> (Log, Adm) {
    let url = format!("http://{}", b.grpc);
    (LogClient::connect(url.clone()).await.unwrap(), AdminClient::connect(url).await.unwrap())
}

fn batch(values: &[&str], key: Option<&str>) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None, 1_700_000_000_000);
    for v in values {
        b.append(1_700_000_000_000, key.map(str::as_bytes), Some(v.as_bytes()), &[]);
    }
    b.build()
}

fn produce(topic: &str, partition: u32, records: Bytes) -> ProduceRequest {
    ProduceRequest {
        acks: 1,
        timeout_ms: 5000,
        topics: vec![TopicProduceData {
            name: topic.into(),
            partitions: vec![PartitionProduceData { partition, records }],
        }],
    }
}

fn spec(name: &str, partitions: u32, configs: &[(&str, &str)]) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        replication_factor: 1,
        configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
    }
}

async fn snapshot(log: &mut Log, topic: &str, partitions: u32) -> Vec<(i64, Bytes)> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let r = log
            .fetch(FetchRequest {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 1 << 20,
                partitions: vec![FetchPartition {
                    topic: topic.into(),
                    partition: p,
                    offset: 0,
                    max_bytes: 1 << 20,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.push((r.partitions[0].high_watermark, r.partitions[0].records.clone()));
    }
    out
}

fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let err = r.expect_err("request should have been refused");
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(err.message().contains(needle), "message '{}' should mention '{needle}'", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topic_requests_are_refused_with_clear_errors() {
    let b = Broker::start().unwrap();
    let (_, mut admin) = clients(&b).await;
    for bad in ["", ".", "..", "with space", "slash/name", &"x".repeat(250)] {
        let r = admin
            .create_topics(CreateTopicsRequest { topics: vec![spec(bad, 1, &[])], validate_only: false })
            .await;
        assert_status(r, Code::InvalidArgument, "invalid topic name");
    }
    let r = admin
        .create_topics(CreateTopicsRequest { topics: vec![spec("t", 0, &[])], validate_only: false })
        .await;
    assert_status(r, Code::InvalidArgument, "partitions");
    let mut rf3 = spec("t", 1, &[]);
    rf3.replication_factor = 3;
    let r = admin.create_topics(CreateTopicsRequest { topics: vec![rf3], validate_only: false }).await;
    assert_status(r, Code::InvalidArgument, "replication factor 3");
    let r = admin
        .create_topics(CreateTopicsRequest {
            topics: vec![spec("t", 1, &[("retention.ms", "soon")])],
            validate_only: false,
        })
        .await;
    assert_status(r, Code::InvalidArgument, "retention.ms");
    let r = admin
        .create_topics(CreateTopicsRequest {
            topics: vec![spec("t", 1, &[("retention.hours", "1")])],
            validate_only: false,
        })
        .await;
    assert_status(r, Code::InvalidArgument, "unknown config 'retention.hours'");
    // One bad topic in a request creates none of them.
    let r = admin
        .create_topics(CreateTopicsRequest {
            topics: vec![spec("good", 1, &[]), spec("bad name", 1, &[])],
            validate_only: false,
        })
        .await;
    assert_status(r, Code::InvalidArgument, "bad name");
    let listed = admin.describe_topics(DescribeTopicsRequest { names: vec![] }).await.unwrap().into_inner();
    assert!(listed.topics.is_empty(), "nothing may be created: {:?}", listed.topics);

    admin
        .create_topics(CreateTopicsRequest { topics: vec![spec("t", 2, &[])], validate_only: false })
        .await
        .unwrap();
    let r = admin
        .create_topics(CreateTopicsRequest { topics: vec![spec("t", 2, &[])], validate_only: false })
        .await;
    assert_status(r, Code::AlreadyExists, "already exists");
    let r = admin
        .create_partitions(CreatePartitionsRequest { name: "t".into(), total_count: 1, validate_only: false })
        .await;
    assert_status(r, Code::InvalidArgument, "can only grow");
    let r = admin
        .alter_topic_configs(AlterTopicConfigsRequest {
            name: "t".into(),
            set: [("segment.bytes".to_string(), "12".to_string())].into(),
            delete: vec![],
            validate_only: false,
        })
        .await;
    assert_status(r, Code::InvalidArgument, "segment.bytes");
    let r = admin.delete_topics(DeleteTopicsRequest { names: vec!["nope".into()] }).await;
    assert_status(r, Code::NotFound, "unknown topic 'nope'");
    let d =
        admin.describe_topics(DescribeTopicsRequest { names: vec!["t".into()] }).await.unwrap().into_inner();
    assert_eq!(d.topics[0].partitions.len(), 2);
    assert!(d.topics[0].configs.is_empty());

    // Growing works and is kept.
    admin
        .create_partitions(CreatePartitionsRequest { name: "t".into(), total_count: 4, validate_only: false })
        .await
        .unwrap();
    let d =
        admin.describe_topics(DescribeTopicsRequest { names: vec!["t".into()] }).await.unwrap().into_inner();
    assert_eq!(d.topics[0].partitions.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_produce_requests_change_nothing() {
    let b = Broker::start().unwrap();
    let (mut log, mut admin) = clients(&b).await;
    admin
        .create_topics(CreateTopicsRequest {
            topics: vec![
                spec("t", 2, &[("max.message.bytes", "1000")]),
                spec("c", 1, &[("cleanup.policy", "compact")]),
            ],
            validate_only: false,
        })
        .await
        .unwrap();
    log.produce(produce("t", 0, batch(&["a", "b"], None))).await.unwrap();
    log.produce(produce("t", 1, batch(&["c"], None))).await.unwrap();
    let before = snapshot(&mut log, "t", 2).await;

    assert_status(
        log.produce(produce("nope", 0, batch(&["x"], None))).await,
        Code::NotFound,
        "unknown topic 'nope'",
    );
    assert_status(
        log.produce(produce("t", 7, batch(&["x"], None))).await,
        Code::NotFound,
        "unknown partition 7",
    );
    let big = "x".repeat(2000);
    assert_status(
        log.produce(produce("t", 0, batch(&[&big], None))).await,
        Code::InvalidArgument,
        "max.message.bytes",
    );

    let mut corrupt = batch(&["hello"], None).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_status(log.produce(produce("t", 0, corrupt.into())).await, Code::InvalidArgument, "CRC32C");
    let cut = batch(&["hello"], None);
    assert_status(
        log.produce(produce("t", 0, cut.slice(..cut.len() - 3))).await,
        Code::InvalidArgument,
        "truncated",
    );
    assert_status(log.produce(produce("t", 0, Bytes::new())).await, Code::InvalidArgument, "no records");
    assert_status(
        log.produce(produce("c", 0, batch(&["v"], None))).await,
        Code::InvalidArgument,
        "needs a key",
    );
    let mut bad_acks = produce("t", 0, batch(&["x"], None));
    bad_acks.acks = 5;
    assert_status(log.produce(bad_acks).await, Code::InvalidArgument, "acks");

    // A request with one good and one bad partition stores neither.
    let mut mixed = produce("t", 0, batch(&["good"], None));
    mixed.topics[0].partitions.push(PartitionProduceData { partition: 1, records: batch(&[&big], None) });
    assert_status(log.produce(mixed).await, Code::InvalidArgument, "max.message.bytes");

    assert_eq!(snapshot(&mut log, "t", 2).await, before, "a refused request changed the log");

    // Fetch and ListOffsets refuse unknown partitions the same way.
    let r = log
        .fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1000,
            partitions: vec![FetchPartition {
                topic: "nope".into(),
                partition: 0,
                offset: 0,
                max_bytes: 1000,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await;
    assert_status(r, Code::NotFound, "unknown topic");
    let r = log
        .list_offsets(ListOffsetsRequest {
            partitions: vec![ListOffsetsPartition { topic: "t".into(), partition: 9, timestamp: -1 }],
        })
        .await;
    assert_status(r, Code::NotFound, "unknown partition 9");
    // Offsets past the end are a per-partition error naming the valid range.
    let r = log
        .fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1000,
            partitions: vec![FetchPartition {
                topic: "t".into(),
                partition: 0,
                offset: 99,
                max_bytes: 1000,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let err = r.partitions[0].error.clone().unwrap();
    assert_eq!(err.code, ErrorCode::OffsetOutOfRange as i32);
    assert!(err.message.contains("valid: 0..=2"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_port_serves_health_readiness_and_metrics() {
    let b = Broker::start().unwrap();
    assert_eq!(b.http_get("/healthz").unwrap().0, 200);
    assert_eq!(b.http_get("/readyz").unwrap().0, 200);
    let (mut log, mut admin) = clients(&b).await;
    admin
        .create_topics(CreateTopicsRequest { topics: vec![spec("m", 1, &[])], validate_only: false })
        .await
        .unwrap();
    log.produce(produce("m", 0, batch(&["a", "b", "c"], None))).await.unwrap();
    snapshot(&mut log, "m", 1).await;
    let (status, body) = b.http_get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("tributary_records_in_total{topic=\"m\"} 3"), "{body}");
    assert!(body.contains("tributary_records_out_total{topic=\"m\"} 3"), "{body}");
    assert!(body.contains("tributary_request_duration_seconds_bucket"), "{body}");
    let body = tributary_e2e_wait_gauge(&b);
    assert!(body.contains("tributary_log_size_bytes{topic=\"m\",partition=\"0\"}"), "{body}");
}

/// Partition gauges refresh once a second.
fn tributary_e2e_wait_gauge(b: &Broker) -> String {
    for _ in 0..50 {
        let (_, body) = b.http_get("/metrics").unwrap();
        if body.contains("tributary_log_size_bytes{") {
            return body;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    b.http_get("/metrics").unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_returns_the_stored_batch_bytes_as_produced() {
    let b = Broker::start().unwrap();
    let (mut log, mut admin) = clients(&b).await;
    admin
        .create_topics(CreateTopicsRequest { topics: vec![spec("raw", 1, &[])], validate_only: false })
        .await
        .unwrap();
    let mut builder = BatchBuilder::new(Compression::Zstd, 1_700_000_000_000);
    for i in 0..100 {
        builder.append(
            1_700_000_000_000 + i,
            Some(b"k"),
            Some(format!("value {i}").as_bytes()),
            &[("h", Some(b"v"))],
        );
    }
    let sent = builder.build();
    log.produce(produce("raw", 0, batch(&["first"], None))).await.unwrap();
    log.produce(produce("raw", 0, sent.clone())).await.unwrap();
    let fetched = log
        .fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            partitions: vec![FetchPartition {
                topic: "raw".into(),
                partition: 0,
                offset: 1,
                max_bytes: 1 << 20,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got = &fetched.partitions[0].records;
    // The broker stamped the base offset (1) and leader epoch (0), outside
    // the CRC; every other byte is the producer's, still compressed.
    assert_eq!(got.len(), sent.len());
    assert_eq!(i64::from_be_bytes(got[..8].try_into().unwrap()), 1);
    assert_eq!(&got[8..12], &sent[8..12]);
    assert_eq!(&got[16..], &sent[16..]);
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, request spans are exported over
/// OTLP/gRPC: a stand-in collector sees the exporter's HTTP/2 connection and
/// its request (headers are HPACK-compressed, so the test checks the frames
/// arrive rather than reading the path). An unreachable collector never stops
/// the broker from serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_over_otlp_when_configured() {
    use tokio::io::AsyncReadExt;
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let b = Broker::start_with_env(
        tributary_e2e::FAST_MAINTENANCE,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .unwrap();
    let (mut log, mut admin) = clients(&b).await;
    admin
        .create_topics(CreateTopicsRequest { topics: vec![spec("traced", 1, &[])], validate_only: false })
        .await
        .unwrap();
    log.produce(produce("traced", 0, batch(&["a"], None))).await.unwrap();

    let seen = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let (mut conn, _) = collector.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Preface (24 bytes) + SETTINGS, then the export's HEADERS and DATA.
        while got.len() < 200 {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    })
    .await
    .expect("the broker exported nothing within 20 s");
    assert!(seen.starts_with(b"PRI * HTTP/2.0"), "not an HTTP/2 client");
    assert!(seen.len() >= 200, "the exporter connected but sent no request ({} bytes)", seen.len());
    // The collector never answers; the broker still serves.
    drop(collector);
    log.produce(produce("traced", 0, batch(&["b"], None))).await.unwrap();
}

//! The Kafka listener, black-box, with Kafka clients no one here wrote:
//! kcat (librdkafka), confluent-kafka (a newer librdkafka) and kafka-python,
//! installed by `scripts/kafka-clients.sh` (scripts/test.sh runs it and
//! exports TRIBUTARY_KAFKA_PYTHON; kcat must be on PATH). Without them each
//! test prints why it is skipped.
//!
//! Covered: Metadata against three brokers matches the replicated state;
//! kcat produces and consumes keys and headers with every compression
//! codec; an idempotent confluent-kafka producer's records are all there
//! once; kafka-python round-trips; and one log, two doors — a record
//! produced through the Kafka port reads back through gRPC with the same
//! key, value, headers and timestamp, and the other way round. Admin and
//! groups: AlterConfigs/IncrementalAlterConfigs described back,
//! DescribeGroups of a live group (and `tributary group describe` of it),
//! OffsetDelete refused while subscribed, committed offsets resumed by a
//! new member, kafka-python's admin client and a two-member group, and
//! OffsetForLeaderEpoch from the new leader's epoch cache after a kill.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tributary_client::{Producer, ProducerConfig, ProducerRecord};
use tributary_e2e::cluster::Cluster;
use tributary_e2e::{read_to_end, Broker};

fn kcat() -> Option<&'static str> {
    let found = Command::new("kcat").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
    found.is_ok_and(|s| s.success()).then_some("kcat")
}

fn python() -> Option<String> {
    std::env::var("TRIBUTARY_KAFKA_PYTHON").ok().filter(|p| !p.is_empty())
}

fn skip(test: &str, what: &str) {
    eprintln!("SKIPPED {test}: {what} not found (scripts/test.sh installs it with scripts/kafka-clients.sh)");
}

fn run(cmd: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    child.stdin.take().map(|mut s| s.write_all(stdin.as_bytes()));
    child.wait_with_output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kafka_addr(b: &Broker) -> String {
    b.kafka_addr().expect("the broker reports its Kafka address when ready").to_string()
}

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/python/kafka_clients.py")
}

fn py(python: &str, args: &[&str]) -> Value {
    let out =
        ok(run(Command::new(python).arg(script()).args(args), ""), &format!("kafka_clients.py {args:?}"));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn metadata_and_admin_calls_match_the_replicated_state_of_three_brokers() {
    let Some(kcat) = kcat() else { return skip("kcat_metadata", "kcat") };
    let mut c = Cluster::start(3, "").unwrap();
    rt().block_on(c.create_topic("orders", 3, 3, &[])).unwrap();
    let kafka: Vec<String> = (0..3).map(|i| kafka_addr(c.broker(i))).collect();
    let view = rt().block_on(c.view(&["orders"])).unwrap();
    // Every broker answers the same, whichever one kcat asks.
    for addr in &kafka {
        let out = ok(run(Command::new(kcat).args(["-L", "-J", "-t", "orders", "-b", addr]), ""), "kcat -L");
        let md: Value = serde_json::from_str(&out).unwrap();
        let mut brokers: Vec<(i64, String)> = md["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["id"].as_i64().unwrap(), b["name"].as_str().unwrap().to_string()))
            .collect();
        brokers.sort();
        let want: Vec<(i64, String)> = kafka.iter().enumerate().map(|(i, a)| (i as i64, a.clone())).collect();
        assert_eq!(brokers, want, "{out}");
        let topic = &md["topics"][0];
        assert_eq!(topic["topic"], "orders", "{out}");
        let parts = topic["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 3, "{out}");
        for p in parts {
            let n = p["partition"].as_u64().unwrap() as u32;
            let truth = view.partition("orders", n).unwrap();
            assert_eq!(p["leader"].as_i64().unwrap(), i64::from(truth.leader), "{out}");
            let ids = |k: &str| -> Vec<i32> {
                let mut v: Vec<i32> =
                    p[k].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap() as i32).collect();
                v.sort();
                v
            };
            let (mut replicas, mut isr) = (truth.replicas.clone(), truth.isr.clone());
            replicas.sort();
            isr.sort();
            assert_eq!(ids("replicas"), replicas, "{out}");
            assert_eq!(ids("isrs"), isr, "{out}");
        }
    }
    // confluent-kafka's AdminClient: CreateTopics, DescribeConfigs,
    // CreatePartitions and DeleteTopics, decided by the controller whichever
    // broker it asks; DescribeCluster from the quorum's metadata.
    let Some(python) = python() else { return skip("kafka admin client", "TRIBUTARY_KAFKA_PYTHON") };
    let cluster_id = rt().block_on(c.describe()).unwrap().cluster_id;
    let seen = py(&python, &["admin", &kafka.join(","), "managed"]);
    assert_eq!(
        seen,
        json!({"duplicate": "TOPIC_ALREADY_EXISTS", "partitions": 4, "retention.ms": "3600000",
               "cleanup.policy": "delete", "grown": 6, "shrink": "INVALID_PARTITIONS",
               "cluster_id": cluster_id, "cluster_nodes": [0, 1, 2], "after_delete": false})
    );
}

#[test]
fn kcat_round_trips_keys_and_headers_with_every_codec() {
    let Some(kcat) = kcat() else { return skip("kcat_round_trips", "kcat") };
    let b = Broker::start().unwrap();
    let addr = kafka_addr(&b);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        ok(b.cli(&["topic", "create", &topic, "--partitions", "1"], "").unwrap(), "topic create");
        let lines: String = (0..50).map(|i| format!("key-{i}:value {i} {}\n", "x".repeat(i * 7))).collect();
        let produce = Command::new(kcat)
            .args(["-P", "-b", &addr, "-t", &topic, "-K:", "-z", codec, "-H", "source=kcat", "-H", "codec="])
            .arg("-X")
            .arg("linger.ms=50")
            .output_with(&lines);
        ok(produce, &format!("kcat -P -z {codec}"));
        let out = ok(
            run(
                Command::new(kcat).args(["-C", "-b", &addr, "-t", &topic, "-o", "beginning", "-e", "-J"]),
                "",
            ),
            &format!("kcat -C {codec}"),
        );
        let got: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(got.len(), 50, "{codec}: {out}");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m["offset"], i as u64, "{codec}");
            assert_eq!(m["key"], format!("key-{i}"), "{codec}");
            assert_eq!(m["payload"], format!("value {i} {}", "x".repeat(i * 7)), "{codec}");
            assert_eq!(m["headers"], json!(["source", "kcat", "codec", ""]), "{codec}");
        }
        // The stored batch is what kcat sent: the gRPC consumer reads it too.
        let cli = ok(
            b.cli(
                &[
                    "consume",
                    &topic,
                    "--from-beginning",
                    "--print-key",
                    "--max-messages",
                    "50",
                    "--timeout-ms",
                    "5000",
                ],
                "",
            )
            .unwrap(),
            "tributary consume",
        );
        assert_eq!(cli.lines().count(), 50, "{codec}: {cli}");
        assert!(cli.starts_with("key-0\tvalue 0 \n"), "{codec}: {cli}");
    }
}

/// A batch as brokers wrote lz4 before the Kafka listener: one lz4 block
/// with a 4-byte little-endian size prefix (which Kafka clients cannot read).
fn legacy_lz4_batch(timestamp: i64, values: &[&str]) -> Bytes {
    use tributary_proto::batch::{BatchBuilder, Compression, HEADER_LEN, LOG_OVERHEAD};
    let mut b = BatchBuilder::new(Compression::None, timestamp);
    for v in values {
        b.append(timestamp, Some(b"old"), Some(v.as_bytes()), &[]);
    }
    let plain = b.build();
    let mut buf = plain[..HEADER_LEN].to_vec();
    buf.extend_from_slice(&lz4_block_literals(&plain[HEADER_LEN..]));
    buf[21..23].copy_from_slice(&Compression::Lz4.id().to_be_bytes());
    let len = (buf.len() - LOG_OVERHEAD) as i32;
    buf[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(buf)
}

/// lz4 block format with the size prefix, by hand (literals only: valid
/// lz4 that any block decoder reads).
fn lz4_block_literals(raw: &[u8]) -> Vec<u8> {
    let mut out = (raw.len() as u32).to_le_bytes().to_vec();
    // One sequence of literals only: token, literal length, literals.
    let n = raw.len();
    if n < 15 {
        out.push((n as u8) << 4);
    } else {
        out.push(0xF0);
        let mut rest = n - 15;
        while rest >= 255 {
            out.push(255);
            rest -= 255;
        }
        out.push(rest as u8);
    }
    out.extend_from_slice(raw);
    out
}

#[test]
fn batches_in_the_old_lz4_block_format_reach_kafka_clients_readable() {
    let Some(kcat) = kcat() else { return skip("old_lz4_batches", "kcat") };
    let b = Broker::start().unwrap();
    ok(b.cli(&["topic", "create", "old", "--partitions", "1"], "").unwrap(), "topic create");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let batch = legacy_lz4_batch(now, &["one", "two"]);
    rt().block_on(async {
        use tributary_proto::v1::{
            log_client::LogClient, PartitionProduceData, ProduceRequest, TopicProduceData,
        };
        let mut log = LogClient::connect(format!("http://{}", b.grpc)).await.unwrap();
        let partitions = vec![PartitionProduceData { partition: 0, records: batch }];
        let req = ProduceRequest {
            acks: 1,
            timeout_ms: 5000,
            topics: vec![TopicProduceData { name: "old".into(), partitions }],
        };
        let resp = log.produce(req).await.unwrap().into_inner();
        assert!(resp.topics[0].partitions[0].error.is_none(), "{resp:?}");
    });
    let out = ok(
        run(
            Command::new(kcat).args([
                "-C",
                "-b",
                &kafka_addr(&b),
                "-t",
                "old",
                "-o",
                "beginning",
                "-e",
                "-f",
                "%k=%s\n",
            ]),
            "",
        ),
        "kcat -C",
    );
    assert_eq!(out, "old=one\nold=two\n");
}

/// `Command::output` with `stdin` fed.
trait OutputWith {
    fn output_with(&mut self, stdin: &str) -> Output;
}

impl OutputWith for Command {
    fn output_with(&mut self, stdin: &str) -> Output {
        run(self, stdin)
    }
}

#[test]
fn one_log_two_doors_kafka_and_grpc_see_the_same_records() {
    let Some(python) = python() else { return skip("one_log_two_doors", "TRIBUTARY_KAFKA_PYTHON") };
    let b = Broker::start().unwrap();
    let addr = kafka_addr(&b);
    ok(b.cli(&["topic", "create", "doors", "--partitions", "1"], "").unwrap(), "topic create");
    // Recent timestamps: older ones would be past retention.ms.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let ts = now - 60_000;
    // In through the Kafka door (confluent-kafka, idempotent) ...
    let records = json!([
        {"key": "k-kafka", "value": "from kafka", "headers": [["h1", "v1"], ["h2", null]], "timestamp": ts},
        {"key": null, "value": "no key", "headers": [], "timestamp": ts + 1},
    ]);
    let placed = py(&python, &["produce", &addr, "doors", &records.to_string()]);
    assert_eq!(placed, json!([[0, 0], [0, 1]]));
    // ... out through gRPC, the same.
    let grpc = b.bootstrap();
    let read = rt().block_on(read_to_end(&grpc, "doors", 0)).unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].key.as_deref(), Some(&b"k-kafka"[..]));
    assert_eq!(read[0].value.as_deref(), Some(&b"from kafka"[..]));
    assert_eq!(read[0].timestamp, ts);
    assert_eq!(
        read[0].headers,
        vec![("h1".to_string(), Some(Bytes::from_static(b"v1"))), ("h2".to_string(), None)]
    );
    assert_eq!((read[1].key.clone(), read[1].timestamp), (None, ts + 1));
    // In through gRPC (the Rust client) ...
    rt().block_on(async {
        let p = Producer::connect(ProducerConfig { bootstrap: grpc.clone(), ..Default::default() })
            .await
            .unwrap();
        let mut r = ProducerRecord::new("doors", Bytes::from_static(b"from grpc"));
        r.key = Some(Bytes::from_static(b"k-grpc"));
        r.headers = vec![("origin".into(), Some(Bytes::from_static(b"rust")))];
        r.timestamp = Some(ts + 2);
        p.send(r).await.unwrap().await.unwrap();
        p.close().await.unwrap();
    });
    // ... out through the Kafka door.
    let got = py(&python, &["consume", &addr, "doors", "3"]);
    let last = &got[2];
    assert_eq!(last["key"], "k-grpc", "{got}");
    assert_eq!(last["value"], "from grpc", "{got}");
    assert_eq!(last["headers"], json!([["origin", "rust"]]), "{got}");
    assert_eq!(last["timestamp"], ts + 2, "{got}");
    assert_eq!(last["offset"], 2, "{got}");
    assert_eq!(got[0]["headers"], json!([["h1", "v1"], ["h2", null]]), "{got}");
}

#[test]
fn an_idempotent_kafka_producer_loses_and_duplicates_nothing_through_a_leader_kill() {
    let Some(python) = python() else { return skip("idempotent_producer_kill", "TRIBUTARY_KAFKA_PYTHON") };
    let mut c = Cluster::start(3, tributary_e2e::cluster::FAST_FAILOVER).unwrap();
    rt().block_on(c.create_topic("failover", 3, 3, &[("min.insync.replicas", "2")])).unwrap();
    let bootstrap: Vec<String> = (0..3).map(|i| kafka_addr(c.broker(i))).collect();
    let n = 6000;
    // ~6 s of produce (60 pauses of 100 ms); the leader of partition 0 is
    // killed a second in.
    let child = Command::new(&python)
        .arg(script())
        .args(["produce-paced", &bootstrap.join(","), "failover", &n.to_string(), "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let leader = rt().block_on(c.leader_of("failover", 0)).unwrap().expect("a leader");
    c.kill(leader).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}\n{}", String::from_utf8_lossy(&out.stderr), c.logs_tail());
    assert_eq!(serde_json::from_str::<Value>(&report).unwrap()["delivered"], n, "{report}");
    // Read back through the survivors: every acknowledged record exactly once.
    let alive: Vec<String> = (0..3).filter(|i| *i != leader).map(|i| kafka_addr(c.broker(i))).collect();
    let got = py(&python, &["consume", &alive.join(","), "failover", &n.to_string()]);
    let mut values: Vec<String> =
        got.as_array().unwrap().iter().map(|m| m["value"].as_str().unwrap().to_string()).collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), n, "every record once through the Kafka door");
    // And to the high watermark of every partition through the gRPC door:
    // nothing more is stored than was sent (no duplicate past the n read).
    let grpc = c.bootstrap_up();
    let mut stored = 0;
    for p in 0..3 {
        stored += rt().block_on(read_to_end(&grpc, "failover", p)).unwrap().len();
    }
    assert_eq!(stored, n, "records stored in total");
}

#[test]
fn an_idempotent_kafka_producer_lands_every_record_once_on_a_replicated_topic() {
    let Some(python) = python() else { return skip("idempotent_producer", "TRIBUTARY_KAFKA_PYTHON") };
    let mut c = Cluster::start(3, "").unwrap();
    rt().block_on(c.create_topic("idem", 3, 3, &[("min.insync.replicas", "2")])).unwrap();
    let bootstrap: Vec<String> = (0..3).map(|i| kafka_addr(c.broker(i))).collect();
    let bootstrap = bootstrap.join(",");
    let n = 3000;
    let records: Vec<Value> =
        (0..n).map(|i| json!({"key": format!("k{i}"), "value": format!("v{i}")})).collect();
    let placed = py(&python, &["produce", &bootstrap, "idem", &Value::from(records).to_string()]);
    assert_eq!(placed.as_array().unwrap().len(), n);
    let got = py(&python, &["consume", &bootstrap, "idem", &n.to_string()]);
    let mut values: Vec<String> =
        got.as_array().unwrap().iter().map(|m| m["value"].as_str().unwrap().to_string()).collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), n, "every record once");
    // The idempotent producer's id came from the cluster's blocks, like the
    // Rust client's: the batches carry it.
    let grpc = c.bootstrap();
    let read = rt().block_on(read_to_end(&grpc, "idem", 0)).unwrap();
    assert!(!read.is_empty());
}

#[test]
fn a_kafka_consumer_group_assigns_on_the_client_side_and_commits() {
    let Some(python) = python() else { return skip("kafka_consumer_group", "TRIBUTARY_KAFKA_PYTHON") };
    let b = Broker::start().unwrap();
    ok(b.cli(&["topic", "create", "grouped", "--partitions", "6"], "").unwrap(), "topic create");
    let n = 600;
    let seen = py(&python, &["group", &kafka_addr(&b), "grouped", "kgroup", "3", &n.to_string()]);
    assert_eq!(seen["errors"], json!([]), "{seen}");
    // Every member got partitions from the leader's (client-side,
    // cooperative-sticky) assignment, and together they own all six.
    let assigned: Vec<Vec<u64>> = serde_json::from_value(seen["assigned"].clone()).unwrap();
    assert!(assigned.iter().all(|a| !a.is_empty()), "{seen}");
    let mut all: Vec<u64> = assigned.concat();
    all.sort();
    assert_eq!(all, (0..6).collect::<Vec<u64>>(), "{seen}");
    // Each record read once, and every position committed on close.
    assert_eq!(seen["unique"], n, "{seen}");
    assert_eq!(
        seen["consumed"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum::<u64>(),
        n as u64,
        "{seen}"
    );
    assert_eq!(seen["committed"], n, "{seen}");
    // The same group seen through the gRPC door: committed offsets, and a
    // native consumer is refused while Kafka members are in it... (they
    // left on close, so it is empty now and shows its offsets).
    let described = ok(b.cli(&["group", "describe", "kgroup"], "").unwrap(), "group describe");
    assert!(described.contains("grouped"), "{described}");
    // The AdminClient lists the (now empty) group, deletes it with its
    // offsets, and is told an unknown group is not found.
    let seen = py(&python, &["groups-admin", &kafka_addr(&b), "kgroup"]);
    assert_eq!(
        seen,
        json!({"listed": ["kgroup"], "errors": [], "deleted": true, "unknown": "GROUP_ID_NOT_FOUND", "after": []}),
    );
    let listed = ok(b.cli(&["group", "list"], "").unwrap(), "group list");
    assert!(!listed.contains("kgroup"), "deleted for the gRPC door too: {listed}");
}

#[test]
fn kafka_python_produces_and_consumes() {
    let Some(python) = python() else { return skip("kafka_python", "TRIBUTARY_KAFKA_PYTHON") };
    let b = Broker::start().unwrap();
    ok(b.cli(&["topic", "create", "kp", "--partitions", "2"], "").unwrap(), "topic create");
    let got = py(&python, &["kafka-python", &kafka_addr(&b), "kp"]);
    let mut keys: Vec<&str> = got.as_array().unwrap().iter().map(|m| m["key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, ["kp-0", "kp-1", "kp-2"], "{got}");
    assert_eq!(got[0]["headers"], json!([["via", "kafka-python"]]), "{got}");
}

#[test]
fn a_bad_frame_closes_only_its_connection() {
    use std::io::{Read, Write};
    let b = Broker::start().unwrap();
    let addr = kafka_addr(&b);
    // A size prefix far above the limit: the broker hangs up.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&i32::MAX.to_be_bytes()).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "connection closed");
    // An unknown API key: the same.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = [&999i16.to_be_bytes()[..], &0i16.to_be_bytes(), &1i32.to_be_bytes(), &(-1i16).to_be_bytes()]
        .concat();
    s.write_all(&(body.len() as i32).to_be_bytes()).unwrap();
    s.write_all(&body).unwrap();
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "connection closed");
    // A Metadata request claiming 2^31 topics in 20 bytes: the decoder's
    // up-front reservation must not take the broker down.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = [
        &3i16.to_be_bytes()[..],
        &1i16.to_be_bytes(),
        &5i32.to_be_bytes(),
        &(-1i16).to_be_bytes(),
        &i32::MAX.to_be_bytes(),
    ]
    .concat();
    s.write_all(&(body.len() as i32).to_be_bytes()).unwrap();
    s.write_all(&body).unwrap();
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "connection closed");
    let logs = b.logs();
    assert!(logs.contains("closing Kafka connection"), "{logs}");
    assert!(logs.contains("malformed Metadata v1 request"), "{logs}");
    assert!(logs.contains("unknown or unsupported API key 999"), "{logs}");
    // An ApiVersions on a fresh connection is still answered.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body =
        [&18i16.to_be_bytes()[..], &0i16.to_be_bytes(), &7i32.to_be_bytes(), &(-1i16).to_be_bytes()].concat();
    s.write_all(&(body.len() as i32).to_be_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer[..4], &7i32.to_be_bytes(), "correlation id echoed");
    assert_eq!(&answer[4..6], &0i16.to_be_bytes(), "no error");
}

#[test]
fn kafka_admin_clients_alter_configs_and_describe_and_resume_groups() {
    let Some(python) = python() else { return skip("kafka_admin_groups", "TRIBUTARY_KAFKA_PYTHON") };
    let b = Broker::start().unwrap();
    let addr = kafka_addr(&b);
    // IncrementalAlterConfigs and AlterConfigs through the `topic alter`
    // path, each described back; validate_only changes nothing.
    let seen = py(&python, &["configs", &addr, "cfgd"]);
    let default_retention = seen["after_validate"]["retention.ms"].clone();
    assert_ne!(default_retention, "1000", "{seen}");
    assert_eq!(
        seen,
        json!({"validate_only": "ok", "after_validate": {"retention.ms": default_retention},
               "incremental": "ok",
               "after_incremental": {"retention.ms": "7200000", "cleanup.policy": "compact,delete"},
               "unknown": "INVALID_CONFIG", "append_scalar": "INVALID_CONFIG", "broker": "INVALID_REQUEST",
               "after_full": {"retention.ms": default_retention, "cleanup.policy": "delete",
                              "max.message.bytes": "2000000"}})
    );
    let described = ok(b.cli(&["topic", "describe", "cfgd"], "").unwrap(), "topic describe");
    assert!(described.contains("max.message.bytes") && described.contains("2000000"), "{described}");

    // A live two-member group as DescribeGroups and `tributary group
    // describe` show it; OffsetDelete is refused while they subscribe.
    ok(b.cli(&["topic", "create", "live", "--partitions", "4"], "").unwrap(), "topic create");
    let cli = json!([tributary_e2e::bin("tributary"), "--bootstrap", b.bootstrap()]).to_string();
    let seen = py(&python, &["live-group", &addr, "live", "live-group", &cli]);
    assert_eq!(seen["state"], "STABLE", "{seen}");
    assert_eq!(seen["assignor"], "range", "{seen}");
    assert_eq!(seen["simple"], false, "{seen}");
    let members = seen["members"].as_array().unwrap();
    let clients: Vec<&str> = members.iter().map(|m| m[0].as_str().unwrap()).collect();
    assert_eq!(clients, ["member-0", "member-1"], "{seen}");
    let mut owned: Vec<u64> =
        members.iter().flat_map(|m| m[1].as_array().unwrap().iter().map(|p| p.as_u64().unwrap())).collect();
    owned.sort();
    assert_eq!(owned, [0, 1, 2, 3], "each partition owned once: {seen}");
    assert!(members.iter().all(|m| m[2] == true), "hosts shown: {seen}");
    let text = seen["cli"].as_str().unwrap();
    for want in ["State: Stable", "Assignor: range", "Members: 2", "member-0", "member-1"] {
        assert!(text.contains(want), "`group describe` shows {want}: {text}");
    }
    assert_eq!(seen["delete_live"], json!([0, [86, 86, 86, 86]]), "GROUP_SUBSCRIBED_TO_TOPIC: {seen}");
    assert_eq!(seen["delete_stopped"], json!([0, [0, 0, 0, 0]]), "{seen}");
    assert_eq!(seen["committed_after"], json!([-1001, -1001, -1001, -1001]), "offsets gone: {seen}");

    // A group commits, every member stops, a new member resumes exactly
    // where they left off and reads to the high watermark.
    ok(b.cli(&["topic", "create", "resume", "--partitions", "3"], "").unwrap(), "topic create");
    let n = 300;
    let seen = py(&python, &["resume", &addr, "resume", "resumed", &n.to_string()]);
    // About half was read (distinct records: a rebalance while the group
    // forms may hand a partition over before its position was committed,
    // and the new owner reads it again, as Kafka's at-least-once allows).
    let first = seen["first"].as_u64().unwrap();
    assert!(first >= n / 4 && first < 2 * n, "{seen}");
    assert_eq!(seen["rest"], 2 * n - first, "{seen}");
    assert_eq!(seen["rest_unique"], seen["rest"], "nothing read twice after resuming: {seen}");
    assert_eq!(seen["overlap"], 0, "nothing re-read: {seen}");
    assert_eq!(seen["extra"], json!([]), "{seen}");
    assert_eq!(seen["all"], true, "nothing skipped: {seen}");
    assert_eq!(seen["at_end"], true, "{seen}");
}

#[test]
fn kafka_python_admin_and_a_two_member_group() {
    let Some(python) = python() else { return skip("kafka_python_groups", "TRIBUTARY_KAFKA_PYTHON") };
    let b = Broker::start().unwrap();
    let seen = py(&python, &["kafka-python-groups", &kafka_addr(&b), "kpg", "200"]);
    assert_eq!(
        seen,
        json!({"described_topic": [["kpg", 4, 0]], "listed": ["kpg-kp-group"],
               "described_group": ["Stable", "consumer", "range", ["kp-0", "kp-1"]],
               "owned": seen["owned"], "each_read": [true, true], "read": true, "duplicates": 0,
               "after_delete": false})
    );
    let owned: Vec<Vec<u64>> = serde_json::from_value(seen["owned"].clone()).unwrap();
    assert!(owned.iter().all(|o| !o.is_empty()), "{seen}");
    let mut all = owned.concat();
    all.sort();
    assert_eq!(all, [0, 1, 2, 3], "{seen}");
}

#[test]
fn offset_for_leader_epoch_answers_from_the_epoch_cache_after_a_leader_kill() {
    let Some(python) = python() else { return skip("offset_for_leader_epoch", "TRIBUTARY_KAFKA_PYTHON") };
    let mut c = Cluster::start(3, tributary_e2e::cluster::FAST_FAILOVER).unwrap();
    rt().block_on(c.create_topic("epochs", 1, 3, &[("min.insync.replicas", "2")])).unwrap();
    let bootstrap: Vec<String> = (0..3).map(|i| kafka_addr(c.broker(i))).collect();
    let records = |from: usize| -> String {
        let r: Vec<Value> =
            (from..from + 10).map(|i| json!({"key": format!("k{i}"), "value": format!("v{i}")})).collect();
        Value::from(r).to_string()
    };
    py(&python, &["produce", &bootstrap.join(","), "epochs", &records(0)]);
    let (old, old_epoch) = rt().block_on(c.wait_leader("epochs", 0, None, Duration::from_secs(10))).unwrap();
    c.kill(old).unwrap();
    let (new, new_epoch) =
        rt().block_on(c.wait_leader("epochs", 0, Some(old), Duration::from_secs(20))).unwrap();
    let alive: Vec<String> = (0..3).filter(|i| *i != old).map(|i| kafka_addr(c.broker(i))).collect();
    py(&python, &["produce", &alive.join(","), "epochs", &records(10)]);
    let queries = json!([
        [new_epoch, old_epoch],
        [new_epoch, new_epoch],
        [-1, old_epoch],
        [old_epoch, old_epoch],
        [new_epoch + 1, old_epoch],
    ]);
    let seen =
        py(&python, &["epoch-ends", &alive.join(","), "epochs", &new.to_string(), &queries.to_string()]);
    assert_eq!(
        seen,
        json!([
            // The old epoch ends where the new leader's began.
            [0, old_epoch, 10],
            // The current one at the log end.
            [0, new_epoch, 20],
            // No current epoch given: not fenced.
            [0, old_epoch, 10],
            // FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH.
            [74, -1, -1],
            [75, -1, -1],
        ]),
        "old epoch {old_epoch}, new {new_epoch}"
    );
    let follower = (0..3).find(|i| *i != old && *i != new).unwrap();
    let asked = json!([[new_epoch, old_epoch]]).to_string();
    let seen = py(&python, &["epoch-ends", &alive.join(","), "epochs", &follower.to_string(), &asked]);
    assert_eq!(seen, json!([[6, -1, -1]]), "NOT_LEADER_OR_FOLLOWER from a follower");
}

#[test]
fn kafka_tools_describe_a_native_group_with_its_assignment() {
    use tributary_client::{GroupConfig, GroupConsumer};
    let Some(python) = python() else { return skip("native_group_described", "TRIBUTARY_KAFKA_PYTHON") };
    let b = Broker::start().unwrap();
    ok(b.cli(&["topic", "create", "nat", "--partitions", "2"], "").unwrap(), "topic create");
    let rt = rt();
    let mut config = GroupConfig::new(b.bootstrap(), "native-g");
    config.client_id = "native-member".into();
    config.heartbeat_interval = Duration::from_millis(300);
    let mut member = rt.block_on(GroupConsumer::connect(config)).unwrap();
    rt.block_on(member.subscribe(&["nat"])).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while member.assignment().len() < 2 && std::time::Instant::now() < deadline {
        rt.block_on(member.poll(Duration::from_millis(100))).unwrap();
    }
    assert_eq!(member.assignment().len(), 2, "the native member owns both partitions");
    // kafka-python reads the members' subscription and assignment (it
    // decodes them for groups with no protocol type, like Kafka's simple
    // consumer groups): what the coordinator assigned, server side.
    let seen = py(&python, &["describe-group", &kafka_addr(&b), "native-g"]);
    assert_eq!(seen, json!(["Stable", "", "range", [["native-member", ["nat"], [["nat", [0, 1]]]]]]));
    rt.block_on(member.close()).unwrap();
}

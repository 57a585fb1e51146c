//! REST Proxy v2 consumer instances, black-box over plain HTTP against real
//! broker processes: an instance reads every record once (also when each
//! answer is cut short by `max_bytes`), commits what it names, shares its
//! group with a native member (never the same partition at once), seeks,
//! answers in binary, JSON and Avro, is reached through any broker of the
//! cluster, expires when idle, and refuses bad requests with Confluent's
//! codes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tributary_client::{
    Admin, GroupConfig, GroupConsumer, OffsetReset, Producer, ProducerConfig, ProducerRecord,
};
use tributary_e2e::cluster::Cluster;
use tributary_e2e::{http_request, Broker};

const V2: &str = "application/vnd.kafka.v2+json";
const BINARY: &str = "application/vnd.kafka.binary.v2+json";
const JSON: &str = "application/vnd.kafka.json.v2+json";
const AVRO: &str = "application/vnd.kafka.avro.v2+json";

fn parse(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A request with a v2 JSON body (or none); the status and parsed answer.
fn call(http: &SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (s, text) = http_request(http, method, path, &[("Content-Type", V2)], body).unwrap();
    (s, parse(&text))
}

/// `GET .../records` accepting `accept`.
fn records(http: &SocketAddr, base: &str, accept: &str, query: &str) -> (u16, Value) {
    let (s, text) =
        http_request(http, "GET", &format!("{base}/records?{query}"), &[("Accept", accept)], "").unwrap();
    (s, parse(&text))
}

/// Creates an instance; its path (from its `base_uri`).
fn create(http: &SocketAddr, group: &str, body: Value) -> String {
    let (s, a) = call(http, "POST", &format!("/consumers/{group}"), &body.to_string());
    assert_eq!(s, 200, "{a}");
    let uri = a["base_uri"].as_str().unwrap_or_else(|| panic!("no base_uri: {a}"));
    let id = a["instance_id"].as_str().unwrap();
    assert!(uri.ends_with(&format!("/consumers/{group}/instances/{id}")), "{a}");
    let path = uri.trim_start_matches("http://");
    let (host, path) = path.split_at(path.find('/').unwrap());
    assert_eq!(host, http.to_string(), "the base_uri names the broker that holds the instance");
    path.to_string()
}

fn subscribe(http: &SocketAddr, base: &str, topics: &[&str]) {
    let (s, a) = call(http, "POST", &format!("{base}/subscription"), &json!({"topics": topics}).to_string());
    assert_eq!(s, 204, "{a}");
}

/// Polls until `want` records came (or 30 s pass): (partition, offset) →
/// the record as answered.
fn read_n(
    http: &SocketAddr,
    base: &str,
    accept: &str,
    query: &str,
    want: usize,
) -> BTreeMap<(u64, u64), Value> {
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want && Instant::now() < deadline {
        let (s, a) = records(http, base, accept, query);
        assert_eq!(s, 200, "{a}");
        for r in a.as_array().unwrap_or_else(|| panic!("not a list: {a}")) {
            let at = (r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap());
            assert!(got.insert(at, r.clone()).is_none(), "record {at:?} answered twice");
        }
    }
    assert_eq!(got.len(), want, "records read: {:?}", got.keys().collect::<Vec<_>>());
    got
}

async fn produce(bootstrap: &str, topic: &str, values: &[(u32, String)]) {
    let producer =
        Producer::connect(ProducerConfig { bootstrap: bootstrap.to_string(), ..Default::default() })
            .await
            .unwrap();
    let mut acks = Vec::new();
    for (i, (p, v)) in values.iter().enumerate() {
        // Keys are JSON text, so instances of every format can show them.
        let r = ProducerRecord::new(topic, v.clone()).key(format!("\"k{i}\"")).partition(*p);
        acks.push(producer.send(r).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    producer.close().await.unwrap();
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_reads_commits_seeks_and_shares_its_group_with_a_native_member() {
    let b = Broker::start().unwrap();
    let http = b.http;
    let admin = Admin::connect(&b.bootstrap()).await.unwrap();
    admin.create_topic("events", 2, 1, BTreeMap::new()).await.unwrap();
    let values: Vec<(u32, String)> = (0..20).map(|i| (i % 2, format!("value-{i:02}"))).collect();
    produce(&b.bootstrap(), "events", &values).await;

    let base = create(
        &http,
        "g",
        json!({"name": "c1", "auto.offset.reset": "earliest", "auto.commit.enable": "false"}),
    );
    // The same name again in the same group is refused.
    let (s, a) = call(&http, "POST", "/consumers/g", &json!({"name": "c1"}).to_string());
    assert_eq!((s, a["error_code"].as_u64()), (409, Some(40902)), "{a}");
    // Records before a subscription: an illegal state, not an empty list.
    let (s, a) = records(&http, &base, BINARY, "timeout=100");
    assert_eq!((s, a["error_code"].as_u64()), (409, Some(40903)), "{a}");

    subscribe(&http, &base, &["events"]);
    let (s, a) = call(&http, "GET", &format!("{base}/subscription"), "");
    assert_eq!((s, a), (200, json!({"topics": ["events"]})));

    // Each answer holds at most ~2 values of 8 bytes (plus 2-byte keys):
    // nothing is skipped or repeated although every poll brings more.
    let got = read_n(&http, &base, BINARY, "timeout=500&max_bytes=25", 20);
    for (i, (p, v)) in values.iter().enumerate() {
        let r = &got[&(u64::from(*p), (i / 2) as u64)];
        assert_eq!(
            (r["topic"].as_str(), r["value"].as_str()),
            (Some("events"), Some(b64(v).as_str())),
            "{r}"
        );
        assert_eq!(r["key"].as_str(), Some(b64(&format!("\"k{i}\"")).as_str()), "{r}");
    }
    // Another embedded format than the instance's: 406.
    let (s, a) = records(&http, &base, JSON, "timeout=100");
    assert_eq!((s, a["error_code"].as_u64()), (406, Some(40601)), "{a}");

    // A commit names the last record consumed; the group stores the next.
    let body = json!({"offsets": [{"topic": "events", "partition": 0, "offset": 4}]}).to_string();
    let (s, a) = call(&http, "POST", &format!("{base}/offsets"), &body);
    assert_eq!(s, 200, "{a}");
    let ask = json!({"partitions": [{"topic": "events", "partition": 0}]}).to_string();
    let (s, a) = call(&http, "GET", &format!("{base}/offsets"), &ask);
    assert_eq!((s, a["offsets"][0]["offset"].as_i64()), (200, Some(5)), "{a}");
    let native_view = admin.fetch_offsets("g").await.unwrap();
    assert!(
        native_view.iter().any(|e| e.topic == "events" && e.partition == 0 && e.offset == 5),
        "{native_view:?}"
    );

    // Back to the beginning of partition 1: its ten records again.
    let body = json!({"partitions": [{"topic": "events", "partition": 1}]}).to_string();
    let (s, a) = call(&http, "POST", &format!("{base}/positions/beginning"), &body);
    assert_eq!(s, 204, "{a}");
    let again = read_n(&http, &base, BINARY, "timeout=500", 10);
    assert!(again.keys().all(|(p, _)| *p == 1), "{:?}", again.keys());

    // A native member joins the group: the two split the partitions, and
    // no partition is ever held by both.
    let mut config = GroupConfig::new(b.bootstrap(), "g");
    config.auto_offset_reset = OffsetReset::Earliest;
    config.auto_commit = false;
    let mut native = GroupConsumer::connect(config).await.unwrap();
    native.subscribe(&["events"]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        native.poll(Duration::from_millis(200)).await.unwrap();
        let (s, _) = records(&http, &base, BINARY, "timeout=200");
        assert_eq!(s, 200);
        let (_, a) = call(&http, "GET", &format!("{base}/assignments"), "");
        let rest: BTreeSet<u64> =
            a["partitions"].as_array().unwrap().iter().map(|p| p["partition"].as_u64().unwrap()).collect();
        let mine: BTreeSet<u64> = native.assignment().iter().map(|tp| u64::from(tp.partition)).collect();
        assert!(rest.is_disjoint(&mine), "both hold a partition: REST {rest:?}, native {mine:?}");
        if rest.len() == 1 && mine.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the group never split: REST {rest:?}, native {mine:?}");
    }
    let described = admin.describe_group("g").await.unwrap();
    assert!(
        described.members.iter().any(|m| m.client_id == "rest-proxy/c1"),
        "group describe shows the REST member: {described:?}"
    );
    native.close().await.unwrap();

    // Deleting the instance ends it; later requests find nothing.
    let (s, _) = call(&http, "DELETE", &base, "");
    assert_eq!(s, 204);
    let (s, a) = records(&http, &base, BINARY, "timeout=100");
    assert_eq!((s, a["error_code"].as_u64()), (404, Some(40403)), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_avro_instances_answer_records_as_json() {
    let b = Broker::start().unwrap();
    let http = b.http;
    let admin = Admin::connect(&b.bootstrap()).await.unwrap();
    admin.create_topic("docs", 1, 1, BTreeMap::new()).await.unwrap();
    admin.create_topic("pay", 1, 1, BTreeMap::new()).await.unwrap();
    produce(&b.bootstrap(), "docs", &[(0, r#"{"a":[1,"x"]}"#.into()), (0, "7".into())]).await;
    // Avro through the REST proxy's produce (registered under pay-value).
    let schema =
        r#"{"type":"record","name":"P","fields":[{"name":"id","type":"string"},{"name":"n","type":"long"}]}"#;
    let body = json!({"value_schema": schema, "records": [{"value": {"id": "p1", "n": 3}}]}).to_string();
    let (s, text) = http_request(&http, "POST", "/topics/pay", &[("Content-Type", AVRO)], &body).unwrap();
    assert_eq!(s, 200, "{text}");

    let base = create(&http, "j", json!({"format": "json", "auto.offset.reset": "earliest"}));
    subscribe(&http, &base, &["docs"]);
    let got = read_n(&http, &base, JSON, "timeout=500", 2);
    assert_eq!(got[&(0, 0)]["value"], json!({"a": [1, "x"]}));
    assert_eq!((got[&(0, 1)]["value"].clone(), got[&(0, 1)]["key"].clone()), (json!(7), json!("k1")));
    // A record that is not JSON fails the request, and the instance stays
    // at it rather than skip it.
    produce(&b.bootstrap(), "docs", &[(0, "not json".into())]).await;
    for _ in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (s, a) = loop {
            let (s, a) = records(&http, &base, JSON, "timeout=500");
            if s != 200 || a != json!([]) || Instant::now() > deadline {
                break (s, a);
            }
        };
        assert_eq!((s, a["error_code"].as_u64()), (500, Some(50002)), "{a}");
        assert!(a["message"].as_str().is_some_and(|m| m.contains("docs-0@2")), "{a}");
    }

    let base = create(&http, "a", json!({"format": "avro", "auto.offset.reset": "earliest"}));
    subscribe(&http, &base, &["pay"]);
    let got = read_n(&http, &base, AVRO, "timeout=500", 1);
    assert_eq!(got[&(0, 0)]["value"], json!({"id": "p1", "n": 3}));

    // Bad creations change nothing and say why.
    let (s, a) = call(&http, "POST", "/consumers/a", &json!({"format": "protobuf"}).to_string());
    assert_eq!((s, a["error_code"].as_u64()), (422, Some(422)), "{a}");
    let (s, text) =
        http_request(&http, "POST", "/consumers/a", &[("Content-Type", "text/plain")], "{}").unwrap();
    assert_eq!(s, 415, "{text}");
    let (s, a) = call(&http, "POST", "/consumers/a", &json!({"name": "a/b"}).to_string());
    assert_eq!(s, 422, "{a}");
    let (s, a) =
        call(&http, "POST", &format!("{base}/subscription"), &json!({"topics": ["nope"]}).to_string());
    assert_eq!((s, a["error_code"].as_u64()), (404, Some(40401)), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_broker_reaches_an_instance_and_idle_instances_expire() {
    let c = Cluster::start(2, "rest_consumer_instance_timeout_ms = 3000\n").unwrap();
    let (h0, h1) = (c.broker(0).http, c.broker(1).http);
    let admin = Admin::connect(&c.bootstrap()).await.unwrap();
    admin.create_topic("f", 1, 2, BTreeMap::new()).await.unwrap();
    produce(&c.bootstrap(), "f", &[(0, "one".into()), (0, "two".into())]).await;

    let base = create(&h0, "fg", json!({"name": "far", "auto.offset.reset": "earliest"}));
    // Every request below reaches broker 1, which sends it on to broker 0.
    subscribe(&h1, &base, &["f"]);
    let got = read_n(&h1, &base, BINARY, "timeout=500", 2);
    assert_eq!(got[&(0, 1)]["value"].as_str(), Some(b64("two").as_str()));
    let (s, a) = call(&h1, "GET", &format!("{base}/assignments"), "");
    assert_eq!((s, a), (200, json!({"partitions": [{"topic": "f", "partition": 0}]})));
    // An instance no broker holds.
    let (s, a) = records(&h1, "/consumers/fg/instances/nobody", BINARY, "");
    assert_eq!((s, a["error_code"].as_u64()), (404, Some(40403)), "{a}");

    // Left alone past its timeout, an instance is closed; one in use stays.
    let idle = create(&h1, "fg", json!({"name": "idle"}));
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (s, a) = call(&h1, "GET", &format!("{base}/subscription"), "");
        assert_eq!(s, 200, "an instance in use stays: {a}");
    }
    let (s, a) = call(&h1, "GET", &format!("{idle}/subscription"), "");
    assert_eq!((s, a["error_code"].as_u64()), (404, Some(40403)), "idle instances expire: {a}");
    let (s, a) = call(&h1, "DELETE", &base, "");
    assert_eq!(s, 204, "{a}");
    let (s, a) = call(&h0, "GET", &format!("{base}/subscription"), "");
    assert_eq!((s, a["error_code"].as_u64()), (404, Some(40403)), "deleted through broker 1: {a}");
}

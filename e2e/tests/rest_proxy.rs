//! The REST proxy's produce API, black-box over plain HTTP: records
//! produced as JSON, binary and Avro (v2) and through v3 are read back
//! with the Rust consumer exactly as sent, at the partitions and offsets
//! the answers name; every refused request answers Confluent's code and
//! leaves the topic as it was.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use tributary_client::avro::AvroDeserializer;
use tributary_client::registry::RegistryClient;
use tributary_client::{Admin, OffsetSpec};
use tributary_e2e::{http_send_as, read_to_end, Broker};

const JSON: &str = "application/vnd.kafka.json.v2+json";
const BINARY: &str = "application/vnd.kafka.binary.v2+json";
const AVRO: &str = "application/vnd.kafka.avro.v2+json";

const PAYMENT: &str = r#"{"type":"record","name":"Payment","namespace":"shop","fields":[
    {"name":"id","type":"string"},{"name":"amount","type":"double"},
    {"name":"note","type":["null","string"],"default":null}]}"#;

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// POSTs `body` to `path` as `content_type`; the status and parsed answer.
fn post(b: &Broker, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let (status, text) = http_send_as(&b.http, "POST", path, content_type, body).unwrap();
    (status, parse(&text))
}

/// The `(partition, offset)` of each record of a v2 answer.
fn placed(answer: &Value) -> Vec<(u64, u64)> {
    let offsets = answer["offsets"].as_array().unwrap_or_else(|| panic!("no offsets: {answer}"));
    offsets
        .iter()
        .map(|o| {
            assert!(o["error_code"].is_null() && o["error"].is_null(), "{answer}");
            (o["partition"].as_u64().unwrap(), o["offset"].as_u64().unwrap())
        })
        .collect()
}

/// Every record of `topic`-`partition` as (key, value) text.
async fn read(b: &Broker, topic: &str, partition: u32) -> Vec<(Option<String>, Option<String>)> {
    let text = |v: &Option<bytes::Bytes>| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    read_to_end(&b.bootstrap(), topic, partition)
        .await
        .unwrap()
        .iter()
        .map(|r| (text(&r.key), text(&r.value)))
        .collect()
}

async fn create(admin: &Admin, topic: &str, partitions: u32) {
    admin.create_topic(topic, partitions, 1, BTreeMap::new()).await.unwrap();
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_and_v3_produce_is_read_back_exactly() {
    let b = Broker::start().unwrap();
    let admin = Admin::connect(&b.bootstrap()).await.unwrap();
    create(&admin, "j", 3).await;
    create(&admin, "keyed", 3).await;
    create(&admin, "pay", 1).await;

    // Listing and description.
    let (s, text) = http_send_as(&b.http, "GET", "/topics", JSON, "").unwrap();
    assert_eq!((s, parse(&text)), (200, json!(["j", "keyed", "pay"])), "internal topics are not listed");
    let (s, text) = http_send_as(&b.http, "GET", "/topics/j", JSON, "").unwrap();
    let t = parse(&text);
    assert_eq!((s, t["name"].as_str(), t["partitions"].as_array().map(Vec::len)), (200, Some("j"), Some(3)));

    // JSON: explicit partitions; the stored bytes are each value's JSON text.
    let body = json!({"records": [
        {"value": {"n": 1}, "partition": 0},
        {"key": "k", "value": [1, 2], "partition": 2},
        {"value": "s", "partition": 0},
    ]});
    let (s, a) = post(&b, "/topics/j", JSON, &body.to_string());
    assert_eq!(s, 200, "{a}");
    assert_eq!(placed(&a), vec![(0, 0), (2, 0), (0, 1)]);
    assert!(a["key_schema_id"].is_null() && a["value_schema_id"].is_null(), "{a}");
    assert_eq!(read(&b, "j", 0).await, vec![(None, some(r#"{"n":1}"#)), (None, some(r#""s""#))]);
    assert_eq!(read(&b, "j", 2).await, vec![(some(r#""k""#), some("[1,2]"))]);

    // Binary, to one partition: base64 decoded.
    let body = json!({"records": [{"key": "a2V5", "value": "aGVsbG8="}, {"value": "AAEC"}]});
    let (s, a) = post(&b, "/topics/j/partitions/1", BINARY, &body.to_string());
    assert_eq!((s, placed(&a)), (200, vec![(1, 0), (1, 1)]), "{a}");
    let stored = read_to_end(&b.bootstrap(), "j", 1).await.unwrap();
    assert_eq!(stored[0].key.as_deref(), Some(&b"key"[..]));
    assert_eq!(stored[0].value.as_deref(), Some(&b"hello"[..]));
    assert_eq!(stored[1].value.as_deref(), Some(&[0u8, 1, 2][..]));

    // Without a partition, one key always lands on one partition, in order.
    let body = json!({"records": (0..4).map(|i| json!({"key": "same", "value": i})).collect::<Vec<_>>()});
    let (s, a) = post(&b, "/topics/keyed", JSON, &body.to_string());
    assert_eq!(s, 200, "{a}");
    let p = placed(&a);
    assert!(p.iter().all(|(part, _)| *part == p[0].0), "{a}");
    // The stored key is the JSON text `"same"`, hashed as the Rust client hashes it.
    let expected = tributary_client::partitioner::key_partition(br#""same""#, 3);
    assert_eq!(p[0].0, u64::from(expected), "partitioned like the native client: {a}");
    assert_eq!(p.iter().map(|(_, o)| *o).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    let values: Vec<_> = read(&b, "keyed", p[0].0 as u32).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec![some("0"), some("1"), some("2"), some("3")]);

    // Avro: the schema registered under pay-value, then named by its id.
    let payments = [
        json!({"id": "p1", "amount": 1.5, "note": null}),
        json!({"id": "p2", "amount": -20.25, "note": "refund"}),
        json!({"id": "p3", "amount": 0.0, "note": "ünïcode"}),
    ];
    let body = json!({"value_schema": PAYMENT, "records": [{"value": payments[0]}, {"value": payments[1]}]});
    let (s, a) = post(&b, "/topics/pay", AVRO, &body.to_string());
    assert_eq!((s, placed(&a)), (200, vec![(0, 0), (0, 1)]), "{a}");
    let id = a["value_schema_id"].as_u64().unwrap_or_else(|| panic!("no value_schema_id: {a}"));
    assert!(a["key_schema_id"].is_null(), "{a}");
    let (_, v) = parse_get(&b, "/subjects/pay-value/versions/latest");
    assert_eq!(v["id"].as_u64(), Some(id), "registered under the topic's value subject");
    let body = json!({"value_schema_id": id, "records": [{"value": payments[2]}]});
    let (s, a) = post(&b, "/topics/pay", AVRO, &body.to_string());
    assert_eq!((s, placed(&a), a["value_schema_id"].as_u64()), (200, vec![(0, 2)], Some(id)), "{a}");
    let registry = Arc::new(RegistryClient::new(&format!("http://{}", b.http)).unwrap());
    let de = AvroDeserializer::new(registry);
    let mut decoded = Vec::new();
    for r in read_to_end(&b.bootstrap(), "pay", 0).await.unwrap() {
        decoded.push(de.deserialize_json(r.value.as_deref().unwrap()).await.unwrap());
    }
    assert_eq!(decoded, payments.to_vec(), "the Avro deserializer reads what the proxy encoded");

    // v3: one record, the cluster's id in the path.
    let cluster_id = admin.describe_cluster().await.unwrap().cluster_id;
    let body = json!({"partition_id": 1, "key": {"type": "STRING", "data": "k3"},
                      "value": {"type": "JSON", "data": {"x": 1}}});
    let path = format!("/v3/clusters/{cluster_id}/topics/j/records");
    let (s, a) = post(&b, &path, "application/json", &body.to_string());
    assert_eq!(s, 200, "{a}");
    assert_eq!(
        (&a["cluster_id"], &a["topic_name"], &a["partition_id"], &a["offset"]),
        (&json!(cluster_id), &json!("j"), &json!(1), &json!(2)),
        "{a}"
    );
    assert_eq!(
        (&a["key"], &a["value"]),
        (&json!({"type": "STRING", "size": 2}), &json!({"type": "JSON", "size": 7}))
    );
    assert!(a["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{a}");
    let stored = read(&b, "j", 1).await;
    assert_eq!(stored[2], (some("k3"), some(r#"{"x":1}"#)));

    // v3 streaming: several records in one body, one answer per line in
    // order; the record that fails its checks alone is not produced.
    let body = [
        json!({"partition_id": 0, "value": {"type": "STRING", "data": "s1"}}),
        json!({"partition_id": 7, "value": {"type": "STRING", "data": "bad"}}),
        json!({"partition_id": 0, "value": {"type": "STRING", "data": "s2"}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let (s, text) = http_send_as(&b.http, "POST", &path, "application/json", &body).unwrap();
    assert_eq!(s, 200, "{text}");
    let answers: Vec<Value> = text.lines().map(parse).collect();
    let codes: Vec<_> = answers.iter().map(|a| a["error_code"].as_u64()).collect();
    assert_eq!(codes, vec![Some(200), Some(404), Some(200)], "{text}");
    assert_eq!((answers[0]["offset"].as_u64(), answers[2]["offset"].as_u64()), (Some(2), Some(3)), "{text}");
    let stored = read(&b, "j", 0).await;
    assert_eq!(stored[2..], [(None, some("s1")), (None, some("s2"))]);
}

fn parse_get(b: &Broker, path: &str) -> (u16, Value) {
    let (s, text) = b.http_send("GET", path, "").unwrap();
    (s, parse(&text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_answer_confluents_codes_and_produce_nothing() {
    let b = Broker::start().unwrap();
    let admin = Admin::connect(&b.bootstrap()).await.unwrap();
    create(&admin, "e", 2).await;
    let cluster_id = admin.describe_cluster().await.unwrap().cluster_id;
    let one = json!({"records": [{"value": 1}]}).to_string();
    let too_many = json!({"records": vec![json!({"value": 1}); 10_001]}).to_string();
    let avro_bad_datum = json!({"value_schema": PAYMENT, "records": [{"value": {"id": 5}}]}).to_string();
    let v3 = json!({"value": {"type": "JSON", "data": 1}}).to_string();
    let v3_path = format!("/v3/clusters/{cluster_id}/topics/e/records");
    let v3_nope = format!("/v3/clusters/{cluster_id}/topics/nope/records");
    let cases: Vec<(&str, &str, String, u16, u64)> = vec![
        ("/topics/nope", JSON, one.clone(), 404, 40401),
        ("/topics/__schemas", JSON, one.clone(), 404, 40401),
        ("/topics/e", "text/plain", one.clone(), 415, 415),
        ("/topics/e", "application/json", one.clone(), 415, 415),
        ("/topics/e", JSON, "{not json".into(), 400, 400),
        ("/topics/e", JSON, r#"{"records": [{"valu": 1}]}"#.into(), 422, 422),
        ("/topics/e", JSON, too_many, 422, 422),
        (
            "/topics/e",
            JSON,
            r#"{"records": [{"value": 1}, {"value": 2, "partition": 2}]}"#.into(),
            404,
            40402,
        ),
        ("/topics/e/partitions/2", JSON, one.clone(), 404, 40402),
        ("/topics/e", BINARY, r#"{"records": [{"value": "not base64!"}]}"#.into(), 422, 422),
        ("/topics/e", AVRO, one.clone(), 422, 42202),
        (
            "/topics/e",
            AVRO,
            json!({"value_schema_id": 999, "records": [{"value": 1}]}).to_string(),
            404,
            40403,
        ),
        ("/topics/e", AVRO, avro_bad_datum, 422, 42203),
        (
            "/topics/e",
            AVRO,
            json!({"value_schema": "{\"type\": \"recrod\"}", "records": [{"value": 1}]}).to_string(),
            422,
            42205,
        ),
        (
            "/topics/e",
            JSON,
            format!(r#"{{"records": [{{"value": "{}"}}]}}"#, "x".repeat((8 << 20) + 1024)),
            413,
            413,
        ),
        ("/v3/clusters/not-this-one/topics/e/records", "application/json", v3.clone(), 404, 404),
        (v3_nope.as_str(), "application/json", v3.clone(), 404, 40403),
        (v3_path.as_str(), "application/json", "{not json".into(), 400, 400),
        (
            v3_path.as_str(),
            "application/json",
            json!({"value": {"type": "AVRO", "data": 1}}).to_string(),
            400,
            400,
        ),
        (
            v3_path.as_str(),
            "application/json",
            json!({"partition_id": 9, "value": {"data": 1}}).to_string(),
            404,
            40402,
        ),
        (v3_path.as_str(), "text/plain", v3.clone(), 415, 415),
    ];
    for (path, ct, body, status, code) in &cases {
        let (s, text) = http_send_as(&b.http, "POST", path, ct, body).unwrap();
        let got = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["error_code"].as_u64());
        assert_eq!((s, got), (*status, Some(*code)), "POST {path} as {ct}: {text}");
    }
    for p in 0..2 {
        assert_eq!(
            admin.list_offsets("e", p, OffsetSpec::Latest).await.unwrap(),
            0,
            "partition {p} stayed empty"
        );
    }
}

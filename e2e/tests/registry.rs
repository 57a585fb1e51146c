//! The embedded schema registry, black-box: Confluent's Python client
//! against a three-broker cluster (writes forwarded to the leader of
//! `__schemas`, reads on every broker), and the durability of ids: they
//! survive a clean restart and kill -9, and are never handed out twice,
//! also when the leader of `__schemas` dies.

use std::time::Duration;

use serde_json::{json, Value};
use tributary_e2e::cluster::Cluster;
use tributary_e2e::{http_send, Broker};

const USER_V1: &str = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"}]}"#;

/// A distinct schema per `n` (a record with `n` in its name).
fn schema(n: u32) -> String {
    format!(r#"{{"type":"record","name":"R{n}","fields":[{{"name":"f","type":"int"}}]}}"#)
}

fn body(schema: &str) -> String {
    json!({ "schema": schema }).to_string()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Registers `schema` under `subject` through `addr`, retrying while the
/// cluster elects a leader for `__schemas` (50003 is retriable).
fn register(addr: &std::net::SocketAddr, subject: &str, schema: &str) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) =
            http_send(addr, "POST", &format!("/subjects/{subject}/versions"), &body(schema)).unwrap();
        if status == 200 {
            return parse(&text)["id"].as_u64().unwrap_or_else(|| panic!("no id: {text}"));
        }
        assert!(
            parse(&text)["error_code"] == 50003 && std::time::Instant::now() < deadline,
            "register {subject} via {addr}: {status} {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn schema_by_id(addr: &std::net::SocketAddr, id: u64) -> (u16, Value) {
    let (status, text) = http_send(addr, "GET", &format!("/schemas/ids/{id}"), "").unwrap();
    (status, parse(&text))
}

/// The Python interpreter of the venv that `scripts/registry-venv.sh`
/// fills (scripts/test.sh exports it).
fn python() -> Option<String> {
    std::env::var("TRIBUTARY_REGISTRY_PYTHON").ok().filter(|p| !p.is_empty())
}

#[test]
fn confluent_python_client_against_a_cluster() {
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED confluent_python_client_against_a_cluster: TRIBUTARY_REGISTRY_PYTHON is not set \
             (scripts/test.sh sets it up with scripts/registry-venv.sh)"
        );
        return;
    };
    let c = Cluster::start(3, "").unwrap();
    let urls: Vec<String> = (0..3).map(|i| format!("http://{}", c.broker(i).http)).collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/registry_client.py");
    let out = std::process::Command::new(&python).arg(script).args(&urls).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nbroker 0 log tail:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.broker(0).logs()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn errors_are_confluents_and_nothing_is_stored() {
    let b = Broker::start().unwrap();
    let cases: &[(&str, &str, &str, u16, u64)] = &[
        ("GET", "/subjects/nope/versions", "", 404, 40401),
        ("GET", "/schemas/ids/7", "", 404, 40403),
        ("POST", "/subjects/t/versions", r#"{"schema": "{\"type\": \"recrod\"}"}"#, 422, 42201),
        ("POST", "/subjects/t/versions", "not json", 422, 422),
        ("GET", "/subjects/t/versions/zero", "", 422, 42202),
        ("PUT", "/config", r#"{"compatibility": "SIDEWAYS"}"#, 422, 42203),
        ("GET", "/config/t", "", 404, 40408),
        ("DELETE", "/subjects/nope", "", 404, 40401),
    ];
    for (method, path, req, status, code) in cases {
        let (s, text) = b.http_send(method, path, req).unwrap();
        assert_eq!(
            (s, parse(&text)["error_code"].as_u64()),
            (*status, Some(*code)),
            "{method} {path}: {text}"
        );
    }
    let huge = "x".repeat(3 << 20);
    let (s, text) = b.http_send("POST", "/subjects/t/versions", &body(&huge)).unwrap();
    assert_eq!((s, parse(&text)["error_code"].as_u64()), (413, Some(413)), "{text}");
    // Nothing was stored by any of them: the first id is still 1.
    assert_eq!(b.http_send("GET", "/subjects", "").unwrap(), (200, "[]".to_string()));
    assert_eq!(register(&b.http, "t-value", USER_V1), 1);
    let (s, text) = b.http_send("GET", "/subjects/t-value/versions/latest", "").unwrap();
    assert_eq!(s, 200, "{text}");
    let v = parse(&text);
    assert_eq!(
        (v["subject"].as_str(), v["version"].as_u64(), v["id"].as_u64()),
        (Some("t-value"), Some(1), Some(1))
    );
    let (_, raw) = b.http_send("GET", "/subjects/t-value/versions/1/schema", "").unwrap();
    assert_eq!(parse(&raw)["name"], "User");
}

#[test]
fn ids_survive_restart_and_kill9_and_are_never_reused() {
    let mut b = Broker::start().unwrap();
    assert_eq!(register(&b.http, "a", &schema(1)), 1);
    assert_eq!(register(&b.http, "b", &schema(2)), 2);
    // Id 2 is deleted for good: no version holds it any more.
    assert_eq!(b.http_send("DELETE", "/subjects/b", "").unwrap().0, 200);
    assert_eq!(b.http_send("DELETE", "/subjects/b?permanent=true", "").unwrap().0, 200);
    assert_eq!(schema_by_id(&b.http, 2).0, 404);

    b.kill9().unwrap();
    b.restart().unwrap();
    let (s, v) = schema_by_id(&b.http, 1);
    assert_eq!((s, v["schema"].as_str().map(|t| t.contains("R1"))), (200, Some(true)), "{v}");
    assert_eq!(register(&b.http, "a", &schema(1)), 1, "the same schema keeps its id after kill -9");
    assert_eq!(register(&b.http, "c", &schema(3)), 3, "id 2 was given once: never again");

    b.terminate().unwrap();
    b.restart().unwrap();
    assert_eq!(schema_by_id(&b.http, 3).0, 200);
    assert_eq!(register(&b.http, "d", &schema(2)), 4, "the text of deleted id 2 comes back as a new id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_of_schemas_dies_and_ids_continue() {
    let mut c = Cluster::start(3, "").unwrap();
    let http: Vec<std::net::SocketAddr> = (0..3).map(|i| c.broker(i).http).collect();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(register(&http[n as usize % 3], &format!("s{n}"), &schema(n)));
    }
    assert_eq!(ids, vec![1, 2, 3, 4, 5], "one order of ids, whichever broker took the write");

    let admin = tributary_client::admin::Admin::connect(&c.bootstrap()).await.unwrap();
    let leader = admin.describe_topic("__schemas").await.unwrap().partitions[0].leader as usize;
    drop(admin);
    c.kill(leader).unwrap();
    let other = (leader + 1) % 3;
    let next = register(&http[other], "after", &schema(100));
    assert_eq!(next, 6, "the new leader continues after every id the old one gave");
    for i in (0..3).filter(|i| *i != leader) {
        for id in 1..=6 {
            assert_eq!(schema_by_id(&http[i], id).0, 200, "broker {i}, id {id}");
        }
    }
    c.restart(leader).unwrap();
    c.wait_ready(leader, Duration::from_secs(60)).unwrap();
    let back = c.broker(leader).http;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while schema_by_id(&back, 6).0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the restarted broker never caught up on __schemas");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(register(&back, "again", &schema(101)), 7);
}

const PAYMENT: &str = r#"{"type":"record","name":"Payment","namespace":"shop","fields":[
    {"name":"id","type":"string"},{"name":"amount","type":"double"},
    {"name":"note","type":["null","string"],"default":null}]}"#;

/// Runs `avro_codec.py` with `args`, `input` on stdin; its stdout lines.
fn codec(python: &str, args: &[&str], input: &str) -> Vec<String> {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/avro_codec.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "avro_codec.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn cli_ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Confluent's serializer → Tributary → `tributary consume --avro` (the
/// Rust deserializer), and `tributary produce --value-schema` (the Rust
/// serializer) → Tributary → Confluent's deserializer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_round_trips_with_confluents_serializer() {
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED avro_round_trips_with_confluents_serializer: TRIBUTARY_REGISTRY_PYTHON is not set"
        );
        return;
    };
    let b = Broker::start().unwrap();
    let url = format!("http://{}", b.http);
    let dir = tempfile::tempdir().unwrap();
    let avsc = dir.path().join("payment.avsc");
    std::fs::write(&avsc, PAYMENT).unwrap();
    let avsc = avsc.to_str().unwrap();
    for t in ["from-python", "from-rust"] {
        cli_ok(b.cli(&["topic", "create", t, "--partitions", "1"], "").unwrap());
    }
    let records = [
        json!({"id": "p1", "amount": 1.5, "note": null}),
        json!({"id": "p2", "amount": -20.25, "note": "refund"}),
        json!({"id": "p3", "amount": 0.0, "note": "ünïcode"}),
    ];
    let lines: String = records.iter().map(|r| format!("{r}\n")).collect();

    // Python → Tributary → Rust.
    let framed = codec(&python, &[&url, "encode", "from-python", avsc], &lines);
    let producer = tributary_client::Producer::connect(tributary_client::ProducerConfig {
        bootstrap: b.bootstrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    for f in &framed {
        producer
            .send(tributary_client::ProducerRecord::new("from-python", unhex(f)))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
    let out = cli_ok(
        b.cli(
            &[
                "--registry",
                &url,
                "consume",
                "from-python",
                "--avro",
                "--from-beginning",
                "--max-messages",
                "3",
            ],
            "",
        )
        .unwrap(),
    );
    let decoded: Vec<Value> = out.lines().map(parse).collect();
    assert_eq!(decoded, records, "the Rust deserializer reads what Confluent's serializer wrote");

    // Rust → Tributary → Python.
    cli_ok(b.cli(&["--registry", &url, "produce", "from-rust", "--value-schema", avsc], &lines).unwrap());
    let stored = tributary_e2e::read_to_end(&b.bootstrap(), "from-rust", 0).await.unwrap();
    let hexed: String = stored.iter().map(|r| format!("{}\n", hex(r.value.as_deref().unwrap()))).collect();
    let back: Vec<Value> =
        codec(&python, &[&url, "decode", "from-rust"], &hexed).iter().map(|l| parse(l)).collect();
    assert_eq!(back, records, "Confluent's deserializer reads what the Rust serializer wrote");
    // Both registered the same schema under their topic's subject: one id.
    let (_, a) = b.http_send("GET", "/subjects/from-python-value/versions/1", "").unwrap();
    let (_, r) = b.http_send("GET", "/subjects/from-rust-value/versions/1", "").unwrap();
    assert_eq!(parse(&a)["id"], parse(&r)["id"]);

    // The CLI's schema commands against the same registry.
    let subjects = cli_ok(b.cli(&["--registry", &url, "schema", "list"], "").unwrap());
    assert_eq!(subjects, "from-python-value\nfrom-rust-value\n");
    let id = cli_ok(b.cli(&["--registry", &url, "schema", "register", "other", avsc], "").unwrap());
    assert_eq!(id.trim(), parse(&a)["id"].to_string());
    let bad = dir.path().join("bad.avsc");
    std::fs::write(
        &bad,
        r#"{"type":"record","name":"Payment","namespace":"shop","fields":[{"name":"x","type":"int"}]}"#,
    )
    .unwrap();
    let out = b.cli(&["--registry", &url, "schema", "check", "other", bad.to_str().unwrap()], "").unwrap();
    assert!(!out.status.success(), "an incompatible schema fails the check");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("incompatible"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cli_ok(b.cli(&["--registry", &url, "schema", "config", "other", "--set", "none"], "").unwrap())
            .trim(),
        "NONE"
    );
    assert_eq!(cli_ok(b.cli(&["--registry", &url, "schema", "config"], "").unwrap()).trim(), "BACKWARD");
    let got = cli_ok(b.cli(&["--registry", &url, "schema", "get", "other"], "").unwrap());
    assert_eq!(parse(&got)["name"], "Payment");
}

/// Four brokers, `__schemas` on three: the fourth has no replica, reads
/// `__schemas` from its leader, and forwards writes like the others; and
/// writes racing through all four.
#[test]
fn a_broker_without_a_replica_of_schemas_answers_too() {
    let c = Cluster::start(4, "").unwrap();
    let http: Vec<std::net::SocketAddr> = (0..4).map(|i| c.broker(i).http).collect();
    assert_eq!(register(&http[0], "first", &schema(1)), 1);
    for (i, addr) in http.iter().enumerate() {
        let id = register(addr, &format!("from-{i}"), &schema(10 + i as u32));
        assert_eq!(id, 2 + i as u64, "broker {i}");
    }
    for (i, addr) in http.iter().enumerate() {
        for id in 1..=5 {
            let (s, v) = schema_by_id(addr, id);
            assert_eq!(s, 200, "broker {i}, id {id}: {v}");
        }
        let (_, subjects) = http_send(addr, "GET", "/subjects", "").unwrap();
        assert_eq!(parse(&subjects).as_array().map(Vec::len), Some(5), "broker {i}: {subjects}");
    }

    // Concurrent writes through every broker: distinct schemas get distinct
    // ids, one schema under many subjects gets one id.
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let addr = http[t as usize % 4];
            std::thread::spawn(move || {
                let own = register(&addr, &format!("race-{t}"), &schema(100 + t));
                let shared = register(&addr, &format!("shared-{t}"), &schema(999));
                (own, shared)
            })
        })
        .collect();
    let results: Vec<(u64, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut own: Vec<u64> = results.iter().map(|r| r.0).collect();
    own.sort_unstable();
    own.dedup();
    assert_eq!(own.len(), 8, "every distinct schema got its own id: {results:?}");
    assert!(results.iter().all(|r| r.1 == results[0].1), "one schema, one id: {results:?}");
    assert!(!own.contains(&results[0].1) && own.iter().all(|id| *id > 5), "{results:?}");
}

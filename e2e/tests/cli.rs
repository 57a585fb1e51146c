//! The `tributary` CLI as a person uses it: topics, produce from stdin,
//! consume to stdout, one-line errors and exit codes, and the bench's JSON.

use tributary_e2e::Broker;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "should have failed: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "error must be one line: {err}");
    err
}

#[test]
fn topic_lifecycle() {
    let b = Broker::start().unwrap();
    ok(&b
        .cli(&["topic", "create", "events", "--partitions", "3", "--config", "retention.ms=60000"], "")
        .unwrap());
    ok(&b.cli(&["topic", "create", "audit", "--partitions", "1"], "").unwrap());
    assert_eq!(ok(&b.cli(&["topic", "list"], "").unwrap()), "audit\nevents\n");
    let described = ok(&b.cli(&["topic", "describe", "events"], "").unwrap());
    assert!(described.contains("retention.ms"), "{described}");
    assert!(described.contains("60000"), "{described}");
    ok(&b.cli(&["topic", "alter", "events", "--config", "retention.ms=120000"], "").unwrap());
    assert!(ok(&b.cli(&["topic", "describe", "events"], "").unwrap()).contains("120000"));
    ok(&b.cli(&["topic", "add-partitions", "events", "--total", "5"], "").unwrap());
    let err = one_line_error(&b.cli(&["topic", "add-partitions", "events", "--total", "2"], "").unwrap());
    assert!(err.contains("only grow"), "{err}");
    let err = one_line_error(&b.cli(&["topic", "create", "bad/name", "--partitions", "1"], "").unwrap());
    assert!(err.contains("invalid topic name"), "{err}");
    let err =
        one_line_error(&b.cli(&["topic", "alter", "events", "--config", "retention.ms=x"], "").unwrap());
    assert!(err.contains("retention.ms"), "{err}");
    ok(&b.cli(&["topic", "delete", "audit"], "").unwrap());
    assert_eq!(ok(&b.cli(&["topic", "list"], "").unwrap()), "events\n");
    let err = one_line_error(&b.cli(&["topic", "describe", "audit"], "").unwrap());
    assert!(err.contains("unknown topic 'audit'"), "{err}");
}

#[test]
fn produce_stdin_and_consume_stdout() {
    let b = Broker::start().unwrap();
    ok(&b.cli(&["topic", "create", "lines", "--partitions", "1"], "").unwrap());
    let input: String = (0..100).map(|i| format!("k{}:line {i}\n", i % 3)).collect();
    ok(&b.cli(&["produce", "lines", "--key-separator", ":", "--header", "src=cli"], &input).unwrap());
    let out = ok(&b
        .cli(
            &[
                "consume",
                "lines",
                "--from-beginning",
                "--max-messages",
                "100",
                "--print-key",
                "--print-offset",
            ],
            "",
        )
        .unwrap());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 100);
    assert!(lines[0].contains("k0") && lines[0].ends_with("line 0"), "{}", lines[0]);
    assert!(lines[99].contains("k0") && lines[99].ends_with("line 99"), "{}", lines[99]);
    let values = ok(&b.cli(&["consume", "lines", "--offset", "98", "--max-messages", "2"], "").unwrap());
    assert_eq!(values, "line 98\nline 99\n");
    // Stops when nothing more comes (the idle clock also covers the first
    // fetch, so it is not short).
    let all = ok(&b.cli(&["consume", "lines", "--from-beginning", "--timeout-ms", "3000"], "").unwrap());
    assert_eq!(all.lines().count(), 100);
}

#[test]
fn produce_to_unknown_topic_fails_in_one_line() {
    let b = Broker::start().unwrap();
    let out = b.cli(&["produce", "missing"], "a\nb\n").unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("unknown topic 'missing'"), "{err}");
    // It stops at the first record that cannot be sent and says how many
    // of those it read were acknowledged.
    assert!(err.contains("0 of 1 records acknowledged"), "{err}");
}

#[test]
fn produce_reports_partial_success() {
    let b = Broker::start().unwrap();
    ok(&b.cli(&["topic", "create", "small", "--config", "max.message.bytes=200"], "").unwrap());
    let big = "x".repeat(500);
    let input = format!("ok-1\n{big}\nok-2\n");
    let out = b.cli(&["produce", "small"], &input).unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("max.message.bytes"), "{err}");
    assert!(err.contains("2 of 3 records acknowledged"), "{err}");
    let stored = ok(&b.cli(&["consume", "small", "--from-beginning", "--timeout-ms", "3000"], "").unwrap());
    assert_eq!(stored, "ok-1\nok-2\n");
}

#[test]
fn unreachable_broker_is_a_clear_error() {
    let out = tributary_e2e::run_cli("127.0.0.1:1", &["topic", "list"], "").unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn bench_prints_one_json_line() {
    let b = Broker::start().unwrap();
    ok(&b.cli(&["topic", "create", "bench", "--partitions", "2"], "").unwrap());
    let out = ok(&b
        .cli(
            &[
                "bench",
                "produce",
                "--topic",
                "bench",
                "--records",
                "20000",
                "--record-size",
                "100",
                "--acks",
                "1",
            ],
            "",
        )
        .unwrap());
    let line = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["records"], 20000);
    assert_eq!(v["bytes"], 2_000_000);
    for k in ["seconds", "records_per_sec", "mb_per_sec", "p50_ms", "p99_ms", "p999_ms"] {
        assert!(v[k].as_f64().is_some_and(|x| x >= 0.0), "{k} in {line}");
    }
    let out = ok(&b.cli(&["bench", "consume", "--topic", "bench", "--records", "20000"], "").unwrap());
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["records"], 20000);
}

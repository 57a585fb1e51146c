//! `tributary bench rest`: REST proxy produce against native produce, in
//! one run, into the same topic with the same record size: first the
//! native producer (acks = all, idempotent: what the proxy uses), then
//! JSON batches over HTTP/1.1 keep-alive connections. Prints both rates
//! and their ratio; both are measured from the first send to the last
//! acknowledgement.

use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::{fill, produce};

#[derive(Args, Debug)]
pub struct BenchRestArgs {
    /// Topic to write to; it must exist.
    #[arg(long)]
    pub topic: String,
    /// Records per side (native, then REST).
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Records per REST request.
    #[arg(long, default_value_t = 100)]
    pub batch: u64,
    /// REST requests in flight at once (one connection each).
    #[arg(long, default_value_t = 8)]
    pub connections: u64,
}

#[derive(Serialize, Debug)]
pub struct RestBenchResult {
    records: u64,
    record_size: usize,
    batch: u64,
    connections: u64,
    native_records_per_sec: f64,
    rest_records_per_sec: f64,
    /// REST over native.
    ratio: f64,
}

pub async fn run(bootstrap: &str, http_url: &str, args: BenchRestArgs) -> anyhow::Result<RestBenchResult> {
    if args.record_size < 2 || args.batch == 0 || args.connections == 0 {
        bail!(
            "--record-size must be 2 or more (a JSON string's quotes), --batch and --connections 1 or more"
        );
    }
    let native = produce(bootstrap, fill(&args.topic, args.records, args.record_size)).await?;
    let rest = rest_produce(http_url, &args).await?;
    Ok(RestBenchResult {
        records: args.records,
        record_size: args.record_size,
        batch: args.batch,
        connections: args.connections,
        native_records_per_sec: native.records_per_sec,
        rest_records_per_sec: rest,
        ratio: rest / native.records_per_sec.max(1e-9),
    })
}

/// Records per second through `POST /topics/{topic}` with JSON bodies.
async fn rest_produce(http_url: &str, args: &BenchRestArgs) -> anyhow::Result<f64> {
    let addr = http_url.trim_start_matches("http://").trim_end_matches('/').to_string();
    // Each value is a JSON string whose stored text has record_size bytes.
    let value = serde_json::Value::String("x".repeat(args.record_size - 2));
    let requests = args.records.div_ceil(args.batch);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let share = requests / args.connections + u64::from(c < requests % args.connections);
        let (addr, topic, value, batch, total) =
            (addr.clone(), args.topic.clone(), value.clone(), args.batch, args.records);
        tasks.push(tokio::spawn(async move {
            let body = |n: u64| {
                let records: Vec<_> = (0..n).map(|_| serde_json::json!({ "value": value })).collect();
                Bytes::from(serde_json::json!({ "records": records }).to_string())
            };
            let (full, last) = (body(batch), body(total % batch));
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut sent = 0u64;
            for i in 0..share {
                // The very last request of connection 0 carries the remainder.
                let b =
                    if c == 0 && i + 1 == share && total % batch != 0 { last.clone() } else { full.clone() };
                sender.ready().await?;
                let req = Request::post(format!("/topics/{topic}"))
                    .header(header::HOST, &addr)
                    .header(header::CONTENT_TYPE, "application/vnd.kafka.json.v2+json")
                    .body(Full::new(b))?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let text = resp.into_body().collect().await?.to_bytes();
                if !status.is_success() || has_record_error(&text) {
                    bail!("REST produce answered {status}: {}", String::from_utf8_lossy(&text));
                }
                sent += 1;
            }
            Ok::<u64, anyhow::Error>(sent)
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(args.records as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

/// Whether a v2 produce answer reports a failed record.
fn has_record_error(text: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["offsets"].as_array().map(|o| o.iter().any(|r| !r["error"].is_null())))
        .unwrap_or(true)
}

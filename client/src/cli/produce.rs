//! `tributary produce TOPIC`: one record per stdin line.
//!
//! Records are sent as fast as stdin delivers them (batched by the
//! producer); the command waits for every acknowledgement at the end and
//! fails unless all records were acknowledged.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use tokio::sync::mpsc;
use tributary_client::avro::{AvroSerializer, SubjectStrategy};
use tributary_client::{Acks, Compression, Producer, ProducerConfig, ProducerRecord};

use super::args::{parse_key_value, split_key, strip_newline};

#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Topic to write to (it must exist).
    pub topic: String,
    /// Split each line at the first SEP: before it the key, after it the
    /// value. Lines without SEP are sent without a key.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// 0 (don't wait), 1 (leader appended) or all (every in-sync replica).
    #[arg(long, default_value = "all")]
    pub acks: Acks,
    /// A header on every record, KEY=VALUE (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// Send every record to this partition (default: by key, or spread).
    #[arg(long)]
    pub partition: Option<u32>,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// How long a batch waits for more records, in ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Each line is a JSON value of this Avro schema (.avsc): it is sent
    /// Avro-encoded in Confluent's wire format, the schema registered under
    /// TOPIC-value (see --registry).
    #[arg(long, value_name = "FILE.avsc")]
    pub value_schema: Option<std::path::PathBuf>,
    /// Tracking producer (the audit): stamps `timestamp`, `service` and
    /// `host` headers and reports records sent per window.
    #[arg(long, requires = "service")]
    pub track: bool,
    /// The service name a tracking producer reports as.
    #[arg(long, requires = "track")]
    pub service: Option<String>,
    /// The host a tracking producer reports as [default: this host's name].
    #[arg(long, requires = "track")]
    pub host: Option<String>,
    /// Audit window of a tracking producer, in ms (`audit.window.ms`).
    #[arg(long, default_value_t = 60_000, requires = "track")]
    pub audit_window_ms: u64,
}

impl ProduceArgs {
    /// The tracking settings, with --track.
    pub fn tracking(&self) -> Option<tributary_client::audit::TrackingConfig> {
        let service = self.service.clone().filter(|_| self.track)?;
        let mut t = tributary_client::audit::TrackingConfig::new(service);
        if let Some(h) = &self.host {
            t.host = h.clone();
        }
        t.window = Duration::from_millis(self.audit_window_ms.max(1));
        Some(t)
    }
}

pub async fn run(bootstrap: &str, registry: &str, args: ProduceArgs) -> anyhow::Result<()> {
    let avro = match &args.value_schema {
        Some(file) => {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let r = super::schema::client(registry)?;
            let ser = AvroSerializer::new(r, &text, SubjectStrategy::Topic)?;
            // Registered before the first line: a refusal stops here.
            ser.id(&args.topic).await?;
            Some(ser)
        }
        None => None,
    };
    let producer = Producer::connect(ProducerConfig {
        bootstrap: bootstrap.to_string(),
        acks: args.acks,
        linger: Duration::from_millis(args.linger_ms),
        compression: args.compression,
        tracking: args.tracking(),
        ..ProducerConfig::default()
    })
    .await?;
    let headers: Vec<(String, Option<Bytes>)> =
        args.headers.iter().map(|(k, v)| (k.clone(), Some(Bytes::copy_from_slice(v.as_bytes())))).collect();
    let separator = args.key_separator.as_deref().map(str::as_bytes);

    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || read_lines(tx));
    let mut total: u64 = 0;
    let mut refused = None;
    'read: while let Some(chunk) = rx.recv().await {
        for line in chunk.context("cannot read stdin")? {
            let text = strip_newline(&line);
            let (key, value) = match separator {
                Some(sep) => split_key(text, sep),
                None => (None, text),
            };
            let value = match &avro {
                Some(ser) => {
                    let json: serde_json::Value = serde_json::from_slice(value)
                        .with_context(|| format!("line {}: not JSON", total + 1))?;
                    Bytes::from(
                        ser.serialize_json(&args.topic, &json)
                            .await
                            .with_context(|| format!("line {}", total + 1))?,
                    )
                }
                None => Bytes::copy_from_slice(value),
            };
            let record = ProducerRecord {
                topic: args.topic.clone(),
                partition: args.partition,
                key: key.map(Bytes::copy_from_slice),
                value: Some(value),
                headers: headers.clone(),
                timestamp: None,
            };
            total += 1;
            // Outcomes are counted by the producer; the futures are not needed.
            if let Err(e) = producer.send(record).await {
                // Not even buffered (unknown topic, bad partition): stop reading.
                refused = Some(e);
                break 'read;
            }
        }
    }
    producer.flush().await?;
    let report = producer.delivery_report();
    producer.close().await?;
    if report.acknowledged < total {
        let first = refused.or(report.first_error);
        let why = first.map_or_else(|| "records were not acknowledged".to_string(), |e| e.to_string());
        bail!("{why}; {} of {total} records acknowledged", report.acknowledged);
    }
    Ok(())
}

/// Reads stdin on its own thread (blocking reads stay off the runtime) and
/// passes lines on in chunks: everything already read, up to 1024 lines, so
/// piped input moves in bulk and typed input goes out line by line.
fn read_lines(tx: mpsc::Sender<std::io::Result<Vec<Vec<u8>>>>) {
    let mut reader = std::io::BufReader::with_capacity(1 << 16, std::io::stdin());
    let mut chunk = Vec::new();
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                chunk.push(line);
                if (chunk.len() >= 1024 || reader.buffer().is_empty())
                    && tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err()
                {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
}

//! `tributary bench produce|consume|registry|rest`: throughput and latency
//! against an existing topic, printed as one line of JSON on stdout (a progress bar on
//! stderr only when it is a terminal).
//!
//! Every number is measured, from the first send (or fetch) to the last
//! acknowledgement (or record read): nothing is extrapolated.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tributary_client::{
    Acks, Admin, Assignor, Compression, Consumer, ConsumerConfig, Error, GroupConfig, GroupConsumer,
    LatencySummary, OffsetReset, OffsetSpec, Producer, ProducerConfig, ProducerRecord,
};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Produce N fixed-size records as fast as possible (the topic must exist).
    Produce(BenchProduceArgs),
    /// Read N records from the start of every partition of a topic (or, with
    /// --group, from the group's committed offsets, by C group members).
    Consume(BenchConsumeArgs),
    /// Mirror throughput against plain produce, in one run: fills a topic
    /// on --source, measures produce into this (the destination) cluster,
    /// then mirrors the source topic here and measures the copy rate.
    Mirror(BenchMirrorArgs),
    /// Schema registry lookups by id over HTTP (the registry's state is in
    /// memory: a warm cache on the broker's side), and Avro decodes with
    /// the deserializer's id cache warm.
    Registry(BenchRegistryArgs),
    /// REST proxy produce (JSON batches over HTTP) against native produce
    /// into the same topic, in one run; prints both and the ratio.
    Rest(rest::BenchRestArgs),
}

mod rest;

#[derive(Args, Debug)]
pub struct BenchMirrorArgs {
    /// The source cluster's brokers (the destination is --bootstrap).
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    pub source: String,
    /// Records produced into the source, then mirrored.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Partitions of the source topic (one mirror task each).
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
}

/// `bench mirror`'s JSON line.
#[derive(Serialize, Debug)]
struct MirrorBenchResult {
    records: u64,
    partitions: u32,
    /// acks=all produce into the destination (the baseline).
    produce_records_per_sec: f64,
    /// Records copied per second, from the first copied record to the last.
    mirror_records_per_sec: f64,
    ratio: f64,
    /// From creating the link to the first copied record.
    startup_seconds: f64,
}

#[derive(Args, Debug)]
pub struct BenchRegistryArgs {
    /// Lookups (GET /schemas/ids/ID) in total.
    #[arg(long, default_value_t = 20_000)]
    pub lookups: u64,
    /// Lookups in flight at once (one HTTP connection each).
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
    /// Avro decodes with the id cache warm.
    #[arg(long, default_value_t = 200_000)]
    pub decodes: u64,
}

#[derive(Args, Debug)]
pub struct BenchProduceArgs {
    /// Topic to write to; it must exist.
    #[arg(long)]
    pub topic: String,
    /// Records to send in total.
    #[arg(long)]
    pub records: u64,
    /// Bytes per record value (no key).
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: Acks,
    /// Independent producers (own connections and buffers) splitting the records.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Batch size in bytes [default: 262144].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// How long a batch waits for more records, in ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Produce without idempotence (no producer id or sequence numbers), to
    /// measure what it costs.
    #[arg(long)]
    pub no_idempotence: bool,
    /// Produce as a tracking producer (audit headers on every record,
    /// counts reported per window), to measure what tracking costs.
    #[arg(long)]
    pub track: bool,
}

#[derive(Args, Debug)]
pub struct BenchConsumeArgs {
    /// Topic to read from the start of every partition.
    #[arg(long)]
    pub topic: String,
    /// Records to read; the topic must hold at least this many.
    #[arg(long)]
    pub records: u64,
    /// Most bytes per partition in one fetch.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_partition_bytes: u32,
    /// Give up when no record arrived for this many ms.
    #[arg(long, default_value_t = 10_000)]
    pub idle_timeout_ms: u64,
    /// Read as members of this consumer group (starting from its committed
    /// offsets, or the earliest where there are none; committing as they go).
    #[arg(long)]
    pub group: Option<String>,
    /// Group members sharing the work (each its own connection).
    #[arg(long, default_value_t = 1, requires = "group")]
    pub consumers: usize,
    /// How the group spreads partitions.
    #[arg(long, default_value = "range", requires = "group")]
    pub assignor: Assignor,
}

/// The JSON line. `mb_per_sec` counts record values in MB (10^6 bytes).
#[derive(Serialize, Debug)]
struct BenchResult {
    records: u64,
    bytes: u64,
    seconds: f64,
    records_per_sec: f64,
    mb_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

impl BenchResult {
    fn new(records: u64, bytes: u64, elapsed: Duration, latency: Option<LatencySummary>) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let latency = latency.unwrap_or(LatencySummary {
            count: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
        });
        BenchResult {
            records,
            bytes,
            seconds,
            records_per_sec: records as f64 / seconds,
            mb_per_sec: bytes as f64 / 1e6 / seconds,
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            p999_ms: latency.p999_ms,
        }
    }
}

pub async fn run(bootstrap: &str, registry: &str, cmd: BenchCommand) -> anyhow::Result<()> {
    let result = match cmd {
        BenchCommand::Produce(args) => produce(bootstrap, args).await?,
        BenchCommand::Consume(args) => consume(bootstrap, args).await?,
        BenchCommand::Registry(args) => {
            println!("{}", serde_json::to_string(&registry_lookups(registry, args).await?)?);
            return Ok(());
        }
        BenchCommand::Mirror(args) => {
            println!("{}", serde_json::to_string(&mirror(bootstrap, args).await?)?);
            return Ok(());
        }
        BenchCommand::Rest(args) => {
            println!("{}", serde_json::to_string(&rest::run(bootstrap, registry, args).await?)?);
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn fill(topic: &str, records: u64, record_size: usize) -> BenchProduceArgs {
    BenchProduceArgs {
        topic: topic.to_string(),
        records,
        record_size,
        acks: Acks::All,
        producers: 1,
        batch_size: None,
        compression: Compression::None,
        linger_ms: 5,
        no_idempotence: false,
        track: false,
    }
}

/// Records in `topic` at `admin` (sum of high watermarks); 0 while it does
/// not exist.
async fn records_in(admin: &Admin, topic: &str, partitions: u32) -> u64 {
    let mut total = 0;
    for p in 0..partitions {
        total += admin.list_offsets(topic, p, OffsetSpec::Latest).await.unwrap_or(0).max(0) as u64;
    }
    total
}

/// See [`BenchCommand::Mirror`]. The topics and the link are named
/// `mbench-<ms>` and removed at the end.
async fn mirror(bootstrap: &str, args: BenchMirrorArgs) -> anyhow::Result<MirrorBenchResult> {
    use tributary_client::tributary_proto::v1;
    let tag = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let (source_topic, base_topic, link) =
        (format!("mbench-{tag}"), format!("mbench-base-{tag}"), format!("mbench-{tag}"));
    let source = Admin::connect(&args.source).await?;
    let destination = Admin::connect(bootstrap).await?;
    source.create_topic(&source_topic, args.partitions, 0, Default::default()).await?;
    destination.create_topic(&base_topic, args.partitions, 0, Default::default()).await?;
    produce(&args.source, fill(&source_topic, args.records, args.record_size)).await?;
    let baseline = produce(bootstrap, fill(&base_topic, args.records, args.record_size)).await?;
    let spec = v1::MirrorLinkSpec {
        name: link.clone(),
        source_alias: "mbench".into(),
        source_bootstrap: args.source.clone(),
        topics: source_topic.clone(),
        ..Default::default()
    };
    let created = Instant::now();
    destination.create_mirror_link(spec, false).await?;
    let copied_topic = format!("mbench.{source_topic}");
    let deadline = created + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    let end = loop {
        let n = records_in(&destination, &copied_topic, args.partitions).await;
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= args.records {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the mirror copied {n} of {} records in 10 minutes", args.records);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (start, at_start) = first.unwrap_or((created, 0));
    let seconds = end.duration_since(start).as_secs_f64().max(1e-3);
    let mirror_rate = (args.records - at_start) as f64 / seconds;
    let _ = destination.delete_mirror_link(&link).await;
    for t in [&base_topic, &copied_topic] {
        let _ = destination.delete_topic(t).await;
    }
    let _ = source.delete_topic(&source_topic).await;
    Ok(MirrorBenchResult {
        records: args.records,
        partitions: args.partitions,
        produce_records_per_sec: baseline.records_per_sec,
        mirror_records_per_sec: mirror_rate,
        ratio: mirror_rate / baseline.records_per_sec.max(1e-9),
        startup_seconds: start.duration_since(created).as_secs_f64(),
    })
}

fn progress(total: u64) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} records  {per_sec}  eta {eta}") {
        bar.set_style(style);
    }
    Some(bar)
}

/// Fails with a message that says how to fix it when the topic is missing.
async fn require_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let admin = Admin::connect(bootstrap).await?;
    match admin.partitions(topic).await {
        Ok(_) => Ok(()),
        Err(Error::Status { code: tonic::Code::NotFound, .. }) => bail!(
            "topic '{topic}' does not exist; the benchmark creates nothing: \
             run `tributary topic create {topic} --partitions N` first"
        ),
        Err(e) => Err(e.into()),
    }
}

/// Produce latency is send→ack per record: from the `send` call (so
/// including any wait for buffer memory) to the broker's acknowledgement of
/// the record's batch.
async fn produce(bootstrap: &str, args: BenchProduceArgs) -> anyhow::Result<BenchResult> {
    if args.producers == 0 {
        bail!("--producers must be at least 1");
    }
    require_topic(bootstrap, &args.topic).await?;
    let config = ProducerConfig {
        bootstrap: bootstrap.to_string(),
        acks: args.acks,
        linger: Duration::from_millis(args.linger_ms),
        batch_size: args.batch_size.unwrap_or(ProducerConfig::default().batch_size),
        compression: args.compression,
        record_latency: true,
        enable_idempotence: !args.no_idempotence,
        tracking: args.track.then(|| tributary_client::audit::TrackingConfig::new("bench")),
        ..ProducerConfig::default()
    };
    // One value for every record, never freed: cloning a static `Bytes` is
    // free, where a shared refcount would bounce between the cores.
    let value = Bytes::from_static(Box::leak(vec![b'x'; args.record_size].into_boxed_slice()));
    let mut producers = Vec::with_capacity(args.producers);
    for _ in 0..args.producers {
        producers.push(Producer::connect(config.clone()).await?);
    }
    let bar = progress(args.records);
    let sent = Arc::new(AtomicU64::new(0));
    let ticker = bar.clone().map(|bar| {
        let sent = sent.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(sent.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });

    let start = Instant::now();
    let per = args.records / args.producers as u64;
    let extra = args.records % args.producers as u64;
    let mut tasks = Vec::with_capacity(args.producers);
    for (i, producer) in producers.iter().enumerate() {
        let count = per + u64::from((i as u64) < extra);
        let producer = producer.clone();
        let topic = args.topic.clone();
        let value = value.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..count {
                let record = ProducerRecord {
                    topic: topic.clone(),
                    partition: None,
                    key: None,
                    value: Some(value.clone()),
                    headers: Vec::new(),
                    timestamp: None,
                };
                // Outcomes are counted by the producer (delivery_report).
                drop(producer.send(record).await?);
                if n % 4096 == 4095 {
                    sent.fetch_add(4096, Ordering::Relaxed);
                }
            }
            producer.flush().await?;
            Ok::<(), Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let mut acknowledged = 0;
    let mut latency: Option<Histogram<u64>> = None;
    for p in &producers {
        let report = p.delivery_report();
        if report.failed > 0 {
            let why = report.first_error.map_or_else(|| "unknown error".to_string(), |e| e.to_string());
            bail!("{why}; {} of {} records failed", report.failed, args.records);
        }
        acknowledged += report.acknowledged;
        if let Some(h) = p.latency_histogram() {
            match latency.as_mut() {
                Some(all) => {
                    let _ = all.add(&h);
                }
                None => latency = Some(h),
            }
        }
    }
    for p in producers {
        p.close().await?;
    }
    let summary = latency.as_ref().map(LatencySummary::from_micros);
    Ok(BenchResult::new(acknowledged, acknowledged * args.record_size as u64, elapsed, summary))
}

/// Consume latency is per fetch, not per record: how long each
/// `poll_batches` call that returned data waited for it (what prefetching
/// did not hide of the broker's read and the transfer). Throughput counts
/// record values decoded, up to `--records`.
async fn consume(bootstrap: &str, args: BenchConsumeArgs) -> anyhow::Result<BenchResult> {
    require_topic(bootstrap, &args.topic).await?;
    if let Some(group) = args.group.clone() {
        return consume_group(bootstrap, &group, args).await;
    }
    let mut consumer = Consumer::connect(ConsumerConfig {
        bootstrap: bootstrap.to_string(),
        max_partition_bytes: args.max_partition_bytes,
        max_bytes: 32 << 20,
        ..ConsumerConfig::default()
    })
    .await?;
    consumer.assign_all(&args.topic, OffsetSpec::Earliest).await?;
    let bar = progress(args.records);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let idle_limit = Duration::from_millis(args.idle_timeout_ms);
    let mut records = 0u64;
    let mut bytes = 0u64;
    let start = Instant::now();
    let mut last_data = Instant::now();
    while records < args.records {
        let asked = Instant::now();
        let fetched = consumer.poll_batches(Duration::from_secs(1)).await?;
        let waited = asked.elapsed();
        let before = records;
        for f in &fetched {
            f.for_each_record(|r| {
                if records < args.records {
                    records += 1;
                    bytes += r.value.as_ref().map_or(0, |v| v.len() as u64);
                }
            })?;
        }
        if records > before {
            latency.saturating_record(waited.as_micros().max(1) as u64);
            last_data = Instant::now();
            if let Some(bar) = &bar {
                bar.set_position(records);
            }
        } else if last_data.elapsed() >= idle_limit {
            bail!(
                "only {records} of {} records in topic '{}' after waiting {} ms for more",
                args.records,
                args.topic,
                args.idle_timeout_ms
            );
        }
    }
    let elapsed = start.elapsed();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(BenchResult::new(records, bytes, elapsed, Some(LatencySummary::from_micros(&latency))))
}

/// What the members of a group bench share.
struct GroupProgress {
    wanted: u64,
    records: AtomicU64,
    bytes: AtomicU64,
    /// When the last wanted record was read.
    finished: std::sync::OnceLock<Instant>,
    stop: std::sync::atomic::AtomicBool,
}

impl GroupProgress {
    /// Counts a fetch's records up to `wanted` in all; true once done.
    fn add(&self, sizes: &[u64]) -> bool {
        let n = sizes.len() as u64;
        let before = self.records.fetch_add(n, Ordering::Relaxed);
        let take = n.min(self.wanted.saturating_sub(before)) as usize;
        self.bytes.fetch_add(sizes[..take].iter().sum(), Ordering::Relaxed);
        if before + n >= self.wanted {
            let _ = self.finished.set(Instant::now());
            return true;
        }
        false
    }

    fn counted(&self) -> u64 {
        self.records.load(Ordering::Relaxed).min(self.wanted)
    }
}

/// `--consumers` group members in one process, each on its own task and
/// connection, reading until together they have `--records`. Time runs from
/// the start of the first poll (joining the group included) to the last
/// wanted record; latency is per fetch, merged over the members.
async fn consume_group(bootstrap: &str, group: &str, args: BenchConsumeArgs) -> anyhow::Result<BenchResult> {
    if args.consumers == 0 {
        bail!("--consumers must be at least 1");
    }
    let mut members = Vec::with_capacity(args.consumers);
    for _ in 0..args.consumers {
        let mut config = GroupConfig::new(bootstrap, group);
        config.assignor = args.assignor;
        config.auto_offset_reset = OffsetReset::Earliest;
        config.max_partition_bytes = args.max_partition_bytes;
        config.heartbeat_interval = Duration::from_secs(1);
        let mut member = GroupConsumer::connect(config).await?;
        member.subscribe(&[args.topic.as_str()]).await?;
        members.push(member);
    }
    let shared = Arc::new(GroupProgress {
        wanted: args.records,
        records: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        finished: std::sync::OnceLock::new(),
        stop: std::sync::atomic::AtomicBool::new(false),
    });
    let bar = progress(args.records);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(members.len());
    for mut member in members {
        let progress = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
            let mut sizes = Vec::new();
            while !progress.stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let fetched = member.poll_batches(Duration::from_millis(200)).await?;
                let waited = asked.elapsed();
                sizes.clear();
                for f in &fetched {
                    f.for_each_record(|r| sizes.push(r.value.as_ref().map_or(0, |v| v.len() as u64)))?;
                }
                if !sizes.is_empty() {
                    latency.saturating_record(waited.as_micros().max(1) as u64);
                    if progress.add(&sizes) {
                        progress.stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            member.close().await?;
            Ok::<_, anyhow::Error>(latency)
        }));
    }
    let idle_limit = Duration::from_millis(args.idle_timeout_ms);
    let mut last = 0;
    let mut last_change = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) && !tasks.iter().any(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = shared.counted();
        if let Some(bar) = &bar {
            bar.set_position(now);
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= idle_limit {
            shared.stop.store(true, Ordering::Relaxed);
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for t in tasks {
        let h = t.await??;
        let _ = latency.add(&h);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let Some(&finished) = shared.finished.get() else {
        bail!(
            "only {} of {} records read by group '{group}' from topic '{}' after waiting {} ms for more",
            shared.counted(),
            args.records,
            args.topic,
            args.idle_timeout_ms
        );
    };
    let summary = LatencySummary::from_micros(&latency);
    Ok(BenchResult::new(
        shared.counted(),
        shared.bytes.load(Ordering::Relaxed),
        finished.duration_since(start),
        Some(summary),
    ))
}

#[derive(Serialize, Debug)]
struct RegistryBenchResult {
    lookups: u64,
    concurrency: u64,
    lookup_seconds: f64,
    lookups_per_sec: f64,
    decodes: u64,
    decode_seconds: f64,
    cached_decodes_per_sec: f64,
}

/// Registers a small schema, then looks it up by id over HTTP from
/// `concurrency` tasks, then decodes one framed record `decodes` times.
async fn registry_lookups(url: &str, args: BenchRegistryArgs) -> anyhow::Result<RegistryBenchResult> {
    use tributary_client::avro::{AvroDeserializer, AvroSerializer, SubjectStrategy};
    use tributary_client::registry::RegistryClient;
    const SCHEMA: &str = r#"{"type":"record","name":"BenchRecord","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"}]}"#;
    let client = Arc::new(RegistryClient::new(url)?);
    let ser = AvroSerializer::new(client.clone(), SCHEMA, SubjectStrategy::Topic)?;
    let framed = ser.serialize_json("bench-registry", &serde_json::json!({"id": 7, "name": "seven"})).await?;
    let id = ser.id("bench-registry").await?;
    let concurrency = args.concurrency.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let client = client.clone();
        let n = args.lookups / concurrency + u64::from(t < args.lookups % concurrency);
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                client.request(hyper::Method::GET, &format!("/schemas/ids/{id}"), None).await?;
            }
            Ok::<(), Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let lookup_seconds = start.elapsed().as_secs_f64().max(1e-9);
    let de = AvroDeserializer::new(client);
    de.deserialize(&framed).await?;
    let start = Instant::now();
    for _ in 0..args.decodes {
        de.deserialize(&framed).await?;
    }
    let decode_seconds = start.elapsed().as_secs_f64().max(1e-9);
    Ok(RegistryBenchResult {
        lookups: args.lookups,
        concurrency,
        lookup_seconds,
        lookups_per_sec: args.lookups as f64 / lookup_seconds,
        decodes: args.decodes,
        decode_seconds,
        cached_decodes_per_sec: args.decodes as f64 / decode_seconds,
    })
}

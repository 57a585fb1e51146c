//! `tributary consume TOPIC`: prints records, one value per line.
//!
//! Without `--group` it reads every partition (or one) from a position it
//! is given. With `--group G` it is a member of consumer group G: it reads
//! the partitions the group gives it, from the group's committed offsets,
//! and commits what it printed (auto-commit, and on exit; with
//! `--max-messages`, exactly the records it printed).
//!
//! Output is tab-separated, in this order when asked for:
//! `PARTITION:OFFSET`, key, headers (`k=v,k2=v2`), then the value. Bytes
//! that are not UTF-8 are printed lossily; a missing key or value prints as
//! `null`.
//!
//! A batch that cannot be read stops the command after everything before it
//! was printed: one `error:` line names topic, partition and offset, the
//! exit status is 1, and a group commits nothing past it. `--skip-corrupt`
//! skips such batches instead, with a `warning:` line on stderr for each.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tributary_client::{
    Assignor, Consumer, ConsumerConfig, ConsumerRecord, Error, GroupConfig, GroupConsumer, OffsetReset,
    OffsetSpec, TopicPartition,
};

use tributary_client::avro::AvroDeserializer;

use super::args::parse_start_offset;

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Read only this partition (default: all of them).
    #[arg(long, conflicts_with = "group")]
    pub partition: Option<u32>,
    /// Where to start: earliest, latest or an offset [default: latest].
    #[arg(long, value_name = "earliest|latest|N", value_parser = parse_start_offset, conflicts_with = "group")]
    pub offset: Option<OffsetSpec>,
    /// Start from the earliest record (same as --offset earliest). With
    /// --group: where the group has no committed offset.
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Consume as a member of this consumer group.
    #[arg(long)]
    pub group: Option<String>,
    /// Static group membership: a restart with the same id within the
    /// session timeout gets the same partitions without a rebalance.
    #[arg(long, value_name = "ID", requires = "group")]
    pub instance_id: Option<String>,
    /// How the group spreads partitions: range, roundrobin or
    /// cooperative-sticky (every member must use the same).
    #[arg(long, default_value = "range", requires = "group")]
    pub assignor: Assignor,
    /// Group session timeout in ms: a member silent this long is evicted.
    #[arg(long, default_value_t = 10_000, requires = "group")]
    pub session_timeout_ms: u64,
    /// How often the group member heartbeats, in ms.
    #[arg(long, default_value_t = 3_000, requires = "group")]
    pub heartbeat_interval_ms: u64,
    /// How often the group member commits what it printed, in ms.
    #[arg(long, default_value_t = 5_000, requires = "group")]
    pub auto_commit_interval_ms: u64,
    /// Stop after this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Stop when no record arrived for this many ms [default: keep waiting;
    /// Ctrl-C stops].
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Print the key (or null) before each value.
    #[arg(long)]
    pub print_key: bool,
    /// Print PARTITION:OFFSET before each record.
    #[arg(long)]
    pub print_offset: bool,
    /// Print the headers as KEY=VALUE,KEY=VALUE before each value.
    #[arg(long)]
    pub print_headers: bool,
    /// Skip record batches that cannot be read (a warning on stderr names
    /// each) instead of stopping at the first; their records are lost to
    /// this reader, and with --group to the group.
    #[arg(long)]
    pub skip_corrupt: bool,
    /// Values are Avro in Confluent's wire format: print each as JSON (the
    /// writer schema fetched by id from --registry).
    #[arg(long)]
    pub avro: bool,
    /// Tracking consumer (the audit): counts what it consumed per window
    /// and reports it as tier `consumer:GROUP`.
    #[arg(long, requires = "group")]
    pub track: bool,
    /// The service name a tracking consumer reports as.
    #[arg(long, default_value = "tributary-cli", requires = "track")]
    pub service: String,
    /// Audit window of a tracking consumer, in ms (`audit.window.ms`).
    #[arg(long, default_value_t = 60_000, requires = "track")]
    pub audit_window_ms: u64,
}

impl ConsumeArgs {
    pub fn start(&self) -> OffsetSpec {
        if self.from_beginning {
            OffsetSpec::Earliest
        } else {
            self.offset.unwrap_or(OffsetSpec::Latest)
        }
    }
}

/// How long one poll waits when there is no idle timeout to honour; short
/// enough that Ctrl-C and --max-messages feel immediate.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(bootstrap: &str, registry: &str, args: ConsumeArgs) -> anyhow::Result<()> {
    let avro = if args.avro { Some(AvroDeserializer::new(super::schema::client(registry)?)) } else { None };
    if let Some(group) = args.group.clone() {
        return run_group(bootstrap, &group, args, avro.as_ref()).await;
    }
    let mut consumer =
        Consumer::connect(ConsumerConfig { bootstrap: bootstrap.to_string(), ..ConsumerConfig::default() })
            .await?;
    match args.partition {
        Some(p) => consumer.assign(&args.topic, p, args.start()).await?,
        None => consumer.assign_all(&args.topic, args.start()).await?,
    }
    print_records(&mut consumer, &args, avro.as_ref()).await
}

/// Where `print_records` gets records: a standalone consumer or a group
/// member.
trait RecordSource {
    async fn next_records(&mut self, wait: Duration) -> tributary_client::Result<Vec<ConsumerRecord>>;

    /// Records that were returned but not printed (the --max-messages cut).
    fn not_printed(&mut self, _rest: &[ConsumerRecord]) {}

    /// Moves a partition past the batch it cannot read; the new position.
    fn skip_corrupt(&mut self, topic: &str, partition: u32) -> Option<i64>;
}

impl RecordSource for Consumer {
    async fn next_records(&mut self, wait: Duration) -> tributary_client::Result<Vec<ConsumerRecord>> {
        self.poll(wait).await
    }

    fn skip_corrupt(&mut self, topic: &str, partition: u32) -> Option<i64> {
        Consumer::skip_corrupt(self, topic, partition)
    }
}

impl RecordSource for GroupConsumer {
    async fn next_records(&mut self, wait: Duration) -> tributary_client::Result<Vec<ConsumerRecord>> {
        self.poll(wait).await
    }

    fn skip_corrupt(&mut self, topic: &str, partition: u32) -> Option<i64> {
        GroupConsumer::skip_corrupt(self, &TopicPartition::new(topic, partition))
    }

    /// Moves each partition back to its first unprinted record, so the
    /// final commit covers exactly what was printed.
    fn not_printed(&mut self, rest: &[ConsumerRecord]) {
        for (tp, offset) in first_unprinted(rest) {
            self.seek(&tp, offset);
        }
    }
}

/// Prints records until --max-messages, --timeout-ms of silence, Ctrl-C or
/// a closed stdout.
async fn print_records(
    source: &mut impl RecordSource,
    args: &ConsumeArgs,
    avro: Option<&AvroDeserializer>,
) -> anyhow::Result<()> {
    let idle_limit = args.timeout_ms.map(Duration::from_millis);
    let mut printed: u64 = 0;
    let mut last_record = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut out = Vec::with_capacity(64 << 10);
    loop {
        if args.max_messages.is_some_and(|max| printed >= max) {
            return Ok(());
        }
        let wait = match idle_limit {
            Some(limit) => {
                let left = limit.saturating_sub(last_record.elapsed());
                if left.is_zero() {
                    return Ok(());
                }
                left.min(POLL)
            }
            None => POLL,
        };
        let polled = tokio::select! {
            r = source.next_records(wait) => r,
            _ = &mut ctrl_c => return Ok(()),
        };
        let records = match polled {
            Ok(records) => records,
            Err(Error::CorruptRecord { topic, partition, offset, reason }) => {
                if !args.skip_corrupt {
                    bail!(
                        "cannot read {topic}-{partition} at offset {offset}: {reason}; stopped there, \
                         everything before it was printed (--skip-corrupt skips unreadable batches)"
                    );
                }
                // Not skipped only if the partition went elsewhere meanwhile
                // (a rebalance); it is reported again if still stuck.
                if let Some(to) = source.skip_corrupt(&topic, partition) {
                    eprintln!("warning: skipped {}: {reason}", skipped_range(&topic, partition, offset, to));
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if records.is_empty() {
            continue;
        }
        let records = match avro {
            Some(d) => decode_avro(d, records).await?,
            None => records,
        };
        last_record = Instant::now();
        out.clear();
        let mut shown = 0;
        for r in &records {
            if args.max_messages.is_some_and(|max| printed >= max) {
                break;
            }
            format_record(&mut out, r, args);
            printed += 1;
            shown += 1;
        }
        source.not_printed(&records[shown..]);
        if !write_out(&out)? {
            return Ok(());
        }
    }
}

/// Replaces each Avro value with its JSON text.
async fn decode_avro(
    d: &AvroDeserializer,
    mut records: Vec<ConsumerRecord>,
) -> anyhow::Result<Vec<ConsumerRecord>> {
    for r in &mut records {
        if let Some(v) = &r.value {
            let json = d
                .deserialize_json(v)
                .await
                .with_context(|| format!("{}-{} offset {}", r.topic, r.partition, r.offset))?;
            r.value = Some(bytes::Bytes::from(json.to_string()));
        }
    }
    Ok(records)
}

/// "t-0 offset 3" or "t-0 offsets 3..=5": what a skip from `offset` to
/// `to` (exclusive) passed over.
fn skipped_range(topic: &str, partition: u32, offset: i64, to: i64) -> String {
    if to <= offset + 1 {
        format!("{topic}-{partition} offset {offset}")
    } else {
        format!("{topic}-{partition} offsets {offset}..={}", to - 1)
    }
}

/// Writes to stdout; false when the reader went away (`| head`), which is a
/// normal way to stop.
fn write_out(out: &[u8]) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(out).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// As a group member. Records are printed before the next poll, so what
/// auto-commit commits was printed; at --max-messages, partitions with
/// records returned but not printed are moved back to the first of those
/// before the final commit in `close`.
async fn run_group(
    bootstrap: &str,
    group: &str,
    args: ConsumeArgs,
    avro: Option<&AvroDeserializer>,
) -> anyhow::Result<()> {
    let mut config = GroupConfig::new(bootstrap, group);
    config.group_instance_id = args.instance_id.clone();
    config.assignor = args.assignor;
    config.session_timeout = Duration::from_millis(args.session_timeout_ms);
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms);
    config.auto_commit_interval = Duration::from_millis(args.auto_commit_interval_ms);
    config.auto_offset_reset = if args.from_beginning { OffsetReset::Earliest } else { OffsetReset::Latest };
    if args.track {
        let mut t = tributary_client::audit::TrackingConfig::new(args.service.clone());
        t.window = Duration::from_millis(args.audit_window_ms.max(1));
        config.tracking = Some(t);
    }
    let mut consumer = GroupConsumer::connect(config).await?;
    consumer.subscribe(&[args.topic.as_str()]).await?;
    let printed = print_records(&mut consumer, &args, avro).await;
    // Commit what was printed and leave, even after an error.
    let closed = consumer.close().await;
    printed?;
    closed?;
    Ok(())
}

/// Per partition, the offset of the first record in `rest` (records
/// returned by poll but not printed).
pub fn first_unprinted(rest: &[ConsumerRecord]) -> Vec<(TopicPartition, i64)> {
    let mut firsts: Vec<(TopicPartition, i64)> = Vec::new();
    for r in rest {
        let tp = TopicPartition::new(r.topic.clone(), r.partition);
        match firsts.iter_mut().find(|(t, _)| *t == tp) {
            Some((_, o)) => *o = (*o).min(r.offset),
            None => firsts.push((tp, r.offset)),
        }
    }
    firsts
}

/// Appends one output line for `r`.
pub fn format_record(out: &mut Vec<u8>, r: &ConsumerRecord, args: &ConsumeArgs) {
    fn text(out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            Some(b) => out.extend_from_slice(String::from_utf8_lossy(b).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
    }
    if args.print_offset {
        out.extend_from_slice(format!("{}:{}\t", r.partition, r.offset).as_bytes());
    }
    if args.print_key {
        text(out, r.key.as_deref());
        out.push(b'\t');
    }
    if args.print_headers {
        for (i, (k, v)) in r.headers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(k.as_bytes());
            if let Some(v) = v {
                out.push(b'=');
                text(out, Some(v));
            }
        }
        out.push(b'\t');
    }
    text(out, r.value.as_deref());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use clap::Parser;

    fn args(flags: &[&str]) -> ConsumeArgs {
        let mut argv = vec!["tributary", "consume", "t"];
        argv.extend_from_slice(flags);
        match crate::cli::Cli::try_parse_from(argv) {
            Ok(crate::cli::Cli { command: crate::cli::Command::Consume(c), .. }) => c,
            other => panic!("unexpected parse: {other:?}"),
        }
    }

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 2,
            offset: 17,
            timestamp: 0,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v\xff")),
            headers: vec![("a".into(), Some(Bytes::from_static(b"1"))), ("b".into(), None)],
        }
    }

    fn line(flags: &[&str]) -> String {
        let mut out = Vec::new();
        format_record(&mut out, &record(), &args(flags));
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn value_only_by_default() {
        assert_eq!(line(&[]), "v\u{fffd}\n");
    }

    #[test]
    fn prefixes_in_order() {
        assert_eq!(
            line(&["--print-offset", "--print-key", "--print-headers"]),
            "2:17\tk\ta=1,b\tv\u{fffd}\n"
        );
        assert_eq!(line(&["--print-key"]), "k\tv\u{fffd}\n");
    }

    #[test]
    fn unprinted_records_rewind_each_partition_to_its_first() {
        let at = |partition, offset| ConsumerRecord { partition, offset, ..record() };
        let rest = [at(0, 7), at(0, 8), at(1, 3), at(0, 9)];
        assert_eq!(
            first_unprinted(&rest),
            vec![(TopicPartition::new("t", 0), 7), (TopicPartition::new("t", 1), 3)]
        );
        assert!(first_unprinted(&[]).is_empty());
    }

    #[test]
    fn group_flags() {
        let c = args(&["--group", "g", "--instance-id", "i-1", "--assignor", "cooperative-sticky"]);
        assert_eq!(c.group.as_deref(), Some("g"));
        assert_eq!(c.instance_id.as_deref(), Some("i-1"));
        assert_eq!(c.assignor, Assignor::CooperativeSticky);
        assert_eq!(c.session_timeout_ms, 10_000);
        let bad = |flags: &[&str]| {
            let mut argv = vec!["tributary", "consume", "t"];
            argv.extend_from_slice(flags);
            crate::cli::Cli::try_parse_from(argv).is_err()
        };
        assert!(bad(&["--group", "g", "--offset", "3"]));
        assert!(bad(&["--group", "g", "--partition", "0"]));
        assert!(bad(&["--instance-id", "i"]));
        assert!(bad(&["--group", "g", "--assignor", "sticky"]));
    }

    #[test]
    fn skipped_ranges_read_naturally() {
        assert_eq!(skipped_range("t", 0, 3, 6), "t-0 offsets 3..=5");
        assert_eq!(skipped_range("t", 1, 7, 8), "t-1 offset 7");
        assert!(!args(&[]).skip_corrupt);
        assert!(args(&["--skip-corrupt", "--group", "g"]).skip_corrupt);
    }

    #[test]
    fn null_key_prints_null() {
        let mut r = record();
        r.key = None;
        let mut out = Vec::new();
        format_record(&mut out, &r, &args(&["--print-key"]));
        assert_eq!(String::from_utf8(out).unwrap_or_default(), "null\tv\u{fffd}\n");
    }
}

//! `tributary consume TOPIC`: prints records, one value per line.
//!
//! Output is tab-separated, in this order when asked for:
//! `PARTITION:OFFSET`, key, headers (`k=v,k2=v2`), then the value. Bytes
//! that are not UTF-8 are printed lossily; a missing key or value prints as
//! `null`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tributary_client::{Consumer, ConsumerConfig, ConsumerRecord, OffsetSpec};

use super::args::parse_start_offset;

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Read only this partition (default: all of them).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Where to start: earliest, latest or an offset [default: latest].
    #[arg(long, value_name = "earliest|latest|N", value_parser = parse_start_offset)]
    pub offset: Option<OffsetSpec>,
    /// Start from the earliest record (same as --offset earliest).
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
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

pub async fn run(bootstrap: &str, args: ConsumeArgs) -> anyhow::Result<()> {
    let mut consumer =
        Consumer::connect(ConsumerConfig { bootstrap: bootstrap.to_string(), ..ConsumerConfig::default() })
            .await?;
    match args.partition {
        Some(p) => consumer.assign(&args.topic, p, args.start()).await?,
        None => consumer.assign_all(&args.topic, args.start()).await?,
    }
    let idle_limit = args.timeout_ms.map(Duration::from_millis);
    let mut printed: u64 = 0;
    let mut last_record = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut out = Vec::with_capacity(64 << 10);
    loop {
        if args.max_messages.is_some_and(|max| printed >= max) {
            break;
        }
        let wait = match idle_limit {
            Some(limit) => {
                let left = limit.saturating_sub(last_record.elapsed());
                if left.is_zero() {
                    break;
                }
                left.min(POLL)
            }
            None => POLL,
        };
        let records = tokio::select! {
            r = consumer.poll(wait) => r?,
            _ = &mut ctrl_c => break,
        };
        if records.is_empty() {
            continue;
        }
        last_record = Instant::now();
        out.clear();
        for r in &records {
            if args.max_messages.is_some_and(|max| printed >= max) {
                break;
            }
            format_record(&mut out, r, &args);
            printed += 1;
        }
        let mut stdout = std::io::stdout().lock();
        let written = stdout.write_all(&out).and_then(|()| stdout.flush());
        match written {
            Ok(()) => {}
            // The reader went away (`| head`): that's a normal way to stop.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("cannot write to stdout"),
        }
    }
    Ok(())
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
    fn null_key_prints_null() {
        let mut r = record();
        r.key = None;
        let mut out = Vec::new();
        format_record(&mut out, &r, &args(&["--print-key"]));
        assert_eq!(String::from_utf8(out).unwrap_or_default(), "null\tv\u{fffd}\n");
    }
}

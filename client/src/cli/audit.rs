//! `tributary audit report`: lines up the audit tiers of the cluster it is
//! pointed at (its own counts and every tier its mirror links carried in)
//! per topic and window, and says for each closed window whether it is
//! complete, or how many records are missing or duplicated. Exit status 0
//! only when at least one window is closed and every closed window is
//! complete.

use anyhow::bail;
use clap::{Args, Subcommand};
use tributary_client::audit::{self, Check, Summary, Verdict};

use super::args::parse_rfc3339;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Compare the tiers' counts per topic and window.
    Report(ReportArgs),
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Tiers to compare, comma-separated (`producer`, cluster tier names,
    /// `consumer:GROUP`) [default: every tier found].
    #[arg(long, value_delimiter = ',')]
    pub tiers: Vec<String>,
    /// Only this topic (as any tier names it).
    #[arg(long)]
    pub topic: Option<String>,
    /// Only windows starting at or after this: an RFC 3339 date-time, or a
    /// duration ago (`90s`, `15m`, `2h`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<i64>,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `--since`: RFC 3339, or `N[s|m|h|d]` ago.
pub fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(at) = parse_rfc3339(s) {
        return Ok(at);
    }
    let unit = |c: char| match c {
        's' => Some(1_000),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    let last = s.chars().last().ok_or_else(|| "empty --since".to_string())?;
    let (n, ms) = match unit(last) {
        Some(ms) => (&s[..s.len() - 1], ms),
        None => return Err(format!("'{s}' is neither an RFC 3339 date-time nor a duration like 15m")),
    };
    let n: i64 = n.parse().map_err(|_| format!("'{s}' is not a duration like 90s, 15m or 2h"))?;
    Ok(now_ms() - n.saturating_mul(ms))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub async fn run(bootstrap: &str, cmd: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Report(args) = cmd;
    let read = audit::read_counts(bootstrap, args.since.unwrap_or(0)).await?;
    let checks = audit::line_up(&read, &args.tiers, args.topic.as_deref());
    let now = now_ms();
    let summary = audit::summarize(&checks, read.window_ms, read.grace_ms, now);
    let text =
        if args.json { json(&read, &checks, &summary, now)? } else { lines(&read, &checks, &summary, now) };
    print!("{text}");
    if summary.closed_windows == 0 {
        bail!("no window is closed yet (a window closes {} ms after it ends)", read.grace_ms);
    }
    if !summary.ok() {
        bail!("{} check(s) of closed windows are not complete", summary.incomplete);
    }
    Ok(())
}

fn state(c: &Check, read: &tributary_client::tributary_proto::v1::ReadCountsResponse, now: i64) -> String {
    if audit::is_closed(c.window_start_ms, read.window_ms, read.grace_ms, now) {
        c.verdict().to_string()
    } else {
        "open".to_string()
    }
}

/// One line per check: window, topic, upstream → downstream, counts, verdict.
fn lines(
    read: &tributary_client::tributary_proto::v1::ReadCountsResponse,
    checks: &[Check],
    summary: &Summary,
    now: i64,
) -> String {
    let mut out = String::new();
    for c in checks {
        let topics = if c.upstream_topic == c.downstream_topic {
            c.upstream_topic.clone()
        } else {
            format!("{} -> {}", c.upstream_topic, c.downstream_topic)
        };
        out.push_str(&format!(
            "window {} (+{} ms)\ttopic {topics}\t{} -> {}\texpected {} got {}\t{}\n",
            c.window_start_ms,
            read.window_ms,
            c.upstream,
            c.downstream,
            c.expected,
            c.got,
            state(c, read, now)
        ));
    }
    out.push_str(&format!(
        "{} closed window(s), {} open; {} incomplete check(s)\n",
        summary.closed_windows, summary.open_windows, summary.incomplete
    ));
    out
}

fn json(
    read: &tributary_client::tributary_proto::v1::ReadCountsResponse,
    checks: &[Check],
    summary: &Summary,
    now: i64,
) -> anyhow::Result<String> {
    let rows: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| {
            let closed = audit::is_closed(c.window_start_ms, read.window_ms, read.grace_ms, now);
            let (verdict, n) = match c.verdict() {
                Verdict::Complete => ("complete", 0),
                Verdict::Missing(n) => ("missing", n),
                Verdict::Duplicated(n) => ("duplicated", n),
            };
            serde_json::json!({
                "window_start_ms": c.window_start_ms,
                "window_ms": read.window_ms,
                "closed": closed,
                "upstream": c.upstream,
                "upstream_topic": c.upstream_topic,
                "downstream": c.downstream,
                "downstream_topic": c.downstream_topic,
                "expected": c.expected,
                "got": c.got,
                "verdict": verdict,
                "n": n,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "tier": read.tier,
        "summary": summary,
        "ok": summary.ok(),
        "checks": rows,
    });
    Ok(format!("{}\n", serde_json::to_string_pretty(&doc)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_a_duration_ago() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z"), Ok(1000));
        let ago = parse_since("15m").unwrap();
        assert!((now_ms() - ago - 900_000).abs() < 5_000);
        assert!(parse_since("15x").is_err());
        assert!(parse_since("").is_err());
    }
}

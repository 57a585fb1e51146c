//! The completeness audit's client side (issue 10).
//!
//! Every tier counts the records it handled per topic and time window (by
//! record timestamp): tracking producers what they sent (tier
//! `producer`), tracking consumers what they consumed (`consumer:GROUP`),
//! and each cluster what it appended. The counts go to the broker through
//! the `Audit` RPC, which keeps them in the compacted `__audit` topic keyed
//! by (origin, tier, service, host, topic, window): a count is cumulative
//! for its window, so sending it again replaces, never adds. The report
//! ([`crate::audit::line_up`]) compares the tiers window by window.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tributary_proto::v1;

use crate::cluster::Cluster;
use crate::error::Result;

/// Headers a tracking producer stamps on every record.
pub const TIMESTAMP_HEADER: &str = "timestamp";
pub const SERVICE_HEADER: &str = "service";
pub const HOST_HEADER: &str = "host";
/// The tier of tracking producers' counts.
pub const PRODUCER_TIER: &str = "producer";
/// The default window (`audit.window.ms`).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// The tier of a tracking consumer of `group`.
pub fn consumer_tier(group: &str) -> String {
    format!("consumer:{group}")
}

/// Start of the `window_ms` wide window holding `timestamp` (windows are
/// aligned to the epoch, so every tier buckets alike).
pub fn window_start(timestamp: i64, window_ms: i64) -> i64 {
    let w = window_ms.max(1);
    timestamp.div_euclid(w) * w
}

/// This machine's host name (`/proc/sys/kernel/hostname`, `$HOSTNAME`),
/// or `localhost`.
pub fn local_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// A tracking producer's or consumer's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackingConfig {
    /// Who sends or reads (part of the count key and the `service` header).
    pub service: String,
    /// Part of the count key and the `host` header; default [`local_host`].
    pub host: String,
    /// Count window (`audit.window.ms`); counts are reported once per window.
    pub window: Duration,
}

impl TrackingConfig {
    pub fn new(service: impl Into<String>) -> Self {
        TrackingConfig { service: service.into(), host: local_host(), window: DEFAULT_WINDOW }
    }

    pub fn window_ms(&self) -> i64 {
        (self.window.as_millis() as i64).max(1)
    }
}

/// Per topic: window start → (records, changed since the last report).
/// Keyed by topic first so counting a record allocates nothing.
type Counts = HashMap<String, BTreeMap<i64, (u64, bool)>>;

/// Counts records per (topic, window) and reports the windows that changed
/// through the `Audit` RPC: every window (in the background) and on
/// [`Tracker::report`]. Dropping the last handle stops the background
/// reports (call `report` first to send the last counts).
pub struct Tracker {
    tier: String,
    config: TrackingConfig,
    /// The `service` and `host` header values, built once (every record
    /// carries them).
    service_value: bytes::Bytes,
    host_value: bytes::Bytes,
    cluster: Arc<Cluster>,
    counts: Mutex<Counts>,
    /// One report at a time, so an older snapshot never lands last.
    sending: tokio::sync::Mutex<()>,
}

impl Tracker {
    /// A tracker reporting as `tier` through `bootstrap`.
    pub async fn connect(bootstrap: &str, tier: &str, config: TrackingConfig) -> Result<Arc<Tracker>> {
        let cluster = Arc::new(Cluster::connect(bootstrap, 1).await?);
        Ok(Tracker::start(cluster, tier, config))
    }

    pub(crate) fn start(cluster: Arc<Cluster>, tier: &str, config: TrackingConfig) -> Arc<Tracker> {
        let t = Arc::new(Tracker {
            tier: tier.to_string(),
            service_value: bytes::Bytes::from(config.service.clone()),
            host_value: bytes::Bytes::from(config.host.clone()),
            config,
            cluster,
            counts: Mutex::new(HashMap::new()),
            sending: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(report_loop(Arc::downgrade(&t), t.config.window));
        t
    }

    pub fn config(&self) -> &TrackingConfig {
        &self.config
    }

    /// The `service` and `host` header values.
    pub(crate) fn header_values(&self) -> (&bytes::Bytes, &bytes::Bytes) {
        (&self.service_value, &self.host_value)
    }

    /// One record of `topic` with `timestamp` was sent or consumed.
    pub fn count(&self, topic: &str, timestamp: i64) {
        let window = window_start(timestamp, self.config.window_ms());
        let bump = |windows: &mut BTreeMap<i64, (u64, bool)>| {
            let (n, changed) = windows.entry(window).or_insert((0, false));
            *n += 1;
            *changed = true;
        };
        let mut counts = self.counts.lock();
        if let Some(windows) = counts.get_mut(topic) {
            bump(windows);
            return;
        }
        let mut windows = BTreeMap::new();
        bump(&mut windows);
        counts.insert(topic.to_string(), windows);
    }

    /// The counts so far, per (topic, window start).
    pub fn counts(&self) -> BTreeMap<(String, i64), u64> {
        let counts = self.counts.lock();
        counts
            .iter()
            .flat_map(|(topic, windows)| windows.iter().map(move |(w, (n, _))| ((topic.clone(), *w), *n)))
            .collect()
    }

    /// Sends every window counted since the last report. A failed report
    /// keeps them for the next one.
    pub async fn report(&self) -> Result<()> {
        let _one = self.sending.lock().await;
        let counts: Vec<v1::AuditCount> = {
            let mut all = self.counts.lock();
            let mut out = Vec::new();
            for (topic, windows) in all.iter_mut() {
                for (w, (n, changed)) in windows.iter_mut().filter(|(_, (_, changed))| *changed) {
                    *changed = false;
                    out.push(v1::AuditCount {
                        tier: self.tier.clone(),
                        service: self.config.service.clone(),
                        host: self.config.host.clone(),
                        topic: topic.clone(),
                        window_start_ms: *w,
                        window_ms: self.config.window_ms(),
                        count: *n,
                        origin: String::new(),
                        link: None,
                    });
                }
            }
            out
        };
        if counts.is_empty() {
            return Ok(());
        }
        let request = v1::ReportCountsRequest { counts };
        let sent = self
            .cluster
            .call_any(|c| {
                let request = request.clone();
                async move {
                    c.call("an audit report", Duration::from_secs(10), c.audit().report_counts(request)).await
                }
            })
            .await;
        if sent.is_err() {
            // Marked changed again: the next report sends them (with any
            // records counted meanwhile).
            let mut all = self.counts.lock();
            for c in &request.counts {
                if let Some((_, changed)) = all.get_mut(&c.topic).and_then(|w| w.get_mut(&c.window_start_ms))
                {
                    *changed = true;
                }
            }
        }
        sent.map(|_| ())
    }
}

async fn report_loop(tracker: Weak<Tracker>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(t) = tracker.upgrade() else { return };
        if let Err(e) = t.report().await {
            tracing::warn!(error = %e, "audit report failed; retrying next window");
        }
    }
}

/// Reads the cluster's audit counts (every tier it has, its links, its
/// settings).
pub async fn read_counts(bootstrap: &str, since_ms: i64) -> Result<v1::ReadCountsResponse> {
    let cluster = Cluster::connect(bootstrap, 1).await?;
    cluster
        .call_any(|c| async move {
            c.call(
                "an audit read",
                Duration::from_secs(30),
                c.audit().read_counts(v1::ReadCountsRequest { since_ms }),
            )
            .await
        })
        .await
}

// ---- The report: tiers lined up per topic and window ----

/// One comparison: what `upstream` counted against what `downstream`
/// counted, for one topic (as each tier names it) and window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub window_start_ms: i64,
    pub upstream: String,
    pub upstream_topic: String,
    pub downstream: String,
    pub downstream_topic: String,
    pub expected: u64,
    pub got: u64,
}

impl Check {
    pub fn verdict(&self) -> Verdict {
        match self.got.cmp(&self.expected) {
            std::cmp::Ordering::Equal => Verdict::Complete,
            std::cmp::Ordering::Less => Verdict::Missing(self.expected - self.got),
            std::cmp::Ordering::Greater => Verdict::Duplicated(self.got - self.expected),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "n", rename_all = "snake_case")]
pub enum Verdict {
    Complete,
    Missing(u64),
    Duplicated(u64),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Complete => write!(f, "complete"),
            Verdict::Missing(n) => write!(f, "missing {n}"),
            Verdict::Duplicated(n) => write!(f, "duplicated {n}"),
        }
    }
}

/// (origin, tier, topic, window) → records, summed over services and hosts.
type Totals = BTreeMap<(String, String, String, i64), u64>;

fn totals(counts: &[v1::AuditCount]) -> Totals {
    let mut out = Totals::new();
    for c in counts {
        *out.entry((c.origin.clone(), c.tier.clone(), c.topic.clone(), c.window_start_ms)).or_insert(0) +=
            c.count;
    }
    out
}

/// `re` matched against whole names (how mirror links match topics).
pub fn whole_name(re: &str) -> std::result::Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{re})$"))
}

/// Whether a link copies `topic`.
fn link_copies(link: &v1::AuditLink, topic: &str) -> bool {
    let matches = |re: &str| whole_name(re).is_ok_and(|r| r.is_match(topic));
    matches(&link.topics) && (link.exclude.is_empty() || !matches(&link.exclude))
}

/// (upstream tier, upstream topic, downstream tier, downstream topic,
/// window) → (expected, got).
type Pending = BTreeMap<(String, String, String, String, i64), (u64, u64)>;

/// The checks a report makes from a cluster's counts (see
/// [`read_counts`]): per cluster tier X, producers reporting to X against
/// X, and X against each tracking consumer of X; along each link of the
/// cluster read, the source tier's topic against its copy here (prefix
/// naming: `<alias>.<T>` is T; identity naming: T here is the sum of T in
/// every identity-linked source, named `a+b`). `tiers` (empty: all) keeps
/// the checks whose both sides it names.
pub fn line_up(read: &v1::ReadCountsResponse, tiers: &[String], topic: Option<&str>) -> Vec<Check> {
    let totals = totals(&read.counts);
    let get = |o: &str, t: &str, topic: &str, w: i64| {
        totals.get(&(o.to_string(), t.to_string(), topic.to_string(), w)).copied().unwrap_or(0)
    };
    let mut checks = Pending::new();
    for ((origin, tier, t, w), n) in &totals {
        let cluster = get(origin, origin, t, *w);
        if tier == PRODUCER_TIER {
            checks.insert((tier.clone(), t.clone(), origin.clone(), t.clone(), *w), (*n, cluster));
        } else if tier.starts_with("consumer:") {
            checks.insert((origin.clone(), t.clone(), tier.clone(), t.clone(), *w), (cluster, *n));
        }
    }
    // Every (origin, topic, window) anyone counted.
    let seen: BTreeSet<(&String, &String, i64)> = totals.keys().map(|(o, _, t, w)| (o, t, *w)).collect();
    let here = read.tier.as_str();
    let identity_sources: BTreeSet<&str> = read
        .links
        .iter()
        .filter(|l| l.naming == v1::MirrorNaming::Identity as i32)
        .map(|l| l.source_tier.as_str())
        .collect();
    let sum_name = identity_sources.iter().copied().collect::<Vec<_>>().join("+");
    for link in &read.links {
        let identity = link.naming == v1::MirrorNaming::Identity as i32;
        for &(origin, t, w) in &seen {
            if origin != &link.source_tier || !link_copies(link, t) {
                continue;
            }
            let expected = get(origin, origin, t, w);
            if identity {
                let e = checks
                    .entry((sum_name.clone(), t.clone(), here.to_string(), t.clone(), w))
                    .or_insert((0, 0));
                e.0 += expected;
                e.1 = get(here, here, t, w);
            } else {
                let copy = format!("{}.{t}", link.source_alias);
                let got = get(here, here, &copy, w);
                checks.insert((origin.clone(), t.clone(), here.to_string(), copy, w), (expected, got));
            }
        }
    }
    let wanted = |tier: &str| {
        tiers.is_empty()
            || tiers.iter().any(|t| t == tier)
            || tier.split('+').all(|s| tiers.iter().any(|t| t == s))
    };
    let mut out: Vec<Check> = checks
        .into_iter()
        .filter(|((up, up_topic, down, down_topic, _), _)| {
            wanted(up) && wanted(down) && topic.is_none_or(|t| t == up_topic || t == down_topic)
        })
        .map(|((upstream, upstream_topic, downstream, downstream_topic, w), (expected, got))| Check {
            window_start_ms: w,
            upstream,
            upstream_topic,
            downstream,
            downstream_topic,
            expected,
            got,
        })
        .collect();
    out.sort_by(|a, b| {
        (a.window_start_ms, &a.upstream_topic, &a.upstream).cmp(&(
            b.window_start_ms,
            &b.upstream_topic,
            &b.upstream,
        ))
    });
    out
}

/// A report's outcome over the closed windows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub closed_windows: usize,
    pub open_windows: usize,
    pub incomplete: usize,
}

impl Summary {
    /// Exit 0 only when some window is closed and every closed one is
    /// complete.
    pub fn ok(&self) -> bool {
        self.closed_windows > 0 && self.incomplete == 0
    }
}

/// Whether a window starting at `start` is closed at `now_ms`.
pub fn is_closed(start: i64, window_ms: i64, grace_ms: i64, now_ms: i64) -> bool {
    start.saturating_add(window_ms).saturating_add(grace_ms) <= now_ms
}

/// Counts closed and open windows, and the checks of closed windows that
/// are not complete.
pub fn summarize(checks: &[Check], window_ms: i64, grace_ms: i64, now_ms: i64) -> Summary {
    let mut windows: HashMap<i64, bool> = HashMap::new();
    let mut incomplete = 0;
    for c in checks {
        let closed = is_closed(c.window_start_ms, window_ms, grace_ms, now_ms);
        windows.insert(c.window_start_ms, closed);
        if closed && c.verdict() != Verdict::Complete {
            incomplete += 1;
        }
    }
    let closed_windows = windows.values().filter(|c| **c).count();
    Summary { closed_windows, open_windows: windows.len() - closed_windows, incomplete }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(origin: &str, tier: &str, topic: &str, w: i64, n: u64) -> v1::AuditCount {
        v1::AuditCount {
            tier: tier.into(),
            service: "svc".into(),
            host: "h".into(),
            topic: topic.into(),
            window_start_ms: w,
            window_ms: 1000,
            count: n,
            origin: origin.into(),
            link: None,
        }
    }

    fn link(alias: &str, tier: &str, naming: v1::MirrorNaming) -> v1::AuditLink {
        v1::AuditLink {
            name: alias.into(),
            source_alias: alias.into(),
            source_tier: tier.into(),
            naming: naming as i32,
            topics: "orders|clicks".into(),
            exclude: String::new(),
        }
    }

    #[test]
    fn windows_are_aligned_to_the_epoch_including_before_it() {
        assert_eq!(window_start(0, 1000), 0);
        assert_eq!(window_start(999, 1000), 0);
        assert_eq!(window_start(1000, 1000), 1000);
        assert_eq!(window_start(-1, 1000), -1000);
        assert_eq!(window_start(5, 0), 5, "a zero window is one ms wide");
    }

    #[test]
    fn prefix_links_line_up_producer_local_aggregate_and_consumer() {
        let read = v1::ReadCountsResponse {
            tier: "agg".into(),
            window_ms: 1000,
            grace_ms: 500,
            links: vec![link("a", "local-a", v1::MirrorNaming::Prefix)],
            counts: vec![
                count("local-a", "producer", "orders", 0, 10),
                count("local-a", "local-a", "orders", 0, 10),
                count("agg", "agg", "a.orders", 0, 7),
                count("agg", "consumer:g", "a.orders", 0, 9),
            ],
        };
        let checks = line_up(&read, &[], None);
        let verdicts: Vec<(String, String, Verdict)> =
            checks.iter().map(|c| (c.upstream.clone(), c.downstream.clone(), c.verdict())).collect();
        assert!(verdicts.contains(&("producer".into(), "local-a".into(), Verdict::Complete)), "{verdicts:?}");
        assert!(verdicts.contains(&("local-a".into(), "agg".into(), Verdict::Missing(3))), "{verdicts:?}");
        assert!(
            verdicts.contains(&("agg".into(), "consumer:g".into(), Verdict::Duplicated(2))),
            "{verdicts:?}"
        );
        // --tiers keeps only checks between the tiers named.
        let only = line_up(&read, &["producer".into(), "local-a".into()], None);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].downstream, "local-a");
    }

    #[test]
    fn identity_links_compare_the_aggregate_with_the_sum_of_the_locals() {
        let mut read = v1::ReadCountsResponse {
            tier: "agg".into(),
            links: vec![
                link("a", "local-a", v1::MirrorNaming::Identity),
                link("b", "local-b", v1::MirrorNaming::Identity),
            ],
            counts: vec![
                count("local-a", "local-a", "orders", 0, 4),
                count("local-b", "local-b", "orders", 0, 6),
                count("agg", "agg", "orders", 0, 10),
            ],
            ..Default::default()
        };
        let checks = line_up(&read, &[], Some("orders"));
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!((checks[0].expected, checks[0].got), (10, 10));
        assert_eq!(checks[0].upstream, "local-a+local-b");
        read.counts[2].count = 9;
        assert_eq!(line_up(&read, &[], None)[0].verdict(), Verdict::Missing(1));
    }

    #[test]
    fn a_window_the_downstream_never_counted_is_missing_all_of_it() {
        let read = v1::ReadCountsResponse {
            tier: "local-a".into(),
            counts: vec![count("local-a", "producer", "t", 2000, 5)],
            ..Default::default()
        };
        let checks = line_up(&read, &[], None);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].verdict(), Verdict::Missing(5));
    }

    #[test]
    fn only_closed_windows_decide_and_none_closed_is_not_ok() {
        let c = |w: i64, got: u64| Check {
            window_start_ms: w,
            upstream: "producer".into(),
            upstream_topic: "t".into(),
            downstream: "x".into(),
            downstream_topic: "t".into(),
            expected: 5,
            got,
        };
        // Window 0 closes at 1000 + 500.
        assert!(!is_closed(0, 1000, 500, 1499));
        assert!(is_closed(0, 1000, 500, 1500));
        let open_only = summarize(&[c(0, 5)], 1000, 500, 1200);
        assert_eq!(open_only, Summary { closed_windows: 0, open_windows: 1, incomplete: 0 });
        assert!(!open_only.ok());
        assert!(summarize(&[c(0, 5), c(5000, 1)], 1000, 500, 2000).ok(), "the open window does not count");
        let lost = summarize(&[c(0, 4)], 1000, 500, 2000);
        assert_eq!(lost.incomplete, 1);
        assert!(!lost.ok());
    }
}

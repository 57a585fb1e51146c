//! Checking a MirrorLink against its clusters and against every other link,
//! and deciding what the destination cluster's admin API must be asked.
//!
//! [`refusal`] is what a person must fix before the link can exist: missing
//! clusters, a source that is the destination, and `Identity` naming on a
//! link whose graph of links has a cycle (records would be copied around
//! forever, since the destination topic has the same name as the source
//! one). For a valid link, [`desired`] is the link the destination must
//! hold, [`plan`] the call that gets it there, and [`observed_verdict`] and
//! [`mirrored_topics`] turn the destination's description (per source
//! partition lag and state) into the status.

use std::collections::{BTreeMap, BTreeSet};

use tributary_crds::conditions::ConditionStatus;
use tributary_crds::mirror_link::{MirroredTopic, Naming, StartPosition, TopicSelector};
use tributary_crds::MirrorLink;
use tributary_proto::v1;

use crate::admin::MirrorCall;
use crate::topic_plan::{Outcome, Verdict};

/// A node of the mirror graph: `namespace/name` of a Cluster, or a bootstrap address.
pub fn source_node(link: &MirrorLink) -> Option<String> {
    let ns = link.metadata.namespace.as_deref().unwrap_or_default();
    match (&link.spec.source.cluster_ref, &link.spec.source.bootstrap) {
        (Some(c), _) => Some(format!("{}/{}", c.namespace.as_deref().unwrap_or(ns), c.name)),
        (None, Some(b)) => Some(b.clone()),
        (None, None) => None,
    }
}

/// `namespace/name` of the destination Cluster.
pub fn destination_node(link: &MirrorLink) -> String {
    let ns = link.metadata.namespace.as_deref().unwrap_or_default();
    format!("{ns}/{}", link.spec.destination.cluster_ref.name)
}

/// Whether `link` lies on a cycle of the graph formed by `all` links
/// (which may or may not include `link` itself).
pub fn on_cycle(link: &MirrorLink, all: &[MirrorLink]) -> bool {
    let Some(from) = source_node(link) else { return false };
    let to = destination_node(link);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in all {
        if let Some(s) = source_node(l) {
            edges.entry(s).or_default().insert(destination_node(l));
        }
    }
    // Is `from` reachable from `to`?
    let mut seen = BTreeSet::new();
    let mut stack = vec![to];
    while let Some(node) = stack.pop() {
        if node == from {
            return true;
        }
        if seen.insert(node.clone()) {
            stack.extend(edges.get(&node).into_iter().flatten().cloned());
        }
    }
    false
}

/// What the operator knows of the link's clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClustersSeen {
    /// The source Cluster exists (true for a bootstrap address).
    pub source: bool,
    pub destination: bool,
}

/// Why the link cannot be made as declared; `None` when it can.
pub fn refusal(link: &MirrorLink, all: &[MirrorLink], seen: ClustersSeen) -> Option<Verdict> {
    let stalled = |reason, message: String| Some(Verdict { outcome: Outcome::Stalled, reason, message });
    let source = source_node(link).unwrap_or_default();
    if !seen.destination {
        return stalled(
            "DestinationClusterNotFound",
            format!("destination Cluster {} does not exist", destination_node(link)),
        );
    }
    if !seen.source {
        return stalled("SourceClusterNotFound", format!("source Cluster {source} does not exist"));
    }
    if source == destination_node(link) {
        return stalled("SourceIsDestination", "a link cannot copy a cluster into itself".into());
    }
    if link.spec.naming == Naming::Identity && on_cycle(link, all) {
        return stalled(
            "MirrorCycle",
            format!(
                "naming Identity is refused: the MirrorLinks form a cycle through {source} and {}, so records \
                 would be copied around forever; use naming Prefix or remove a link of the cycle",
                destination_node(link)
            ),
        );
    }
    None
}

/// One alternation of exact names (escaped) and regexes; the broker
/// matches it against whole topic names.
fn alternation(names: &[String], patterns: &[String]) -> String {
    let mut parts: Vec<String> = names.iter().map(|n| n.replace('.', "\\.")).collect();
    parts.extend(patterns.iter().map(|p| format!("(?:{p})")));
    parts.join("|")
}

/// The link name in the destination: the object's name.
pub fn link_name(link: &MirrorLink) -> String {
    link.metadata.name.clone().unwrap_or_default()
}

/// The link the destination cluster must hold for `link`, whose source
/// brokers are at `source_bootstrap`.
pub fn desired(link: &MirrorLink, source_bootstrap: &str) -> v1::MirrorLinkSpec {
    let TopicSelector { names, patterns, exclude, exclude_patterns } = &link.spec.topics;
    v1::MirrorLinkSpec {
        name: link_name(link),
        source_alias: link.spec.source.alias().unwrap_or("source").to_string(),
        source_bootstrap: source_bootstrap.to_string(),
        topics: alternation(names, patterns),
        exclude: alternation(exclude, exclude_patterns),
        naming: match link.spec.naming {
            Naming::Prefix => v1::MirrorNaming::Prefix,
            Naming::Identity => v1::MirrorNaming::Identity,
        } as i32,
        start: match link.spec.start_position {
            StartPosition::Earliest => v1::MirrorStart::Earliest,
            StartPosition::Latest => v1::MirrorStart::Latest,
        } as i32,
        paused: link.spec.paused,
        replication_factor: 0,
    }
}

/// The call that makes the destination hold `desired`; `None` when it does.
pub fn plan(desired: &v1::MirrorLinkSpec, observed: Option<&v1::MirrorLinkSpec>) -> Option<MirrorCall> {
    match observed {
        None => Some(MirrorCall::Put { link: desired.clone(), update: false }),
        Some(o) if o == desired => None,
        Some(_) => Some(MirrorCall::Put { link: desired.clone(), update: true }),
    }
}

/// The verdict from the destination's description of the link: `Ready`
/// only while every matched topic copies with no task in error.
pub fn observed_verdict(d: &v1::DescribeMirrorLinkResponse) -> Verdict {
    let v = |outcome, reason, message: String| Verdict { outcome, reason, message };
    if d.link.as_ref().is_some_and(|l| l.paused) {
        return v(Outcome::Stalled, "Paused", "the link is paused (spec.paused); nothing is copied".into());
    }
    if let Some(t) = d.topics.iter().find(|t| t.state == "Stalled") {
        return v(Outcome::Stalled, "TopicStalled", format!("{}: {}", t.source_topic, t.reason));
    }
    if !d.error.is_empty() {
        return v(Outcome::Progressing, "SourceUnavailable", d.error.clone());
    }
    if let Some(p) = d.partitions.iter().find(|p| p.state == "Error") {
        return v(
            Outcome::Progressing,
            "TaskRetrying",
            format!("{}-{}: {}", p.source_topic, p.partition, p.error),
        );
    }
    if d.source_cluster_id.is_empty() || d.topics.iter().any(|t| t.state != "Copying") {
        return v(
            Outcome::Progressing,
            "Starting",
            "finding the source's topics and creating destinations".into(),
        );
    }
    v(
        Outcome::Ready,
        "Copying",
        format!(
            "{} topic(s), {} record(s) behind, {:.1} records/s",
            d.topics.len(),
            d.total_lag,
            d.records_per_sec
        ),
    )
}

/// `type` of the MirrorLink condition carrying the audit's latest verdict
/// (its own condition: an upstream loss is not the link's fault, so it
/// never clears `Ready`).
pub const AUDIT_COMPLETE: &str = "AuditComplete";

/// The audit's verdict on one link, from the destination's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditVerdict {
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
    /// Per destination topic: whether its latest closed window is complete.
    pub topics: BTreeMap<String, bool>,
}

/// Lines up the destination's audit counts ([`tributary_client::audit`])
/// for the link named `link` (its name in the destination) and judges its
/// latest closed window: `True` when every check of that window from the
/// link's source into the destination is complete, `False` naming what is
/// missing or duplicated, `Unknown` before any window closed.
pub fn audit_verdict(link: &str, read: &v1::ReadCountsResponse, now_ms: i64) -> AuditVerdict {
    use tributary_client::audit::{is_closed, line_up, Verdict as Counted};
    let unknown = |reason, message: &str| AuditVerdict {
        status: ConditionStatus::Unknown,
        reason,
        message: message.to_string(),
        topics: BTreeMap::new(),
    };
    let Some(l) = read.links.iter().find(|l| l.name == link) else {
        return unknown("NoAuditCounts", "the destination has no audit counts for this link yet");
    };
    let checks: Vec<_> = line_up(read, &[], None)
        .into_iter()
        .filter(|c| c.downstream == read.tier && c.upstream.split('+').any(|s| s == l.source_tier))
        .filter(|c| is_closed(c.window_start_ms, read.window_ms, read.grace_ms, now_ms))
        .collect();
    let Some(latest) = checks.iter().map(|c| c.window_start_ms).max() else {
        return unknown("NoClosedWindow", "no audit window of this link has closed yet");
    };
    let mut topics = BTreeMap::new();
    for c in &checks {
        // The latest closed window of each topic decides it.
        let e = topics.entry(c.downstream_topic.clone()).or_insert((i64::MIN, true));
        if c.window_start_ms > e.0 {
            *e = (c.window_start_ms, c.verdict() == Counted::Complete);
        }
    }
    let topics: BTreeMap<String, bool> = topics.into_iter().map(|(t, (_, ok))| (t, ok)).collect();
    let bad: Vec<String> = checks
        .iter()
        .filter(|c| c.window_start_ms == latest && c.verdict() != Counted::Complete)
        .map(|c| format!("{} window {}: {}", c.downstream_topic, c.window_start_ms, c.verdict()))
        .collect();
    if bad.is_empty() {
        AuditVerdict {
            status: ConditionStatus::True,
            reason: "Complete",
            message: format!("window {latest}: every record from {} arrived once", l.source_tier),
            topics,
        }
    } else {
        AuditVerdict { status: ConditionStatus::False, reason: "Incomplete", message: bad.join("; "), topics }
    }
}

/// Total lag and lag per copied topic, sorted by source topic.
pub fn mirrored_topics(d: &v1::DescribeMirrorLinkResponse) -> (i64, Vec<MirroredTopic>) {
    let mut topics: Vec<MirroredTopic> = d
        .topics
        .iter()
        .map(|t| MirroredTopic {
            source: t.source_topic.clone(),
            destination: t.destination_topic.clone(),
            lag: d.partitions.iter().filter(|p| p.source_topic == t.source_topic).map(|p| p.lag).sum(),
            audit_complete: None,
        })
        .collect();
    topics.sort_by(|a, b| a.source.cmp(&b.source));
    (d.total_lag, topics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_crds::mirror_link::{
        MirrorDestination, MirrorSource, NamespacedClusterRef, StartPosition, TopicSelector,
    };
    use tributary_crds::topic::ClusterRef;
    use tributary_crds::MirrorLinkSpec;

    fn link(name: &str, from: &str, to: &str, naming: Naming) -> MirrorLink {
        let mut l = MirrorLink::new(
            name,
            MirrorLinkSpec {
                source: MirrorSource {
                    cluster_ref: Some(NamespacedClusterRef { name: from.into(), namespace: None }),
                    bootstrap: None,
                    alias: None,
                },
                destination: MirrorDestination { cluster_ref: ClusterRef { name: to.into() } },
                topics: TopicSelector { names: vec!["clicks".into()], ..TopicSelector::default() },
                naming,
                start_position: StartPosition::Earliest,
                paused: false,
            },
        );
        l.metadata.namespace = Some("ns".into());
        l
    }

    const ALL_THERE: ClustersSeen = ClustersSeen { source: true, destination: true };

    fn count(origin: &str, tier: &str, topic: &str, w: i64, n: u64) -> v1::AuditCount {
        v1::AuditCount {
            origin: origin.into(),
            tier: tier.into(),
            topic: topic.into(),
            window_start_ms: w,
            window_ms: 1000,
            count: n,
            ..Default::default()
        }
    }

    #[test]
    fn audit_complete_follows_the_latest_closed_window_of_the_link() {
        let mut read = v1::ReadCountsResponse {
            tier: "agg".into(),
            window_ms: 1000,
            grace_ms: 500,
            links: vec![v1::AuditLink {
                name: "ns.east".into(),
                source_alias: "east".into(),
                source_tier: "local-east".into(),
                naming: v1::MirrorNaming::Prefix as i32,
                topics: "clicks".into(),
                exclude: String::new(),
            }],
            counts: vec![
                count("local-east", "local-east", "clicks", 0, 5),
                count("agg", "agg", "east.clicks", 0, 5),
                count("local-east", "local-east", "clicks", 1000, 7),
                count("agg", "agg", "east.clicks", 1000, 4),
            ],
        };
        assert_eq!(audit_verdict("other", &read, 10_000).status, ConditionStatus::Unknown);
        assert_eq!(audit_verdict("ns.east", &read, 1_000).reason, "NoClosedWindow");
        // At 2000 only window 0 is closed: complete.
        let v = audit_verdict("ns.east", &read, 2_000);
        assert_eq!((v.status, v.reason), (ConditionStatus::True, "Complete"));
        assert_eq!(v.topics.get("east.clicks"), Some(&true));
        // Window 1000 closes at 2500 and lost three records.
        let v = audit_verdict("ns.east", &read, 2_500);
        assert_eq!(v.status, ConditionStatus::False);
        assert!(v.message.contains("east.clicks window 1000: missing 3"), "{}", v.message);
        assert_eq!(v.topics.get("east.clicks"), Some(&false));
        read.counts[3].count = 7;
        assert_eq!(audit_verdict("ns.east", &read, 2_500).status, ConditionStatus::True);
    }

    #[test]
    fn fan_in_with_identity_naming_is_acyclic() {
        let a = link("a", "local-a", "agg", Naming::Identity);
        let b = link("b", "local-b", "agg", Naming::Identity);
        let all = [a.clone(), b];
        assert!(!on_cycle(&a, &all));
        assert_eq!(refusal(&a, &all, ALL_THERE), None);
    }

    #[test]
    fn identity_on_a_cycle_is_refused_prefix_is_not() {
        let ab = link("ab", "a", "b", Naming::Identity);
        let bc = link("bc", "b", "c", Naming::Prefix);
        let ca = link("ca", "c", "a", Naming::Prefix);
        let all = [ab.clone(), bc.clone(), ca];
        assert!(on_cycle(&ab, &all));
        let v = refusal(&ab, &all, ALL_THERE).unwrap();
        assert_eq!((v.outcome, v.reason), (Outcome::Stalled, "MirrorCycle"));
        assert_eq!(refusal(&bc, &all, ALL_THERE), None);
        // Without the closing link there is no cycle.
        assert!(!on_cycle(&ab, &all[..2]));
    }

    #[test]
    fn cross_namespace_sources_are_distinct_nodes() {
        let mut l = link("x", "a", "a", Naming::Prefix);
        if let Some(c) = l.spec.source.cluster_ref.as_mut() {
            c.namespace = Some("edge".into());
        }
        assert_eq!(source_node(&l).as_deref(), Some("edge/a"));
        assert_eq!(refusal(&l, &[l.clone()], ALL_THERE), None);
        let same = link("y", "a", "a", Naming::Prefix);
        assert_eq!(refusal(&same, &[], ALL_THERE).map(|v| v.reason), Some("SourceIsDestination"));
    }

    #[test]
    fn missing_clusters_are_reported_first() {
        let l = link("a", "local-a", "agg", Naming::Prefix);
        let v = refusal(&l, &[], ClustersSeen { source: true, destination: false }).unwrap();
        assert_eq!(v.reason, "DestinationClusterNotFound");
        let v = refusal(&l, &[], ClustersSeen { source: false, destination: true }).unwrap();
        assert_eq!(v.reason, "SourceClusterNotFound");
        assert!(v.message.contains("ns/local-a"));
    }

    #[test]
    fn the_desired_link_follows_the_spec_and_only_a_difference_is_sent() {
        let mut l = link("east-to-agg", "local-a", "agg", Naming::Identity);
        l.spec.topics.names = vec!["orders.v1".into()];
        l.spec.topics.patterns = vec!["clicks-.*".into()];
        l.spec.topics.exclude = vec!["clicks-tmp".into()];
        let d = desired(&l, "local-a.ns.svc:7070");
        assert_eq!(d.name, "east-to-agg");
        assert_eq!(d.source_alias, "local-a");
        assert_eq!(d.topics, "orders\\.v1|(?:clicks-.*)");
        assert_eq!(d.exclude, "clicks-tmp");
        assert_eq!(d.naming, v1::MirrorNaming::Identity as i32);
        assert_eq!(plan(&d, None), Some(MirrorCall::Put { link: d.clone(), update: false }));
        assert_eq!(plan(&d, Some(&d)), None);
        let mut paused = d.clone();
        paused.paused = true;
        assert_eq!(plan(&paused, Some(&d)), Some(MirrorCall::Put { link: paused.clone(), update: true }));
    }

    fn described(topics: &[(&str, &str)], lags: &[(&str, i64, &str)]) -> v1::DescribeMirrorLinkResponse {
        v1::DescribeMirrorLinkResponse {
            link: Some(v1::MirrorLinkSpec { name: "l".into(), ..Default::default() }),
            source_cluster_id: "src".into(),
            topics: topics
                .iter()
                .map(|(t, state)| v1::MirrorTopicStatus {
                    source_topic: t.to_string(),
                    destination_topic: format!("a.{t}"),
                    state: state.to_string(),
                    reason: "too few partitions".into(),
                })
                .collect(),
            partitions: lags
                .iter()
                .map(|(t, lag, state)| v1::MirrorPartitionStatus {
                    source_topic: t.to_string(),
                    lag: *lag,
                    state: state.to_string(),
                    ..Default::default()
                })
                .collect(),
            total_lag: lags.iter().map(|(_, l, _)| l).sum(),
            ..Default::default()
        }
    }

    #[test]
    fn the_status_is_ready_only_while_every_topic_copies() {
        let d = described(
            &[("orders", "Copying"), ("clicks", "Copying")],
            &[("orders", 3, "Copying"), ("orders", 4, "Copying"), ("clicks", 0, "Copying")],
        );
        let v = observed_verdict(&d);
        assert_eq!((v.outcome, v.reason), (Outcome::Ready, "Copying"));
        let (total, topics) = mirrored_topics(&d);
        assert_eq!(total, 7);
        assert_eq!(
            topics.iter().map(|t| (t.source.as_str(), t.destination.as_str(), t.lag)).collect::<Vec<_>>(),
            vec![("clicks", "a.clicks", 0), ("orders", "a.orders", 7)]
        );
        let stalled = described(&[("orders", "Stalled")], &[]);
        let v = observed_verdict(&stalled);
        assert_eq!((v.outcome, v.reason), (Outcome::Stalled, "TopicStalled"));
        assert!(v.message.contains("too few partitions"));
        let retrying = described(&[("orders", "Copying")], &[("orders", 1, "Error")]);
        assert_eq!(observed_verdict(&retrying).outcome, Outcome::Progressing);
        let mut paused = described(&[], &[]);
        if let Some(l) = paused.link.as_mut() {
            l.paused = true;
        }
        assert_eq!(observed_verdict(&paused).reason, "Paused");
        let starting = v1::DescribeMirrorLinkResponse::default();
        assert_eq!(observed_verdict(&starting).reason, "Starting");
    }
}

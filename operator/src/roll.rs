//! Broker-aware rolling restarts: which broker pod to restart next, if any.
//!
//! The StatefulSet's update strategy is `OnDelete`, so a new pod template
//! (a new image, a changed config) reaches a broker only when the operator
//! deletes its pod. [`decide`] says whether to delete one now, asking the
//! brokers rather than the pods (a pod is Ready before its replicas have
//! caught up):
//!
//! - one broker at a time: never while a pod is terminating, not ready or
//!   missing, or a broker has no session with the controller;
//! - only with zero under-replicated and zero offline partitions (this is
//!   also how the roll waits for the broker restarted last to be back in
//!   every ISR);
//! - never when a partition would lose its only replica (replication
//!   factor 1: `Stalled` unless `spec.roll.allowSingleReplicaDowntime`) or
//!   drop below `min.insync.replicas` (acks=all writes would fail);
//! - non-controller brokers first, highest ordinal first, the metadata
//!   controller last (one controller election per roll, not one per
//!   broker);
//! - a broker that does not come back within `spec.roll.brokerTimeoutSeconds`
//!   stops the roll with `Stalled`, naming it and what is missing;
//! - once every broker runs the new template and the last one is back in
//!   every ISR, a preferred-leader election puts leadership back where the
//!   replica lists say ([`RollDecision::UpToDate`] with `elect_leaders`).
//!
//! The roll's memory between reconciles ([`RollProgress`]: which broker was
//! restarted last, and when) lives in the Cluster's status.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use tributary_crds::cluster::RollProgress;

use crate::health::{sample, ClusterHealth, PartitionView};

/// Label the StatefulSet controller puts on each pod with its template revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// `Stalled` reason: a restarted broker did not come back in time.
pub const BROKER_NOT_BACK: &str = "BrokerNotBack";
/// `Stalled` reason: a replication-factor-1 topic would go offline.
pub const SINGLE_REPLICA_TOPIC: &str = "SingleReplicaTopic";
/// `Stalled` reason: a partition would drop below min.insync.replicas.
pub const MIN_INSYNC_AT_RISK: &str = "MinInsyncReplicasAtRisk";

/// What to do about restarts now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollDecision {
    /// Every broker runs the current template. `elect_leaders`: a roll just
    /// finished, so leadership goes back to the preferred replicas.
    UpToDate { elect_leaders: bool },
    /// Restart this pod (broker `node`) now.
    Restart { pod: String, node: i32, outdated: usize },
    /// Brokers run an old template but restarting one now is not safe;
    /// waiting will fix it.
    Blocked { reason: String, outdated: usize },
    /// The roll cannot go on without a person.
    Stalled { reason: &'static str, message: String, outdated: usize },
}

impl RollDecision {
    pub fn outdated(&self) -> usize {
        match self {
            RollDecision::UpToDate { .. } => 0,
            RollDecision::Restart { outdated, .. }
            | RollDecision::Blocked { outdated, .. }
            | RollDecision::Stalled { outdated, .. } => *outdated,
        }
    }
}

/// The Cluster's roll settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollPolicy {
    pub allow_single_replica_downtime: bool,
    pub broker_timeout_seconds: i64,
}

impl RollPolicy {
    pub fn of(cluster: &tributary_crds::Cluster) -> RollPolicy {
        RollPolicy {
            allow_single_replica_downtime: cluster.spec.roll.allow_single_replica_downtime,
            broker_timeout_seconds: cluster.spec.roll.broker_timeout_seconds,
        }
    }
}

/// Everything [`decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct RollInput<'a> {
    pub sts: &'a StatefulSet,
    pub pods: &'a [Pod],
    /// The brokers' view, or why they could not be asked.
    pub health: Result<&'a ClusterHealth, &'a str>,
    pub policy: RollPolicy,
    /// The roll in progress, from the Cluster's status.
    pub progress: Option<&'a RollProgress>,
    pub now: Timestamp,
}

/// The broker id of a pod: its StatefulSet ordinal.
pub fn ordinal(pod: &Pod) -> i32 {
    pod.metadata.name.as_deref().and_then(|n| n.rsplit('-').next()).and_then(|o| o.parse().ok()).unwrap_or(-1)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Seconds since broker `node` was restarted by this roll, when it was the
/// one restarted last and that is longer ago than the timeout.
fn overdue(input: &RollInput<'_>, node: i32) -> Option<i64> {
    let p = input.progress?;
    if p.restarting != Some(node) {
        return None;
    }
    let at: Timestamp = p.restarted_at.as_deref()?.parse().ok()?;
    let waited = input.now.as_second() - at.as_second();
    (waited > input.policy.broker_timeout_seconds).then_some(waited)
}

/// The broker restarted last, while the roll remembers one.
fn restarting(input: &RollInput<'_>) -> Option<i32> {
    input.progress.and_then(|p| p.restarting)
}

/// Blocked while there is time left, `Stalled` naming the broker after.
fn wait_or_stall(
    input: &RollInput<'_>,
    node: Option<i32>,
    reason: String,
    what: &str,
    outdated: usize,
) -> RollDecision {
    if let Some(waited) = node.and_then(|n| overdue(input, n)) {
        let node = node.unwrap_or_default();
        return RollDecision::Stalled {
            reason: BROKER_NOT_BACK,
            message: format!(
                "broker {node} was restarted {waited}s ago and {what} (spec.roll.brokerTimeoutSeconds is {}); \
                 the roll stops here: look at the pod's events and logs, fix what keeps it from rejoining, and \
                 the roll resumes by itself",
                input.policy.broker_timeout_seconds
            ),
            outdated,
        };
    }
    RollDecision::Blocked { reason, outdated }
}

/// Pods not on the StatefulSet's update revision.
fn outdated<'a>(sts: &StatefulSet, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let Some(update_revision) = sts.status.as_ref().and_then(|s| s.update_revision.as_deref()) else {
        return vec![];
    };
    pods.iter()
        .filter(|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)).map(String::as_str)
                != Some(update_revision)
        })
        .collect()
}

/// Decides the next restart.
pub fn decide(input: RollInput<'_>) -> RollDecision {
    let mut old = outdated(input.sts, input.pods);
    let count = old.len();
    let last = restarting(&input);
    if count == 0 && input.progress.is_none() {
        return RollDecision::UpToDate { elect_leaders: false };
    }
    if let Some(p) = input.pods.iter().find(|p| p.metadata.deletion_timestamp.is_some()) {
        let reason = format!("waiting for broker pod {} to restart", name(p));
        return wait_or_stall(&input, Some(ordinal(p)), reason, "its pod is still terminating", count);
    }
    let want = input.sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let not_ready: Vec<&Pod> = input.pods.iter().filter(|p| !is_ready(p)).collect();
    let present: Vec<i32> = input.pods.iter().map(ordinal).collect();
    if let Some(missing) = (0..want).find(|o| !present.contains(o)) {
        let reason =
            format!("waiting for broker {missing}'s pod to be created before restarting the next broker");
        return wait_or_stall(&input, Some(missing), reason, "its pod does not exist", count);
    }
    if !not_ready.is_empty() {
        let names: Vec<String> = not_ready.iter().map(|p| name(p)).collect();
        let reason =
            format!("waiting for {} to be ready before restarting the next broker", names.join(", "));
        let node = last.filter(|n| not_ready.iter().any(|p| ordinal(p) == *n));
        return wait_or_stall(&input, node, reason, "its pod is not ready", count);
    }
    let health = match input.health {
        Ok(h) => h,
        Err(e) => {
            let reason = format!("cannot ask the brokers whether a restart is safe: {e}");
            return wait_or_stall(&input, last, reason, "the brokers cannot be asked about it", count);
        }
    };
    if let Some(dead) = (0..want).find(|n| !health.alive(*n)) {
        let reason = format!("waiting for broker {dead} to register with the controller");
        let node = last.filter(|n| *n == dead);
        return wait_or_stall(&input, node, reason, "it has no session with the controller", count);
    }
    let offline = health.offline();
    if !offline.is_empty() {
        let reason = format!(
            "{} partition(s) have no leader ({}); waiting before restarting a broker",
            offline.len(),
            sample(&offline)
        );
        return wait_or_stall(&input, last, reason, "partitions are still offline", count);
    }
    let under = health.under_replicated();
    if !under.is_empty() {
        let lagging: Vec<&PartitionView> = match last {
            Some(n) => {
                under.iter().copied().filter(|p| p.replicas.contains(&n) && !p.isr.contains(&n)).collect()
            }
            None => vec![],
        };
        let reason = format!(
            "{} partition(s) are under-replicated ({}); waiting for every ISR to be full before restarting a broker",
            under.len(),
            sample(&under)
        );
        let what = format!("is not back in the ISR of {} partition(s) ({})", lagging.len(), sample(&lagging));
        let node = last.filter(|_| !lagging.is_empty());
        return wait_or_stall(&input, node, reason, &what, count);
    }
    if count == 0 {
        // The last restarted broker is back everywhere: the roll is done.
        return RollDecision::UpToDate { elect_leaders: true };
    }
    // Highest ordinal first; the controller last.
    old.sort_by_key(|p| (Some(ordinal(p)) == health.controller, std::cmp::Reverse(ordinal(p))));
    let next = old[0];
    let node = ordinal(next);
    if let Some(blocked) = unsafe_to_restart(health, node, input.policy, count) {
        return blocked;
    }
    RollDecision::Restart { pod: name(next), node, outdated: count }
}

/// `Stalled` when restarting `node` would take a partition offline or below
/// its min.insync.replicas.
fn unsafe_to_restart(
    health: &ClusterHealth,
    node: i32,
    policy: RollPolicy,
    outdated: usize,
) -> Option<RollDecision> {
    let hosted: Vec<&PartitionView> =
        health.partitions.iter().filter(|p| p.replicas.contains(&node)).collect();
    let single: Vec<&PartitionView> = hosted.iter().copied().filter(|p| p.replicas.len() == 1).collect();
    if !single.is_empty() && !policy.allow_single_replica_downtime {
        let mut topics: Vec<&str> = single.iter().map(|p| p.topic.as_str()).collect();
        topics.dedup();
        return Some(RollDecision::Stalled {
            reason: SINGLE_REPLICA_TOPIC,
            message: format!(
                "restarting broker {node} would take {} partition(s) offline: topic(s) {} have replication factor 1 \
                 with their only replica there. Raise their replicationFactor, or set \
                 spec.roll.allowSingleReplicaDowntime: true to accept the downtime",
                single.len(),
                topics.join(", ")
            ),
            outdated,
        });
    }
    let starved: Vec<&PartitionView> = hosted
        .iter()
        .copied()
        .filter(|p| p.replicas.len() > 1 && p.isr.contains(&node) && p.isr.len() - 1 < p.min_isr)
        .collect();
    if let Some(p) = starved.first() {
        return Some(RollDecision::Stalled {
            reason: MIN_INSYNC_AT_RISK,
            message: format!(
                "restarting broker {node} would leave {} partition(s) ({}) with {} in-sync replica(s), below \
                 min.insync.replicas={}: acks=all producers would fail meanwhile. Raise the topic's \
                 replicationFactor or lower its min.insync.replicas",
                starved.len(),
                sample(&starved),
                p.isr.len() - 1,
                p.min_isr
            ),
            outdated,
        });
    }
    None
}

/// The roll progress to keep in the status after `decision`, made at `now`
/// for a StatefulSet of `total` brokers.
pub fn progress_after(
    previous: Option<&RollProgress>,
    decision: &RollDecision,
    total: i32,
    now: Timestamp,
) -> Option<RollProgress> {
    let updated = |outdated: usize| total - i32::try_from(outdated).unwrap_or(total);
    match decision {
        RollDecision::UpToDate { .. } => None,
        RollDecision::Restart { node, outdated, .. } => Some(RollProgress {
            // The restarted broker counts once it runs the new template.
            updated: updated(*outdated),
            total,
            restarting: Some(*node),
            restarted_at: Some(now.to_string()),
        }),
        RollDecision::Blocked { outdated, .. } | RollDecision::Stalled { outdated, .. } => {
            let mut p = previous.cloned().unwrap_or_default();
            p.updated = updated(*outdated);
            p.total = total;
            Some(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use crate::health::BrokerView;

    fn sts(replicas: i32, revision: &str) -> StatefulSet {
        StatefulSet {
            spec: Some(StatefulSetSpec { replicas: Some(replicas), ..StatefulSetSpec::default() }),
            status: Some(StatefulSetStatus {
                update_revision: Some(revision.into()),
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        }
    }

    fn pod(ordinal: i32, revision: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("events-{ordinal}")),
                labels: Some([(REVISION_LABEL.to_string(), revision.to_string())].into_iter().collect()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn part(topic: &str, replicas: &[i32], isr: &[i32], min_isr: usize) -> PartitionView {
        PartitionView {
            topic: topic.into(),
            partition: 0,
            leader: isr.first().copied().unwrap_or(-1),
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            min_isr,
        }
    }

    /// Three live brokers, controller 0, one fully replicated RF-3 partition.
    fn healthy() -> ClusterHealth {
        ClusterHealth {
            controller: Some(0),
            brokers: (0..3).map(|n| BrokerView { node_id: n, alive: true, rack: String::new() }).collect(),
            partitions: vec![part("t", &[0, 1, 2], &[0, 1, 2], 2)],
        }
    }

    const POLICY: RollPolicy =
        RollPolicy { allow_single_replica_downtime: false, broker_timeout_seconds: 600 };

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("ts")
    }

    fn at(seconds_ago: i64) -> RollProgress {
        RollProgress {
            updated: 1,
            total: 3,
            restarting: Some(2),
            restarted_at: Some(Timestamp::from_second(1_800_000_000 - seconds_ago).expect("ts").to_string()),
        }
    }

    fn run(
        pods: &[Pod],
        health: Result<&ClusterHealth, &str>,
        progress: Option<&RollProgress>,
    ) -> RollDecision {
        decide(RollInput { sts: &sts(3, "v2"), pods, health, policy: POLICY, progress, now: now() })
    }

    fn short(d: &RollDecision) -> String {
        match d {
            RollDecision::UpToDate { elect_leaders } => format!("up-to-date elect={elect_leaders}"),
            RollDecision::Restart { pod, .. } => format!("restart {pod}"),
            RollDecision::Blocked { .. } => "blocked".into(),
            RollDecision::Stalled { reason, .. } => format!("stalled {reason}"),
        }
    }

    #[test]
    fn roll_order_and_gates() {
        let all = |revs: [&str; 3]| -> Vec<Pod> { (0..3).map(|i| pod(i, revs[i as usize], true)).collect() };
        let h = healthy();
        let mut under = healthy();
        under.partitions[0].isr = vec![0, 1];
        let mut offline = healthy();
        offline.partitions.push(part("u", &[1, 2], &[], 1));
        let mut dead = healthy();
        dead.brokers[1].alive = false;
        let mut controller_two = healthy();
        controller_two.controller = Some(2);
        let mut rf1 = healthy();
        rf1.partitions.push(part("single", &[2], &[2], 1));
        let mut strict = healthy();
        strict.partitions[0].min_isr = 3;
        let mut unready = all(["v1", "v1", "v1"]);
        unready[1] = pod(1, "v1", false);
        let fresh = at(10);
        let old = at(900);

        type Row<'a> =
            (&'a str, Vec<Pod>, Result<&'a ClusterHealth, &'a str>, Option<&'a RollProgress>, &'a str);
        let table: Vec<Row<'_>> = vec![
            ("all current, no roll", all(["v2"; 3]), Ok(&h), None, "up-to-date elect=false"),
            ("highest ordinal first", all(["v1"; 3]), Ok(&h), None, "restart events-2"),
            ("controller last", all(["v1"; 3]), Ok(&controller_two), None, "restart events-1"),
            ("then the next", all(["v1", "v1", "v2"]), Ok(&h), Some(&fresh), "restart events-1"),
            (
                "the controller when only it is left",
                all(["v1", "v2", "v2"]),
                Ok(&h),
                None,
                "restart events-0",
            ),
            ("under-replicated blocks", all(["v1"; 3]), Ok(&under), None, "blocked"),
            ("offline blocks", all(["v1"; 3]), Ok(&offline), None, "blocked"),
            ("a dead broker blocks", all(["v1"; 3]), Ok(&dead), None, "blocked"),
            ("an unready pod blocks", unready.clone(), Ok(&h), None, "blocked"),
            ("unreachable brokers block", all(["v1"; 3]), Err("refused"), None, "blocked"),
            ("rf 1 stalls", all(["v1"; 3]), Ok(&rf1), None, "stalled SingleReplicaTopic"),
            ("min isr stalls", all(["v1"; 3]), Ok(&strict), None, "stalled MinInsyncReplicasAtRisk"),
            ("back in every isr: elect", all(["v2"; 3]), Ok(&h), Some(&fresh), "up-to-date elect=true"),
            ("last one not back in isr yet", all(["v2"; 3]), Ok(&under), Some(&fresh), "blocked"),
            ("last one never back in isr", all(["v2"; 3]), Ok(&under), Some(&old), "stalled BrokerNotBack"),
        ];
        for (what, pods, health, progress, want) in table {
            assert_eq!(short(&run(&pods, health, progress)), want, "{what}");
        }
    }

    #[test]
    fn a_broker_that_does_not_come_back_stalls_the_roll_naming_it() {
        let h = healthy();
        let mut pods: Vec<Pod> = (0..3).map(|i| pod(i, "v1", true)).collect();
        pods[2] = pod(2, "v2", false);
        let waiting = run(&pods, Ok(&h), Some(&at(60)));
        assert!(
            matches!(&waiting, RollDecision::Blocked { reason, .. } if reason.contains("events-2")),
            "{waiting:?}"
        );
        let d = run(&pods, Ok(&h), Some(&at(601)));
        let RollDecision::Stalled { reason, message, outdated } = d else { panic!("{d:?}") };
        assert_eq!((reason, outdated), (BROKER_NOT_BACK, 2));
        assert!(message.contains("broker 2 was restarted 601s ago and its pod is not ready"), "{message}");
        // Another broker's trouble is not blamed on the restarted one.
        let mut other = pods.clone();
        other[2] = pod(2, "v2", true);
        other[0] = pod(0, "v1", false);
        assert_eq!(short(&run(&other, Ok(&h), Some(&at(601)))), "blocked");

        let mut lagging = healthy();
        lagging.partitions[0].isr = vec![0, 1];
        let back: Vec<Pod> = vec![pod(0, "v1", true), pod(1, "v1", true), pod(2, "v2", true)];
        let d = run(&back, Ok(&lagging), Some(&at(700)));
        let RollDecision::Stalled { message, .. } = d else { panic!("{d:?}") };
        assert!(message.contains("is not back in the ISR of 1 partition(s) (t-0)"), "{message}");
    }

    #[test]
    fn single_replica_downtime_can_be_allowed() {
        let mut rf1 = healthy();
        rf1.partitions.push(part("single", &[2], &[2], 1));
        let pods: Vec<Pod> = (0..3).map(|i| pod(i, "v1", true)).collect();
        let d = run(&pods, Ok(&rf1), None);
        let RollDecision::Stalled { message, .. } = &d else { panic!("{d:?}") };
        assert!(message.contains("topic(s) single have replication factor 1"), "{message}");
        assert!(message.contains("allowSingleReplicaDowntime"), "{message}");
        let allow = RollPolicy { allow_single_replica_downtime: true, ..POLICY };
        let d = decide(RollInput {
            sts: &sts(3, "v2"),
            pods: &pods,
            health: Ok(&rf1),
            policy: allow,
            progress: None,
            now: now(),
        });
        assert_eq!(short(&d), "restart events-2");
    }

    #[test]
    fn waits_while_a_pod_is_missing_or_terminating() {
        let h = healthy();
        let pods = [pod(0, "v1", true), pod(1, "v1", true)];
        assert_eq!(short(&run(&pods, Ok(&h), None)), "blocked", "a broker is missing");
        let mut terminating = pod(2, "v1", true);
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let pods = [pod(0, "v1", true), pod(1, "v1", true), terminating];
        let d = run(&pods, Ok(&h), None);
        assert!(
            matches!(&d, RollDecision::Blocked { reason, .. } if reason.contains("events-2 to restart")),
            "{d:?}"
        );
    }

    #[test]
    fn progress_remembers_the_restarted_broker() {
        let restart = RollDecision::Restart { pod: "events-2".into(), node: 2, outdated: 3 };
        let p = progress_after(None, &restart, 3, now()).expect("progress");
        assert_eq!((p.updated, p.total, p.restarting), (0, 3, Some(2)));
        assert_eq!(p.restarted_at.as_deref(), Some("2027-01-15T08:00:00Z"));
        let blocked = RollDecision::Blocked { reason: "x".into(), outdated: 2 };
        let kept = progress_after(Some(&p), &blocked, 3, now()).expect("progress");
        assert_eq!((kept.updated, kept.restarting, kept.restarted_at), (1, Some(2), p.restarted_at.clone()));
        assert_eq!(progress_after(Some(&p), &RollDecision::UpToDate { elect_leaders: true }, 3, now()), None);
    }
}

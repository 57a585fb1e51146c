//! Broker-aware rolling restarts: which broker pod to restart next, if any.
//!
//! The StatefulSet's update strategy is `OnDelete`, so a new pod template
//! (a new image, a changed config) reaches a broker only when the operator
//! deletes its pod. This module decides, from the StatefulSet and its pods,
//! whether to delete one now: only when every broker is ready and none is
//! already restarting, one pod at a time, highest ordinal first (as the
//! StatefulSet controller would). Otherwise it says why the roll waits, for
//! the Cluster's `status.rollBlocked`.
//!
//! Waiting for zero under-replicated partitions (and never dropping a
//! partition below min.insync.replicas) joins this check when replication
//! lands; with one replica per partition every restart is a brief outage of
//! that broker's partitions, which `maxUnavailable: 1` already bounds.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;

/// Label the StatefulSet controller puts on each pod with its template revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What to do about restarts now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollDecision {
    /// Every broker runs the current template.
    UpToDate,
    /// Restart this pod now.
    Restart { pod: String, outdated: usize },
    /// Brokers run an old template but restarting one now is not safe.
    Blocked { reason: String, outdated: usize },
}

fn ordinal(pod: &Pod) -> i64 {
    pod.metadata.name.as_deref().and_then(|n| n.rsplit('-').next()).and_then(|o| o.parse().ok()).unwrap_or(-1)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Decides the next restart for a StatefulSet and its current pods.
pub fn decide(sts: &StatefulSet, pods: &[Pod]) -> RollDecision {
    let status = sts.status.as_ref();
    let Some(update_revision) = status.and_then(|s| s.update_revision.as_deref()) else {
        return RollDecision::UpToDate;
    };
    let mut outdated: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)).map(String::as_str)
                != Some(update_revision)
        })
        .collect();
    if outdated.is_empty() {
        return RollDecision::UpToDate;
    }
    let count = outdated.len();
    if let Some(p) = pods.iter().find(|p| p.metadata.deletion_timestamp.is_some()) {
        let name = p.metadata.name.clone().unwrap_or_default();
        return RollDecision::Blocked {
            reason: format!("waiting for broker pod {name} to restart"),
            outdated: count,
        };
    }
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let not_ready: Vec<String> =
        pods.iter().filter(|p| !is_ready(p)).filter_map(|p| p.metadata.name.clone()).collect();
    if !not_ready.is_empty() || (pods.len() as i32) < want {
        let which = if not_ready.is_empty() { "every broker".to_string() } else { not_ready.join(", ") };
        return RollDecision::Blocked {
            reason: format!("waiting for {which} to be ready before restarting the next broker"),
            outdated: count,
        };
    }
    outdated.sort_by_key(|p| std::cmp::Reverse(ordinal(p)));
    RollDecision::Restart { pod: outdated[0].metadata.name.clone().unwrap_or_default(), outdated: count }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

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

    #[test]
    fn nothing_to_do_when_all_pods_are_current() {
        let pods = [pod(0, "v2", true), pod(1, "v2", true)];
        assert_eq!(decide(&sts(2, "v2"), &pods), RollDecision::UpToDate);
        assert_eq!(decide(&StatefulSet::default(), &pods), RollDecision::UpToDate);
    }

    #[test]
    fn restarts_highest_outdated_ordinal_first() {
        let pods = [pod(0, "v1", true), pod(1, "v2", true), pod(2, "v1", true)];
        assert_eq!(
            decide(&sts(3, "v2"), &pods),
            RollDecision::Restart { pod: "events-2".into(), outdated: 2 }
        );
        let pods = [pod(0, "v1", true), pod(1, "v2", true), pod(2, "v2", true)];
        assert_eq!(
            decide(&sts(3, "v2"), &pods),
            RollDecision::Restart { pod: "events-0".into(), outdated: 1 }
        );
        let pods = [pod(9, "v1", true), pod(10, "v1", true)];
        assert!(
            matches!(decide(&sts(2, "v2"), &pods), RollDecision::Restart { pod, .. } if pod == "events-10")
        );
    }

    #[test]
    fn waits_while_a_broker_is_not_ready_missing_or_terminating() {
        let pods = [pod(0, "v1", true), pod(1, "v2", false), pod(2, "v1", true)];
        let d = decide(&sts(3, "v2"), &pods);
        assert!(
            matches!(&d, RollDecision::Blocked { reason, outdated: 2 } if reason.contains("events-1")),
            "{d:?}"
        );

        let pods = [pod(0, "v1", true), pod(1, "v1", true)];
        assert!(matches!(decide(&sts(3, "v2"), &pods), RollDecision::Blocked { .. }), "a broker is missing");

        let mut terminating = pod(2, "v1", true);
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let pods = [pod(0, "v1", true), pod(1, "v1", true), terminating];
        let d = decide(&sts(3, "v2"), &pods);
        assert!(
            matches!(&d, RollDecision::Blocked { reason, .. } if reason.contains("events-2 to restart")),
            "{d:?}"
        );
    }
}

//! What to do about one Topic: a pure function from the Topic object, what
//! is known of its Cluster, and what the brokers report, to the admin calls
//! to make and the verdict to report in its conditions.
//!
//! Kubernetes is the source of truth, one way: the plan creates a missing
//! topic, grows partitions, sets configs that differ and removes config keys
//! set behind the operator's back. It never shrinks a topic, never changes
//! anything for a Topic that conflicts with an older one, and never reports
//! `Ready` for what it did not do: whatever it must not do (shrink, exceed
//! the brokers) becomes a `Stalled` verdict with a reason a person can act
//! on, while the changes it can make still go ahead.
//!
//! A replication-factor change is a reassignment on the brokers (new
//! replicas copy, then the switch): the plan starts it once
//! (`AlterReplicationFactor`, remembered in `status.reassignment`), reports
//! `Reconciling` with how many partitions have the declared replicas in
//! sync, and `Ready` only when all of them do.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use tributary_crds::conditions::{Condition, ConditionStatus, READY, RECONCILING, STALLED};
use tributary_crds::topic::{DeletionPolicy, Reassignment};
use tributary_crds::{Topic, TopicStatus};

/// A topic as the brokers describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedTopic {
    pub topic_id: String,
    pub partitions: u32,
    pub replication_factor: u32,
    /// Only the keys set on the topic (not the defaults).
    pub configs: BTreeMap<String, String>,
    /// Partitions with fewer in-sync replicas than replicas.
    pub under_replicated: u32,
    /// Partitions without a leader.
    pub offline: u32,
    /// Per partition: (replicas, of which in sync). Empty when the brokers
    /// did not say (then `replication_factor` and `under_replicated` decide).
    pub replicas: Vec<(u32, u32)>,
}

impl ObservedTopic {
    /// Partitions whose replica list does not have `rf` entries yet (still
    /// being reassigned, or not started).
    pub fn partitions_not_at(&self, rf: u32) -> u32 {
        if self.replicas.is_empty() {
            return if self.replication_factor == rf { 0 } else { self.partitions };
        }
        self.replicas.iter().filter(|(r, _)| *r != rf).count() as u32
    }

    /// Partitions with exactly `rf` replicas, all in sync.
    pub fn partitions_in_sync_at(&self, rf: u32) -> u32 {
        if self.replicas.is_empty() {
            let ok = self.replication_factor == rf;
            return if ok { self.partitions.saturating_sub(self.under_replicated) } else { 0 };
        }
        self.replicas.iter().filter(|(r, i)| *r == rf && i == r).count() as u32
    }
}

/// What the operator knows of the Topic's Cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterView {
    /// No Cluster of that name in the Topic's namespace.
    Missing,
    /// The Cluster exists and declares this many brokers (`spec.replicas`).
    Present { brokers: i32 },
}

/// One call to the broker Admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCall {
    Create {
        name: String,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    },
    CreatePartitions {
        name: String,
        total: u32,
    },
    AlterConfigs {
        name: String,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    },
    Delete {
        name: String,
    },
    /// Reassign every partition to `replication_factor` replicas, copying at
    /// most `throttle` bytes/s cluster-wide while it runs.
    AlterReplicationFactor {
        name: String,
        replication_factor: u32,
        throttle: Option<u64>,
    },
}

impl AdminCall {
    /// The Admin RPC this call makes.
    pub fn name(&self) -> &'static str {
        match self {
            AdminCall::Create { .. } => "CreateTopics",
            AdminCall::CreatePartitions { .. } => "CreatePartitions",
            AdminCall::AlterConfigs { .. } => "AlterTopicConfigs",
            AdminCall::Delete { .. } => "DeleteTopics",
            AdminCall::AlterReplicationFactor { .. } => "AlterReplicationFactor",
        }
    }
}

/// The state to report once the planned calls succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The topic matches the spec.
    Ready,
    /// Not yet, and no person is needed (the brokers are catching up).
    Progressing,
    /// Not without a person: the message says what to change.
    Stalled,
}

/// [`Outcome`] with the reason and message for the conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    fn new(outcome: Outcome, reason: &'static str, message: impl Into<String>) -> Verdict {
        Verdict { outcome, reason, message: message.into() }
    }
}

/// The calls to make, in order, and what to report after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPlan {
    pub calls: Vec<AdminCall>,
    pub verdict: Verdict,
    /// The replication-factor change in progress, for the status.
    pub reassignment: Option<Reassignment>,
}

/// Everything [`plan`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    pub topic: &'a Topic,
    pub cluster: ClusterView,
    /// `None` when the brokers answered that the topic does not exist.
    pub observed: Option<&'a ObservedTopic>,
    /// `namespace/name` of an older Topic object naming the same topic on
    /// the same cluster: it wins and this one changes nothing.
    pub conflicts_with: Option<&'a str>,
    /// The Cluster's reassignment throttle (bytes/s), for RF changes.
    pub throttle: Option<u64>,
}

/// Decides the admin calls for a Topic that is not being deleted.
pub fn plan(input: PlanInput<'_>) -> TopicPlan {
    let spec = &input.topic.spec;
    let name = input.topic.topic_name().to_string();
    let stalled = |reason, message: String| TopicPlan {
        calls: vec![],
        verdict: Verdict::new(Outcome::Stalled, reason, message),
        reassignment: None,
    };

    if let Some(owner) = input.conflicts_with {
        return stalled(
            "TopicConflict",
            format!("topic '{name}' is already managed by Topic {owner}, which is older; delete one of the two objects"),
        );
    }
    let brokers = match input.cluster {
        ClusterView::Missing => {
            return stalled(
                "ClusterNotFound",
                format!(
                    "Cluster '{}' does not exist in this namespace; create it or correct spec.clusterRef",
                    spec.cluster_ref.name
                ),
            )
        }
        ClusterView::Present { brokers } => brokers,
    };
    if let Some(min_isr) = spec.config.get("min.insync.replicas").and_then(|v| v.parse::<i64>().ok()) {
        if min_isr > i64::from(spec.replication_factor) {
            return stalled(
                "MinInsyncReplicasTooHigh",
                format!(
                    "config min.insync.replicas={min_isr} is above replicationFactor {}: acks=all could never \
                     succeed; lower min.insync.replicas or raise replicationFactor",
                    spec.replication_factor
                ),
            );
        }
    }
    let rf_too_high = spec.replication_factor > brokers;
    let rf_message = || {
        format!(
            "replicationFactor {} is more than the {brokers} broker(s) Cluster '{}' runs; lower \
             replicationFactor, or add brokers if the Cluster's conditions say it can run more",
            spec.replication_factor, spec.cluster_ref.name
        )
    };
    // Schema validation keeps both positive; a hand-made object may not be.
    let want_partitions = u32::try_from(spec.partitions).unwrap_or(0).max(1);
    let want_rf = u32::try_from(spec.replication_factor).unwrap_or(0).max(1);

    let Some(observed) = input.observed else {
        if rf_too_high {
            return stalled("ReplicationFactorTooHigh", rf_message());
        }
        let message = format!(
            "created topic '{name}' with {want_partitions} partition(s), replication factor {want_rf}"
        );
        return TopicPlan {
            calls: vec![AdminCall::Create {
                name,
                partitions: want_partitions,
                replication_factor: want_rf,
                configs: spec.config.clone(),
            }],
            verdict: Verdict::new(Outcome::Ready, "Created", message),
            reassignment: None,
        };
    };

    let mut calls = Vec::new();
    let mut done = Vec::new();
    let mut problems: Vec<(&'static str, String)> = Vec::new();

    if observed.partitions > want_partitions {
        problems.push((
            "PartitionShrinkRefused",
            format!(
                "topic '{name}' has {} partitions on the brokers and spec.partitions is {want_partitions}; partitions \
                 never shrink: set spec.partitions to {} or more",
                observed.partitions, observed.partitions
            ),
        ));
    } else if observed.partitions < want_partitions {
        calls.push(AdminCall::CreatePartitions { name: name.clone(), total: want_partitions });
        done.push(format!("grew partitions from {} to {want_partitions}", observed.partitions));
    }

    let set: BTreeMap<String, String> = spec
        .config
        .iter()
        .filter(|(k, v)| observed.configs.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let delete: Vec<String> =
        observed.configs.keys().filter(|k| !spec.config.contains_key(*k)).cloned().collect();
    if !set.is_empty() || !delete.is_empty() {
        let mut what = Vec::new();
        if !set.is_empty() {
            what.push(format!("set {}", set.keys().cloned().collect::<Vec<_>>().join(", ")));
        }
        if !delete.is_empty() {
            what.push(format!("reverted {} to the cluster default", delete.join(", ")));
        }
        done.push(what.join(" and "));
        calls.push(AdminCall::AlterConfigs { name: name.clone(), set, delete });
    }

    let mut reassignment = None;
    if rf_too_high {
        problems.push(("ReplicationFactorTooHigh", rf_message()));
    } else {
        // Started by an earlier pass for this target: only watch it.
        let previous = input
            .topic
            .status
            .as_ref()
            .and_then(|s| s.reassignment.clone())
            .filter(|r| r.to_replication_factor == want_rf as i32);
        let moving = observed.partitions_not_at(want_rf);
        let in_sync = observed.partitions_in_sync_at(want_rf);
        // Asked again while partitions are not at the target: the first
        // call may have failed (too few live brokers during a roll) after
        // its status was written, and the brokers treat a repeat of a
        // change in progress as a no-op.
        if moving > 0 {
            calls.push(AdminCall::AlterReplicationFactor {
                name: name.clone(),
                replication_factor: want_rf,
                throttle: input.throttle,
            });
            if previous.is_none() {
                done.push(format!(
                    "started changing the replication factor from {} to {want_rf}",
                    observed.replication_factor
                ));
            }
        }
        if moving > 0 || (previous.is_some() && in_sync < observed.partitions) {
            let from = previous.map_or(observed.replication_factor as i32, |p| p.from_replication_factor);
            reassignment = Some(Reassignment {
                from_replication_factor: from,
                to_replication_factor: want_rf as i32,
                partitions_done: in_sync as i32,
            });
        }
    }

    let did = if done.is_empty() { String::new() } else { format!("{}; ", done.join("; ")) };
    let verdict = if let Some((reason, _)) = problems.first() {
        let messages: Vec<_> = problems.iter().map(|(_, m)| m.as_str()).collect();
        Verdict::new(Outcome::Stalled, reason, format!("{did}{}", messages.join("; ")))
    } else if let Some(r) = &reassignment {
        Verdict::new(
            Outcome::Progressing,
            "ReassigningReplicas",
            format!(
                "{did}changing the replication factor of '{name}' from {} to {}: {} of {} partition(s) have {} \
                 in-sync replicas",
                r.from_replication_factor, r.to_replication_factor, r.partitions_done, observed.partitions, want_rf
            ),
        )
    } else if observed.offline > 0 {
        Verdict::new(
            Outcome::Progressing,
            "OfflinePartitions",
            format!("{did}{} partition(s) of '{name}' have no leader", observed.offline),
        )
    } else if observed.under_replicated > 0 {
        Verdict::new(
            Outcome::Progressing,
            "UnderReplicated",
            format!("{did}{} partition(s) of '{name}' are under-replicated", observed.under_replicated),
        )
    } else if !calls.is_empty() {
        Verdict::new(Outcome::Ready, "Updated", done.join("; "))
    } else {
        Verdict::new(Outcome::Ready, "UpToDate", format!("topic '{name}' matches the spec"))
    };
    TopicPlan { calls, verdict, reassignment }
}

/// What to do when a Topic object is being deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletePlan {
    pub calls: Vec<AdminCall>,
    /// Why the topic is (or is not) deleted, for an Event.
    pub message: String,
}

/// Decides what deleting a Topic object does to its topic. The caller
/// removes the finalizer only after these calls succeeded, and never while
/// the brokers cannot be asked (then there is no `observed` to pass, and no
/// plan to make).
pub fn plan_delete(
    topic: &Topic,
    cluster: ClusterView,
    observed: Option<&ObservedTopic>,
    conflicts_with: Option<&str>,
) -> DeletePlan {
    let name = topic.topic_name().to_string();
    let keep = |message: String| DeletePlan { calls: vec![], message };
    if let Some(owner) = conflicts_with {
        return keep(format!("topic '{name}' belongs to Topic {owner}; left as it is"));
    }
    if topic.spec.deletion_policy == DeletionPolicy::Retain {
        return keep(format!("topic '{name}' kept on the cluster (deletionPolicy Retain)"));
    }
    if cluster == ClusterView::Missing {
        return keep(format!("Cluster '{}' is gone; nothing to delete", topic.spec.cluster_ref.name));
    }
    let Some(observed) = observed else {
        return keep(format!("topic '{name}' does not exist on the cluster; nothing to delete"));
    };
    let known_id = topic.status.as_ref().and_then(|s| s.topic_id.as_deref());
    if let Some(id) = known_id {
        if id != observed.topic_id {
            return keep(format!(
                "topic '{name}' on the cluster has id {} but this object managed id {id}: it was recreated outside \
                 the operator and is not deleted",
                observed.topic_id
            ));
        }
    }
    DeletePlan {
        calls: vec![AdminCall::Delete { name: name.clone() }],
        message: format!("deleted topic '{name}'"),
    }
}

/// The three kstatus conditions for a verdict, merged into `previous` so
/// that transition times survive while statuses stay the same.
pub fn conditions(
    previous: &[Condition],
    verdict: &Verdict,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    use ConditionStatus::{False, True};
    let (ready, reconciling, stalled) = match verdict.outcome {
        Outcome::Ready => (True, False, False),
        Outcome::Progressing => (False, True, False),
        Outcome::Stalled => (False, False, True),
    };
    let reason_or = |status, fallback: &'static str| if status == True { verdict.reason } else { fallback };
    let mut out = previous.to_vec();
    for c in [
        Condition::new(READY, ready, generation, verdict.reason, verdict.message.clone(), now),
        Condition::new(
            RECONCILING,
            reconciling,
            generation,
            reason_or(reconciling, "NotReconciling"),
            if reconciling == True { verdict.message.clone() } else { String::new() },
            now,
        ),
        Condition::new(
            STALLED,
            stalled,
            generation,
            reason_or(stalled, "NotStalled"),
            if stalled == True { verdict.message.clone() } else { String::new() },
            now,
        ),
    ] {
        tributary_crds::conditions::set_condition(&mut out, c);
    }
    out
}

/// The Topic's status after a plan ran (its calls all succeeded).
pub fn status_after(
    topic: &Topic,
    plan: &TopicPlan,
    observed: Option<&ObservedTopic>,
    now: Timestamp,
) -> TopicStatus {
    let previous = topic.status.clone().unwrap_or_default();
    let generation = topic.metadata.generation;
    let created = plan.calls.iter().find_map(|c| match c {
        AdminCall::Create { partitions, replication_factor, .. } => Some((*partitions, *replication_factor)),
        _ => None,
    });
    let grown = plan.calls.iter().find_map(|c| match c {
        AdminCall::CreatePartitions { total, .. } => Some(*total),
        _ => None,
    });
    let (partitions, rf) = match (created, observed) {
        (Some((p, rf)), _) => (Some(p), Some(rf)),
        (None, Some(o)) => (Some(grown.unwrap_or(o.partitions)), Some(o.replication_factor)),
        (None, None) => {
            (previous.partitions.map(|p| p as u32), previous.replication_factor.map(|r| r as u32))
        }
    };
    let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    TopicStatus {
        observed_generation: generation,
        conditions: conditions(&previous.conditions, &plan.verdict, generation, now),
        topic_name: Some(topic.topic_name().to_string()),
        topic_id: observed.map(|o| o.topic_id.clone()).or(previous.topic_id),
        partitions: partitions.map(to_i32),
        replication_factor: rf.map(to_i32),
        under_replicated_partitions: observed.map_or(0, |o| to_i32(o.under_replicated)),
        offline_partitions: observed.map_or(0, |o| to_i32(o.offline)),
        reassignment: plan.reassignment.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_crds::topic::ClusterRef;
    use tributary_crds::TopicSpec;

    fn topic(partitions: i32, rf: i32, config: &[(&str, &str)]) -> Topic {
        let mut t = Topic::new(
            "clicks",
            TopicSpec {
                cluster_ref: ClusterRef { name: "local-a".into() },
                topic_name: None,
                partitions,
                replication_factor: rf,
                config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                deletion_policy: DeletionPolicy::Retain,
            },
        );
        t.metadata.namespace = Some("ns".into());
        t.metadata.generation = Some(4);
        t
    }

    fn observed(partitions: u32, rf: u32, config: &[(&str, &str)]) -> ObservedTopic {
        ObservedTopic {
            topic_id: "id-1".into(),
            partitions,
            replication_factor: rf,
            configs: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            under_replicated: 0,
            offline: 0,
            replicas: vec![],
        }
    }

    const THREE: ClusterView = ClusterView::Present { brokers: 3 };

    fn run(t: &Topic, cluster: ClusterView, o: Option<&ObservedTopic>) -> TopicPlan {
        plan(PlanInput { topic: t, cluster, observed: o, conflicts_with: None, throttle: None })
    }

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn creates_a_missing_topic_with_its_config() {
        let t = topic(6, 3, &[("retention.ms", "1000")]);
        let p = run(&t, THREE, None);
        assert_eq!(
            p.calls,
            [AdminCall::Create {
                name: "clicks".into(),
                partitions: 6,
                replication_factor: 3,
                configs: map(&[("retention.ms", "1000")])
            }]
        );
        assert_eq!((p.verdict.outcome, p.verdict.reason), (Outcome::Ready, "Created"));
    }

    #[test]
    fn uses_topic_name_override() {
        let mut t = topic(1, 1, &[]);
        t.spec.topic_name = Some("Clicks_v2".into());
        let p = run(&t, THREE, None);
        assert!(matches!(&p.calls[0], AdminCall::Create { name, .. } if name == "Clicks_v2"));
    }

    #[test]
    fn up_to_date_topic_needs_no_call() {
        let t = topic(6, 3, &[("retention.ms", "1000")]);
        let p = run(&t, THREE, Some(&observed(6, 3, &[("retention.ms", "1000")])));
        assert!(p.calls.is_empty());
        assert_eq!((p.verdict.outcome, p.verdict.reason), (Outcome::Ready, "UpToDate"));
    }

    #[test]
    fn grows_partitions() {
        let t = topic(12, 3, &[]);
        let p = run(&t, THREE, Some(&observed(6, 3, &[])));
        assert_eq!(p.calls, [AdminCall::CreatePartitions { name: "clicks".into(), total: 12 }]);
        assert_eq!((p.verdict.outcome, p.verdict.reason), (Outcome::Ready, "Updated"));
        assert!(p.verdict.message.contains("from 6 to 12"), "{}", p.verdict.message);
    }

    #[test]
    fn refuses_to_shrink_but_still_applies_config() {
        let t = topic(3, 3, &[("retention.ms", "5")]);
        let p = run(&t, THREE, Some(&observed(6, 3, &[])));
        assert_eq!(
            p.calls,
            [AdminCall::AlterConfigs {
                name: "clicks".into(),
                set: map(&[("retention.ms", "5")]),
                delete: vec![]
            }]
        );
        assert_eq!((p.verdict.outcome, p.verdict.reason), (Outcome::Stalled, "PartitionShrinkRefused"));
        assert!(p.verdict.message.contains("set spec.partitions to 6"), "{}", p.verdict.message);
        assert!(p.verdict.message.contains("set retention.ms"), "{}", p.verdict.message);
    }

    #[test]
    fn sets_changed_and_reverts_out_of_band_configs() {
        let t = topic(6, 3, &[("retention.ms", "2000"), ("cleanup.policy", "compact")]);
        let o = observed(
            6,
            3,
            &[("retention.ms", "1000"), ("cleanup.policy", "compact"), ("segment.ms", "60000")],
        );
        let p = run(&t, THREE, Some(&o));
        assert_eq!(
            p.calls,
            [AdminCall::AlterConfigs {
                name: "clicks".into(),
                set: map(&[("retention.ms", "2000")]),
                delete: vec!["segment.ms".into()],
            }]
        );
        assert_eq!(p.verdict.outcome, Outcome::Ready);
        assert!(p.verdict.message.contains("reverted segment.ms"), "{}", p.verdict.message);
    }

    #[test]
    fn grow_and_config_in_one_pass_in_order() {
        let t = topic(8, 3, &[("retention.ms", "1")]);
        let p = run(&t, THREE, Some(&observed(4, 3, &[])));
        assert!(matches!(p.calls[0], AdminCall::CreatePartitions { total: 8, .. }));
        assert!(matches!(p.calls[1], AdminCall::AlterConfigs { .. }));
        assert_eq!(p.calls.len(), 2);
    }

    #[test]
    fn replication_factor_above_brokers_is_stalled_and_not_created() {
        let t = topic(3, 5, &[]);
        let p = run(&t, THREE, None);
        assert!(p.calls.is_empty());
        assert_eq!((p.verdict.outcome, p.verdict.reason), (Outcome::Stalled, "ReplicationFactorTooHigh"));
        assert!(p.verdict.message.contains("3 broker(s)"), "{}", p.verdict.message);
    }

    #[test]
    fn replication_factor_above_brokers_on_existing_topic_still_grows() {
        let t = topic(6, 5, &[]);
        let p = run(&t, THREE, Some(&observed(3, 3, &[])));
        assert_eq!(p.calls, [AdminCall::CreatePartitions { name: "clicks".into(), total: 6 }]);
        assert_eq!(p.verdict.reason, "ReplicationFactorTooHigh");
    }

    #[test]
    fn replication_factor_change_steps() {
        // RF 1 -> 3 over three partitions: (replicas, in sync) per partition
        // as the brokers report them at each step.
        let started =
            Reassignment { from_replication_factor: 1, to_replication_factor: 3, partitions_done: 0 };
        type Row =
            (&'static str, Vec<(u32, u32)>, Option<Reassignment>, bool, Outcome, &'static str, Option<i32>);
        let table: Vec<Row> = vec![
            (
                "not started: start it",
                vec![(1, 1); 3],
                None,
                true,
                Outcome::Progressing,
                "ReassigningReplicas",
                Some(0),
            ),
            (
                "remembered as started, but nothing moved (the call failed): asked again",
                vec![(1, 1); 3],
                Some(started.clone()),
                true,
                Outcome::Progressing,
                "ReassigningReplicas",
                Some(0),
            ),
            (
                "started, copying",
                vec![(3, 1), (3, 2), (3, 3)],
                Some(started.clone()),
                false,
                Outcome::Progressing,
                "ReassigningReplicas",
                Some(1),
            ),
            (
                "a pass that lost its status starts nothing twice: the lists are at 3",
                vec![(3, 1); 3],
                None,
                false,
                Outcome::Progressing,
                "UnderReplicated",
                None,
            ),
            (
                "every partition in sync",
                vec![(3, 3); 3],
                Some(started.clone()),
                false,
                Outcome::Ready,
                "UpToDate",
                None,
            ),
        ];
        for (what, replicas, previous, calls, outcome, reason, done) in table {
            let mut t = topic(3, 3, &[]);
            t.status = Some(TopicStatus { reassignment: previous, ..TopicStatus::default() });
            let mut o = observed(3, if calls { 1 } else { 3 }, &[]);
            o.under_replicated = replicas.iter().filter(|(r, i)| r != i).count() as u32;
            o.replicas = replicas;
            let p = plan(PlanInput {
                topic: &t,
                cluster: THREE,
                observed: Some(&o),
                conflicts_with: None,
                throttle: Some(4096),
            });
            let want_calls = if calls {
                vec![AdminCall::AlterReplicationFactor {
                    name: "clicks".into(),
                    replication_factor: 3,
                    throttle: Some(4096),
                }]
            } else {
                vec![]
            };
            assert_eq!(p.calls, want_calls, "{what}");
            assert_eq!(
                (p.verdict.outcome, p.verdict.reason),
                (outcome, reason),
                "{what}: {}",
                p.verdict.message
            );
            assert_eq!(p.reassignment.as_ref().map(|r| r.partitions_done), done, "{what}");
        }
        // A decrease keeps the union of old and new replicas until the switch.
        let mut t = topic(1, 1, &[]);
        t.status = Some(TopicStatus {
            reassignment: Some(Reassignment {
                from_replication_factor: 3,
                to_replication_factor: 1,
                partitions_done: 0,
            }),
            ..TopicStatus::default()
        });
        let mut o = observed(1, 3, &[]);
        o.replicas = vec![(3, 3)];
        let p = run(&t, THREE, Some(&o));
        // Asked again while the lists hold old and new: the brokers make the
        // repeat of a change in progress a no-op.
        assert!(
            matches!(p.calls.as_slice(), [AdminCall::AlterReplicationFactor { replication_factor: 1, .. }]),
            "{:?}",
            p.calls
        );
        assert!(p.verdict.message.contains("from 3 to 1: 0 of 1 partition(s)"), "{}", p.verdict.message);
    }

    #[test]
    fn replication_factor_above_the_brokers_is_stalled_not_reassigned() {
        let t = topic(3, 3, &[]);
        let p = run(&t, ClusterView::Present { brokers: 2 }, Some(&observed(3, 1, &[])));
        assert!(p.calls.is_empty());
        assert_eq!((p.verdict.outcome, p.verdict.reason), (Outcome::Stalled, "ReplicationFactorTooHigh"));
        assert!(p.verdict.message.contains("more than the 2 broker(s)"), "{}", p.verdict.message);
    }

    #[test]
    fn min_insync_above_rf_is_refused_before_any_call() {
        let t = topic(3, 2, &[("min.insync.replicas", "3")]);
        let p = run(&t, THREE, None);
        assert!(p.calls.is_empty());
        assert_eq!(p.verdict.reason, "MinInsyncReplicasTooHigh");
    }

    #[test]
    fn missing_cluster_and_conflicts_change_nothing() {
        let t = topic(3, 1, &[]);
        let p = run(&t, ClusterView::Missing, None);
        assert!(p.calls.is_empty());
        assert_eq!((p.verdict.outcome, p.verdict.reason), (Outcome::Stalled, "ClusterNotFound"));

        let p = plan(PlanInput {
            topic: &t,
            cluster: THREE,
            observed: Some(&observed(1, 1, &[("retention.ms", "9")])),
            conflicts_with: Some("ns/clicks-old"),
            throttle: None,
        });
        assert!(p.calls.is_empty());
        assert_eq!(p.verdict.reason, "TopicConflict");
        assert!(p.verdict.message.contains("ns/clicks-old"));
    }

    #[test]
    fn offline_and_under_replicated_are_progressing() {
        let t = topic(3, 3, &[]);
        let mut o = observed(3, 3, &[]);
        o.under_replicated = 2;
        let p = run(&t, THREE, Some(&o));
        assert_eq!((p.verdict.outcome, p.verdict.reason), (Outcome::Progressing, "UnderReplicated"));
        o.offline = 1;
        let p = run(&t, THREE, Some(&o));
        assert_eq!((p.verdict.outcome, p.verdict.reason), (Outcome::Progressing, "OfflinePartitions"));
    }

    #[test]
    fn delete_follows_the_deletion_policy() {
        let mut t = topic(3, 1, &[]);
        let o = observed(3, 1, &[]);
        let d = plan_delete(&t, THREE, Some(&o), None);
        assert!(d.calls.is_empty(), "Retain keeps the topic");
        assert!(d.message.contains("Retain"));

        t.spec.deletion_policy = DeletionPolicy::Delete;
        let d = plan_delete(&t, THREE, Some(&o), None);
        assert_eq!(d.calls, [AdminCall::Delete { name: "clicks".into() }]);
        assert!(plan_delete(&t, THREE, None, None).calls.is_empty(), "already gone");
        assert!(plan_delete(&t, ClusterView::Missing, None, None).calls.is_empty());
        assert!(plan_delete(&t, THREE, Some(&o), Some("ns/older")).calls.is_empty(), "not ours");
    }

    #[test]
    fn delete_spares_a_topic_recreated_outside_the_operator() {
        let mut t = topic(3, 1, &[]);
        t.spec.deletion_policy = DeletionPolicy::Delete;
        t.status = Some(TopicStatus { topic_id: Some("id-0".into()), ..TopicStatus::default() });
        let d = plan_delete(&t, THREE, Some(&observed(3, 1, &[])), None);
        assert!(d.calls.is_empty());
        assert!(d.message.contains("recreated outside"), "{}", d.message);
        t.status = Some(TopicStatus { topic_id: Some("id-1".into()), ..TopicStatus::default() });
        assert_eq!(plan_delete(&t, THREE, Some(&observed(3, 1, &[])), None).calls.len(), 1);
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("timestamp")
    }

    #[test]
    fn conditions_follow_kstatus() {
        let stalled = Verdict::new(Outcome::Stalled, "PartitionShrinkRefused", "no");
        let cs = conditions(&[], &stalled, Some(4), at(100));
        let get = |cs: &[Condition], ty| cs.iter().find(|c| c.type_ == ty).cloned().expect("condition");
        assert_eq!(get(&cs, READY).status, ConditionStatus::False);
        assert_eq!(get(&cs, READY).reason, "PartitionShrinkRefused");
        assert_eq!(get(&cs, STALLED).status, ConditionStatus::True);
        assert_eq!(get(&cs, RECONCILING).status, ConditionStatus::False);
        assert!(cs.iter().all(|c| c.observed_generation == Some(4)));

        let ready = Verdict::new(Outcome::Ready, "Updated", "ok");
        let cs2 = conditions(&cs, &ready, Some(5), at(200));
        assert_eq!(get(&cs2, READY).status, ConditionStatus::True);
        assert_eq!(get(&cs2, READY).last_transition_time.0, at(200));
        assert_eq!(get(&cs2, STALLED).status, ConditionStatus::False);
        // Reconciling stayed False: its transition time is kept.
        assert_eq!(get(&cs2, RECONCILING).last_transition_time.0, at(100));
        assert_eq!(cs2.len(), 3);
    }

    #[test]
    fn status_reports_what_the_brokers_have() {
        let t = topic(8, 3, &[]);
        let mut o = observed(4, 3, &[]);
        o.under_replicated = 1;
        let p = run(&t, THREE, Some(&o));
        let s = status_after(&t, &p, Some(&o), at(5));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.partitions, Some(8), "grown by this pass");
        assert_eq!(s.replication_factor, Some(3));
        assert_eq!(s.topic_id.as_deref(), Some("id-1"));
        assert_eq!(s.under_replicated_partitions, 1);
        assert_eq!(s.topic_name.as_deref(), Some("clicks"));

        let created = run(&t, THREE, None);
        let s = status_after(&t, &created, None, at(5));
        assert_eq!((s.partitions, s.replication_factor), (Some(8), Some(3)));
    }
}

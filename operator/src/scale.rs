//! How many brokers the StatefulSet runs, and what must happen before that
//! number changes: a pure function of the declared and running broker
//! counts and the brokers' view of the cluster.
//!
//! - **Scale-up** runs the new brokers at once (they join the quorum as
//!   learners when they start). With `spec.rebalanceOnScale`, once every
//!   broker is alive and no partition is under-replicated, replicas move
//!   from the fullest brokers onto the emptiest ([`rebalance_moves`]), with
//!   the reassignment throttle, until no broker holds more than one replica
//!   more than another.
//! - **Scale-down** removes one broker at a time, the highest ordinal (the
//!   one a StatefulSet removes): drain it (`broker drain`: its replicas
//!   move to the brokers that stay), wait until it holds nothing and every
//!   ISR is full, remove it from the quorum and the metadata, and only then
//!   shrink the StatefulSet by one. Its volume claim follows
//!   `spec.storage.deleteClaimsOnScaleDown` (the StatefulSet's claim
//!   retention policy; kept by default). A scale-down that would leave
//!   fewer brokers than a topic's replication factor is refused
//!   (`Stalled`). One broker at a time because a drain picks the emptiest
//!   live brokers: draining two at once could move replicas from one
//!   leaving broker onto the other.
//!
//! Each reconcile makes at most one step; the next reconcile sees its effect.

use crate::health::{sample, ClusterCall, ClusterHealth};
use crate::topic_plan::{Outcome, Verdict};

/// `Stalled` reason: the brokers left would be fewer than a topic's replicas.
pub const SCALE_DOWN_BELOW_RF: &str = "ScaleDownBelowReplicationFactor";
/// Most partitions one rebalance pass moves.
pub const MAX_MOVES_PER_PASS: usize = 50;

/// Everything [`plan_scale`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct ScaleInput<'a> {
    /// `spec.replicas`.
    pub declared: i32,
    /// The StatefulSet's replicas (`None` before it exists).
    pub running: Option<i32>,
    /// The brokers' view, or why they could not be asked.
    pub health: Result<&'a ClusterHealth, &'a str>,
    /// `spec.rebalanceOnScale`.
    pub rebalance: bool,
    /// `spec.reassignment.throttleBytesPerSecond`.
    pub throttle: Option<u64>,
}

/// What to do about the broker count now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePlan {
    /// `spec.replicas` of the StatefulSet to apply.
    pub replicas: i32,
    /// Cluster calls to make this pass.
    pub calls: Vec<ClusterCall>,
    /// What to report while the count is changing (`None`: nothing to say).
    pub verdict: Option<Verdict>,
}

impl ScalePlan {
    /// A rolling restart waits while replicas are moving or brokers leave.
    pub fn busy(&self) -> bool {
        self.verdict.is_some()
    }

    fn steady(replicas: i32) -> ScalePlan {
        ScalePlan { replicas, calls: vec![], verdict: None }
    }
}

fn verdict(outcome: Outcome, reason: &'static str, message: String) -> Option<Verdict> {
    Some(Verdict { outcome, reason, message })
}

/// Decides the StatefulSet's replicas and the calls to make this pass.
pub fn plan_scale(input: ScaleInput<'_>) -> ScalePlan {
    let declared = input.declared.max(1);
    let Some(running) = input.running else {
        return ScalePlan::steady(declared);
    };
    if running <= declared {
        return grow(input, declared, running);
    }
    let leaving = running - 1;
    let keep = |v| ScalePlan { replicas: running, calls: vec![], verdict: v };
    let health = match input.health {
        Ok(h) => h,
        Err(e) => {
            return keep(verdict(
                Outcome::Progressing,
                "ScalingDown",
                format!("scaling down to {declared}: waiting to ask the brokers before removing broker {leaving}: {e}"),
            ))
        }
    };
    // Only settled partitions say what a topic's RF is: one being moved
    // lists its old and new replicas together until the switch.
    let too_big: Vec<_> = health
        .partitions
        .iter()
        .filter(|p| !p.under_replicated() && p.replicas.len() > declared as usize)
        .collect();
    if let Some(max_rf) = too_big.iter().map(|p| p.replicas.len()).max() {
        return keep(verdict(
            Outcome::Stalled,
            SCALE_DOWN_BELOW_RF,
            format!(
                "spec.replicas is {declared} but partitions have up to {max_rf} replicas ({}); lower those topics' \
                 replicationFactor to {declared} or less first, or set spec.replicas back to {running}",
                sample(&too_big)
            ),
        ));
    }
    let hosted = health.replicas_on(leaving);
    if hosted > 0 {
        let under = health.under_replicated();
        if !under.is_empty() {
            return keep(verdict(
                Outcome::Progressing,
                "DrainingBroker",
                format!(
                    "scaling down to {declared}: broker {leaving} still holds {hosted} replica(s); waiting for {} \
                     under-replicated partition(s) to catch up ({})",
                    under.len(),
                    sample(&under)
                ),
            ));
        }
        return ScalePlan {
            replicas: running,
            calls: vec![ClusterCall::Drain { node: leaving, throttle: input.throttle }],
            verdict: verdict(
                Outcome::Progressing,
                "DrainingBroker",
                format!("scaling down to {declared}: moving {hosted} replica(s) off broker {leaving}"),
            ),
        };
    }
    if health.broker(leaving).is_some() {
        return ScalePlan {
            replicas: running,
            calls: vec![ClusterCall::RemoveBroker { node: leaving }],
            verdict: verdict(
                Outcome::Progressing,
                "RemovingBroker",
                format!(
                    "scaling down to {declared}: broker {leaving} is drained; removing it from the quorum"
                ),
            ),
        };
    }
    ScalePlan {
        replicas: running - 1,
        calls: vec![],
        verdict: verdict(
            Outcome::Progressing,
            "ScalingDown",
            format!("scaling down to {declared}: broker {leaving} is drained and removed; stopping it"),
        ),
    }
}

/// Scale-up (or steady), with the optional rebalance.
fn grow(input: ScaleInput<'_>, declared: i32, running: i32) -> ScalePlan {
    if !input.rebalance || running < declared {
        return ScalePlan::steady(declared);
    }
    let Ok(health) = input.health else {
        return ScalePlan::steady(declared);
    };
    let all_alive = (0..declared).all(|n| health.alive(n));
    if !all_alive || !health.under_replicated().is_empty() || !health.offline().is_empty() {
        return ScalePlan::steady(declared);
    }
    let calls = rebalance_moves(health, declared, input.throttle);
    if calls.is_empty() {
        return ScalePlan::steady(declared);
    }
    let message =
        format!("moving {} replica(s) to spread them evenly over {declared} broker(s)", calls.len());
    ScalePlan { replicas: declared, calls, verdict: verdict(Outcome::Progressing, "Rebalancing", message) }
}

/// Reassignments that even out replicas over brokers `0..brokers`: each
/// moves one replica from the fullest broker to the emptiest one not in
/// that partition yet, until no broker holds more than one replica more
/// than another (at most [`MAX_MOVES_PER_PASS`], each partition once).
pub fn rebalance_moves(health: &ClusterHealth, brokers: i32, throttle: Option<u64>) -> Vec<ClusterCall> {
    let mut load: std::collections::BTreeMap<i32, usize> =
        health.load().into_iter().filter(|(n, _)| (0..brokers).contains(n)).collect();
    for n in 0..brokers {
        load.entry(n).or_insert(0);
    }
    let mut targets: Vec<Vec<i32>> = health.partitions.iter().map(|p| p.replicas.clone()).collect();
    let mut moved = vec![false; targets.len()];
    let mut calls = Vec::new();
    while calls.len() < MAX_MOVES_PER_PASS {
        // Fullest (lowest id on ties) and emptiest (highest id on ties: the new ones).
        let Some((&hi, &hn)) = load.iter().max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n))) else { break };
        let Some((&lo, &ln)) = load.iter().min_by_key(|(n, l)| (**l, std::cmp::Reverse(**n))) else { break };
        if hn <= ln + 1 {
            break;
        }
        let Some(i) =
            (0..targets.len()).find(|&i| !moved[i] && targets[i].contains(&hi) && !targets[i].contains(&lo))
        else {
            break;
        };
        for r in &mut targets[i] {
            if *r == hi {
                *r = lo;
            }
        }
        moved[i] = true;
        *load.entry(hi).or_default() -= 1;
        *load.entry(lo).or_default() += 1;
        let p = &health.partitions[i];
        calls.push(ClusterCall::Reassign {
            topic: p.topic.clone(),
            partition: p.partition,
            replicas: targets[i].clone(),
            throttle,
        });
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{BrokerView, PartitionView};

    fn health(brokers: i32, placements: &[&[i32]]) -> ClusterHealth {
        ClusterHealth {
            controller: Some(0),
            brokers: (0..brokers)
                .map(|n| BrokerView { node_id: n, alive: true, rack: String::new() })
                .collect(),
            partitions: placements
                .iter()
                .enumerate()
                .map(|(i, r)| PartitionView {
                    topic: "t".into(),
                    partition: i as u32,
                    leader: r[0],
                    replicas: r.to_vec(),
                    isr: r.to_vec(),
                    min_isr: 1,
                })
                .collect(),
        }
    }

    fn input(declared: i32, running: Option<i32>, h: &ClusterHealth) -> ScaleInput<'_> {
        ScaleInput { declared, running, health: Ok(h), rebalance: false, throttle: Some(1 << 20) }
    }

    fn short(p: &ScalePlan) -> (i32, Vec<&'static str>, Option<&'static str>) {
        (p.replicas, p.calls.iter().map(ClusterCall::name).collect(), p.verdict.as_ref().map(|v| v.reason))
    }

    #[test]
    fn drain_then_remove_then_shrink_one_broker_at_a_time() {
        let on_3 = health(4, &[&[0, 1, 3], &[3, 2, 1]]);
        let drained = health(4, &[&[0, 1, 2], &[2, 0, 1]]);
        let mut removed = drained.clone();
        removed.brokers.pop();
        let next = health(3, &[&[0, 2]]);
        let mut catching_up = health(4, &[&[0, 1, 2, 3], &[2, 0, 1]]);
        catching_up.partitions[0].isr = vec![0, 1, 3];
        type Row<'a> = (&'a str, ScaleInput<'a>, (i32, Vec<&'a str>, Option<&'a str>));
        let table: Vec<Row<'_>> = vec![
            ("new cluster", input(3, None, &on_3), (3, vec![], None)),
            ("steady", input(4, Some(4), &on_3), (4, vec![], None)),
            ("scale-up runs the new brokers", input(5, Some(4), &on_3), (5, vec![], None)),
            (
                "the leaving broker is drained first",
                input(3, Some(4), &on_3),
                (4, vec!["DrainBroker"], Some("DrainingBroker")),
            ),
            (
                "no second drain while replicas move",
                input(3, Some(4), &catching_up),
                (4, vec![], Some("DrainingBroker")),
            ),
            (
                "drained: removed from the quorum",
                input(3, Some(4), &drained),
                (4, vec!["RemoveBroker"], Some("RemovingBroker")),
            ),
            (
                "removed: the StatefulSet shrinks",
                input(3, Some(4), &removed),
                (3, vec![], Some("ScalingDown")),
            ),
            ("then the next one", input(2, Some(3), &next), (3, vec!["DrainBroker"], Some("DrainingBroker"))),
            ("not below a topic's rf", input(2, Some(4), &drained), (4, vec![], Some(SCALE_DOWN_BELOW_RF))),
        ];
        for (what, i, want) in table {
            assert_eq!(short(&plan_scale(i)), want, "{what}");
        }
        let p = plan_scale(input(3, Some(4), &on_3));
        assert_eq!(p.calls, [ClusterCall::Drain { node: 3, throttle: Some(1 << 20) }]);
        assert!(p.busy());
        let stalled = plan_scale(input(2, Some(4), &drained)).verdict.expect("verdict");
        assert_eq!(stalled.outcome, Outcome::Stalled);
        assert!(
            stalled.message.contains("lower those topics' replicationFactor to 2"),
            "{}",
            stalled.message
        );
        let unreachable =
            plan_scale(ScaleInput { health: Err("connection refused"), ..input(3, Some(4), &on_3) });
        assert_eq!(short(&unreachable), (4, vec![], Some("ScalingDown")), "never shrinks blind");
    }

    #[test]
    fn rebalance_moves_replicas_onto_new_brokers_until_even() {
        // Three brokers with two RF-2 partitions each pair; broker 3 is new.
        let h = health(4, &[&[0, 1], &[1, 2], &[2, 0], &[0, 1], &[1, 2], &[2, 0]]);
        let moves = rebalance_moves(&h, 4, None);
        assert_eq!(moves.len(), 3, "{moves:?}");
        let mut load = h.load();
        for m in &moves {
            let ClusterCall::Reassign { partition, replicas, .. } = m else { panic!("{m:?}") };
            let before = &h.partitions[*partition as usize].replicas;
            assert_eq!(replicas.len(), before.len());
            assert!(replicas.contains(&3), "{replicas:?}");
            for r in before {
                *load.get_mut(r).expect("known") -= 1;
            }
            for r in replicas {
                *load.entry(*r).or_default() += 1;
            }
        }
        assert_eq!(load.values().copied().collect::<Vec<_>>(), [3, 3, 3, 3]);
        assert!(
            rebalance_moves(&health(3, &[&[0, 1], &[1, 2], &[2, 0]]), 3, None).is_empty(),
            "even already"
        );

        let with = |h| ScaleInput { rebalance: true, ..input(4, Some(4), h) };
        assert_eq!(short(&plan_scale(with(&h))).2, Some("Rebalancing"));
        assert_eq!(short(&plan_scale(input(4, Some(4), &h))), (4, vec![], None), "only when asked for");
        let mut lagging = h.clone();
        lagging.partitions[0].isr = vec![0];
        assert_eq!(short(&plan_scale(with(&lagging))), (4, vec![], None), "not while under-replicated");
    }
}

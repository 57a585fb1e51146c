//! Reconciles a Cluster: asks the brokers how the cluster is doing, decides
//! the broker count ([`crate::scale`]: drain before shrink) and the next
//! restart ([`crate::roll`]: gated on what the brokers report), applies the
//! objects, makes the calls those plans chose, and reports brokers, health,
//! roll progress and conditions in the status (and as metrics).
//!
//! One pass makes at most one change to the brokers: one cluster call of the
//! scale plan (a drain, a removal or one rebalance batch), one pod restart,
//! or the preferred-leader election that ends a roll. A roll waits while a
//! scale-down or rebalance is moving replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tributary_crds::conditions::{find_condition, Condition, STALLED};
use tributary_crds::{Cluster, ClusterStatus};

use super::topic::cluster_address;
use super::{apply_status, Context, Error};
use crate::admin::AdminError;
use crate::cluster::{desired, image, DesiredCluster};
use crate::health::{ClusterCall, ClusterHealth};
use crate::labels::{client_service_name, selector_labels, FIELD_MANAGER};
use crate::metrics::ClusterGauges;
use crate::roll::{decide, progress_after, RollDecision, RollInput, RollPolicy};
use crate::scale::{plan_scale, ScaleInput, ScalePlan};
use crate::topic_plan::{conditions, Outcome, Verdict};

/// Reconciles one Cluster.
pub async fn reconcile(cluster: Arc<Cluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let result = apply(&cluster, &ctx).await;
    ctx.metrics.reconciled("Cluster", start.elapsed());
    if result.is_ok() {
        ctx.succeeded(cluster.as_ref());
    }
    result
}

/// A refusal that only means "a reassignment is still running": wait.
fn still_moving(e: &AdminError) -> bool {
    matches!(e, AdminError::Refused { message, .. } if message.contains("being reassigned"))
}

async fn apply(cluster: &Cluster, ctx: &Context) -> Result<Action, Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let api: Api<Cluster> = Api::namespaced(ctx.client.clone(), &ns);
    let running = Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&client_service_name(&name))
        .await?
        .map(|s| s.spec.and_then(|spec| spec.replicas).unwrap_or(1));
    let address = cluster_address(cluster);
    // The brokers are asked once they exist; before, there is nobody to ask.
    let health: Result<ClusterHealth, String> = match running {
        Some(_) => ctx.brokers.cluster_health(&address).await.map_err(|e| e.to_string()),
        None => Err("the brokers are not started yet".into()),
    };
    let throttle = cluster.spec.reassignment.throttle_bytes_per_second.and_then(|t| u64::try_from(t).ok());
    let scale = plan_scale(ScaleInput {
        declared: cluster.spec.replicas,
        running,
        health: health.as_ref().map_err(String::as_str),
        rebalance: cluster.spec.rebalance_on_scale,
        throttle,
    });
    let objects = match desired(cluster, &ctx.defaults, scale.replicas) {
        Ok(o) => o,
        Err(e) => {
            let verdict =
                Verdict { outcome: Outcome::Stalled, reason: "InvalidSpec", message: e.to_string() };
            let report = Report { verdict: &verdict, health: None, decision: None, scale: None };
            apply_status(&api, cluster, &status(cluster, ctx, None, &report)).await?;
            return Ok(Action::await_change());
        }
    };
    let sts = apply_objects(ctx, &ns, &objects).await?;

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector =
        selector_labels(&name).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let pod_list = pods.list(&ListParams::default().labels(&selector)).await?;
    let progress = cluster.status.as_ref().and_then(|s| s.roll.as_ref());
    let mut decision = decide(RollInput {
        sts: &sts,
        pods: &pod_list.items,
        health: health.as_ref().map_err(String::as_str),
        policy: RollPolicy::of(cluster),
        progress,
        now: (ctx.now)(),
    });
    if scale.busy() {
        if let RollDecision::Restart { outdated, .. } = decision {
            decision = RollDecision::Blocked {
                reason: "waiting for the brokers' replicas to stop moving (scale-down or rebalance)".into(),
                outdated,
            };
        }
    }

    let refused = make_scale_calls(cluster, ctx, &address, &scale).await?;
    match &decision {
        RollDecision::Restart { pod, outdated, .. } => {
            pods.delete(pod, &DeleteParams::default()).await?;
            ctx.event(
                cluster,
                false,
                "BrokerRestarted",
                format!("restarted {pod} for the new pod template ({outdated} broker(s) outdated)"),
            )
            .await;
        }
        RollDecision::UpToDate { elect_leaders: true } => {
            // Until it succeeds the roll stays in the status and this is retried.
            ctx.brokers.cluster_call(&address, &ClusterCall::ElectLeaders).await?;
            ctx.event(
                cluster,
                false,
                "RollFinished",
                "every broker runs the new pod template; leaders moved back to their preferred replicas"
                    .into(),
            )
            .await;
        }
        _ => {}
    }

    let verdict =
        refused.unwrap_or_else(|| cluster_verdict(cluster, &sts, &decision, &scale, health.as_ref()));
    let was_stalled_for = cluster
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, STALLED))
        .filter(|c| c.is_true())
        .map(|c| c.reason.clone());
    if verdict.outcome == Outcome::Stalled && was_stalled_for.as_deref() != Some(verdict.reason) {
        ctx.event(cluster, true, verdict.reason, verdict.message.clone()).await;
    }
    let report = Report {
        verdict: &verdict,
        health: health.as_ref().ok(),
        decision: Some(&decision),
        scale: Some(&scale),
    };
    let new_status = status(cluster, ctx, Some(&sts), &report);
    ctx.metrics.cluster(&ns, &name, &gauges(&new_status, &decision));
    apply_status(&api, cluster, &new_status).await?;
    let moving = decision != RollDecision::UpToDate { elect_leaders: false } || scale.busy();
    Ok(match verdict.outcome {
        Outcome::Progressing => Action::requeue(Duration::from_secs(15)),
        // A blocked roll or scale resumes by itself once the cause heals.
        Outcome::Stalled if moving => Action::requeue(Duration::from_secs(30)),
        Outcome::Ready | Outcome::Stalled => Action::requeue(Duration::from_secs(300)),
    })
}

/// Makes the scale plan's calls; a refusal becomes the verdict to report.
async fn make_scale_calls(
    cluster: &Cluster,
    ctx: &Context,
    address: &str,
    scale: &ScalePlan,
) -> Result<Option<Verdict>, Error> {
    for call in &scale.calls {
        match ctx.brokers.cluster_call(address, call).await {
            Ok(()) => {}
            Err(e) if still_moving(&e) => return Ok(None),
            Err(e @ AdminError::Refused { .. }) => {
                return Ok(Some(Verdict {
                    outcome: Outcome::Stalled,
                    reason: "BrokersRefused",
                    message: e.to_string(),
                }))
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let (Some(first), Some(v)) = (scale.calls.first(), &scale.verdict) {
        let what =
            if scale.calls.len() > 1 { format!(" ({} calls)", scale.calls.len()) } else { String::new() };
        ctx.event(cluster, false, v.reason, format!("{}{what}: {}", first.name(), v.message)).await;
    }
    Ok(None)
}

/// Applies the desired objects in order; returns the StatefulSet as stored.
async fn apply_objects(ctx: &Context, ns: &str, d: &DesiredCluster) -> Result<StatefulSet, Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let name =
        |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.name.clone().unwrap_or_default();
    Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
        .patch(&name(&d.config_map.metadata), &pp, &Patch::Apply(typed(&d.config_map)?))
        .await?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    for svc in [&d.headless_service, &d.client_service] {
        services.patch(&name(&svc.metadata), &pp, &Patch::Apply(typed(svc)?)).await?;
    }
    let sts = Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
        .patch(&name(&d.stateful_set.metadata), &pp, &Patch::Apply(typed(&d.stateful_set)?))
        .await?;
    Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), ns)
        .patch(&name(&d.pod_disruption_budget.metadata), &pp, &Patch::Apply(typed(&d.pod_disruption_budget)?))
        .await?;
    Ok(sts)
}

/// Server-side apply needs `apiVersion` and `kind` in the body.
fn typed<K: k8s_openapi::Resource + serde::Serialize>(obj: &K) -> Result<serde_json::Value, Error> {
    let mut v = serde_json::to_value(obj)?;
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), K::API_VERSION.into());
        m.insert("kind".into(), K::KIND.into());
    }
    Ok(v)
}

/// What to report about a Cluster. `Ready` needs the declared brokers
/// ready, the brokers answering with every partition fully replicated, and
/// no roll or scale in progress; a stalled roll or scale wins over
/// everything else but TLS.
pub fn cluster_verdict(
    cluster: &Cluster,
    sts: &StatefulSet,
    decision: &RollDecision,
    scale: &ScalePlan,
    health: Result<&ClusterHealth, &String>,
) -> Verdict {
    if cluster.spec.listeners.tls.is_some() {
        return Verdict {
            outcome: Outcome::Stalled,
            reason: "TLSNotSupported",
            message: "spec.listeners.tls is set, but the broker does not serve TLS yet; remove it".into(),
        };
    }
    let progressing = |reason, message| Verdict { outcome: Outcome::Progressing, reason, message };
    if let RollDecision::Stalled { reason, message, .. } = decision {
        return Verdict { outcome: Outcome::Stalled, reason, message: message.clone() };
    }
    if let Some(v) = &scale.verdict {
        return v.clone();
    }
    let want = cluster.spec.replicas;
    let s = sts.status.clone().unwrap_or_default();
    let ready = s.ready_replicas.unwrap_or(0);
    match decision {
        RollDecision::Restart { pod, outdated, .. } => {
            return progressing(
                "RollingRestart",
                format!("restarting {pod}; {outdated} broker(s) run an old pod template"),
            )
        }
        RollDecision::Blocked { reason, .. } => return progressing("RollBlocked", reason.clone()),
        _ => {}
    }
    if ready < want || s.replicas != want {
        return progressing("WaitingForBrokers", format!("{ready} of {want} broker(s) ready"));
    }
    let h = match health {
        Ok(h) => h,
        Err(e) => {
            return progressing("BrokersUnreachable", format!("{ready} of {want} broker(s) ready, but: {e}"))
        }
    };
    let offline = h.offline();
    if !offline.is_empty() {
        return progressing(
            "OfflinePartitions",
            format!("{} partition(s) have no leader ({})", offline.len(), crate::health::sample(&offline)),
        );
    }
    let under = h.under_replicated();
    if !under.is_empty() {
        return progressing(
            "UnderReplicatedPartitions",
            format!("{} partition(s) are under-replicated ({})", under.len(), crate::health::sample(&under)),
        );
    }
    let controller = h.controller.map_or("no controller".to_string(), |c| format!("controller {c}"));
    Verdict {
        outcome: Outcome::Ready,
        reason: "BrokersReady",
        message: format!("{ready} of {want} broker(s) ready, {controller}"),
    }
}

/// What one pass learned, for the status.
struct Report<'a> {
    verdict: &'a Verdict,
    health: Option<&'a ClusterHealth>,
    decision: Option<&'a RollDecision>,
    scale: Option<&'a ScalePlan>,
}

fn status(cluster: &Cluster, ctx: &Context, sts: Option<&StatefulSet>, r: &Report<'_>) -> ClusterStatus {
    let old = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let s = sts.and_then(|s| s.status.clone()).unwrap_or_default();
    let image = image(cluster, &ctx.defaults);
    let version =
        cluster.spec.version.clone().or_else(|| image.rsplit_once(':').map(|(_, tag)| tag.to_string()));
    let previous: Vec<Condition> = old.conditions.clone();
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let total = sts.and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(0);
    let roll = match r.decision {
        Some(d) => progress_after(old.roll.as_ref(), d, total, (ctx.now)()),
        None => old.roll.clone(),
    };
    let roll_blocked = match r.decision {
        Some(RollDecision::Blocked { reason, .. }) => Some(reason.clone()),
        Some(RollDecision::Stalled { message, .. }) => Some(message.clone()),
        _ => None,
    };
    ClusterStatus {
        observed_generation: generation,
        conditions: conditions(&previous, r.verdict, generation, (ctx.now)()),
        ready_brokers: s.ready_replicas.unwrap_or(0),
        replicas: s.replicas,
        declared_brokers: cluster.spec.replicas,
        alive_brokers: r
            .health
            .map_or(old.alive_brokers, |h| count(h.brokers.iter().filter(|b| b.alive).count())),
        under_replicated_partitions: r
            .health
            .map_or(old.under_replicated_partitions, |h| count(h.under_replicated().len())),
        offline_partitions: r.health.map_or(old.offline_partitions, |h| count(h.offline().len())),
        controller: r.health.map_or(old.controller, |h| h.controller),
        image: Some(image),
        version,
        bootstrap: Some(cluster_address(cluster)),
        roll_blocked,
        roll,
        scaling: r.scale.and_then(|p| p.verdict.as_ref()).map(|v| v.message.clone()),
    }
}

fn gauges(s: &ClusterStatus, decision: &RollDecision) -> ClusterGauges {
    ClusterGauges {
        declared: s.declared_brokers.into(),
        ready: s.ready_brokers.into(),
        alive: s.alive_brokers.into(),
        under_replicated: s.under_replicated_partitions.into(),
        offline: s.offline_partitions.into(),
        controller: s.controller.map_or(-1, i64::from),
        outdated: i64::try_from(decision.outdated()).unwrap_or(i64::MAX),
        stalled: s.conditions.iter().any(|c| c.type_ == STALLED && c.is_true()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{BrokerView, PartitionView};
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use tributary_crds::ClusterSpec;

    fn sts(replicas: i32, ready: i32) -> StatefulSet {
        StatefulSet {
            status: Some(StatefulSetStatus {
                replicas,
                ready_replicas: Some(ready),
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        }
    }

    fn health(under: bool) -> ClusterHealth {
        ClusterHealth {
            controller: Some(1),
            brokers: (0..3).map(|n| BrokerView { node_id: n, alive: true, rack: String::new() }).collect(),
            partitions: vec![PartitionView {
                topic: "t".into(),
                partition: 0,
                leader: 0,
                replicas: vec![0, 1, 2],
                isr: if under { vec![0, 1] } else { vec![0, 1, 2] },
                min_isr: 2,
            }],
        }
    }

    fn verdict(declared: i32, s: &StatefulSet, h: Result<&ClusterHealth, &String>) -> Verdict {
        let c = Cluster::new("events", ClusterSpec { replicas: declared, ..ClusterSpec::default() });
        let scale = ScalePlan { replicas: declared, calls: vec![], verdict: None };
        cluster_verdict(&c, s, &RollDecision::UpToDate { elect_leaders: false }, &scale, h)
    }

    #[test]
    fn ready_only_with_every_broker_ready_and_every_isr_full() {
        let v = verdict(3, &sts(3, 3), Ok(&health(false)));
        assert_eq!((v.outcome, v.reason), (Outcome::Ready, "BrokersReady"));
        assert_eq!(v.message, "3 of 3 broker(s) ready, controller 1");
        let v = verdict(3, &sts(3, 2), Ok(&health(false)));
        assert_eq!((v.outcome, v.reason), (Outcome::Progressing, "WaitingForBrokers"));
        let v = verdict(3, &sts(3, 3), Ok(&health(true)));
        assert_eq!((v.outcome, v.reason), (Outcome::Progressing, "UnderReplicatedPartitions"));
        let err = "connection refused".to_string();
        let v = verdict(3, &sts(3, 3), Err(&err));
        assert_eq!((v.outcome, v.reason), (Outcome::Progressing, "BrokersUnreachable"));
    }
}

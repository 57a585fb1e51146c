//! Reconciles a Cluster: reads how many brokers its StatefulSet runs, applies
//! its objects (with the broker count [`crate::cluster::replica_plan`]
//! decides: capped until brokers replicate, never scaled down without a
//! drain), restarts one outdated broker when that is safe, and reports
//! brokers and conditions in its status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tributary_crds::conditions::Condition;
use tributary_crds::{Cluster, ClusterStatus};

use super::{apply_status, Context, Error};
use crate::cluster::{desired, image, DesiredCluster, ReplicaPlan};
use crate::labels::{client_service_name, selector_labels, FIELD_MANAGER};
use crate::roll::{decide, RollDecision};
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

async fn apply(cluster: &Cluster, ctx: &Context) -> Result<Action, Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let api: Api<Cluster> = Api::namespaced(ctx.client.clone(), &ns);
    // What runs now: a scale-down keeps it until the leaving brokers drain.
    let running = Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&client_service_name(&name))
        .await?
        .map(|s| s.spec.and_then(|spec| spec.replicas).unwrap_or(1));
    let objects = match desired(cluster, &ctx.defaults, running) {
        Ok(o) => o,
        Err(e) => {
            let verdict =
                Verdict { outcome: Outcome::Stalled, reason: "InvalidSpec", message: e.to_string() };
            apply_status(&api, cluster, &status(cluster, ctx, None, &verdict, None)).await?;
            return Ok(Action::await_change());
        }
    };
    let sts = apply_objects(ctx, &ns, &objects).await?;

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector =
        selector_labels(&name).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let pod_list = pods.list(&ListParams::default().labels(&selector)).await?;
    let decision = decide(&sts, &pod_list.items);
    if let RollDecision::Restart { pod, outdated } = &decision {
        pods.delete(pod, &DeleteParams::default()).await?;
        ctx.event(
            cluster,
            false,
            "BrokerRestarted",
            format!("restarted {pod} for the new pod template ({outdated} broker(s) outdated)"),
        )
        .await;
    }

    if let Some(held) = &objects.replicas.held {
        let was_stalled_for = cluster
            .status
            .as_ref()
            .and_then(|s| {
                tributary_crds::conditions::find_condition(&s.conditions, tributary_crds::conditions::STALLED)
            })
            .filter(|c| c.is_true())
            .map(|c| c.reason.clone());
        if was_stalled_for.as_deref() != Some(held.reason) {
            ctx.event(cluster, true, held.reason, held.message.clone()).await;
        }
    }
    let verdict = cluster_verdict(cluster, &sts, &decision, &objects.replicas);
    let roll_blocked = match &decision {
        RollDecision::Blocked { reason, .. } => Some(reason.clone()),
        _ => None,
    };
    apply_status(&api, cluster, &status(cluster, ctx, Some(&sts), &verdict, roll_blocked)).await?;
    // A roll goes on while the Cluster is Stalled for its broker count.
    let rolling = decision != RollDecision::UpToDate;
    Ok(match verdict.outcome {
        Outcome::Progressing => Action::requeue(Duration::from_secs(15)),
        Outcome::Stalled if rolling => Action::requeue(Duration::from_secs(15)),
        Outcome::Ready | Outcome::Stalled => Action::requeue(Duration::from_secs(300)),
    })
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

/// What to report about a Cluster given its StatefulSet, the roll, and the
/// broker count the StatefulSet was given. `Ready` is only ever reported for
/// the declared broker count: a capped or held count is `Stalled`.
pub fn cluster_verdict(
    cluster: &Cluster,
    sts: &StatefulSet,
    decision: &RollDecision,
    replicas: &ReplicaPlan,
) -> Verdict {
    if cluster.spec.listeners.tls.is_some() {
        return Verdict {
            outcome: Outcome::Stalled,
            reason: "TLSNotSupported",
            message: "spec.listeners.tls is set, but the broker does not serve TLS yet; remove it".into(),
        };
    }
    if let Some(held) = &replicas.held {
        return held.clone();
    }
    let want = replicas.replicas;
    let s = sts.status.clone().unwrap_or_default();
    let ready = s.ready_replicas.unwrap_or(0);
    let progressing = |reason, message| Verdict { outcome: Outcome::Progressing, reason, message };
    match decision {
        RollDecision::Restart { pod, outdated } => progressing(
            "RollingRestart",
            format!("restarting {pod}; {outdated} broker(s) run an old pod template"),
        ),
        RollDecision::Blocked { reason, .. } => progressing("RollBlocked", reason.clone()),
        RollDecision::UpToDate if ready < want || s.replicas != want => {
            progressing("WaitingForBrokers", format!("{ready} of {want} broker(s) ready"))
        }
        RollDecision::UpToDate => Verdict {
            outcome: Outcome::Ready,
            reason: "BrokersReady",
            message: format!("{ready} of {want} broker(s) ready"),
        },
    }
}

fn status(
    cluster: &Cluster,
    ctx: &Context,
    sts: Option<&StatefulSet>,
    verdict: &Verdict,
    roll_blocked: Option<String>,
) -> ClusterStatus {
    let previous: Vec<Condition> = cluster.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let generation = cluster.metadata.generation;
    let s = sts.and_then(|s| s.status.clone()).unwrap_or_default();
    let image = image(cluster, &ctx.defaults);
    let version =
        cluster.spec.version.clone().or_else(|| image.rsplit_once(':').map(|(_, tag)| tag.to_string()));
    let ns = cluster.namespace().unwrap_or_default();
    ClusterStatus {
        observed_generation: generation,
        conditions: conditions(&previous, verdict, generation, (ctx.now)()),
        ready_brokers: s.ready_replicas.unwrap_or(0),
        replicas: s.replicas,
        controller: cluster.status.as_ref().and_then(|s| s.controller),
        image: Some(image),
        version,
        bootstrap: Some(format!(
            "{}.{ns}.svc:{}",
            client_service_name(&cluster.name_any()),
            cluster.spec.listeners.grpc_port
        )),
        roll_blocked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::replica_plan;
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

    fn verdict(declared: i32, running: Option<i32>, s: &StatefulSet) -> Verdict {
        let c = Cluster::new("events", ClusterSpec { replicas: declared, ..ClusterSpec::default() });
        cluster_verdict(&c, s, &RollDecision::UpToDate, &replica_plan(declared, running))
    }

    #[test]
    fn ready_only_for_the_declared_broker_count() {
        let v = verdict(1, Some(1), &sts(1, 1));
        assert_eq!((v.outcome, v.reason), (Outcome::Ready, "BrokersReady"));
        let v = verdict(1, Some(1), &sts(1, 0));
        assert_eq!((v.outcome, v.reason), (Outcome::Progressing, "WaitingForBrokers"));
        // Three declared, one runs and is ready: not Ready.
        let v = verdict(3, Some(1), &sts(1, 1));
        assert_eq!((v.outcome, v.reason), (Outcome::Stalled, "ReplicationNotAvailable"));
        // One declared, two run: the scale-down waits for a drain.
        let v = verdict(1, Some(2), &sts(2, 2));
        assert_eq!((v.outcome, v.reason), (Outcome::Stalled, "ScaleDownRequiresDrain"));
    }
}

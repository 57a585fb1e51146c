//! Reconciles a Topic: makes the admin calls [`crate::topic_plan`] decides,
//! holds a finalizer so deletion follows `deletionPolicy`, and reports what
//! the brokers have in the status.
//!
//! Its describe and create calls go through the context's
//! [`crate::admin_batch::AdminBatcher`], so that many Topics reconciled at
//! once on one cluster share a few broker calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, ResourceExt};
use tributary_crds::{Cluster, Topic};

use super::{apply_status, Context, Error};
use crate::admin::AdminError;
use crate::labels::client_service_name;
use crate::topic_plan::{
    conditions, plan, plan_delete, status_after, AdminCall, ClusterView, Outcome, PlanInput, TopicPlan,
    Verdict,
};

/// The finalizer that keeps a Topic object until its deletion policy ran.
pub const FINALIZER: &str = "tributary.dev/topic";

/// Reconciles one Topic.
pub async fn reconcile(topic: Arc<Topic>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let ns = topic.namespace().unwrap_or_default();
    let api: Api<Topic> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, topic.clone(), |event| async {
        match event {
            Finalizer::Apply(t) => apply(&t, &api, &ctx).await,
            Finalizer::Cleanup(t) => cleanup(&t, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()));
    ctx.metrics.reconciled("Topic", start.elapsed());
    if result.is_ok() {
        ctx.succeeded(topic.as_ref());
    }
    result
}

/// gRPC address of a Cluster's client Service.
pub fn cluster_address(cluster: &Cluster) -> String {
    format!(
        "{}.{}.svc:{}",
        client_service_name(&cluster.name_any()),
        cluster.namespace().unwrap_or_default(),
        cluster.spec.listeners.grpc_port
    )
}

/// `namespace/name` of an older Topic naming the same topic on the same Cluster.
pub fn older_claimant(topic: &Topic, all: &[Arc<Topic>]) -> Option<String> {
    let key = |t: &Topic| (t.metadata.creation_timestamp.clone(), t.name_any());
    all.iter()
        .filter(|o| {
            o.namespace() == topic.namespace()
                && o.name_any() != topic.name_any()
                && o.metadata.deletion_timestamp.is_none()
                && o.spec.cluster_ref == topic.spec.cluster_ref
                && o.topic_name() == topic.topic_name()
                && key(o) < key(topic)
        })
        .min_by_key(|o| key(o))
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
}

async fn find_cluster(topic: &Topic, ctx: &Context) -> Result<Option<Cluster>, Error> {
    let ns = topic.namespace().unwrap_or_default();
    Ok(Api::<Cluster>::namespaced(ctx.client.clone(), &ns).get_opt(&topic.spec.cluster_ref.name).await?)
}

async fn apply(topic: &Topic, api: &Api<Topic>, ctx: &Context) -> Result<Action, Error> {
    let conflict = older_claimant(topic, &ctx.topics.state());
    let cluster = find_cluster(topic, ctx).await?;
    let (view, observed, address) = match &cluster {
        None => (ClusterView::Missing, None, None),
        Some(c) if conflict.is_some() => (ClusterView::Present { brokers: c.spec.replicas }, None, None),
        Some(c) => {
            let address = cluster_address(c);
            match ctx.admin.describe(&address, topic.topic_name()).await {
                Ok(o) => (ClusterView::Present { brokers: c.spec.replicas }, o, Some(address)),
                Err(e) => {
                    // Say so in the status, then retry with backoff.
                    let verdict = Verdict {
                        outcome: Outcome::Progressing,
                        reason: "BrokersUnreachable",
                        message: e.to_string(),
                    };
                    let mut status = topic.status.clone().unwrap_or_default();
                    status.conditions =
                        conditions(&status.conditions, &verdict, topic.metadata.generation, (ctx.now)());
                    apply_status(api, topic, &status).await?;
                    return Err(e.into());
                }
            }
        }
    };
    let throttle = cluster
        .as_ref()
        .and_then(|c| c.spec.reassignment.throttle_bytes_per_second)
        .and_then(|t| u64::try_from(t).ok());
    let p: TopicPlan = plan(PlanInput {
        topic,
        cluster: view,
        observed: observed.as_ref(),
        conflicts_with: conflict.as_deref(),
        throttle,
    });
    if let Some(address) = &address {
        for call in &p.calls {
            match ctx.admin.execute(address, call).await {
                Ok(()) => {}
                // An earlier reassignment of this topic is still running
                // (its status was lost): the status now records it and the
                // plan only watches it from the next pass on.
                Err(AdminError::Refused { message, .. })
                    if matches!(call, AdminCall::AlterReplicationFactor { .. })
                        && message.contains("being reassigned") => {}
                // Refused calls fail the same way again: report, don't spin.
                Err(e @ AdminError::Refused { .. }) => {
                    let verdict = Verdict {
                        outcome: Outcome::Stalled,
                        reason: "BrokersRefused",
                        message: e.to_string(),
                    };
                    let mut status = topic.status.clone().unwrap_or_default();
                    status.observed_generation = topic.metadata.generation;
                    status.conditions =
                        conditions(&status.conditions, &verdict, topic.metadata.generation, (ctx.now)());
                    ctx.event(topic, true, verdict.reason, verdict.message.clone()).await;
                    apply_status(api, topic, &status).await?;
                    return Ok(Action::requeue(Duration::from_secs(300)));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let was_stalled_for = topic
        .status
        .as_ref()
        .and_then(|s| {
            tributary_crds::conditions::find_condition(&s.conditions, tributary_crds::conditions::STALLED)
        })
        .filter(|c| c.is_true())
        .map(|c| c.reason.clone());
    if !p.calls.is_empty() {
        ctx.event(topic, false, p.verdict.reason, p.verdict.message.clone()).await;
    } else if p.verdict.outcome == Outcome::Stalled && was_stalled_for.as_deref() != Some(p.verdict.reason) {
        ctx.event(topic, true, p.verdict.reason, p.verdict.message.clone()).await;
    }
    let status = status_after(topic, &p, observed.as_ref(), (ctx.now)());
    ctx.metrics.topic(
        &topic.namespace().unwrap_or_default(),
        &topic.name_any(),
        status.under_replicated_partitions.into(),
        status.offline_partitions.into(),
    );
    apply_status(api, topic, &status).await?;
    Ok(Action::requeue(match p.verdict.outcome {
        // Ready topics are looked at again to revert out-of-band changes.
        Outcome::Ready | Outcome::Stalled => Duration::from_secs(300),
        Outcome::Progressing => Duration::from_secs(30),
    }))
}

async fn cleanup(topic: &Topic, ctx: &Context) -> Result<Action, Error> {
    let conflict = older_claimant(topic, &ctx.topics.state());
    let cluster = find_cluster(topic, ctx).await?;
    let (view, observed, address) = match &cluster {
        None => (ClusterView::Missing, None, None),
        Some(c) => {
            let address = cluster_address(c);
            // An unreachable cluster fails the cleanup: the finalizer stays
            // and the deletion is retried with backoff.
            let observed = ctx.admin.describe(&address, topic.topic_name()).await?;
            (ClusterView::Present { brokers: c.spec.replicas }, observed, Some(address))
        }
    };
    let p = plan_delete(topic, view, observed.as_ref(), conflict.as_deref());
    if let Some(address) = &address {
        for call in &p.calls {
            ctx.admin.execute(address, call).await?;
        }
    }
    ctx.event(topic, false, if p.calls.is_empty() { "TopicKept" } else { "TopicDeleted" }, p.message).await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use tributary_crds::topic::{ClusterRef, DeletionPolicy};
    use tributary_crds::TopicSpec;

    fn topic(name: &str, cluster: &str, topic_name: Option<&str>, created: i64) -> Arc<Topic> {
        let mut t = Topic::new(
            name,
            TopicSpec {
                cluster_ref: ClusterRef { name: cluster.into() },
                topic_name: topic_name.map(String::from),
                partitions: 1,
                replication_factor: 1,
                config: Default::default(),
                deletion_policy: DeletionPolicy::Retain,
            },
        );
        t.metadata.namespace = Some("ns".into());
        t.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).expect("ts")));
        Arc::new(t)
    }

    #[test]
    fn older_topic_object_wins() {
        let a = topic("a", "c1", Some("clicks"), 10);
        let b = topic("clicks", "c1", None, 20);
        let other_cluster = topic("x", "c2", Some("clicks"), 5);
        let all = vec![a.clone(), b.clone(), other_cluster];
        assert_eq!(older_claimant(&b, &all).as_deref(), Some("ns/a"));
        assert_eq!(older_claimant(&a, &all), None);
        // Same creation second: the name breaks the tie.
        let c = topic("b", "c1", Some("clicks"), 10);
        let all = vec![a.clone(), c.clone()];
        assert_eq!(older_claimant(&c, &all).as_deref(), Some("ns/a"));
        assert_eq!(older_claimant(&a, &all), None);
    }

    #[test]
    fn address_is_the_client_service() {
        let mut c = Cluster::new("events", Default::default());
        c.metadata.namespace = Some("prod".into());
        assert_eq!(cluster_address(&c), "events.prod.svc:7070");
    }
}

/// The Topic objects that name `cluster` (same namespace): what a change to
/// that Cluster must re-check.
pub fn topics_of_cluster(
    topics: &[std::sync::Arc<tributary_crds::Topic>],
    cluster: &tributary_crds::Cluster,
) -> Vec<kube::runtime::reflector::ObjectRef<tributary_crds::Topic>> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let namespace = cluster.metadata.namespace.as_deref();
    topics
        .iter()
        .filter(|t| t.spec.cluster_ref.name == name && t.metadata.namespace.as_deref() == namespace)
        .map(|t| kube::runtime::reflector::ObjectRef::from_obj(t.as_ref()))
        .collect()
}

#[cfg(test)]
mod cluster_watch_tests {
    use super::topics_of_cluster;
    use std::sync::Arc;
    use tributary_crds::{Cluster, Topic};

    fn topic(ns: &str, name: &str, cluster: &str) -> Arc<Topic> {
        let t: Topic = serde_json::from_value(serde_json::json!({
            "apiVersion": "tributary.dev/v1alpha1",
            "kind": "Topic",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterRef": {"name": cluster}, "partitions": 1, "replicationFactor": 1}
        }))
        .expect("valid Topic");
        Arc::new(t)
    }

    #[test]
    fn a_cluster_change_maps_to_its_own_topics_only() {
        let cluster: Cluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "tributary.dev/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": "main", "namespace": "a"},
            "spec": {}
        }))
        .expect("valid Cluster");
        let topics = vec![
            topic("a", "t1", "main"),
            topic("a", "t2", "other"),
            topic("b", "t3", "main"),
            topic("a", "t4", "main"),
        ];
        let mut names: Vec<String> =
            topics_of_cluster(&topics, &cluster).into_iter().map(|r| r.name).collect();
        names.sort();
        assert_eq!(names, vec!["t1", "t4"]);
    }
}

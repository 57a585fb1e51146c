//! Reconciles a MirrorLink: checks its clusters and the link graph, and
//! reports the verdict of [`crate::mirror_plan`] in its status. Copying
//! records lands with the mirroring issue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tributary_crds::{Cluster, MirrorLink, MirrorLinkStatus};

use super::{apply_status, Context, Error};
use crate::mirror_plan::{source_node, verdict, ClustersSeen};
use crate::topic_plan::conditions;

/// Reconciles one MirrorLink.
pub async fn reconcile(link: Arc<MirrorLink>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let result = apply(&link, &ctx).await;
    ctx.metrics.reconciled("MirrorLink", start.elapsed());
    if result.is_ok() {
        ctx.succeeded(link.as_ref());
    }
    result
}

async fn cluster_exists(ctx: &Context, ns: &str, name: &str) -> Result<bool, Error> {
    Ok(Api::<Cluster>::namespaced(ctx.client.clone(), ns).get_opt(name).await?.is_some())
}

async fn apply(link: &MirrorLink, ctx: &Context) -> Result<Action, Error> {
    let ns = link.namespace().unwrap_or_default();
    let destination = cluster_exists(ctx, &ns, &link.spec.destination.cluster_ref.name).await?;
    let source = match &link.spec.source.cluster_ref {
        Some(c) => cluster_exists(ctx, c.namespace.as_deref().unwrap_or(&ns), &c.name).await?,
        None => true,
    };
    let all: Vec<MirrorLink> = ctx.links.state().iter().map(|l| l.as_ref().clone()).collect();
    let v = verdict(link, &all, ClustersSeen { source, destination });
    let previous = link.status.clone().unwrap_or_default();
    let status = MirrorLinkStatus {
        observed_generation: link.metadata.generation,
        conditions: conditions(&previous.conditions, &v, link.metadata.generation, (ctx.now)()),
        source: source_node(link),
        total_lag: None,
        topics: vec![],
    };
    apply_status(&Api::<MirrorLink>::namespaced(ctx.client.clone(), &ns), link, &status).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

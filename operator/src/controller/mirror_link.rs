//! Reconciles a MirrorLink: checks its clusters and the link graph
//! ([`crate::mirror_plan::refusal`]), then creates, updates (pause and
//! resume are updates of `paused`) and, through a finalizer, deletes the
//! link through the destination cluster's admin API, and writes the lag
//! per copied topic and the verdict into the status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, ResourceExt};
use tributary_crds::conditions::{set_condition, Condition};
use tributary_crds::{Cluster, MirrorLink, MirrorLinkStatus};

use super::topic::cluster_address;
use super::{apply_status, Context, Error};
use crate::admin::{AdminError, MirrorCall};
use crate::mirror_plan::{
    audit_verdict, desired, link_name, mirrored_topics, observed_verdict, plan, refusal, source_node,
    AuditVerdict, ClustersSeen, AUDIT_COMPLETE,
};
use crate::topic_plan::{conditions, Outcome, Verdict};

/// The finalizer that keeps a MirrorLink until its link is deleted from the
/// destination cluster.
pub const FINALIZER: &str = "tributary.dev/mirror-link";

/// How often a copying link's status (lag) is refreshed.
const REFRESH: Duration = Duration::from_secs(30);

/// Reconciles one MirrorLink.
pub async fn reconcile(link: Arc<MirrorLink>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let ns = link.namespace().unwrap_or_default();
    let api: Api<MirrorLink> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, link.clone(), |event| async {
        match event {
            Finalizer::Apply(l) => apply(&l, &api, &ctx).await,
            Finalizer::Cleanup(l) => cleanup(&l, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()));
    ctx.metrics.reconciled("MirrorLink", start.elapsed());
    if result.is_ok() {
        ctx.succeeded(link.as_ref());
    }
    result
}

async fn get_cluster(ctx: &Context, ns: &str, name: &str) -> Result<Option<Cluster>, Error> {
    Ok(Api::<Cluster>::namespaced(ctx.client.clone(), ns).get_opt(name).await?)
}

/// The destination Cluster, and the source's brokers (a Cluster's client
/// Service, or the bootstrap address given).
async fn clusters(link: &MirrorLink, ctx: &Context) -> Result<(Option<Cluster>, Option<String>), Error> {
    let ns = link.namespace().unwrap_or_default();
    let destination = get_cluster(ctx, &ns, &link.spec.destination.cluster_ref.name).await?;
    let source = match (&link.spec.source.cluster_ref, &link.spec.source.bootstrap) {
        (Some(c), _) => get_cluster(ctx, c.namespace.as_deref().unwrap_or(&ns), &c.name)
            .await?
            .map(|c| cluster_address(&c)),
        (None, b) => b.clone(),
    };
    Ok((destination, source))
}

async fn apply(link: &MirrorLink, api: &Api<MirrorLink>, ctx: &Context) -> Result<Action, Error> {
    let (destination, source) = clusters(link, ctx).await?;
    let all: Vec<MirrorLink> = ctx.links.state().iter().map(|l| l.as_ref().clone()).collect();
    let seen = ClustersSeen { source: source.is_some(), destination: destination.is_some() };
    let previous = link.status.clone().unwrap_or_default();
    let write = |verdict: Verdict, total_lag, topics, audit: Option<AuditVerdict>| {
        let now = (ctx.now)();
        let mut conditions = conditions(&previous.conditions, &verdict, link.metadata.generation, now);
        if let Some(a) = audit {
            let c =
                Condition::new(AUDIT_COMPLETE, a.status, link.metadata.generation, a.reason, a.message, now);
            set_condition(&mut conditions, c);
        }
        let status = MirrorLinkStatus {
            observed_generation: link.metadata.generation,
            conditions,
            source: source_node(link),
            total_lag,
            topics,
        };
        async move { apply_status(api, link, &status).await }
    };
    let (Some(destination), Some(source), None) = (destination, source, refusal(link, &all, seen)) else {
        let verdict = refusal(link, &all, seen).unwrap_or_else(|| Verdict {
            outcome: Outcome::Stalled,
            reason: "SourceClusterNotFound",
            message: "the source has no address".into(),
        });
        write(verdict, None, vec![], None).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    };
    let address = cluster_address(&destination);
    let want = desired(link, &source);
    let described = match describe(ctx, &address, link).await {
        Ok(d) => d,
        Err(e) => {
            let verdict = Verdict {
                outcome: Outcome::Progressing,
                reason: "BrokersUnreachable",
                message: e.to_string(),
            };
            write(verdict, previous.total_lag, previous.topics.clone(), None).await?;
            return Err(e.into());
        }
    };
    if let Some(call) = plan(&want, described.as_ref().and_then(|d| d.link.as_ref())) {
        match ctx.brokers.mirror_call(&address, &call).await {
            Ok(_) => {}
            // Refused calls fail the same way again: report, don't spin.
            Err(e @ AdminError::Refused { .. }) => {
                let verdict =
                    Verdict { outcome: Outcome::Stalled, reason: "BrokersRefused", message: e.to_string() };
                ctx.event(link, true, verdict.reason, verdict.message.clone()).await;
                write(verdict, None, vec![], None).await?;
                return Ok(Action::requeue(Duration::from_secs(300)));
            }
            Err(e) => return Err(e.into()),
        }
        ctx.event(
            link,
            false,
            if call.name() == "CreateMirrorLink" { "LinkCreated" } else { "LinkUpdated" },
            String::new(),
        )
        .await;
    }
    let now = describe(ctx, &address, link).await?;
    let (verdict, total_lag, topics) = match &now {
        Some(d) => {
            let (lag, topics) = mirrored_topics(d);
            (observed_verdict(d), Some(lag), topics)
        }
        None => (
            Verdict {
                outcome: Outcome::Progressing,
                reason: "Creating",
                message: "the link is being created".into(),
            },
            None,
            vec![],
        ),
    };
    // The audit's verdict is its own condition; unreadable counts leave
    // the last one as it was.
    let audit = match ctx.brokers.audit_counts(&address).await {
        Ok(read) => Some(audit_verdict(&link_name(link), &read, (ctx.now)().as_millisecond())),
        Err(e) => {
            tracing::debug!(error = %e, "reading the destination's audit counts");
            None
        }
    };
    let mut topics = topics;
    if let Some(a) = &audit {
        for t in &mut topics {
            t.audit_complete = a.topics.get(&t.destination).copied();
        }
    }
    let ready = verdict.outcome == Outcome::Ready;
    write(verdict, total_lag, topics, audit).await?;
    Ok(Action::requeue(if ready { REFRESH } else { Duration::from_secs(5) }))
}

async fn describe(
    ctx: &Context,
    address: &str,
    link: &MirrorLink,
) -> Result<Option<tributary_proto::v1::DescribeMirrorLinkResponse>, AdminError> {
    ctx.brokers.mirror_call(address, &MirrorCall::Describe { name: link_name(link) }).await
}

/// Deletes the link from the destination (its topics and data stay). An
/// unreachable destination keeps the finalizer: retried with backoff.
async fn cleanup(link: &MirrorLink, ctx: &Context) -> Result<Action, Error> {
    let ns = link.namespace().unwrap_or_default();
    if let Some(destination) = get_cluster(ctx, &ns, &link.spec.destination.cluster_ref.name).await? {
        let address = cluster_address(&destination);
        ctx.brokers.mirror_call(&address, &MirrorCall::Delete { name: link_name(link) }).await?;
    }
    ctx.event(link, false, "LinkDeleted", "the destination's topics and data stay".to_string()).await;
    Ok(Action::await_change())
}

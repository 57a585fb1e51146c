//! The kube-rs controllers: one per kind, sharing a [`Context`].
//!
//! Each reconcile reads what it needs, asks a pure function in
//! [`crate::cluster`], [`crate::topic_plan`], [`crate::roll`] or
//! [`crate::mirror_plan`] what to do, does it, and writes the object's status
//! with server-side apply under the field manager `tributary-operator`. The
//! operator never writes a spec. Failures go to [`error_policy`], which
//! requeues the object with its own exponential backoff.

pub mod cluster;
pub mod mirror_link;
pub mod topic;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use crate::admin::{AdminError, Brokers};
use crate::admin_batch::{AdminBatcher, BatchConfig};
use crate::cluster::{Defaults, DesiredError};
use crate::metrics::Metrics;

/// Everything a reconcile needs besides the object.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub brokers: Arc<dyn Brokers>,
    /// `brokers` behind the batcher: concurrent Topic reconciles of one
    /// cluster share their describe and create calls.
    pub admin: AdminBatcher<dyn Brokers>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Every Topic the controller sees, to find two naming the same topic.
    pub topics: Store<tributary_crds::Topic>,
    /// Every MirrorLink, to check the link graph for cycles.
    pub links: Store<tributary_crds::MirrorLink>,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The clock (fixed in tests).
    pub now: fn() -> Timestamp,
}

impl Context {
    pub fn new(
        client: Client,
        defaults: Defaults,
        brokers: Arc<dyn Brokers>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        topics: Store<tributary_crds::Topic>,
        links: Store<tributary_crds::MirrorLink>,
    ) -> Context {
        Context {
            client,
            defaults,
            admin: AdminBatcher::new(brokers.clone(), BatchConfig::default()),
            brokers,
            recorder,
            metrics,
            topics,
            links,
            failures: Mutex::new(HashMap::new()),
            now: Timestamp::now,
        }
    }

    /// Uses `admin` (sharing its batches with other contexts), whose
    /// brokers become this context's.
    pub fn with_admin(mut self, admin: AdminBatcher<dyn Brokers>) -> Context {
        self.brokers = admin.brokers().clone();
        self.admin = admin;
        self
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a successful reconcile: the object's backoff starts over.
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.failures().remove(&key(obj));
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn failed<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let mut failures = self.failures();
        let n = failures.entry(key(obj)).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    /// Publishes an Event on `obj`; a failure to publish is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("{}/{}/{}", K::kind(&()), obj.meta().namespace.as_deref().unwrap_or_default(), obj.name_any())
}

/// 1 s, 2 s, 4 s, ... capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64.checked_shl(failures.saturating_sub(1)).unwrap_or(u64::MAX);
    Duration::from_secs(secs.min(300))
}

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error("{0}")]
    Finalizer(String),
    #[error("cannot encode status: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Requeues a failed object after its own backoff.
pub fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(static_kind::<K>());
    let wait = ctx.failed(obj.as_ref());
    tracing::warn!(kind = %K::kind(&()), name = %obj.name_any(), error = %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// The kind as a `&'static str`, for metric labels.
pub fn static_kind<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Cluster" => "Cluster",
        "Topic" => "Topic",
        "MirrorLink" => "MirrorLink",
        _ => "Other",
    }
}

/// Writes `status` with server-side apply on the `/status` subresource.
pub async fn apply_status<K, S>(api: &kube::Api<K>, obj: &K, status: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let pp = kube::api::PatchParams::apply(crate::labels::FIELD_MANAGER).force();
    api.patch_status(&obj.name_any(), &pp, &kube::api::Patch::Apply(&patch)).await?;
    Ok(())
}

/// How `tributary-operator run` was started.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub http_listen: std::net::SocketAddr,
    /// Namespaces to watch; empty for all.
    pub namespaces: Vec<String>,
    /// Lease name for leader election; `None` runs without election.
    pub lease: Option<String>,
    pub defaults: Defaults,
    /// How Topic reconciles' admin calls are coalesced.
    pub admin_batch: BatchConfig,
}

fn api_for<K>(client: &Client, namespaces: &[String]) -> kube::Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    // One namespace: a namespaced watch (works with a Role). Several: one
    // controller per namespace would be needed; the chart gives each its own
    // RoleBinding, and `run` starts one set of controllers per namespace.
    match namespaces.first() {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    }
}

/// Runs the three controllers for one namespace (or all) until shutdown.
async fn run_controllers(
    client: Client,
    namespaces: Vec<String>,
    ctx_for: impl Fn(Store<tributary_crds::Topic>, Store<tributary_crds::MirrorLink>) -> Arc<Context>,
) {
    use futures::StreamExt;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::runtime::{watcher, Controller};
    use tributary_crds::{Cluster, MirrorLink, Topic};

    let wc = watcher::Config::default();
    let topics = Controller::new(api_for::<Topic>(&client, &namespaces), wc.clone());
    let links = Controller::new(api_for::<MirrorLink>(&client, &namespaces), wc.clone());
    let ctx = ctx_for(topics.store(), links.store());
    let clusters = Controller::new(api_for::<Cluster>(&client, &namespaces), wc.clone())
        .owns(api_for::<StatefulSet>(&client, &namespaces), wc.clone())
        .owns(api_for::<Service>(&client, &namespaces), wc.clone())
        .owns(api_for::<ConfigMap>(&client, &namespaces), wc.clone())
        .owns(api_for::<PodDisruptionBudget>(&client, &namespaces), wc.clone())
        .shutdown_on_signal()
        .run(cluster::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    // A Cluster change (broker count, readiness) re-checks its Topics at
    // once instead of at their next periodic requeue.
    let topic_store = topics.store();
    let topics = topics
        .watches(api_for::<Cluster>(&client, &namespaces), wc.clone(), move |cluster: Cluster| {
            topic::topics_of_cluster(&topic_store.state(), &cluster)
        })
        .shutdown_on_signal()
        .run(topic::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let links = links
        .shutdown_on_signal()
        .run(mirror_link::reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    futures::join!(clusters, topics, links);
}

/// `tributary-operator run`: health and metrics, leader election, controllers.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::sync::atomic::Ordering;

    let client = Client::try_default()
        .await
        .context("finding the Kubernetes API (in-cluster config, KUBECONFIG or ~/.kube/config)")?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(crate::server::Health { metrics: metrics.clone(), ready: false.into() });
    let server = tokio::spawn({
        let health = health.clone();
        async move {
            if let Err(e) = crate::server::serve(config.http_listen, health).await {
                tracing::error!(error = %e, addr = %config.http_listen, "cannot serve /metrics and health");
            }
        }
    });
    let identity =
        std::env::var("POD_NAME").unwrap_or_else(|_| format!("tributary-operator-{}", std::process::id()));

    let mut leadership = None;
    if let Some(lease) = &config.lease {
        let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), lease.clone())
            .with_namespace(namespace.clone())
            .with_identity(identity.clone())
            .with_field_manager(crate::labels::FIELD_MANAGER)
            .build()
            .await
            .context("setting up leader election")?;
        let (mut is_leader, task) = manager.watch().await;
        // A standby replica is healthy: it is ready to take over.
        health.ready.store(true, Ordering::Relaxed);
        tracing::info!(%lease, %namespace, %identity, "waiting to become the leader");
        while !*is_leader.borrow_and_update() {
            is_leader.changed().await.context("leader election stopped")?;
        }
        tracing::info!("leading: starting controllers");
        leadership = Some((is_leader, task));
    }
    health.ready.store(true, Ordering::Relaxed);

    let reporter = kube::runtime::events::Reporter {
        controller: crate::labels::FIELD_MANAGER.into(),
        instance: Some(identity),
    };
    let brokers: Arc<dyn Brokers> = Arc::new(crate::admin::ClientBrokers::default());
    // One batcher for every namespace's controllers.
    let admin = AdminBatcher::new(brokers.clone(), config.admin_batch.clone());
    let scopes: Vec<Vec<String>> = if config.namespaces.is_empty() {
        vec![vec![]]
    } else {
        config.namespaces.iter().map(|n| vec![n.clone()]).collect()
    };
    let all = futures::future::join_all(scopes.into_iter().map(|scope| {
        let client = client.clone();
        let defaults = config.defaults.clone();
        let metrics = metrics.clone();
        let brokers = brokers.clone();
        let admin = admin.clone();
        let recorder = Recorder::new(client.clone(), reporter.clone());
        run_controllers(client.clone(), scope, move |topics, links| {
            Arc::new(
                Context::new(
                    client.clone(),
                    defaults.clone(),
                    brokers.clone(),
                    recorder.clone(),
                    metrics.clone(),
                    topics,
                    links,
                )
                .with_admin(admin.clone()),
            )
        })
    }));
    match leadership {
        Some((mut is_leader, _task)) => {
            let lost = async move {
                while *is_leader.borrow_and_update() {
                    if is_leader.changed().await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = all => {}
                _ = lost => anyhow::bail!("lost the leader Lease: exiting so that another replica leads"),
            }
        }
        None => {
            all.await;
        }
    }
    server.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }
}

//! Against a real API server, when `KUBECONFIG` is set (kind, k3d, a test
//! cluster where you may install CRDs): installs the CRDs, starts the
//! operator binary watching a fresh namespace, applies a Cluster and a
//! Topic, and waits for the owned objects and the statuses to appear. The
//! namespace is deleted afterwards. Without `KUBECONFIG` it says so and
//! passes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::json;
use tributary_crds::{Cluster, Topic};

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..120 {
        if let Some(v) = f().await {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("timed out waiting for {what}")
}

async fn scenario(client: Client, ns: &str) -> anyhow::Result<()> {
    let pp = PatchParams::apply("tributary-e2e").force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in tributary_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &pp, &Patch::Apply(&crd)).await?;
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await??;
    }
    let _operator = Operator(
        Command::new(env!("CARGO_BIN_EXE_tributary-operator"))
            .args(["run", "--http-listen", "127.0.0.1:0", "--namespace", ns])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), ns);
    let topics: Api<Topic> = Api::namespaced(client.clone(), ns);
    clusters
        .patch(
            "e2e",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "tributary.dev/v1alpha1", "kind": "Cluster",
                "metadata": {"name": "e2e"}, "spec": {"replicas": 3, "storage": {"size": "1Gi"}},
            })),
        )
        .await?;
    topics
        .patch(
            "clicks",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "tributary.dev/v1alpha1", "kind": "Topic",
                "metadata": {"name": "clicks"},
                "spec": {"clusterRef": {"name": "e2e"}, "partitions": 3, "replicationFactor": 1},
            })),
        )
        .await?;
    // The schema's CEL rule refuses a shrink at admission.
    let shrink = topics
        .patch(
            "clicks",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "tributary.dev/v1alpha1", "kind": "Topic",
                "metadata": {"name": "clicks"},
                "spec": {"clusterRef": {"name": "e2e"}, "partitions": 2, "replicationFactor": 1},
            })),
        )
        .await;
    anyhow::ensure!(
        shrink.as_ref().is_err_and(|e| e.to_string().contains("partitions may only grow")),
        "shrinking was not refused: {shrink:?}"
    );

    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let s = eventually("the StatefulSet", || async { sts.get_opt("e2e").await.ok().flatten() }).await?;
    let owner = s.metadata.owner_references.unwrap_or_default();
    anyhow::ensure!(
        owner.first().is_some_and(|o| o.kind == "Cluster"),
        "StatefulSet not owned by the Cluster"
    );
    // Three brokers, each told where the others are.
    anyhow::ensure!(
        s.spec.as_ref().and_then(|s| s.replicas) == Some(3),
        "the StatefulSet does not run the three declared brokers"
    );
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), ns);
    let peers = eventually("the broker ConfigMap", || async {
        config_maps.get_opt("e2e-config").await.ok().flatten()?.data?.get("peers").cloned()
    })
    .await?;
    anyhow::ensure!(peers.split(',').count() == 3, "peers {peers:?} do not name three brokers");
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    eventually("the Services", || async {
        (services.get_opt("e2e").await.ok().flatten()?, services.get_opt("e2e-brokers").await.ok().flatten()?)
            .into()
    })
    .await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    eventually("the PodDisruptionBudget", || async { pdbs.get_opt("e2e").await.ok().flatten() }).await?;
    let status = eventually("the Cluster status", || async {
        clusters.get("e2e").await.ok()?.status.filter(|s| s.observed_generation == Some(1))
    })
    .await?;
    anyhow::ensure!(status.declared_brokers == 3, "status.declaredBrokers is {}", status.declared_brokers);
    let topic = eventually("the Topic finalizer and status", || async {
        let t = topics.get("clicks").await.ok()?;
        (t.status.is_some() && t.metadata.finalizers.iter().flatten().any(|f| f == "tributary.dev/topic"))
            .then_some(t)
    })
    .await?;
    anyhow::ensure!(
        !topic.status.unwrap_or_default().conditions.is_empty(),
        "Topic status has no conditions"
    );
    Ok(())
}

#[tokio::test]
async fn operator_against_a_real_api_server() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("skipped: set KUBECONFIG to a test cluster to run the Kubernetes end-to-end test");
        return;
    }
    let client = Client::try_default().await.expect("a Kubernetes client from KUBECONFIG");
    let ns = format!("tributary-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace"),
        )
        .await
        .expect("create the test namespace");
    let result = scenario(client.clone(), &ns).await;
    // Topics hold a finalizer that only a running operator releases: drop it first.
    let topics: Api<Topic> = Api::namespaced(client.clone(), &ns);
    let _ = topics
        .patch("clicks", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    result.expect("end-to-end scenario");
}

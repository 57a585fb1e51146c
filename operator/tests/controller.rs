//! The controllers against a mocked API server (tower-test), as kube-rs's
//! controller-rs tests them: each scenario lists the exact API calls a
//! reconcile makes, in order, and answers them. The brokers are a fake
//! behind the [`Brokers`] seam, which records the admin calls made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};
use tributary_crds::{Cluster, MirrorLink, Topic};
use tributary_operator::admin::{AdminError, Brokers};
use tributary_operator::cluster::Defaults;
use tributary_operator::controller::{self, Context};
use tributary_operator::metrics::Metrics;
use tributary_operator::topic_plan::{AdminCall, ObservedTopic};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The fake API server: answers expected requests one at a time.
struct ApiServer(Handle);

impl ApiServer {
    /// Takes the next request, checks its method and path, answers with
    /// `respond(body)` and returns the request's query and JSON body.
    async fn expect(
        &mut self,
        method: &str,
        path: &str,
        respond: impl FnOnce(&Value) -> Value,
    ) -> (String, Value) {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("a request")
            .expect("a request");
        assert_eq!(request.method().as_str(), method, "method of {}", request.uri());
        assert_eq!(request.uri().path(), path);
        let query = request.uri().query().unwrap_or_default().to_string();
        let bytes = request.into_body().collect_bytes().await.expect("request body");
        let body: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
        let answer = respond(&body);
        // A metav1.Status answer carries its HTTP code (404 for NotFound).
        let code =
            if answer["kind"] == "Status" { answer["code"].as_u64().unwrap_or(500) as u16 } else { 200 };
        let bytes = serde_json::to_vec(&answer).expect("encode");
        send.send_response(Response::builder().status(code).body(Body::from(bytes)).expect("response"));
        (query, body)
    }

    /// Asserts no further request arrives.
    async fn done(mut self) {
        let next = tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await;
        assert!(matches!(next, Err(_) | Ok(None)), "unexpected extra request");
    }
}

#[derive(Default)]
struct FakeBrokers {
    topics: Mutex<HashMap<String, ObservedTopic>>,
    calls: Mutex<Vec<AdminCall>>,
    unavailable: AtomicBool,
}

impl FakeBrokers {
    fn with_topic(name: &str, partitions: u32) -> Arc<FakeBrokers> {
        let b = FakeBrokers::default();
        b.topics.lock().expect("lock").insert(
            name.into(),
            ObservedTopic {
                topic_id: "id-1".into(),
                partitions,
                replication_factor: 1,
                ..ObservedTopic::default()
            },
        );
        Arc::new(b)
    }

    fn calls(&self) -> Vec<AdminCall> {
        self.calls.lock().expect("lock").clone()
    }

    fn down(&self, address: &str) -> Result<(), AdminError> {
        if self.unavailable.load(Ordering::Relaxed) {
            return Err(AdminError::Unavailable {
                address: address.into(),
                message: "connection refused".into(),
            });
        }
        Ok(())
    }
}

impl Brokers for FakeBrokers {
    fn describe<'a>(
        &'a self,
        address: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedTopic>, AdminError>> {
        Box::pin(async move {
            assert_eq!(address, "local-a.ns.svc:7070");
            self.down(address)?;
            Ok(self.topics.lock().expect("lock").get(topic).cloned())
        })
    }

    fn execute<'a>(&'a self, address: &'a str, call: &'a AdminCall) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            self.down(address)?;
            self.calls.lock().expect("lock").push(call.clone());
            let mut topics = self.topics.lock().expect("lock");
            match call {
                AdminCall::Create { name, partitions, replication_factor, configs } => {
                    topics.insert(
                        name.clone(),
                        ObservedTopic {
                            topic_id: "id-new".into(),
                            partitions: *partitions,
                            replication_factor: *replication_factor,
                            configs: configs.clone(),
                            ..ObservedTopic::default()
                        },
                    );
                }
                AdminCall::CreatePartitions { name, total } => {
                    if let Some(t) = topics.get_mut(name) {
                        t.partitions = *total;
                    }
                }
                AdminCall::AlterConfigs { name, set, delete } => {
                    if let Some(t) = topics.get_mut(name) {
                        t.configs.extend(set.clone());
                        t.configs.retain(|k, _| !delete.contains(k));
                    }
                }
                AdminCall::Delete { name } => {
                    topics.remove(name);
                }
            }
            Ok(())
        })
    }
}

fn setup(brokers: Arc<FakeBrokers>, topics: Vec<Topic>) -> (Arc<Context>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "ns");
    let (topic_store, mut writer) = reflector::store();
    for t in topics {
        writer.apply_watcher_event(&watcher::Event::Apply(t));
    }
    let (link_store, _) = reflector::store::<MirrorLink>();
    let recorder =
        Recorder::new(client.clone(), Reporter { controller: "tributary-operator".into(), instance: None });
    let mut ctx = Context::new(
        client,
        Defaults::default(),
        brokers,
        recorder,
        Arc::new(Metrics::default()),
        topic_store,
        link_store,
    );
    ctx.now = || Timestamp::from_second(1_800_000_000).expect("timestamp");
    (Arc::new(ctx), ApiServer(handle))
}

fn topic(partitions: i32, finalizer: bool, deletion_policy: &str) -> Topic {
    serde_json::from_value(json!({
        "apiVersion": "tributary.dev/v1alpha1",
        "kind": "Topic",
        "metadata": {
            "name": "clicks", "namespace": "ns", "uid": "u-1", "generation": 2,
            "resourceVersion": "7",
            "finalizers": if finalizer { json!(["tributary.dev/topic"]) } else { json!([]) },
        },
        "spec": {
            "clusterRef": {"name": "local-a"},
            "partitions": partitions,
            "replicationFactor": 1,
            "config": {"retention.ms": "1000"},
            "deletionPolicy": deletion_policy,
        },
    }))
    .expect("topic")
}

fn cluster_json() -> Value {
    json!({
        "apiVersion": "tributary.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "local-a", "namespace": "ns", "uid": "c-1", "generation": 1},
        "spec": {"replicas": 3},
    })
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == type_)).expect("condition")
}

const TOPICS: &str = "/apis/tributary.dev/v1alpha1/namespaces/ns/topics";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

#[tokio::test]
async fn a_new_topic_gets_the_finalizer_first() {
    let t = topic(3, false, "Retain");
    let brokers = Arc::new(FakeBrokers::default());
    let (ctx, mut api) = setup(brokers.clone(), vec![t.clone()]);
    let echo = serde_json::to_value(&t).expect("json");
    let server = tokio::spawn(async move {
        let (_, patch) = api.expect("PATCH", &format!("{TOPICS}/clicks"), |_| echo).await;
        assert!(patch.to_string().contains("tributary.dev/topic"), "{patch}");
        api.done().await;
    });
    let action = controller::topic::reconcile(Arc::new(t), ctx).await.expect("reconcile");
    assert_eq!(action, Action::await_change());
    server.await.expect("api server");
    assert!(brokers.calls().is_empty(), "no broker is touched before the finalizer is in place");
}

#[tokio::test]
async fn a_missing_topic_is_created_and_reported_ready() {
    let t = topic(3, true, "Retain");
    let brokers = Arc::new(FakeBrokers::default());
    let (ctx, mut api) = setup(brokers.clone(), vec![t.clone()]);
    let echo = serde_json::to_value(&t).expect("json");
    let server = tokio::spawn(async move {
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/local-a", |_| cluster_json())
            .await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(event["reason"], "Created");
        assert_eq!(event["type"], "Normal");
        let (query, patch) = api.expect("PATCH", &format!("{TOPICS}/clicks/status"), |_| echo).await;
        assert!(query.contains("fieldManager=tributary-operator"), "{query}");
        assert!(query.contains("force=true"), "{query}");
        api.done().await;
        patch
    });
    let action = controller::topic::reconcile(Arc::new(t), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let patch = server.await.expect("api server");
    let status = &patch["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["partitions"], 3);
    assert_eq!(status["topicName"], "clicks");
    let ready = condition(status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("True"), Some("Created")));
    assert_eq!(ready["observedGeneration"], 2);
    assert_eq!(condition(status, "Stalled")["status"], "False");
    assert_eq!(
        brokers.calls(),
        [AdminCall::Create {
            name: "clicks".into(),
            partitions: 3,
            replication_factor: 1,
            configs: [("retention.ms".to_string(), "1000".to_string())].into_iter().collect(),
        }]
    );
}

#[tokio::test]
async fn shrinking_partitions_is_refused_with_a_stalled_condition() {
    let t = topic(3, true, "Retain");
    let brokers = FakeBrokers::with_topic("clicks", 6);
    brokers
        .topics
        .lock()
        .expect("lock")
        .get_mut("clicks")
        .expect("topic")
        .configs
        .insert("retention.ms".into(), "1000".into());
    let (ctx, mut api) = setup(brokers.clone(), vec![t.clone()]);
    let echo = serde_json::to_value(&t).expect("json");
    let server = tokio::spawn(async move {
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/local-a", |_| cluster_json())
            .await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some("PartitionShrinkRefused"))
        );
        let (_, patch) = api.expect("PATCH", &format!("{TOPICS}/clicks/status"), |_| echo).await;
        api.done().await;
        patch
    });
    controller::topic::reconcile(Arc::new(t), ctx).await.expect("reconcile");
    let patch = server.await.expect("api server");
    let stalled = condition(&patch["status"], "Stalled");
    assert_eq!(
        (stalled["status"].as_str(), stalled["reason"].as_str()),
        (Some("True"), Some("PartitionShrinkRefused"))
    );
    assert_eq!(condition(&patch["status"], "Ready")["status"], "False");
    assert_eq!(patch["status"]["partitions"], 6, "status shows what the brokers have");
    assert!(brokers.calls().is_empty());
}

#[tokio::test]
async fn a_missing_cluster_is_reported_without_broker_calls() {
    let t = topic(3, true, "Retain");
    let brokers = Arc::new(FakeBrokers::default());
    let (ctx, mut api) = setup(brokers.clone(), vec![t.clone()]);
    let echo = serde_json::to_value(&t).expect("json");
    let server = tokio::spawn(async move {
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/local-a", |_| {
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
        })
        .await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(event["reason"], "ClusterNotFound");
        let (_, patch) = api.expect("PATCH", &format!("{TOPICS}/clicks/status"), |_| echo).await;
        api.done().await;
        patch
    });
    controller::topic::reconcile(Arc::new(t), ctx).await.expect("reconcile");
    let patch = server.await.expect("api server");
    assert_eq!(condition(&patch["status"], "Stalled")["reason"], "ClusterNotFound");
    assert!(brokers.calls().is_empty());
}

#[tokio::test]
async fn deleting_with_policy_delete_deletes_then_releases_the_finalizer() {
    let mut t = topic(3, true, "Delete");
    t.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(1_800_000_000).expect("ts"),
    ));
    let brokers = FakeBrokers::with_topic("clicks", 3);
    let (ctx, mut api) = setup(brokers.clone(), vec![t.clone()]);
    let echo = serde_json::to_value(&t).expect("json");
    let server = tokio::spawn(async move {
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/local-a", |_| cluster_json())
            .await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(event["reason"], "TopicDeleted");
        let (_, patch) = api.expect("PATCH", &format!("{TOPICS}/clicks"), |_| echo).await;
        assert!(patch.to_string().contains("remove"), "finalizer removed: {patch}");
        api.done().await;
    });
    controller::topic::reconcile(Arc::new(t), ctx).await.expect("reconcile");
    server.await.expect("api server");
    assert_eq!(brokers.calls(), [AdminCall::Delete { name: "clicks".into() }]);
    assert!(brokers.topics.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn unreachable_brokers_keep_the_finalizer_and_back_off() {
    let mut t = topic(3, true, "Delete");
    t.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(1_800_000_000).expect("ts"),
    ));
    let brokers = FakeBrokers::with_topic("clicks", 3);
    brokers.unavailable.store(true, Ordering::Relaxed);
    let (ctx, mut api) = setup(brokers.clone(), vec![t.clone()]);
    let server = tokio::spawn(async move {
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/local-a", |_| cluster_json())
            .await;
        // No finalizer removal follows.
        api.done().await;
    });
    let t = Arc::new(t);
    let err = controller::topic::reconcile(t.clone(), ctx.clone()).await.expect_err("cleanup fails");
    assert!(err.to_string().contains("unreachable"), "{err}");
    server.await.expect("api server");
    assert!(brokers.calls().is_empty());
    // Each failure doubles the wait before the next try.
    let waits: Vec<Action> = (0..3).map(|_| controller::error_policy(t.clone(), &err, ctx.clone())).collect();
    assert_eq!(
        waits,
        [1, 2, 4].map(|s| Action::requeue(Duration::from_secs(s))),
        "per-object exponential backoff"
    );
}

fn cluster(replicas: i32, generation: i64) -> Cluster {
    serde_json::from_value(json!({
        "apiVersion": "tributary.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "events", "namespace": "ns", "uid": "c-1", "generation": generation},
        "spec": {"replicas": replicas},
    }))
    .expect("cluster")
}

const STATEFULSET: &str = "/apis/apps/v1/namespaces/ns/statefulsets/events";

/// The read of the running StatefulSet (`running` replicas, or none yet),
/// then the five server-side applies of a Cluster's objects, in order; the
/// StatefulSet is answered with `sts_status`.
async fn expect_cluster_objects(api: &mut ApiServer, running: Option<i32>, sts_status: Value) -> Value {
    api.expect("GET", STATEFULSET, |_| match running {
        Some(replicas) => json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "events", "namespace": "ns"},
            "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "events-brokers"},
        }),
        None => json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": "statefulsets.apps \"events\" not found",
        }),
    })
    .await;
    let applied = [
        "/api/v1/namespaces/ns/configmaps/events-config",
        "/api/v1/namespaces/ns/services/events-brokers",
        "/api/v1/namespaces/ns/services/events",
    ];
    for path in applied {
        let (query, body) = api.expect("PATCH", path, |b| b.clone()).await;
        assert!(query.contains("fieldManager=tributary-operator") && query.contains("force=true"), "{query}");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "c-1");
    }
    let (_, sts) = api
        .expect("PATCH", STATEFULSET, |b| {
            let mut s = b.clone();
            s["status"] = sts_status;
            s
        })
        .await;
    api.expect("PATCH", "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/events", |b| b.clone()).await;
    sts
}

fn pod_list(revisions: &[&str]) -> Value {
    let items: Vec<Value> = revisions
        .iter()
        .enumerate()
        .map(|(i, rev)| {
            json!({
                "metadata": {"name": format!("events-{i}"), "labels": {"controller-revision-hash": rev}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

const CLUSTER_STATUS: &str = "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/events/status";

#[tokio::test]
async fn a_cluster_applies_its_objects_then_reports_ready_brokers() {
    let c = cluster(1, 3);
    let (ctx, mut api) = setup(Arc::new(FakeBrokers::default()), vec![]);
    let echo = serde_json::to_value(&c).expect("json");
    let server = tokio::spawn(async move {
        let sts = expect_cluster_objects(
            &mut api,
            Some(1),
            json!({"replicas": 1, "readyReplicas": 1, "updateRevision": "rev-2"}),
        )
        .await;
        assert_eq!(sts["spec"]["template"]["spec"]["containers"][0]["command"], json!(["tributary-broker"]));
        assert_eq!(sts["spec"]["replicas"], 1);
        let (query, _) = api.expect("GET", "/api/v1/namespaces/ns/pods", |_| pod_list(&["rev-2"])).await;
        assert!(query.contains("labelSelector="), "{query}");
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        patch
    });
    let action = controller::cluster::reconcile(Arc::new(c), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let patch = server.await.expect("api server");
    let status = &patch["status"];
    assert_eq!(status["readyBrokers"], 1);
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["bootstrap"], "events.ns.svc:7070");
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "Ready")["reason"], "BrokersReady");
    assert_eq!(condition(status, "Stalled")["status"], "False");
}

#[tokio::test]
async fn an_outdated_broker_is_restarted_one_at_a_time() {
    let c = cluster(1, 4);
    let (ctx, mut api) = setup(Arc::new(FakeBrokers::default()), vec![]);
    let echo = serde_json::to_value(&c).expect("json");
    let server = tokio::spawn(async move {
        expect_cluster_objects(
            &mut api,
            Some(1),
            json!({"replicas": 1, "readyReplicas": 1, "updateRevision": "rev-2"}),
        )
        .await;
        api.expect("GET", "/api/v1/namespaces/ns/pods", |_| pod_list(&["rev-1"])).await;
        api.expect("DELETE", "/api/v1/namespaces/ns/pods/events-0", |_| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "events-0", "namespace": "ns"}})
        })
        .await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(event["reason"], "BrokerRestarted");
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        patch
    });
    let action = controller::cluster::reconcile(Arc::new(c), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    let patch = server.await.expect("api server");
    let reconciling = condition(&patch["status"], "Reconciling");
    assert_eq!(
        (reconciling["status"].as_str(), reconciling["reason"].as_str()),
        (Some("True"), Some("RollingRestart"))
    );
    assert_eq!(condition(&patch["status"], "Ready")["status"], "False");
}

#[tokio::test]
async fn a_roll_waits_for_an_unready_broker() {
    let c = cluster(1, 4);
    let (ctx, mut api) = setup(Arc::new(FakeBrokers::default()), vec![]);
    let echo = serde_json::to_value(&c).expect("json");
    let server = tokio::spawn(async move {
        expect_cluster_objects(
            &mut api,
            Some(1),
            json!({"replicas": 1, "readyReplicas": 0, "updateRevision": "rev-2"}),
        )
        .await;
        api.expect("GET", "/api/v1/namespaces/ns/pods", |_| {
            let mut pods = pod_list(&["rev-1"]);
            pods["items"][0]["status"]["conditions"][0]["status"] = json!("False");
            pods
        })
        .await;
        // No DELETE: straight to the status.
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        patch
    });
    controller::cluster::reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let patch = server.await.expect("api server");
    assert!(patch["status"]["rollBlocked"].as_str().is_some_and(|r| r.contains("events-0")), "{patch}");
    assert_eq!(condition(&patch["status"], "Reconciling")["reason"], "RollBlocked");
}

#[tokio::test]
async fn a_cluster_declaring_three_brokers_runs_one_and_reports_stalled() {
    let c = cluster(3, 2);
    let (ctx, mut api) = setup(Arc::new(FakeBrokers::default()), vec![]);
    let echo = serde_json::to_value(&c).expect("json");
    let server = tokio::spawn(async move {
        let sts = expect_cluster_objects(
            &mut api,
            None,
            json!({"replicas": 1, "readyReplicas": 1, "updateRevision": "rev-1"}),
        )
        .await;
        assert_eq!(sts["spec"]["replicas"], 1, "one broker until brokers replicate");
        api.expect("GET", "/api/v1/namespaces/ns/pods", |_| pod_list(&["rev-1"])).await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some("ReplicationNotAvailable"))
        );
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        patch
    });
    let action = controller::cluster::reconcile(Arc::new(c), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let patch = server.await.expect("api server");
    let status = &patch["status"];
    let stalled = condition(status, "Stalled");
    assert_eq!(
        (stalled["status"].as_str(), stalled["reason"].as_str()),
        (Some("True"), Some("ReplicationNotAvailable"))
    );
    let message = stalled["message"].as_str().unwrap_or_default();
    assert!(message.contains("do not form a replicated cluster yet"), "{message}");
    assert!(message.contains("1 of the 3 declared brokers is running"), "{message}");
    assert!(message.contains("set replicas: 1"), "{message}");
    assert_eq!(stalled["observedGeneration"], 2);
    let ready = condition(status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ReplicationNotAvailable")),
        "Ready never claims the declared three brokers"
    );
    assert_eq!(condition(status, "Reconciling")["status"], "False");
    assert_eq!(status["readyBrokers"], 1);
}

#[tokio::test]
async fn a_scale_down_keeps_the_running_brokers_and_reports_stalled_once() {
    let c = cluster(1, 5);
    let (ctx, mut api) = setup(Arc::new(FakeBrokers::default()), vec![]);
    let echo = serde_json::to_value(&c).expect("json");
    let server = tokio::spawn(async move {
        let sts = expect_cluster_objects(
            &mut api,
            Some(2),
            json!({"replicas": 2, "readyReplicas": 2, "updateRevision": "rev-1"}),
        )
        .await;
        assert_eq!(sts["spec"]["replicas"], 2, "the running count is kept");
        api.expect("GET", "/api/v1/namespaces/ns/pods", |_| pod_list(&["rev-1", "rev-1"])).await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some("ScaleDownRequiresDrain"))
        );
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        patch
    });
    controller::cluster::reconcile(Arc::new(c.clone()), ctx).await.expect("reconcile");
    let patch = server.await.expect("api server");
    let stalled = condition(&patch["status"], "Stalled");
    assert_eq!(
        (stalled["status"].as_str(), stalled["reason"].as_str()),
        (Some("True"), Some("ScaleDownRequiresDrain"))
    );
    let message = stalled["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.replicas is 1"), "{message}");
    assert!(message.contains("Keeping 2 broker(s)"), "{message}");
    assert!(message.contains("set spec.replicas back to 2"), "{message}");
    assert_eq!(condition(&patch["status"], "Ready")["status"], "False");

    // The next pass, with that status stored: same objects, no second Event.
    let mut again = c;
    again.status = Some(serde_json::from_value(patch["status"].clone()).expect("status"));
    let (ctx, mut api) = setup(Arc::new(FakeBrokers::default()), vec![]);
    let echo = serde_json::to_value(&again).expect("json");
    let server = tokio::spawn(async move {
        let sts = expect_cluster_objects(
            &mut api,
            Some(2),
            json!({"replicas": 2, "readyReplicas": 2, "updateRevision": "rev-1"}),
        )
        .await;
        assert_eq!(sts["spec"]["replicas"], 2);
        api.expect("GET", "/api/v1/namespaces/ns/pods", |_| pod_list(&["rev-1", "rev-1"])).await;
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        patch
    });
    controller::cluster::reconcile(Arc::new(again), ctx).await.expect("reconcile");
    let patch = server.await.expect("api server");
    assert_eq!(condition(&patch["status"], "Stalled")["reason"], "ScaleDownRequiresDrain");
}

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
use tributary_operator::admin::{AdminError, Brokers, MirrorCall};
use tributary_operator::cluster::Defaults;
use tributary_operator::controller::{self, Context};
use tributary_operator::health::{BrokerView, ClusterCall, ClusterHealth, PartitionView};
use tributary_operator::metrics::Metrics;
use tributary_operator::topic_plan::{AdminCall, ObservedTopic};
use tributary_proto::v1;

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
    /// What `cluster_health` answers; unreachable while `None`.
    health: Mutex<Option<ClusterHealth>>,
    cluster_calls: Mutex<Vec<ClusterCall>>,
    /// Mirror links of the destination `agg`, as it describes them.
    links: Mutex<HashMap<String, v1::DescribeMirrorLinkResponse>>,
    mirror_calls: Mutex<Vec<MirrorCall>>,
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

    fn with_health(h: ClusterHealth) -> Arc<FakeBrokers> {
        let b = FakeBrokers::default();
        *b.health.lock().expect("lock") = Some(h);
        Arc::new(b)
    }

    fn set_health(&self, h: ClusterHealth) {
        *self.health.lock().expect("lock") = Some(h);
    }

    fn cluster_calls(&self) -> Vec<ClusterCall> {
        self.cluster_calls.lock().expect("lock").clone()
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
                AdminCall::AlterReplicationFactor { name, replication_factor, .. } => {
                    if let Some(t) = topics.get_mut(name) {
                        // New replicas join the lists at once and catch up later.
                        t.replicas = vec![(*replication_factor, 1); t.partitions as usize];
                        t.replication_factor = *replication_factor;
                        t.under_replicated = t.partitions;
                    }
                }
            }
            Ok(())
        })
    }

    fn cluster_health<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<ClusterHealth, AdminError>> {
        Box::pin(async move {
            assert_eq!(address, "events.ns.svc:7070");
            self.health.lock().expect("lock").clone().ok_or(AdminError::Unavailable {
                address: address.into(),
                message: "connection refused".into(),
            })
        })
    }

    fn cluster_call<'a>(
        &'a self,
        address: &'a str,
        call: &'a ClusterCall,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            self.down(address)?;
            self.cluster_calls.lock().expect("lock").push(call.clone());
            Ok(())
        })
    }

    fn mirror_call<'a>(
        &'a self,
        address: &'a str,
        call: &'a MirrorCall,
    ) -> BoxFuture<'a, Result<Option<v1::DescribeMirrorLinkResponse>, AdminError>> {
        Box::pin(async move {
            assert_eq!(address, "agg.ns.svc:7070", "links are made on the destination");
            self.down(address)?;
            let mut links = self.links.lock().expect("lock");
            match call {
                MirrorCall::Describe { name } => return Ok(links.get(name).cloned()),
                MirrorCall::Put { link, .. } => {
                    // The destination copies `orders` with 7 records to go.
                    let partition = |p, lag| v1::MirrorPartitionStatus {
                        source_topic: "orders".into(),
                        partition: p,
                        destination_topic: "local-a.orders".into(),
                        lag,
                        state: "Copying".into(),
                        ..Default::default()
                    };
                    links.insert(
                        link.name.clone(),
                        v1::DescribeMirrorLinkResponse {
                            link: Some(link.clone()),
                            source_cluster_id: "src-id".into(),
                            topics: vec![v1::MirrorTopicStatus {
                                source_topic: "orders".into(),
                                destination_topic: "local-a.orders".into(),
                                state: "Copying".into(),
                                reason: String::new(),
                            }],
                            partitions: vec![partition(0, 5), partition(1, 2)],
                            total_lag: 7,
                            records_per_sec: 120.0,
                            error: String::new(),
                        },
                    );
                }
                MirrorCall::Delete { name } => {
                    links.remove(name);
                }
            }
            self.mirror_calls.lock().expect("lock").push(call.clone());
            Ok(None)
        })
    }
}

/// `n` live brokers, controller 0, and partitions `t-i` with these replicas and ISRs.
fn health(n: i32, partitions: &[(&[i32], &[i32])]) -> ClusterHealth {
    ClusterHealth {
        controller: Some(0),
        brokers: (0..n).map(|node_id| BrokerView { node_id, alive: true, rack: String::new() }).collect(),
        partitions: partitions
            .iter()
            .enumerate()
            .map(|(i, (replicas, isr))| PartitionView {
                topic: "t".into(),
                partition: i as u32,
                leader: isr.first().copied().unwrap_or(-1),
                replicas: replicas.to_vec(),
                isr: isr.to_vec(),
                min_isr: 2,
            })
            .collect(),
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
    let (ctx, mut api) = setup(FakeBrokers::with_health(health(1, &[])), vec![]);
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
    assert_eq!((status["declaredBrokers"].as_i64(), status["aliveBrokers"].as_i64()), (Some(1), Some(1)));
    assert_eq!(status["controller"], 0);
    assert_eq!(status["underReplicatedPartitions"], 0);
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["bootstrap"], "events.ns.svc:7070");
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "Ready")["reason"], "BrokersReady");
    assert_eq!(condition(status, "Stalled")["status"], "False");
    assert!(status.get("roll").is_none(), "{status}");
}

#[tokio::test]
async fn an_outdated_broker_is_restarted_one_at_a_time() {
    let c = cluster(1, 4);
    let (ctx, mut api) = setup(FakeBrokers::with_health(health(1, &[])), vec![]);
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
    let roll = &patch["status"]["roll"];
    assert_eq!((roll["restarting"].as_i64(), roll["total"].as_i64()), (Some(0), Some(1)), "{roll}");
    assert_eq!(roll["restartedAt"], "2027-01-15T08:00:00Z");
}

#[tokio::test]
async fn a_roll_waits_for_an_unready_broker() {
    let c = cluster(1, 4);
    let (ctx, mut api) = setup(FakeBrokers::with_health(health(1, &[])), vec![]);
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

fn three_ready() -> Value {
    json!({"replicas": 3, "readyReplicas": 3, "updateRevision": "rev-2"})
}

#[tokio::test]
async fn a_roll_blocked_by_an_under_replicated_partition_resumes_when_it_heals() {
    let c = cluster(3, 6);
    let brokers = FakeBrokers::with_health(health(3, &[(&[0, 1, 2], &[0, 1])]));
    let (ctx, mut api) = setup(brokers.clone(), vec![]);
    let echo = serde_json::to_value(&c).expect("json");
    let server = tokio::spawn(async move {
        let sts = expect_cluster_objects(&mut api, Some(3), three_ready()).await;
        assert_eq!(sts["spec"]["replicas"], 3);
        api.expect("GET", "/api/v1/namespaces/ns/pods", |_| pod_list(&["rev-1"; 3])).await;
        // Every pod is ready, but the brokers say t-0 lacks broker 2: no DELETE.
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        patch
    });
    let action = controller::cluster::reconcile(Arc::new(c.clone()), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(15)), "looked at again soon");
    let patch = server.await.expect("api server");
    let status = &patch["status"];
    let reconciling = condition(status, "Reconciling");
    assert_eq!(
        (reconciling["status"].as_str(), reconciling["reason"].as_str()),
        (Some("True"), Some("RollBlocked"))
    );
    let blocked = status["rollBlocked"].as_str().unwrap_or_default();
    assert!(blocked.contains("1 partition(s) are under-replicated (t-0)"), "{blocked}");
    assert_eq!(status["underReplicatedPartitions"], 1);

    // The ISR heals: the next pass restarts the highest non-controller broker.
    brokers.set_health(health(3, &[(&[0, 1, 2], &[0, 1, 2])]));
    let mut again = c;
    again.status = Some(serde_json::from_value(status.clone()).expect("status"));
    let (ctx, mut api) = setup(brokers.clone(), vec![]);
    let echo = serde_json::to_value(&again).expect("json");
    let server = tokio::spawn(async move {
        expect_cluster_objects(&mut api, Some(3), three_ready()).await;
        api.expect("GET", "/api/v1/namespaces/ns/pods", |_| pod_list(&["rev-1"; 3])).await;
        api.expect("DELETE", "/api/v1/namespaces/ns/pods/events-2", |_| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "events-2", "namespace": "ns"}})
        })
        .await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(event["reason"], "BrokerRestarted");
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        patch
    });
    controller::cluster::reconcile(Arc::new(again), ctx).await.expect("reconcile");
    let patch = server.await.expect("api server");
    assert_eq!(condition(&patch["status"], "Reconciling")["reason"], "RollingRestart");
    assert_eq!(patch["status"]["roll"]["restarting"], 2);
    assert!(brokers.cluster_calls().is_empty(), "no election before the roll ends");
}

#[tokio::test]
async fn a_single_replica_topic_stalls_the_roll_naming_it() {
    let c = cluster(3, 2);
    let (ctx, mut api) = setup(FakeBrokers::with_health(health(3, &[(&[2], &[2])])), vec![]);
    let echo = serde_json::to_value(&c).expect("json");
    let server = tokio::spawn(async move {
        expect_cluster_objects(&mut api, Some(3), three_ready()).await;
        api.expect("GET", "/api/v1/namespaces/ns/pods", |_| pod_list(&["rev-1"; 3])).await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some("SingleReplicaTopic"))
        );
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        patch
    });
    let action = controller::cluster::reconcile(Arc::new(c), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)), "a stalled roll is looked at again");
    let patch = server.await.expect("api server");
    let stalled = condition(&patch["status"], "Stalled");
    assert_eq!(
        (stalled["status"].as_str(), stalled["reason"].as_str()),
        (Some("True"), Some("SingleReplicaTopic"))
    );
    let message = stalled["message"].as_str().unwrap_or_default();
    assert!(message.contains("broker 2") && message.contains("allowSingleReplicaDowntime"), "{message}");
}

#[tokio::test]
async fn the_end_of_a_roll_elects_preferred_leaders() {
    let mut c = cluster(3, 7);
    c.status = Some(
        serde_json::from_value(json!({"roll": {"updated": 2, "total": 3, "restarting": 0, "restartedAt": "2027-01-15T07:59:00Z"}}))
            .expect("status"),
    );
    let brokers = FakeBrokers::with_health(health(3, &[(&[0, 1, 2], &[1, 2, 0])]));
    let (ctx, mut api) = setup(brokers.clone(), vec![]);
    let echo = serde_json::to_value(&c).expect("json");
    let server = tokio::spawn(async move {
        expect_cluster_objects(&mut api, Some(3), three_ready()).await;
        api.expect("GET", "/api/v1/namespaces/ns/pods", |_| pod_list(&["rev-2"; 3])).await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(event["reason"], "RollFinished");
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        patch
    });
    controller::cluster::reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let patch = server.await.expect("api server");
    assert_eq!(brokers.cluster_calls(), [ClusterCall::ElectLeaders]);
    assert!(patch["status"].get("roll").is_none(), "{patch}");
    assert_eq!(condition(&patch["status"], "Ready")["status"], "True");
}

/// One reconcile of `c` with the StatefulSet at `running` brokers; returns
/// the applied StatefulSet and status patch, and the event reasons posted.
async fn scale_pass(
    c: &Cluster,
    brokers: Arc<FakeBrokers>,
    running: i32,
    events: usize,
) -> (Value, Value, Vec<String>) {
    let (ctx, mut api) = setup(brokers, vec![]);
    let echo = serde_json::to_value(c).expect("json");
    let server = tokio::spawn(async move {
        let status = json!({"replicas": running, "readyReplicas": running, "updateRevision": "rev-1"});
        let sts = expect_cluster_objects(&mut api, Some(running), status).await;
        api.expect("GET", "/api/v1/namespaces/ns/pods", |_| pod_list(&vec!["rev-1"; running as usize])).await;
        let mut reasons = Vec::new();
        for _ in 0..events {
            let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
            reasons.push(event["reason"].as_str().unwrap_or_default().to_string());
        }
        let (_, patch) = api.expect("PATCH", CLUSTER_STATUS, |_| echo).await;
        api.done().await;
        (sts, patch, reasons)
    });
    controller::cluster::reconcile(Arc::new(c.clone()), ctx).await.expect("reconcile");
    server.await.expect("api server")
}

#[tokio::test]
async fn a_scale_down_drains_then_removes_then_shrinks() {
    let c = cluster(2, 5);
    // Broker 2 still holds a replica of t-0.
    let brokers = FakeBrokers::with_health(health(3, &[(&[0, 2], &[0, 2])]));
    let (sts, patch, events) = scale_pass(&c, brokers.clone(), 3, 1).await;
    assert_eq!(sts["spec"]["replicas"], 3, "nothing stops before the drain");
    assert_eq!(events, ["DrainingBroker"]);
    assert_eq!(brokers.cluster_calls(), [ClusterCall::Drain { node: 2, throttle: None }]);
    assert_eq!(condition(&patch["status"], "Reconciling")["reason"], "DrainingBroker");
    assert!(patch["status"]["scaling"]
        .as_str()
        .is_some_and(|s| s.contains("moving 1 replica(s) off broker 2")));

    // Drained: removed from the quorum, still running.
    let brokers = FakeBrokers::with_health(health(3, &[(&[0, 1], &[0, 1])]));
    let (sts, _, events) = scale_pass(&c, brokers.clone(), 3, 1).await;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(events, ["RemovingBroker"]);
    assert_eq!(brokers.cluster_calls(), [ClusterCall::RemoveBroker { node: 2 }]);

    // Removed: the StatefulSet shrinks; its claim is kept by default.
    let brokers = FakeBrokers::with_health(health(2, &[(&[0, 1], &[0, 1])]));
    let (sts, patch, _) = scale_pass(&c, brokers.clone(), 3, 0).await;
    assert_eq!(sts["spec"]["replicas"], 2);
    assert_eq!(sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"], "Retain");
    assert!(brokers.cluster_calls().is_empty());
    assert_eq!(condition(&patch["status"], "Reconciling")["reason"], "ScalingDown");

    // A scale-down below a topic's replication factor is refused.
    let c = cluster(1, 6);
    let brokers = FakeBrokers::with_health(health(3, &[(&[0, 1], &[0, 1])]));
    let (sts, patch, events) = scale_pass(&c, brokers.clone(), 2, 1).await;
    assert_eq!(sts["spec"]["replicas"], 2);
    assert_eq!(events, ["ScaleDownBelowReplicationFactor"]);
    assert_eq!(condition(&patch["status"], "Stalled")["reason"], "ScaleDownBelowReplicationFactor");
}

#[tokio::test]
async fn a_replication_factor_change_is_started_once_and_reported_until_in_sync() {
    let mut t = topic(3, true, "Retain");
    t.spec.replication_factor = 3;
    let brokers = FakeBrokers::with_topic("clicks", 3);
    brokers.topics.lock().expect("lock").get_mut("clicks").expect("topic").configs =
        [("retention.ms".to_string(), "1000".to_string())].into_iter().collect();
    let (ctx, mut api) = setup(brokers.clone(), vec![t.clone()]);
    let echo = serde_json::to_value(&t).expect("json");
    let server = tokio::spawn(async move {
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/local-a", |_| cluster_json())
            .await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(event["reason"], "ReassigningReplicas");
        let (_, patch) = api.expect("PATCH", &format!("{TOPICS}/clicks/status"), |_| echo).await;
        api.done().await;
        patch
    });
    let action = controller::topic::reconcile(Arc::new(t.clone()), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let patch = server.await.expect("api server");
    assert_eq!(
        brokers.calls(),
        [AdminCall::AlterReplicationFactor { name: "clicks".into(), replication_factor: 3, throttle: None }]
    );
    let status = &patch["status"];
    assert_eq!(condition(status, "Reconciling")["reason"], "ReassigningReplicas");
    assert_eq!(
        status["reassignment"],
        json!({"fromReplicationFactor": 1, "toReplicationFactor": 3, "partitionsDone": 0})
    );

    // Next pass (status stored, replicas caught up): Ready, no second call.
    if let Some(o) = brokers.topics.lock().expect("lock").get_mut("clicks") {
        o.replicas = vec![(3, 3); 3];
        o.under_replicated = 0;
    }
    t.status = Some(serde_json::from_value(status.clone()).expect("status"));
    let (ctx, mut api) = setup(brokers.clone(), vec![t.clone()]);
    let echo = serde_json::to_value(&t).expect("json");
    let server = tokio::spawn(async move {
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/local-a", |_| cluster_json())
            .await;
        let (_, patch) = api.expect("PATCH", &format!("{TOPICS}/clicks/status"), |_| echo).await;
        api.done().await;
        patch
    });
    controller::topic::reconcile(Arc::new(t), ctx).await.expect("reconcile");
    let patch = server.await.expect("api server");
    assert_eq!(brokers.calls().len(), 1, "started once");
    assert_eq!(condition(&patch["status"], "Ready")["status"], "True");
    assert!(patch["status"].get("reassignment").is_none(), "{patch}");
    assert_eq!(patch["status"]["replicationFactor"], 3);
}

const LINKS: &str = "/apis/tributary.dev/v1alpha1/namespaces/ns/mirrorlinks";

fn mirror_link(paused: bool) -> MirrorLink {
    serde_json::from_value(json!({
        "apiVersion": "tributary.dev/v1alpha1",
        "kind": "MirrorLink",
        "metadata": {
            "name": "a-to-agg", "namespace": "ns", "uid": "m-1", "generation": 3,
            "resourceVersion": "9", "finalizers": ["tributary.dev/mirror-link"],
        },
        "spec": {
            "source": {"clusterRef": {"name": "local-a"}},
            "destination": {"clusterRef": {"name": "agg"}},
            "topics": {"names": ["orders"]},
            "paused": paused,
        },
    }))
    .expect("mirror link")
}

fn named_cluster_json(name: &str) -> Value {
    json!({
        "apiVersion": "tributary.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("c-{name}"), "generation": 1},
        "spec": {"replicas": 3},
    })
}

#[tokio::test]
async fn a_mirror_link_is_created_on_the_destination_and_reports_its_lag() {
    let l = mirror_link(false);
    let brokers = Arc::new(FakeBrokers::default());
    let (ctx, mut api) = setup(brokers.clone(), vec![]);
    let echo = serde_json::to_value(&l).expect("json");
    let server = tokio::spawn(async move {
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/agg", |_| {
            named_cluster_json("agg")
        })
        .await;
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/local-a", |_| {
            named_cluster_json("local-a")
        })
        .await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(event["reason"], "LinkCreated");
        let (_, patch) = api.expect("PATCH", &format!("{LINKS}/a-to-agg/status"), |_| echo).await;
        api.done().await;
        patch
    });
    let action = controller::mirror_link::reconcile(Arc::new(l), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let status = server.await.expect("api server")["status"].clone();
    let calls = brokers.mirror_calls.lock().expect("lock").clone();
    let [MirrorCall::Put { link, update: false }] = calls.as_slice() else { panic!("{calls:?}") };
    assert_eq!(
        (
            link.name.as_str(),
            link.source_alias.as_str(),
            link.source_bootstrap.as_str(),
            link.topics.as_str()
        ),
        ("a-to-agg", "local-a", "local-a.ns.svc:7070", "orders")
    );
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["totalLag"], 7);
    assert_eq!(status["topics"][0]["source"], "orders");
    assert_eq!(status["topics"][0]["destination"], "local-a.orders");
    assert_eq!(status["topics"][0]["lag"], 7);
    let ready = condition(&status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("True"), Some("Copying")));
}

#[tokio::test]
async fn pausing_a_mirror_link_updates_it_and_clears_ready() {
    let brokers = Arc::new(FakeBrokers::default());
    let running = mirror_link(false);
    // The destination holds the running link already.
    let spec = tributary_operator::mirror_plan::desired(&running, "local-a.ns.svc:7070");
    brokers
        .mirror_call("agg.ns.svc:7070", &MirrorCall::Put { link: spec, update: false })
        .await
        .expect("put");
    brokers.mirror_calls.lock().expect("lock").clear();
    let l = mirror_link(true);
    let (ctx, mut api) = setup(brokers.clone(), vec![]);
    let echo = serde_json::to_value(&l).expect("json");
    let server = tokio::spawn(async move {
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/agg", |_| {
            named_cluster_json("agg")
        })
        .await;
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/local-a", |_| {
            named_cluster_json("local-a")
        })
        .await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(event["reason"], "LinkUpdated");
        let (_, patch) = api.expect("PATCH", &format!("{LINKS}/a-to-agg/status"), |_| echo).await;
        api.done().await;
        patch
    });
    controller::mirror_link::reconcile(Arc::new(l), ctx).await.expect("reconcile");
    let status = server.await.expect("api server")["status"].clone();
    let calls = brokers.mirror_calls.lock().expect("lock").clone();
    assert!(matches!(calls.as_slice(), [MirrorCall::Put { link, update: true }] if link.paused), "{calls:?}");
    let ready = condition(&status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("Paused")));
}

#[tokio::test]
async fn deleting_a_mirror_link_deletes_it_on_the_destination_then_releases_the_finalizer() {
    let mut l = mirror_link(false);
    l.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(1_800_000_000).expect("ts"),
    ));
    let brokers = Arc::new(FakeBrokers::default());
    let spec = tributary_operator::mirror_plan::desired(&l, "local-a.ns.svc:7070");
    brokers
        .mirror_call("agg.ns.svc:7070", &MirrorCall::Put { link: spec, update: false })
        .await
        .expect("put");
    brokers.mirror_calls.lock().expect("lock").clear();
    let (ctx, mut api) = setup(brokers.clone(), vec![]);
    let echo = serde_json::to_value(&l).expect("json");
    let server = tokio::spawn(async move {
        api.expect("GET", "/apis/tributary.dev/v1alpha1/namespaces/ns/clusters/agg", |_| {
            named_cluster_json("agg")
        })
        .await;
        let (_, event) = api.expect("POST", EVENTS, |b| b.clone()).await;
        assert_eq!(event["reason"], "LinkDeleted");
        let (_, patch) = api.expect("PATCH", &format!("{LINKS}/a-to-agg"), |_| echo).await;
        assert!(patch.to_string().contains("remove"), "finalizer removed: {patch}");
        api.done().await;
    });
    controller::mirror_link::reconcile(Arc::new(l), ctx).await.expect("reconcile");
    server.await.expect("api server");
    assert_eq!(*brokers.mirror_calls.lock().expect("lock"), [MirrorCall::Delete { name: "a-to-agg".into() }]);
    assert!(brokers.links.lock().expect("lock").is_empty());
}

//! Coalescing admin calls: many Topic reconciles, few broker round trips.
//!
//! Why it exists: the Topic controller reconciles every Topic object on its
//! own, and each reconcile used to make its own `DescribeTopics` (and, for a
//! new topic, `CreateTopics`) call. With thousands of Topic objects — after an
//! operator restart, a resync, or a GitOps sync of a big directory — that is
//! thousands of round trips to the same brokers, serialized behind the
//! controller's concurrency. The Admin API already takes many topics per call,
//! so [`AdminBatcher`] collects what concurrent reconciles ask of one cluster
//! (keyed by its bootstrap address) for a short window (20 ms by default) and
//! sends it as one call:
//!
//! - **describe**: one `DescribeTopics` with every name asked for (or, above
//!   [`BatchConfig::describe_all_above`] names, one describe-all); each caller
//!   gets its own topic, or `None` when it does not exist. A failed call fails
//!   every caller of the batch with the same error.
//! - **create**: one `CreateTopics` with every topic. The broker validates
//!   that call all-or-nothing (one bad topic refuses all of them, naming it),
//!   so when the brokers refuse a batch of several, each topic of it is sent
//!   again on its own: one bad Topic object cannot block the others, and each
//!   caller gets its own answer. Unreachable brokers fail the whole batch
//!   (retrying each topic would only wait for the same timeout again).
//!
//! Other calls (grow partitions, alter configs, delete) are per topic in the
//! Admin API and go straight through ([`AdminBatcher::execute`]).
//!
//! A caller waits at most the window plus the call (plus one single-topic
//! create when a create batch is refused): a batch reaching
//! [`BatchConfig::max_batch`] is sent at once, and callers arriving while a
//! call is in flight start the next batch. The batch is sent from its own
//! task, so a reconcile that is cancelled does not strand the others.
//! The batcher is generic over [`Brokers`], so tests put a fake behind it.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::admin::{AdminError, Brokers, NewTopic};
use crate::topic_plan::{AdminCall, ObservedTopic};

/// How long and how much to coalesce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// How long the first request of a batch waits for others to join it.
    pub window: Duration,
    /// A batch this big is sent at once, without waiting out the window.
    pub max_batch: usize,
    /// A describe batch naming more topics than this lists every topic
    /// instead (one describe-all beats a request carrying thousands of names).
    pub describe_all_above: usize,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig { window: Duration::from_millis(20), max_batch: 1000, describe_all_above: 500 }
    }
}

type DescribeResult = Result<Option<ObservedTopic>, AdminError>;
type Describe = (String, oneshot::Sender<DescribeResult>);
type Create = (NewTopic, oneshot::Sender<Result<(), AdminError>>);

/// The requests gathered for one call.
struct Batch<T> {
    items: Mutex<Vec<T>>,
    /// Woken when the batch is full, to send it before the window ends.
    full: Notify,
}

/// The open batch (if any) per cluster address.
type Queue<T> = Mutex<HashMap<String, Arc<Batch<T>>>>;

struct Inner<B: ?Sized> {
    config: BatchConfig,
    describes: Queue<Describe>,
    creates: Queue<Create>,
    brokers: Arc<B>,
}

/// Coalesces concurrent describes and creates per cluster; see the module docs.
pub struct AdminBatcher<B: Brokers + ?Sized> {
    inner: Arc<Inner<B>>,
}

impl<B: Brokers + ?Sized> Clone for AdminBatcher<B> {
    fn clone(&self) -> Self {
        AdminBatcher { inner: self.inner.clone() }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a caller gets when the task sending its batch went away.
fn lost(address: &str) -> AdminError {
    AdminError::Unavailable { address: address.into(), message: "the batched admin call was dropped".into() }
}

impl<B: Brokers + ?Sized> AdminBatcher<B> {
    pub fn new(brokers: Arc<B>, config: BatchConfig) -> AdminBatcher<B> {
        AdminBatcher {
            inner: Arc::new(Inner {
                config,
                describes: Mutex::new(HashMap::new()),
                creates: Mutex::new(HashMap::new()),
                brokers,
            }),
        }
    }

    pub fn config(&self) -> &BatchConfig {
        &self.inner.config
    }

    /// The brokers behind the batcher.
    pub fn brokers(&self) -> &Arc<B> {
        &self.inner.brokers
    }

    /// `topic` as the brokers at `address` see it (`None`: it does not
    /// exist), from a `DescribeTopics` call shared with concurrent callers.
    pub async fn describe(&self, address: &str, topic: &str) -> DescribeResult {
        let (tx, rx) = oneshot::channel();
        self.enqueue(address, (topic.to_string(), tx), |i| &i.describes, send_describes);
        rx.await.unwrap_or_else(|_| Err(lost(address)))
    }

    /// Creates `topic`, in a `CreateTopics` call shared with concurrent
    /// callers; the error is this topic's own.
    pub async fn create(&self, address: &str, topic: NewTopic) -> Result<(), AdminError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(address, (topic, tx), |i| &i.creates, send_creates);
        rx.await.unwrap_or_else(|_| Err(lost(address)))
    }

    /// Makes one planned call: creations are batched, the rest go straight
    /// to the brokers.
    pub async fn execute(&self, address: &str, call: &AdminCall) -> Result<(), AdminError> {
        match NewTopic::from_call(call) {
            Some(topic) => self.create(address, topic).await,
            None => self.inner.brokers.execute(address, call).await,
        }
    }

    /// Adds `item` to the open batch for `address`, or opens one and spawns
    /// the task that sends it after the window (or once it is full).
    fn enqueue<T, F, Fut>(&self, address: &str, item: T, queue: fn(&Inner<B>) -> &Queue<T>, send: F)
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner<B>>, String, Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let max = self.inner.config.max_batch.max(1);
        let mut open = lock(queue(&self.inner));
        if let Some(batch) = open.get(address) {
            let mut items = lock(&batch.items);
            items.push(item);
            if items.len() >= max {
                drop(items);
                // Later callers start a new batch; this one goes now.
                if let Some(batch) = open.remove(address) {
                    batch.full.notify_one();
                }
            }
            return;
        }
        let batch = Arc::new(Batch { items: Mutex::new(vec![item]), full: Notify::new() });
        if max > 1 {
            open.insert(address.to_string(), batch.clone());
        } else {
            batch.full.notify_one();
        }
        drop(open);
        let inner = self.inner.clone();
        let address = address.to_string();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(inner.config.window) => {}
                _ = batch.full.notified() => {}
            }
            {
                let mut open = lock(queue(&inner));
                if open.get(&address).is_some_and(|b| Arc::ptr_eq(b, &batch)) {
                    open.remove(&address);
                }
            }
            // Out of the queue: nobody adds to it any more.
            let items = std::mem::take(&mut *lock(&batch.items));
            send(inner, address, items).await;
        });
    }
}

async fn send_describes<B: Brokers + ?Sized>(inner: Arc<Inner<B>>, address: String, items: Vec<Describe>) {
    let names: BTreeSet<&String> = items.iter().map(|(name, _)| name).collect();
    let request: Vec<String> = if names.len() > inner.config.describe_all_above {
        Vec::new()
    } else {
        names.into_iter().cloned().collect()
    };
    let result = inner.brokers.describe_many(&address, &request).await;
    for (name, reply) in items {
        let answer = match &result {
            Ok(found) => Ok(found.get(&name).cloned()),
            Err(e) => Err(e.clone()),
        };
        // A caller that went away needs no answer.
        let _ = reply.send(answer);
    }
}

async fn send_creates<B: Brokers + ?Sized>(inner: Arc<Inner<B>>, address: String, items: Vec<Create>) {
    let topics: Vec<NewTopic> = items.iter().map(|(t, _)| t.clone()).collect();
    match inner.brokers.create_many(&address, &topics).await {
        Ok(()) => {
            for (_, reply) in items {
                let _ = reply.send(Ok(()));
            }
        }
        // Refused as a whole: maybe for one topic only. Each on its own.
        Err(AdminError::Refused { .. }) if items.len() > 1 => {
            let brokers = &inner.brokers;
            let address = &address;
            futures::future::join_all(items.into_iter().map(|(topic, reply)| async move {
                let r = brokers.create_many(address, std::slice::from_ref(&topic)).await;
                let _ = reply.send(r);
            }))
            .await;
        }
        Err(e) => {
            for (_, reply) in items {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// Brokers that count calls, take `delay` per call, refuse any create
    /// batch holding a topic with 0 partitions, and can be down.
    #[derive(Default)]
    struct Counting {
        topics: Mutex<HashMap<String, ObservedTopic>>,
        describe_calls: Mutex<Vec<Vec<String>>>,
        create_calls: Mutex<Vec<Vec<String>>>,
        single_describes: AtomicUsize,
        delay: Duration,
        down: bool,
    }

    impl Counting {
        fn with(names: &[&str]) -> Counting {
            let c = Counting::default();
            for n in names {
                lock(&c.topics).insert(n.to_string(), observed(3));
            }
            c
        }

        fn unreachable(&self, address: &str) -> Result<(), AdminError> {
            if self.down {
                return Err(AdminError::Unavailable { address: address.into(), message: "refused".into() });
            }
            Ok(())
        }
    }

    fn observed(partitions: u32) -> ObservedTopic {
        ObservedTopic { partitions, replication_factor: 1, ..ObservedTopic::default() }
    }

    impl Brokers for Counting {
        fn describe<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, DescribeResult> {
            self.single_describes.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(AdminError::Refused { call: "describe".into(), message: "unused".into() }) })
        }

        fn execute<'a>(&'a self, _: &'a str, call: &'a AdminCall) -> BoxFuture<'a, Result<(), AdminError>> {
            Box::pin(async move {
                Err(AdminError::Refused { call: call.name().into(), message: "not batched".into() })
            })
        }

        fn describe_many<'a>(
            &'a self,
            address: &'a str,
            names: &'a [String],
        ) -> BoxFuture<'a, Result<HashMap<String, ObservedTopic>, AdminError>> {
            Box::pin(async move {
                lock(&self.describe_calls).push(names.to_vec());
                tokio::time::sleep(self.delay).await;
                self.unreachable(address)?;
                let topics = lock(&self.topics);
                Ok(topics
                    .iter()
                    .filter(|(n, _)| names.is_empty() || names.contains(n))
                    .map(|(n, o)| (n.clone(), o.clone()))
                    .collect())
            })
        }

        fn create_many<'a>(
            &'a self,
            address: &'a str,
            topics: &'a [NewTopic],
        ) -> BoxFuture<'a, Result<(), AdminError>> {
            Box::pin(async move {
                lock(&self.create_calls).push(topics.iter().map(|t| t.name.clone()).collect());
                tokio::time::sleep(self.delay).await;
                self.unreachable(address)?;
                if let Some(bad) = topics.iter().find(|t| t.partitions == 0) {
                    return Err(AdminError::Refused {
                        call: "CreateTopics".into(),
                        message: format!("topic '{}': partitions must be at least 1", bad.name),
                    });
                }
                let mut all = lock(&self.topics);
                for t in topics {
                    all.insert(t.name.clone(), observed(t.partitions));
                }
                Ok(())
            })
        }
    }

    fn batcher(brokers: Counting, window_ms: u64) -> (Arc<Counting>, AdminBatcher<Counting>) {
        let brokers = Arc::new(brokers);
        let config = BatchConfig { window: Duration::from_millis(window_ms), ..BatchConfig::default() };
        (brokers.clone(), AdminBatcher::new(brokers, config))
    }

    fn new_topic(name: &str, partitions: u32) -> NewTopic {
        NewTopic { name: name.into(), partitions, replication_factor: 1, configs: Default::default() }
    }

    const A: &str = "a.ns.svc:7070";

    #[tokio::test]
    async fn concurrent_describes_share_one_call() {
        let (brokers, b) = batcher(Counting::with(&["t0", "t2", "t4"]), 20);
        let names: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
        let answers = futures::future::join_all(names.iter().map(|n| b.describe(A, n))).await;
        let calls = lock(&brokers.describe_calls).clone();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0], names, "one call with every name, sorted and once each");
        for (i, a) in answers.into_iter().enumerate() {
            let a = a.expect("described");
            assert_eq!(a.is_some(), i % 2 == 0, "t{i}");
        }
        assert_eq!(brokers.single_describes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_same_name_twice_is_asked_once_and_answered_twice() {
        let (brokers, b) = batcher(Counting::with(&["t"]), 20);
        let (x, y) = futures::join!(b.describe(A, "t"), b.describe(A, "t"));
        assert_eq!(lock(&brokers.describe_calls).clone(), [vec!["t".to_string()]]);
        assert!(x.expect("x").is_some() && y.expect("y").is_some());
    }

    #[tokio::test]
    async fn clusters_are_batched_apart() {
        let (brokers, b) = batcher(Counting::with(&["t"]), 20);
        let (x, y) = futures::join!(b.describe(A, "t"), b.describe("b.ns.svc:7070", "t"));
        assert!(x.is_ok() && y.is_ok());
        assert_eq!(lock(&brokers.describe_calls).len(), 2);
    }

    #[tokio::test]
    async fn many_names_become_one_describe_all() {
        let brokers = Arc::new(Counting::with(&["t1"]));
        let config = BatchConfig { describe_all_above: 3, ..BatchConfig::default() };
        let b = AdminBatcher::new(brokers.clone(), config);
        let names: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
        let answers = futures::future::join_all(names.iter().map(|n| b.describe(A, n))).await;
        assert_eq!(lock(&brokers.describe_calls).clone(), [Vec::<String>::new()]);
        let found: Vec<bool> = answers.into_iter().map(|a| a.expect("ok").is_some()).collect();
        assert_eq!(found, [false, true, false, false, false], "only the callers' topics, by name");
    }

    #[tokio::test]
    async fn a_full_batch_goes_before_the_window_ends() {
        let brokers = Arc::new(Counting::with(&[]));
        let config = BatchConfig { window: Duration::from_secs(30), max_batch: 4, ..BatchConfig::default() };
        let b = AdminBatcher::new(brokers.clone(), config);
        let names: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
        let all = futures::future::join_all(names.iter().map(|n| b.describe(A, n)));
        let answers = tokio::time::timeout(Duration::from_secs(5), all).await.expect("not the 30 s window");
        assert!(answers.iter().all(|a| matches!(a, Ok(None))));
        assert_eq!(lock(&brokers.describe_calls).len(), 2, "two full batches of 4");
    }

    #[tokio::test]
    async fn a_describe_error_fails_every_caller_of_the_batch() {
        let (brokers, b) = batcher(Counting { down: true, ..Counting::default() }, 20);
        let answers = futures::future::join_all((0..3).map(|i| b.describe(A, ["x", "y", "z"][i]))).await;
        assert_eq!(lock(&brokers.describe_calls).len(), 1);
        for a in answers {
            assert!(matches!(a, Err(AdminError::Unavailable { ref address, .. }) if address == A), "{a:?}");
        }
    }

    #[tokio::test]
    async fn concurrent_creates_share_one_call() {
        let (brokers, b) = batcher(Counting::default(), 20);
        let answers =
            futures::future::join_all((0..5).map(|i| b.create(A, new_topic(&format!("t{i}"), 3)))).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        let calls = lock(&brokers.create_calls).clone();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].len(), 5);
        assert_eq!(lock(&brokers.topics).len(), 5);
    }

    #[tokio::test]
    async fn one_invalid_topic_does_not_block_the_others() {
        let (brokers, b) = batcher(Counting::default(), 20);
        let topics = [new_topic("good-1", 3), new_topic("bad", 0), new_topic("good-2", 1)];
        let answers = futures::future::join_all(topics.iter().map(|t| b.create(A, t.clone()))).await;
        assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
        match &answers[1] {
            Err(AdminError::Refused { message, .. }) => assert!(message.contains("'bad'"), "{message}"),
            other => panic!("the bad topic gets its own error: {other:?}"),
        }
        let topics = lock(&brokers.topics);
        assert!(
            topics.contains_key("good-1") && topics.contains_key("good-2") && !topics.contains_key("bad")
        );
        let calls = lock(&brokers.create_calls).clone();
        assert_eq!(calls.len(), 4, "the batch, then each topic on its own: {calls:?}");
        assert_eq!(calls[0].len(), 3);
    }

    #[tokio::test]
    async fn unreachable_brokers_fail_the_create_batch_without_retrying_each() {
        let (brokers, b) = batcher(Counting { down: true, ..Counting::default() }, 20);
        let answers =
            futures::future::join_all((0..3).map(|i| b.create(A, new_topic(&i.to_string(), 1)))).await;
        assert!(answers.iter().all(|a| matches!(a, Err(AdminError::Unavailable { .. }))), "{answers:?}");
        assert_eq!(lock(&brokers.create_calls).len(), 1);
    }

    #[tokio::test]
    async fn other_calls_go_straight_through() {
        let (brokers, b) = batcher(Counting::default(), 20);
        let grow = AdminCall::CreatePartitions { name: "t".into(), total: 4 };
        let e = b.execute(A, &grow).await.expect_err("the fake refuses direct calls");
        assert!(matches!(e, AdminError::Refused { ref call, .. } if call == "CreatePartitions"));
        b.execute(A, &new_topic("t", 2).to_call()).await.expect("creation is batched");
        assert_eq!(lock(&brokers.create_calls).len(), 1);
    }

    #[tokio::test]
    async fn a_caller_waits_at_most_the_window_and_the_call() {
        let window = Duration::from_millis(300);
        let call = Duration::from_millis(300);
        // Generous for a loaded CI machine, yet below a second window + call.
        let slack = Duration::from_millis(450);
        let brokers = Arc::new(Counting { delay: call, ..Counting::with(&["t"]) });
        let b = AdminBatcher::new(brokers.clone(), BatchConfig { window, ..BatchConfig::default() });
        let timed = |b: AdminBatcher<Counting>, name: &'static str, after: Duration| async move {
            tokio::time::sleep(after).await;
            let start = Instant::now();
            let r = b.describe(A, name).await;
            (r, start.elapsed())
        };
        // The first opens the batch, the second joins it mid-window, the
        // third arrives while the call is in flight and opens the next one.
        // (The third waits for the call to be in flight, not for a time: a
        // stalled runtime could wake it together with the window's timer.)
        let in_flight = async {
            while lock(&brokers.describe_calls).is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let third = async {
            in_flight.await;
            timed(b.clone(), "t", Duration::ZERO).await
        };
        let (first, second, third) =
            futures::join!(timed(b.clone(), "t", Duration::ZERO), timed(b.clone(), "t", window / 4), third,);
        for (r, took) in [first, second, third] {
            assert!(r.expect("described").is_some());
            assert!(took < window + call + slack, "waited {took:?}");
        }
        let calls = lock(&brokers.describe_calls).len();
        assert!(calls >= 2, "the caller arriving during the first call is not in it: {calls} call(s)");
    }
}

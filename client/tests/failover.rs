//! The clients against a scripted two-broker cluster in this process: fake
//! `Log` services on loopback whose leader moves, answer NOT_LEADER (with
//! and without a hint), refuse for too few replicas, or go away entirely.
//! What is checked is what an application relies on across a failover: a
//! record is acknowledged once, at the leader that stored it, by the same
//! batch bytes (so its idempotent sequence is intact), and a consumer reads
//! every record once, in order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tributary_client::tributary_proto::batch::{self, BatchBuilder, Batches, Compression};
use tributary_client::tributary_proto::v1::log_server::{Log, LogServer};
use tributary_client::tributary_proto::v1::{self, ErrorCode};
use tributary_client::{
    Acks, Consumer, ConsumerConfig, OffsetSpec, Producer, ProducerConfig, ProducerRecord,
};

/// What a broker does with the next produce request it gets, before the
/// usual leader check.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// NOT_LEADER without a hint; the leader moves to this broker.
    MoveWithoutHint(i32),
    NotEnoughReplicas,
}

/// The cluster's state, shared by both fake brokers.
#[derive(Default)]
struct World {
    addrs: Mutex<Vec<String>>,
    leader: AtomicI32,
    epoch: AtomicI32,
    /// The partition's batches, offsets assigned.
    log: Mutex<Vec<Bytes>>,
    /// Every produce request's records as received: (broker, bytes).
    seen: Mutex<Vec<(i32, Bytes)>>,
    script: Mutex<VecDeque<(i32, Script)>>,
    metadata_calls: AtomicU32,
    /// Fetches a deposed leader refused.
    fetch_refusals: AtomicU32,
}

impl World {
    fn next_offset(&self) -> i64 {
        self.log.lock().last().and_then(|b| batch::BatchHeader::parse(b).ok()).map_or(0, |h| h.next_offset())
    }

    fn not_leader(&self, hint: Option<i32>) -> v1::PartitionError {
        let addrs = self.addrs.lock();
        let (leader_id, leader_address) = match hint {
            Some(id) => (id, addrs[id as usize].clone()),
            None => (-1, String::new()),
        };
        v1::PartitionError {
            code: ErrorCode::NotLeader as i32,
            message: "not the leader".into(),
            leader_id,
            leader_address,
            leader_epoch: self.epoch.load(Ordering::SeqCst),
        }
    }
}

struct FakeBroker {
    id: i32,
    world: Arc<World>,
}

fn error(code: ErrorCode, message: &str) -> Option<v1::PartitionError> {
    Some(v1::PartitionError { code: code as i32, message: message.into(), ..Default::default() })
}

#[tonic::async_trait]
impl Log for FakeBroker {
    async fn produce(
        &self,
        request: Request<v1::ProduceRequest>,
    ) -> Result<Response<v1::ProduceResponse>, Status> {
        let w = &self.world;
        let data = request.into_inner().topics.remove(0).partitions.remove(0);
        w.seen.lock().push((self.id, data.records.clone()));
        let mut answer = v1::PartitionProduceResponse { partition: 0, base_offset: -1, ..Default::default() };
        let scripted = {
            let mut script = w.script.lock();
            match script.front() {
                Some((broker, _)) if *broker == self.id => script.pop_front().map(|(_, s)| s),
                _ => None,
            }
        };
        match scripted {
            Some(Script::MoveWithoutHint(id)) => {
                w.leader.store(id, Ordering::SeqCst);
                w.epoch.fetch_add(1, Ordering::SeqCst);
                answer.error = Some(w.not_leader(None));
            }
            Some(Script::NotEnoughReplicas) => {
                answer.error = error(ErrorCode::NotEnoughReplicas, "1 in sync, 2 required")
            }
            None if w.leader.load(Ordering::SeqCst) != self.id => {
                answer.error = Some(w.not_leader(Some(w.leader.load(Ordering::SeqCst))))
            }
            None => {
                let mut offsets = Vec::new();
                for b in Batches::new(&data.records) {
                    let (_, slice) = b.map_err(|e| Status::invalid_argument(e.to_string()))?;
                    let base = w.next_offset();
                    let mut stored = slice.to_vec();
                    batch::set_base_offset(&mut stored, base);
                    w.log.lock().push(Bytes::from(stored));
                    offsets.push(base);
                }
                answer.base_offset = offsets.first().copied().unwrap_or(-1);
                answer.batch_base_offsets = offsets;
            }
        }
        Ok(Response::new(v1::ProduceResponse {
            topics: vec![v1::TopicProduceResponse { name: "t".into(), partitions: vec![answer] }],
        }))
    }

    async fn fetch(&self, request: Request<v1::FetchRequest>) -> Result<Response<v1::FetchResponse>, Status> {
        let w = &self.world;
        let want = request.into_inner().partitions.remove(0);
        let mut part = v1::FetchPartitionResponse { topic: "t".into(), partition: 0, ..Default::default() };
        // A fetch sent just before the leader moved arrives just after.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if w.leader.load(Ordering::SeqCst) != self.id {
            // The hint only every other time: both ways must work.
            let refusals = w.fetch_refusals.fetch_add(1, Ordering::SeqCst);
            let hint = refusals.is_multiple_of(2).then(|| w.leader.load(Ordering::SeqCst));
            part.error = Some(w.not_leader(hint));
        } else {
            let log = w.log.lock();
            let records: Vec<u8> = log
                .iter()
                .filter(|b| batch::BatchHeader::parse(b).is_ok_and(|h| h.next_offset() > want.offset))
                .take(2)
                .flat_map(|b| b.to_vec())
                .collect();
            part.records = Bytes::from(records);
            drop(log);
            part.high_watermark = w.next_offset();
        }
        Ok(Response::new(v1::FetchResponse { partitions: vec![part] }))
    }

    async fn list_offsets(
        &self,
        request: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let w = &self.world;
        let asked = request.into_inner().partitions.remove(0);
        let mut part =
            v1::ListOffsetsPartitionResponse { topic: "t".into(), partition: 0, ..Default::default() };
        if w.leader.load(Ordering::SeqCst) != self.id {
            part.error = Some(w.not_leader(Some(w.leader.load(Ordering::SeqCst))));
        } else {
            part.offset = if asked.timestamp == -2 { 0 } else { w.next_offset() };
        }
        Ok(Response::new(v1::ListOffsetsResponse { partitions: vec![part] }))
    }

    async fn metadata(
        &self,
        _: Request<v1::MetadataRequest>,
    ) -> Result<Response<v1::MetadataResponse>, Status> {
        let w = &self.world;
        w.metadata_calls.fetch_add(1, Ordering::SeqCst);
        let brokers = w
            .addrs
            .lock()
            .iter()
            .enumerate()
            .map(|(id, address)| v1::BrokerInfo {
                node_id: id as i32,
                address: address.clone(),
                rack: String::new(),
            })
            .collect();
        let partition = v1::PartitionMetadata {
            partition: 0,
            leader: w.leader.load(Ordering::SeqCst),
            leader_epoch: w.epoch.load(Ordering::SeqCst),
            replicas: vec![0, 1],
            isr: vec![0, 1],
        };
        Ok(Response::new(v1::MetadataResponse {
            brokers,
            controller_id: 0,
            topics: vec![v1::TopicMetadata { name: "t".into(), partitions: vec![partition] }],
            cluster_id: "fake".into(),
            cluster_name: "fake".into(),
        }))
    }

    async fn init_producer_id(
        &self,
        _: Request<v1::InitProducerIdRequest>,
    ) -> Result<Response<v1::InitProducerIdResponse>, Status> {
        Ok(Response::new(v1::InitProducerIdResponse { producer_id: 7, producer_epoch: 0 }))
    }
}

/// Two fake brokers on loopback; dropping a stopper ends that broker.
struct Fake {
    world: Arc<World>,
    addrs: Vec<SocketAddr>,
    stop: Vec<Option<oneshot::Sender<()>>>,
    servers: Vec<Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>>,
}

impl Fake {
    async fn start() -> Fake {
        let world = Arc::new(World::default());
        let mut addrs = Vec::new();
        let mut stop = Vec::new();
        let mut servers = Vec::new();
        for id in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(Some(tx));
            let service = LogServer::new(FakeBroker { id, world: world.clone() });
            servers.push(Some(tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async {
                            let _ = rx.await;
                        },
                    )
                    .await
            })));
        }
        *world.addrs.lock() = addrs.iter().map(|a| a.to_string()).collect();
        Fake { world, addrs, stop, servers }
    }

    /// "addr0,addr1"
    fn bootstrap(&self) -> String {
        self.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Stops broker `id` and waits until it serves nothing more: sending the
    /// stop signal alone leaves a window in which the client's open
    /// connection still reaches the old server (a CI flake: "b" was stored
    /// by the broker that was meant to be dead).
    async fn kill(&mut self, id: usize) {
        if let Some(tx) = self.stop[id].take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.servers[id].take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the fake broker did not stop in 10 s")
                .expect("fake broker task")
                .expect("fake broker");
        }
    }

    fn seen(&self) -> Vec<(i32, Bytes)> {
        self.world.seen.lock().clone()
    }
}

fn producer_config(bootstrap: String) -> ProducerConfig {
    ProducerConfig {
        bootstrap,
        acks: Acks::All,
        linger: Duration::ZERO,
        retry_backoff: Duration::from_millis(20),
        request_timeout: Duration::from_secs(2),
        delivery_timeout: Duration::from_secs(20),
        ..ProducerConfig::default()
    }
}

async fn send(p: &Producer, value: &str) -> tributary_client::Result<i64> {
    let ack = p.send(ProducerRecord::new("t", value.to_string()).partition(0)).await?;
    Ok(tokio::time::timeout(Duration::from_secs(30), ack).await.expect("no answer in 30 s")?.offset)
}

/// (producer id, base sequence) of the batches in `bytes`.
fn stamps(bytes: &Bytes) -> Vec<(i64, i32)> {
    Batches::new(bytes).map(|b| b.map(|(h, _)| (h.producer_id, h.base_sequence)).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_sends_the_same_batch_to_the_new_leader() {
    let f = Fake::start().await;
    let p = Producer::connect(producer_config(f.bootstrap())).await.unwrap();
    assert_eq!(send(&p, "a").await, Ok(0));
    // The leader moves to broker 1; broker 0 says so with a hint.
    f.world.leader.store(1, Ordering::SeqCst);
    f.world.epoch.store(1, Ordering::SeqCst);
    let metadata_before = f.world.metadata_calls.load(Ordering::SeqCst);
    assert_eq!(send(&p, "b").await, Ok(1));
    assert_eq!(
        f.world.metadata_calls.load(Ordering::SeqCst),
        metadata_before,
        "the hint needed no metadata round trip"
    );
    let seen = f.seen();
    let brokers: Vec<i32> = seen.iter().map(|(b, _)| *b).collect();
    assert_eq!(brokers, [0, 0, 1]);
    assert_eq!(seen[1].1, seen[2].1, "the retry is the very same batch bytes");
    assert_eq!(stamps(&seen[2].1), [(7, 1)]);
    // Later records go straight to the new leader.
    assert_eq!(send(&p, "c").await, Ok(2));
    assert_eq!(f.seen().last().map(|(b, _)| *b), Some(1));
    p.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_hint_fresh_metadata_finds_the_new_leader() {
    let f = Fake::start().await;
    let p = Producer::connect(producer_config(f.bootstrap())).await.unwrap();
    assert_eq!(send(&p, "a").await, Ok(0));
    f.world.script.lock().push_back((0, Script::MoveWithoutHint(1)));
    f.world.script.lock().push_back((1, Script::NotEnoughReplicas));
    f.world.script.lock().push_back((1, Script::NotEnoughReplicas));
    assert_eq!(send(&p, "b").await, Ok(1));
    let seen = f.seen();
    assert_eq!(seen.iter().map(|(b, _)| *b).collect::<Vec<_>>(), [0, 0, 1, 1, 1]);
    assert!(seen[1..].iter().all(|(_, bytes)| *bytes == seen[1].1), "every retry sends the same bytes");
    p.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_bootstrap_broker_is_routed_around() {
    let mut f = Fake::start().await;
    let p = Producer::connect(producer_config(f.bootstrap())).await.unwrap();
    assert_eq!(send(&p, "a").await, Ok(0));
    // Broker 0 (the bootstrap broker, and the leader) dies; the controller
    // moves leadership to broker 1 a little later.
    f.kill(0).await;
    let world = f.world.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        world.leader.store(1, Ordering::SeqCst);
        world.epoch.store(1, Ordering::SeqCst);
    });
    assert_eq!(send(&p, "b").await, Ok(1));
    let seen = f.seen();
    assert_eq!(seen.last().map(|(b, _)| *b), Some(1));
    assert_eq!(stamps(&seen.last().unwrap().1), [(7, 1)], "the sequence survived the failover");
    assert_eq!(f.world.log.lock().len(), 2, "stored once");
    // A new client finds the cluster though the first address is dead.
    let again = Producer::connect(producer_config(f.bootstrap())).await.unwrap();
    assert_eq!(send(&again, "c").await, Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_not_retried() {
    let f = Fake::start().await;
    let p = Producer::connect(producer_config(f.bootstrap())).await.unwrap();
    // A partition the topic does not have: fails at once.
    let started = std::time::Instant::now();
    let e = p.send(ProducerRecord::new("t", "x").partition(3)).await.unwrap_err();
    assert!(e.to_string().contains("partition 3"), "{e}");
    let e = p.send(ProducerRecord::new("nope", "x")).await.unwrap_err();
    assert!(e.to_string().contains("unknown topic 'nope'"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn stored_batch(base: i64, values: &[&str]) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None, 1_000);
    for v in values {
        b.append(1_000, None, Some(v.as_bytes()), &[]);
    }
    let mut out = b.build().to_vec();
    batch::set_base_offset(&mut out, base);
    Bytes::from(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_follows_the_leader_without_skipping_or_repeating() {
    let f = Fake::start().await;
    {
        let mut log = f.world.log.lock();
        for base in (0..20).step_by(2) {
            let (a, b) = (format!("v{base}"), format!("v{}", base + 1));
            log.push(stored_batch(base, &[&a, &b]));
        }
    }
    let mut c = Consumer::connect(ConsumerConfig {
        bootstrap: f.bootstrap(),
        max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    })
    .await
    .unwrap();
    c.assign("t", 0, OffsetSpec::Earliest).await.unwrap();
    let mut read = Vec::new();
    let mut moves = 0;
    while read.len() < 20 {
        let records = c.poll(Duration::from_secs(5)).await.unwrap();
        assert!(!records.is_empty(), "no records after {} read", read.len());
        read.extend(
            records
                .iter()
                .map(|r| (r.offset, String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned())),
        );
        // Every answer, the leader moves to the other broker.
        let next = 1 - f.world.leader.load(Ordering::SeqCst);
        f.world.leader.store(next, Ordering::SeqCst);
        f.world.epoch.fetch_add(1, Ordering::SeqCst);
        moves += 1;
    }
    let want: Vec<(i64, String)> = (0..20).map(|o| (o, format!("v{o}"))).collect();
    assert_eq!(read, want);
    assert!(moves >= 5, "the leader moved {moves} times");
    assert!(
        f.world.fetch_refusals.load(Ordering::SeqCst) >= 2,
        "fetches went to deposed leaders (with and without a hint)"
    );
}

//! Issue 7, defect 11: blocking file work never runs on the async workers.
//! With every fsync of one partition delayed 500 ms by the fault layer (and
//! producers driving it, each append rolling a segment, which fsyncs),
//! fetches of another partition, metadata calls and group heartbeats keep a
//! p99 under 50 ms — on a runtime with two workers, like the 2-core machines
//! this runs on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_broker::config::BrokerConfig;
use tributary_broker::log::fault::FaultFs;
use tributary_broker::Broker;
use tributary_proto::batch::{BatchBuilder, Compression};
use tributary_proto::v1::admin_client::AdminClient;
use tributary_proto::v1::group_client::GroupClient;
use tributary_proto::v1::log_client::LogClient;
use tributary_proto::v1::*;

fn batch(value_len: usize) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None, 1_700_000_000_000);
    b.append(1_700_000_000_000, None, Some(&vec![5u8; value_len]), &[]);
    b.build()
}

fn produce(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest {
        acks: 1,
        timeout_ms: 30_000,
        topics: vec![TopicProduceData {
            name: topic.into(),
            partitions: vec![PartitionProduceData { partition: 0, records }],
        }],
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[test]
fn a_slow_disk_on_one_partition_does_not_stall_the_others() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        fs.slow_sync("slow-0", Duration::from_millis(500));
        let config = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            disk_reserve_bytes: 0,
            ..BrokerConfig::default()
        };
        let broker = Broker::start_with_fs(config, Arc::new(fs)).await.unwrap();
        let url = format!("http://{}", broker.grpc_addr());
        let mut admin = AdminClient::connect(url.clone()).await.unwrap();
        let slow_cfg: HashMap<String, String> = [("segment.bytes", "1024"), ("flush.messages", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        admin
            .create_topics(CreateTopicsRequest {
                topics: vec![
                    TopicSpec {
                        name: "slow".into(),
                        partitions: 1,
                        replication_factor: 1,
                        configs: slow_cfg,
                    },
                    TopicSpec {
                        name: "fast".into(),
                        partitions: 1,
                        replication_factor: 1,
                        configs: HashMap::new(),
                    },
                ],
                validate_only: false,
            })
            .await
            .unwrap();
        let mut log = LogClient::connect(url.clone()).await.unwrap();
        log.produce(produce("fast", batch(100))).await.unwrap();

        // Producers on the slow partition: every append rolls (fsync) and
        // every acknowledgement waits for an fsync.
        let stop = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        for _ in 0..4 {
            let (url, stop) = (url.clone(), stop.clone());
            producers.push(tokio::spawn(async move {
                let mut c = LogClient::connect(url).await.unwrap();
                while !stop.load(Ordering::Relaxed) {
                    c.produce(produce("slow", batch(1000))).await.unwrap();
                }
            }));
        }
        let mut group = GroupClient::connect(url.clone()).await.unwrap();
        let joined = group
            .join_group(JoinGroupRequest {
                group_id: "g".into(),
                session_timeout_ms: 30_000,
                rebalance_timeout_ms: 30_000,
                topics: vec!["fast".into()],
                assignor: "range".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        tokio::time::sleep(Duration::from_millis(600)).await;

        let (mut fetches, mut metadata, mut heartbeats) = (Vec::new(), Vec::new(), Vec::new());
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let t = Instant::now();
            let r = log
                .fetch(FetchRequest {
                    max_wait_ms: 0,
                    min_bytes: 0,
                    max_bytes: 1 << 20,
                    partitions: vec![FetchPartition {
                        topic: "fast".into(),
                        partition: 0,
                        offset: 0,
                        max_bytes: 0,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!r.partitions[0].records.is_empty());
            fetches.push(t.elapsed());
            let t = Instant::now();
            log.metadata(MetadataRequest { topics: vec![] }).await.unwrap();
            metadata.push(t.elapsed());
            let t = Instant::now();
            group
                .heartbeat(HeartbeatRequest {
                    group_id: "g".into(),
                    member_id: joined.member_id.clone(),
                    generation: joined.generation,
                    group_instance_id: String::new(),
                })
                .await
                .unwrap();
            heartbeats.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for p in producers {
            let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
        }
        let (f, m, h) = (p99(fetches.clone()), p99(metadata), p99(heartbeats));
        eprintln!(
            "p99 while slow-0 fsyncs take 500 ms: fetch {f:?}, metadata {m:?}, heartbeat {h:?} ({} rounds)",
            fetches.len()
        );
        for (what, d) in [("fetch", f), ("metadata", m), ("heartbeat", h)] {
            assert!(d < Duration::from_millis(50), "{what} p99 {d:?}");
        }
        broker.shutdown().await;
    });
}

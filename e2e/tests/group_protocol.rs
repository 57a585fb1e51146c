//! The group and idempotent-producer protocol, spoken raw over gRPC against a
//! real broker: generations, exclusive assignment, fencing, commits and their
//! validation, persistence across restarts, duplicate and out-of-order
//! batches.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::Channel;
use tonic::Code;
use tributary_e2e::Broker;
use tributary_proto::batch::{BatchBuilder, Compression, ProducerStamp};
use tributary_proto::v1::admin_client::AdminClient;
use tributary_proto::v1::group_client::GroupClient;
use tributary_proto::v1::log_client::LogClient;
use tributary_proto::v1::*;

struct Clients {
    log: LogClient<Channel>,
    admin: AdminClient<Channel>,
    group: GroupClient<Channel>,
}

async fn clients(b: &Broker) -> Clients {
    let ch = Channel::from_shared(format!("http://{}", b.grpc)).unwrap().connect().await.unwrap();
    Clients {
        log: LogClient::new(ch.clone()),
        admin: AdminClient::new(ch.clone()),
        group: GroupClient::new(ch),
    }
}

async fn topic(c: &mut Clients, name: &str, partitions: u32) {
    c.admin
        .create_topics(CreateTopicsRequest {
            topics: vec![TopicSpec {
                name: name.into(),
                partitions,
                replication_factor: 1,
                configs: HashMap::new(),
            }],
            validate_only: false,
        })
        .await
        .unwrap();
}

fn join_req(group: &str, member: &str, assignor: &str, owned: Vec<TopicPartitions>) -> JoinGroupRequest {
    JoinGroupRequest {
        group_id: group.into(),
        member_id: member.into(),
        group_instance_id: String::new(),
        session_timeout_ms: 3000,
        rebalance_timeout_ms: 3000,
        topics: vec!["t".into()],
        assignor: assignor.into(),
        owned,
        client_id: "test".into(),
    }
}

async fn join(c: &mut Clients, req: JoinGroupRequest) -> JoinGroupResponse {
    c.group.join_group(req).await.unwrap().into_inner()
}

async fn sync(c: &mut Clients, group: &str, member: &str, generation: i32) -> SyncGroupResponse {
    c.group
        .sync_group(SyncGroupRequest {
            group_id: group.into(),
            member_id: member.into(),
            generation,
            group_instance_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn heartbeat(c: &mut Clients, group: &str, member: &str, generation: i32) -> Option<i32> {
    let r = c
        .group
        .heartbeat(HeartbeatRequest {
            group_id: group.into(),
            member_id: member.into(),
            generation,
            group_instance_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    r.error.map(|e| e.code)
}

/// Heartbeats `member` until the broker says a rebalance began (another
/// member's JoinGroup reached it), so the rejoin that follows is answered
/// in that rebalance: a fixed sleep instead lets a slow broker take the
/// rejoin first and complete a rebalance of one.
async fn until_rebalancing(c: &mut Clients, group: &str, member: &str, generation: i32) {
    for _ in 0..400 {
        if heartbeat(c, group, member, generation).await == Some(ErrorCode::RebalanceInProgress as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{member} of {group} was never told of a rebalance");
}

fn tps(a: &[TopicPartitions]) -> BTreeSet<(String, u32)> {
    a.iter().flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p))).collect()
}

fn commit(group: &str, member: &str, generation: i32, partition: u32, offset: i64) -> CommitOffsetsRequest {
    CommitOffsetsRequest {
        group_id: group.into(),
        member_id: member.into(),
        generation,
        group_instance_id: String::new(),
        offsets: vec![OffsetEntry { topic: "t".into(), partition, offset, metadata: String::new() }],
    }
}

/// Two members join (the second while the first is Stable): the first learns
/// of the rebalance from its heartbeat, rejoins, and in the new generation
/// the six partitions are split with no overlap; the old generation's
/// commits are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_rebalance_splits_partitions_and_fences_the_old_generation() {
    let b = Broker::start().unwrap();
    let mut c = clients(&b).await;
    topic(&mut c, "t", 6).await;

    let first = join(&mut c, join_req("g", "", "range", vec![])).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    let m1 = first.member_id.clone();
    let gen1 = first.generation;
    let a1 = sync(&mut c, "g", &m1, gen1).await;
    assert_eq!(tps(&a1.assignment).len(), 6);
    c.group.commit_offsets(commit("g", &m1, gen1, 0, 5)).await.unwrap();

    // Member 2 joins; its join waits for member 1 to rejoin.
    let mut c2 = clients(&b).await;
    let second = tokio::spawn(async move { join(&mut c2, join_req("g", "", "range", vec![])).await });
    let mut saw_rebalance = false;
    for _ in 0..50 {
        if heartbeat(&mut c, "g", &m1, gen1).await == Some(ErrorCode::RebalanceInProgress as i32) {
            saw_rebalance = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_rebalance, "member 1 must be told to rejoin");
    let again = join(&mut c, join_req("g", &m1, "range", vec![])).await;
    let second = second.await.unwrap();
    assert_eq!(again.generation, second.generation);
    assert!(again.generation > gen1);
    let gen2 = again.generation;
    let a = tps(&sync(&mut c, "g", &m1, gen2).await.assignment);
    let b2 = tps(&sync(&mut c, "g", &second.member_id, gen2).await.assignment);
    assert_eq!(a.len() + b2.len(), 6);
    assert!(a.is_disjoint(&b2), "a partition has two owners: {a:?} {b2:?}");
    assert_eq!(a.len(), 3);

    // A commit from the old generation is fenced; from the current one, for
    // a partition the member does not own, refused; nothing changes.
    let err = c.group.commit_offsets(commit("g", &m1, gen1, 0, 9)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("generation"), "{}", err.message());
    let not_mine = b2.iter().next().unwrap().1;
    let err = c.group.commit_offsets(commit("g", &m1, gen2, not_mine, 9)).await.unwrap_err();
    assert!(err.message().contains("not assigned"), "{}", err.message());
    let err =
        c.group.commit_offsets(commit("g", &m1, gen2, a.iter().next().unwrap().1, -3)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let offsets = c
        .group
        .fetch_offsets(FetchOffsetsRequest { group_id: "g".into(), partitions: vec![] })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    assert_eq!(offsets.len(), 1);
    assert_eq!((offsets[0].partition, offsets[0].offset), (0, 5));
}

/// Cooperative-sticky: a joining member never receives a partition that the
/// existing member still owns; the existing member keeps the rest, gives up
/// the moved ones, rejoins, and only then are they handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_rebalance_never_hands_out_an_owned_partition() {
    let b = Broker::start().unwrap();
    let mut c = clients(&b).await;
    topic(&mut c, "t", 6).await;
    let cs = "cooperative-sticky";
    let first = join(&mut c, join_req("g", "", cs, vec![])).await;
    let m1 = first.member_id.clone();
    let owned1 = sync(&mut c, "g", &m1, first.generation).await.assignment;
    assert_eq!(tps(&owned1).len(), 6);

    let mut c2 = clients(&b).await;
    let second = tokio::spawn(async move { join(&mut c2, join_req("g", "", cs, vec![])).await });
    until_rebalancing(&mut c, "g", &m1, first.generation).await;
    let r = join(&mut c, join_req("g", &m1, cs, owned1.clone())).await;
    let second = second.await.unwrap();
    let gen = r.generation;
    let keep = tps(&sync(&mut c, "g", &m1, gen).await.assignment);
    let got = tps(&sync(&mut c, "g", &second.member_id, gen).await.assignment);
    // Member 1 still owned everything: member 2 gets nothing yet.
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(keep.len(), 3, "member 1 keeps its share: {keep:?}");

    // While giving up the other three, member 1 may still commit their final
    // positions (nobody else owns them yet)...
    let revoked = tps(&owned1).difference(&keep).next().unwrap().1;
    c.group.commit_offsets(commit("g", &m1, gen, revoked, 1)).await.unwrap();
    // ...but member 2 may not commit what it does not own.
    let err = c.group.commit_offsets(commit("g", &second.member_id, gen, revoked, 1)).await.unwrap_err();
    assert!(err.message().contains("not assigned"), "{}", err.message());

    // Member 1 revokes the other three and rejoins with what it kept.
    let kept: Vec<TopicPartitions> =
        vec![TopicPartitions { topic: "t".into(), partitions: keep.iter().map(|(_, p)| *p).collect() }];
    let mut c2 = clients(&b).await;
    let m2 = second.member_id.clone();
    let rejoin2 = tokio::spawn(async move {
        // Member 2 hears about the new rebalance from its heartbeat.
        for _ in 0..50 {
            let hb = heartbeat(&mut c2, "g", &m2, gen).await;
            if hb == Some(ErrorCode::RebalanceInProgress as i32) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = join(&mut c2, join_req("g", &m2, cs, vec![])).await;
        let a = sync(&mut c2, "g", &m2, r.generation).await.assignment;
        (r.generation, tps(&a))
    });
    let r = join(&mut c, join_req("g", &m1, cs, kept)).await;
    let (gen2, got2) = rejoin2.await.unwrap();
    assert_eq!(r.generation, gen2);
    let keep2 = tps(&sync(&mut c, "g", &m1, gen2).await.assignment);
    assert_eq!(keep2, keep, "sticky: member 1 keeps the same three");
    assert_eq!(got2.len(), 3);
    assert!(keep2.is_disjoint(&got2));
}

/// A member that stops heartbeating is removed after its session timeout and
/// the other takes over all partitions; the group and its committed offsets
/// survive a broker restart, and the generation keeps growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_members_expire_and_groups_survive_restart() {
    let mut b = Broker::start().unwrap();
    let mut c = clients(&b).await;
    topic(&mut c, "t", 4).await;
    let first = join(&mut c, join_req("g", "", "roundrobin", vec![])).await;
    // Stable with member 1 alone, so its heartbeat tells when member 2's
    // join began the next rebalance.
    assert_eq!(tps(&sync(&mut c, "g", &first.member_id, first.generation).await.assignment).len(), 4);
    let mut c2 = clients(&b).await;
    let second = tokio::spawn(async move { join(&mut c2, join_req("g", "", "roundrobin", vec![])).await });
    until_rebalancing(&mut c, "g", &first.member_id, first.generation).await;
    let r = join(&mut c, join_req("g", &first.member_id, "roundrobin", vec![])).await;
    let second = second.await.unwrap();
    let m1 = r.member_id.clone();
    assert_eq!(tps(&sync(&mut c, "g", &m1, r.generation).await.assignment).len(), 2);

    // Member 2 goes silent; member 1 keeps heartbeating.
    let mut gen = r.generation;
    let mut rejoined = false;
    for _ in 0..120 {
        match heartbeat(&mut c, "g", &m1, gen).await {
            Some(code) if code == ErrorCode::RebalanceInProgress as i32 => {
                let r = join(&mut c, join_req("g", &m1, "roundrobin", vec![])).await;
                gen = r.generation;
                rejoined = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(rejoined, "member 2's session must expire within ~3 s");
    let all = tps(&sync(&mut c, "g", &m1, gen).await.assignment);
    assert_eq!(all.len(), 4);
    assert_eq!(heartbeat(&mut c, "g", &second.member_id, gen).await, Some(ErrorCode::UnknownMemberId as i32));
    c.group.commit_offsets(commit("g", &m1, gen, 3, 42)).await.unwrap();

    b.terminate().unwrap();
    b.restart().unwrap();
    let mut c = clients(&b).await;
    let listed = c.group.list_groups(ListGroupsRequest {}).await.unwrap().into_inner().groups;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, "Empty");
    let d = c.group.describe_group(DescribeGroupRequest { group_id: "g".into() }).await.unwrap().into_inner();
    assert_eq!(d.generation, gen);
    let row = d.offsets.iter().find(|o| o.partition == 3).unwrap();
    assert_eq!(row.committed_offset, 42);
    let fresh = join(&mut c, join_req("g", "", "roundrobin", vec![])).await;
    assert!(fresh.generation > gen, "generations never repeat after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_admin_and_bad_input() {
    let b = Broker::start().unwrap();
    let mut c = clients(&b).await;
    topic(&mut c, "t", 2).await;
    let err = c.group.describe_group(DescribeGroupRequest { group_id: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("unknown group 'nope'"));
    let err = c
        .group
        .fetch_offsets(FetchOffsetsRequest { group_id: "nope".into(), partitions: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c.group.commit_offsets(commit("nope", "ghost", 3, 0, 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Standalone commits (no membership) work while the group is empty.
    c.group.commit_offsets(commit("solo", "", -1, 1, 7)).await.unwrap();
    let err = c.group.commit_offsets(commit("solo", "", -1, 9, 7)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "unknown partition");

    // Reset only while empty: to earliest, then to an offset past the end (clamped).
    let log_end = {
        let mut l = c.log.clone();
        let mut b = BatchBuilder::new(Compression::None, 1);
        for _ in 0..10 {
            b.append(1, None, Some(b"x"), &[]);
        }
        l.produce(ProduceRequest {
            acks: 1,
            timeout_ms: 1000,
            topics: vec![TopicProduceData {
                name: "t".into(),
                partitions: vec![PartitionProduceData { partition: 1, records: b.build() }],
            }],
        })
        .await
        .unwrap();
        10
    };
    use reset_offsets_request::To;
    let reset = |to: To, dry_run: bool| ResetOffsetsRequest {
        group_id: "solo".into(),
        topic: "t".into(),
        partitions: vec![1],
        to: Some(to),
        dry_run,
    };
    let r = c.group.reset_offsets(reset(To::Offset(1000), true)).await.unwrap().into_inner();
    assert_eq!(r.offsets[0].offset, log_end);
    let fetched = |c: &mut Clients| {
        let mut g = c.group.clone();
        async move {
            g.fetch_offsets(FetchOffsetsRequest {
                group_id: "solo".into(),
                partitions: vec![TopicPartitions { topic: "t".into(), partitions: vec![1] }],
            })
            .await
            .unwrap()
            .into_inner()
            .offsets[0]
                .offset
        }
    };
    assert_eq!(fetched(&mut c).await, 7, "dry run changes nothing");
    c.group.reset_offsets(reset(To::Earliest(true), false)).await.unwrap();
    assert_eq!(fetched(&mut c).await, 0);

    // With a member in the group: reset, delete and standalone commits refused.
    let m = join(&mut c, join_req("solo", "", "range", vec![])).await;
    let err = c.group.reset_offsets(reset(To::Latest(true), false)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c.group.delete_group(DeleteGroupRequest { group_id: "solo".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c.group.commit_offsets(commit("solo", "", -1, 1, 3)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(fetched(&mut c).await, 0);
    c.group
        .leave_group(LeaveGroupRequest {
            group_id: "solo".into(),
            member_id: m.member_id,
            group_instance_id: String::new(),
        })
        .await
        .unwrap();
    c.group.delete_group(DeleteGroupRequest { group_id: "solo".into() }).await.unwrap();
    assert!(c.group.list_groups(ListGroupsRequest {}).await.unwrap().into_inner().groups.is_empty());

    let mut bad = join_req("x", "", "fastest", vec![]);
    let r = c.group.join_group(bad.clone()).await.unwrap_err();
    assert!(r.message().contains("unknown assignor"), "{}", r.message());
    bad.assignor = "range".into();
    bad.topics.clear();
    assert_eq!(c.group.join_group(bad).await.unwrap_err().code(), Code::InvalidArgument);
}

fn idempotent_batch(pid: i64, epoch: i16, seq: i32, values: &[&str]) -> Bytes {
    let mut b = BatchBuilder::new(Compression::Lz4, 1_700_000_000_000);
    b.set_producer(ProducerStamp { producer_id: pid, producer_epoch: epoch, base_sequence: seq });
    for v in values {
        b.append(1_700_000_000_000, None, Some(v.as_bytes()), &[]);
    }
    b.build()
}

async fn produce_raw(c: &mut Clients, records: Bytes) -> PartitionProduceResponse {
    let r = c
        .log
        .produce(ProduceRequest {
            acks: -1,
            timeout_ms: 1000,
            topics: vec![TopicProduceData {
                name: "t".into(),
                partitions: vec![PartitionProduceData { partition: 0, records }],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    r.topics[0].partitions[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_batches_are_written_once_and_in_sequence() {
    let mut b = Broker::start().unwrap();
    let mut c = clients(&b).await;
    topic(&mut c, "t", 1).await;
    let id = c.log.init_producer_id(InitProducerIdRequest {}).await.unwrap().into_inner();
    let other = c.log.init_producer_id(InitProducerIdRequest {}).await.unwrap().into_inner();
    assert_ne!(id.producer_id, other.producer_id);
    let pid = id.producer_id;

    let first = idempotent_batch(pid, 0, 0, &["a", "b"]);
    let r = produce_raw(&mut c, first.clone()).await;
    assert_eq!(r.base_offset, 0);
    // The same batch again (a retry after a lost answer): same offset, not stored twice.
    let r = produce_raw(&mut c, first.clone()).await;
    assert!(r.error.is_none());
    assert_eq!(r.batch_base_offsets, vec![0]);
    // Next in sequence, then a retry of both together.
    let second = idempotent_batch(pid, 0, 2, &["c"]);
    assert_eq!(produce_raw(&mut c, second.clone()).await.base_offset, 2);
    let mut both = first.to_vec();
    both.extend_from_slice(&second);
    assert_eq!(produce_raw(&mut c, both.into()).await.batch_base_offsets, vec![0, 2]);
    // A gap is refused, per partition, and stores nothing.
    let r = produce_raw(&mut c, idempotent_batch(pid, 0, 9, &["z"])).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::OutOfOrderSequence as i32);

    // Producer state survives kill -9: the retry is still recognised.
    b.kill9().unwrap();
    b.restart().unwrap();
    let mut c = clients(&b).await;
    assert_eq!(produce_raw(&mut c, second.clone()).await.batch_base_offsets, vec![2]);
    // A new epoch fences the old one.
    assert_eq!(produce_raw(&mut c, idempotent_batch(pid, 1, 0, &["n"])).await.base_offset, 3);
    let r = produce_raw(&mut c, idempotent_batch(pid, 0, 3, &["old"])).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidProducerEpoch as i32);
    let end = c
        .log
        .list_offsets(ListOffsetsRequest {
            partitions: vec![ListOffsetsPartition { topic: "t".into(), partition: 0, timestamp: -1 }],
        })
        .await
        .unwrap()
        .into_inner()
        .partitions[0]
        .offset;
    assert_eq!(end, 4, "a, b, c, n: each once");
    // Ids never repeat across restarts.
    let after = c.log.init_producer_id(InitProducerIdRequest {}).await.unwrap().into_inner();
    assert!(after.producer_id > other.producer_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_long_empty_groups_expire_and_internal_names_are_reserved() {
    let b =
        Broker::start_with(&format!("{}offsets_retention_minutes = 0.02\n", tributary_e2e::FAST_MAINTENANCE))
            .unwrap();
    let mut c = clients(&b).await;
    topic(&mut c, "t", 1).await;
    c.group.commit_offsets(commit("brief", "", -1, 0, 1)).await.unwrap();
    let gone = tributary_e2e::eventually(Duration::from_secs(10), || {
        let mut g = c.group.clone();
        async move {
            g.list_groups(ListGroupsRequest {}).await.unwrap().into_inner().groups.is_empty().then_some(())
        }
    })
    .await;
    assert!(gone.is_some(), "an empty group's offsets expire after offsets.retention.minutes");
    let err = c
        .group
        .fetch_offsets(FetchOffsetsRequest { group_id: "brief".into(), partitions: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let err = c
        .admin
        .create_topics(CreateTopicsRequest {
            topics: vec![TopicSpec {
                name: "__consumer_offsets".into(),
                partitions: 1,
                replication_factor: 1,
                configs: HashMap::new(),
            }],
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("reserved"), "{}", err.message());
}

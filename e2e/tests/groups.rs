//! Consumer groups and the idempotent producer through the client library
//! and the CLI, against a real broker: partitions shared exactly once per
//! generation, takeover after kill -9, independent groups, static members,
//! fencing, offsets across a broker restart, refused input, the `group`
//! commands, and a producer retry after a lost answer written once.
//!
//! Group members here use a 3 s session timeout and 300 ms heartbeats so
//! evictions and rebalances happen quickly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::Code;
use tributary_client::tributary_proto::v1::group_client::GroupClient;
use tributary_client::tributary_proto::v1::{CommitOffsetsRequest, OffsetEntry};
use tributary_client::{
    Acks, Admin, Assignor, Consumer, ConsumerConfig, Error, GroupConfig, GroupConsumer, OffsetReset,
    OffsetSpec, Producer, ProducerConfig, ProducerRecord, RebalanceListener, ResetTo, TopicPartition,
};
use tributary_e2e::{bin, Broker};

const SESSION: Duration = Duration::from_secs(3);

fn group_config(b: &Broker, group: &str, assignor: Assignor) -> GroupConfig {
    let mut c = GroupConfig::new(b.bootstrap(), group);
    c.session_timeout = SESSION;
    c.heartbeat_interval = Duration::from_millis(300);
    c.auto_offset_reset = OffsetReset::Earliest;
    c.max_wait = Duration::from_millis(200);
    c.assignor = assignor;
    c
}

async fn create(b: &Broker, topic: &str, partitions: u32) -> Admin {
    let admin = Admin::connect(&b.bootstrap()).await.expect("admin connects");
    admin.create_topic(topic, partitions, 1, BTreeMap::new()).await.expect("topic created");
    admin
}

/// `per_partition` records into each partition, values `tag-p-i`.
async fn produce(b: &Broker, topic: &str, partitions: u32, per_partition: u32, tag: &str) {
    let p =
        Producer::connect(ProducerConfig { bootstrap: b.bootstrap(), acks: Acks::All, ..Default::default() })
            .await
            .expect("producer connects");
    let mut acks = Vec::new();
    for i in 0..per_partition {
        for part in 0..partitions {
            let r = ProducerRecord::new(topic, format!("{tag}-{part}-{i}")).partition(part);
            acks.push(p.send(r).await.expect("buffered"));
        }
    }
    for a in acks {
        a.await.expect("acknowledged");
    }
    p.close().await.expect("producer closes");
}

/// Polls `check` every 50 ms for up to `secs` seconds.
async fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What in-process members saw.
#[derive(Default)]
struct Seen {
    /// (member, generation, partition, offset) per record, in poll order.
    records: Vec<(usize, i32, u32, i64)>,
    /// generation → member → partitions it held in that generation.
    assignments: BTreeMap<i32, BTreeMap<usize, BTreeSet<u32>>>,
    /// A member reported two different assignments for one generation.
    inconsistent: Vec<String>,
}

impl Seen {
    fn count(&self) -> usize {
        self.records.len()
    }

    /// Members that hold partitions together in one generation.
    fn generation_with(&self, members: &[usize]) -> Option<i32> {
        self.assignments.iter().rev().find_map(|(g, by_member)| {
            let all = members.iter().all(|m| by_member.get(m).is_some_and(|a| !a.is_empty()));
            all.then_some(*g)
        })
    }
}

/// A group member polling on its own task until stopped.
struct Member {
    stop: Arc<AtomicBool>,
    task: JoinHandle<GroupConsumer>,
}

fn spawn_member(id: usize, mut consumer: GroupConsumer, seen: Arc<Mutex<Seen>>) -> Member {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let task = tokio::spawn(async move {
        while !stopping.load(Ordering::Relaxed) {
            let records = consumer.poll(Duration::from_millis(100)).await.expect("poll");
            let generation = consumer.generation();
            let assignment: BTreeSet<u32> =
                consumer.assignment().into_iter().map(|tp| tp.partition).collect();
            let mut s = seen.lock().unwrap();
            // Eager members hold nothing between revoking and the next
            // generation; only what a member holds counts.
            if generation >= 0 && !assignment.is_empty() {
                let slot = s.assignments.entry(generation).or_default();
                match slot.get(&id) {
                    Some(before) if *before != assignment => {
                        let note = format!("member {id} gen {generation}: {before:?} then {assignment:?}");
                        s.inconsistent.push(note);
                    }
                    Some(_) => {}
                    None => {
                        slot.insert(id, assignment);
                    }
                }
            }
            for r in records {
                s.records.push((id, generation, r.partition, r.offset));
            }
        }
        consumer
    });
    Member { stop, task }
}

impl Member {
    async fn close(self) {
        self.stop.store(true, Ordering::Relaxed);
        let consumer = self.task.await.expect("member task");
        consumer.close().await.expect("close");
    }
}

/// Two, then three members over six partitions: in every generation no
/// partition has two owners, each record comes from the partition's owner
/// of that generation, and (commits made before each rebalance) no record
/// is delivered twice or missed.
async fn members_share_partitions(assignor: Assignor) {
    let b = Broker::start().unwrap();
    let topic = "shared";
    create(&b, topic, 6).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let config = group_config(&b, "sharers", assignor);
    produce(&b, topic, 6, 50, "a").await;

    let mut members = Vec::new();
    for (id, total) in [(0usize, 300usize), (1, 600), (2, 900)] {
        let mut c = GroupConsumer::connect(config.clone()).await.unwrap();
        c.subscribe(&[topic]).await.unwrap();
        members.push(spawn_member(id, c, seen.clone()));
        let ids: Vec<usize> = (0..=id).collect();
        wait_for(15, "every member to hold partitions in one generation", || {
            seen.lock().unwrap().generation_with(&ids).is_some()
        })
        .await;
        if id > 0 {
            produce(&b, topic, 6, 50, &format!("m{id}")).await;
        }
        wait_for(15, &format!("{total} records"), || seen.lock().unwrap().count() >= total).await;
    }
    // Let late duplicates, if any, show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in members {
        m.close().await;
    }

    let s = seen.lock().unwrap();
    assert!(s.inconsistent.is_empty(), "{:?}", s.inconsistent);
    for (g, by_member) in &s.assignments {
        let mut owners: HashMap<u32, usize> = HashMap::new();
        for (m, parts) in by_member {
            for p in parts {
                if let Some(other) = owners.insert(*p, *m) {
                    panic!("generation {g}: partition {p} owned by members {other} and {m}: {by_member:?}");
                }
            }
        }
    }
    for (m, g, p, o) in &s.records {
        let held = s.assignments.get(g).and_then(|a| a.get(m));
        assert!(
            held.is_some_and(|h| h.contains(p)),
            "member {m} read {p}@{o} in generation {g} without owning it"
        );
    }
    let mut delivered: HashMap<(u32, i64), usize> = HashMap::new();
    for (_, _, p, o) in &s.records {
        *delivered.entry((*p, *o)).or_default() += 1;
    }
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    for p in 0..6u32 {
        for o in 0..150i64 {
            assert!(delivered.contains_key(&(p, o)), "{p}@{o} never delivered");
        }
    }
    // The third member did get work, and the group moved through several
    // generations to give it.
    assert!(s.records.iter().any(|r| r.0 == 2), "the third member read nothing");
    assert!(s.assignments.len() >= 3, "{:?}", s.assignments.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_members_share_partitions_exactly_once() {
    members_share_partitions(Assignor::Range).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cooperative_members_share_partitions_exactly_once() {
    members_share_partitions(Assignor::CooperativeSticky).await;
}

/// A `tributary consume --group` child process whose printed records are
/// collected as (partition, offset).
struct CliMember {
    child: Child,
    lines: Arc<Mutex<Vec<(u32, i64)>>>,
}

impl CliMember {
    fn start(b: &Broker, topic: &str, group: &str) -> CliMember {
        let mut child = Command::new(bin("tributary"))
            .args(["--bootstrap", &b.bootstrap(), "consume", topic, "--group", group])
            .args(["--from-beginning", "--print-offset", "--session-timeout-ms", "3000"])
            .args(["--heartbeat-interval-ms", "300", "--auto-commit-interval-ms", "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tributary consume starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let parsed = line.split('\t').next().and_then(|po| {
                    let (p, o) = po.split_once(':')?;
                    Some((p.parse().ok()?, o.parse().ok()?))
                });
                if let Some(po) = parsed {
                    sink.lock().unwrap().push(po);
                }
            }
        });
        CliMember { child, lines }
    }

    fn printed(&self) -> Vec<(u32, i64)> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for CliMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_member_partitions_move_within_the_session_timeout() {
    let b = Broker::start().unwrap();
    let (topic, group) = ("work", "workers");
    let admin = create(&b, topic, 6).await;
    let mut members: Vec<CliMember> = (0..3).map(|_| CliMember::start(&b, topic, group)).collect();
    let stable = |want: usize| {
        let admin = admin.clone();
        async move {
            let d = admin.describe_group(group).await.ok()?;
            let owned: usize = d.members.iter().flat_map(|m| &m.assignment).map(|t| t.partitions.len()).sum();
            (d.state == "Stable" && d.members.len() == want && owned == 6).then_some(d)
        }
    };
    let d =
        tributary_e2e::eventually(Duration::from_secs(15), || stable(3)).await.expect("3 members, stable");
    assert!(d.members.iter().all(|m| m.assignment.iter().map(|t| t.partitions.len()).sum::<usize>() == 2));

    produce(&b, topic, 6, 100, "first").await;
    wait_for(15, "600 records printed", || members.iter().map(|m| m.printed().len()).sum::<usize>() >= 600)
        .await;
    let all_committed = || {
        let admin = admin.clone();
        async move {
            let offsets = admin.fetch_offsets(group).await.ok()?;
            (offsets.len() == 6 && offsets.iter().all(|e| e.offset == 100)).then_some(())
        }
    };
    tributary_e2e::eventually(Duration::from_secs(10), all_committed).await.expect("everything committed");
    let victim_parts: BTreeSet<u32> = members[0].printed().iter().map(|(p, _)| *p).collect();
    assert_eq!(victim_parts.len(), 2, "{victim_parts:?}");

    // kill -9: no leave, no last commit; only the session timeout tells.
    let killed_at = Instant::now();
    members[0].child.kill().unwrap();
    members[0].child.wait().unwrap();
    let before: Vec<usize> = members.iter().map(|m| m.printed().len()).collect();
    tributary_e2e::eventually(Duration::from_secs(15), || stable(2)).await.expect("2 members own everything");
    let takeover = killed_at.elapsed();
    println!("takeover after {takeover:?}");
    // The session timeout plus a rebalance of two CLI processes on a busy
    // machine; what this guards against is a takeover that waits for the
    // rebalance or poll timeouts (minutes).
    assert!(takeover <= SESSION * 3, "takeover took {takeover:?}");

    produce(&b, topic, 6, 100, "second").await;
    wait_for(15, "600 more records printed", || {
        members[1..].iter().zip(&before[1..]).map(|(m, n)| m.printed().len() - n).sum::<usize>() >= 600
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut after: Vec<(u32, i64)> = Vec::new();
    for (m, n) in members[1..].iter().zip(&before[1..]) {
        after.extend_from_slice(&m.printed()[*n..]);
    }
    let unique: BTreeSet<(u32, i64)> = after.iter().copied().collect();
    assert_eq!(unique.len(), after.len(), "a record was printed twice after the takeover");
    let expected: BTreeSet<(u32, i64)> = (0..6u32).flat_map(|p| (100..200i64).map(move |o| (p, o))).collect();
    assert_eq!(unique, expected, "committed records came back, or new ones are missing");
    // The victim's partitions went to the survivors.
    for p in victim_parts {
        assert!(after.iter().any(|(q, _)| *q == p), "partition {p} of the killed member was not taken over");
    }
    members.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_see_every_record_and_patterns_follow_new_topics() {
    let b = Broker::start().unwrap();
    let admin = create(&b, "fan-a", 3).await;
    produce(&b, "fan-a", 3, 30, "a").await;
    let mut by_name =
        GroupConsumer::connect(group_config(&b, "by-name", Assignor::RoundRobin)).await.unwrap();
    by_name.subscribe(&["fan-a"]).await.unwrap();
    let mut by_pattern =
        GroupConsumer::connect(group_config(&b, "by-pattern", Assignor::Range)).await.unwrap();
    by_pattern.subscribe_pattern("fan-.*").await.unwrap();

    let mut got: [BTreeSet<(String, u32, i64)>; 2] = Default::default();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.iter().any(|g| g.len() < 90) && Instant::now() < deadline {
        for (c, seen) in [&mut by_name, &mut by_pattern].into_iter().zip(got.iter_mut()) {
            for r in c.poll(Duration::from_millis(100)).await.unwrap() {
                assert!(seen.insert((r.topic, r.partition, r.offset)), "duplicate in one group");
            }
        }
    }
    assert_eq!(got[0].len(), 90);
    assert_eq!(got[0], got[1], "both groups read every record");

    // A new topic that matches the pattern is picked up at the next re-check.
    admin.create_topic("fan-b", 1, 1, BTreeMap::new()).await.unwrap();
    produce(&b, "fan-b", 1, 10, "b").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut new_ones = 0;
    while new_ones < 10 && Instant::now() < deadline {
        for r in by_pattern.poll(Duration::from_millis(100)).await.unwrap() {
            assert_eq!(r.topic, "fan-b");
            new_ones += 1;
        }
        assert!(by_name.poll(Duration::from_millis(10)).await.unwrap().is_empty(), "by-name read fan-b");
    }
    assert_eq!(new_ones, 10);
    assert!(by_pattern.assignment().contains(&TopicPartition::new("fan-b", 0)));
    by_name.close().await.unwrap();
    by_pattern.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn static_member_restarts_without_a_rebalance_and_a_duplicate_is_fenced() {
    let b = Broker::start().unwrap();
    let admin = create(&b, "static", 4).await;
    let config = |instance: &str| {
        let mut c = group_config(&b, "statics", Assignor::Range);
        c.group_instance_id = Some(instance.to_string());
        c
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut other = GroupConsumer::connect(config("s-b")).await.unwrap();
    other.subscribe(&["static"]).await.unwrap();
    let other = spawn_member(1, other, seen.clone());

    let mut first = GroupConsumer::connect(config("s-a")).await.unwrap();
    first.subscribe(&["static"]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let generation = loop {
        first.poll(Duration::from_millis(100)).await.unwrap();
        let g = first.generation();
        let together = seen
            .lock()
            .unwrap()
            .assignments
            .get(&g)
            .is_some_and(|a| a.get(&1).is_some_and(|p| !p.is_empty()));
        if g >= 0 && together && first.assignment().len() == 2 {
            break g;
        }
        assert!(Instant::now() < deadline, "the two static members never shared the topic");
    };
    let before = first.assignment();
    first.close().await.unwrap();

    let mut again = GroupConsumer::connect(config("s-a")).await.unwrap();
    again.subscribe(&["static"]).await.unwrap();
    let back_at = Instant::now();
    while again.assignment().is_empty() {
        again.poll(Duration::from_millis(100)).await.unwrap();
        assert!(back_at.elapsed() < SESSION, "the restarted static member did not get its partitions back");
    }
    assert_eq!(again.generation(), generation, "a restart within the session timeout must not rebalance");
    assert_eq!(again.assignment(), before);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let d = admin.describe_group("statics").await.unwrap();
    assert_eq!((d.state.as_str(), d.generation), ("Stable", generation));
    assert_eq!(
        *seen.lock().unwrap().assignments.keys().last().unwrap(),
        generation,
        "the other member rebalanced"
    );

    // A second process with the same instance id takes over; the one it
    // replaced is fenced and says so.
    let mut usurper = GroupConsumer::connect(config("s-a")).await.unwrap();
    usurper.subscribe(&["static"]).await.unwrap();
    while usurper.assignment().is_empty() {
        usurper.poll(Duration::from_millis(100)).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let fenced = loop {
        match again.poll(Duration::from_millis(100)).await {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "the replaced static member was never fenced"),
        }
    };
    assert!(matches!(fenced, Error::Fenced(_)), "{fenced:?}");
    assert!(fenced.to_string().contains("instance id 's-a'"), "{fenced}");
    assert!(matches!(again.poll(Duration::from_millis(10)).await, Err(Error::Fenced(_))), "fencing is final");
    other.close().await;
}

fn offsets(entries: &[OffsetEntry]) -> Vec<(u32, i64)> {
    entries.iter().map(|e| (e.partition, e.offset)).collect()
}

async fn group_client(b: &Broker) -> GroupClient<tonic::transport::Channel> {
    GroupClient::connect(format!("http://{}", b.grpc)).await.unwrap()
}

fn commit_request(
    group: &str,
    member: &str,
    generation: i32,
    partition: u32,
    offset: i64,
) -> CommitOffsetsRequest {
    CommitOffsetsRequest {
        group_id: group.into(),
        member_id: member.into(),
        generation,
        group_instance_id: String::new(),
        offsets: vec![OffsetEntry { topic: "zombie".into(), partition, offset, metadata: String::new() }],
    }
}

/// Polls both until they hold a partition each in the same generation.
async fn settle(a: &mut GroupConsumer, b: &mut GroupConsumer) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        a.poll(Duration::from_millis(50)).await.unwrap();
        b.poll(Duration::from_millis(50)).await.unwrap();
        if a.generation() == b.generation() && !a.assignment().is_empty() && !b.assignment().is_empty() {
            return a.generation();
        }
        assert!(Instant::now() < deadline, "the two members never settled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_from_an_old_generation_is_rejected() {
    let b = Broker::start().unwrap();
    let admin = create(&b, "zombie", 2).await;
    produce(&b, "zombie", 2, 10, "z").await;
    let mut config = group_config(&b, "zombies", Assignor::Range);
    config.auto_commit = false;
    let mut first = GroupConsumer::connect(config.clone()).await.unwrap();
    first.subscribe(&["zombie"]).await.unwrap();
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while read < 20 {
        read += first.poll(Duration::from_millis(100)).await.unwrap().len();
        assert!(Instant::now() < deadline, "read {read} of 20");
    }
    first.commit_sync().await.unwrap();
    let old_generation = first.generation();
    let member = first.member_id().unwrap().to_string();
    assert_eq!(offsets(&admin.fetch_offsets("zombies").await.unwrap()), vec![(0, 10), (1, 10)]);

    let mut second = GroupConsumer::connect(config).await.unwrap();
    second.subscribe(&["zombie"]).await.unwrap();
    let generation = settle(&mut first, &mut second).await;
    assert!(generation > old_generation);
    let owned = first.assignment()[0].partition;

    // What a member that missed the rebalance would send.
    let mut raw = group_client(&b).await;
    let err =
        raw.commit_offsets(commit_request("zombies", &member, old_generation, owned, 3)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("generation"), "{}", err.message());
    assert_eq!(offsets(&admin.fetch_offsets("zombies").await.unwrap()), vec![(0, 10), (1, 10)]);
    // The same member in its current generation may.
    raw.commit_offsets(commit_request("zombies", &member, generation, owned, 4)).await.unwrap();
    let now = offsets(&admin.fetch_offsets("zombies").await.unwrap());
    assert!(now.contains(&(owned, 4)), "{now:?}");
    first.close().await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_offsets_survive_a_broker_restart() {
    let mut b = Broker::start().unwrap();
    create(&b, "kept", 2).await;
    produce(&b, "kept", 2, 20, "old").await;
    let config = group_config(&b, "keepers", Assignor::Range);
    let mut c = GroupConsumer::connect(config.clone()).await.unwrap();
    c.subscribe(&["kept"]).await.unwrap();
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while read < 40 {
        read += c.poll(Duration::from_millis(100)).await.unwrap().len();
        assert!(Instant::now() < deadline, "read {read} of 40");
    }
    c.commit_sync().await.unwrap();
    let generation = c.generation();
    c.close().await.unwrap();

    b.terminate().unwrap();
    b.restart().unwrap();
    let admin = Admin::connect(&b.bootstrap()).await.unwrap();
    let listed = admin.list_groups().await.unwrap();
    assert!(listed.iter().any(|g| g.group_id == "keepers" && g.state == "Empty"), "{listed:?}");
    assert_eq!(offsets(&admin.fetch_offsets("keepers").await.unwrap()), vec![(0, 20), (1, 20)]);
    assert!(admin.describe_group("keepers").await.unwrap().generation >= generation);

    // A member after the restart goes on from the committed offsets.
    produce(&b, "kept", 2, 2, "new").await;
    let mut c = GroupConsumer::connect(config).await.unwrap();
    c.subscribe(&["kept"]).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 4 && Instant::now() < deadline {
        got.extend(
            c.poll(Duration::from_millis(100)).await.unwrap().into_iter().map(|r| (r.partition, r.offset)),
        );
    }
    got.sort();
    assert_eq!(got, vec![(0, 20), (0, 21), (1, 20), (1, 21)]);
    c.close().await.unwrap();
}

fn status(e: Error) -> (Code, String) {
    match e {
        Error::Status { code, message } => (code, message),
        other => panic!("expected a broker status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_input_is_refused_and_changes_nothing() {
    let b = Broker::start().unwrap();
    let admin = create(&b, "zombie", 2).await;
    for (what, e) in [
        ("describe", admin.describe_group("nope").await.map(|_| ()).unwrap_err()),
        ("fetch", admin.fetch_offsets("nope").await.map(|_| ()).unwrap_err()),
        ("delete", admin.delete_group("nope").await.unwrap_err()),
        (
            "reset",
            admin.reset_offsets("nope", "zombie", ResetTo::Earliest, false).await.map(|_| ()).unwrap_err(),
        ),
    ] {
        let (code, message) = status(e);
        assert_eq!(code, Code::NotFound, "{what}: {message}");
        assert!(message.contains("nope"), "{what}: {message}");
    }

    produce(&b, "zombie", 2, 5, "x").await;
    let mut config = group_config(&b, "busy", Assignor::Range);
    config.auto_commit = false;
    let mut first = GroupConsumer::connect(config.clone()).await.unwrap();
    first.subscribe(&["zombie"]).await.unwrap();
    let mut second = GroupConsumer::connect(config.clone()).await.unwrap();
    second.subscribe(&["zombie"]).await.unwrap();
    let generation = settle(&mut first, &mut second).await;
    let mine = first.assignment()[0].clone();
    let theirs = second.assignment()[0].clone();
    first.commit(&[(mine.clone(), 2)]).await.unwrap();
    second.commit(&[(theirs.clone(), 3)]).await.unwrap();
    let committed = offsets(&admin.fetch_offsets("busy").await.unwrap());
    assert_eq!(committed.len(), 2);

    // Negative offsets: caught by the client, and by the broker.
    let e = first.commit(&[(mine.clone(), -1)]).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("negative"), "{e}");
    let mut raw = group_client(&b).await;
    let member = first.member_id().unwrap().to_string();
    let err = raw
        .commit_offsets(commit_request("busy", &member, generation, mine.partition, -5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("negative"), "{}", err.message());
    // A partition another member owns.
    let (code, message) = status(first.commit(&[(theirs.clone(), 1)]).await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("not assigned"), "{message}");
    // A commit from outside the membership while members are active.
    let err = raw.commit_offsets(commit_request("busy", "", -1, mine.partition, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    // Resetting or deleting a group with members.
    let (code, message) =
        status(admin.reset_offsets("busy", "zombie", ResetTo::Earliest, false).await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    let (code, message) = status(admin.delete_group("busy").await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert_eq!(
        offsets(&admin.fetch_offsets("busy").await.unwrap()),
        committed,
        "a refused call changed offsets"
    );

    // Mistakes the client catches before asking.
    let e = GroupConsumer::connect(GroupConfig::new(b.bootstrap(), " ")).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let mut c = GroupConsumer::connect(config).await.unwrap();
    assert!(matches!(c.poll(Duration::from_millis(10)).await, Err(Error::InvalidArgument(_))));
    let (code, message) = status(c.subscribe(&["missing"]).await.unwrap_err());
    assert_eq!(code, Code::NotFound);
    assert!(message.contains("unknown topic 'missing'"), "{message}");
    let e = c.subscribe_pattern("zom(").await.unwrap_err();
    assert!(e.to_string().contains("invalid topic pattern"), "{e}");
    first.close().await.unwrap();
    second.close().await.unwrap();
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn one_line_error(out: std::process::Output) -> String {
    assert!(!out.status.success(), "should have failed: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "error must be one line: {err}");
    err
}

/// The row of `topic`/`partition` in `group describe` output, split.
fn lag_row(described: &str, topic: &str, partition: u32) -> Vec<String> {
    described
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cells| cells.len() >= 3 && cells[0] == topic && cells[1] == partition.to_string())
        .unwrap_or_else(|| panic!("no row for {topic}-{partition} in:\n{described}"))
}

#[test]
fn cli_group_commands() {
    let b = Broker::start().unwrap();
    ok(b.cli(&["topic", "create", "lines", "--partitions", "1"], "").unwrap());
    let input: String = (0..10).map(|i| format!("v{i}\n")).collect();
    ok(b.cli(&["produce", "lines"], &input).unwrap());
    let consume = |n: &str| {
        ok(b.cli(&["consume", "lines", "--group", "cg", "--from-beginning", "--max-messages", n], "")
            .unwrap())
    };

    assert_eq!(consume("4"), "v0\nv1\nv2\nv3\n");
    let listed = ok(b.cli(&["group", "list"], "").unwrap());
    assert!(
        listed.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["cg", "Empty", "0"]),
        "{listed}"
    );
    let described = ok(b.cli(&["group", "describe", "cg"], "").unwrap());
    assert!(described.contains("Group: cg\nState: Empty\n"), "{described}");
    assert_eq!(lag_row(&described, "lines", 0)[2..5], ["4", "10", "6"], "{described}");
    // The next member goes on where the last one committed.
    assert_eq!(consume("3"), "v4\nv5\nv6\n");

    let dry = ok(b
        .cli(&["group", "reset-offsets", "cg", "--topic", "lines", "--to-earliest", "--dry-run"], "")
        .unwrap());
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(lag_row(&dry, "lines", 0)[2], "0", "{dry}");
    let described = ok(b.cli(&["group", "describe", "cg"], "").unwrap());
    assert_eq!(lag_row(&described, "lines", 0)[2], "7", "a dry run changed the offset: {described}");
    ok(b.cli(&["group", "reset-offsets", "cg", "--topic", "lines", "--to-offset", "2"], "").unwrap());
    assert_eq!(consume("2"), "v2\nv3\n");
    ok(b.cli(&["group", "reset-offsets", "cg", "--topic", "lines", "--to-latest"], "").unwrap());
    assert_eq!(lag_row(&ok(b.cli(&["group", "describe", "cg"], "").unwrap()), "lines", 0)[2], "10");
    ok(b.cli(
        &["group", "reset-offsets", "cg", "--topic", "lines", "--to-datetime", "2000-01-01T00:00:00Z"],
        "",
    )
    .unwrap());
    assert_eq!(lag_row(&ok(b.cli(&["group", "describe", "cg"], "").unwrap()), "lines", 0)[2], "0");
    let out =
        b.cli(&["group", "reset-offsets", "cg", "--topic", "lines", "--to-datetime", "soon"], "").unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));

    // Two members of a bench group read the topic between them.
    let out = ok(b
        .cli(
            &["bench", "consume", "--topic", "lines", "--records", "10", "--group", "bg", "--consumers", "2"],
            "",
        )
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["records"], 10, "{out}");
    assert_eq!(v["bytes"], 20, "{out}");

    assert_eq!(ok(b.cli(&["group", "delete", "cg"], "").unwrap()), "deleted group cg\n");
    let listed = ok(b.cli(&["group", "list"], "").unwrap());
    assert!(!listed.lines().any(|l| l.starts_with("cg ")), "{listed}");
    let err = one_line_error(b.cli(&["group", "describe", "cg"], "").unwrap());
    assert!(err.contains("cg"), "{err}");
}

/// A TCP proxy that, when armed, swallows what the broker sends next (and
/// everything after it) until released, then closes both sides: an answer
/// lost after the broker did the work.
struct Proxy {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    cutting: Arc<AtomicBool>,
    release: Arc<Notify>,
    cuts: Arc<AtomicUsize>,
}

async fn proxy(upstream: SocketAddr) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = Proxy {
        addr: listener.local_addr().unwrap(),
        armed: Arc::new(AtomicBool::new(false)),
        cutting: Arc::new(AtomicBool::new(false)),
        release: Arc::new(Notify::new()),
        cuts: Arc::new(AtomicUsize::new(0)),
    };
    let (armed, cutting, release, cuts) =
        (p.armed.clone(), p.cutting.clone(), p.release.clone(), p.cuts.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(broker) = tokio::net::TcpStream::connect(upstream).await else { continue };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_broker, mut to_broker) = broker.into_split();
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_broker).await;
            });
            let (armed, cutting, release, cuts) =
                (armed.clone(), cutting.clone(), release.clone(), cuts.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match from_broker.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if armed.swap(false, Ordering::SeqCst) {
                        cutting.store(true, Ordering::SeqCst);
                        let drain = async {
                            while let Ok(n) = from_broker.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        };
                        tokio::select! {
                            _ = drain => {}
                            _ = release.notified() => {}
                            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                        }
                        cuts.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                // Dropping the halves closes both connections.
                up.abort();
            });
        }
    });
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_answer_is_written_once() {
    let b = Broker::start().unwrap();
    let admin = create(&b, "retried", 1).await;
    let p = proxy(b.grpc).await;
    let producer = Producer::connect(ProducerConfig {
        bootstrap: p.addr.to_string(),
        acks: Acks::All,
        linger: Duration::ZERO,
        retries: 5,
        retry_backoff: Duration::from_millis(100),
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = producer.send(ProducerRecord::new("retried", "first")).await.unwrap().await.unwrap();
    assert_eq!(first.offset, 0);

    p.armed.store(true, Ordering::SeqCst);
    let sending = tokio::spawn({
        let producer = producer.clone();
        async move { producer.send(ProducerRecord::new("retried", "second")).await.unwrap().await }
    });
    wait_for(10, "the proxy to swallow the answer", || p.cutting.load(Ordering::SeqCst)).await;
    // The broker stored the record; only its answer is lost.
    let stored = tributary_e2e::eventually(Duration::from_secs(5), || async {
        (admin.list_offsets("retried", 0, OffsetSpec::Latest).await.ok()? == 2).then_some(())
    })
    .await;
    assert!(stored.is_some(), "the broker never appended the second record");
    p.release.notify_one();
    let second = tokio::time::timeout(Duration::from_secs(15), sending).await.unwrap().unwrap().unwrap();
    assert_eq!(p.cuts.load(Ordering::SeqCst), 1);
    assert_eq!(second.offset, 1, "the retry was written again instead of recognised");
    let third = producer.send(ProducerRecord::new("retried", "third")).await.unwrap().await.unwrap();
    assert_eq!(third.offset, 2);
    producer.close().await.unwrap();

    let values: Vec<_> = tributary_e2e::read_to_end(&b.bootstrap(), "retried", 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.value.unwrap()).into_owned())
        .collect();
    assert_eq!(values, ["first", "second", "third"]);
}

/// A batch the broker refuses stores nothing, so its sequence numbers are
/// given back: the batches after it (re-stamped) and a split of it are
/// accepted, with no gap for the broker to call out of sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_give_their_sequence_numbers_back() {
    let b = Broker::start().unwrap();
    let admin = Admin::connect(&b.bootstrap()).await.unwrap();
    let configs: BTreeMap<String, String> = [("max.message.bytes".to_string(), "300".to_string())].into();
    admin.create_topic("small", 1, 1, configs).await.unwrap();
    let producer = Producer::connect(ProducerConfig {
        bootstrap: b.bootstrap(),
        linger: Duration::from_millis(50),
        batch_size: 120,
        ..Default::default()
    })
    .await
    .unwrap();
    let big = "x".repeat(400);
    let mut sent = Vec::new();
    for i in 0..40 {
        let value = if i == 17 { big.clone() } else { format!("ok-{i}") };
        sent.push((value.clone(), producer.send(ProducerRecord::new("small", value)).await.unwrap()));
    }
    let mut stored = Vec::new();
    for (value, ack) in sent {
        match ack.await {
            Ok(meta) => stored.push((meta.offset, value)),
            Err(e) => {
                assert_eq!(value, big, "{e}");
                assert!(e.to_string().contains("max.message.bytes"), "{e}");
            }
        }
    }
    assert_eq!(stored.len(), 39);
    let after = producer.send(ProducerRecord::new("small", "after")).await.unwrap().await.unwrap();
    assert_eq!(after.offset, 39);
    producer.close().await.unwrap();
    stored.push((39, "after".to_string()));

    // One batch holding the large record and small ones: re-sent split,
    // the small ones stamped where the refused batch started.
    let producer = Producer::connect(ProducerConfig {
        bootstrap: b.bootstrap(),
        linger: Duration::from_millis(50),
        ..Default::default()
    })
    .await
    .unwrap();
    let acks = [
        producer.send(ProducerRecord::new("small", "split-a")).await.unwrap(),
        producer.send(ProducerRecord::new("small", big.clone())).await.unwrap(),
        producer.send(ProducerRecord::new("small", "split-b")).await.unwrap(),
    ];
    let [a, too_big, c] = acks;
    assert_eq!(a.await.unwrap().offset, 40);
    assert!(too_big.await.unwrap_err().to_string().contains("max.message.bytes"));
    assert_eq!(c.await.unwrap().offset, 41);
    let last = producer.send(ProducerRecord::new("small", "last")).await.unwrap().await.unwrap();
    assert_eq!(last.offset, 42);
    producer.close().await.unwrap();
    stored.extend([(40, "split-a".to_string()), (41, "split-b".to_string()), (42, "last".to_string())]);

    let mut c =
        Consumer::connect(ConsumerConfig { bootstrap: b.bootstrap(), ..Default::default() }).await.unwrap();
    c.assign("small", 0, OffsetSpec::Earliest).await.unwrap();
    let mut values = Vec::new();
    while values.len() < 43 {
        let got = c.poll(Duration::from_secs(2)).await.unwrap();
        assert!(!got.is_empty(), "only {} records stored", values.len());
        values.extend(
            got.into_iter().map(|r| (r.offset, String::from_utf8_lossy(&r.value.unwrap()).into_owned())),
        );
    }
    assert_eq!(values, stored, "each record once, in order, at the offset its ack gave");
}

/// Rebalance callbacks as a listener sees them.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    fn push(&self, what: &str, tps: &[TopicPartition]) {
        let names: Vec<String> = tps.iter().map(ToString::to_string).collect();
        self.0.lock().unwrap().push(format!("{what} {}", names.join(",")));
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl RebalanceListener for Events {
    fn on_assigned(&mut self, tps: &[TopicPartition]) {
        self.push("assigned", tps);
    }
    fn on_revoked(&mut self, tps: &[TopicPartition]) {
        self.push("revoked", tps);
    }
    fn on_lost(&mut self, tps: &[TopicPartition]) {
        self.push("lost", tps);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_polling_leaves_and_its_partitions_are_lost() {
    let b = Broker::start().unwrap();
    let admin = create(&b, "slow", 2).await;
    produce(&b, "slow", 2, 2, "s").await;
    let mut config = group_config(&b, "sleepy", Assignor::Range);
    config.max_poll_interval = Duration::from_secs(1);
    config.heartbeat_interval = Duration::from_millis(200);
    let events = Events::default();
    let mut c = GroupConsumer::connect(config).await.unwrap();
    c.set_listener(Box::new(events.clone()));
    c.subscribe(&["slow"]).await.unwrap();
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while read < 4 {
        read += c.poll(Duration::from_millis(100)).await.unwrap().len();
        assert!(Instant::now() < deadline, "read {read} of 4");
    }
    c.commit_sync().await.unwrap();
    let generation = c.generation();
    assert_eq!(events.all(), ["assigned slow-0,slow-1"]);

    // Longer than max_poll_interval without a poll: the heartbeat task
    // leaves the group on the member's behalf.
    // (Waited for without polling: a poll would rejoin.)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let d = admin.describe_group("sleepy").await.unwrap();
        if d.members.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the member never left: {d:?}");
    }

    // The next poll finds out, gives the partitions up as lost and rejoins;
    // what was committed is not read again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = 0;
    while c.generation() <= generation || c.assignment().len() < 2 {
        again += c.poll(Duration::from_millis(100)).await.unwrap().len();
        assert!(Instant::now() < deadline, "never rejoined");
    }
    again += c.poll(Duration::from_millis(300)).await.unwrap().len();
    assert_eq!(again, 0, "committed records were read again");
    assert_eq!(events.all(), ["assigned slow-0,slow-1", "lost slow-0,slow-1", "assigned slow-0,slow-1"]);
    c.close().await.unwrap();
    assert_eq!(events.all().last().map(String::as_str), Some("revoked slow-0,slow-1"));
}

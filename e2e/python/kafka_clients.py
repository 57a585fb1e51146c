"""Kafka clients no one here wrote, driven by e2e/tests/kafka_protocol.rs.

Each subcommand prints one JSON document on stdout (and exits non-zero
with the reason on stderr when a client reports an error):

  produce BOOTSTRAP TOPIC RECORDS_JSON   confluent-kafka, enable.idempotence=true,
                                         acks=all; prints [[partition, offset], ...]
  consume BOOTSTRAP TOPIC COUNT          confluent-kafka, partitions assigned from
                                         the beginning (no group); prints the records
  kafka-python BOOTSTRAP TOPIC           kafka-python produces three records and reads
                                         them back; prints the records read
  group BOOTSTRAP TOPIC GROUP MEMBERS N  MEMBERS confluent-kafka consumers subscribe as GROUP
                                         (cooperative-sticky); once every partition is
                                         assigned, N records are produced; prints what
                                         each member got and the committed offsets
  admin BOOTSTRAP TOPIC                  confluent-kafka AdminClient creates TOPIC (4
                                         partitions, retention.ms=3600000), describes its
                                         configs, deletes it; prints what it saw
  configs BOOTSTRAP TOPIC                confluent-kafka AdminClient: incremental and full
                                         alters of TOPIC's configs, each described back
  live-group BOOTSTRAP TOPIC GROUP CLI   two confluent-kafka members in GROUP; while they
                                         run: describe_consumer_groups, `CLI group describe`
                                         (CLI: JSON argv) and OffsetDelete (refused); after
                                         they stop, OffsetDelete again
  resume BOOTSTRAP TOPIC GROUP N         a confluent-kafka group commits what it read of N
                                         records and stops; N more are produced; a new
                                         member resumes from the commits to the high watermark
  kafka-python-groups BOOTSTRAP TOPIC N  kafka-python KafkaAdminClient creates TOPIC, a
                                         two-member kafka-python group reads N records,
                                         the admin lists/describes the group and topic,
                                         deletes the topic
  describe-group BOOTSTRAP GROUP         kafka-python's describe_consumer_groups of GROUP:
                                         [state, protocol type, protocol, [[client id,
                                         subscription, [[topic, partitions]]]]]
  epoch-ends BOOTSTRAP TOPIC NODE QUERIES  raw OffsetForLeaderEpoch v3 (kafka-python) to
                                         broker NODE for partition 0, one per [current,
                                         requested] epoch pair; prints [[error, epoch, end]]

A record is {"key", "value", "headers": [[k, v]], "timestamp", "partition",
"offset"} with text keys/values (null allowed).
"""

import json
import sys
import time


def enc(s):
    return None if s is None else s.encode()


def dec(b):
    return None if b is None else b.decode()


def produce(bootstrap, topic, records_json):
    from confluent_kafka import Producer

    delivered, errors = [], []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append([msg.partition(), msg.offset()])

    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 30000,
    })
    for r in json.loads(records_json):
        kwargs = {"key": enc(r.get("key")), "value": enc(r.get("value")), "on_delivery": on_delivery}
        if r.get("headers"):
            kwargs["headers"] = [(k, enc(v)) for k, v in r["headers"]]
        if r.get("timestamp") is not None:
            kwargs["timestamp"] = r["timestamp"]
        if r.get("partition") is not None:
            kwargs["partition"] = r["partition"]
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(30)
    if errors or left:
        sys.exit(f"produce failed: {errors[:5]} ({left} undelivered)")
    print(json.dumps(delivered))


def produce_paced(bootstrap, topic, count, pace_ms):
    """Idempotent acks=all produce of `count` records k{i}/v{i}, pausing
    `pace_ms` every 100 so the run spans a broker kill; prints how many were
    delivered, or exits non-zero with the delivery errors."""
    import time
    from confluent_kafka import Producer

    delivered, errors = [0], []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            delivered[0] += 1

    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 60000,
    })
    for i in range(int(count)):
        while True:
            try:
                p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        if i % 100 == 99:
            p.poll(0)
            time.sleep(int(pace_ms) / 1000)
    left = p.flush(60)
    if errors or left:
        sys.exit(f"produce failed: {errors[:5]} ({left} undelivered)")
    print(json.dumps({"delivered": delivered[0]}))


def consume(bootstrap, topic, count):
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "unused-assign-only",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
    })
    md = c.list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out, deadline = [], time.time() + 30
    while len(out) < count and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            sys.exit(f"consume error: {m.error()}")
        out.append({
            "key": dec(m.key()),
            "value": dec(m.value()),
            "headers": [[k, dec(v)] for k, v in (m.headers() or [])],
            "timestamp": m.timestamp()[1],
            "partition": m.partition(),
            "offset": m.offset(),
        })
    c.close()
    print(json.dumps(out))


def kafka_python(bootstrap, topic):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(3):
        p.send(topic, key=f"kp-{i}".encode(), value=f"value-{i}".encode(),
               headers=[("via", b"kafka-python")]).get(timeout=30)
    p.close()
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      consumer_timeout_ms=10000)
    parts = sorted(c.partitions_for_topic(topic) or [])
    tps = [TopicPartition(topic, x) for x in parts]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out = []
    for m in c:
        out.append({
            "key": dec(m.key), "value": dec(m.value),
            "headers": [[k, dec(v)] for k, v in m.headers],
            "timestamp": m.timestamp, "partition": m.partition, "offset": m.offset,
        })
        if len(out) == 3:
            break
    c.close()
    print(json.dumps(out))


def group(bootstrap, topic, group_id, members, count):
    import threading
    from confluent_kafka import Consumer, Producer, TopicPartition

    members, count = int(members), int(count)
    partitions = None
    assigned = [set() for _ in range(members)]
    got = [[] for _ in range(members)]
    total = [0]
    lock = threading.Lock()
    stop = threading.Event()
    errors = []

    def conf():
        return {
            "bootstrap.servers": bootstrap, "group.id": group_id,
            "partition.assignment.strategy": "cooperative-sticky",
            "auto.offset.reset": "earliest", "enable.auto.commit": True,
            "auto.commit.interval.ms": 200, "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 300,
        }

    def run(i):
        c = Consumer(conf())

        def on_assign(consumer, parts):
            with lock:
                assigned[i].update(p.partition for p in parts)

        def on_revoke(consumer, parts):
            with lock:
                assigned[i].difference_update(p.partition for p in parts)

        c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        try:
            while not stop.is_set():
                m = c.poll(0.1)
                if m is None:
                    continue
                if m.error():
                    errors.append(str(m.error()))
                    continue
                with lock:
                    got[i].append([m.partition(), m.offset()])
                    total[0] += 1
                    if total[0] >= count:
                        stop.set()
        finally:
            c.close()  # commits what was consumed, then LeaveGroup

    threads = [threading.Thread(target=run, args=(i,)) for i in range(members)]
    for t in threads:
        t.start()
    probe = Consumer(conf())
    partitions = sorted(probe.list_topics(topic, timeout=10).topics[topic].partitions)
    deadline = time.time() + 60
    while time.time() < deadline:
        with lock:
            owned = [p for s in assigned for p in s]
            if sorted(owned) == partitions and all(assigned):
                break
        time.sleep(0.1)
    with lock:
        at_start = [sorted(s) for s in assigned]
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for n in range(count):
        p.produce(topic, key=f"k{n}".encode(), value=f"v{n}".encode())
        p.poll(0)
    p.flush(30)
    for t in threads:
        t.join(60)
    stop.set()
    committed = probe.committed([TopicPartition(topic, x) for x in partitions], timeout=10)
    probe.close()
    print(json.dumps({
        "assigned": at_start,
        "consumed": [len(g) for g in got],
        "unique": len({(a, b) for g in got for a, b in g}),
        "committed": sum(max(tp.offset, 0) for tp in committed),
        "errors": errors[:5],
    }))


def admin(bootstrap, topic):
    from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

    a = AdminClient({"bootstrap.servers": bootstrap})
    out = {}
    fs = a.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1,
                                   config={"retention.ms": "3600000"})], operation_timeout=10)
    fs[topic].result(timeout=30)
    dup = a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    try:
        dup[topic].result(timeout=30)
        out["duplicate"] = "created twice"
    except Exception as e:  # KafkaException carrying TOPIC_ALREADY_EXISTS
        out["duplicate"] = e.args[0].name()
    out["partitions"] = len(a.list_topics(topic, timeout=10).topics[topic].partitions)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = a.describe_configs([res])[res].result(timeout=30)
    out["retention.ms"] = configs["retention.ms"].value
    out["cleanup.policy"] = configs["cleanup.policy"].value
    # Grow 4 -> 6 partitions; a shrink is refused.
    a.create_partitions([NewPartitions(topic, 6)], operation_timeout=10)[topic].result(timeout=30)
    out["grown"] = len(a.list_topics(topic, timeout=10).topics[topic].partitions)
    try:
        a.create_partitions([NewPartitions(topic, 2)])[topic].result(timeout=30)
        out["shrink"] = "shrunk"
    except Exception as e:
        out["shrink"] = e.args[0].name()
    cluster = a.describe_cluster().result(timeout=30)
    out["cluster_id"] = cluster.cluster_id
    out["cluster_nodes"] = sorted(n.id for n in cluster.nodes)
    a.delete_topics([topic], operation_timeout=10)[topic].result(timeout=30)
    out["after_delete"] = topic in a.list_topics(timeout=10).topics
    print(json.dumps(out))


def groups_admin(bootstrap, group_id):
    """Lists the consumer groups, deletes `group_id`, lists again."""
    from confluent_kafka.admin import AdminClient

    a = AdminClient({"bootstrap.servers": bootstrap})
    listed = a.list_consumer_groups().result(timeout=30)
    out = {"listed": sorted(g.group_id for g in listed.valid), "errors": [str(e) for e in listed.errors]}
    try:
        a.delete_consumer_groups([group_id])[group_id].result(timeout=30)
        out["deleted"] = True
    except Exception as e:
        out["deleted"] = str(e)
    try:
        a.delete_consumer_groups(["no-such-group"])["no-such-group"].result(timeout=30)
        out["unknown"] = "deleted"
    except Exception as e:
        out["unknown"] = e.args[0].name()
    out["after"] = sorted(g.group_id for g in a.list_consumer_groups().result(timeout=30).valid)
    print(json.dumps(out))


def configs(bootstrap, topic):
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                       NewTopic)

    a = AdminClient({"bootstrap.servers": bootstrap})
    a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)

    def described(*keys):
        got = a.describe_configs([res])[res].result(timeout=30)
        return {k: got[k].value for k in keys}

    def incremental(entries, **kw):
        r = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=entries)
        try:
            a.incremental_alter_configs([r], **kw)[r].result(timeout=30)
            return "ok"
        except Exception as e:
            return e.args[0].name()

    out = {}
    SET, DELETE, APPEND = AlterConfigOpType.SET, AlterConfigOpType.DELETE, AlterConfigOpType.APPEND
    out["validate_only"] = incremental([ConfigEntry("retention.ms", "1000", incremental_operation=SET)],
                                       validate_only=True)
    out["after_validate"] = described("retention.ms")
    out["incremental"] = incremental([
        ConfigEntry("retention.ms", "7200000", incremental_operation=SET),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=APPEND),
        ConfigEntry("segment.ms", None, incremental_operation=DELETE),
    ])
    out["after_incremental"] = described("retention.ms", "cleanup.policy")
    out["unknown"] = incremental([ConfigEntry("no.such.config", "1", incremental_operation=SET)])
    out["append_scalar"] = incremental([ConfigEntry("retention.ms", "1", incremental_operation=APPEND)])
    broker = ConfigResource(ConfigResource.Type.BROKER, "0",
                            incremental_configs=[ConfigEntry("log.retention.ms", "1",
                                                             incremental_operation=SET)])
    try:
        a.incremental_alter_configs([broker])[broker].result(timeout=30)
        out["broker"] = "ok"
    except Exception as e:
        out["broker"] = e.args[0].name()
    # The full (non-incremental) alter replaces every override.
    full = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config={"max.message.bytes": "2000000"})
    a.alter_configs([full])[full].result(timeout=30)
    out["after_full"] = described("retention.ms", "cleanup.policy", "max.message.bytes")
    print(json.dumps(out))


def _members(bootstrap, topic, group_id, n, strategy="range"):
    """`n` confluent-kafka consumers subscribed as `group_id`, polled on
    threads until `stop` is set; returns (stop, threads, ready) where ready()
    says whether every member has partitions."""
    import threading
    from confluent_kafka import Consumer

    stop = threading.Event()
    assigned = [set() for _ in range(n)]
    lock = threading.Lock()

    def run(i):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "client.id": f"member-{i}",
                      "partition.assignment.strategy": strategy, "auto.offset.reset": "earliest",
                      "enable.auto.commit": False,
                      "session.timeout.ms": 6000, "heartbeat.interval.ms": 300})

        def on_assign(_c, parts):
            with lock:
                assigned[i] = {p.partition for p in parts}

        c.subscribe([topic], on_assign=on_assign)
        while not stop.is_set():
            c.poll(0.1)
        c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()

    def ready():
        with lock:
            return all(assigned)

    return stop, threads, ready


class _OffsetDelete:
    """OffsetDelete v0 (neither Python client has it): kafka-python's
    request machinery with its schema."""

    @staticmethod
    def request(group_id, topic, partitions):
        from kafka.protocol.api import Request, Response
        from kafka.protocol.types import Array, Int16, Int32, Schema, String

        class OffsetDeleteResponse_v0(Response):
            API_KEY, API_VERSION = 47, 0
            SCHEMA = Schema(("error_code", Int16), ("throttle_time_ms", Int32),
                            ("topics", Array(("name", String("utf-8")),
                                             ("partitions", Array(("partition_index", Int32),
                                                                  ("error_code", Int16))))))

        class OffsetDeleteRequest_v0(Request):
            API_KEY, API_VERSION = 47, 0
            RESPONSE_TYPE = OffsetDeleteResponse_v0
            SCHEMA = Schema(("group_id", String("utf-8")),
                            ("topics", Array(("name", String("utf-8")),
                                             # an array of one-field structs: of the field
                                             ("partitions", Array(Int32)))))

        return OffsetDeleteRequest_v0(group_id=group_id, topics=[(topic, list(partitions))])

    @staticmethod
    def send(bootstrap, group_id, topic, partitions):
        """[top-level error, [per-partition errors]]"""
        from kafka import KafkaAdminClient

        a = KafkaAdminClient(bootstrap_servers=bootstrap)
        node = a._find_coordinator_ids([group_id])[group_id]
        f = a._send_request_to_node(node, _OffsetDelete.request(group_id, topic, partitions))
        a._wait_for_futures([f])
        a.close()
        r = f.value
        return [r.error_code, [e for t in r.topics for (_, e) in t[1]]]


def live_group(bootstrap, topic, group_id, cli_json):
    import subprocess
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    # Something committed for every partition, from outside the membership.
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
    c.commit(offsets=[TopicPartition(topic, p, 1) for p in parts], asynchronous=False)
    c.close()
    stop, threads, ready = _members(bootstrap, topic, group_id, 2)
    out = {}
    try:
        deadline = time.time() + 30
        a = AdminClient({"bootstrap.servers": bootstrap})
        while time.time() < deadline:
            g = a.describe_consumer_groups([group_id])[group_id].result(timeout=30)
            if ready() and g.state.name == "STABLE" and len(g.members) == 2 \
                    and all(m.assignment.topic_partitions for m in g.members):
                break
            time.sleep(0.2)
        out["state"] = g.state.name
        out["assignor"] = g.partition_assignor
        out["simple"] = g.is_simple_consumer_group
        out["members"] = sorted([m.client_id, sorted(tp.partition for tp in m.assignment.topic_partitions),
                                 bool(m.host)] for m in g.members)
        out["cli"] = subprocess.run(json.loads(cli_json) + ["group", "describe", group_id],
                                    capture_output=True, text=True, check=True).stdout
        out["delete_live"] = _OffsetDelete.send(bootstrap, group_id, topic, parts)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    out["delete_stopped"] = _OffsetDelete.send(bootstrap, group_id, topic, parts)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    out["committed_after"] = [tp.offset for tp in c.committed([TopicPartition(topic, p) for p in parts],
                                                                timeout=10)]
    c.close()
    print(json.dumps(out))


def resume(bootstrap, topic, group_id, count):
    from confluent_kafka import Consumer, Producer, TopicPartition

    count = int(count)
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def produce(first):
        for n in range(first, first + count):
            p.produce(topic, key=f"k{n}".encode(), value=f"v{n}".encode())
            p.poll(0)
        if p.flush(30):
            sys.exit("produce: undelivered records")

    def conf():
        # No reset policy: a partition without a committed offset is an error,
        # never silently started from either end.
        return {"bootstrap.servers": bootstrap, "group.id": group_id, "auto.offset.reset": "error",
                "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 300}

    # The group starts from committed offsets 0 (committed from outside).
    first = Consumer(conf())
    parts = sorted(first.list_topics(topic, timeout=10).topics[topic].partitions)
    first.commit(offsets=[TopicPartition(topic, x, 0) for x in parts], asynchronous=False)

    def read(consumer, want, wait=30):
        seen, deadline = [], time.time() + wait
        while len(seen) < want and time.time() < deadline:
            m = consumer.poll(0.2)
            if m is None:
                continue
            if m.error():
                sys.exit(f"consume error: {m.error()}")
            seen.append(m.value().decode())
        return seen

    # Two members read the first half between them, commit synchronously, stop.
    second = Consumer(conf())
    first.subscribe([topic])
    second.subscribe([topic])
    # The group forms before anything is produced, so no partition changes
    # hands while records are read: a handover would have the new owner read
    # again what the old one read but had not committed (at-least-once), and
    # commit below it.
    deadline = time.time() + 30
    while time.time() < deadline:
        for c in (first, second):
            c.poll(0.1)
        a, b = first.assignment(), second.assignment()
        if a and b and len({t.partition for t in a} | {t.partition for t in b}) == len(parts):
            break
    produce(0)
    half = count // 2
    got_first, deadline = [], time.time() + 30
    while len(got_first) < half and time.time() < deadline:
        for c in (first, second):
            m = c.poll(0.1)
            if m is not None and not m.error():
                got_first.append(m.value().decode())
    from confluent_kafka import KafkaError, KafkaException
    # Both commit before either stops: a member's close rebalances the group,
    # and a member whose partitions were revoked by then has nothing left
    # to commit, so what it read would be read again.
    for c in (first, second):
        try:
            c.commit(asynchronous=False)
        except KafkaException as e:  # a member that read nothing has nothing to commit
            if e.args[0].code() != KafkaError._NO_OFFSET:
                raise
    for c in (first, second):
        c.close()
    first_unique = set(got_first)
    produce(count)
    # A new member resumes: everything not read yet, once, up to the end.
    third = Consumer(conf())
    third.subscribe([topic])
    rest = read(third, 2 * count - len(first_unique))
    # Nothing more arrives after the end (nothing re-read).
    extra = read(third, 1, wait=2)
    lows_highs = [third.get_watermark_offsets(TopicPartition(topic, x), timeout=10) for x in parts]
    positions = [tp.offset for tp in third.position([TopicPartition(topic, x) for x in parts])]
    third.close()
    print(json.dumps({
        "first": len(first_unique), "rest": len(rest), "rest_unique": len(set(rest)), "extra": extra,
        "overlap": len(first_unique & set(rest)),
        "all": sorted(first_unique | set(rest)) == sorted(f"v{n}" for n in range(2 * count)),
        "at_end": positions == [h for _, h in lows_highs],
    }))


def kafka_python_groups(bootstrap, topic, count):
    import threading
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic

    count = int(count)
    group_id = f"{topic}-kp-group"
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    a.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    out = {"described_topic": [(t["topic"], len(t["partitions"]), t["error_code"])
                               for t in a.describe_topics([topic])]}
    got, lock, stop = [[], []], threading.Lock(), threading.Event()
    owned = [set(), set()]

    def run(i):
        c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group_id, client_id=f"kp-{i}",
                          auto_offset_reset="earliest", session_timeout_ms=6000,
                          heartbeat_interval_ms=300)
        while not stop.is_set():
            for tp, msgs in c.poll(timeout_ms=100).items():
                with lock:
                    got[i].extend(m.value.decode() for m in msgs)
            with lock:
                owned[i] = {tp.partition for tp in c.assignment()}
        c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    deadline = time.time() + 30
    while time.time() < deadline:
        with lock:
            if all(owned) and sorted(owned[0] | owned[1]) == [0, 1, 2, 3] and not owned[0] & owned[1]:
                break
        time.sleep(0.1)
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for n in range(count):
        p.send(topic, key=f"k{n}".encode(), value=f"v{n}".encode())
    p.flush(30)
    p.close()
    while time.time() < deadline + 30:
        with lock:
            if len(got[0]) + len(got[1]) >= count:
                break
        time.sleep(0.1)
    out["listed"] = [g for g, kind in a.list_consumer_groups() if g == group_id and kind == "consumer"]
    g = a.describe_consumer_groups([group_id])[0]
    out["described_group"] = [g.state, g.protocol_type, g.protocol,
                              sorted(m.client_id for m in g.members)]
    stop.set()
    for t in threads:
        t.join(30)
    with lock:
        out["owned"] = [sorted(o) for o in owned]
        out["each_read"] = [len(x) > 0 for x in got]
        out["read"] = sorted(set(got[0]) | set(got[1])) == sorted(f"v{n}" for n in range(count))
        out["duplicates"] = len(got[0]) + len(got[1]) - len(set(got[0]) | set(got[1]))
    a.delete_topics([topic])
    out["after_delete"] = topic in a.list_topics()
    a.close()
    print(json.dumps(out))


def describe_group(bootstrap, group_id):
    from kafka import KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    g = a.describe_consumer_groups([group_id])[0]
    a.close()
    members = sorted([m.client_id, list(m.member_metadata.subscription),
                      [[t, sorted(ps)] for t, ps in m.member_assignment.assignment]] for m in g.members)
    print(json.dumps([g.state, g.protocol_type, g.protocol, members]))


def epoch_ends(bootstrap, topic, node, queries):
    from kafka import KafkaAdminClient
    from kafka.protocol.offset_for_leader_epoch import OffsetForLeaderEpochRequest_v3

    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    out = []
    for current, requested in json.loads(queries):
        req = OffsetForLeaderEpochRequest_v3(replica_id=-1, topics=[(topic, [(0, current, requested)])])
        f = a._send_request_to_node(int(node), req)
        a._wait_for_futures([f])
        error, _partition, epoch, end = f.value.topics[0][1][0]
        out.append([error, epoch, end])
    a.close()
    print(json.dumps(out))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":
        produce(*args)
    elif cmd == "consume":
        consume(args[0], args[1], int(args[2]))
    elif cmd == "kafka-python":
        kafka_python(*args)
    elif cmd == "admin":
        admin(*args)
    elif cmd == "produce-paced":
        produce_paced(*args)
    elif cmd == "groups-admin":
        groups_admin(*args)
    elif cmd == "group":
        group(*args)
    elif cmd == "configs":
        configs(*args)
    elif cmd == "live-group":
        live_group(*args)
    elif cmd == "resume":
        resume(*args)
    elif cmd == "kafka-python-groups":
        kafka_python_groups(*args)
    elif cmd == "describe-group":
        describe_group(*args)
    elif cmd == "epoch-ends":
        epoch_ends(*args)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

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
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

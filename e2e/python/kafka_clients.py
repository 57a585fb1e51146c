"""Kafka clients no one here wrote, driven by e2e/tests/kafka_protocol.rs.

Each subcommand prints one JSON document on stdout (and exits non-zero
with the reason on stderr when a client reports an error):

  produce BOOTSTRAP TOPIC RECORDS_JSON   confluent-kafka, enable.idempotence=true,
                                         acks=all; prints [[partition, offset], ...]
  consume BOOTSTRAP TOPIC COUNT          confluent-kafka, partitions assigned from
                                         the beginning (no group); prints the records
  kafka-python BOOTSTRAP TOPIC           kafka-python produces three records and reads
                                         them back; prints the records read
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


def admin(bootstrap, topic):
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

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
    a.delete_topics([topic], operation_timeout=10)[topic].result(timeout=30)
    out["after_delete"] = topic in a.list_topics(timeout=10).topics
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
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

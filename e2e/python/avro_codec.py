"""Confluent's AvroSerializer / AvroDeserializer as a filter, so a Rust test
can carry their bytes through Tributary (e2e/tests/registry.rs):

  avro_codec.py URL encode TOPIC SCHEMA.avsc  < JSON lines  > hex lines
  avro_codec.py URL decode TOPIC              < hex lines   > JSON lines
"""

import json
import sys

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    url, mode, topic = sys.argv[1:4]
    sr = SchemaRegistryClient({"url": url})
    ctx = SerializationContext(topic, MessageField.VALUE)
    if mode == "encode":
        with open(sys.argv[4]) as f:
            ser = AvroSerializer(sr, f.read())
        for line in sys.stdin:
            if line.strip():
                print(ser(json.loads(line), ctx).hex(), flush=True)
    elif mode == "decode":
        de = AvroDeserializer(sr)
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(de(bytes.fromhex(line.strip()), ctx), sort_keys=True), flush=True)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

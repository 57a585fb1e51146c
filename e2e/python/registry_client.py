"""Drives Tributary's embedded schema registry with Confluent's own Python
client (confluent-kafka's SchemaRegistryClient and AvroSerializer), a
client no one here wrote. Run by e2e/tests/registry.rs against a real
broker: registry_client.py URL [URL ...] (writes go to the first URL,
reads are checked on every one).

Prints one line per check and exits non-zero on the first failure.
"""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

V1 = {
    "type": "record",
    "name": "Payment",
    "namespace": "shop",
    "fields": [{"name": "id", "type": "string"}, {"name": "amount", "type": "double"}],
}
# Compatible (BACKWARD): a new field with a default.
V2 = dict(V1, fields=V1["fields"] + [{"name": "currency", "type": "string", "default": "EUR"}])
# Incompatible: a new field without a default.
V3_BAD = dict(V1, fields=V1["fields"] + [{"name": "note", "type": "string"}])


def avro(schema):
    return Schema(json.dumps(schema), "AVRO")


def check(what, cond):
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


def main():
    urls = sys.argv[1:]
    sr = SchemaRegistryClient({"url": urls[0]})
    readers = [SchemaRegistryClient({"url": u}) for u in urls]

    id1 = sr.register_schema("payments-value", avro(V1))
    check("register returns an id", isinstance(id1, int) and id1 > 0)
    check("registering again returns the same id", sr.register_schema("payments-value", avro(V1)) == id1)
    check(
        "the same schema under another subject gets the same id",
        sr.register_schema("refunds-value", avro(V1)) == id1,
    )

    check("a compatible change is accepted", sr.test_compatibility("payments-value", avro(V2)))
    id2 = sr.register_schema("payments-value", avro(V2))
    check("an evolved schema gets a new id", id2 != id1)
    check("the incompatible change is reported", not sr.test_compatibility("payments-value", avro(V3_BAD)))
    try:
        sr.register_schema("payments-value", avro(V3_BAD))
        check("an incompatible schema is refused", False)
    except SchemaRegistryError as e:
        check(f"an incompatible schema is refused with 409 ({e.http_status_code}/{e.error_code})",
              e.http_status_code == 409 and e.error_code == 409)
    try:
        sr.register_schema("payments-value", Schema('{"type": "recrod"}', "AVRO"))
        check("a malformed schema is refused", False)
    except SchemaRegistryError as e:
        check(f"a malformed schema is refused with 42201 ({e.error_code})", e.error_code == 42201)

    for i, r in enumerate(readers):
        fetched = r.get_schema(id2)
        check(f"broker {i}: fetch by id returns the schema", json.loads(fetched.schema_str)["fields"][2]["name"] == "currency")
        latest = r.get_latest_version("payments-value")
        check(f"broker {i}: latest version is 2 with the new id", latest.version == 2 and latest.schema_id == id2)
        check(f"broker {i}: versions are [1, 2]", r.get_versions("payments-value") == [1, 2])
        check(f"broker {i}: subjects list both", {"payments-value", "refunds-value"} <= set(r.get_subjects()))
    try:
        sr.get_schema(99999)
        check("an unknown id is an error", False)
    except SchemaRegistryError as e:
        check(f"an unknown id is 40403 ({e.error_code})", e.error_code == 40403)

    check("the global level defaults to BACKWARD", sr.get_compatibility() == "BACKWARD")
    sr.set_compatibility("payments-value", "NONE")
    check("a subject level can be set", sr.get_compatibility("payments-value") == "NONE")
    id3 = sr.register_schema("payments-value", avro(V3_BAD))
    check("with NONE the change goes in", id3 not in (id1, id2))
    sr.set_compatibility(level="FULL")
    check("the global level can be set", sr.get_compatibility() == "FULL")
    sr.set_compatibility(level="BACKWARD")

    # Confluent's serializer and deserializer, through the registry.
    ser = AvroSerializer(sr, json.dumps(V2))
    ctx = SerializationContext("payments", MessageField.VALUE)
    record = {"id": "p-1", "amount": 12.5, "currency": "SEK"}
    data = ser(record, ctx)
    check("the serializer writes the Confluent framing", data[0] == 0 and int.from_bytes(data[1:5], "big") == id2)
    de = AvroDeserializer(readers[-1])
    check("the deserializer reads it back", de(data, ctx) == record)

    deleted = sr.delete_subject("refunds-value")
    check("soft delete lists the versions", deleted == [1])
    check("a soft-deleted subject is gone from the list", "refunds-value" not in sr.get_subjects())
    sr.delete_subject("refunds-value", permanent=True)
    check("the schema is still there by id (another subject holds it)", sr.get_schema(id1) is not None)
    print("registry_client: all checks passed", flush=True)


if __name__ == "__main__":
    main()

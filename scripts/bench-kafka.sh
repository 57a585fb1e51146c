#!/usr/bin/env bash
# The Kafka listener against the gRPC door, in one run on one broker: the
# same number of 100-byte records into two topics with the same partitions,
# first with `tributary bench produce` (gRPC, the project's client), then
# with kcat (librdkafka) through the Kafka port, each acks=1, lz4 off,
# librdkafka's default batching; then both read back, gRPC with `bench
# consume` and Kafka with `kcat -C -e`. Prints records/s for each and the
# Kafka/gRPC ratios. Needs kcat (scripts/kafka-clients.sh installs it).
#
#   scripts/bench-kafka.sh [RECORDS] [PARTITIONS]
cd "$(dirname "$0")/.."
source scripts/env.sh
records="${1:-1000000}"
partitions="${2:-2}"
scripts/kafka-clients.sh >/dev/null
source scripts/bench-common.sh
bench_bins
bench_one_broker --kafka-listen 127.0.0.1:17092
"$bin/tributary" topic create grpc --partitions "$partitions" >/dev/null
"$bin/tributary" topic create kafka --partitions "$partitions" >/dev/null
# One 100-byte value per line, the same records the gRPC bench sends.
python3 -c "import sys; sys.stdout.write(('x' * 100 + '\n') * $records)" >"$dir/records"

now() { date +%s.%N; }
rate() { python3 -c "print(round($records / ($2 - $1)))"; }
grpc_produce=$("$bin/tributary" bench produce --topic grpc --records "$records" --record-size 100 --acks 1 </dev/null \
  | tail -n 1 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["records_per_sec"]))')
t0=$(now)
kcat -P -b 127.0.0.1:17092 -t kafka -X acks=1 -X linger.ms=5 -l "$dir/records"
t1=$(now)
kafka_produce=$(rate "$t0" "$t1")
grpc_consume=$("$bin/tributary" bench consume --topic grpc --records "$records" </dev/null \
  | tail -n 1 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["records_per_sec"]))')
t0=$(now)
got=$(kcat -C -b 127.0.0.1:17092 -t kafka -o beginning -e -q -f '\n' | wc -l)
t1=$(now)
kafka_consume=$(rate "$t0" "$t1")
[ "$got" -eq "$records" ] || { echo "kcat read $got of $records records" >&2; exit 1; }
python3 - "$records" "$grpc_produce" "$kafka_produce" "$grpc_consume" "$kafka_consume" <<'PY'
import json, sys
n, gp, kp, gc, kc = map(int, sys.argv[1:])
print(json.dumps({"records": n, "client": "kcat (librdkafka)",
                  "grpc_produce_per_sec": gp, "kafka_produce_per_sec": kp, "produce_ratio": round(kp / gp, 3),
                  "grpc_consume_per_sec": gc, "kafka_consume_per_sec": kc, "consume_ratio": round(kc / gc, 3)}))
PY

#!/usr/bin/env bash
# End-to-end throughput on this machine: starts a broker in a temporary
# directory, creates a topic, and runs `tributary bench produce` then
# `bench consume` against it (100-byte records in batches of ~1000, acks=1 by
# default). Prints the two JSON result lines.
#
#   scripts/bench.sh [RECORDS] [PARTITIONS] [extra `bench produce` flags...]
#
# TRIBUTARY_BIN_DIR=DIR runs the binaries in DIR instead of building this
# checkout (to compare against an earlier build in the same session).
cd "$(dirname "$0")/.."
source scripts/env.sh
records="${1:-10000000}"
partitions="${2:-2}"
shift 2 || true
if [ -n "${TRIBUTARY_BIN_DIR:-}" ]; then
  bin="$TRIBUTARY_BIN_DIR"
else
  cargo build --release -q --workspace --bins
  bin="$CARGO_TARGET_DIR/release"
fi
dir="$(mktemp -d)"
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$dir"' EXIT
"$bin/tributary-broker" --data-dir "$dir/data" --listen 127.0.0.1:17070 --http-listen 127.0.0.1:17071 2>"$dir/broker.log" &
broker=$!
for _ in $(seq 100); do grep -q "broker ready" "$dir/broker.log" 2>/dev/null && break; sleep 0.1; done
export TRIBUTARY_BOOTSTRAP=127.0.0.1:17070
"$bin/tributary" topic create bench --partitions "$partitions" >/dev/null
echo -n "produce: "
"$bin/tributary" bench produce --topic bench --records "$records" --record-size 100 --acks 1 --batch-size 110000 "$@" </dev/null | tail -n 1
echo -n "consume: "
"$bin/tributary" bench consume --topic bench --records "$records" </dev/null | tail -n 1

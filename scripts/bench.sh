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
source scripts/bench-common.sh
bench_bins
bench_one_broker
"$bin/tributary" topic create bench --partitions "$partitions" >/dev/null
echo -n "produce: "
"$bin/tributary" bench produce --topic bench --records "$records" --record-size 100 --acks 1 --batch-size 110000 "$@" </dev/null | tail -n 1
echo -n "consume: "
"$bin/tributary" bench consume --topic bench --records "$records" </dev/null | tail -n 1

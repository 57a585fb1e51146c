#!/usr/bin/env bash
# Replication cost on this machine, as ratios measured in one run: a single
# broker with acks=1 is the baseline; then three brokers on loopback with a
# replication factor 3 topic (min.insync.replicas=2), produced to with acks=1
# and with acks=all. Prints each `bench produce` JSON line and the ratios.
#
#   scripts/bench-cluster.sh [RECORDS] [PARTITIONS] [extra `bench produce` flags...]
#
# TRIBUTARY_BIN_DIR=DIR runs the binaries in DIR instead of building this
# checkout.
cd "$(dirname "$0")/.."
source scripts/env.sh
records="${1:-3000000}"
partitions="${2:-3}"
shift 2 || true
source scripts/bench-common.sh
bench_bins
dir="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

wait_ready() {
  for _ in $(seq 300); do
    curl -sf "http://$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "broker at $1 did not become ready" >&2
  exit 1
}

produce() {
  "$bin/tributary" bench produce --bootstrap "$1" --topic "$2" --records "$records" --record-size 100 \
    --acks "$3" --batch-size 110000 "${@:4}" </dev/null | tail -n 1
}

rate() { sed -n 's/.*"records_per_sec":\([0-9.]*\).*/\1/p' <<<"$1"; }

# Baseline: one broker, acks=1.
"$bin/tributary-broker" --data-dir "$dir/single" --listen 127.0.0.1:17170 --http-listen 127.0.0.1:17171 \
  2>"$dir/single.log" &
pids+=($!)
wait_ready 127.0.0.1:17171
"$bin/tributary" topic create bench --partitions "$partitions" --bootstrap 127.0.0.1:17170 >/dev/null
single=$(produce 127.0.0.1:17170 bench 1 "$@")
echo "single broker, acks=1: $single"
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null
pids=()

# Three brokers, RF 3.
peers="0@127.0.0.1:17270,1@127.0.0.1:17272,2@127.0.0.1:17274"
for i in 0 1 2; do
  "$bin/tributary-broker" --node-id "$i" --peers "$peers" --data-dir "$dir/b$i" \
    --listen "127.0.0.1:$((17270 + 2 * i))" --http-listen "127.0.0.1:$((17271 + 2 * i))" 2>"$dir/b$i.log" &
  pids+=($!)
done
for i in 0 1 2; do wait_ready "127.0.0.1:$((17271 + 2 * i))"; done
boot="127.0.0.1:17270,127.0.0.1:17272,127.0.0.1:17274"
for acks in 1 all; do
  "$bin/tributary" topic create "bench-$acks" --partitions "$partitions" --replication-factor 3 \
    --config min.insync.replicas=2 --bootstrap "$boot" >/dev/null
done
sleep 1
rf3_1=$(produce "$boot" bench-1 1 "$@")
echo "three brokers RF 3, acks=1: $rf3_1"
rf3_all=$(produce "$boot" bench-all all "$@")
echo "three brokers RF 3, acks=all: $rf3_all"
python3 - "$(rate "$single")" "$(rate "$rf3_1")" "$(rate "$rf3_all")" <<'EOF'
import sys
single, one, every = (float(x or 0) for x in sys.argv[1:4])
if single > 0:
    print(f"ratios to single-broker acks=1: RF3 acks=1 {one / single:.3f}, RF3 acks=all {every / single:.3f}")
EOF

# Sourced by the bench scripts (bench.sh, bench-kafka.sh, bench-cluster.sh).
#
# bench_bins: sets $bin to the directory of the binaries to run: $TRIBUTARY_BIN_DIR
# (an earlier build, to compare against in the same session), or this
# checkout, built first.
bench_bins() {
  if [ -n "${TRIBUTARY_BIN_DIR:-}" ]; then
    bin="$TRIBUTARY_BIN_DIR"
  else
    cargo build --release -q --workspace --bins
    bin="$CARGO_TARGET_DIR/release"
  fi
}

# bench_one_broker [EXTRA BROKER FLAGS...]: one broker in a temporary $dir
# (gRPC 127.0.0.1:17070, HTTP 17071), removed with it on exit; waits until
# it is ready and points the CLI at it.
bench_one_broker() {
  dir="$(mktemp -d)"
  trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$dir"' EXIT
  "$bin/tributary-broker" --data-dir "$dir/data" --listen 127.0.0.1:17070 --http-listen 127.0.0.1:17071 \
    "$@" 2>"$dir/broker.log" &
  broker=$!
  for _ in $(seq 100); do grep -q "broker ready" "$dir/broker.log" 2>/dev/null && break; sleep 0.1; done
  export TRIBUTARY_BOOTSTRAP=127.0.0.1:17070
}

#!/usr/bin/env bash
# Runs one broker with embedded defaults: data under ./data, gRPC on
# 127.0.0.1:7070, HTTP (/healthz, /readyz, /metrics) on 127.0.0.1:7071.
# Extra arguments go to tributary-broker (see --help).
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p tributary-broker -p tributary-client
echo "tributary: the CLI is $CARGO_TARGET_DIR/release/tributary" >&2
exec "$CARGO_TARGET_DIR/release/tributary-broker" "$@"

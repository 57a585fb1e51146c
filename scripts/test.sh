#!/usr/bin/env bash
# Runs every test: unit and property tests, and the black-box suite that
# starts real broker processes on 127.0.0.1. Extra arguments go to cargo test.
cd "$(dirname "$0")/.."
source scripts/env.sh
# The black-box tests run the built binaries: build them for this checkout first.
cargo build --release --workspace --bins
# The schema registry is tested with Confluent's Python client, from a
# cached venv (e2e/tests/registry.rs skips, saying why, without it).
TRIBUTARY_REGISTRY_PYTHON="$(scripts/registry-venv.sh)"
export TRIBUTARY_REGISTRY_PYTHON
# The Kafka listener is tested with kcat, confluent-kafka and kafka-python
# (e2e/tests/kafka_protocol.rs skips, saying why, without them).
TRIBUTARY_KAFKA_PYTHON="$(scripts/kafka-clients.sh)"
export TRIBUTARY_KAFKA_PYTHON
export PYTHONDONTWRITEBYTECODE=1
exec cargo test --release --workspace "$@"

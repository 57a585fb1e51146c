#!/usr/bin/env bash
# Makes sure the Python venv the schema-registry tests use (Confluent's
# confluent-kafka and fastavro, e2e/python/requirements.txt) exists, cached
# outside the clone, and prints its interpreter. scripts/test.sh exports it
# as TRIBUTARY_REGISTRY_PYTHON for e2e/tests/registry.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/venv.sh tributary-registry-venv e2e/python/requirements.txt

#!/usr/bin/env bash
# Makes sure the Kafka clients the Kafka listener's tests use are there:
# kcat (Debian package, librdkafka) and a Python venv with confluent-kafka
# and kafka-python (e2e/python/kafka-requirements.txt), cached outside the
# clone. Prints the venv's interpreter; scripts/test.sh exports it as
# TRIBUTARY_KAFKA_PYTHON for e2e/tests/kafka_protocol.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kcat >/dev/null 2>&1; then
  echo "kafka-clients: installing kcat (Debian package)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq kcat >/dev/null
fi
exec scripts/venv.sh tributary-kafka-venv e2e/python/kafka-requirements.txt

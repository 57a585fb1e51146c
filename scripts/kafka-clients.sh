#!/usr/bin/env bash
# Makes sure the Kafka clients the Kafka listener's tests use are there:
# kcat (Debian package, librdkafka) and a Python venv with confluent-kafka
# and kafka-python (e2e/python/kafka-requirements.txt), cached outside the
# clone. Prints the venv's interpreter; scripts/test.sh exports it as
# TRIBUTARY_KAFKA_PYTHON for e2e/tests/kafka_protocol.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
apt_install() {
  echo "kafka-clients: installing $* (Debian packages)" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
if ! command -v kcat >/dev/null 2>&1; then
  apt_install kcat
fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  apt_install python3-venv
fi

venv="${XDG_CACHE_HOME:-$HOME/.cache}/tributary-kafka-venv"
requirements=e2e/python/kafka-requirements.txt
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
stamp="$venv/.tributary-requirements"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  echo "$want" >"$stamp"
fi
echo "$venv/bin/python"

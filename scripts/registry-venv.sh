#!/usr/bin/env bash
# Makes sure the Python venv the schema-registry tests use (Confluent's
# confluent-kafka and fastavro, e2e/python/requirements.txt) exists, cached
# outside the clone, and prints its interpreter. scripts/test.sh exports it
# as TRIBUTARY_REGISTRY_PYTHON for e2e/tests/registry.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${XDG_CACHE_HOME:-$HOME/.cache}/tributary-registry-venv"
requirements=e2e/python/requirements.txt
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "registry-venv: installing python3-venv (Debian package)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
# Reinstall only when the pinned requirements change.
stamp="$venv/.tributary-requirements"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  echo "$want" >"$stamp"
fi
echo "$venv/bin/python"

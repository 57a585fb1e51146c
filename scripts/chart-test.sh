#!/usr/bin/env bash
# Tests the Helm chart with the real Helm engine and validates what it renders,
# and what the operator generates for the example Clusters, against the
# Kubernetes OpenAPI schemas. Python packages go into a venv cached outside the
# clone; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

venv="${XDG_CACHE_HOME:-$HOME/.cache}/tributary-venv"
requirements=helm/tests/requirements.txt
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "chart-test: installing python3-venv (Debian package)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Reinstall only when the pinned requirements change.
stamp="$venv/.tributary-requirements"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" >"$stamp"
fi

cargo build --release -p tributary-operator
export PYTHONDONTWRITEBYTECODE=1
export TRIBUTARY_OPERATOR_BIN="$CARGO_TARGET_DIR/release/tributary-operator"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider helm/tests "$@"

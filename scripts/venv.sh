#!/usr/bin/env bash
# Usage: scripts/venv.sh NAME REQUIREMENTS_FILE
# Makes sure a Python venv with the pinned REQUIREMENTS_FILE exists, cached
# outside the clone as ~/.cache/NAME, and prints its interpreter. The tests
# that drive clients no one here wrote (Confluent's, kafka-python) run them
# from such venvs; pip runs only when the pinned requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"
requirements="$2"

if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "venv: installing python3-venv (Debian package)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi
venv="${XDG_CACHE_HOME:-$HOME/.cache}/$name"
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

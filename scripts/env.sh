# Sourced by the other scripts: makes sure the build prerequisites are
# installed and points cargo at a target directory outside the clone, so
# every clone (and CI) reuses the slow C++ build of RocksDB.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "tributary: cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
  fi
fi

missing=()
# rocksdb's bindings are generated with bindgen, which loads libclang
# itself (libclang.so / libclang-N.so; libclang-cpp does not count, and some
# images ship it alone).
if ! compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null && ! compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null && ! compgen -G "/usr/lib/*/libclang.so*" >/dev/null; then
  missing+=(libclang-dev)
fi
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tributary: installing ${missing[*]} (Debian packages)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary-target}"

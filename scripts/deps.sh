#!/usr/bin/env bash
# Installs (as root) or names (otherwise) the Debian packages batpak needs to
# build and test. Safe to run again: it installs only what is missing.
#   scripts/deps.sh            build + test dependencies
#   scripts/deps.sh --fuzz     also clang's libFuzzer runtime
set -euo pipefail

packages=(build-essential cmake pkg-config clang
          libcmocka-dev librust-blake3-dev libjson-c-dev zlib1g-dev
          liblmdb-dev libsqlite3-dev sqlite3 python3
          python3-cffi python3-dev python3-setuptools python3-pip abigail-tools
          nats-server libnats-dev)
if [[ "${1:-}" == "--fuzz" ]]; then
  packages+=(libclang-rt-dev)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "deps: missing packages: ${missing[*]}" >&2
  echo "deps: run this, then try again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

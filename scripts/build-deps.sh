#!/usr/bin/env bash
# Installs, when missing, what building Sagaflow needs beyond the Rust toolchain:
# cmake and the curl headers for rdkafka's bundled librdkafka (cmake-build feature).
set -euo pipefail
missing=()
for pkg in cmake libcurl4-openssl-dev pkg-config build-essential; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
echo "[build-deps] installing ${missing[*]}" >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2

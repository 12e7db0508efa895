#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs and starts PostgreSQL 15 and the
# Kafka-protocol broker when missing, checks formatting and lints, then runs every test
# (unit tests and the integration tests against the real services).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

services_env="$(scripts/services.sh)"
eval "$services_env"
echo "$services_env" | sed 's/^export /[test] /' >&2

echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
echo "[test] cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --workspace --all-targets -- -D warnings

# The fault-injection tests run the real binary as separate processes.
echo "[test] cargo build --bin sagaflow" >&2
cargo build -p sagaflow-api --bin sagaflow

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

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

status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi

# The HTTP API fuzzed from its OpenAPI document (no 5xx; every 4xx is problem+json).
echo "[test] scripts/fuzz-api.sh" >&2
fuzz=0
scripts/fuzz-api.sh || fuzz=$?
[ "$fuzz" = 0 ] || echo "[test] the API fuzz run failed (exit $fuzz)" >&2

# The console in headless Chromium (installed when it can be; skipped, saying why, when not).
echo "[test] scripts/ui-screenshots.sh" >&2
ui=0
scripts/ui-screenshots.sh || ui=$?
[ "$ui" = 0 ] || echo "[test] the console check failed (exit $ui)" >&2
[ "$status" = 0 ] && [ "$fuzz" = 0 ] && [ "$ui" = 0 ]

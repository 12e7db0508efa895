#!/usr/bin/env bash
# Quick start: builds and runs `sagaflow serve`. With neither DATABASE_URL nor
# KAFKA_BOOTSTRAP_SERVERS set it runs embedded: SQLite in ./sagaflow-data and an
# in-process transport, API on http://127.0.0.1:8080. Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/build-deps.sh
exec cargo run --release -p sagaflow-api --bin sagaflow -- serve "$@"

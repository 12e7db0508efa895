#!/usr/bin/env bash
# Install (when missing) and start, idempotently, the real services Sagaflow's
# integration tests and production-shaped runs need on a Debian machine:
#   - PostgreSQL 15 from Debian's packages (cluster 15/main on port 5432)
#   - Tansu 0.6.0, a Kafka-protocol broker, with in-memory storage (port 9092)
# Prints the URLs to use as `export` lines, so `eval "$(scripts/services.sh)"` works.
# Progress goes to stderr; only the export lines go to stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${SAGAFLOW_STATE_DIR:-$ROOT/target/services}"
PG_USER="${SAGAFLOW_PG_USER:-sagaflow}"
PG_PASSWORD="${SAGAFLOW_PG_PASSWORD:-sagaflow}"
PG_DB="${SAGAFLOW_PG_DB:-sagaflow}"
PG_PORT="${SAGAFLOW_PG_PORT:-5432}"
KAFKA_PORT="${SAGAFLOW_KAFKA_PORT:-9092}"
TANSU_VERSION="0.6.0"

log() { echo "[services] $*" >&2; }
mkdir -p "$STATE_DIR"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2 tries=${3:-300}
  for _ in $(seq "$tries"); do
    port_open "$port" && return 0
    sleep 0.1
  done
  log "$what did not open port $port"; return 1
}

# --- build prerequisites for rdkafka's cmake-build -------------------------
"$ROOT/scripts/build-deps.sh"

# --- PostgreSQL 15 ------------------------------------------------------------
apt_install postgresql
if ! port_open "$PG_PORT"; then
  log "starting PostgreSQL 15"
  as_root pg_ctlcluster 15 main start >&2 || true
  wait_port "$PG_PORT" PostgreSQL
fi
psql_admin() { as_root su postgres -c "psql -v ON_ERROR_STOP=1 -qAtX -p $PG_PORT $*"; }
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname='$PG_USER'\"")" != "1" ]; then
  log "creating role $PG_USER"
  psql_admin "-c \"CREATE ROLE $PG_USER LOGIN SUPERUSER PASSWORD '$PG_PASSWORD'\"" >&2
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname='$PG_DB'\"")" != "1" ]; then
  log "creating database $PG_DB"
  psql_admin "-c \"CREATE DATABASE $PG_DB OWNER $PG_USER\"" >&2
fi

# --- Tansu (Kafka-protocol broker) --------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1 || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "installing tansu $TANSU_VERSION (cold: ~11 minutes)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,postgres >&2
fi
if ! port_open "$KAFKA_PORT"; then
  log "starting tansu on 127.0.0.1:$KAFKA_PORT (memory storage)"
  nohup tansu broker --cluster-id sagaflow \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$STATE_DIR/tansu.log" 2>&1 &
  echo $! >"$STATE_DIR/tansu.pid"
  wait_port "$KAFKA_PORT" tansu
fi

echo "export DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
echo "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT"
log "ready: PostgreSQL on :$PG_PORT, Kafka protocol on :$KAFKA_PORT"

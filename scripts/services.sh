#!/usr/bin/env bash
# Install (when missing) and start, idempotently, the real services Sagaflow's
# integration tests and production-shaped runs need on a Debian machine:
#   - PostgreSQL 15 from Debian's packages (cluster 15/main on port 5432)
#   - nisshi 0.8.1 (Tansu's successor), a Kafka-protocol broker, in-memory storage (port 9092)
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
NISSHI_VERSION="0.8.1"

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
# The bench runs 64 writers on each of two pools side by side; the default 100 is too few.
# pg_stat_statements lets the bench count statements per saga and profile them.
restart=""
if [ "$(psql_admin "-c \"SHOW max_connections\"")" -lt 300 ]; then
  log "raising max_connections to 300 (restarts PostgreSQL)"
  psql_admin "-c \"ALTER SYSTEM SET max_connections = 300\"" >&2
  restart=1
fi
if ! psql_admin "-c \"SHOW shared_preload_libraries\"" | grep -q pg_stat_statements; then
  log "loading pg_stat_statements (restarts PostgreSQL)"
  psql_admin "-c \"ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'\"" >&2
  restart=1
fi
if [ -n "$restart" ]; then
  as_root pg_ctlcluster 15 main restart >&2
  wait_port "$PG_PORT" PostgreSQL
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname='$PG_DB'\"")" != "1" ]; then
  log "creating database $PG_DB"
  psql_admin "-c \"CREATE DATABASE $PG_DB OWNER $PG_USER\"" >&2
fi

# --- nisshi (Kafka-protocol broker) -------------------------------------------
# nisshi 0.8.1 with --locked needs rustc >= 1.96; the machine's nightly toolchain builds it.
# Only the broker is built with nightly; Sagaflow itself stays on stable.
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v nisshi >/dev/null 2>&1 || ! nisshi --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
  if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    log "installing the nightly toolchain (for the broker binary only)"
    rustup toolchain install nightly --profile minimal >&2
  fi
  log "installing nisshi $NISSHI_VERSION (cold: ~13 minutes)"
  cargo +nightly install nisshi --version "$NISSHI_VERSION" --locked >&2
fi
if ! port_open "$KAFKA_PORT"; then
  log "starting nisshi on 127.0.0.1:$KAFKA_PORT (memory storage)"
  nohup nisshi broker --cluster-id sagaflow \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://nisshi/ >"$STATE_DIR/nisshi.log" 2>&1 &
  echo $! >"$STATE_DIR/nisshi.pid"
  wait_port "$KAFKA_PORT" nisshi
fi

echo "export DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
echo "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT"
log "ready: PostgreSQL on :$PG_PORT, Kafka protocol on :$KAFKA_PORT"

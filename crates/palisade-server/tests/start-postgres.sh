#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the palisade-server tests and print the URL
# to export as PALISADE_TEST_POSTGRES_URL. Uses the installed server binaries
# (no network); data lives under $PG_DIR (default /tmp/palisade-server-pg).
#
#   export PALISADE_TEST_POSTGRES_URL=$(crates/palisade-server/tests/start-postgres.sh)
#   cargo test -p palisade-server
#
# Stop it with: pg_ctl -D "$PG_DIR/data" stop  (as the same user that started it)
set -euo pipefail

PG_DIR=${PG_DIR:-/tmp/palisade-server-pg}
PG_PORT=${PG_PORT:-5433}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
[ -x "$PG_BIN/initdb" ] || { echo "no PostgreSQL binaries found (set PG_BIN)" >&2; exit 1; }

# initdb refuses to run as root: run as the postgres user then.
run() {
    if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

mkdir -p "$PG_DIR"
[ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    run "'$PG_BIN/initdb' -D '$PG_DIR/data' -U postgres --auth=trust >'$PG_DIR/initdb.log' 2>&1"
fi
if ! run "'$PG_BIN/pg_ctl' -D '$PG_DIR/data' status" >/dev/null 2>&1; then
    run "'$PG_BIN/pg_ctl' -D '$PG_DIR/data' -w -o \"-k '$PG_DIR' -p $PG_PORT -h 127.0.0.1 -c max_connections=300 -c fsync=on\" -l '$PG_DIR/log' start" >&2
fi
echo "postgres://postgres@127.0.0.1:$PG_PORT/postgres"

#!/usr/bin/env bash
# The local demo behind `make run`: a throwaway PostgreSQL under .run/ (unless
# DATABASE_URL is set), the schema migrated, and bin/ensgate serving
# Caddyfile.example until Ctrl-C. `run.sh stop` stops a left-over PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=${ENS_RUN_DIR:-$PWD/.run}
PG_DATA=$RUN_DIR/pg
PG_SOCKET=$RUN_DIR/pg-socket

as_postgres() {
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
	local ctl
	ctl=$(ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n1)
	[ -n "$ctl" ] || ctl=$(command -v pg_ctl || true)
	[ -n "$ctl" ] && dirname "$(readlink -f "$ctl")"
}

stop_postgres() {
	local bin
	bin=$(pg_bin) || return 0
	if [ -f "$PG_DATA/postmaster.pid" ]; then
		as_postgres "$bin/pg_ctl" stop -D "$PG_DATA" -m fast >/dev/null || true
	fi
}

start_postgres() {
	local bin
	if ! bin=$(pg_bin); then
		if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
			echo "installing PostgreSQL ..." >&2
			apt-get install -y -qq postgresql >/dev/null
			bin=$(pg_bin)
		else
			echo "PostgreSQL is not installed: apt-get install postgresql, or set DATABASE_URL" >&2
			exit 1
		fi
	fi
	mkdir -p "$RUN_DIR" "$PG_SOCKET"
	[ "$(id -u)" = 0 ] && chown postgres: "$PG_SOCKET"
	if [ ! -f "$PG_DATA/PG_VERSION" ]; then
		mkdir -p "$PG_DATA"
		[ "$(id -u)" = 0 ] && chown postgres: "$PG_DATA"
		as_postgres "$bin/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --no-locale >/dev/null
	fi
	if ! as_postgres "$bin/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; then
		as_postgres "$bin/pg_ctl" start -w -D "$PG_DATA" -l "$PG_SOCKET/postgres.log" \
			-o "-k $PG_SOCKET -c listen_addresses=" >/dev/null
	fi
	if ! as_postgres "$bin/psql" -h "$PG_SOCKET" -U postgres -tAc \
		"SELECT 1 FROM pg_database WHERE datname = 'ensgate'" | grep -q 1; then
		as_postgres "$bin/createdb" -h "$PG_SOCKET" -U postgres ensgate
	fi
	export DATABASE_URL="postgres://postgres@/ensgate?host=$PG_SOCKET&sslmode=disable"
	trap stop_postgres EXIT
	echo "PostgreSQL (throwaway) at $PG_DATA" >&2
}

# secret FILE: a random base64 value kept under .run/ so restarts reuse it.
secret() {
	[ -s "$RUN_DIR/$1" ] || (umask 077 && head -c 32 /dev/urandom | base64 >"$RUN_DIR/$1")
	cat "$RUN_DIR/$1"
}

if [ "${1:-}" = stop ]; then
	stop_postgres
	exit 0
fi

mkdir -p "$RUN_DIR"
[ -n "${DATABASE_URL:-}" ] || start_postgres

export ENS_LISTEN=${ENS_LISTEN:-:8080}
port=${ENS_LISTEN##*:}
export ENS_PUBLIC_URL=${ENS_PUBLIC_URL:-http://127.0.0.1:$port}
export ENS_MASTER_KEY=${ENS_MASTER_KEY:-$(secret master.key)}
export ENS_ADMIN_TOKEN=${ENS_ADMIN_TOKEN:-$(secret admin.token)}

ENSGATE_BIN=${ENSGATE_BIN:-bin/ensgate}
"$ENSGATE_BIN" ens migrate
echo "ENSGate on $ENS_LISTEN: curl $ENS_PUBLIC_URL/api/ens/alive (Ctrl-C stops)" >&2
# Not exec: the EXIT trap must stop PostgreSQL after Caddy ends.
"$ENSGATE_BIN" run --config Caddyfile.example --adapter caddyfile &
caddy_pid=$!
trap 'kill -INT $caddy_pid 2>/dev/null' INT TERM
wait $caddy_pid || true
wait $caddy_pid 2>/dev/null || true

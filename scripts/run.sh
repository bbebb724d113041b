#!/usr/bin/env bash
# The local demo behind `make run`:
#   - a throwaway PostgreSQL under .run/ (unless DATABASE_URL is set),
#   - the Exchange simulator (bin/ewssim) with the mailbox demo@contoso.test,
#   - the Microsoft Graph simulator (bin/graphsim, Exchange Online) with the
#     mailbox demo@fabrikam.test,
#   - local APNs and FCM sinks (bin/pushsink), which print every push,
#   - bin/ensgate serving Caddyfile.example,
#   - two scripted device registrations, one per mailbox, and a delivered
#     mail in each (bin/ensdemo),
# then it stays up until Ctrl-C. `run.sh stop` stops a left-over PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=${ENS_RUN_DIR:-$PWD/.run}
PG_DATA=$RUN_DIR/pg
PG_SOCKET=$RUN_DIR/pg-socket
BIN=${ENSGATE_BIN_DIR:-$PWD/bin}
DEMO_USER=demo@contoso.test
DEMO_PASSWORD=demo-password
DEMO_GRAPH_USER=demo@fabrikam.test

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
	mkdir -p "$PG_SOCKET"
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
	echo "run.sh: PostgreSQL (throwaway) at $PG_DATA" >&2
}

# secret FILE: a random base64 value kept under .run/ so restarts reuse it.
secret() {
	[ -s "$RUN_DIR/$1" ] || (umask 077 && head -c 32 /dev/urandom | base64 >"$RUN_DIR/$1")
	cat "$RUN_DIR/$1"
}

# wait_for WHAT COMMAND...: retry COMMAND for up to 60 s.
wait_for() {
	local what=$1
	shift
	for _ in $(seq 600); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "run.sh: $what did not come up" >&2
	exit 1
}

cleanup() {
	# Children first (ENSGate, simulators, sink), then PostgreSQL.
	local pids
	pids=$(jobs -p)
	[ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
	wait 2>/dev/null || true
	[ -z "${started_postgres:-}" ] || stop_postgres
}

if [ "${1:-}" = stop ]; then
	stop_postgres
	exit 0
fi

mkdir -p "$RUN_DIR"
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ -z "${DATABASE_URL:-}" ]; then
	start_postgres
	started_postgres=1
fi

export ENS_LISTEN=${ENS_LISTEN:-:8080}
port=${ENS_LISTEN##*:}
export ENS_PUBLIC_URL=${ENS_PUBLIC_URL:-http://127.0.0.1:$port}
export ENS_MASTER_KEY=${ENS_MASTER_KEY:-$(secret master.key)}
export ENS_ADMIN_TOKEN=${ENS_ADMIN_TOKEN:-$(secret admin.token)}
export ENS_PROXY_SECRET=${ENS_PROXY_SECRET:-$(secret proxy.secret)}
# Caddy's admin endpoint (bin/ensgate reload --address unix/$ENS_CADDY_ADMIN_SOCKET).
export ENS_CADDY_ADMIN_SOCKET=${ENS_CADDY_ADMIN_SOCKET:-$RUN_DIR/caddy-admin.sock}
sim_addr=${ENS_SIM_ADDR:-127.0.0.1:8081}
export ENS_EWS_UPSTREAM=${ENS_EWS_UPSTREAM:-http://$sim_addr}
ews_url=http://$sim_addr/EWS/Exchange.asmx
graph_sim_addr=${ENS_GRAPH_SIM_ADDR:-127.0.0.1:8082}

# The Exchange and Graph simulators (real time) and the push sinks. The
# Graph simulator takes http:// notification URLs, as ENS_PUBLIC_URL is here.
rm -f "$RUN_DIR/graphsim.env" # a stale one would announce a simulator not up yet
"$BIN/ewssim" -listen "$sim_addr" -user "$DEMO_USER:$DEMO_PASSWORD" -clock-scale 1m -log-level warn &
"$BIN/graphsim" -listen "$graph_sim_addr" -user "$DEMO_GRAPH_USER" -allow-http -clock-scale 1m \
	-env "$RUN_DIR/graphsim.env" -log-level warn &
"$BIN/pushsink" -dir "$RUN_DIR/pushsink" -apns-addr "${ENS_APNS_SINK_ADDR:-127.0.0.1:2197}" \
	-fcm-addr "${ENS_FCM_SINK_ADDR:-127.0.0.1:2198}" &
wait_for "the push sink" test -s "$RUN_DIR/pushsink/env"
set -a
# shellcheck disable=SC1091
. "$RUN_DIR/pushsink/env"
set +a
wait_for "the Exchange simulator" curl -fsS "http://$sim_addr/_sim/health"
wait_for "the Graph simulator" test -s "$RUN_DIR/graphsim.env"
set -a
# shellcheck disable=SC1091
. "$RUN_DIR/graphsim.env"
set +a

"$BIN/ensgate" ens migrate
# The demo tenant: its token is shown once, so keep it for the next run.
if [ ! -s "$RUN_DIR/demo.token" ]; then
	tenant=demo-$(date +%s)
	"$BIN/ensgate" ens tenant create --name "$tenant" --level 0 | tail -n1 >"$RUN_DIR/demo.token"
	echo "$tenant" >"$RUN_DIR/demo.tenant"
	"$BIN/ensgate" ens endpoint add --tenant "$tenant" --url "$ews_url" 2>/dev/null
fi
[ -s "$RUN_DIR/demo.tenant" ] ||
	"$BIN/ensgate" ens tenant list | awk '/^demo-/ {name=$1} END {print name}' >"$RUN_DIR/demo.tenant"
tenant=$(cat "$RUN_DIR/demo.tenant")
# Exchange Online through Graph: the simulator is the Graph root and the
# authority, the mail app's client id its default one (a run directory from
# before Graph, or a simulator on another address, gets it now).
if ! "$BIN/ensgate" ens endpoint list --tenant "$tenant" |
	awk -v u="$GRAPHSIM_URL" '$1 == "graph" && ($2 == u || $2 == u "/") {found = 1} END {exit !found}'; then
	"$BIN/ensgate" ens endpoint add --tenant "$tenant" --graph --client-id "$GRAPHSIM_CLIENT_ID" \
		--authority "$GRAPHSIM_AUTHORITY" --url "$GRAPHSIM_URL"
fi

"$BIN/ensgate" run --config Caddyfile.example --adapter caddyfile &
wait_for "ENSGate" curl -fsS "$ENS_PUBLIC_URL/api/ens/alive"
echo "run.sh: ENSGate on $ENS_LISTEN ($ENS_PUBLIC_URL/api/ens/alive); Ctrl-C stops everything" >&2

"$BIN/ensdemo" -api "$ENS_PUBLIC_URL/api/ens" -token "$(cat "$RUN_DIR/demo.token")" \
	-sim "http://$sim_addr" -ews-url "$ews_url" -user "$DEMO_USER" -password "$DEMO_PASSWORD" \
	-graph-sim "$GRAPHSIM_URL" -graph-url "$GRAPHSIM_URL" -graph-user "$DEMO_GRAPH_USER" \
	-graph-client-id "$GRAPHSIM_CLIENT_ID"

wait

#!/usr/bin/env bash
# check-modules.sh BINARY: BINARY must have exactly the modules of bin/ensgate
# (so an xcaddy build is equivalent to `make build`) and ENSGate's own.
set -euo pipefail
cd "$(dirname "$0")/.."
other=$1
for m in ens http.handlers.ens http.handlers.ews_proxy; do
	"$other" list-modules | grep -qx "$m" || { echo "$other lacks module $m" >&2; exit 1; }
done
if ! diff <(bin/ensgate list-modules | sort) <("$other" list-modules | sort); then
	echo "$other and bin/ensgate have different modules" >&2
	exit 1
fi
echo "$other has the same $(bin/ensgate list-modules | grep -c .) modules as bin/ensgate"

#!/usr/bin/env bash
# install-heimdal.sh: make Heimdal's kdc and kadmin available to the KCD tests
# (internal/testenv/kdctest) without replacing MIT Kerberos.
#
# Debian's heimdal-kdc and heimdal-clients conflict with MIT's krb5-kdc and
# krb5-user, so only their shared libraries are installed with apt; the two
# packages themselves are downloaded and unpacked into a private directory.
# Idempotent: a second run only prints the directory.
#
# Usage: scripts/install-heimdal.sh [DIR]   (default: $ENSGATE_HEIMDAL_DIR,
# else /opt/ensgate-heimdal). Needs root (or sudo) for apt-get.
set -euo pipefail

dir=${1:-${ENSGATE_HEIMDAL_DIR:-/opt/ensgate-heimdal}}
kdc=$dir/usr/lib/heimdal-servers/kdc
kadmin=$dir/usr/bin/kadmin.heimdal

ready() { [[ -x $kdc && -x $kadmin ]] && "$kadmin" --version >/dev/null 2>&1; }

if ready; then
	echo "$dir"
	exit 0
fi

sudo=()
if [[ $(id -u) != 0 ]]; then
	sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

# A fresh machine has empty package lists: apt-cache would know nothing.
if ! apt-cache show heimdal-kdc >/dev/null 2>&1; then
	"${sudo[@]}" apt-get update -qq
fi

# The libraries the two packages need (their lib* dependencies), which
# coexist with MIT's.
mapfile -t libs < <(apt-cache depends heimdal-kdc heimdal-clients |
	awk '$1 == "Depends:" && $2 ~ /^lib/ { print $2 }' | sort -u)
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${libs[@]}" >/dev/null

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt's sandbox user must be able to write the download directory.
chmod 0777 "$tmp"
(cd "$tmp" && apt-get download -qq heimdal-kdc heimdal-clients)
mkdir -p "$dir"
for deb in "$tmp"/*.deb; do
	dpkg-deb -x "$deb" "$dir"
done

if ! ready; then
	echo "install-heimdal: $kadmin does not run after unpacking" >&2
	exit 1
fi
echo "$dir"

#!/usr/bin/env bash
# install-test-deps.sh: what `make test` needs on a Debian machine, installed
# when missing. `make test` and .ci/run both call it.
#   - xmllint (libxml2-utils): EWS schema checks
#   - a PostgreSQL server: the integration tests start throwaway clusters
#   - python3-exchangelib: a real third-party EWS client against the simulator
#   - a Samba AD DC: the KCD tests' Active Directory KDC
#   - Heimdal's KDC, unpacked beside MIT Kerberos (scripts/install-heimdal.sh)
#   - nginx: the load balancer in front of the cluster tests' two nodes
# As root it installs what is missing (apt-get); otherwise it stops at once,
# naming what to install. Quiet and quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v xmllint >/dev/null || packages+=(libxml2-utils)
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || packages+=(postgresql)
/usr/bin/python3 -c 'import exchangelib' 2>/dev/null || packages+=(python3-exchangelib)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || packages+=(nginx)
samba=(samba samba-ad-provision samba-dsdb-modules samba-vfs-modules)
for p in "${samba[@]}"; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q ' installed$' || packages+=("$p")
done
heimdal=${ENSGATE_HEIMDAL_DIR:-/opt/ensgate-heimdal}
heimdal_ready() { "$heimdal/usr/bin/kadmin.heimdal" --version >/dev/null 2>&1 && [ -x "$heimdal/usr/lib/heimdal-servers/kdc" ]; }

if [ ${#packages[@]} -eq 0 ] && heimdal_ready; then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	missing=${packages[*]}
	heimdal_ready || missing="$missing${missing:+ and }Heimdal's KDC (scripts/install-heimdal.sh)"
	echo "make test needs: $missing. Run: sudo scripts/install-test-deps.sh" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if [ ${#packages[@]} -gt 0 ]; then
	echo "installing ${packages[*]} ..." >&2
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
bash scripts/install-heimdal.sh >/dev/null

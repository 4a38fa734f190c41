#!/usr/bin/env bash
# Installs the Debian packages ringproxy builds, tests and benchmarks with,
# only those missing (so `make run` is quick on a machine that has them).
# With the argument `bench`, also what `make bench` needs for its chart and
# `make bench-instr` for its counts.
set -euo pipefail
pkgs=(build-essential pkg-config libevent-dev libhiredis-dev libinih-dev libcmocka-dev libssl-dev openssl
      redis-server redis-sentinel redis-tools nutcracker)
[ "${1:-}" != bench ] || pkgs+=(gnuplot-nox valgrind stunnel4)
# `clients` (make test-clients): Node.js and npm, unless node and npm are
# there already (a Node.js from elsewhere, e.g. NodeSource, bundles npm and
# conflicts with Debian's npm package).
# Debian's node-redis too: what runs when the npm registry cannot be
# reached (a machine with only Debian's mirror).
if [ "${1:-}" = clients ]; then
    pkgs=(node-redis)
    command -v node >/dev/null || pkgs+=(nodejs)
    command -v npm >/dev/null || pkgs+=(npm)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"

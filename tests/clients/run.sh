#!/usr/bin/env bash
# make test-clients: real clients through ringproxy. Installs ioredis 5,
# node-redis 4 and node-redis 5 from the npm registry (package.json here,
# node_modules cached in $BUILD/clients, reinstalled when package.json
# changes), starts three redis-server shards and a ringproxy on free
# loopback ports, and runs clients.js through the proxy. Processes are
# stopped by PID. Without node it fails and says why. When the npm registry
# cannot be reached (a CI machine that has only Debian's package mirror),
# it runs node-redis 4 from Debian's node-redis package instead and says,
# in its last line, that ioredis and node-redis 5 (RESP3) did not run.
# Usage: tests/clients/run.sh [path/to/ringproxy]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
proxy_bin=${1:-$root/build/ringproxy}
cache=${CLIENTS_CACHE:-$root/build/clients}
# How long to wait for a process to answer PING, in tenths of a second.
start_wait=${CLIENTS_START_WAIT:-100}

fail() {
    echo "test-clients: FAILED: $*" >&2
    exit 1
}

command -v node >/dev/null || fail "node not found: install Node.js 18+ (tests/install-deps.sh clients)"
command -v npm >/dev/null || fail "npm not found: install npm (tests/install-deps.sh clients)"
command -v redis-server >/dev/null || fail "redis-server not found (tests/install-deps.sh)"
[ -x "$proxy_bin" ] || fail "no ringproxy binary at $proxy_bin (run make first)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || fail "node $(node --version) is too old: node-redis 5 needs 18 or later"

mkdir -p "$cache"
# What runs: every client from npm, or Debian's node-redis 4 alone.
clients=ioredis,redis4,redis5
node_path="$cache/node_modules"
redis4_module=redis4
degraded=""
if ! cmp -s "$here/package.json" "$cache/package.json" || [ ! -d "$cache/node_modules" ]; then
    echo "test-clients: installing the clients from the npm registry into $cache"
    rm -rf "$cache/node_modules" "$cache/package-lock.json"
    cp "$here/package.json" "$cache/package.json.new"
    mv "$cache/package.json.new" "$cache/package.json"
    if ! (cd "$cache" && timeout 180 npm install --no-audit --no-fund --loglevel=error --fetch-timeout=30000 --fetch-retries=1); then
        rm -rf "$cache/package.json" "$cache/node_modules" # so that the next run tries again
        [ -d /usr/share/nodejs/redis ] ||
            fail "npm install of ioredis and redis failed, and Debian's node-redis is not installed"
        echo "test-clients: the npm registry cannot be reached: running Debian's node-redis only" >&2
        clients=redis4
        node_path=/usr/share/nodejs
        redis4_module=redis
        degraded="node-redis $(NODE_PATH=$node_path node -p 'require("redis/package.json").version') from Debian only: ioredis 5 and node-redis 5 (RESP3) NOT run (npm registry unreachable)"
    fi
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until the server on port $1 answers PING; $2 names it.
wait_ping() {
    for _ in $(seq "$start_wait"); do
        [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    fail "$2 on port $1 did not answer PING"
}

shard_lines=""
for i in 1 2 3; do
    port=$(free_port)
    mkdir -p "$work/s$i"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/s$i" \
        >"$work/s$i.log" 2>&1 &
    pids+=($!)
    wait_ping "$port" "shard s$i"
    shard_lines+="s$i = 127.0.0.1:$port"$'\n'
done
proxy_port=$(free_port)
cat >"$work/proxy.ini" <<INI
[proxy]
listen = 127.0.0.1:$proxy_port
[shards]
$shard_lines
INI
"$proxy_bin" -c "$work/proxy.ini" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_ping "$proxy_port" ringproxy

echo "test-clients: node $(node --version), proxy on port $proxy_port"
if ! RINGPROXY_PORT=$proxy_port NODE_PATH="$node_path" CLIENTS="$clients" \
    REDIS4_MODULE="$redis4_module" node "$here/clients.js"; then
    echo "--- ringproxy log (last 40 lines)" >&2
    tail -n 40 "$work/proxy.log" >&2
    fail "a client step failed"
fi
[ -z "$degraded" ] || echo "test-clients: WARNING: $degraded" >&2

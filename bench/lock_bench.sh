#!/usr/bin/env bash
# Lock latency through ringproxy, for docs/locks.md: acquire + release of a
# quorum lock (LOCK.ACQUIRE + LOCK.RELEASE) with 3 and with 5 lock shards,
# against a plain SET NX PX + DEL on one shard, one client, p50/p99.
# Everything runs on loopback in a temp dir; every process started here is
# stopped by its PID on exit, and every wait is bounded.
#
# Usage: bench/lock_bench.sh   (after `make` and `make build/bench/lock_bench`)
# Environment: ROUNDS acquire+release pairs per run (20000),
# RINGPROXY (./ringproxy), WAIT_S bound on each wait (30).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-20000}
RINGPROXY=${RINGPROXY:-./ringproxy}
CLIENT=${CLIENT:-build/bench/lock_bench}

command -v redis-server >/dev/null || { echo "lock_bench: redis-server not found" >&2; exit 1; }
[ -x "$RINGPROXY" ] || { echo "lock_bench: $RINGPROXY not built (run make)" >&2; exit 1; }
[ -x "$CLIENT" ] || { echo "lock_bench: $CLIENT not built (make $CLIENT)" >&2; exit 1; }

BENCH_NAME=lock-bench
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init

ports=()
port=27300
for i in 1 2 3 4 5; do
    port=$(free_port "$port")
    redis-server --port "$port" --save "" --appendonly no --dir "$bench_dir" \
        >"$bench_dir/redis$i.log" 2>&1 &
    bench_pids+=($!)
    ports+=("$port")
    port=$((port + 1))
done
for p in "${ports[@]}"; do wait_ping "$p"; done

# One proxy per lock shard count, over the same five shards.
run() { # <label> <lock_shards>
    local label=$1 lock_shards=$2 proxy_port
    proxy_port=$(free_port $((port + 10)))
    {
        printf '[proxy]\nlisten = 127.0.0.1:%s\nwatch_config = no\nlock_shards = %s\n\n[shards]\n' \
            "$proxy_port" "$lock_shards"
        for i in 1 2 3 4 5; do printf 's%d = 127.0.0.1:%s\n' "$i" "${ports[$((i - 1))]}"; done
    } >"$bench_dir/$label.ini"
    "$RINGPROXY" -c "$bench_dir/$label.ini" >"$bench_dir/$label.log" 2>&1 &
    local pid=$!
    bench_pids+=("$pid")
    wait_ping "$proxy_port"
    local deadline=$((SECONDS + ${WAIT_S:-30}))
    until redis-cli -p "$proxy_port" LOCK.INFO probe 2>/dev/null | grep -qv LOCKUNAVAILABLE; do
        [ $SECONDS -lt $deadline ] || bench_die "lock service of $label not ready"
        sleep 0.05
    done
    if [ "$label" = lock3 ]; then
        echo "SET NX PX + DEL (one shard):   $("$CLIENT" "$proxy_port" setnx "$ROUNDS")"
    fi
    echo "LOCK.* with $label:            $("$CLIENT" "$proxy_port" quorum "$ROUNDS")"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

echo "lock_bench: $ROUNDS acquire+release pairs per run, one client, $(nproc) cores"
run lock3 "s1,s2,s3"
run lock5 "all"

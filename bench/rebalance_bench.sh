#!/usr/bin/env bash
# Rebalancing speed and its cost to clients, for bench/README.md:
#  1. keys moved per second with default settings: KEYS small keys through
#     ringproxy on 3 shards, a 4th added to proxy.ini, PROXY RELOAD, time
#     until INFO rebalance says idle;
#  2. redis-benchmark -c 50 (SET and GET) p50/p99 through the proxy while
#     idle, then while a migration runs (s4 drained again, slowed down with
#     SLOW_RATE so that it outlasts the benchmark).
# Everything runs on loopback in a temp dir; every process started here is
# stopped by its PID on exit, and every wait is bounded.
#
# Usage: bench/rebalance_bench.sh   (after `make`)
# Environment: KEYS (100000), REQUESTS per benchmark test (200000),
# SLOW_RATE keys/s per source during the latency run (1000),
# RINGPROXY (./ringproxy), WAIT_S bound on each wait (120).
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-100000}
REQUESTS=${REQUESTS:-200000}
SLOW_RATE=${SLOW_RATE:-1000}
RINGPROXY=${RINGPROXY:-./ringproxy}
WAIT_S=${WAIT_S:-120}

for tool in redis-server redis-cli redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "rebalance_bench: $tool not found" >&2; exit 1; }
done
[ -x "$RINGPROXY" ] || { echo "rebalance_bench: $RINGPROXY not built (run make)" >&2; exit 1; }

BENCH_NAME=rebalance-bench
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_init
dir=$bench_dir

info_field() { # port field
    redis-cli -p "$1" INFO rebalance | tr -d '\r' | awk -F: -v f="$2" '$1 == f { print $2 }'
}

# Waits (bounded) until the proxy's migration count reaches $1 and it is idle.
wait_idle() {
    local deadline=$((SECONDS + WAIT_S))
    until [ "$(info_field "$proxy_port" rebalance_state)" = idle ] &&
        [ "$(info_field "$proxy_port" rebalance_completed)" -ge "$1" ]; do
        [ $SECONDS -lt $deadline ] || { echo "rebalance_bench: migration still running after ${WAIT_S}s" >&2; exit 1; }
        sleep 0.02
    done
}

reload() {
    local reply
    reply=$(redis-cli -p "$proxy_port" PROXY RELOAD)
    [ "$reply" = OK ] || { echo "rebalance_bench: PROXY RELOAD: $reply" >&2; exit 1; }
}

# One redis-benchmark test ($1: set or get) as "TEST p50_ms p99_ms rps"
# (from its CSV row), then " running" or " idle": the migration state when
# it ended.
bench() {
    timeout "$WAIT_S" redis-benchmark -h 127.0.0.1 -p "$proxy_port" -c 50 -n "$REQUESTS" \
        -r "$KEYS" -t "$1" --csv 2>/dev/null |
        awk -F'","' 'NR > 1 { sub(/^"/, "", $1); printf "%s %s %s %s", $1, $5, $7, $2 }'
    echo " $(info_field "$proxy_port" rebalance_state)"
}

now() { date +%s.%N; }

port=$(free_port 27300)
shard_ports=()
for i in 1 2 3 4; do
    port=$(free_port "$port")
    mkdir -p "$dir/s$i"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir/s$i" \
        --logfile "$dir/s$i/redis.log" --daemonize no &
    bench_pids+=($!)
    shard_ports+=("$port")
    port=$((port + 1))
done
for p in "${shard_ports[@]}"; do wait_ping "$p"; done
proxy_port=$(free_port "$port")

ini=$dir/proxy.ini
write_ini() { # rate nshards
    {
        printf '[proxy]\nlisten = 127.0.0.1:%s\nwatch_config = no\nlog_level = notice\n' "$proxy_port"
        [ "$1" = default ] || printf 'migrate_rate = %s\n' "$1"
        printf '[shards]\n'
        for i in $(seq 1 "$2"); do printf 's%s = 127.0.0.1:%s\n' "$i" "${shard_ports[$((i - 1))]}"; done
    } >"$ini.new"
    mv "$ini.new" "$ini"
}
write_ini default 3
"$RINGPROXY" -c "$ini" 2>"$dir/ringproxy.log" &
bench_pids+=($!)
wait_ping "$proxy_port"

# The keys redis-benchmark -r KEYS touches: key:000000000000 ... (16 bytes),
# 3-byte values, written through the proxy.
awk -v n="$KEYS" 'BEGIN { for (i = 0; i < n; i++)
    printf "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$3\r\nval\r\n", i }' |
    timeout "$WAIT_S" redis-cli -p "$proxy_port" --pipe >/dev/null
loaded=$(redis-cli -p "$proxy_port" DBSIZE)
[ "$loaded" -eq "$KEYS" ] || { echo "rebalance_bench: loaded $loaded keys, not $KEYS" >&2; exit 1; }

echo "ringproxy rebalance benchmark: $KEYS keys of 16 + 3 bytes, 3 shards + 1, loopback, $(nproc) CPUs"
echo
echo "== idle: redis-benchmark -c 50 -n $REQUESTS -r $KEYS (test p50_ms p99_ms rps state)"
for t in set get; do bench $t; done | tee "$dir/idle.txt"

echo
echo "== adding s4 with default settings (migrate_batch 1000, migrate_rate 0)"
write_ini default 4
t0=$(now)
reload
wait_idle 1
t1=$(now)
scanned=$(info_field "$proxy_port" rebalance_keys_scanned)
moved=$(info_field "$proxy_port" rebalance_keys_moved)
on_s4=$(redis-cli -p "${shard_ports[3]}" DBSIZE)
awk -v t0="$t0" -v t1="$t1" -v s="$scanned" -v m="$moved" -v d="$on_s4" 'BEGIN {
    t = t1 - t0
    printf "%.3f s: %d keys scanned (%.0f/s), %d moved (%.0f/s); s4 holds %d\n",
        t, s, s / t, m, m / t, d }'

echo
echo "== during a migration: s4 drained at migrate_rate $SLOW_RATE (test p50_ms p99_ms rps state)"
# Each test starts a migration of its own, so that both run during one: a
# client touching a key moves it first, so the first test alone would leave
# the second little to do.
completed=1
: >"$dir/busy.txt"
for t in set get; do
    write_ini "$SLOW_RATE" 3
    reload
    bench $t | tee -a "$dir/busy.txt"
    completed=$((completed + 1))
    wait_idle $completed
    write_ini default 4
    reload
    completed=$((completed + 1))
    wait_idle $completed
done
grep -q idle "$dir/busy.txt" && echo "(a migration ended before its test did: lower SLOW_RATE)"
write_ini default 3
reload
completed=$((completed + 1))
wait_idle $completed
left=$(redis-cli -p "${shard_ports[3]}" DBSIZE)
total=$(redis-cli -p "$proxy_port" DBSIZE)
echo "after the drain: s4 holds $left keys, the proxy $total"

echo
echo "== p99 during / idle"
awk 'NR == FNR { p50[$1] = $2; p99[$1] = $3; rps[$1] = $4; next }
     $1 in p99 { printf "%s: p50 %s -> %s ms, p99 %s -> %s ms (%.2fx), rps %s -> %s\n",
                 $1, p50[$1], $2, p99[$1], $3, (p99[$1] > 0 ? $3 / p99[$1] : 0), rps[$1], $4 }' \
    "$dir/idle.txt" "$dir/busy.txt"

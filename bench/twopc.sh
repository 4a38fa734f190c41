#!/usr/bin/env bash
# The cost of an atomic cross-shard write: a 2-shard MSET through ringproxy
# with cross_shard = atomic (two-phase commit, docs/transactions.md) against
# the same MSET with cross_shard = best_effort (split, no commit protocol),
# and a 1-shard MSET for reference. Latency p50/p99 and requests per second
# from redis-benchmark at -P 1 and -P 32, each mode run in turns (rounds)
# so that a busy machine hurts all of them alike; the median round is kept.
#
#   bench/twopc.sh [--out DIR] [--requests N] [--clients C] [--rounds R]
set -euo pipefail
cd "$(dirname "$0")/.."

out="" requests=20000 clients=20 rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "usage: bench/twopc.sh [--out DIR] [--requests N] [--clients C] [--rounds R]" >&2; exit 2 ;;
    esac
done

work=$(mktemp -d /tmp/ringproxy-bench-twopc-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 1 100); do
        redis-cli -p "$1" PING >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "port $1 does not answer" >&2
    exit 1
}

ports=()
for i in 1 2; do
    p=$(free_port)
    ports+=("$p")
    redis-server --port "$p" --save '' --appendonly no --dir "$work" \
        --logfile "$work/redis$i.log" &
    pids+=($!)
    wait_port "$p"
done

# Starts the proxy in the given mode; sets proxy_pid and proxy_port.
start_proxy() {
    proxy_port=$(free_port)
    cat >"$work/proxy.ini" <<EOF
[proxy]
listen = 127.0.0.1:$proxy_port
cross_shard = $1
log_level = warn
watch_config = no
[shards]
s1 = 127.0.0.1:${ports[0]}
s2 = 127.0.0.1:${ports[1]}
EOF
    build/ringproxy -c "$work/proxy.ini" 2>>"$work/proxy.log" &
    proxy_pid=$!
    wait_port "$proxy_port"
    sleep 0.5 # the store's first check and restore
}

stop_proxy() {
    kill "$proxy_pid"
    wait "$proxy_pid" 2>/dev/null || true
}

# Two hash tags whose keys live on s1 and on s2.
start_proxy best_effort
tag1="" tag2=""
for i in $(seq 0 100); do
    owner=$(redis-cli -p "$proxy_port" PROXY RING "t$i" | head -1)
    [ "$owner" = s1 ] && [ -z "$tag1" ] && tag1="t$i"
    [ "$owner" = s2 ] && [ -z "$tag2" ] && tag2="t$i"
done
stop_proxy

# One redis-benchmark run: prints "rps p50 p99".
measure() { # mode pipeline keys...
    local mode=$1 pipeline=$2
    shift 2
    start_proxy "$mode"
    redis-benchmark -p "$proxy_port" -n "$requests" -c "$clients" -P "$pipeline" -r 1000000 \
        --csv MSET "$@" | tail -1 | tr -d '"' | awk -F, '{print $2, $5, $7}'
    stop_proxy
}

two=("{$tag1}:__rand_int__" v "{$tag2}:__rand_int__" v)
one=("{$tag1}:__rand_int__" v "{$tag1}:x:__rand_int__" v)
results="$work/raw.txt"
: >"$results"
for round in $(seq 1 "$rounds"); do
    for pipeline in 1 32; do
        echo "atomic-2shard $pipeline $round $(measure atomic "$pipeline" "${two[@]}")" >>"$results"
        echo "best_effort-2shard $pipeline $round $(measure best_effort "$pipeline" "${two[@]}")" >>"$results"
        echo "atomic-1shard $pipeline $round $(measure atomic "$pipeline" "${one[@]}")" >>"$results"
    done
done

summary() {
    echo "bench/twopc.sh $(date -u '+%Y-%m-%d %H:%M'), commit $(git rev-parse --short HEAD)"
    echo "redis-benchmark -n $requests -c $clients -r 1000000 MSET of 2 keys, 2 shards, $rounds rounds (median by rps)"
    echo
    echo "| case | -P | requests/s | p50 ms | p99 ms |"
    echo "|---|---:|---:|---:|---:|"
    for pipeline in 1 32; do
        for case in atomic-2shard best_effort-2shard atomic-1shard; do
            awk -v c="$case" -v p="$pipeline" '$1 == c && $2 == p {print $4, $5, $6}' "$results" |
                sort -n | awk -v c="$case" -v p="$pipeline" '{a[NR] = $0} END {
                    split(a[int((NR + 1) / 2)], m, " ");
                    printf "| %s | %s | %.0f | %s | %s |\n", c, p, m[1], m[2], m[3] }'
        done
    done
}
summary | tee "$work/summary.txt"
if [ -n "$out" ]; then
    mkdir -p "$out"
    cp "$work/summary.txt" "$results" "$out/"
fi

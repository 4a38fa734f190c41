#!/usr/bin/env bash
# Starts one redis-server per [shards] line of the given ini (127.0.0.1 only),
# then ringproxy in the foreground. Ctrl-C (or ringproxy exiting) stops all of
# it; shards are stopped by the PIDs recorded here.
set -euo pipefail
ini=${1:-proxy.ini}
dir=$(mktemp -d /tmp/ringproxy-run.XXXXXX)
pids=()
ports=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
while read -r name port; do
    mkdir -p "$dir/$name"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --dir "$dir/$name" --logfile "$dir/$name/redis.log" &
    pids+=($!)
    ports+=("$port")
    echo "shard $name: redis-server on 127.0.0.1:$port (pid $!)"
done < <(awk '/^\[/{s=$0} s=="[shards]" && /^[A-Za-z0-9_.-]+[ \t]*=/ {
            split($0, kv, "="); gsub(/[ \t]/, "", kv[1]); split(kv[2], a, " ");
            n = split(a[1], hp, ":"); if (hp[1] ~ /^(127\.0\.0\.1|localhost)$/) print kv[1], hp[n] }' "$ini")
# Wait (at most 5 s) until every shard answers, so the proxy finds them up.
for _ in $(seq 50); do
    ok=1
    for port in "${ports[@]}"; do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] || ok=0
    done
    [ $ok -eq 1 ] && break
    sleep 0.1
done
echo "ringproxy -c $ini (Ctrl-C stops the proxy and the shards)"
./ringproxy -c "$ini" &
pids+=($!)
wait "${pids[-1]}"

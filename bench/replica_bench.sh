#!/usr/bin/env bash
# Reads from replicas and the cost of min_replicas_to_ack: two shards, each
# a master with one replica (plain host:port lines; the replicas are found
# from the masters' ROLE), behind three proxies over the same shards:
#   master  read_from = master (the default)
#   replica read_from = replica
#   ack     min_replicas_to_ack = 1
# redis-benchmark GET through "master" and "replica", SET through "master"
# and "ack", at -P 1 and -P 32, -c 50, RUNS times each, interleaved (so
# that a burst of load from elsewhere hits every setting alike); min,
# median and max kept.
#
#   bench/replica_bench.sh [--out DIR] [--runs N] [--quick]
#
# Writes DIR/raw.csv (every run), DIR/summary.csv and DIR/summary.txt
# (medians, where the GETs were served, machine load). Needs redis-server,
# redis-cli, redis-benchmark and ./ringproxy (make).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=replica
# shellcheck source=bench/lib.sh
source bench/lib.sh

out="bench/results/$(date +%F-%H%M)-replica"
runs=5
requests_p1=100000
requests_p32=400000
while [ $# -gt 0 ]; do
    case $1 in
    --out) out=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --quick) runs=1 requests_p1=20000 requests_p32=100000; shift ;;
    *) bench_die "unknown option $1" ;;
    esac
done
[ -x ./ringproxy ] || bench_die "build ./ringproxy first (make)"
mkdir -p "$out"
bench_init

start_shards 2
replica_ports=()
for i in 1 2; do
    next_port
    mkdir -p "$bench_dir/r$i"
    bench_spawn "$bench_dir/r$i/redis.log" redis-server --bind 127.0.0.1 --port "$port_out" \
        --save '' --appendonly no --dir "$bench_dir/r$i" --daemonize no \
        --replicaof 127.0.0.1 "${shard_ports[$((i - 1))]}"
    replica_ports+=("$port_out")
    wait_ping "$port_out" "$spawned_pid"
done
for p in "${replica_ports[@]}"; do
    deadline=$((SECONDS + ${WAIT_S:-30}))
    until redis-cli -p "$p" INFO replication | grep -q 'master_link_status:up'; do
        [ $SECONDS -lt $deadline ] || bench_die "replica $p never synced"
        sleep 0.1
    done
done

declare -A proxy_port
for kind in master replica ack; do
    next_port
    proxy_port[$kind]=$port_out
    ini="$bench_dir/$kind.ini"
    write_ringproxy_ini "$ini" "$port_out" "${shard_ports[@]}"
    case $kind in
    replica) sed -i 's/^\[shards\]$/read_from = replica\n[shards]/' "$ini" ;;
    ack) sed -i 's/^\[shards\]$/min_replicas_to_ack = 1\n[shards]/' "$ini" ;;
    esac
    bench_spawn "$bench_dir/$kind.log" ./ringproxy -c "$ini"
    wait_ping "$port_out" "$spawned_pid"
done
# The replica proxy reads from both replicas once its probes found them.
deadline=$((SECONDS + ${WAIT_S:-30}))
until [ "$(redis-cli -p "${proxy_port[replica]}" INFO shards | grep -c 'read_replica=127')" = 2 ]; do
    [ $SECONDS -lt $deadline ] || bench_die "the replica proxy found no replicas"
    sleep 0.1
done

bench_log "prefilling 10000 keys"
redis-benchmark -p "${proxy_port[master]}" -t set -r 10000 -n 50000 -c 20 -P 16 -q >/dev/null
for p in "${shard_ports[@]}"; do redis-cli -p "$p" WAIT 1 5000 >/dev/null; done

gets_on_replicas() {
    local total=0 p n
    for p in "${replica_ports[@]}"; do
        n=$(redis-cli -p "$p" INFO commandstats | sed -n 's/^cmdstat_get:calls=\([0-9]*\),.*/\1/p')
        total=$((total + ${n:-0}))
    done
    echo "$total"
}

echo "proxy,test,pipeline,run,rps,p50_ms" >"$out/raw.csv"
machine_ticks
busy0=$busy_out total0=$total_out
replica_gets0=$(gets_on_replicas)
for ((run = 1; run <= runs; run++)); do
    for pipeline in 1 32; do
        n=$requests_p1
        [ "$pipeline" = 1 ] || n=$requests_p32
        for pair in master:get replica:get master:set ack:set; do
            kind=${pair%%:*} test=${pair##*:}
            line=$(redis-benchmark -p "${proxy_port[$kind]}" -t "$test" -r 10000 -n "$n" -c 50 \
                -P "$pipeline" --csv | tail -n 1)
            # "GET","41000.00","1.1","0.2","0.9",...: rps is field 2, p50 field 5
            rps=$(echo "$line" | cut -d, -f2 | tr -d '"')
            p50=$(echo "$line" | cut -d, -f5 | tr -d '"')
            echo "$kind,$test,$pipeline,$run,$rps,$p50" >>"$out/raw.csv"
            bench_log "$kind $test -P $pipeline run $run: $rps rps, p50 $p50 ms"
        done
    done
done
machine_ticks
replica_gets=$(($(gets_on_replicas) - replica_gets0))

# stat KIND TEST PIPELINE FIELD: "min,median,max" of a raw.csv column.
stat() {
    awk -F, -v k="$1" -v t="$2" -v p="$3" -v f="$4" '$1 == k && $2 == t && $3 == p { print $f }' \
        "$out/raw.csv" | sort -g |
        awk '{ v[NR] = $1 } END { printf "%s,%s,%s", v[1], v[int((NR + 1) / 2)], v[NR] }'
}
echo "proxy,test,pipeline,min_rps,median_rps,max_rps,min_p50_ms,median_p50_ms,max_p50_ms" \
    >"$out/summary.csv"
for pipeline in 1 32; do
    for pair in master:get replica:get master:set ack:set; do
        kind=${pair%%:*} test=${pair##*:}
        echo "$kind,$test,$pipeline,$(stat "$kind" "$test" "$pipeline" 5),$(stat "$kind" "$test" \
            "$pipeline" 6)" >>"$out/summary.csv"
    done
done
{
    echo "replica_bench: 2 shards (master + replica each, loopback), 3 proxies, -c 50,"
    echo "$runs run(s) each (min, median, max); $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "machine busy during the runs: $(((busy_out - busy0) * 100 / (total_out - total0)))%"
    echo "GETs the replicas served (all runs): $replica_gets"
    echo
    column -t -s, "$out/summary.csv"
} >"$out/summary.txt"
cat "$out/summary.txt"

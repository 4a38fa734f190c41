#!/usr/bin/env bash
# Where the CPU goes, kernel included, for bench/README.md ("Where the
# cycles go"): callgrind (bench/instr.sh) sees only the proxy's user-space
# instructions, but a proxy's cost is mostly in the kernel. This samples the
# whole machine with `perf record -a` (cpu-clock; the VM has no hardware
# counters) during one redis-benchmark run through twemproxy and one through
# ringproxy over the same 4 shards, unpinned, and prints for each:
#  - the share of all CPU time taken by each program, split kernel / user;
#  - the proxy's top symbols (kernel [k] and user [.]).
# Every process started here is stopped by its PID on exit; waits are bounded.
#
# Usage: bench/profile.sh [TEST [PIPELINE [REQUESTS]]]   (default: set 1 300000)
# Environment: RINGPROXY (./ringproxy), NUTCRACKER (nutcracker), TOP (20),
# OUT (keep the perf.data files there).
set -euo pipefail
cd "$(dirname "$0")/.."

TEST=${1:-set}
PIPELINE=${2:-1}
REQUESTS=${3:-300000}
RINGPROXY=${RINGPROXY:-./ringproxy}
NUTCRACKER=${NUTCRACKER:-nutcracker}
TOP=${TOP:-20}
WAIT_S=30

for tool in perf redis-server redis-cli redis-benchmark "$NUTCRACKER"; do
    command -v "$tool" >/dev/null || { echo "profile: $tool not found" >&2; exit 1; }
done
[ -x "$RINGPROXY" ] || { echo "profile: $RINGPROXY not built (run make)" >&2; exit 1; }
RINGPROXY=$(realpath "$RINGPROXY")

BENCH_NAME=profile
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_init
dir=$bench_dir
out=${OUT:-$dir}
mkdir -p "$out"

port=$(free_port 9700)
shard_ports=()
for i in 1 2 3 4; do
    shard_ports+=("$port")
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --logfile "$dir/shard$i.log" &
    bench_pids+=($!)
    port=$(free_port $((port + 1)))
done
for p in "${shard_ports[@]}"; do wait_ping "$p"; done

nc_port=$port
{
    echo "p:"
    echo "  listen: 127.0.0.1:$nc_port"
    echo "  hash: fnv1a_64"
    echo "  distribution: ketama"
    echo "  redis: true"
    echo "  preconnect: true"
    echo "  servers:"
    for i in 1 2 3 4; do echo "   - 127.0.0.1:${shard_ports[$((i - 1))]}:1 s$i"; done
} >"$dir/nc.yml"
nc_stats=$(free_port $((nc_port + 1)))
"$NUTCRACKER" -c "$dir/nc.yml" -s "$nc_stats" -a 127.0.0.1 -v 4 -o "$dir/nc.log" &
bench_pids+=($!)

rp_port=$(free_port $((nc_stats + 1)))
{
    echo "[proxy]"
    echo "listen = 127.0.0.1:$rp_port"
    echo "log_level = warn"
    echo "[shards]"
    for i in 1 2 3 4; do echo "s$i = 127.0.0.1:${shard_ports[$((i - 1))]}"; done
} >"$dir/proxy.ini"
"$RINGPROXY" -c "$dir/proxy.ini" 2>"$dir/ringproxy.log" &
bench_pids+=($!)
wait_ping "$nc_port"
wait_ping "$rp_port"

echo "perf record -a -e cpu-clock during redis-benchmark -c 50 -P $PIPELINE -t $TEST -n $REQUESTS -r 100000"
echo "(unpinned, 4 shards, $(nproc) CPUs; shares are of all CPU time of the machine)"
for target in "twemproxy $nc_port nutcracker" "ringproxy $rp_port ringproxy"; do
    read -r name p comm <<<"$target"
    # Warm up: keys exist, connections are up, buffers are sized.
    timeout "$WAIT_S" redis-benchmark -p "$p" -c 50 -n 50000 -P "$PIPELINE" -r 100000 -t "$TEST" -q \
        >/dev/null 2>&1
    data="$out/$name-$TEST-P$PIPELINE.data"
    csv=$(timeout 300 perf record -q -e cpu-clock -F 2000 -a -g -o "$data" -- \
        redis-benchmark -p "$p" -c 50 -n "$REQUESTS" -P "$PIPELINE" -r 100000 -t "$TEST" --csv \
        2>/dev/null | tail -1 | tr -d '"')
    echo
    echo "== $name: $(cut -d, -f2 <<<"$csv") requests/s, p50 $(cut -d, -f5 <<<"$csv") ms, p99 $(cut -d, -f7 <<<"$csv") ms"
    # Per program: kernel and user shares (redis-server's own code shows as
    # the redis-check-rdb DSO: the same binary under another name).
    perf report -i "$data" --no-children --sort comm,dso -g none --stdio 2>/dev/null |
        awk '/^ +[0-9.]+%/ { pct = $1; sub("%", "", pct); comm = $2; dso = $3
                 if (comm ~ /^(swapper|redis-server|redis-benchmark|nutcracker|ringproxy)$/) {
                     if (dso == "[kernel.kallsyms]") k[comm] += pct; else u[comm] += pct; seen[comm] = 1 } }
             END { for (c in seen) if (k[c] + u[c] >= 0.05) printf "  %-16s %8.1f %8.1f %8.1f\n", c, k[c] + u[c], k[c], u[c] }' |
        sort -k2,2 -nr | { printf "  %-16s %8s %8s %8s\n" program total% kernel% user%; cat; }
    echo "  top $TOP symbols of $comm (% of all CPU time):"
    perf report -i "$data" --no-children --comm "$comm" --sort sym -g none --stdio 2>/dev/null |
        awk -v top="$TOP" '/^ +[0-9.]+%/ && n < top { n++; print "   " $0 }'
done

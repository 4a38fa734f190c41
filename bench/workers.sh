#!/usr/bin/env bash
# workers = 2 against workers = 1: redis-benchmark -P 32 through two
# ringproxy instances over the same 4 shards, one with each setting, run one
# after the other (order alternated round to round) so the runs compared are
# seconds apart on a machine whose load changes. Per run: requests/s, CPU
# seconds per million requests of the proxy (supervisor and workers), of
# the shards and of redis-benchmark, and how busy the whole machine was.
# Medians over the rounds.
#
#   bench/workers.sh [--rounds R] [--requests N] [--tests LIST] [--clients C]
#                    [--threads T] [--out DIR] [--binary PATH]
#
# --threads is redis-benchmark's --threads (default 1): on a small machine
# the client itself is a bottleneck worth seeing.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=workers
# shellcheck source=bench/lib.sh
. bench/lib.sh

rounds=5 requests=400000 tests=set,get clients=50 threads=1 pipeline=32
binary=build/ringproxy out=""
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift ;;
        --requests) requests=$2; shift ;;
        --tests) tests=$2; shift ;;
        --clients) clients=$2; shift ;;
        --threads) threads=$2; shift ;;
        --binary) binary=$2; shift ;;
        --out) out=$2; shift ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) bench_die "unknown option $1 (--help)" ;;
    esac
    shift
done
[ -x "$binary" ] || bench_die "$binary not built (make)"
out=${out:-bench/results/$(date -u +%Y-%m-%d-%H%M)-workers}
mkdir -p "$out"
bench_init

start_shards 4
declare -A proxy_port proxy_pid
for w in 1 2; do
    next_port
    write_ringproxy_ini "$bench_dir/w$w.ini" "$port_out" "${shard_ports[@]}"
    sed -i "s/^\[proxy\]$/[proxy]\nworkers = $w/" "$bench_dir/w$w.ini"
    bench_spawn "$bench_dir/w$w.log" "$binary" -c "$bench_dir/w$w.ini"
    proxy_port[$w]=$port_out
    proxy_pid[$w]=$spawned_pid
    wait_ping "$port_out" "$spawned_pid"
done

# The processes of proxy $1: the started one and its children (workers).
proxy_procs() {
    local pid=$1 kids=""
    read -r kids <"/proc/$pid/task/$pid/children" 2>/dev/null || true
    procs_out="$pid $kids"
}

raw=$out/raw.csv
echo "round,workers,test,rps,proxy_cpu_s_per_m,shards_cpu_s_per_m,client_cpu_s_per_m,machine_busy_pct" >"$raw"
hz=$(getconf CLK_TCK)
for ((r = 1; r <= rounds; r++)); do
    order="1 2"
    [ $((r % 2)) = 0 ] && order="2 1"
    for t in ${tests//,/ }; do
        for w in $order; do
            proxy_procs "${proxy_pid[$w]}"
            # shellcheck disable=SC2086
            proc_ticks $procs_out
            p0=$ticks_out
            proc_ticks "${shard_pids[@]}"
            s0=$ticks_out
            child_ticks
            c0=$ticks_out
            machine_ticks
            b0=$busy_out m0=$total_out
            line=$(redis-benchmark -p "${proxy_port[$w]}" -c "$clients" -P "$pipeline" \
                --threads "$threads" -r 100000 -d 3 -t "$t" -n "$requests" --csv 2>/dev/null |
                tail -1)
            # shellcheck disable=SC2086
            proc_ticks $procs_out
            p1=$ticks_out
            proc_ticks "${shard_pids[@]}"
            s1=$ticks_out
            child_ticks
            c1=$ticks_out
            machine_ticks
            rps=$(echo "$line" | cut -d, -f2 | tr -d '"')
            awk -v r="$r" -v w="$w" -v t="$t" -v rps="$rps" -v n="$requests" -v hz="$hz" \
                -v p=$((p1 - p0)) -v s=$((s1 - s0)) -v c=$((c1 - c0)) \
                -v busy=$((busy_out - b0)) -v total=$((total_out - m0)) \
                'BEGIN { m = n / 1e6; printf "%d,%d,%s,%.0f,%.2f,%.2f,%.2f,%.0f\n", r, w, t, rps,
                         p / hz / m, s / hz / m, c / hz / m, total ? 100 * busy / total : 0 }' >>"$raw"
            bench_log "round $r $t workers=$w: $rps requests/s"
        done
    done
done

# Medians per (test, workers), and the workers=2 / workers=1 ratio of the
# per-round requests/s.
{
    echo "workers = 2 vs workers = 1: redis-benchmark -c $clients -P $pipeline --threads $threads" \
        "-d 3 -r 100000 -n $requests, $rounds rounds, 4 shards, $(nproc) CPUs," \
        "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    printf '%-5s %-8s %10s %12s %12s %12s %10s\n' test workers rps proxy_cpu shards_cpu \
        client_cpu busy%
    for t in ${tests//,/ }; do
        for w in 1 2; do
            awk -F, -v t="$t" -v w="$w" '
                NR > 1 && $2 == w && $3 == t { n++; rps[n] = $4; p[n] = $5; s[n] = $6; c[n] = $7; b[n] = $8 }
                function med(a, n,   i, j, x) {
                    for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
                END { printf "%-5s %-8s %10.0f %12.2f %12.2f %12.2f %10.0f\n", t, w, med(rps, n),
                      med(p, n), med(s, n), med(c, n), med(b, n) }' "$raw"
        done
        awk -F, -v t="$t" '
            NR > 1 && $3 == t { rps[$1, $2] = $4; rounds[$1] = 1 }
            END { n = 0; for (r in rounds) if (rps[r, 1] > 0) q[++n] = rps[r, 2] / rps[r, 1]
                  for (i = 2; i <= n; i++) { x = q[i]; for (j = i - 1; j > 0 && q[j] > x; j--) q[j + 1] = q[j]; q[j + 1] = x }
                  printf "%-5s ratio workers=2/workers=1 (median of per-round ratios): %.2f\n", t,
                         n % 2 ? q[(n + 1) / 2] : (q[n / 2] + q[n / 2 + 1]) / 2 }' "$raw"
    done
    echo
    echo "cpu columns: CPU seconds per million requests; busy%: all CPUs, whole machine"
} | tee "$out/summary.txt"
bench_log "results in $out"

#!/usr/bin/env bash
# make bench: ringproxy vs twemproxy (nutcracker) vs one redis-server, with
# redis-benchmark, then a PNG chart of requests/s by test and pipeline depth.
#
# On 127.0.0.1 only: one "direct" redis-server, 4 shards s1..s4, nutcracker
# (ketama over fnv1a_64, -v 4, its default 16 KB mbufs) and ringproxy (its
# defaults, murmur3) over the same shards. For every round, test and depth
# the targets run one after the other, in an order rotated from cell to cell
# and round to round, so the runs compared are seconds apart; each run is
# `redis-benchmark -c 50 -r 100000 -d 3 -P P -t TEST -n N`, with N sized by a
# short probe so the run lasts about --seconds. Medians over the rounds of:
# requests/s, p50 and p99, CPU per request (/proc utime+stime of the server,
# of the shards and of redis-benchmark) and the proxies' peak RSS (VmHWM,
# reset before each run). Ratios are medians of the per-round ratios.
#
#   bench/run.sh [--quick] [--rounds R] [--out DIR] [options]     (--help)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench
# shellcheck source=bench/lib.sh
. bench/lib.sh

usage() {
    cat <<'EOF'
bench/run.sh [options]
  --quick            smoke test: 1 round of 0.5 s runs (about 1 min)
  --rounds R         rounds (default 3; quick 1)
  --seconds S        length of one run (default 3; quick 0.5)
  --tests LIST       redis-benchmark tests (default set,get,incr,lpush,mset)
  --pipelines LIST   -P depths (default 1,32)
  --clients C        -c (default 50)
  --targets LIST     any of direct,twemproxy,ringproxy (default all three)
  --binary PATH      ringproxy to measure (default build/ringproxy)
  --out DIR          where results go (default bench/results/DATE-TIME[-quick])
  --max-seconds T    time budget; rounds not started by then are skipped
                     (default 3600)
  --no-plot          do not draw rps.png
EOF
}

quick=0 rounds="" seconds="" tests=set,get,incr,lpush,mset pipelines=1,32 clients=50
targets=direct,twemproxy,ringproxy binary=build/ringproxy out="" max_seconds=3600 plot=1
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --rounds) rounds=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --tests) tests=$2; shift ;;
        --pipelines) pipelines=$2; shift ;;
        --clients) clients=$2; shift ;;
        --targets) targets=$2; shift ;;
        --binary) binary=$2; shift ;;
        --out) out=$2; shift ;;
        --max-seconds) max_seconds=$2; shift ;;
        --no-plot) plot=0 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; bench_die "unknown argument: $1" ;;
    esac
    shift
done
if [ $quick = 1 ]; then
    : "${rounds:=1}" "${seconds:=0.5}"
else
    : "${rounds:=3}" "${seconds:=3}"
fi
IFS=, read -r -a test_list <<<"$tests"
IFS=, read -r -a pipe_list <<<"$pipelines"
IFS=, read -r -a target_list <<<"$targets"
for v in "$rounds" "$clients" "$max_seconds" "${pipe_list[@]}"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || bench_die "expected a positive integer, got '$v'"
done
[[ $seconds =~ ^[0-9]*\.?[0-9]+$ ]] || bench_die "--seconds: expected a number, got '$seconds'"
for t in "${target_list[@]}"; do
    case $t in direct | twemproxy | ringproxy) ;; *) bench_die "unknown target $t" ;; esac
done
for b in redis-server redis-cli redis-benchmark timeout; do
    command -v $b >/dev/null || bench_die "$b not installed (tests/install-deps.sh bench)"
done
[[ ,$targets, != *,twemproxy,* ]] || command -v nutcracker >/dev/null ||
    bench_die "nutcracker not installed (tests/install-deps.sh bench)"
[[ ,$targets, != *,ringproxy,* ]] || [ -x "$binary" ] || bench_die "$binary not found (run make)"
[ -n "$out" ] || out=bench/results/$(date +%F-%H%M)$([ $quick = 0 ] || echo -quick)
mkdir -p "$out"
out=$(realpath "$out")
commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
git diff --quiet HEAD -- proxy ring config 2>/dev/null || commit+=" (C sources modified)"
clk_tck=$(getconf CLK_TCK)
run_timeout=$(awk -v s="$seconds" 'BEGIN { printf "%d", s * 10 + 30 }')

bench_init
started=$SECONDS
dir=$bench_dir

# ---- servers
declare -A port pid
start_shards 4
for t in "${target_list[@]}"; do
    next_port
    port[$t]=$port_out
    case $t in
        direct) start_redis "$dir/direct" "${port[$t]}" ;;
        twemproxy)
            next_port
            write_nutcracker_yml "$dir/nutcracker.yml" "${port[$t]}" "${shard_ports[@]}"
            bench_spawn "$dir/nutcracker.log" nutcracker -c "$dir/nutcracker.yml" \
                -s "$port_out" -a 127.0.0.1 -v 4 -o "$dir/nutcracker.out" ;;
        ringproxy)
            write_ringproxy_ini "$dir/proxy.ini" "${port[$t]}" "${shard_ports[@]}"
            bench_spawn "$dir/ringproxy.log" "$binary" -c "$dir/proxy.ini" ;;
    esac
    pid[$t]=$spawned_pid
    wait_ping "${port[$t]}" "${pid[$t]}"
done

# ---- every proxy reaches every shard and returns what it stored
rcli() { timeout 10 redis-cli -p "$@"; }
for t in "${target_list[@]}"; do
    [ "$t" != direct ] || continue
    for i in $(seq 1 200); do echo "SET check:$t:$i $i"; done | rcli "${port[$t]}" >/dev/null
    [ "$(rcli "${port[$t]}" GET "check:$t:123")" = 123 ] || bench_die "$t: GET check:$t:123 is wrong"
done
for p in "${shard_ports[@]}"; do
    [ "$(rcli "$p" DBSIZE)" -gt 0 ] || bench_die "shard on port $p got no keys"
done
declare -A rss_start
for t in "${target_list[@]}"; do [ "$t" = direct ] || rss_start[$t]=$(proc_kb "${pid[$t]}" VmRSS); done

# bench_once TARGET TEST P N CSV: one bounded redis-benchmark run, in the
# background so a signal reaches the traps at once.
bench_once() {
    timeout -k 5 "$run_timeout" redis-benchmark -p "${port[$1]}" -c "$clients" -r 100000 -d 3 \
        -P "$3" -t "$2" -n "$4" --csv >"$5" 2>"$dir/bench.err" </dev/null &
    wait $! || bench_die "redis-benchmark $1 $2 -P $3 failed: $(tail -c 300 "$dir/bench.err")"
}

# csv_fields CSV: "rps p50 p99" of redis-benchmark's --csv, by column name.
csv_fields() {
    awk -F'","' '{ gsub(/^"|"\r?$/, "") }
        $1 == "test" { for (i = 1; i <= NF; i++) c[$i] = i; next }
        NF > 1 { print $c["rps"], $c["p50_latency_ms"], $c["p99_latency_ms"]; exit }' "$1"
}

# ---- fill the keyspace so GETs hit, then size each run
bench_log "filling the keyspace through ${targets//,/, }"
for t in "${target_list[@]}"; do bench_once "$t" set 32 300000 /dev/null; done

bench_log "sizing the runs to about ${seconds}s each"
declare -A requests
for t in "${target_list[@]}"; do
    for test in "${test_list[@]}"; do
        for p in "${pipe_list[@]}"; do
            probe=$((p == 1 ? 5000 : 50000))
            bench_once "$t" "$test" "$p" $probe "$dir/probe.csv"
            read -r rps _ <<<"$(csv_fields "$dir/probe.csv")"
            requests[$t,$test,$p]=$(awk -v r="$rps" -v s="$seconds" -v m=$probe \
                'BEGIN { n = int(r * s / 1000 + 0.5) * 1000; print n < m ? m : n }')
        done
    done
done

# ---- the measured runs
# measure ROUND TARGET TEST P: one run and its row of raw.csv.
measure() {
    local r=$1 t=$2 test=$3 p=$4 n=${requests[$2,$3,$4]} f
    reset_hwm "${pid[$t]}"
    local t0=$EPOCHREALTIME srv0 sh0 bn0 busy0 tot0
    proc_ticks "${pid[$t]}"; srv0=$ticks_out
    proc_ticks "${shard_pids[@]}"; sh0=$ticks_out
    child_ticks; bn0=$ticks_out
    machine_ticks; busy0=$busy_out tot0=$total_out
    bench_once "$t" "$test" "$p" "$n" "$dir/run.csv"
    proc_ticks "${pid[$t]}"; local srv=$((ticks_out - srv0))
    proc_ticks "${shard_pids[@]}"; local sh=$((ticks_out - sh0))
    child_ticks; local bn=$((ticks_out - bn0))
    machine_ticks; local busy=$((busy_out - busy0)) tot=$((total_out - tot0))
    local t1=$EPOCHREALTIME
    read -r -a f <<<"$(csv_fields "$dir/run.csv")"
    echo "$r,$t,$test,$p,$n,${f[0]},${f[1]},${f[2]},$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'),$srv,$sh,$bn,$busy,$tot,$(proc_kb "${pid[$t]}" VmHWM)" >>"$dir/raw.csv"
}

echo "round,target,test,pipeline,requests,rps,p50_ms,p99_ms,elapsed_s,server_ticks,shard_ticks,bench_ticks,machine_busy_ticks,machine_total_ticks,hwm_kb" >"$dir/raw.csv"
nt=${#target_list[@]} cell=0 done_rounds=0
for ((r = 1; r <= rounds; r++)); do
    if [ $((SECONDS - started)) -ge "$max_seconds" ]; then
        bench_log "over --max-seconds $max_seconds: rounds $r-$rounds skipped"
        break
    fi
    bench_log "round $r of $rounds"
    for test in "${test_list[@]}"; do
        for p in "${pipe_list[@]}"; do
            for ((k = 0; k < nt; k++)); do
                measure "$r" "${target_list[$(((cell + k) % nt))]}" "$test" "$p"
            done
            cell=$((cell + 1))
        done
    done
    done_rounds=$r
done
declare -A rss_end
for t in "${target_list[@]}"; do [ "$t" = direct ] || rss_end[$t]=$(proc_kb "${pid[$t]}" VmRSS); done

# ---- summary.csv (test,pipeline,target,metric,median,min,max,samples) and summary.txt
awk -F, -v hz="$clk_tck" '
    function sortn(a, n,    i, j, v) { for (i = 2; i <= n; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v } }
    function add(key, v) { vals[key, ++cnt[key]] = v; if (!(key in seen)) { seen[key] = 1; keys[++nk] = key } }
    NR == 1 { next }
    { cellkey = $3 "," $4
      if (!(cellkey in cs)) { cs[cellkey] = 1; cells[++nc] = cellkey }
      k = cellkey "," $2 ","
      add(k "rps", $6); add(k "p50", $7); add(k "p99", $8)
      add(k "cpu_us", $10 * 1e6 / hz / $5)
      if ($2 != "direct") add(k "shards_cpu_us", $11 * 1e6 / hz / $5)
      add(k "bench_cpu_us", $12 * 1e6 / hz / $5)
      add(k "cpus", ($10 + $11 + $12) / hz / $9)
      add(k "foreign_pct", $14 > 0 ? 100 * ($13 - $10 - $11 - $12) / $14 : 0)
      if ($2 != "direct") add(k "hwm_kb", $15)
      rps[$1, cellkey, $2] = $6; rounds[$1] = 1 }
    END {
        split("ringproxy/twemproxy ringproxy/direct twemproxy/direct", pairs, " ")
        for (c = 1; c <= nc; c++) for (q = 1; q <= 3; q++) {
            split(pairs[q], ab, "/")
            for (r in rounds) if ((r, cells[c], ab[1]) in rps && (r, cells[c], ab[2]) in rps)
                add(cells[c] "," pairs[q] ",ratio", rps[r, cells[c], ab[1]] / rps[r, cells[c], ab[2]]) }
        print "test,pipeline,target,metric,median,min,max,samples"
        for (i = 1; i <= nk; i++) {
            key = keys[i]; n = cnt[key]; delete a
            for (j = 1; j <= n; j++) a[j] = vals[key, j]
            sortn(a, n)
            med = n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            printf "%s,%.6g,%.6g,%.6g,%d\n", key, med, a[1], a[n], n } }' "$dir/raw.csv" >"$dir/summary.csv"

{
    echo "bench/run.sh $(date '+%F %T'), commit $commit, $done_rounds round(s) of ${seconds}s runs$([ $quick = 0 ] || echo ' (quick)')"
    echo "$(nproc) CPUs, $(redis-server --version | cut -d' ' -f1-3)$([[ ,$targets, != *,twemproxy,* ]] || echo ", $(nutcracker --version 2>&1 | head -n 1) (-v 4)"),"
    echo "redis-benchmark -c $clients -r 100000 -d 3, 4 shards, no CPU pinning"
    awk -F, -v rs="$(for t in "${!rss_start[@]}"; do printf '%s=%s=%s ' "$t" "${rss_start[$t]}" "${rss_end[$t]:-0}"; done)" '
        NR == 1 { next }
        { m[$1, $2, $3, $4] = $5; lo[$1, $2, $3, $4] = $6; hi[$1, $2, $3, $4] = $7; samples[$1, $2, $3, $4] = $8
          if (!(($1, $2) in cs)) { cs[$1, $2] = 1; cell[++nc] = $1 SUBSEP $2 }
          if ($4 == "foreign_pct") { nf++; fsum += $5; if ($7 > fmax) fmax = $7 }
          if ($4 == "hwm_kb" && $7 > peak[$3]) { peak[$3] = $7; peakat[$3] = $1 " -P " $2 } }
        function v(c, t, metric, fmt) { return ((c, t, metric) in m) ? sprintf(fmt, m[c, t, metric]) : "-" }
        function ratio(c, pair,    k) { k = c SUBSEP pair SUBSEP "ratio"; if (!(k in m)) return "-"
            return sprintf("**%.2f**", m[k]) (samples[k] > 1 ? sprintf(" [%.2f-%.2f]", lo[k], hi[k]) : "") }
        END {
            printf "CPU used by other processes during the runs: median of cells %.1f%% of the machine, max %.1f%%\n", nf ? fsum / nf : 0, fmax
            print "\nRequests/s, median over rounds; ratios: median of the per-round ratios [min-max]\n"
            print "| test | P | direct | twemproxy | ringproxy | ringproxy / twemproxy | ringproxy / direct | twemproxy / direct |"
            print "|---|---|---:|---:|---:|---|---|---|"
            for (i = 1; i <= nc; i++) { c = cell[i]; split(c, k, SUBSEP)
                printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", k[1], k[2], v(c, "direct", "rps", "%.0f"),
                    v(c, "twemproxy", "rps", "%.0f"), v(c, "ringproxy", "rps", "%.0f"), ratio(c, "ringproxy/twemproxy"),
                    ratio(c, "ringproxy/direct"), ratio(c, "twemproxy/direct") }
            print "\nLatency p50 / p99, ms (with -P 32 redis-benchmark times a whole batch)\n"
            print "| test | P | direct | twemproxy | ringproxy |"
            print "|---|---|---|---|---|"
            for (i = 1; i <= nc; i++) { c = cell[i]; split(c, k, SUBSEP); printf "| %s | %s |", k[1], k[2]
                split("direct twemproxy ringproxy", ts, " ")
                for (j = 1; j <= 3; j++) printf " %s |", ((c, ts[j], "p50") in m) ? sprintf("%.3f / %.3f", m[c, ts[j], "p50"], m[c, ts[j], "p99"]) : "-"
                print "" }
            print "\nCPU per request, µs (utime+stime; \"shards\": the 4 shards together; \"CPUs\": all of them together while it ran)\n"
            print "| test | P | direct | bench | twemproxy | its shards | bench | CPUs | ringproxy | its shards | bench | CPUs |"
            print "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            for (i = 1; i <= nc; i++) { c = cell[i]; split(c, k, SUBSEP)
                printf "| %s | %s | %s | %s |", k[1], k[2], v(c, "direct", "cpu_us", "%.2f"), v(c, "direct", "bench_cpu_us", "%.2f")
                split("twemproxy ringproxy", ts, " ")
                for (j = 1; j <= 2; j++) printf " %s | %s | %s | %s |", v(c, ts[j], "cpu_us", "%.2f"), v(c, ts[j], "shards_cpu_us", "%.2f"),
                    v(c, ts[j], "bench_cpu_us", "%.2f"), v(c, ts[j], "cpus", "%.2f")
                print "" }
            print "\nMemory of the proxies (MB)\n"
            print "| proxy | RSS at start | peak RSS (VmHWM) | in | RSS at the end |"
            print "|---|---:|---:|---|---:|"
            n = split(rs, rows, " ")
            for (i = 1; i <= n; i++) { split(rows[i], f, "=")
                printf "| %s | %.1f | %.1f | %s | %.1f |\n", f[1], f[2] / 1024, peak[f[1]] / 1024, peakat[f[1]], f[3] / 1024 } }' \
        "$dir/summary.csv"
} >"$dir/summary.txt"

cp "$dir/raw.csv" "$dir/summary.csv" "$dir/summary.txt" "$out/"
cat "$out/summary.txt"
[ $plot = 0 ] || bench/plot.sh "$out"
bench_log "done in $((SECONDS - started)) s; results: $out (summary.txt, raw.csv$([ $plot = 0 ] || echo ', rps.png'))"

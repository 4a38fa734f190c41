#!/usr/bin/env bash
# make bench-instr: user-space instructions per request of ringproxy, counted
# by callgrind, to compare commits. Unlike throughput on a shared machine the
# counts repeat to about 1%.
#
# For each round: an idle session (start under callgrind, PING, SIGTERM) and,
# for each test and pipeline depth, one session that serves one fixed
# `redis-benchmark -n N -c 50 -r 100000 -d 3 -P P -t TEST` over 4 shards. The
# shards run natively and are filled first, so GETs hit. Reported per cell:
#   net Ir/req = (Ir of the session - Ir of the idle session) / N
# (median over rounds) and its spread over rounds. Kernel work in syscalls is
# not counted.
#
#   bench/instr.sh [--out DIR] [--compare DIR] [options]      (--help)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=instr
# shellcheck source=bench/lib.sh
. bench/lib.sh

usage() {
    cat <<'EOF'
bench/instr.sh [options]
  --binary PATH      ringproxy to measure (default build/ringproxy)
  --tests LIST       redis-benchmark tests (default set,get,mset)
  --pipelines LIST   -P depths (default 1,32)
  --requests N       -n per session (default 100000)
  --clients C        -c (default 50)
  --rounds R         sessions per cell; the median is reported (default 2)
  --nutcracker       also measure nutcracker 0.5.0 (-v 4), for reference
  --out DIR          save summary.txt, summary.csv, raw.csv, top.txt (with
                     --annotate) and the callgrind profiles (in profiles/)
  --annotate N       top N functions by self Ir per request, round 1 of each cell
  --compare DIR      print each cell's ratio to DIR/summary.csv (an earlier run)
  --max-seconds T    time budget of the whole run (default 3600)
EOF
}

binary=build/ringproxy tests=set,get,mset pipelines=1,32 requests=100000 clients=50
rounds=2 with_nc=0 out="" compare="" max_seconds=3600 annotate=0
while [ $# -gt 0 ]; do
    case $1 in
        --binary) binary=$2; shift ;;
        --tests) tests=$2; shift ;;
        --pipelines) pipelines=$2; shift ;;
        --requests) requests=$2; shift ;;
        --clients) clients=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --nutcracker) with_nc=1 ;;
        --out) out=$2; shift ;;
        --compare) compare=$2; shift ;;
        --max-seconds) max_seconds=$2; shift ;;
        --annotate) annotate=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; bench_die "unknown argument: $1" ;;
    esac
    shift
done
IFS=, read -r -a test_list <<<"$tests"
IFS=, read -r -a pipe_list <<<"$pipelines"
[[ $annotate =~ ^[0-9]+$ ]] || bench_die "--annotate needs a number"
for v in "$requests" "$clients" "$rounds" "$max_seconds" "${pipe_list[@]}"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || bench_die "expected a positive integer, got '$v'"
done
[ -x "$binary" ] || bench_die "$binary not found (run make)"
[ -z "$compare" ] || [ -r "$compare/summary.csv" ] || bench_die "$compare/summary.csv not found"
for b in redis-server redis-cli redis-benchmark valgrind timeout; do
    command -v $b >/dev/null || bench_die "$b not installed (tests/install-deps.sh bench)"
done
[ $with_nc = 0 ] || command -v nutcracker >/dev/null || bench_die "nutcracker not installed"
binary=$(realpath "$binary")
# What is measured, read before the run: the tree may change while it runs.
commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
git diff --quiet HEAD -- proxy ring config 2>/dev/null || commit+=" (C sources modified)"
proxies=(ringproxy)
[ $with_nc = 0 ] || proxies+=(nutcracker)

bench_init
started=$SECONDS
dir=$bench_dir
mkdir -p "$dir/profiles"

start_shards 4
next_port
proxy_port=$port_out
next_port
stats_port=$port_out
write_ringproxy_ini "$dir/proxy.ini" "$proxy_port" "${shard_ports[@]}"
write_nutcracker_yml "$dir/nc.yml" "$proxy_port" "${shard_ports[@]}"

# start_proxy NAME MODE: the proxy natively (MODE plain) or under callgrind
# (MODE = the profile's path), in $proxy_pid once it answers PING.
start_proxy() {
    local wrap=()
    [ "$2" = plain ] || wrap=(valgrind --tool=callgrind --collect-atstart=yes -q
        --callgrind-out-file="$2")
    case $1 in
        ringproxy) bench_spawn "$dir/$1.log" "${wrap[@]}" "$binary" -c "$dir/proxy.ini" ;;
        nutcracker) bench_spawn "$dir/$1.log" "${wrap[@]}" nutcracker -c "$dir/nc.yml" \
            -s "$stats_port" -a 127.0.0.1 -v 4 -o "$dir/nc.out" ;;
    esac
    proxy_pid=$spawned_pid
    WAIT_S=120 wait_ping "$proxy_port" "$proxy_pid"
}

# stop_proxy NAME: a signal each exits cleanly on, so callgrind writes its
# profile; valgrind may need a while to write it.
stop_proxy() {
    local sig=TERM
    [ "$1" = ringproxy ] || sig=INT
    stop_pid "$proxy_pid" $sig 120
}

# load TEST P: the fixed workload, bounded in requests and in time.
load() {
    timeout -k 5 900 redis-benchmark -p "$proxy_port" -c "$clients" -n "$requests" \
        -r 100000 -d 3 -P "$2" -t "$1" -q >"$dir/load.out" 2>&1 ||
        bench_die "redis-benchmark $1 -P $2 failed: $(tail -c 300 "$dir/load.out")"
}

total_ir() { awk '/^(summary|totals):/ { v = $2 } END { if (v == "") exit 1; print v }' "$1"; }

echo "proxy,test,pipeline,round,requests,ir" >"$dir/raw.csv"
for p in "${proxies[@]}"; do
    bench_log "$p: filling the shards"
    start_proxy "$p" plain
    timeout -k 5 300 redis-benchmark -p "$proxy_port" -c 50 -n 300000 -r 100000 -d 3 -P 32 \
        -t set -q >/dev/null 2>&1 || bench_die "prefill through $p failed"
    stop_proxy "$p"
    for ((r = 1; r <= rounds; r++)); do
        prof="$dir/profiles/$p.idle.r$r"
        start_proxy "$p" "$prof"
        stop_proxy "$p"
        ir=$(total_ir "$prof") || bench_die "no callgrind totals in $prof"
        echo "$p,idle,0,$r,0,$ir" >>"$dir/raw.csv"
        for t in "${test_list[@]}"; do
            for pl in "${pipe_list[@]}"; do
                [ $((SECONDS - started)) -lt "$max_seconds" ] || bench_die "over --max-seconds $max_seconds"
                prof="$dir/profiles/$p.$t.P$pl.r$r"
                t0=$SECONDS
                start_proxy "$p" "$prof"
                load "$t" "$pl"
                stop_proxy "$p"
                ir=$(total_ir "$prof") || bench_die "no callgrind totals in $prof"
                echo "$p,$t,$pl,$r,$requests,$ir" >>"$dir/raw.csv"
                bench_log "$p $t -P $pl round $r: $((ir / requests)) Ir/req (raw), $((SECONDS - t0)) s"
            done
        done
    done
done

# summary.csv: proxy,test,pipeline,net_ir_per_req,raw_ir_per_req,spread_pct,rounds
awk -F, '
    function median(a, n,    i, j, v, s) {
        for (i = 1; i <= n; i++) s[i] = a[i]
        for (i = 2; i <= n; i++) { v = s[i]; for (j = i - 1; j >= 1 && s[j] > v; j--) s[j + 1] = s[j]; s[j + 1] = v }
        return n % 2 ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2 }
    NR == 1 { next }
    $2 == "idle" { idle[$1, ++ni[$1]] = $6; next }
    { c = $1 SUBSEP $2 SUBSEP $3; if (!(c in n)) order[++nc] = c; ir[c, ++n[c]] = $6; req[c] = $5 }
    END {
        print "proxy,test,pipeline,net_ir_per_req,raw_ir_per_req,spread_pct,rounds"
        for (k = 1; k <= nc; k++) {
            c = order[k]; split(c, f, SUBSEP)
            for (i = 1; i <= ni[f[1]]; i++) a[i] = idle[f[1], i]
            base = median(a, ni[f[1]]); delete a
            lo = hi = ir[c, 1]
            for (i = 1; i <= n[c]; i++) { a[i] = ir[c, i]; if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
            m = median(a, n[c]); delete a
            printf "%s,%s,%s,%.1f,%.1f,%.2f,%d\n", f[1], f[2], f[3], (m - base) / req[c], m / req[c], 100 * (hi - lo) / m, n[c] } }' \
    "$dir/raw.csv" >"$dir/summary.csv"

{
    echo "bench/instr.sh $(date '+%F %T'), commit $commit, $binary"
    echo "redis-benchmark -n $requests -c $clients -r 100000 -d 3, 4 shards, $rounds rounds; $(valgrind --version); $(redis-benchmark --version | cut -d' ' -f1-2)"
    echo "net Ir/req = (Ir of the session - Ir of an idle session) / requests, median over rounds; user space only"
    echo
    if [ -n "$compare" ]; then
        echo "base: $compare; ratio = net Ir/req / base"
        echo
        echo "| proxy | test | P | net Ir/req | raw Ir/req | spread | base | ratio |"
        echo "|---|---|---|---:|---:|---:|---:|---:|"
    else
        echo "| proxy | test | P | net Ir/req | raw Ir/req | spread |"
        echo "|---|---|---|---:|---:|---:|"
    fi
    awk -F, -v cmp="${compare:+$compare/summary.csv}" '
        FNR == 1 { next }
        cmp != "" && FILENAME == cmp { old[$1, $2, $3] = $4; next }
        { row = sprintf("| %s | %s | %s | %.0f | %.0f | %.2f%% |", $1, $2, $3, $4, $5, $6)
          if (cmp != "") row = row (($1, $2, $3) in old ? sprintf(" %.0f | **%.3f** |", old[$1, $2, $3], $4 / old[$1, $2, $3]) : " - | - |")
          print row }' ${compare:+"$compare/summary.csv"} "$dir/summary.csv"
} >"$dir/summary.txt"
cat "$dir/summary.txt"

# top.txt: the functions with the most self Ir per request, from round 1.
if [ "$annotate" -gt 0 ]; then
    for prof in "$dir"/profiles/*.r1; do
        case $prof in *.idle.r1) continue ;; esac
        echo "== ${prof##*/}: top $annotate functions, self Ir per request"
        callgrind_annotate "$prof" 2>/dev/null | awk -v max="$annotate" -v n="$requests" '
            /file:function/ { on = 1; next }
            on && /^-+$/ { next }
            on && NF >= 2 && shown < max { ir = $1; gsub(/,/, "", ir); fn = $NF
                if ($(NF) ~ /^\[/) fn = $(NF - 1)
                sub(/^.*:/, "", fn); printf "%10.1f  %s\n", ir / n, fn; shown++ }'
        echo
    done >"$dir/top.txt"
fi

if [ -n "$out" ]; then
    mkdir -p "$out"
    cp "$dir/raw.csv" "$dir/summary.csv" "$dir/summary.txt" "$out/"
    [ ! -e "$dir/top.txt" ] || cp "$dir/top.txt" "$out/"
    cp -r "$dir/profiles" "$out/"
    echo "results: $out (profiles: callgrind_annotate $out/profiles/FILE)"
fi
bench_log "done in $((SECONDS - started)) s"

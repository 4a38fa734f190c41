#!/usr/bin/env bash
# Big values through the proxy, for bench/README.md ("100 MB values"): the
# issue target is that a value of 100 MB passes through without a timeout
# and without the proxy holding more than a small multiple of one value.
#
# 4 redis-server shards; ringproxy over them with default settings
# (request_timeout 2000 ms) and nutcracker 0.5.0 (-v 4, default 16 KB mbufs,
# no timeout) over the same shards; direct Redis (shard s1) for the floor.
# For each target: one client SETs a random value of SIZE bytes (streamed
# from a file) and GETs it back, then CLIENTS clients do the same at once
# with a key each (all SETs together, then all GETs together). A GET counts
# only if the SHA-256 of the value read equals the file's. Times are wall
# time of the phase. Memory is the proxy's /proc/PID/status: VmRSS at idle,
# VmHWM (peak RSS, reset through clear_refs before each SET and GET phase,
# so each phase shows its own peak), VmRSS again after 2 s idle.
# "rise" = peak - VmRSS at idle before the first test, in values of SIZE.
# Shards are emptied (FLUSHALL) before each test.
#
# Usage: bench/bigvalue.sh [--size BYTES]   (after `make`; about 15 s)
# Environment: RINGPROXY (./ringproxy), NUTCRACKER (nutcracker; skipped when
# absent), CLIENTS (4), MAX_MULTIPLE (1.5): exit 1 when a ringproxy transfer
# fails or the 1-client rise exceeds it (one value in flight is handed from
# buffer to buffer, 1.00; a copy makes it 2.00); MAX_MULTIPLE_CONCURRENT
# (2.5): the same for the rise per value in flight with CLIENTS at once
# (values that meet on one shard connection are copied, up to 2 each);
# WAIT_S bound on each wait and each client (60). Ports 9800-9899 on
# 127.0.0.1; every process started here is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=104857600
usage() { echo "usage: bench/bigvalue.sh [--size BYTES]   (default 104857600 = 100 MiB)"; }
while [ $# -gt 0 ]; do
    case $1 in
    --size) [ $# -ge 2 ] || { usage >&2; exit 2; }; SIZE=$2; shift 2 ;;
    --size=*) SIZE=${1#--size=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
[[ $SIZE =~ ^[1-9][0-9]*$ ]] || { echo "bigvalue: --size wants a positive number of bytes" >&2; exit 2; }

RINGPROXY=${RINGPROXY:-./ringproxy}
NUTCRACKER=${NUTCRACKER:-nutcracker}
CLIENTS=${CLIENTS:-4}
MAX_MULTIPLE=${MAX_MULTIPLE:-1.5}
MAX_MULTIPLE_CONCURRENT=${MAX_MULTIPLE_CONCURRENT:-2.5}
WAIT_S=${WAIT_S:-60}
CLIENT=bench/bigvalue_client.py
PORT_MAX=9899

for tool in redis-server redis-cli python3 sha256sum; do
    command -v "$tool" >/dev/null || { echo "bigvalue: $tool not found" >&2; exit 1; }
done
[ -x "$RINGPROXY" ] || { echo "bigvalue: $RINGPROXY not built (run make)" >&2; exit 1; }
have_nc=1
command -v "$NUTCRACKER" >/dev/null || have_nc=0

BENCH_NAME=bigvalue
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_init
dir=$bench_dir

# Waits (bounded) until a SET through port $1 answers OK: the target is up
# and reaches at least one shard.
wait_ready() {
    local deadline=$((SECONDS + WAIT_S))
    until [ "$(redis-cli -p "$1" SET bigvalue:ready 1 2>/dev/null)" = OK ]; do
        [ $SECONDS -lt $deadline ] || { echo "bigvalue: port $1 not ready after ${WAIT_S}s" >&2; exit 1; }
        sleep 0.05
    done
}

# A field of /proc/$1/status in kB.
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
now() { date +%s.%N; }

# Resets VmHWM to the current RSS (Linux 4.0+); without it VmHWM is the
# peak since start and the second test shows the first one's peak too.
hwm_reset=1
reset_hwm() { echo 5 2>/dev/null >"/proc/$1/clear_refs" || hwm_reset=0; }

flush_shards() {
    for p in "${shard_ports[@]}"; do redis-cli -p "$p" FLUSHALL >/dev/null; done
}

# Runs $3 clients of operation $1 (set|get) against port $2 at once, keys
# big:$4:1..$3; their outputs go to $dir/$4.$1.N. Prints the wall time.
run_clients() {
    local op=$1 port=$2 n=$3 tag=$4 i t0 t1 cpids=()
    t0=$(now)
    for i in $(seq 1 "$n"); do
        if [ "$op" = set ]; then
            timeout "$WAIT_S" python3 "$CLIENT" set "$port" "big:$tag:$i" "$dir/value" >"$dir/$tag.$op.$i" 2>&1 &
        else
            timeout "$WAIT_S" python3 "$CLIENT" get "$port" "big:$tag:$i" >"$dir/$tag.$op.$i" 2>&1 &
        fi
        cpids+=($!)
    done
    for i in "${!cpids[@]}"; do
        wait "${cpids[$i]}" || [ -s "$dir/$tag.$op.$((i + 1))" ] || echo "FAIL - no output (killed after ${WAIT_S}s?)" >"$dir/$tag.$op.$((i + 1))"
    done
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}

# Whether every output of run_clients $1 ($2 clients) succeeded; the first
# failure goes to notes.
check_outputs() {
    local tag=$1 n=$2 i line
    for i in $(seq 1 "$n"); do
        line=$(head -n 1 "$dir/$tag.set.$i")
        [ "${line%% *}" = OK ] || { echo "$tag client $i SET: ${line:-no output}" >>"$dir/notes"; return 1; }
        line=$(head -n 1 "$dir/$tag.get.$i")
        if [ "${line%% *}" != "$sha" ]; then
            case $line in
            FAIL*) echo "$tag client $i GET: $line" >>"$dir/notes" ;;
            *) echo "$tag client $i GET: SHA-256 differs (${line:0:16}...)" >>"$dir/notes" ;;
            esac
            return 1
        fi
    done
}

# One test: target name $1, port $2, PID whose memory counts $3 (- for
# none), $4 clients. Appends a table row to $dir/rows.
measure() {
    local name=$1 port=$2 pid=$3 n=$4 tag set_s get_s hwm_set=- hwm_get=- ok=yes
    local peak rise per after=- idle=-
    tag=$name-$n
    local label="$n clients"
    [ "$n" != 1 ] || label="1 client"
    if [ "$pid" != - ] && ! kill -0 "$pid" 2>/dev/null; then
        echo "| $name | $label | - | - | not run: process gone | - | - | - | - |" >>"$dir/rows"
        return
    fi
    flush_shards
    [ "$pid" = - ] || { idle=${idle_kb[$name]}; reset_hwm "$pid"; }
    set_s=$(run_clients set "$port" "$n" "$tag")
    [ "$pid" = - ] || { hwm_set=$(status_kb "$pid" VmHWM); reset_hwm "$pid"; }
    get_s=$(run_clients get "$port" "$n" "$tag")
    [ "$pid" = - ] || hwm_get=$(status_kb "$pid" VmHWM)
    check_outputs "$tag" "$n" || ok=no
    if [ "$pid" != - ]; then
        if kill -0 "$pid" 2>/dev/null; then
            flush_shards
            sleep 2
            after=$(mib "$(status_kb "$pid" VmRSS)")
        else
            after="exited"
            echo "$name exited during the $n-client test" >>"$dir/notes"
        fi
        peak=$((hwm_set > hwm_get ? hwm_set : hwm_get))
        rise=$(awk -v p="$peak" -v i="$idle" -v s="$SIZE" 'BEGIN { printf "%.2f", (p - i) * 1024 / s }')
        per=$(awk -v r="$rise" -v n="$n" 'BEGIN { printf "%.2f", r / n }')
        hwm_set=$(mib "$hwm_set")
        hwm_get=$(mib "$hwm_get")
        idle=$(mib "$idle")
        local bound=MAX_MULTIPLE
        [ "$n" = 1 ] || bound=MAX_MULTIPLE_CONCURRENT
        if [ "$name" = ringproxy ] && awk -v p="$per" -v m="${!bound}" 'BEGIN { exit !(p > m) }'; then
            echo "ringproxy $n client(s): rise per value in flight $per > $bound ${!bound}" >>"$dir/notes"
            failed=1
        fi
    fi
    [ "$name" != ringproxy ] || [ $ok = yes ] || failed=1
    local hwm=- risecol=-
    [ "$pid" = - ] || { hwm="$hwm_set / $hwm_get"; risecol="$rise ($per per value)"; }
    echo "| $name | $label | $set_s | $get_s | $ok | $idle | $hwm | $risecol | $after |" >>"$dir/rows"
}

# ---- shards, proxies
port=$(free_port 9800)
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
for p in "${shard_ports[@]}"; do wait_ready "$p"; done

rp_port=$(free_port "$port")
{
    printf '[proxy]\nlisten = 127.0.0.1:%s\n[shards]\n' "$rp_port"
    for i in 1 2 3 4; do printf 's%s = 127.0.0.1:%s\n' "$i" "${shard_ports[$((i - 1))]}"; done
} >"$dir/proxy.ini"
"$RINGPROXY" -c "$dir/proxy.ini" 2>"$dir/ringproxy.log" &
rp_pid=$!
bench_pids+=("$rp_pid")
wait_ready "$rp_port"

if [ $have_nc = 1 ]; then
    nc_port=$(free_port $((rp_port + 1)))
    nc_stats=$(free_port $((nc_port + 1)))
    {
        printf 'p:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  distribution: ketama\n' "$nc_port"
        printf '  redis: true\n  preconnect: true\n  servers:\n'
        for i in 1 2 3 4; do printf '   - 127.0.0.1:%s:1 s%s\n' "${shard_ports[$((i - 1))]}" "$i"; done
    } >"$dir/nc.yml"
    "$NUTCRACKER" -c "$dir/nc.yml" -s "$nc_stats" -a 127.0.0.1 -v 4 -o "$dir/nc.log" &
    nc_pid=$!
    bench_pids+=("$nc_pid")
    wait_ready "$nc_port"
fi

head -c "$SIZE" /dev/urandom >"$dir/value"
sha=$(sha256sum "$dir/value" | awk '{ print $1 }')
# The readiness probes and the value file are done: idle from here.
declare -A idle_kb
flush_shards
sleep 0.5
idle_kb[ringproxy]=$(status_kb "$rp_pid" VmRSS)
[ $have_nc = 0 ] || idle_kb[twemproxy]=$(status_kb "$nc_pid" VmRSS)

# ---- tests
failed=0
: >"$dir/rows"
: >"$dir/notes"
for n in 1 "$CLIENTS"; do
    measure direct "${shard_ports[0]}" - "$n"
    measure ringproxy "$rp_port" "$rp_pid" "$n"
    [ $have_nc = 0 ] || measure twemproxy "$nc_port" "$nc_pid" "$n"
done
[ $have_nc = 1 ] || echo "twemproxy: $NUTCRACKER not found, skipped" >>"$dir/notes"
[ $hwm_reset = 1 ] || echo "clear_refs not writable: VmHWM is the peak since start" >>"$dir/notes"

awk -v s="$SIZE" 'BEGIN { printf "big values: %d bytes (%.1f MiB) of random data, ", s, s / 1048576 }'
echo "4 shards, loopback, $(nproc) CPUs, $(date '+%F %H:%M'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
versions="redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\) .*/\1/p')"
[ $have_nc = 0 ] || versions="$versions, nutcracker $($NUTCRACKER -V 2>&1 | sed -n 's/^This is nutcracker-//p')"
echo "$versions"
echo "ringproxy: default settings (request_timeout 2000 ms); twemproxy: -v 4, 16 KB mbufs, no timeout"
echo "times: wall time of the phase (all clients at once); memory in MiB of the proxy process"
echo
echo "| target | test | set s | get s | SHA-256 ok | RSS idle | VmHWM set / get | rise / value | RSS after 2 s idle |"
echo "|---|---|---:|---:|---|---:|---:|---|---:|"
cat "$dir/rows"
if [ -s "$dir/notes" ]; then
    echo
    sed 's/^/note: /' "$dir/notes"
fi
for f in ringproxy.log nc.log; do
    [ -s "$dir/$f" ] || continue
    if grep -qiE 'timeout|error|fail|closed:' "$dir/$f"; then
        echo
        echo "$f (warnings and errors):"
        grep -iE 'timeout|error|fail|closed:' "$dir/$f" | tail -n 10 | sed 's/^/  /'
    fi
done
# The exit status: 1 when a ringproxy check failed.
[ "$failed" = 0 ]

# shellcheck shell=bash
# Sourced by the bench scripts: a private temp dir, the processes they start
# (stopped by PID on exit), free loopback ports, bounded readiness waits, the
# configs of the proxies under test and /proc readers.
#
#   BENCH_NAME=bigvalue; source bench/lib.sh; bench_init
#   redis-server ... & bench_pids+=($!)        # or: bench_spawn LOG CMD...
#
# BENCH_NAME prefixes messages; WAIT_S (default 30) bounds each wait;
# PORT_MAX (default 65535) bounds free_port. Everything listens on and
# connects to 127.0.0.1 only.

bench_pids=()
bench_dir=""
spawned_pid=""

bench_log() { printf '[%(%H:%M:%S)T] %s: %s\n' -1 "${BENCH_NAME:-bench}" "$*" >&2; }

# Is $1 still running (not a zombie)?
bench_alive() {
    local stat
    [ -r "/proc/$1/stat" ] || return 1
    read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# stop_pid PID [SIGNAL [GRACE_S]]: signals one process we started, waits up
# to GRACE_S (default 10) for it to exit, then kills it, reaps it and
# forgets it. Only PIDs from bench_pids are ever signalled.
stop_pid() {
    local pid=$1 sig=${2:-TERM} grace=${3:-10} i p kept=()
    for p in "${bench_pids[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    [ ${#kept[@]} -lt ${#bench_pids[@]} ] || return 0
    if bench_alive "$pid"; then
        kill -s "$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 20; i++)); do
            bench_alive "$pid" || break
            sleep 0.05
        done
        if bench_alive "$pid"; then
            bench_log "pid $pid still running ${grace}s after SIG$sig: SIGKILL"
            kill -s KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    bench_pids=("${kept[@]}")
}

bench_cleanup() {
    local rc=$? pid i any
    trap - EXIT
    trap '' INT TERM
    for pid in "${bench_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Bounded: 10 s for all of them together, then SIGKILL.
    for ((i = 0; i < 200; i++)); do
        any=0
        for pid in "${bench_pids[@]}"; do bench_alive "$pid" && any=1; done
        [ $any = 1 ] || break
        sleep 0.05
    done
    for pid in "${bench_pids[@]}"; do
        bench_alive "$pid" && kill -s KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null || true
    done
    [ -z "$bench_dir" ] || [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$bench_dir"
    exit "$rc"
}

# Makes the temp dir ($bench_dir) and installs the cleanup.
bench_init() {
    bench_dir=$(mktemp -d "/tmp/ringproxy-$BENCH_NAME.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bench_die() {
    echo "$BENCH_NAME: $*" >&2
    exit 1
}

# bench_spawn LOG CMD...: starts CMD in the background, its output in LOG,
# records its PID in bench_pids and in $spawned_pid. A wrapper such as
# valgrind is part of CMD; it runs in the same process as the program.
bench_spawn() {
    local logf=$1
    shift
    "$@" >"$logf" 2>&1 </dev/null &
    spawned_pid=$!
    bench_pids+=("$spawned_pid")
}

# A free loopback port at or above $1: nothing accepts a connection on it.
free_port() {
    local port=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    [ "$port" -le "${PORT_MAX:-65535}" ] || bench_die "no free port up to ${PORT_MAX:-65535}"
    echo "$port"
}

# next_port: the next free port after the last one handed out (from
# $next_port_from, default 17400), so the ports of one run never collide.
next_port_from=${next_port_from:-17400}
next_port() {
    port_out=$(free_port "$next_port_from")
    next_port_from=$((port_out + 1))
}

# wait_ping PORT [PID]: waits (bounded by WAIT_S) until the server on PORT
# answers PING; fails at once if PID exits first (e.g. its port was taken).
wait_ping() {
    local deadline=$((SECONDS + ${WAIT_S:-30}))
    until [ "$(timeout 5 redis-cli -p "$1" PING 2>/dev/null)" = PONG ]; do
        [ -z "${2:-}" ] || bench_alive "$2" || bench_die "process $2 (port $1) exited"
        [ $SECONDS -lt $deadline ] || bench_die "port $1 not answering"
        sleep 0.05
    done
}

# start_redis DIR PORT: one redis-server without persistence.
start_redis() {
    mkdir -p "$1"
    bench_spawn "$1/redis.log" redis-server --bind 127.0.0.1 --port "$2" --save '' \
        --appendonly no --dir "$1" --daemonize no --protected-mode yes
}

# start_shards N: redis-servers s1..sN in $bench_dir/sI, each on the next
# free port; $shard_ports and $shard_pids once all answer PING.
shard_ports=()
shard_pids=()
start_shards() {
    local i
    shard_ports=() shard_pids=()
    for ((i = 1; i <= $1; i++)); do
        next_port
        start_redis "$bench_dir/s$i" "$port_out"
        shard_ports+=("$port_out")
        shard_pids+=("$spawned_pid")
        wait_ping "$port_out" "$spawned_pid"
    done
}

# write_ringproxy_ini FILE PORT SHARD_PORT...: shards named s1..sN.
# RINGPROXY_EXTRA_INI: more [proxy] lines (e.g. 'metrics_listen = ...\n').
write_ringproxy_ini() {
    local f=$1 port=$2 i=0 p
    shift 2
    {
        printf '[proxy]\nlisten = 127.0.0.1:%s\nlog_level = warn\nwatch_config = no\n' "$port"
        printf '%b' "${RINGPROXY_EXTRA_INI:-}"
        printf '[shards]\n'
        for p in "$@"; do i=$((i + 1)); printf 's%s = 127.0.0.1:%s\n' $i "$p"; done
    } >"$f"
}

# write_nutcracker_yml FILE PORT SHARD_PORT...: twemproxy's ketama over
# fnv1a_64, shards named s1..sN, connections opened at start.
write_nutcracker_yml() {
    local f=$1 port=$2 i=0 p
    shift 2
    {
        printf 'bench:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  distribution: ketama\n' "$port"
        printf '  redis: true\n  auto_eject_hosts: false\n  preconnect: true\n'
        printf '  server_connections: 1\n  servers:\n'
        for p in "$@"; do i=$((i + 1)); printf '   - 127.0.0.1:%s:1 s%s\n' "$p" $i; done
    } >"$f"
}

# proc_kb PID FIELD: a /proc/PID/status value in kB (VmRSS, VmHWM).
proc_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# reset_hwm PID: VmHWM starts again from the current RSS.
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }

# proc_ticks PID...: utime+stime (clock ticks) summed over the processes, in
# $ticks_out. Builtins only, so measuring forks nothing.
proc_ticks() {
    local pid line f
    ticks_out=0
    for pid in "$@"; do
        read -r line <"/proc/$pid/stat" 2>/dev/null || continue
        read -r -a f <<<"${line##*) }"
        ticks_out=$((ticks_out + f[11] + f[12]))
    done
}

# child_ticks: CPU of this shell's reaped children (cutime+cstime), in $ticks_out.
child_ticks() {
    local line f
    read -r line <"/proc/$$/stat"
    read -r -a f <<<"${line##*) }"
    ticks_out=$((f[13] + f[14]))
}

# machine_ticks: busy (user+nice+system+irq+softirq) and total jiffies of all
# CPUs, in $busy_out and $total_out.
# shellcheck disable=SC2034  # the results are read by the caller
machine_ticks() {
    local u n s idle io irq sirq steal rest
    read -r _ u n s idle io irq sirq steal rest </proc/stat
    busy_out=$((u + n + s + irq + sirq))
    total_out=$((u + n + s + idle + io + irq + sirq + steal))
}

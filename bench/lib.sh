# shellcheck shell=bash
# Sourced by the bench scripts: a private temp dir, the processes they start
# (stopped by PID on exit), free loopback ports and bounded readiness waits.
#
#   BENCH_NAME=bigvalue; source bench/lib.sh; bench_init
#   redis-server ... & bench_pids+=($!)
#
# BENCH_NAME prefixes error messages; WAIT_S (default 30) bounds each wait;
# PORT_MAX (default 65535) bounds free_port.

bench_pids=()
bench_dir=""

bench_cleanup() {
    local pid
    for pid in "${bench_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${bench_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -z "$bench_dir" ] || rm -rf "$bench_dir"
}

# Makes the temp dir ($bench_dir) and installs the cleanup.
bench_init() {
    bench_dir=$(mktemp -d "/tmp/ringproxy-$BENCH_NAME.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_die() {
    echo "$BENCH_NAME: $*" >&2
    exit 1
}

# A free loopback port at or above $1: nothing accepts a connection on it.
free_port() {
    local port=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    [ "$port" -le "${PORT_MAX:-65535}" ] || bench_die "no free port up to ${PORT_MAX:-65535}"
    echo "$port"
}

# Waits (bounded by WAIT_S) until the server on port $1 answers PING.
wait_ping() {
    local deadline=$((SECONDS + ${WAIT_S:-30}))
    until [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ]; do
        [ $SECONDS -lt $deadline ] || bench_die "port $1 not answering"
        sleep 0.05
    done
}

#!/usr/bin/env bash
# TLS against plain text through ringproxy: redis-benchmark throughput of
# SET and GET at -P 1 and -P 32, in six set-ups on the same machine and
# shards' binary:
#   plain        plain clients  -> proxy -> plain shards
#   tls-client   TLS clients    -> proxy -> plain shards     (tls_listen)
#   tls-both     TLS clients    -> proxy -> TLS shards       (tls_listen + tls_shards)
#   stunnel      TLS clients    -> stunnel -> proxy (plain) -> plain shards: TLS
#                ended in front of the proxy, as twemproxy users must
#   direct       plain clients  -> one redis-server
#   direct-tls   TLS clients    -> one redis-server (what TLS costs Redis itself)
# Certificates (EC P-256) are made with the openssl command; clients do not
# show one (tls_auth_clients = no). Each cell is the median of --rounds runs
# (default 5), the set-ups taking turns within a round.
#
#   bench/tls_bench.sh [--out DIR] [--requests N] [--clients C] [--rounds R]
# The stunnel row needs stunnel4 (tests/install-deps.sh bench installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=tls
# shellcheck source=bench/lib.sh
. bench/lib.sh

requests=100000 clients=50 rounds=5 out="" binary=build/ringproxy
while [ $# -gt 0 ]; do
    case $1 in
        --requests) requests=$2; shift ;;
        --clients) clients=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --out) out=$2; shift ;;
        --binary) binary=$2; shift ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) bench_die "unknown argument: $1" ;;
    esac
    shift
done
[ -x "$binary" ] || bench_die "$binary not built (make)"
bench_init

certs=$bench_dir/certs
mkdir -p "$certs"
(
    cd "$certs"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=bench-ca -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
        -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile server.ext -out server.crt 2>/dev/null
)
tls_args=(--tls-cert-file "$certs/server.crt" --tls-key-file "$certs/server.key"
    --tls-ca-cert-file "$certs/ca.crt" --tls-auth-clients no)
cli_tls=(--tls --cacert "$certs/ca.crt")

# Plain shards (s1, s2) and TLS-only shards (t1, t2), all empty.
start_shards 2
plain_shards=("${shard_ports[@]}")
tls_shards=()
for i in 1 2; do
    next_port
    mkdir -p "$bench_dir/t$i"
    bench_spawn "$bench_dir/t$i/redis.log" redis-server --bind 127.0.0.1 --port 0 \
        --tls-port "$port_out" "${tls_args[@]}" --save '' --appendonly no --dir "$bench_dir/t$i" \
        --daemonize no
    tls_shards+=("$port_out")
done
for p in "${tls_shards[@]}"; do
    deadline=$((SECONDS + ${WAIT_S:-30}))
    until [ "$(redis-cli "${cli_tls[@]}" -p "$p" PING 2>/dev/null)" = PONG ]; do
        [ $SECONDS -lt $deadline ] || bench_die "TLS shard $p not answering"
        sleep 0.05
    done
done

# start_proxy NAME TLS_SHARDS(yes|no) SHARD_PORT...: a proxy with both a
# plain and a TLS port; $proxy_port, $proxy_tls_port.
proxies=()
start_proxy() {
    local name=$1 tls=$2 i=0 p
    shift 2
    next_port
    proxy_port=$port_out
    next_port
    proxy_tls_port=$port_out
    mkdir -p "$bench_dir/$name"
    {
        printf '[proxy]\nlisten = 127.0.0.1:%s\nlog_level = warn\nwatch_config = no\n' "$proxy_port"
        printf 'tls_listen = 127.0.0.1:%s\n' "$proxy_tls_port"
        printf 'tls_cert_file = %s/server.crt\ntls_key_file = %s/server.key\n' "$certs" "$certs"
        if [ "$tls" = yes ]; then
            printf 'tls_shards = yes\ntls_shards_ca_cert_file = %s/ca.crt\n' "$certs"
        fi
        printf '[shards]\n'
        for p in "$@"; do i=$((i + 1)); printf 's%s = 127.0.0.1:%s\n' $i "$p"; done
    } >"$bench_dir/$name/proxy.ini"
    bench_spawn "$bench_dir/$name/stderr.log" "$binary" -c "$bench_dir/$name/proxy.ini"
    wait_ping "$proxy_port" "$spawned_pid"
}

start_proxy plain-shards no "${plain_shards[@]}"
plain_proxy=$proxy_port plain_proxy_tls=$proxy_tls_port
start_proxy tls-shards yes "${tls_shards[@]}"
tls_proxy_tls=$proxy_tls_port

# stunnel ending TLS in front of the plain-shards proxy's plain port.
command -v stunnel4 >/dev/null || bench_die "stunnel4 not installed (tests/install-deps.sh bench)"
next_port
stunnel_port=$port_out
mkdir -p "$bench_dir/stunnel"
printf 'foreground = yes\npid =\n[ringproxy]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n' \
    "$stunnel_port" "$plain_proxy" >"$bench_dir/stunnel/stunnel.conf"
printf 'cert = %s/server.crt\nkey = %s/server.key\n' "$certs" "$certs" >>"$bench_dir/stunnel/stunnel.conf"
bench_spawn "$bench_dir/stunnel/stunnel.log" stunnel4 "$bench_dir/stunnel/stunnel.conf"
deadline=$((SECONDS + ${WAIT_S:-30}))
until [ "$(redis-cli "${cli_tls[@]}" -p "$stunnel_port" PING 2>/dev/null)" = PONG ]; do
    [ $SECONDS -lt $deadline ] || bench_die "stunnel on $stunnel_port not answering"
    sleep 0.05
done

# rps PORT TEST P [TLS ARGS...]: requests per second of one run.
rps() {
    local port=$1 test=$2 pipe=$3
    shift 3
    redis-benchmark -h 127.0.0.1 -p "$port" "$@" -n "$requests" -c "$clients" -P "$pipe" \
        -r 100000 -d 3 -t "$test" --csv 2>/dev/null |
        awk -F'","' 'NR > 1 { gsub(/"/, "", $2); print $2; exit }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

raw=$bench_dir/raw.csv
echo "setup,test,P,round,rps" >"$raw"
setups=(plain tls-client tls-both stunnel direct direct-tls)
# setup_target SETUP: the port and redis-benchmark TLS arguments of a set-up.
setup_target() {
    case $1 in
        plain) port=$plain_proxy args=() ;;
        tls-client) port=$plain_proxy_tls args=("${cli_tls[@]}") ;;
        tls-both) port=$tls_proxy_tls args=("${cli_tls[@]}") ;;
        stunnel) port=$stunnel_port args=("${cli_tls[@]}") ;;
        direct) port=${plain_shards[0]} args=() ;;
        direct-tls) port=${tls_shards[0]} args=("${cli_tls[@]}") ;;
    esac
}
# The set-ups take turns within each round, so that the load other jobs put
# on the machine meanwhile falls on all of them alike.
declare -A cell samples
for test in set get; do
    for pipe in 1 32; do
        for ((r = 1; r <= rounds; r++)); do
            for setup in "${setups[@]}"; do
                setup_target "$setup"
                v=$(rps "$port" "$test" "$pipe" "${args[@]}")
                [ -n "$v" ] || bench_die "$setup $test -P $pipe: no result"
                samples[$setup,$test,$pipe]+="$v "
                echo "$setup,$test,$pipe,$r,$v" >>"$raw"
            done
        done
        for setup in "${setups[@]}"; do
            # shellcheck disable=SC2086  # one value per word
            cell[$setup,$test,$pipe]=$(printf '%s\n' ${samples[$setup,$test,$pipe]} | median)
            bench_log "$setup $test -P $pipe: ${cell[$setup,$test,$pipe]} rps (median of $rounds)"
        done
    done
done

summary=$bench_dir/summary.txt
{
    echo "bench/tls_bench.sh $(date -u '+%F %T') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "redis-benchmark -n $requests -c $clients -r 100000 -d 3, median of $rounds rounds;" \
        "2 shards; $(openssl version | cut -d' ' -f1-2); $(redis-server --version | cut -d' ' -f3)"
    echo "ratio = rps / rps of the plain set-up (proxy rows) or of direct (direct-tls)"
    echo
    echo "| test | P | plain | tls-client | tls-both | stunnel | direct | direct-tls |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for test in set get; do
        for pipe in 1 32; do
            p=${cell[plain,$test,$pipe]} d=${cell[direct,$test,$pipe]}
            printf '| %s | %s | %s | %s (%s) | %s (%s) | %s (%s) | %s | %s (%s) |\n' "$test" "$pipe" \
                "$p" "${cell[tls-client,$test,$pipe]}" "$(ratio "${cell[tls-client,$test,$pipe]}" "$p")" \
                "${cell[tls-both,$test,$pipe]}" "$(ratio "${cell[tls-both,$test,$pipe]}" "$p")" \
                "${cell[stunnel,$test,$pipe]}" "$(ratio "${cell[stunnel,$test,$pipe]}" "$p")" \
                "$d" "${cell[direct-tls,$test,$pipe]}" "$(ratio "${cell[direct-tls,$test,$pipe]}" "$d")"
        done
    done
} >"$summary"
cat "$summary"
if [ -n "$out" ]; then
    mkdir -p "$out"
    cp "$summary" "$raw" "$out/"
    bench_log "saved in $out"
fi

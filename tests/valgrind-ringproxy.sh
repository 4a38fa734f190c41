#!/usr/bin/env bash
# ringproxy under valgrind memcheck, for `make valgrind`.
#
#   RINGPROXY_BIN=tests/valgrind-ringproxy.sh build/tests/test_proxy_...
#       The integration harness runs this script in place of the proxy: it
#       execs valgrind (same pid, so the harness's signals reach the proxy)
#       on $VALGRIND_RINGPROXY (default build/ringproxy) with the arguments
#       given, one log per process in $VALGRIND_LOG_DIR (default
#       build-valgrind). Leaks that count as errors: definite and indirect.
#
#   tests/valgrind-ringproxy.sh --summary DIR
#       Reads every log in DIR: prints one line per proxy process, the
#       stacks of any error, and exits 1 if any process had an error or a
#       leak. A process killed with SIGKILL (some tests do that on purpose)
#       writes no summary; it is listed as unchecked, not as a failure.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"

if [ "${1:-}" = "--summary" ]; then
    dir="${2:?usage: $0 --summary DIR}"
    shopt -s nullglob
    logs=("$dir"/ringproxy.*.log)
    checked=0 failed=0 unchecked=0
    for log in "${logs[@]}"; do
        test_name="$(cat "${log%.log}.test" 2>/dev/null || true)"
        if ! grep -q 'ERROR SUMMARY:' "$log"; then
            unchecked=$((unchecked + 1))
            echo "unchecked (killed before exit): $log ${test_name}"
            continue
        fi
        checked=$((checked + 1))
        if grep -q 'ERROR SUMMARY: 0 errors' "$log"; then
            continue
        fi
        failed=$((failed + 1))
        echo "---- $log ${test_name} ----"
        # Everything after the preamble: error reports, leak records, summaries.
        sed -n '/^==[0-9]*== Parent PID/,$p' "$log" | tail -n +2
    done
    echo "valgrind: ${#logs[@]} ringproxy processes, $checked checked, $failed with errors or leaks, $unchecked killed before exit"
    [ "${#logs[@]}" -gt 0 ] && [ "$failed" -eq 0 ]
    exit $?
fi

bin="${VALGRIND_RINGPROXY:-$here/build/ringproxy}"
dir="${VALGRIND_LOG_DIR:-$here/build-valgrind}"
mkdir -p "$dir"
# exec keeps the pid, so valgrind's %p is $$: note which test started it.
tr '\0' ' ' <"/proc/$PPID/cmdline" >"$dir/ringproxy.$$.test" 2>/dev/null || true
# shellcheck disable=SC2086 # VALGRIND_FLAGS: extra options, word-split on purpose
exec valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --num-callers=40 \
    --log-file="$dir/ringproxy.%p.log" ${VALGRIND_FLAGS:-} "$bin" "$@"

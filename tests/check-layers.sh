#!/usr/bin/env bash
# Fails when the modules of proxy/ include each other in a cycle.
#
# A module is proxy/NAME.c with its proxy/NAME.h. Module Y depends on module
# X when proxy/Y.c or proxy/Y.h has `#include "proxy/X.h"` and proxy/X.c
# exists (headers without a .c, such as server.h or flushq.h, are shared
# declarations, not modules). Dependencies must go one way: a lower module
# never includes one above it. Usage: tests/check-layers.sh [proxy-dir]
set -euo pipefail

dir=${1:-proxy}
edges=$(mktemp)
trap 'rm -f "$edges"' EXIT

for file in "$dir"/*.c "$dir"/*.h; do
    [[ -e $file ]] || continue
    from=$(basename "${file%.*}")
    [[ -e $dir/$from.c ]] || continue
    # Every module is a node, so one with no edges still appears.
    echo "$from $from" >>"$edges"
    sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"proxy\/\([A-Za-z0-9_]*\)\.h".*/\1/p' "$file" |
        while read -r to; do
            if [[ $to != "$from" && -e $dir/$to.c ]]; then echo "$to $from" >>"$edges"; fi
        done
done

# tsort orders the modules lowest first; on a cycle it names the modules
# in it on stderr (and still prints an order, exiting non-zero).
errors=$(mktemp)
trap 'rm -f "$edges" "$errors"' EXIT
if ! order=$(tsort "$edges" 2>"$errors") || [[ -s $errors ]]; then
    echo "check-layers: the modules of $dir/ include each other in a cycle:" >&2
    sed -e 's/^tsort: [^ ]*: input contains a loop:/  loop:/' -e 's/^tsort: /    /' "$errors" >&2
    exit 1
fi
echo "check-layers: $dir/ has one-way dependencies, lowest first: ${order//$'\n'/ }"

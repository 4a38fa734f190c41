#!/usr/bin/env bash
# make bench: direct Redis vs twemproxy vs ringproxy, side by side, with the
# shared harness (../shared/bench/compare.sh), then a PNG chart of rps by
# test and pipeline depth. Extra arguments go to compare.sh (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED_BENCH:-../shared/bench}
[ -x "$shared/compare.sh" ] || { echo "bench: $shared/compare.sh not found (set SHARED_BENCH)" >&2; exit 1; }
out=${BENCH_OUT:-bench/results/$(date +%F-%H%M)}
mkdir -p "$out"
# No pinning by default, as the anchors in ../shared/bench/results were
# measured; BENCH_LAYOUT=proxy-alone (or split, shards-free) pins instead.
"$shared/compare.sh" --layout "${BENCH_LAYOUT:-none}" --candidate "$PWD/ringproxy -c {ini}" --out "$out" "$@"
bench/plot.sh "$out"
echo "results: $out (summary.txt, rps.png)"

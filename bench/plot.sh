#!/usr/bin/env bash
# Draws rps by test for every target of a bench/run.sh result directory (its
# summary.csv) into DIR/rps.png with gnuplot: one panel per pipeline depth,
# each with its own scale, so P1's bars are readable next to P32's. Older
# result directories name the proxies nutcracker and candidate; both read.
set -euo pipefail
dir=$1
command -v gnuplot >/dev/null || { echo "plot: gnuplot not installed (apt-get install gnuplot-nox)" >&2; exit 0; }
# rps.dat: test, pipeline, then direct / twemproxy / ringproxy medians (0 when absent).
awk -F, 'NR > 1 && $4 == "rps" { if ($3 == "nutcracker") $3 = "twemproxy"; if ($3 == "candidate") $3 = "ringproxy"
          key = $1 "," $2; if (!(key in seen)) { seen[key] = 1; order[++n] = key }
          v[key, $3] = $5 }
     END { print "test P direct twemproxy ringproxy"
           split("direct twemproxy ringproxy", tl, " ")
           for (i = 1; i <= n; i++) { split(order[i], kp, ","); printf "%s %s", kp[1], kp[2]
             for (j = 1; j <= 3; j++) printf " %s", ((order[i], tl[j]) in v) ? v[order[i], tl[j]] : 0; print "" } }' \
    "$dir/summary.csv" > "$dir/rps.dat"
pipelines=$(awk 'NR > 1 { if (!($2 in s)) { s[$2] = 1; printf "%s ", $2 } }' "$dir/rps.dat")
npanels=$(wc -w <<<"$pipelines")
for p in $pipelines; do
    awk -v p="$p" 'NR == 1 || $2 == p' "$dir/rps.dat" > "$dir/rps-P$p.dat"
done
{
    echo "set terminal pngcairo size $((520 * npanels + 80)),500 noenhanced"
    echo "set output '$dir/rps.png'"
    echo "set multiplot layout 1,$npanels title 'requests/s by test (median over rounds, redis-benchmark -c 50)'"
    echo "set style data histograms"
    echo "set style histogram clustered gap 1"
    echo "set style fill solid 0.8 border -1"
    echo "set key outside bottom center horizontal autotitle columnheader"
    echo "set yrange [0:*]"
    echo "set grid ytics"
    echo "set format y '%.1s%c'"
    for p in $pipelines; do
        echo "set title '-P $p'"
        echo "plot for [c=3:5] '$dir/rps-P$p.dat' using c:xtic(1)"
    done
    echo "unset multiplot"
} | gnuplot
rm -f "$dir"/rps-P*.dat

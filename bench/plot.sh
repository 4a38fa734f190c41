#!/usr/bin/env bash
# Draws rps by test and pipeline depth for every target of a compare.sh
# result directory (its summary.csv) into DIR/rps.png with gnuplot.
set -euo pipefail
dir=$1
command -v gnuplot >/dev/null || { echo "plot: gnuplot not installed (apt-get install gnuplot-nox)" >&2; exit 0; }
awk -F, 'NR > 1 && $4 == "rps" { key = $1 " P" $2; if (!(key in seen)) { seen[key] = 1; order[++n] = key }
          v[key, $3] = $5; targets[$3] = 1 }
     END { printf "cell"; for (t in targets) { tl[++m] = t; printf " %s", t } print "";
           for (i = 1; i <= n; i++) { printf "\"%s\"", order[i];
             for (j = 1; j <= m; j++) printf " %s", ((order[i], tl[j]) in v) ? v[order[i], tl[j]] : 0; print "" } }' \
    "$dir/summary.csv" > "$dir/rps.dat"
ncols=$(head -1 "$dir/rps.dat" | wc -w)
gnuplot <<GP
set terminal pngcairo size 1100,500 noenhanced
set output "$dir/rps.png"
set title "requests/s by test and pipeline depth (median over rounds, redis-benchmark -c 50)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key top left autotitle columnheader
set ylabel "requests/s"
set yrange [0:*]
set grid ytics
set xtics rotate by -30
plot for [c=2:$ncols] "$dir/rps.dat" using c:xtic(1)
GP

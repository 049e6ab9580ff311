# bench/plot.gp - bench/results/throughput.png from plot_wall.dat and
# plot_cpu.dat (written by bench/aggregate.py). Run in bench/results/:
#   cd bench/results && gnuplot ../plot.gp
# Bars: each figure divided by the best of nginx/HAProxy (1.0 = best peer;
# higher is better, lower-is-better figures are inverted), median of the
# repetitions, error bars = min..max.
set terminal pngcairo size 1200,900 font "sans,10"
set output "throughput.png"
set multiplot layout 2,1 title "wsguard vs nginx vs HAProxy (1 core each, TLS 1.3, ECDSA P-256)"
set style data histogram
set style histogram errorbars gap 2 lw 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:*]
set grid ytics
set key top right
set ylabel "ratio to best peer"
set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb "#555555"
set title "per wall-clock second (and latency, memory)"
plot "plot_wall.dat" using 2:3:4:xtic(1) title "wsguard" lc rgb "#1f77b4", \
     "" using 5:6:7 title "nginx" lc rgb "#2ca02c", \
     "" using 8:9:10 title "HAProxy" lc rgb "#d62728"
set title "per second of the proxy's own CPU time (/proc/PID/stat utime+stime)"
plot "plot_cpu.dat" using 2:3:4:xtic(1) title "wsguard" lc rgb "#1f77b4", \
     "" using 5:6:7 title "nginx" lc rgb "#2ca02c", \
     "" using 8:9:10 title "HAProxy" lc rgb "#d62728"
unset multiplot

set terminal pngcairo size 1500,620 font "sans,11"
set output "pps.png"
set multiplot layout 1,2 title "cipgw veth benchmark (IPv6), AMD EPYC (2 cores), kernel 6.18.44-fc-v1300, XDP native" font "sans,13"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "delivered Mpps (64-byte UDP)"
set yrange [0:0.772]
set grid ytics
set key top right
set xtics rotate by -20 left font "sans,10"
set title "per peer, 1 Service"
plot "pps-peers.dat" using 2:xtic(1) title "udp-est (1,024 flows)" lc rgb "#3a7dc9", \
     "" using 3 title "udp-new (new flow every packet)" lc rgb "#e08a2c", \
     "" using 0:2:($2 > 0 ? sprintf("%.2f",$2) : "") with labels offset -2.2,0.6 font "sans,9" notitle, \
     "" using 0:3:($3 > 0 ? sprintf("%.2f",$3) : "") with labels offset 2.2,0.6 font "sans,9" notitle
unset xtics
set xtics nomirror
set logscale x
set xrange [0.5:30]
set xlabel "Services (the measured one is the last)"
set key below font "sans,9" maxrows 3 width 2
set title "against Service count: solid udp-est, dashed udp-new"
set style data linespoints
colors = "#7fb3e6 #1f4e9c"
plot for [i=0:1] "pps-services.dat" index i using 1:2 lw 2 pt 7 lc rgb word(colors, i+1) title columnheader(1), \
     for [i=0:1] "pps-services.dat" index i using 1:3 lw 2 pt 6 dt 2 lc rgb word(colors, i+1) notitle
unset multiplot

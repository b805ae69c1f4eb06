#!/usr/bin/env bash
# cipgw's end-to-end veth benchmark: cipgw next to the kernel's own paths,
# on the same topology, in the same run.
#
#   benches/veth/run.sh [--smoke] [--workloads LIST] [--peers LIST]
#                       [--services LIST] [--duration S] [--warmup S]
#                       [--reps N] [--xdp-mode native|skb] [--out DIR]
#                       [--profile] [--no-build] [--debug] [--quiet-wait S]
#                       [--generator auto|pktgen|udp-gen]
#                       [--variant NAME=ARGS]... [--variant-bin NAME=PATH]...
#                       [--cipgw-args ARGS] [--family ipv4|ipv6]
#                       [--loss-search PCT]
#
# Topology (three namespaces, two veth pairs, nothing in the root one):
#
#   client ns               gateway ns                      backend ns
#   vcN 198.18.0.2 ──── vgN 198.18.0.1 | vpN 198.18.2.1 ──── vbN 198.18.2.11-13
#
# IPv6 (--family ipv6; RFC 5180 addresses, 2001:2::/48 only): the same
# namespaces and veths, dual-stack (the IPv4 addresses above stay, so
# `cipgw --pass-through` still finds its peer's MAC), with
#
#   vcN 2001:2::2 ──── vgN 2001:2::1 | vpN 2001:2:0:2::1 ──── vbN 2001:2:0:2::11-13
#
# VIPs from 2001:2:0:100::/112, filler endpoints from 2001:2:0:80::/64,
# new-flow sources from 2001:2:0:40::/64 (the pod CIDR the kernel rules
# check is 2001:2::/48, which holds the clients: nothing is masqueraded).
# Its workloads are udp-est and udp-new (and scale's UDP part), frames of
# 62 bytes (66 on the wire: IPv6's smallest UDP frame, no payload); its
# kernel peers are forward (IPv6 forwarding), iptables (kube-proxy's
# IPv6 ruleset through ip6tables-restore, nf_tables backend) and nftables
# (kube-proxy's `ip6 kube-proxy` table); cipgw gets --service-cidr
# 2001:2:0:100::/112. The generator is udp-gen (pktgen is driven for IPv4
# only). Without --family, everything is IPv4 as described above.
#
# VIPs come from 198.19.0.0/16; the backend namespace holds the measured
# Service's three endpoints (one interface, three addresses). For UDP it
# is a sink: an nftables netdev ingress rule drops UDP before the IP
# layer, and delivered packets are its interface's rx_packets.
#
# Peers (--peers, default all): forward (kernel forwarding, no NAT),
# iptables (kube-proxy's iptables mode ruleset, iptables-nft), nftables
# (kube-proxy's nftables mode ruleset), cipgw-pt (cipgw --pass-through:
# L2 rewrite only, the AF_XDP upper bound; UDP only), cipgw (full NAT).
# A/B in one run: `--variant bp="--busy-poll on"` defines the peers
# cipgw+bp and cipgw-pt+bp (list them in --peers): the same gateway with
# those extra `cipgw run` arguments; `--variant-bin old=PATH` runs another
# cipgw binary for variant old (before/after a change). --cipgw-args ARGS
# go to every cipgw peer.
#
# Workloads (--workloads, default all): udp-est (64-byte UDP over 1,024
# flows), udp-new (a new flow every packet), scale (udp-est and udp-new at
# every --services count, tcp-crr at the largest), tcp-rr (latency over
# one connection), tcp-crr (connections/s), tcp-stream (bulk Gbit/s).
#
# Placement (printed at start): generator, TCP clients and server on CPU 0;
# the gateway on CPU 1: cipgw's worker (--cores 1) and the gateway veths'
# threaded NAPI kthreads (RPS's cross-CPU interrupts cost more in these VMs).
#
# Generator (--generator, default auto): kernel pktgen on CPU 0 when the
# client namespace has /proc/net/pktgen, else cipgw-veth-bench udp-gen, an
# open-loop AF_PACKET + sendmmsg generator (these VMs' kernels have no
# pktgen). Either way offered = the client veth's tx packets + tx drops.
#
# Output: DIR/raw.jsonl (one record per measurement), DIR/results.json,
# DIR/results.md, DIR/pps.png; DIR defaults to target/veth-bench/<UTC time>.
# --smoke (CI): 1 s per measurement, Services 1 and 1000, one rep; then
# checks every peer and workload has a non-zero result (CI runs
# `--smoke --debug`: debug binaries, which the test step has built).
# --profile adds one uncounted rep per cipgw UDP workload under
# `perf record -F 1999 -C 1` (CIPGW_PERF_FREQ=HZ sets another rate: at
# 1999 Hz a few percent of the core gets too few samples to annotate),
# perf itself pinned to that CPU so the
# generator keeps its own, and the generator running 5 s longer than
# perf needs (DIR/perf-*.txt: each thread's share per object, then per
# symbol; perf's own share shows as `perf`; last, cipgw's own code's time
# per delivered packet: its workers' samples outside the kernel over the
# profiled rep's delivered rate). Around every cipgw
# measurement the script scrapes cipgw's /metrics (its drops by reason, the kernel's
# AF_XDP socket counters it exports and its workers' time in RX batches)
# and prints where packets were lost and cipgw's batch time per frame
# (DIR/losses.md, also in results.md). --quiet-wait S (default 60,
# smoke 0): before each measurement wait up to S seconds for other work on
# the machine to stop; the busy share seen goes into the record. Everything
# the script creates is removed on exit, failure or signal.
#
# --loss-search PCT: each UDP measurement (a rep of a peer, workload and
# Service count) is a search instead of one open-loop run: udp-gen's
# --rate, bisected (LOSS_STEPS=7 trials after a first at the open loop's
# full rate), finds the highest offered rate at which the gateway loses
# at most PCT % of the frames (RFC 2544's throughput, with that
# tolerance). Overloaded, the open loop measures how a gateway sheds load
# (its NAPI thread copies frames that full rings then drop); the search
# measures what it carries without loss. Each trial lasts --warmup +
# --duration; the results go to DIR/loss.jsonl (with each trial's asked
# rate, offered, delivered and, of the offered, refused at the gateway
# veth's receive ring, in pps) and a table in results.md, with each
# peer's ratio to cipgw-pt's. udp-gen only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ORIG_ARGS=("$@")
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

ALL_PEERS="forward iptables nftables cipgw-pt cipgw"
ALL_WORKLOADS="udp-est udp-new scale tcp-rr tcp-crr tcp-stream"

SMOKE=0
PEERS=$ALL_PEERS
WORKLOADS=$ALL_WORKLOADS
SERVICES=""
DURATION=""
WARMUP=""
REPS=""
XDP_MODE=native
OUT=""
PROFILE=0
BUILD=1
PROFILE_DIR=release
QUIET_WAIT=""
GENERATOR=auto
CIPGW_ARGS=""
LOSS_SEARCH=""
LOSS_STEPS=${LOSS_STEPS:-7}
FAMILY=ipv4
declare -A VARIANTS=() VARIANT_BINS=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "run.sh: $*" >&2; exit 1; }
list() { tr ',' ' ' <<<"$1"; }

while (($#)); do
    case $1 in
    --smoke) SMOKE=1 ;;
    --peers) PEERS=$(list "$2"); shift ;;
    --workloads) WORKLOADS=$(list "$2"); shift ;;
    --services) SERVICES=$(list "$2"); shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --xdp-mode) XDP_MODE=$2; shift ;;
    --out) OUT=$2; shift ;;
    --profile) PROFILE=1 ;;
    --no-build) BUILD=0 ;;
    --debug) PROFILE_DIR=debug ;;
    --quiet-wait) QUIET_WAIT=$2; shift ;;
    --generator) GENERATOR=$2; shift ;;
    --variant) [[ $2 == *=* ]] || die "--variant NAME=ARGS"; VARIANTS[${2%%=*}]=${2#*=}; shift ;;
    --variant-bin)
        [[ $2 == *=* ]] || die "--variant-bin NAME=PATH"
        VARIANT_BINS[${2%%=*}]=${2#*=}
        [[ -n ${VARIANTS[${2%%=*}]+set} ]] || VARIANTS[${2%%=*}]=""
        shift ;;
    --cipgw-args) CIPGW_ARGS=$2; shift ;;
    --loss-search) LOSS_SEARCH=$2; shift ;;
    --family) FAMILY=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

base_peer() { echo "${1%%+*}"; }
for p in $PEERS; do
    [[ " $ALL_PEERS " == *" $(base_peer "$p") "* ]] || die "unknown peer $p (have: $ALL_PEERS)"
    if [[ $p == *+* ]]; then
        [[ $p == cipgw* ]] || die "only cipgw peers have variants: $p"
        [[ -n ${VARIANTS[${p#*+}]+set} ]] || die "peer $p: no --variant ${p#*+}=ARGS"
    fi
done
[[ $FAMILY == ipv4 || $FAMILY == ipv6 ]] || die "--family is ipv4 or ipv6"
if [[ $FAMILY == ipv6 ]]; then
    # Only the UDP workloads have an IPv6 form (scale: its UDP part).
    [[ $WORKLOADS == "$ALL_WORKLOADS" ]] && WORKLOADS="udp-est udp-new scale"
    for w in $WORKLOADS; do
        [[ $w == udp-* || $w == scale ]] || die "workload $w has no IPv6 form (--family ipv6: udp-est, udp-new, scale)"
    done
    [[ $GENERATOR != pktgen ]] || die "--generator pktgen is IPv4 only here (--family ipv6 uses udp-gen)"
fi
for w in $WORKLOADS; do [[ " $ALL_WORKLOADS " == *" $w "* ]] || die "unknown workload $w (have: $ALL_WORKLOADS)"; done
[[ $XDP_MODE == native || $XDP_MODE == skb ]] || die "--xdp-mode is native or skb"
[[ $GENERATOR =~ ^(auto|pktgen|udp-gen)$ ]] || die "--generator is auto, pktgen or udp-gen"
if [[ -n $LOSS_SEARCH ]]; then
    awk -v t="$LOSS_SEARCH" 'BEGIN { exit !(t ~ /^[0-9]+(\.[0-9]+)?$/ && t < 100) }' ||
        die "--loss-search takes a loss in percent, 0 to below 100, not $LOSS_SEARCH"
    [[ $LOSS_STEPS =~ ^[1-9][0-9]?$ ]] || die "LOSS_STEPS must be 1 to 99, not $LOSS_STEPS"
    [[ $GENERATOR != pktgen ]] || die "--loss-search paces udp-gen: not with --generator pktgen"
    GENERATOR=udp-gen
fi
if ((SMOKE)); then
    : "${SERVICES:=1 1000}" "${DURATION:=1}" "${WARMUP:=0.5}" "${REPS:=1}" "${QUIET_WAIT:=0}"
else
    : "${SERVICES:=1 1000 10000}" "${DURATION:=3}" "${WARMUP:=1}" "${REPS:=3}" "${QUIET_WAIT:=60}"
fi
[[ " $SERVICES " == *" 1 "* ]] || SERVICES="1 $SERVICES"
MAX_SERVICES=$(tr ' ' '\n' <<<"$SERVICES" | sort -n | tail -1)
OUT=${OUT:-$TARGET_DIR/veth-bench/$(date -u +%Y%m%dT%H%M%SZ)}
has() { [[ " $1 " == *" $2 "* ]]; }

[[ $(id -u) -eq 0 ]] || die "needs root: it creates network namespaces"

# --- packages (only what is missing) -------------------------------------
need_pkgs=()
for pair in iptables:iptables nft:nftables conntrack:conntrack gnuplot:gnuplot-nox \
    ethtool:ethtool ip:iproute2 taskset:util-linux; do
    command -v "${pair%%:*}" >/dev/null || need_pkgs+=("${pair#*:}")
done
if ((PROFILE)) && ! command -v perf >/dev/null; then need_pkgs+=(linux-perf); fi
if ((${#need_pkgs[@]})); then
    echo "run.sh: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" </dev/null >/dev/null
fi
# kube-proxy programs iptables through the nf_tables backend.
iptables --version | grep -q nf_tables || die "iptables is not the nf_tables backend ($(iptables --version))"
if [[ $FAMILY == ipv6 ]]; then
    ip6tables --version | grep -q nf_tables || die "ip6tables is not the nf_tables backend ($(ip6tables --version))"
fi

# --- binaries -------------------------------------------------------------
if ((BUILD)); then
    echo "run.sh: building cipgw and cipgw-veth-bench ($PROFILE_DIR)"
    release=(--release)
    [[ $PROFILE_DIR == debug ]] && release=()
    (cd "$ROOT" && cargo build "${release[@]}" -q -p cipgw -p cipgw-veth-bench)
fi
CIPGW=$TARGET_DIR/$PROFILE_DIR/cipgw
TOOL=$TARGET_DIR/$PROFILE_DIR/cipgw-veth-bench
[[ -x $CIPGW && -x $TOOL ]] || die "missing $CIPGW or $TOOL (drop --no-build)"

mkdir -p "$OUT"
RAW=$OUT/raw.jsonl
: >"$RAW"

# --- names, addresses -----------------------------------------------------
ID=$$
NS_CL=cipgw-vethbench-$ID-cl
NS_GW=cipgw-vethbench-$ID-gw
NS_BE=cipgw-vethbench-$ID-be
VC=vc$ID VG=vg$ID VP=vp$ID VB=vb$ID
CL_IP=198.18.0.2 GW_CL_IP=198.18.0.1 GW_BE_IP=198.18.2.1
BACKENDS=(198.18.2.11 198.18.2.12 198.18.2.13)
MAC_VC=02:00:c6:12:00:02 MAC_VG=02:00:c6:12:00:01
MAC_VP=02:00:c6:12:02:01 MAC_VB=02:00:c6:12:02:0b
SERVICE_CIDR=198.19.0.0/16
# IPv6 (--family ipv6), beside the IPv4 addresses.
CL_IP6=2001:2::2 GW_CL_IP6=2001:2::1 GW_BE_IP6=2001:2:0:2::1
BACKENDS6=(2001:2:0:2::11 2001:2:0:2::12 2001:2:0:2::13)
SERVICE_CIDR6=2001:2:0:100::/112
POD_CIDR6=2001:2::/48
GEN_CPU=0 GW_CPU=1

# --- cleanup --------------------------------------------------------------
PIDS=()      # every process this script started, killed on exit
CIPGW_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $CIPGW_PID ]] && stop_cipgw || true
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    # Anything else still inside our namespaces was started by this run.
    for ns in $NS_CL $NS_GW $NS_BE; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    for ns in $NS_CL $NS_GW $NS_BE; do ip netns del "$ns" 2>/dev/null || true; done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# --- topology -------------------------------------------------------------
echo "run.sh: building the topology ($NS_CL, $NS_GW, $NS_BE)"
for ns in $NS_CL $NS_GW $NS_BE; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    in_ns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.ip_forward=0
    if [[ $FAMILY == ipv6 ]]; then
        # No duplicate address detection (addresses usable at once), no
        # router advertisements; forwarding off until a kernel peer.
        in_ns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0 \
            net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
            net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0 \
            net.ipv6.conf.all.forwarding=0
    fi
done
ip -n "$NS_CL" link add "$VC" address $MAC_VC type veth peer name "$VG" address $MAC_VG netns "$NS_GW"
ip -n "$NS_GW" link add "$VP" address $MAC_VP type veth peer name "$VB" address $MAC_VB netns "$NS_BE"
ip -n "$NS_CL" addr add $CL_IP/24 dev "$VC"
ip -n "$NS_GW" addr add $GW_CL_IP/24 dev "$VG"
ip -n "$NS_GW" addr add $GW_BE_IP/24 dev "$VP"
for a in "${BACKENDS[@]}"; do ip -n "$NS_BE" addr add "$a/24" dev "$VB"; done
if [[ $FAMILY == ipv6 ]]; then
    ip -n "$NS_CL" addr add $CL_IP6/64 dev "$VC" nodad
    ip -n "$NS_GW" addr add $GW_CL_IP6/64 dev "$VG" nodad
    ip -n "$NS_GW" addr add $GW_BE_IP6/64 dev "$VP" nodad
    for a in "${BACKENDS6[@]}"; do ip -n "$NS_BE" addr add "$a/64" dev "$VB" nodad; done
fi
# AF_XDP needs complete checksums from the senders (as in forwarder/src/lab/topology.rs).
in_ns "$NS_CL" ethtool -K "$VC" tx off >/dev/null
in_ns "$NS_BE" ethtool -K "$VB" tx off >/dev/null
# GRO on the gateway's veths gives them NAPI instances (as a NIC has) for
# the kernel peers; cipgw's XDP program keeps them.
for d in $VG $VP; do in_ns "$NS_GW" ethtool -K "$d" gro on >/dev/null; done
ip -n "$NS_CL" link set "$VC" up
ip -n "$NS_GW" link set "$VG" up
ip -n "$NS_GW" link set "$VP" up
ip -n "$NS_BE" link set "$VB" up
ip -n "$NS_CL" route add $SERVICE_CIDR via $GW_CL_IP
ip -n "$NS_CL" route add 198.18.2.0/24 via $GW_CL_IP
ip -n "$NS_BE" route add default via $GW_BE_IP
if [[ $FAMILY == ipv6 ]]; then
    ip -n "$NS_CL" -6 route add $SERVICE_CIDR6 via $GW_CL_IP6
    ip -n "$NS_CL" -6 route add 2001:2:0:2::/64 via $GW_CL_IP6
    ip -n "$NS_BE" -6 route add default via $GW_BE_IP6
fi
# Many connections per second from one address (tcp-crr).
in_ns "$NS_CL" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
in_ns "$NS_BE" nft -f - <<EOF
table netdev sink {
    chain ingress {
        type filter hook ingress device "$VB" priority 0; policy accept;
        meta l4proto udp drop
    }
}
EOF
# No RPS anywhere (cross-CPU interrupts are what these VMs do worst):
# receive work stays where NAPI or the sender runs it.
for x in "$NS_CL $VC" "$NS_GW $VG" "$NS_GW $VP" "$NS_BE $VB"; do
    set -- $x
    in_ns "$1" sh -c "echo 0 > /sys/class/net/$2/queues/rx-0/rps_cpus"
done
set --
# Threaded NAPI on the gateway's veths, kthreads on the gateway core.
for d in $VG $VP; do in_ns "$NS_GW" sh -c "echo 1 > /sys/class/net/$d/threaded"; done

# Processes that hold each namespace: /proc/PID/net/dev are its counters.
# `ip netns exec` execs its command, so $! is the process itself (a
# shell function in the background would be a subshell in the root ns).
for ns in $NS_CL $NS_GW $NS_BE; do
    ip netns exec "$ns" sleep 86400 &
    PIDS+=($!)
done
H_CL=${PIDS[0]} H_GW=${PIDS[1]} H_BE=${PIDS[2]}
ip netns exec "$NS_BE" taskset -c $GEN_CPU "$TOOL" tcp-server --listen 0.0.0.0:8080 --cpu $GEN_CPU 2>"$OUT/tcp-server.log" &
PIDS+=($!)

napi_threads() { # pids of the gateway veths' NAPI kthreads
    local f
    for f in /proc/[0-9]*/comm; do
        case $(cat "$f" 2>/dev/null) in
        napi/"$VG"-* | napi/"$VP"-*) f=${f#/proc/}; echo "${f%/comm}" ;;
        esac
    done
}
GW_THREADS=""  # the NAPI threads' pids and cipgw's worker tids (gw_cpu_ns)
LAST_DELIVERED_PPS=0  # the last udp_run's delivered rate (own_time)
pin_napi() {
    local pid t
    GW_THREADS=""
    for pid in $(napi_threads); do
        taskset -pc $GW_CPU "$pid" >/dev/null
        GW_THREADS+=" /proc/$pid/schedstat"
    done
    if [[ -n $CIPGW_PID ]]; then
        for t in /proc/"$CIPGW_PID"/task/*; do
            [[ $(cat "$t/comm" 2>/dev/null) == cipgw-worker-* ]] && GW_THREADS+=" $t/schedstat"
        done
    fi
    return 0
}
placement() {
    local pid
    echo "placement:"
    echo "  CPU $GEN_CPU: udp-gen, TCP clients (client ns), TCP server (backend ns)"
    for pid in $(napi_threads); do
        echo "  CPU $(awk '/Cpus_allowed_list/{print $2}' "/proc/$pid/status"): $(cat "/proc/$pid/comm") (threaded NAPI, gateway receive)"
    done
    echo "  CPU $GW_CPU: cipgw worker (--cores $GW_CPU) for the cipgw peers"
    echo "  client and backend veths: no NAPI; their receive runs in the sender's softirq"
    echo "  RPS off on every veth (rps_cpus 0)"
}
pin_napi
napi_pids=$(napi_threads | wc -l)
((napi_pids == 2)) || die "expected 2 NAPI kthreads for $VG/$VP, found $napi_pids"
placement | tee "$OUT/placement.txt"
if [[ $GENERATOR == auto ]]; then
    GENERATOR=udp-gen
    [[ $FAMILY == ipv4 ]] && ip netns exec "$NS_CL" test -e /proc/net/pktgen/pgctrl && GENERATOR=pktgen
fi
echo "generator: $GENERATOR on CPU $GEN_CPU" | tee -a "$OUT/placement.txt"

# --- rule sets ------------------------------------------------------------
for n in $SERVICES; do
    if [[ $FAMILY == ipv6 ]]; then
        "$TOOL" gen-rules --services "$n" --backends "$(IFS=,; echo "${BACKENDS6[*]}")" \
            --node-ip $GW_CL_IP6 --service-cidr $SERVICE_CIDR6 --pod-cidr $POD_CIDR6 --out "$OUT/rules/$n"
    else
        "$TOOL" gen-rules --services "$n" --backends "$(IFS=,; echo "${BACKENDS[*]}")" \
            --node-ip $GW_CL_IP --service-cidr $SERVICE_CIDR --out "$OUT/rules/$n"
    fi
done

# --- measurement helpers --------------------------------------------------
# One line: time, client tx packets, client tx drops, gateway rx packets,
# gateway rx drops, gateway pod-side tx packets and drops, backend rx.
snap() {
    local t
    t=$(date +%s.%N)
    awk -v t="$t" -v vc="$VC:" -v vg="$VG:" -v vp="$VP:" -v vb="$VB:" '
        FILENAME ~ "/" hcl "/" && $1 == vc { ctx = $11; ctd = $13 }
        FILENAME ~ "/" hgw "/" && $1 == vg { grx = $3; grd = $5 }
        FILENAME ~ "/" hgw "/" && $1 == vp { gtx = $11; gtd = $13 }
        FILENAME ~ "/" hbe "/" && $1 == vb { brx = $3 }
        END { printf "[%s,%d,%d,%d,%d,%d,%d,%d]", t, ctx, ctd, grx, grd, gtx, gtd, brx }
    ' hcl="$H_CL" hgw="$H_GW" hbe="$H_BE" \
        "/proc/$H_CL/net/dev" "/proc/$H_GW/net/dev" "/proc/$H_BE/net/dev"
}

# Fraction of both CPUs busy over half a second.
cpu_busy() {
    local a b
    a=($(head -1 /proc/stat)); sleep 0.5; b=($(head -1 /proc/stat))
    awk -v a="${a[*]:1}" -v b="${b[*]:1}" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); tot = 0
        for (i = 1; i <= n; i++) tot += y[i] - x[i]
        idle = (y[4] - x[4]) + (y[5] - x[5])
        printf "%.3f", (tot > 0 ? 1 - idle / tot : 0) }'
}

# Waits (at most QUIET_WAIT s) for other work on the machine to stop, so
# builds and tests of others do not land in a measurement; returns the
# busy fraction seen last, which goes into the record.
# At most 10 times QUIET_WAIT in all, so a machine that stays busy delays
# the run by minutes, not hours.
QUIET_BUDGET_FILE=$OUT/.quiet-budget
echo $((QUIET_WAIT * 10)) >"$QUIET_BUDGET_FILE"
quiet() {
    local busy waited=0 budget
    budget=$(cat "$QUIET_BUDGET_FILE")
    busy=$(cpu_busy)
    while awk -v b="$busy" 'BEGIN { exit !(b > 0.15) }' && ((waited < QUIET_WAIT && waited < budget)); do
        sleep 2
        waited=$((waited + 2))
        busy=$(cpu_busy)
    done
    echo $((budget - waited)) >"$QUIET_BUDGET_FILE"
    ((waited == 0)) || echo "    (waited ${waited}s for the machine to go quiet: busy $busy)" >&2
    echo "$busy"
}

# cipgw's counters from /metrics on its admin endpoint, cumulative, as one
# JSON object: rx, tx, the wall-clock time its workers spent in RX batches
# the frames in them and how many batches (batch_s, batch_frames,
# batches: its batch time per frame, the kernel's I/O between batches left
# out, and its frames per batch), drops by reason, and the
# kernel's AF_XDP socket statistics (`xsk`: rx_ring_full, rx_dropped, ...
# as cipgw exports them).
cipgw_counters() {
    in_ns "$NS_GW" curl -s --max-time 2 http://127.0.0.1:9477/metrics 2>/dev/null | awk '
        $1 == "cipgw_rx_packets_total" { rx = $2 }
        $1 == "cipgw_tx_packets_total" { tx = $2 }
        $1 ~ /^cipgw_drops_total[{]/ {
            r = $1; sub(/.*reason="/, "", r); sub(/".*/, "", r); d[r] += $2 }
        $1 ~ /^cipgw_xsk_socket_stats_total[{]/ {
            r = $1; sub(/.*stat="/, "", r); sub(/".*/, "", r); k[r] += $2 }
        $1 ~ /^cipgw_batch_duration_seconds_sum/ { batch_s += $2 }
        $1 ~ /^cipgw_batch_size_frames_sum/ { batch_frames += $2 }
        $1 ~ /^cipgw_batch_size_frames_count/ { batches += $2 }
        END {
            printf "{\"rx\":%d,\"tx\":%d,\"batch_s\":%.9f,\"batch_frames\":%.0f,\"batches\":%.0f,\"drops\":{", rx, tx, batch_s, batch_frames, batches; sep = ""
            for (r in d) { printf "%s\"%s\":%d", sep, r, d[r]; sep = "," }
            printf "},\"xsk\":{"; sep = ""
            for (r in k) { printf "%s\"%s\":%d", sep, r, k[r]; sep = "," }
            printf "}}"
        }'
}

# One line per cipgw measurement: rates (Mpps) of the gateway veth's
# receive, its receive drops (redirects the AF_XDP socket refused), the
# kernel's AF_XDP counters, cipgw's rx, tx and drops by reason, and
# what the backend got.
LOSSES=$OUT/losses.md
losses_line() { # PEER WORKLOAD SERVICES REP SNAP0 SNAP1 COUNTERS0 COUNTERS1
    [[ -s $LOSSES ]] || {
        echo "| peer | workload | Services | rep | gw veth rx | gw veth rx drops | XSK kernel counters | cipgw rx | cipgw tx | cipgw drops | backend rx | cipgw batch ns/frame | frames/batch |"
        echo "|---|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|"
    } >"$LOSSES"
    python3 - "$@" >>"$LOSSES" <<'PY'
import json, sys
peer, wl, n, rep, a, b, c0, c1 = sys.argv[1:9]
a, b = json.loads(a), json.loads(b)
c0, c1 = json.loads(c0), json.loads(c1)
dt = b[0] - a[0]
rate = lambda x: f"{x / dt / 1e6:.3f}"
drops = {r: c1["drops"].get(r, 0) - c0["drops"].get(r, 0) for r in c1["drops"]}
drops = ", ".join(f"{r} {rate(v)}" for r, v in sorted(drops.items()) if v > 0) or "none"
xsk = {r: c1["xsk"].get(r, 0) - c0["xsk"].get(r, 0) for r in c1["xsk"]}
xsk = ", ".join(f"{r} {rate(v)}" for r, v in sorted(xsk.items()) if v > 0) or "none"
frames = c1.get("batch_frames", 0) - c0.get("batch_frames", 0)
batch = f"{1e9 * (c1['batch_s'] - c0['batch_s']) / frames:.0f}" if frames > 0 else "–"
batches = c1.get("batches", 0) - c0.get("batches", 0)
per_batch = f"{frames / batches:.1f}" if batches > 0 else "–"
print(f"| {peer} | {wl} | {n} | {rep} | {rate(b[3] - a[3])} | {rate(b[4] - a[4])} | {xsk} | "
      f"{rate(c1['rx'] - c0['rx'])} | {rate(c1['tx'] - c0['tx'])} | {drops} | {rate(b[7] - a[7])} | {batch} | {per_batch} |")
PY
    tail -1 "$LOSSES" | sed 's/^/    losses: /'
}

# CPU time (ns) the gateway's threads have used: its veths' NAPI threads
# and, while cipgw runs, its worker threads (schedstat: time on a CPU;
# the list is made by pin_napi).
gw_cpu_ns() {
    local f total=0 v
    for f in $GW_THREADS; do
        read -r v _ 2>/dev/null <"$f" && total=$((total + v))
    done
    echo "$total"
}

flush_state() {
    in_ns "$NS_GW" conntrack -F >/dev/null 2>&1 || true
    [[ $FAMILY == ipv4 ]] || in_ns "$NS_GW" conntrack -F -f ipv6 >/dev/null 2>&1 || true
}

record() { echo "$1" >>"$RAW"; }

# Kernel pktgen (Documentation/networking/pktgen.rst), in the client
# namespace: its per-CPU kthread kpktgend_N sends on our veth. pkt_size 60
# is a 64-byte frame on the wire; UDPCSUM gives complete UDP checksums.
pg() { # FILE COMMAND
    ip netns exec "$NS_CL" sh -c "echo '$2' > /proc/net/pktgen/$1"
}
pktgen_start() { # DST DPORT WORKLOAD SECONDS -> sets GEN_PID
    local d=$VC cmd
    pg "kpktgend_$GEN_CPU" rem_device_all
    pg "kpktgend_$GEN_CPU" "add_device $d"
    for cmd in "count 0" "clone_skb 0" "pkt_size 60" "delay 0" "dst_mac $MAC_VG" \
        "src_mac $MAC_VC" "dst $1" "udp_dst_min $2" "udp_dst_max $2" "flag UDPCSUM"; do
        pg $d "$cmd"
    done
    if [[ $3 == udp-new ]]; then
        for cmd in "src_min 198.18.64.0" "src_max 198.18.127.255" "udp_src_min 1024" \
            "udp_src_max 65535" "flag IPSRC_RND" "flag UDPSRC_RND"; do pg $d "$cmd"; done
    else
        for cmd in "src_min $CL_IP" "src_max $CL_IP" "udp_src_min 10000" "udp_src_max 11023" \
            "flag !IPSRC_RND" "flag !UDPSRC_RND"; do pg $d "$cmd"; done
    fi
    # `start` blocks until `stop`; the subshell below stops it in time.
    ip netns exec "$NS_CL" sh -c 'echo start > /proc/net/pktgen/pgctrl' &
    GEN_PID=$!
    (sleep "$4"; ip netns exec "$NS_CL" sh -c 'echo stop > /proc/net/pktgen/pgctrl') &
    PIDS+=($!)
}

# udp-gen in the client namespace on the generator's CPU, in the
# background (sets GEN_PID, writes $OUT/gen.json): WORKLOAD's flow
# pattern to DST:DPORT for SECONDS, at RATE frames/s (0: as fast as it
# can, the open loop).
udpgen_start() { # WORKLOAD DST DPORT SECONDS RATE
    local pattern=(--flows 1024 --sport 10000) src=$CL_IP rate_args=()
    [[ $1 == udp-new ]] && pattern=(--new-flows)
    [[ $FAMILY == ipv6 ]] && src=$CL_IP6
    [[ $5 == 0 ]] || rate_args=(--rate "$5")
    ip netns exec "$NS_CL" taskset -c $GEN_CPU "$TOOL" udp-gen --iface "$VC" --src-mac $MAC_VC \
        --dst-mac $MAC_VG --src $src --dst "$2" --dport "$3" "${pattern[@]}" "${rate_args[@]}" \
        --duration "$4" --cpu $GEN_CPU >"$OUT/gen.json" &
    GEN_PID=$!
}

# One trial of a loss search: udp-gen at RATE frames/s (0: the open
# loop's full rate) for WARMUP + DURATION; prints the offered and
# delivered rates (pps) over the DURATION window and, of the offered,
# the rate the client's veth refused (the gateway veth's receive ring
# full), tab-separated.
udp_trial() { # WORKLOAD DST DPORT RATE
    local wl=$1 rate=$4 gpid s0 s1
    flush_state
    udpgen_start "$wl" "$2" "$3" "$(awk -v w="$WARMUP" -v d="$DURATION" 'BEGIN { print w + d + 0.3 }')" "$rate"
    gpid=$GEN_PID
    sleep "$WARMUP"
    s0=$(snap)
    sleep "$DURATION"
    s1=$(snap)
    wait "$gpid" || die "udp-gen failed at rate $rate ($wl)"
    awk -v a="$s0" -v b="$s1" 'BEGIN {
        gsub(/[\[\]]/, "", a); gsub(/[\[\]]/, "", b); split(a, x, ","); split(b, y, ",")
        dt = y[1] - x[1]
        printf "%.0f\t%.0f\t%.0f\n", (y[2] - x[2] + y[3] - x[3]) / dt, (y[8] - x[8]) / dt, (y[3] - x[3]) / dt }'
}

# Whether OFFERED and DELIVERED (pps) lose at most LOSS_SEARCH percent.
within_loss() { # OFFERED DELIVERED
    awk -v o="$1" -v d="$2" -v t="$LOSS_SEARCH" 'BEGIN { exit !(o > 0 && o - d <= o * t / 100) }'
}

# loss_search PEER WORKLOAD SERVICES REP DST DPORT (see --loss-search):
# the rate bisected between 0 and the open loop's offered rate; a trial
# passes when its loss is within the tolerance. The result is the highest
# rate that passed (the open loop's own, if it passed: then the generator
# is the limit, not the gateway).
loss_search() {
    local peer=$1 wl=$2 n=$3 rep=$4 dst=$5 dport=$6 busy lo=0 hi mid t off del ref trials i
    busy=$(quiet)
    t=$(udp_trial "$wl" "$dst" "$dport" 0)
    IFS=$'\t' read -r off del ref <<<"$t"
    trials="[0,$off,$del,$ref]"
    echo "    open loop: offered $off pps, delivered $del pps ($ref refused at the gateway veth's ring)"
    if within_loss "$off" "$del"; then
        lo=$off hi=$off
    else
        hi=$off
        for ((i = 0; i < LOSS_STEPS; i++)); do
            mid=$(((lo + hi) / 2))
            t=$(udp_trial "$wl" "$dst" "$dport" "$mid")
            IFS=$'\t' read -r off del ref <<<"$t"
            trials+=",[$mid,$off,$del,$ref]"
            if within_loss "$off" "$del"; then
                lo=$mid
                echo "    $mid pps: offered $off, delivered $del ($ref refused at the gateway veth's ring): passed"
            else
                hi=$mid
                echo "    $mid pps: offered $off, delivered $del ($ref refused at the gateway veth's ring): lost more than $LOSS_SEARCH%"
            fi
        done
    fi
    echo "    highest rate losing at most $LOSS_SEARCH%: $(awk -v r="$lo" 'BEGIN { printf "%.3f", r / 1e6 }') Mpps"
    echo "{\"peer\":\"$peer\",\"workload\":\"$wl\",\"services\":$n,\"rep\":$rep,\"busy\":$busy,\"tolerance_pct\":$LOSS_SEARCH,\"rate_pps\":$lo,\"failed_pps\":$hi,\"trials\":[$trials]}" >>"$OUT/loss.jsonl"
}

# udp PEER WORKLOAD SERVICES REP DST DPORT
udp_run() {
    local peer=$1 wl=$2 n=$3 rep=$4 dst=$5 dport=$6 busy s0 s1 g0 g1 gen total
    flush_state
    busy=$(quiet)
    total=$(awk -v w="$WARMUP" -v d="$DURATION" 'BEGIN { print w + d + 0.3 }')
    # perf takes a second or two to start and to write its file: the
    # generator outlasts it, or the profile ends on an idle gateway.
    [[ -n ${PERF_OUT:-} ]] && total=$(awk -v t="$total" 'BEGIN { print t + 5 }')
    if [[ $GENERATOR == pktgen ]]; then
        echo '{"generator":"pktgen"}' >"$OUT/gen.json"
        pktgen_start "$dst" "$dport" "$wl" "$total"
    else
        udpgen_start "$wl" "$dst" "$dport" "$total" 0
    fi
    local gpid=$GEN_PID c0="" c1=""
    sleep "$WARMUP"
    g0=$(gw_cpu_ns)
    s0=$(snap)
    [[ $peer == cipgw* ]] && c0=$(cipgw_counters)
    if [[ -n ${PERF_OUT:-} ]]; then
        # No call graphs (a frame-pointer-less binary gives none worth
        # their cost) and a modest rate: at full rate the profile would
        # otherwise slow what it measures.
        taskset -c $GW_CPU perf record -q -F "${CIPGW_PERF_FREQ:-1999}" -C $GW_CPU -o "$PERF_OUT.data" -- sleep "$DURATION" >/dev/null 2>&1 || true
    else
        sleep "$DURATION"
    fi
    [[ $peer == cipgw* ]] && c1=$(cipgw_counters)
    s1=$(snap)
    g1=$(gw_cpu_ns)
    wait "$gpid" || die "udp-gen failed for $peer $wl"
    gen=$(cat "$OUT/gen.json")
    local counters=""
    [[ -n $c0 ]] && counters=",\"cipgw0\":$c0,\"cipgw1\":$c1"
    record "{\"peer\":\"$peer\",\"workload\":\"$wl\",\"services\":$n,\"rep\":$rep,\"busy\":$busy,\"snap0\":$s0,\"snap1\":$s1,\"gw_cpu_ns\":$((g1 - g0)),\"gen\":$gen$counters}"
    # One pass over the snapshots: the delivered rate (kept for
    # `own_time` after a profiled rep), a tab, then the summary line.
    local summary
    summary=$(awk -v a="$s0" -v b="$s1" -v g=$((g1 - g0)) 'BEGIN {
        gsub(/[\[\]]/, "", a); gsub(/[\[\]]/, "", b); split(a, x, ","); split(b, y, ",")
        dt = y[1] - x[1]; off = (y[2] - x[2] + y[3] - x[3]) / dt; del = (y[8] - x[8]) / dt
        printf "%.1f\t    offered %.3f Mpps, delivered %.3f Mpps (loss %.1f%%)", del, off / 1e6, del / 1e6, (off > 0 ? 100 * (1 - del / off) : 0)
        if (y[8] > x[8]) printf ", gateway threads %.0f ns per delivered packet", g / (y[8] - x[8]) }')
    LAST_DELIVERED_PPS=${summary%%$'\t'*}
    echo "${summary#*$'\t'}"
    [[ -z $c0 ]] || losses_line "$peer" "$wl" "$n" "$rep" "$s0" "$s1" "$c0" "$c1"
}

# cipgw's own time per delivered packet in a profiled rep (the last
# `udp_run`): the worker threads' samples outside the kernel, as a share
# of the gateway core's, over the rep's delivered rate. Unlike the batch
# time per frame, it leaves out what preempts a batch (the NAPI thread
# shares the core), and unlike the delivered ratio, the kernel's share.
own_time() { # PERF_TXT PEER WORKLOAD
    awk -v pps="$LAST_DELIVERED_PPS" -v what="$2 $3" '
        NF == 3 && $2 ~ /^cipgw-worker/ && $3 !~ /kernel/ { sub("%", "", $1); share += $1 }
        END { if (pps > 0 && share > 0) printf "    own code of %s: %.1f%% of the gateway core at %.3f Mpps delivered = %.0f ns per packet\n", what, share, pps / 1e6, share / 100 * 1e9 / pps }' "$1"
}

# tcp PEER WORKLOAD SERVICES REP TO
tcp_run() {
    local peer=$1 wl=$2 n=$3 rep=$4 to=$5 busy res
    flush_state
    busy=$(quiet)
    res=$(in_ns "$NS_CL" taskset -c $GEN_CPU "$TOOL" "$wl" --to "$to" --duration "$DURATION" \
        --warmup "$WARMUP" --cpu $GEN_CPU) || die "$wl failed for $peer"
    record "{\"peer\":\"$peer\",\"workload\":\"$wl\",\"services\":$n,\"rep\":$rep,\"busy\":$busy,\"tcp\":$res}"
    echo "    $res"
}

# --- peers ----------------------------------------------------------------
start_cipgw() { # PEER(cipgw|cipgw-pt[+VARIANT]) SERVICES
    local extra=() t0
    [[ $(base_peer "$1") == cipgw-pt ]] && extra=(--pass-through --pass-through-peer "${BACKENDS[0]}")
    # shellcheck disable=SC2206
    extra+=($CIPGW_ARGS)
    local bin=$CIPGW
    if [[ $1 == *+* ]]; then
        # shellcheck disable=SC2206
        extra+=(${VARIANTS[${1#*+}]})
        bin=${VARIANT_BINS[${1#*+}]:-$CIPGW}
    fi
    echo "   $bin run ... ${extra[*]}"
    local cidr=$SERVICE_CIDR
    [[ $FAMILY == ipv6 ]] && cidr=$SERVICE_CIDR6
    t0=$(date +%s.%N)
    ip netns exec "$NS_GW" "$bin" run --iface "$VG" --iface "$VP" --control-file "$OUT/rules/$2/control.yaml" \
        --service-cidr $cidr --cores $GW_CPU --xdp-mode "$XDP_MODE" \
        --state-dir "$OUT/state-$1-$2" "${extra[@]}" \
        >"$OUT/cipgw-$1-$2.log" 2>&1 &
    CIPGW_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        grep -q "cipgw ready" "$OUT/cipgw-$1-$2.log" && break
        kill -0 "$CIPGW_PID" 2>/dev/null || { cat "$OUT/cipgw-$1-$2.log" >&2; die "cipgw exited before it was ready"; }
        sleep 0.1
    done
    grep -q "cipgw ready" "$OUT/cipgw-$1-$2.log" || die "cipgw not ready after 30 s"
    SETUP_S=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    pin_napi
}
stop_cipgw() {
    local i
    kill -TERM "$CIPGW_PID" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$CIPGW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CIPGW_PID" 2>/dev/null || true
    wait "$CIPGW_PID" 2>/dev/null || true
    CIPGW_PID=""
    # cipgw leaves its XDP program attached for the next gateway (it drops
    # VIP traffic meanwhile); the next peer on these veths is not one.
    local dev mode
    for dev in "$VG" "$VP"; do
        for mode in xdpdrv xdpgeneric; do
            ip -n "$NS_GW" link set dev "$dev" "$mode" off 2>/dev/null || true
        done
    done
}

peer_up() { # PEER SERVICES
    local t0
    t0=$(date +%s.%N)
    SETUP_S=0
    # The family's forwarding switch and ruleset loader.
    local fwd=net.ipv4.ip_forward restore=iptables-restore
    [[ $FAMILY == ipv6 ]] && fwd=net.ipv6.conf.all.forwarding restore=ip6tables-restore
    case $1 in
    forward)
        in_ns "$NS_GW" sysctl -qw $fwd=1 ;;
    iptables)
        in_ns "$NS_GW" sysctl -qw $fwd=1
        in_ns "$NS_GW" $restore <"$OUT/rules/$2/iptables.rules" ;;
    nftables)
        in_ns "$NS_GW" sysctl -qw $fwd=1
        in_ns "$NS_GW" nft -f "$OUT/rules/$2/nftables.nft" ;;
    cipgw | cipgw-pt | cipgw+* | cipgw-pt+*)
        in_ns "$NS_GW" sysctl -qw $fwd=0
        start_cipgw "$1" "$2" ;;
    esac
    [[ $1 == cipgw* ]] || SETUP_S=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    [[ $1 == cipgw* ]] || pin_napi # the thread list for gw_cpu_ns
    record "{\"peer\":\"$1\",\"workload\":\"setup\",\"services\":$2,\"setup_s\":$SETUP_S}"
    # Resolve the backends' MACs before traffic starts.
    local a
    for a in "${BACKENDS[@]}"; do in_ns "$NS_GW" ping -c1 -W1 "$a" >/dev/null 2>&1 || true; done
    if [[ $FAMILY == ipv6 ]]; then
        for a in "${BACKENDS6[@]}"; do in_ns "$NS_GW" ping -6 -c1 -W1 "$a" >/dev/null 2>&1 || true; done
    fi
}
peer_down() {
    [[ -n $CIPGW_PID ]] && stop_cipgw
    in_ns "$NS_GW" nft flush ruleset
    in_ns "$NS_GW" sysctl -qw net.ipv4.ip_forward=0
    [[ $FAMILY == ipv4 ]] || in_ns "$NS_GW" sysctl -qw net.ipv6.conf.all.forwarding=0
    flush_state
}

# Which workloads run at which Service count, per peer.
plan() { # PEER SERVICES -> workloads
    local peer=$1 n=$2 w out=()
    for w in udp-est udp-new tcp-rr tcp-crr tcp-stream; do
        if ((n == 1)) || [[ $peer == forward ]]; then
            has "$WORKLOADS" "$w" && out+=("$w")
        elif has "$WORKLOADS" scale; then
            case $w in
            udp-est | udp-new) out+=("$w") ;;
            tcp-crr) ((n == MAX_SERVICES)) && has "$WORKLOADS" tcp-crr && out+=("$w") ;;
            esac
        fi
    done
    # The scale workload needs udp-est at one Service too.
    if ((n == 1)) && has "$WORKLOADS" scale && ! has "${out[*]:-}" udp-est; then out=(udp-est "${out[@]}"); fi
    # Pass-through does no NAT: a TCP handshake to the VIP cannot complete.
    [[ $(base_peer "$peer") == cipgw-pt ]] && out=($(tr ' ' '\n' <<<"${out[*]:-}" | grep '^udp' || true))
    echo "${out[*]:-}"
}

# --- metadata -------------------------------------------------------------
json_escape() { sed 's/\\/\\\\/g; s/"/\\"/g' <<<"$1"; }
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || rev="$rev+dirty"
cat >"$OUT/meta.json" <<EOF
{"date":"$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "cpu":"$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)",
 "cores":$(nproc),
 "kernel":"$(uname -r)",
 "xdp_mode":"$XDP_MODE",
 "family":"$FAMILY",
 "build":"$PROFILE_DIR",
 "cipgw_rev":"$rev",
 "iptables":"$(iptables --version)",
 "nft":"$(nft --version)",
 "smoke":$SMOKE, "duration_s":$DURATION, "warmup_s":$WARMUP, "reps":$REPS,
 "services":[$(tr ' ' ',' <<<"$SERVICES")],
 "peers":"$PEERS", "workloads":"$WORKLOADS",
 "generator":"$([[ $GENERATOR == pktgen ]] && echo "kernel pktgen" || echo "cipgw-veth-bench udp-gen (AF_PACKET + sendmmsg, open loop)"), $([[ $FAMILY == ipv6 ]] && echo "62-byte IPv6 frames (66 on the wire)" || echo "60-byte frames (64 on the wire)")",
 "placement":$(awk 'BEGIN{printf "["} NR>1{printf "%s\"%s\"", (NR>2?",":""), $0} END{printf "]"}' "$OUT/placement.txt" | sed 's/  */ /g'),
 "command":"$(json_escape "benches/veth/run.sh ${ORIG_ARGS[*]:-}")"}
EOF

# --- the run --------------------------------------------------------------
started=$SECONDS
for peer in $PEERS; do
    counts=$SERVICES
    [[ $peer == forward ]] && counts=0
    for n in $counts; do
        wls=$(plan "$peer" "$n")
        [[ -n $wls ]] || continue
        rules=$n; ((n == 0)) && rules=1
        echo "== $peer, $n Services: $wls"
        peer_up "$peer" "$rules"
        echo "   (set up in ${SETUP_S}s)"
        for wl in $wls; do
            if [[ $peer == forward ]]; then
                udp_dst=${BACKENDS[0]} udp_port=9000 tcp_to=${BACKENDS[0]}:8080
                [[ $FAMILY == ipv6 ]] && udp_dst=${BACKENDS6[0]}
            else
                # shellcheck disable=SC1090
                . "$OUT/rules/$rules/meta.env"
                udp_dst=$VIP udp_port=$UDP_PORT tcp_to=$VIP:$TCP_PORT
            fi
            for ((rep = 1; rep <= REPS; rep++)); do
                echo "  $wl rep $rep"
                case $wl in
                udp-*)
                    if [[ -n $LOSS_SEARCH ]]; then
                        loss_search "$peer" "$wl" "$n" "$rep" "$udp_dst" "$udp_port"
                    else
                        udp_run "$peer" "$wl" "$n" "$rep" "$udp_dst" "$udp_port"
                    fi ;;
                tcp-*) tcp_run "$peer" "$wl" "$n" "$rep" "$tcp_to" ;;
                esac
            done
            if ((PROFILE)) && [[ $wl == udp-* && $peer != forward ]] && ((n == 1 || n == MAX_SERVICES)); then
                echo "  $wl profile (perf record on CPU $GW_CPU; not counted)"
                # rep 0: recorded for reference, left out of the medians.
                PERF_OUT=$OUT/perf-$peer-$wl-$n udp_run "$peer" "$wl" "$n" 0 "$udp_dst" "$udp_port"
                # Per thread and object first (the worker's own code is its
                # `cipgw` share), then per symbol.
                for sort in comm,dso comm,sym; do
                    perf report -i "$OUT/perf-$peer-$wl-$n.data" --no-children --sort $sort --stdio -g none \
                        2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
                done >"$OUT/perf-$peer-$wl-$n.txt" || true
                own_time "$OUT/perf-$peer-$wl-$n.txt" "$peer" "$wl" | tee -a "$OUT/perf-$peer-$wl-$n.txt"
            fi
        done
        peer_down
    done
done
echo "run.sh: measured in $((SECONDS - started))s"

"$TOOL" report --dir "$OUT"
if ((SMOKE)); then
    "$TOOL" check --dir "$OUT"
fi
echo "run.sh: results in $OUT (results.md, results.json, pps.png)"

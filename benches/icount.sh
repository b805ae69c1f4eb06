#!/usr/bin/env bash
# Instructions per packet of the IPv4 packet path (benches/icount.rs),
# counted by valgrind's cachegrind: a figure a loaded machine does not
# move, for A/B comparisons against another revision.
#
# Usage: benches/icount.sh [--base REV] [--cases established,reply,...]
#   --base REV   also count REV's packet path (built in a temporary git
#                worktree with this checkout's benches/icount.rs and
#                benches/support/packets.rs) and print the ratio
#   --cases      which cases (default: established,reply,new_flow_1,
#                new_flow_10000)
#
# Each case runs twice, with LOW and HIGH packets; instructions per packet
# are (I(HIGH) - I(LOW)) / (HIGH - LOW), so the setup cancels out.
set -euo pipefail

LOW=20000
HIGH=120000
cases="established,reply,new_flow_1,new_flow_10000"
base=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --base) base="$2"; shift 2 ;;
        --cases) cases="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "icount.sh: unknown argument $1" >&2; exit 64 ;;
    esac
done
command -v valgrind >/dev/null || { echo "icount.sh: needs valgrind (apt-get install valgrind)" >&2; exit 69; }

root="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"

# The icount bench binary of the checkout at $1.
build() {
    (cd "$1" && cargo bench -p cipgw-datapath --bench icount --no-run --message-format=json 2>/dev/null) |
        grep -o '"executable":"[^"]*icount[^"]*"' | tail -1 | cut -d'"' -f4
}

# Instructions per packet of case $2 with binary $1.
count() {
    local bin="$1" case="$2" lo hi
    lo=$(valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$bin" "$case" "$LOW" 2>&1 |
        awk '/I *refs:/ { gsub(",", "", $NF); print $NF }')
    hi=$(valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$bin" "$case" "$HIGH" 2>&1 |
        awk '/I *refs:/ { gsub(",", "", $NF); print $NF }')
    echo $(( (hi - lo) / (HIGH - LOW) ))
}

echo "building $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo '+changes')" >&2
head_bin="$(build "$root")"
[[ -x "$head_bin" ]] || { echo "icount.sh: building the icount bench failed" >&2; exit 1; }
base_bin=""
if [[ -n "$base" ]]; then
    tree="$(mktemp -d /tmp/cipgw-icount-base.XXXXXX)"
    trap 'git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
    git -C "$root" worktree add --detach "$tree" "$base" >/dev/null
    cp "$root/benches/icount.rs" "$tree/benches/icount.rs"
    cp "$root/benches/support/packets.rs" "$tree/benches/support/packets.rs"
    grep -q 'name = "icount"' "$tree/forwarder/datapath/Cargo.toml" ||
        printf '\n[[bench]]\nname = "icount"\npath = "../../benches/icount.rs"\nharness = false\n' \
            >> "$tree/forwarder/datapath/Cargo.toml"
    echo "building $base in $tree" >&2
    base_bin="$(CARGO_TARGET_DIR="$root/target/icount-base" build "$tree")"
    [[ -x "$base_bin" ]] || { echo "icount.sh: building $base's icount bench failed" >&2; exit 1; }
fi

printf '%-16s %10s' case "instr/pkt"
[[ -n "$base_bin" ]] && printf ' %10s %8s' "$base" ratio
printf '\n'
IFS=, read -ra list <<< "$cases"
for c in "${list[@]}"; do
    h=$(count "$head_bin" "$c")
    printf '%-16s %10s' "$c" "$h"
    if [[ -n "$base_bin" ]]; then
        b=$(count "$base_bin" "$c")
        printf ' %10s %8s' "$b" "$(awk -v h="$h" -v b="$b" 'BEGIN { printf "%.3f", h / b }')"
    fi
    printf '\n'
done

#!/usr/bin/env bash
# Instructions per packet of the packet path (benches/icount.rs;
# benches/icount6.rs for the cases named *_ipv6*, benches/icount_snat.rs
# for those named *snat*), counted by valgrind's
# cachegrind: a figure a loaded machine does not move, for A/B
# comparisons against another revision or of IPv6 against IPv4.
#
# Usage: benches/icount.sh [--base REV] [--cases established,reply,...]
#   --base REV   also count REV's packet path (built in a temporary git
#                worktree with this checkout's benches/icount*.rs,
#                benches/support/packets*.rs and icount_cases.rs) and
#                print the ratio
#   --cases      which cases (default: established,reply,new_flow_1,
#                new_flow_10000; also established_batched, as a worker
#                runs it, established_spread over 2^18 flows,
#                reply_spread, their replies,
#                established_churn, batched while other connections
#                end, established_unreplied, batched over UDP flows
#                that never had a reply (the veth udp-est), and
#                new_flow_batched, new flows batched, ct_lookups and
#                ct_flood, the conntrack bench's batched lookups and
#                SYN flood alone; the IPv6
#                ones are established_ipv6,
#                reply_ipv6, new_flow_ipv6_1, new_flow_ipv6_10000,
#                established_unreplied_ipv6, ct_lookups_ipv6 and
#                new_flow_ipv6_snat_1 and _10000 (new flows with SNAT
#                through a full 8,192-flow table, to a Service among 1 or
#                10,000); new_flow_full_snat and new_flow_full_nosnat set
#                new flows through a full 8,192-flow table with SNAT
#                against without)
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
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "icount.sh: unknown argument $1" >&2; exit 64 ;;
    esac
done
command -v valgrind >/dev/null || { echo "icount.sh: needs valgrind (apt-get install valgrind)" >&2; exit 69; }

root="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"

# The bench binary $2 (icount or icount6) of the checkout at $1.
build() {
    (cd "$1" && cargo bench -p cipgw-datapath --bench "$2" --no-run --message-format=json 2>/dev/null) |
        grep -o "\"executable\":\"[^\"]*/$2-[^\"]*\"" | tail -1 | cut -d'"' -f4
}

# The bench a case runs in.
bench_of() {
    case "$1" in *_ipv6*) echo icount6 ;; *snat*) echo icount_snat ;; *) echo icount ;; esac
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

IFS=, read -ra list <<< "$cases"
benches="$(for c in "${list[@]}"; do bench_of "$c"; done | sort -u)"

echo "building $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo '+changes')" >&2
declare -A head_bin base_bin
for b in $benches; do
    head_bin[$b]="$(build "$root" "$b")"
    [[ -x "${head_bin[$b]}" ]] || { echo "icount.sh: building the $b bench failed" >&2; exit 1; }
done
if [[ -n "$base" ]]; then
    tree="$(mktemp -d /tmp/cipgw-icount-base.XXXXXX)"
    trap 'git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
    git -C "$root" worktree add --detach "$tree" "$base" >/dev/null
    for b in $benches; do
        cp "$root/benches/$b.rs" "$tree/benches/$b.rs"
        grep -q "name = \"$b\"" "$tree/forwarder/datapath/Cargo.toml" ||
            printf '\n[[bench]]\nname = "%s"\npath = "../../benches/%s.rs"\nharness = false\n' "$b" "$b" \
                >> "$tree/forwarder/datapath/Cargo.toml"
    done
    cp "$root"/benches/support/packets*.rs "$root"/benches/support/icount_cases.rs "$tree/benches/support/"
    # Before 4b71b8c the second prefetch pass took no batch context.
    if grep -q 'pub fn prefetch_flows(&mut self)' "$tree/forwarder/datapath/src/pipeline.rs"; then
        sed -i 's/\.prefetch_flows(ctx)/.prefetch_flows()/' "$tree"/benches/icount*.rs
    fi
    # Before the lookup's candidate (f534c87), the second step said
    # whether the bucket held the key, and the third searched it again:
    # the conntrack cases as such a revision's worker took them.
    if ! grep -q 'pub fn lookup_candidate_into' "$tree/forwarder/datapath/src/conntrack/mod.rs"; then
        sed -i -e 's/^type Seen = Candidate; .*/type Seen = bool;/' \
            -e 's/^    seen\.is_some() .*/    seen/' \
            -e 's/^    ct\.lookup_candidate_into(key, hash, seen, now, flags, hit) .*/    let _ = seen;\n    ct.lookup_into(key, hash, now, flags, hit)/' \
            -e 's/Candidate, Conntrack,/Conntrack,/' \
            "$tree/benches/icount.rs"
    fi
    echo "building $base in $tree" >&2
    for b in $benches; do
        base_bin[$b]="$(CARGO_TARGET_DIR="$root/target/icount-base" build "$tree" "$b")"
        [[ -x "${base_bin[$b]}" ]] || { echo "icount.sh: building $base's $b bench failed" >&2; exit 1; }
    done
fi

printf '%-20s %10s' case "instr/pkt"
[[ -n "$base" ]] && printf ' %10s %8s' "$base" ratio
printf '\n'
for c in "${list[@]}"; do
    b="$(bench_of "$c")"
    h=$(count "${head_bin[$b]}" "$c")
    printf '%-20s %10s' "$c" "$h"
    if [[ -n "$base" ]]; then
        o=$(count "${base_bin[$b]}" "$c")
        printf ' %10s %8s' "$o" "$(awk -v h="$h" -v o="$o" 'BEGIN { printf "%.3f", h / o }')"
    fi
    printf '\n'
done

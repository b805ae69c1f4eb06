#!/usr/bin/env bash
# Alternated veth runs: run.sh several times, each run measuring every peer
# once per rep, the peers' order rotated from run to run, so that the
# machine's drift (this VM's rates move by a fifth between minutes) falls
# on all peers alike. Prints, per peer and workload, each run's delivered
# rate, its ratio to cipgw-pt's in the same run and the batch time per
# frame, with their medians; with --profile, also each profiled rep's
# time of cipgw's own code per delivered packet; with --loss-search, each
# run's highest rate within the loss tolerance and its ratio to
# cipgw-pt's in the same run.
#
# Usage: benches/veth/alternate.sh --out DIR [--runs N] --peers P1,P2,...
#          [any other run.sh argument, passed on]
#   The peers must include cipgw-pt (the ratios' baseline). Defaults:
#   3 runs; run.sh gets --no-build --services 1 --reps 2 --quiet-wait 3
#   unless given otherwise. Each run's report is DIR/runK.
set -euo pipefail

out="" runs=3 peers="" pass=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --peers) peers="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) pass+=("$1"); shift ;;
    esac
done
[[ -n $out && -n $peers ]] || { echo "alternate.sh: needs --out DIR and --peers" >&2; exit 64; }
[[ ,$peers, == *,cipgw-pt,* ]] || { echo "alternate.sh: --peers must include cipgw-pt" >&2; exit 64; }
has() { local a; for a in "${pass[@]}"; do [[ $a == "$1" ]] && return 0; done; return 1; }
has --services || pass+=(--services 1)
has --reps || pass+=(--reps 2)
has --quiet-wait || pass+=(--quiet-wait 3)
has --no-build || pass+=(--no-build)

here="$(dirname "$0")"
IFS=, read -ra list <<< "$peers"
mkdir -p "$out"
for ((k = 0; k < runs; k++)); do
    # Rotated by k: each peer takes each place in turn.
    order=("${list[@]:k % ${#list[@]}}" "${list[@]:0:k % ${#list[@]}}")
    echo "alternate.sh: run $((k + 1)) of $runs: ${order[*]}" >&2
    (IFS=,; "$here/run.sh" --peers "${order[*]}" "${pass[@]}" --out "$out/run$k") >"$out/run$k.log" 2>&1 ||
        { echo "alternate.sh: run $k failed, see $out/run$k.log" >&2; exit 1; }
    rm -rf "$out/run$k"/state-*
done

python3 - "$out" <<'EOF'
import glob, json, re, statistics, sys
# Each run's results.json, read once for both tables.
runs = [json.load(open(f)) for f in sorted(glob.glob(sys.argv[1] + "/run*/results.json"))]
rows = {}
for run in runs:
    cells = {(c["peer"], c["workload"], c["services"]): c for c in run["results"]}
    for (peer, wl, n), c in cells.items():
        pt = cells.get(("cipgw-pt", wl, n))
        if pt and pt["delivered_pps"]:
            rows.setdefault((peer, wl, n), []).append(
                (c["delivered_pps"] / 1e6, c["delivered_pps"] / pt["delivered_pps"], c.get("batch_ns_per_frame") or 0))
med = lambda xs: statistics.median(xs)
if rows:
    print("| peer | workload | Services | Mpps per run | ratio to pass-through per run | median ratio | median batch ns/frame |")
    print("|---|---|---:|---|---|---:|---:|")
for (peer, wl, n), v in sorted(rows.items()):
    print(f"| {peer} | {wl} | {n} | {' '.join(f'{a:.3f}' for a, _, _ in v)} | "
          f"{' '.join(f'{b:.2f}' for _, b, _ in v)} | {med([b for _, b, _ in v]):.3f} | {med([c for _, _, c in v]):.0f} |")
# With --loss-search: each run's median highest rate within the
# tolerance, and its ratio to cipgw-pt's of the same run.
loss, tolerance = {}, None
for run in runs:
    cells = {(c["peer"], c["workload"], c["services"]): c for c in run.get("loss_search", [])}
    for (peer, wl, n), c in cells.items():
        tolerance = c["tolerance_pct"]
        pt = cells.get(("cipgw-pt", wl, n))
        if pt and pt["rate_pps"]:
            loss.setdefault((peer, wl, n), []).append((c["rate_pps"] / 1e6, c["rate_pps"] / pt["rate_pps"]))
if loss:
    print()
    print(f"| peer | workload | Services | highest rate lost at most {tolerance}%, Mpps per run | ratio to pass-through per run | median ratio |")
    print("|---|---|---:|---|---|---:|")
    for (peer, wl, n), v in sorted(loss.items()):
        print(f"| {peer} | {wl} | {n} | {' '.join(f'{a:.3f}' for a, _ in v)} | "
              f"{' '.join(f'{b:.2f}' for _, b in v)} | {med([b for _, b in v]):.3f} |")
# With --profile: each run's "own code of PEER WORKLOAD: ... = N ns per
# packet" (run.sh), per peer and workload.
own = {}
for f in sorted(glob.glob(sys.argv[1] + "/run*.log")):
    for line in open(f):
        m = re.search(r"own code of (\S+) (\S+): .* = (\d+) ns per packet", line)
        if m:
            own.setdefault((m[1], m[2]), []).append(int(m[3]))
if own:
    print()
    print("| peer | workload | cipgw's own code, ns per delivered packet (profiled reps) | median |")
    print("|---|---|---|---:|")
    for (peer, wl), v in sorted(own.items()):
        print(f"| {peer} | {wl} | {' '.join(map(str, v))} | {med(v):.0f} |")
EOF

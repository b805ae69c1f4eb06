#!/usr/bin/env bash
# Fuzzes cipgw's packet path for SECONDS (default 60) with cargo-fuzz.
#
#   forwarder/fuzz/run.sh [SECONDS]
#
# Installs cargo-fuzz (into its target directory) when it is missing. Builds with `--sanitizer none`:
# Rust's own bounds and overflow checks (on in fuzz builds) find what
# AddressSanitizer would in this safe code, and without a sanitizer
# cargo-fuzz needs no nightly toolchain (no RUSTC_BOOTSTRAP either).
# New inputs go to target/corpus (not into the committed seeds); a
# crashing input goes to target/artifacts and the script fails.
#
# FUZZ_FORK=N runs N fuzzing processes that keep going after a crash
# (libFuzzer's -fork=N -ignore_crashes=1): for long runs that should
# report every distinct crash, not stop at the first.
set -euo pipefail

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS]" >&2
    exit 64
fi

fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Its own target directory: the instrumented build shares nothing with the
# workspace's, and must not wait on its lock.
export CARGO_TARGET_DIR="$fuzz_dir/target"

# cargo-fuzz is installed inside the checkout (CI caches nothing outside).
tools="$CARGO_TARGET_DIR/tools"
export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "::: installing cargo-fuzz into $tools"
    cargo install cargo-fuzz --locked --root "$tools"
fi

work="$CARGO_TARGET_DIR/corpus/packet_path"
# One directory per run, so that a run's crashes are told apart.
artifacts="$CARGO_TARGET_DIR/artifacts/packet_path/$(date +%Y%m%d-%H%M%S)/"
mkdir -p "$work" "$artifacts"

# cargo-fuzz looks for fuzz/ in the crate it runs in: forwarder/.
cd "$fuzz_dir/.."
cargo fuzz build --sanitizer none packet_path
extra=()
if [[ -n ${FUZZ_FORK:-} ]]; then
    extra=(-fork="$FUZZ_FORK" -ignore_crashes=1)
fi
status=0
cargo fuzz run --sanitizer none packet_path "$work" "$fuzz_dir/corpus/packet_path" -- \
    -max_total_time="$seconds" \
    -max_len=4096 \
    -dict="$fuzz_dir/packet_path.dict" \
    -artifact_prefix="$artifacts" \
    -print_final_stats=1 "${extra[@]}" || status=$?
# With FUZZ_FORK, libFuzzer exits 0 after crashes it ignored.
if ((status == 0)) && [[ -n $(ls -A "$artifacts") ]]; then
    status=1
fi
if ((status != 0)); then
    echo "::: the fuzzer failed (status $status); crashing inputs:" >&2
    ls -l "$artifacts" >&2 || true
    echo "::: minimize with: cd forwarder && CARGO_TARGET_DIR=$CARGO_TARGET_DIR" \
        "cargo fuzz tmin --sanitizer none packet_path <artifact>" >&2
fi
exit "$status"

#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 20), on the stable toolchain.
# Installs cargo-fuzz (idempotent) if it is missing. Exits non-zero on the first crash, leaving
# the reproducer under fuzz/artifacts/<target>/.
set -euo pipefail
seconds=${1:-20}
repo=$(cd "$(dirname "$0")/.." && pwd)
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
cd "$repo/fuzz"
# Stable rustc accepts the sanitizer flags cargo-fuzz passes when told it may.
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
# Build every target first, outside the per-target time limit: a cold build takes minutes on a
# loaded machine, and only the fuzzing itself should be bounded by SECONDS.
echo "fuzz.sh: building the fuzz targets" >&2
cargo fuzz build >"$repo/fuzz/build.log" 2>&1 || {
    echo "fuzz.sh: building the fuzz targets failed; its log:" >&2
    tail -40 "$repo/fuzz/build.log" >&2
    exit 1
}
for target in $targets; do
    echo "fuzz.sh: $target for ${seconds}s" >&2
    mkdir -p "corpus/$target"
    timeout $((seconds + 120)) cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=0 >/dev/null 2>"$repo/fuzz/$target.log" || {
        echo "fuzz.sh: $target failed; its log:" >&2
        tail -40 "$repo/fuzz/$target.log" >&2
        exit 1
    }
done
echo "fuzz.sh: every target ran ${seconds}s without a crash" >&2

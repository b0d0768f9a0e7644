#!/usr/bin/env bash
# Type-checks what must build on Windows for x86_64-pc-windows-gnu, without a Windows machine:
# the hvsock library with every feature (its AF_HYPERV transport, the tokio types on Windows,
# and the Windows-only tests), the hvsock CLI, and the examples (docs/windows.md runs them).
# `cargo check` (the contract), then clippy with warnings as errors, so that code behind
# cfg(windows) stays as clean as the rest.
#
# Adds the target with rustup (idempotent). Where it cannot be added (no rustup, no network,
# a toolchain without that target), it says so and skips: exit 0, not a failure.
#
#   scripts/check-windows.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target=x86_64-pc-windows-gnu

skip() {
    printf 'check-windows: SKIPPED: %s\n' "$*" >&2
    exit 0
}

command -v rustup >/dev/null 2>&1 ||
    skip "rustup is not installed, so the $target target cannot be added"
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target" >&2 ||
        skip "'rustup target add $target' failed (offline, or this toolchain has no such target)"
fi

packages=(-p hvsock -p hvsock-cli)
cargo check --target "$target" --locked "${packages[@]}" --all-features --all-targets
cargo check --target "$target" --locked -p hvsock-e2e --examples
cargo clippy --target "$target" --locked "${packages[@]}" --all-features --all-targets -- -D warnings
cargo clippy --target "$target" --locked -p hvsock-e2e --examples -- -D warnings
echo "check-windows: $target type-checks (hvsock with every feature, hvsock-cli, the examples)" >&2

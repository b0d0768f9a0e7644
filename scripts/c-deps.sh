#!/usr/bin/env bash
# Installs what the C library's build and tests need, idempotently: cargo-c (for `cargo cbuild` /
# `cargo cinstall`), built once from crates.io into the cache and reused afterwards.
#
#   scripts/c-deps.sh          prints the directory that holds cargo-cbuild / cargo-cinstall
#
# It uses a cargo-c of that version already on PATH, else the one in
# ${HVSOCK_CACHE:-<repo>/.cache}/cargo-c, else builds it there (several minutes on two cores; a
# rerun takes well under a second). The C compiler, pkg-config and python3 are
# the system's own (Debian: gcc, g++, pkg-config, python3); musl-gcc (musl-tools), for the
# nested-VM guest's static build, is installed by scripts/nested-vm/setup.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache="${HVSOCK_CACHE:-$repo/.cache}/cargo-c"
# The cargo-c release this repository is tested with (its cargo must read edition 2024).
version="${HVSOCK_CARGO_C_VERSION:-0.10.24}"
bin="$cache/bin"
stamp="$cache/installed-$version"

log() { printf 'c-deps.sh: %s\n' "$*" >&2; }

missing=()
for tool in cc c++ pkg-config; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    log "installing the system C toolchain (${missing[*]} missing)"
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends gcc g++ pkg-config >&2 ||
        { apt-get update >&2 && apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends gcc g++ pkg-config >&2; }
fi

if [[ -f "$stamp" && -x "$bin/cargo-cinstall" && -x "$bin/cargo-cbuild" ]]; then
    echo "$bin"
    exit 0
fi
# A cargo-c of this version already on PATH (e.g. `cargo install cargo-c` into ~/.cargo/bin).
if on_path=$(command -v cargo-cinstall 2>/dev/null) && [[ -x "$(dirname "$on_path")/cargo-cbuild" ]] &&
    "$on_path" cinstall --version 2>/dev/null | grep -q "cargo-c $version"; then
    dirname "$on_path"
    exit 0
fi

mkdir -p "$cache"
# One builder at a time (several worktrees may share HVSOCK_CACHE).
exec 9>"$cache/.lock"
flock 9
if [[ -f "$stamp" && -x "$bin/cargo-cinstall" ]]; then
    echo "$bin"
    exit 0
fi
# cargo-c links cargo, which needs OpenSSL's headers and pkg-config.
if ! pkg-config --exists openssl 2>/dev/null; then
    log "installing libssl-dev (cargo-c's build needs it)"
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends libssl-dev >&2 ||
        { apt-get update >&2 && apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends libssl-dev >&2; }
fi
log "building cargo-c $version into $cache (several minutes, once; log: $cache/install.log)"
started=$(date +%s)
if ! cargo install --locked cargo-c --version "=$version" --root "$cache" >"$cache/install.log" 2>&1; then
    tail -n 30 "$cache/install.log" >&2
    log "error: cargo install cargo-c failed (full log: $cache/install.log)"
    exit 1
fi
rm -f "$cache"/installed-*
touch "$stamp"
log "cargo-c $version ready in $(($(date +%s) - started)) s"
echo "$bin"

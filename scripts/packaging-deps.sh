#!/usr/bin/env bash
# Installs (idempotently) the tools tests/packaging.rs uses to check what an operator gets:
# systemd-analyze, systemd-sysusers and systemd-tmpfiles (offline: verify, --root=; nothing is
# started), groff and man (manual pages), bash (completions), sqlite3 and curl (the guide's
# backup and metrics recipes), and setpriv (the CLI tests run a client as another user).
# Debian/Ubuntu through apt-get; elsewhere it names what is missing.
set -euo pipefail

declare -A package=(
    [systemd-analyze]=systemd [systemd-sysusers]=systemd [systemd-tmpfiles]=systemd
    [groff]=groff-base [man]=man-db [bash]=bash [sqlite3]=sqlite3 [curl]=curl
    [setpriv]=util-linux
)
missing=()
for tool in "${!package[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${package[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing ${missing[*]} for the packaging tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "packaging tests need these packages: ${missing[*]} (install them as root)" >&2
    exit 1
fi

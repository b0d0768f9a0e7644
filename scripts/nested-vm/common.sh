# shellcheck shell=bash
# Shared helpers for the nested-VM scripts. Sourced, never executed.
#
# Defines:
#   NV_SCRIPTS  the directory of these scripts
#   NV_REPO     the repository root (two levels up)
#   NV_CACHE    ${HVSOCK_CACHE:-$NV_REPO/.cache}/nested-vm
#   nv_log / nv_warn / nv_die   messages on stderr, prefixed with the script's name
#   nv_load_env                 sources $NV_CACHE/env.sh (written by setup.sh) and checks it

NV_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NV_REPO="$(cd "$NV_SCRIPTS/../.." && pwd)"
NV_CACHE="${HVSOCK_CACHE:-$NV_REPO/.cache}/nested-vm"
NV_PROG="$(basename "$0")"

nv_log() { printf '%s: %s\n' "$NV_PROG" "$*" >&2; }
nv_warn() { printf '%s: warning: %s\n' "$NV_PROG" "$*" >&2; }
nv_die() {
    printf '%s: error: %s\n' "$NV_PROG" "$*" >&2
    exit 1
}

# Prints the script's header comment (its usage) on stderr.
nv_usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
}

# Source the env file that setup.sh writes, and check that what it names exists.
nv_load_env() {
    local env="$NV_CACHE/env.sh"
    [[ -r "$env" ]] || nv_die "$env not found: run scripts/nested-vm/setup.sh first (as root), with the same HVSOCK_CACHE"
    # shellcheck source=/dev/null
    . "$env"
    local v
    for v in QEMU VMLINUZ MODULES_DIR BUSYBOX BUSYBOX_TREE VHOST_DEVICE_VSOCK; do
        [[ -n "${!v:-}" && -e "${!v}" ]] || nv_die "$v (${!v:-unset}) from $env does not exist: rerun scripts/nested-vm/setup.sh"
    done
}

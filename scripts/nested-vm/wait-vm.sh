#!/usr/bin/env bash
# Waits on a VM that run-vm.sh runs in the background, by watching its run dir.
#
#   wait-vm.sh ready RUN [--line TEXT] [--timeout SECS]
#       Waits until RUN/serial.log has a line containing TEXT (default HVSOCK-GUEST-READY).
#       Exit 0 when it does; 1 if the guest prints HVSOCK-GUEST-FAIL or the VM ends first;
#       124 after SECS (default 60). On failure prints the end of the serial log.
#   wait-vm.sh exit RUN [--timeout SECS]
#       Waits until run-vm.sh has finished and cleaned up (RUN/exit-status exists), then exits with
#       run-vm.sh's status. 124 after SECS (default 120); the VM is left running then.
#
# Typical use from a shell harness:
#   run-vm.sh --initrd I --run-dir "$R" --cid 3 --uds "$R/vm.vsock" --guest-status & vm=$!
#   wait-vm.sh ready "$R" --timeout 60 || { kill "$vm"; wait "$vm"; exit 1; }
#   ... talk to the guest through $R/vm.vsock ...
#   wait-vm.sh exit "$R" --timeout 60   # or: wait "$vm"
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    nv_usage
    exit "${1:-2}"
}

(($# >= 2)) || usage
mode="$1" run="$2"
shift 2
line=HVSOCK-GUEST-READY timeout_s=""
while (($#)); do
    case "$1" in
    --line) line="${2:?}"; shift 2 ;;
    --timeout) timeout_s="${2:?}"; shift 2 ;;
    -h | --help) usage 0 ;;
    *) nv_warn "unknown argument: $1"; usage ;;
    esac
done
# The run dir may not exist yet when a harness starts run-vm.sh and this at once: wait for it too.
[[ -z "$timeout_s" || "$timeout_s" =~ ^[0-9]+$ ]] || nv_die "--timeout $timeout_s: whole seconds"

tail_serial() {
    echo "---- last lines of $run/serial.log ----" >&2
    tail -n 30 "$run/serial.log" 2>/dev/null | tr -d '\r' >&2 || true
    echo "----" >&2
}

case "$mode" in
ready)
    deadline=$((SECONDS + ${timeout_s:-60}))
    while ((SECONDS < deadline)); do
        if [[ -f "$run/serial.log" ]]; then
            if grep -qF -- "$line" "$run/serial.log"; then exit 0; fi
            if grep -q 'HVSOCK-GUEST-FAIL' "$run/serial.log"; then
                nv_warn "the guest failed before printing '$line'"
                tail_serial
                exit 1
            fi
        fi
        if [[ -f "$run/exit-status" ]]; then
            nv_warn "the VM ended (run-vm.sh status $(cat "$run/exit-status")) before printing '$line'"
            tail_serial
            exit 1
        fi
        sleep 0.1
    done
    nv_warn "no '$line' in $run/serial.log after ${timeout_s:-60} s"
    tail_serial
    exit 124
    ;;
exit)
    deadline=$((SECONDS + ${timeout_s:-120}))
    while ((SECONDS < deadline)); do
        if [[ -f "$run/exit-status" ]]; then
            status="$(cat "$run/exit-status")"
            [[ "$status" =~ ^[0-9]+$ ]] || nv_die "$run/exit-status holds '$status'"
            exit "$status"
        fi
        sleep 0.1
    done
    nv_warn "run-vm.sh in $run has not finished after ${timeout_s:-120} s"
    exit 124
    ;;
*) nv_warn "unknown mode: $mode (ready | exit)"; usage ;;
esac

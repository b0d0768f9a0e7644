#!/usr/bin/env bash
# Boots one test guest under QEMU (TCG) with a vhost-user-vsock device served by vhost-device-vsock
# (the default) or by hvsock-vhost, waits for it to power off, and cleans up.
#
#   run-vm.sh --initrd FILE [--run-dir DIR] [--cid N] [--uds PATH] [--append 'WORDS']...
#             [--timeout SECS] [--memory MIB] [--smp N] [--kernel FILE] [--console] [--guest-status]
#             [--device vhost-device-vsock | --device hvsock-vhost --hvsock-vhost BIN --hvsock-dir DIR --vm NAME]
#
#   --device NAME     the vhost-user device: vhost-device-vsock (hybrid vsock at --uds) or hvsock-vhost
#                     (routes through hvsockd at --hvsock-dir as VM NAME; --uds is not used)
#   --hvsock-vhost BIN  the hvsock-vhost binary      --hvsock-dir DIR  hvsockd's --dir   --vm NAME  the VM
#
#   --initrd FILE     initramfs from mkinitramfs.sh (required)
#   --run-dir DIR     this VM's dir, created if missing (default: a new /tmp/hvsock-vm.XXXXXX).
#                     One VM per dir at a time; use a fresh dir per boot when a harness watches files.
#   --cid N           guest CID, >= 3 (default 3)
#   --uds PATH        the hybrid-vsock Unix socket vhost-device-vsock serves (default RUN/vm.vsock):
#                     host->guest: connect to PATH, send "CONNECT <port>\n", read "OK <hostport>\n";
#                     guest->host: the device connects to PATH_<port>, so listen there.
#   --append 'WORDS'  extra kernel command-line words (repeatable); always present:
#                     console=ttyS0 panic=-1 quiet hvsock_test_vm=1 hvsock_cid=N hvsock_guest_timeout=SECS
#   --timeout SECS    bound on the VM, from QEMU's start to power-off (default 120)
#   --memory MIB      guest RAM (default 512)      --smp N   vCPUs (default 2)
#   --kernel FILE     kernel (default $VMLINUZ from setup.sh's env.sh)
#   --console         also copy the guest's serial output to stderr as it comes
#   --guest-status    exit with the status the guest reported (HVSOCK-GUEST-EXIT <n>) instead of QEMU's
#
# Env: HVSOCK_VHOST_LOG  RUST_LOG for the device (default warn: shows its dropped host
#      connections, "Error while parsing "connect PORT\n" command: WouldBlock")
#
# Exit status: 0 the guest powered off (and, with --guest-status, reported 0); with --guest-status the
# guest's status; 124 timeout (both processes killed); 125 could not start, or (--guest-status) the
# guest reported no status; 126 the guest kernel panicked; 130/143 run-vm.sh was interrupted/terminated
# (both processes killed); otherwise QEMU's own non-zero status.
#
# Files in RUN (for a harness that runs this in the background and watches them):
#   run-vm.pid          this script's PID: send it SIGTERM to stop the VM early (it cleans up)
#   vhost.sock          vhost-user socket between QEMU and vhost-device-vsock
#   serial.log          the guest's console (ttyS0); lines end in \r\n. Markers: HVSOCK-GUEST-BOOTED,
#                       HVSOCK-GUEST-READY, HVSOCK-GUEST-FAIL <why>, HVSOCK-GUEST-EXIT <status>
#   qemu.log, DEVICE.log   their stdout+stderr (DEVICE: vhost-device-vsock or hvsock-vhost)
#   qemu.pid, DEVICE.pid   their PIDs while they run
#   uds-path            the hybrid-vsock socket path (one line)
#   state               starting | running | stopping | done
#   qemu-status, guest-status          QEMU's exit status; the guest's reported status (if any)
#   exit-status         this script's exit status, written last: its presence means all is cleaned up
# wait-vm.sh waits on these (ready / exit).

# shellcheck disable=SC2317,SC2015 # trap functions are reachable; `A && B || die` is meant
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    nv_usage
    exit "${1:-125}"
}

initrd="" run="" cid=3 uds="" timeout_s=120 memory=512 smp=2 kernel="" console=0 guest_status_mode=0
device=vhost-device-vsock hvsock_vhost="" hvsock_dir="" vm_name=""
appends=()
while (($#)); do
    case "$1" in
    --initrd) initrd="${2:?}"; shift 2 ;;
    --run-dir) run="${2:?}"; shift 2 ;;
    --cid) cid="${2:?}"; shift 2 ;;
    --uds) uds="${2:?}"; shift 2 ;;
    --append) appends+=("${2?}"); shift 2 ;;
    --timeout) timeout_s="${2:?}"; shift 2 ;;
    --memory) memory="${2:?}"; shift 2 ;;
    --smp) smp="${2:?}"; shift 2 ;;
    --kernel) kernel="${2:?}"; shift 2 ;;
    --console) console=1; shift ;;
    --guest-status) guest_status_mode=1; shift ;;
    --device) device="${2:?}"; shift 2 ;;
    --hvsock-vhost) hvsock_vhost="${2:?}"; shift 2 ;;
    --hvsock-dir) hvsock_dir="${2:?}"; shift 2 ;;
    --vm) vm_name="${2:?}"; shift 2 ;;
    -h | --help) usage 0 ;;
    *) nv_warn "unknown argument: $1"; usage ;;
    esac
done

fail_start() {
    printf '%s: error: %s\n' "$NV_PROG" "$*" >&2
    exit 125
}

[[ -n "$initrd" ]] || { nv_warn "--initrd is required"; usage; }
[[ -f "$initrd" ]] || fail_start "--initrd $initrd: no such file (build it with mkinitramfs.sh)"
int_at_least() { [[ "$1" =~ ^[0-9]{1,10}$ ]] && (($1 >= $2)); }
int_at_least "$cid" 3 && ((cid < 4294967295)) || fail_start "--cid $cid: must be an integer from 3 to 4294967294 (0-2 are reserved)"
int_at_least "$timeout_s" 1 || fail_start "--timeout $timeout_s: must be a positive integer"
int_at_least "$memory" 64 || fail_start "--memory $memory: MiB, at least 64"
int_at_least "$smp" 1 || fail_start "--smp $smp: must be >= 1"
case "$device" in
vhost-device-vsock) ;;
hvsock-vhost)
    [[ -x "$hvsock_vhost" ]] || fail_start "--device hvsock-vhost needs --hvsock-vhost BIN (an executable)"
    [[ -d "$hvsock_dir" ]] || fail_start "--device hvsock-vhost needs --hvsock-dir DIR (hvsockd's directory)"
    [[ -n "$vm_name" ]] || fail_start "--device hvsock-vhost needs --vm NAME (registered with hvsock vm add NAME)"
    ;;
*) fail_start "--device $device: vhost-device-vsock or hvsock-vhost" ;;
esac
for w in "${appends[@]}"; do
    [[ "$w" != *"'"* ]] || fail_start "--append '$w': no single quotes please"
done

nv_load_env
kernel="${kernel:-$VMLINUZ}"
[[ -f "$kernel" ]] || fail_start "--kernel $kernel: no such file"

if [[ -z "$run" ]]; then
    run="$(mktemp -d "${TMPDIR:-/tmp}/hvsock-vm.XXXXXX")"
    nv_log "run dir: $run"
fi
mkdir -p "$run" || fail_start "cannot create --run-dir $run"
run="$(cd "$run" && pwd)"
uds="${uds:-$run/vm.vsock}"
[[ "$uds" == /* ]] || uds="$PWD/$uds"
# sun_path holds 107 bytes; the device also connects to PATH_<port> (up to 11 more).
((${#run} + 11 <= 107)) || fail_start "--run-dir $run is too long for a Unix socket path (max ~96 chars); use a shorter dir"
((${#uds} + 11 <= 107)) || fail_start "--uds $uds is too long for a Unix socket path with _<port> (max ~96 chars)"
mkdir -p "$(dirname "$uds")"

# One run-vm.sh per run dir. The lock is inherited by QEMU and the device, so it stays held while
# they live even if this script is SIGKILLed.
exec 9>"$run/.lock"
flock -n 9 || fail_start "run dir $run is in use by another run-vm.sh (or its leftover QEMU / device)"

rm -f "$run"/{serial.log,qemu.log,vhost-device-vsock.log,hvsock-vhost.log,qemu.pid,vhost-device-vsock.pid,hvsock-vhost.pid,state,qemu-status,guest-status,exit-status,vhost.sock}
[[ -S "$uds" ]] && rm -f "$uds"
echo $$ >"$run/run-vm.pid"
echo "$uds" >"$run/uds-path"

set_state() { echo "$1" >"$run/state.tmp" && mv "$run/state.tmp" "$run/state"; }
set_state starting

vhost_pid="" qemu_pid="" tail_pid="" result=""
# Hard bounds in case this script dies without cleaning up: the `timeout` wrappers end them anyway.
hard_bound=$((timeout_s + 30))

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# Stop a process we started: SIGTERM (timeout forwards it), then SIGKILL after 5 s.
stop_pid() {
    local pid="$1" name="$2" i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    nv_warn "$name (pid $pid) ignored SIGTERM for 5 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    # `timeout` does not forward SIGKILL: kill the real process too.
    local real
    real="$(cat "$run/$name.pid" 2>/dev/null || true)"
    if [[ -n "$real" ]]; then kill -KILL "$real" 2>/dev/null || true; fi
}

cleanup() {
    local rc=$?
    [[ -n "$result" ]] || result=$rc
    trap - EXIT INT TERM
    set_state stopping 2>/dev/null || true
    stop_pid "$qemu_pid" qemu
    stop_pid "$vhost_pid" "$device"
    if [[ -n "$tail_pid" ]]; then kill "$tail_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -f "$run/qemu.pid" "$run/$device.pid" "$run/vhost.sock"
    [[ -S "$uds" ]] && rm -f "$uds"
    set_state "done" 2>/dev/null || true
    echo "$result" >"$run/exit-status.tmp" && mv "$run/exit-status.tmp" "$run/exit-status"
    exit "$result"
}
trap cleanup EXIT
trap 'nv_warn "interrupted; stopping the VM"; result=130; exit 130' INT
trap 'nv_warn "terminated; stopping the VM"; result=143; exit 143' TERM

serial_tail() {
    echo "---- last lines of $run/serial.log ----" >&2
    tail -n "${1:-30}" "$run/serial.log" 2>/dev/null | tr -d '\r' >&2 || true
    echo "----" >&2
}

# ---- the device
if [[ "$device" == vhost-device-vsock ]]; then
    # Never --forward-cid/--forward-listen: they would use this machine's vsock.
    RUST_LOG="${HVSOCK_VHOST_LOG:-warn}" timeout -k 5 "$((hard_bound + 10))" "$VHOST_DEVICE_VSOCK" --guest-cid "$cid" --socket "$run/vhost.sock" --uds-path "$uds" \
        </dev/null >"$run/vhost-device-vsock.log" 2>&1 &
    vhost_pid=$!
    want=("$run/vhost.sock" "$uds")
else
    RUST_LOG="${HVSOCK_VHOST_LOG:-info}" timeout -k 5 "$((hard_bound + 10))" "$hvsock_vhost" --dir "$hvsock_dir" --vm "$vm_name" --guest-cid "$cid" --socket "$run/vhost.sock" \
        </dev/null >"$run/hvsock-vhost.log" 2>&1 &
    vhost_pid=$!
    want=("$run/vhost.sock")
fi
have_sockets() { local f; for f in "${want[@]}"; do [[ -S "$f" ]] || return 1; done; }
for ((i = 0; i < 100; i++)); do
    have_sockets && break
    alive "$vhost_pid" || break
    sleep 0.1
done
if ! have_sockets; then
    result=125
    cat "$run/$device.log" >&2 || true
    fail_start "$device did not create ${want[*]} within 10 s (log above)"
fi
pgrep -P "$vhost_pid" >"$run/$device.pid" 2>/dev/null || true

# ---- QEMU
fw=()
IFS=: read -ra fw_dirs <<<"$QEMU_FIRMWARE_DIRS"
for d in "${fw_dirs[@]}"; do fw+=(-L "$d"); done
cmdline="console=ttyS0 panic=-1 quiet hvsock_test_vm=1 hvsock_cid=$cid hvsock_guest_timeout=$timeout_s${appends[*]:+ ${appends[*]}}"

start=$SECONDS
timeout -k 5 "$hard_bound" "$QEMU" "${fw[@]}" \
    -machine q35 -accel tcg -cpu max -m "${memory}M" -smp "$smp" \
    -object "memory-backend-memfd,id=mem,size=${memory}M,share=on" -numa node,memdev=mem \
    -chardev "socket,id=char0,path=$run/vhost.sock" -device vhost-user-vsock-pci,chardev=char0 \
    -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
    -display none -nodefaults -no-reboot \
    -chardev "file,id=ser0,path=$run/serial.log" -serial chardev:ser0 \
    -pidfile "$run/qemu.pid" \
    </dev/null >"$run/qemu.log" 2>&1 &
qemu_pid=$!
set_state running

if ((console)); then
    for ((i = 0; i < 50; i++)); do [[ -e "$run/serial.log" ]] && break; sleep 0.1; done
    tail -n +1 -F "$run/serial.log" --pid="$qemu_pid" 2>/dev/null | tr -d '\r' >&2 &
    tail_pid=$!
fi

deadline=$((start + timeout_s))
while alive "$qemu_pid"; do
    if ((SECONDS >= deadline)); then
        result=124
        printf '%s: error: the VM (cid %s, run dir %s) did not power off within %s s; killing QEMU and the device\n' \
            "$NV_PROG" "$cid" "$run" "$timeout_s" >&2
        serial_tail 30
        exit 124
    fi
    if [[ -n "$vhost_pid" ]] && ! alive "$vhost_pid"; then
        nv_warn "$device exited while the VM runs (see $run/$device.log)"
        vhost_pid=""
    fi
    sleep 0.2
done
qemu_status=0
wait "$qemu_pid" || qemu_status=$?
qemu_pid=""
echo "$qemu_status" >"$run/qemu-status"
elapsed=$((SECONDS - start))

guest_status="$( (tr -d '\r' <"$run/serial.log" | sed -n 's/^HVSOCK-GUEST-EXIT \([0-9]\{1,3\}\)$/\1/p' | tail -n1) 2>/dev/null || true)"
[[ -n "$guest_status" ]] && echo "$guest_status" >"$run/guest-status"

if ((qemu_status == 124)); then
    result=124
    nv_warn "QEMU hit its hard time bound ($hard_bound s)"
    serial_tail 30
elif ((qemu_status != 0)); then
    result=$qemu_status
    nv_warn "QEMU exited with status $qemu_status after ${elapsed} s; its log:"
    tail -n 20 "$run/qemu.log" >&2 || true
    serial_tail 20
elif grep -q 'Kernel panic' "$run/serial.log" 2>/dev/null; then
    result=126
    nv_warn "the guest kernel panicked (cid $cid, after ${elapsed} s); the serial log up to the panic:"
    tr -d '\r' <"$run/serial.log" | grep -B 20 -m1 'Kernel panic' >&2 || true
elif ((guest_status_mode)); then
    if [[ -z "$guest_status" ]]; then
        result=125
        nv_warn "the guest powered off without reporting HVSOCK-GUEST-EXIT <status>"
        serial_tail 30
    else
        result=$guest_status
        nv_log "guest (cid $cid) powered off after ${elapsed} s with status $guest_status"
    fi
else
    result=0
    nv_log "guest (cid $cid) powered off after ${elapsed} s${guest_status:+ (guest status $guest_status)}"
    if [[ -n "$guest_status" && "$guest_status" != 0 ]]; then
        nv_warn "the guest reported status $guest_status; pass --guest-status to make it this script's status"
    fi
fi
exit "$result"

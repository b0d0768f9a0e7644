#!/usr/bin/env bash
# Proves the nested-VM machinery end to end, without any hvsock code:
#   setup.sh; a static musl test program (guest/vsock-probe.rs) in an initramfs; guests booted by
#   run-vm.sh in the background, two at once by default. In each guest (guest/smoke-test.sh): the
#   cmdline marker, the modules in /proc/modules, /dev/vsock, the virtio device bound to
#   vmw_vsock_virtio_transport, the guest CID, a guest->host connection (to the host's Unix listener
#   on UDS_5678), and (with two VMs) that the sibling's CID is unreachable. From the host, through
#   the hybrid UDS only: a CONNECT to a port nobody listens on gets no OK, and a CONNECT to the
#   guest's listener on 1234 gets OK and an echo. Then the serial logs are checked, and that
#   run-vm.sh left nothing behind.
#
#   smoke.sh [--vms 1|2] [--timeout SECS] [--cid N] [--smp N] [--keep]
#
#   --vms N         guests to run at once (default 2; CIDs N, N+1, their own run dirs and sockets)
#   --timeout SECS  bound on each VM (default 120)
#   --cid N         first guest CID (default 42)
#   --smp N         vCPUs per guest (default 1: two guests on this machine's 2 cores)
#   --keep          keep the work dir (serial logs etc.) even on success (always kept on failure)
# Exit 0 when every check passed.
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

timeout_s=120 cid0=42 keep=0 nvms=2 smp=1
while (($#)); do
    case "$1" in
    --vms) nvms="${2:?}"; shift 2 ;;
    --timeout) timeout_s="${2:?}"; shift 2 ;;
    --cid) cid0="${2:?}"; shift 2 ;;
    --smp) smp="${2:?}"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) nv_usage; exit 0 ;;
    *) nv_warn "unknown argument: $1"; nv_usage; exit 2 ;;
    esac
done
[[ "$nvms" == 1 || "$nvms" == 2 ]] || nv_die "--vms must be 1 or 2"

t0=$SECONDS
if ! out="$(timeout 2400 "$NV_SCRIPTS/setup.sh" 2>&1)"; then
    printf '%s\n' "$out" >&2
    nv_die "setup.sh failed (output above)"
fi
nv_load_env
t_setup=$((SECONDS - t0))

# A short path: Unix socket paths must stay under 108 bytes.
work="$(mktemp -d "${TMPDIR:-/tmp}/hvsock-smoke.XXXXXX")"
declare -a vm_pid=() serve_pid=() run=() uds=() cid=()
ok=0
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    # run-vm.sh stops QEMU and vhost-device-vsock itself on SIGTERM.
    for p in "${vm_pid[@]}" "${serve_pid[@]}"; do
        if [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null || true; fi
    done
    wait 2>/dev/null || true
    if ((ok && !keep)); then
        rm -rf "$work"
    else
        nv_log "work dir kept: $work (serial logs: $work/vm*/run/serial.log)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    printf '%s: FAIL: %s\n' "$NV_PROG" "$*" >&2
    local r
    for r in "${run[@]}"; do
        if [[ -f "$r/serial.log" ]]; then
            echo "---- $r/serial.log ----" >&2
            tr -d '\r' <"$r/serial.log" | tail -n 40 >&2
        fi
    done
    exit 1
}

# 1. The guest's test program: plain rustc for musl, no crates, cached by source mtime.
probe="$NV_CACHE/smoke/vsock-probe"
src="$NV_SCRIPTS/guest/vsock-probe.rs"
if [[ ! -x "$probe" || "$src" -nt "$probe" ]]; then
    mkdir -p "$(dirname "$probe")"
    timeout 300 rustc --edition 2021 -O --target "$MUSL_TARGET" -C panic=abort -C strip=symbols \
        -o "$probe.tmp" "$src" || nv_die "rustc of $src for $MUSL_TARGET failed (did setup.sh add the target?)"
    mv "$probe.tmp" "$probe"
fi

# 2. One initramfs for all: default /init (boot, modules, run test.sh, power off) + smoke test + probe.
t1=$SECONDS
timeout 60 "$NV_SCRIPTS/mkinitramfs.sh" -o "$work/initrd.cpio.gz" \
    --add "$probe:/bin/vsock-probe" \
    --add "$NV_SCRIPTS/guest/smoke-test.sh:/etc/hvsock-vm/test.sh" 2>"$work/mkinitramfs.log" ||
    fail "mkinitramfs.sh failed: $(cat "$work/mkinitramfs.log")"
t_initrd=$((SECONDS - t1))

# 3. Per VM: the host's listener for guest->host (the device connects to UDS_5678), then the VM.
t2=$SECONDS
for ((i = 0; i < nvms; i++)); do
    cid[i]=$((cid0 + i))
    run[i]="$work/vm$i/run"
    uds[i]="$work/vm$i/hybrid.vsock"
    mkdir -p "${run[i]}"
    timeout $((timeout_s + 10)) python3 "$NV_SCRIPTS/hybrid-vsock.py" serve "${uds[i]}" 5678 --timeout "$timeout_s" \
        >"$work/vm$i/serve.log" 2>&1 &
    serve_pid[i]=$!
    for ((n = 0; n < 50; n++)); do
        grep -q SERVE-LISTENING "$work/vm$i/serve.log" 2>/dev/null && break
        sleep 0.1
    done
    grep -q SERVE-LISTENING "$work/vm$i/serve.log" || fail "host listener on ${uds[i]}_5678 did not start: $(cat "$work/vm$i/serve.log")"
    extra=()
    if ((nvms == 2)); then extra=(--append "hvsock_smoke_peer_cid=$((cid0 + 1 - i))"); fi
    "$NV_SCRIPTS/run-vm.sh" --initrd "$work/initrd.cpio.gz" --run-dir "${run[i]}" --cid "${cid[i]}" --uds "${uds[i]}" \
        --timeout "$timeout_s" --smp "$smp" --guest-status "${extra[@]}" 2>"$work/vm$i/run-vm.err" &
    vm_pid[i]=$!
done

# 4. Per VM, once its guest listens: host -> guest through the hybrid UDS.
for ((i = 0; i < nvms; i++)); do
    "$NV_SCRIPTS/wait-vm.sh" ready "${run[i]}" --timeout "$timeout_s" || fail "guest ${cid[i]} never got ready"
    t_ready[i]=$((SECONDS - t2))
    timeout 60 python3 "$NV_SCRIPTS/hybrid-vsock.py" connect "${uds[i]}" 1235 --expect-refused --tries 3 --timeout 5 \
        >"$work/vm$i/refused.log" 2>&1 || fail "CONNECT 1235 (no listener) got OK: $(cat "$work/vm$i/refused.log")"
    timeout 60 python3 "$NV_SCRIPTS/hybrid-vsock.py" connect "${uds[i]}" 1234 --send hello-from-host \
        >"$work/vm$i/connect.log" 2>&1 || fail "CONNECT 1234 to guest ${cid[i]} failed: $(cat "$work/vm$i/connect.log")"
    grep -qx 'REPLY guest-echo: hello-from-host' "$work/vm$i/connect.log" ||
        fail "host->guest ${cid[i]}: bad reply: $(cat "$work/vm$i/connect.log")"
done

# 5. Power-off, the guests' verdicts, and what run-vm.sh left behind.
summary=()
for ((i = 0; i < nvms; i++)); do
    st=0
    wait "${vm_pid[i]}" || st=$?
    vm_pid[i]=""
    t_vm=$((SECONDS - t2))
    ((st == 0)) || fail "run-vm.sh for guest ${cid[i]} exited $st: $(cat "$work/vm$i/run-vm.err")"
    wait "${serve_pid[i]}" || fail "host listener $i: $(cat "$work/vm$i/serve.log")"
    serve_pid[i]=""
    grep -qx 'SERVE-GOT hello-from-guest' "$work/vm$i/serve.log" ||
        fail "the host listener of guest ${cid[i]} got no hello-from-guest: $(cat "$work/vm$i/serve.log")"

    serial="$(tr -d '\r' <"${run[i]}/serial.log")"
    wants=(SMOKE-MARKER-OK SMOKE-MODULES-OK SMOKE-DEV-VSOCK-OK SMOKE-VIRTIO-BOUND-OK "SMOKE-CID-OK ${cid[i]}"
        SMOKE-GUEST-TO-HOST-OK SMOKE-HOST-TO-GUEST-OK SMOKE-ALL-OK "HVSOCK-GUEST-EXIT 0")
    ((nvms == 1)) || wants+=(SMOKE-SIBLING-UNREACHABLE-OK)
    for want in "${wants[@]}"; do
        grep -q "^$want" <<<"$serial" || fail "serial log of guest ${cid[i]} lacks '$want'"
    done
    grep -q 'hvsock_test_vm=1' <<<"$serial" || fail "guest ${cid[i]}: no hvsock_test_vm=1 on the cmdline"

    [[ "$(cat "${run[i]}/exit-status" 2>/dev/null)" == 0 ]] || fail "run-vm.sh ${cid[i]} left no exit-status 0"
    [[ ! -e "${run[i]}/vhost.sock" && ! -e "${uds[i]}" ]] || fail "run-vm.sh ${cid[i]} left sockets behind"
    for f in qemu.pid vhost-device-vsock.pid; do [[ ! -e "${run[i]}/$f" ]] || fail "${run[i]}/$f left behind"; done

    drops="$(grep -c WouldBlock "${run[i]}/vhost-device-vsock.log" || true)"
    retries="$(grep -c 'no OK' "$work/vm$i/connect.log" || true)"
    summary+=("guest cid ${cid[i]}: ready at +${t_ready[i]}s, powered off by +${t_vm}s; handshake retries ${retries}, device WouldBlock drops ${drops}")
    grep -E '^(SMOKE-CMDLINE|SMOKE-VIRTIO-BOUND-OK|SMOKE-CID-OK|SMOKE-SIBLING|PROBE-REPLY|PROBE-SERVED)' <<<"$serial" |
        sed "s/^/  guest ${cid[i]}: /" >>"$work/details"
    sed "s/^/  host->${cid[i]}: /" "$work/vm$i/refused.log" "$work/vm$i/connect.log" "$work/vm$i/serve.log" >>"$work/details"
done
ok=1
echo "smoke: OK  $nvms VM(s); setup ${t_setup}s, initramfs ${t_initrd}s, total $((SECONDS - t0))s"
printf '  %s\n' "${summary[@]}"
cat "$work/details"

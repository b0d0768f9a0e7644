# shellcheck shell=sh
# Guest-side helpers, installed by mkinitramfs.sh as /lib/hvsock-vm/lib.sh. Busybox sh (ash).
# Source it from /init or from a test script:   . /lib/hvsock-vm/lib.sh
#
# Lines the host side looks for on the serial log (each on a line of its own):
#   HVSOCK-GUEST-BOOTED               /init ran, modules loaded, the virtio-vsock device is bound
#   HVSOCK-GUEST-READY                the guest's test is ready (hv_ready); run-vm.sh --wait-ready waits for it
#   HVSOCK-GUEST-FAIL <reason>        something failed in the guest (hv_fail)
#   HVSOCK-GUEST-EXIT <status>        the guest is powering off with that status (hv_poweroff)

HV_MODULES_DIR=/lib/modules
PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

hv_say() { echo "$*"; }

# True if the kernel command line has the word $1 (e.g. hvsock_test_vm=1).
# shellcheck disable=SC2013 # words, not lines, are wanted
hv_cmdline_has() {
    for hv_w in $(cat /proc/cmdline); do
        [ "$hv_w" = "$1" ] && return 0
    done
    return 1
}

# Value of KEY=VALUE on the kernel command line (the last one wins, as --append comes last), or $2.
# shellcheck disable=SC2013 # words, not lines, are wanted
hv_cmdline_get() {
    hv_v="${2:-}"
    for hv_w in $(cat /proc/cmdline); do
        case "$hv_w" in "$1"=*) hv_v="${hv_w#*=}" ;; esac
    done
    echo "$hv_v"
}

# Powers off now with STATUS (default 0), after saying so on the console.
hv_poweroff() {
    hv_say "HVSOCK-GUEST-EXIT ${1:-0}"
    sync
    poweroff -f
    # If poweroff failed, PID 1 exiting panics the kernel; panic=-1 and -no-reboot end QEMU.
    exit "${1:-0}"
}

hv_fail() {
    hv_say "HVSOCK-GUEST-FAIL $*"
    hv_poweroff 1
}

hv_ready() { hv_say "HVSOCK-GUEST-READY"; }

# Mounts /proc, /sys, /dev (devtmpfs), /tmp and /run; makes sure stdio is the console.
hv_mount_basics() {
    mkdir -p /proc /sys /dev /tmp /run
    mount -t proc proc /proc || return 1
    mount -t sysfs sysfs /sys || return 1
    mount -t devtmpfs devtmpfs /dev || return 1
    mount -t tmpfs tmpfs /tmp || return 1
    mount -t tmpfs tmpfs /run || return 1
    mkdir -p /dev/pts /dev/shm
    mount -t devpts devpts /dev/pts 2>/dev/null || true
    ln -sf /proc/self/fd /dev/fd 2>/dev/null || true
    hostname hvsock-guest 2>/dev/null || true
}

# insmod every module in /lib/modules/load-order, in order (skips ones already loaded).
hv_load_modules() {
    [ -r "$HV_MODULES_DIR/load-order" ] || { hv_say "no $HV_MODULES_DIR/load-order"; return 1; }
    while read -r hv_m; do
        [ -n "$hv_m" ] || continue
        grep -q "^$hv_m " /proc/modules && continue
        insmod "$HV_MODULES_DIR/$hv_m.ko" || { hv_say "insmod $hv_m failed"; return 1; }
    done <"$HV_MODULES_DIR/load-order"
}

# Waits (up to $1 s, default 10) until the virtio-vsock transport is bound to a device and /dev/vsock exists.
hv_wait_vsock() {
    hv_n=$(( ${1:-10} * 10 ))
    while [ "$hv_n" -gt 0 ]; do
        if [ -c /dev/vsock ]; then
            for hv_d in /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*; do
                [ -e "$hv_d" ] && return 0
            done
        fi
        sleep 0.1
        hv_n=$((hv_n - 1))
    done
    return 1
}

# The usual start of an /init: refuse to run outside the test VM, mount, load modules, wait for vsock.
hv_boot() {
    [ "$$" = 1 ] || { echo "hv_boot: not PID 1" >&2; return 1; }
    hv_mount_basics || hv_fail "mounting /proc /sys /dev failed"
    hv_cmdline_has hvsock_test_vm=1 || hv_fail "hvsock_test_vm=1 missing from the kernel command line"
    hv_load_modules || hv_fail "loading the vsock modules failed"
    hv_wait_vsock 10 || hv_fail "virtio-vsock device not bound after 10 s (no vhost-user-vsock-pci device?)"
    hv_say "HVSOCK-GUEST-BOOTED"
}

#!/bin/sh
# Default /init of the test initramfs (mkinitramfs.sh uses it unless given --init).
#
# Boots (mounts, loads the vsock modules, waits for the virtio-vsock device), prints
# HVSOCK-GUEST-BOOTED, then runs /etc/hvsock-vm/test.sh if the initramfs has one (add it with
# `mkinitramfs.sh --add my-test.sh:/etc/hvsock-vm/test.sh`) and powers off with its exit status.
# The test script prints HVSOCK-GUEST-READY itself (`. /lib/hvsock-vm/lib.sh; hv_ready`) once it is
# ready for the host; without a test script, /init prints it and powers off at once.
# Kernel command line: hvsock_guest_timeout=SECS bounds the test script (default 600).
# shellcheck disable=SC1091 # the guest path of guest/lib.sh
. /lib/hvsock-vm/lib.sh

hv_boot

if [ -f /etc/hvsock-vm/test.sh ]; then
    t="$(hv_cmdline_get hvsock_guest_timeout 600)"
    timeout "$t" sh /etc/hvsock-vm/test.sh
    status=$?
    [ "$status" = 143 ] && hv_say "HVSOCK-GUEST-FAIL test.sh timed out after ${t}s"
    hv_poweroff "$status"
else
    hv_ready
    hv_poweroff 0
fi

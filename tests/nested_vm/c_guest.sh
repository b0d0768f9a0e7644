#!/bin/sh
# The guest half of tests/nested_vm_c.rs, run as /etc/hvsock-vm/test.sh inside the test VM
# (busybox sh): the document's step 3 in C (examples/c/guest_service.c), built statically with
# musl against libhvsock.a (with the test-vm-guard), over AF_VSOCK. Reports `T-C-<WHAT> ...`
# lines on the serial console for the host side to check.
# shellcheck disable=SC1091 # the guest path of scripts/nested-vm/guest/lib.sh
. /lib/hvsock-vm/lib.sh

hv_cmdline_has hvsock_test_vm=1 || hv_fail "no hvsock_test_vm=1 marker"
port="$(hv_cmdline_get hvsock_c_port 5801)"
export HVSOCK_TRANSPORT=vsock

# Step 3: connect to the parent (the host), send two messages, print the replies.
out="$(timeout 60 /bin/guest_service "$port" "hello from C in a VM" "second message" 2>/tmp/err)"
rc=$?
echo "T-C-GUEST rc=$rc $(echo "$out" | tr '\n' '|') $(head -n1 /tmp/err)"

# A service nobody serves on the host: the connect fails, with libhvsock's reason.
timeout 60 /bin/guest_service "$((port + 8))" x >/dev/null 2>/tmp/err
echo "T-C-REFUSED rc=$? $(head -n1 /tmp/err)"

# The guard: with the marker hidden, the same binary refuses before opening AF_VSOCK.
echo "console=ttyS0 quiet" >/tmp/cmdline
if mount --bind /tmp/cmdline /proc/cmdline; then
    timeout 30 /bin/guest_service "$port" x >/dev/null 2>/tmp/err
    rc=$?
    umount /proc/cmdline
    echo "T-C-GUARD rc=$rc $(head -n1 /tmp/err)"
else
    echo "T-C-GUARD mount failed"
fi
echo "T-C-DONE"
exit 0

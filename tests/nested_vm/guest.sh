#!/bin/sh
# The guest half of tests/nested_vm.rs, run by scripts/nested-vm/guest/init.sh as
# /etc/hvsock-vm/test.sh inside each test VM (busybox sh). It runs the project's own static
# `hvsock` binary (built with the test-vm-guard feature) over AF_VSOCK and reports what it saw
# on the serial console as `T-<WHAT> ...` lines; the host side checks them. The role comes from
# the kernel command line (hvsock_role=vm1|vm2).
#
# vm1: host -> guest (listens on 6001, 16 MiB each way), guest -> host (connects to 5001, a
#      host listener bound to vm1's own VmId, 16 MiB each way), an echo through 5002 (a
#      wildcard host listener), and refusals for 5003 (disabled) and 5004 (unregistered).
# vm2: the echo through 5002; refusals for 5001 (a listener meant for vm1) and 5003; and the
#      test-vm-guard: with the marker hidden from /proc/cmdline the same binary refuses to run.
#
# vhost-device-vsock has no half-close (a guest SHUT_WR never reaches the host; a host
# shutdown(Write) ends the connection both ways): every transfer has a fixed length, and the
# side that must finish receiving last is the one that ends the connection.
# shellcheck disable=SC1091 # the guest path of scripts/nested-vm/guest/lib.sh
. /lib/hvsock-vm/lib.sh

hv_cmdline_has hvsock_test_vm=1 || hv_fail "no hvsock_test_vm=1 marker"
role="$(hv_cmdline_get hvsock_role)"
export HVSOCK_TRANSPORT=vsock
size=16777216

say() { echo "T-$*"; }
hash() { sha256sum <"$1" | cut -d' ' -f1; }
len() { stat -c %s "$1" 2>/dev/null || echo 0; }
first_error() { grep -v -e 'listening on' -e 'connection from' -e 'connected to' "$1" | head -n1; }

# A connect that must fail: `T-REFUSED <port> rc=<status> <the first line of its stderr>`.
refused() {
    t0=$(date +%s)
    timeout 30 hvsock connect "parent:$1" </dev/null >"/tmp/refused$1.out" 2>"/tmp/refused$1.err"
    rc=$?
    say "REFUSED $1 rc=$rc secs=$(($(date +%s) - t0)) bytes=$(len "/tmp/refused$1.out") $(head -n1 "/tmp/refused$1.err")"
}

# One line through the wildcard service on 5002; the host answers with whom it saw.
echo_common() {
    reply="$(echo "hello from $role" | timeout 30 hvsock connect parent:5002 2>/tmp/common.err)"
    rc=$?
    say "COMMON rc=$rc $reply $(first_error /tmp/common.err)"
}

case "$role" in
vm1)
    head -c "$size" /dev/urandom >/tmp/h2g.send
    head -c "$size" /dev/urandom >/tmp/g2h.send
    : >/tmp/h2g.recv
    # Host -> guest: one connection on 6001. What the guest sends goes out only once all of
    # the host's bytes have arrived, so that the host, which closes once it has the guest's,
    # never cuts the other direction short.
    (
        n=0
        while [ "$(len /tmp/h2g.recv)" -lt "$size" ] && [ "$n" -lt 2400 ]; do
            sleep 0.05
            n=$((n + 1))
        done
        cat /tmp/h2g.send
    ) | timeout 150 hvsock listen -v wildcard:6001 >/tmp/h2g.recv 2>/tmp/h2g.err &
    listener=$!
    n=0
    until grep -q 'listening on' /tmp/h2g.err 2>/dev/null; do
        n=$((n + 1))
        [ "$n" -lt 200 ] || { cat /tmp/h2g.err; hv_fail "hvsock listen did not start"; }
        sleep 0.05
    done
    say "H2G-LISTENING"

    # Guest -> host: 16 MiB to a listener bound to this VM's id; 16 MiB back, then the host
    # closes.
    say "G2H-SENT $(hash /tmp/g2h.send) $size"
    timeout 150 hvsock connect parent:5001 </tmp/g2h.send >/tmp/g2h.recv 2>/tmp/g2h.err
    rc=$?
    say "G2H-RECV rc=$rc $(hash /tmp/g2h.recv) $(len /tmp/g2h.recv) $(first_error /tmp/g2h.err)"

    echo_common
    refused 5003 &
    r1=$!
    refused 5004 &
    r2=$!
    wait "$r1" "$r2"

    wait "$listener"
    rc=$?
    say "H2G-RECV rc=$rc $(hash /tmp/h2g.recv) $(len /tmp/h2g.recv) $(first_error /tmp/h2g.err)"
    say "H2G-SENT $(hash /tmp/h2g.send) $size"
    ;;
vm2)
    echo_common
    refused 5001 &
    r1=$!
    refused 5003 &
    r2=$!
    wait "$r1" "$r2"
    # The guard: the same binary, with the marker hidden, must refuse before opening AF_VSOCK.
    echo "console=ttyS0 quiet" >/tmp/cmdline
    if mount --bind /tmp/cmdline /proc/cmdline; then
        timeout 30 hvsock connect parent:5002 </dev/null >/dev/null 2>/tmp/guard.err
        rc=$?
        umount /proc/cmdline
        say "GUARD rc=$rc $(head -n1 /tmp/guard.err)"
    else
        say "GUARD mount failed"
    fi
    ;;
*) hv_fail "unknown hvsock_role '$role'" ;;
esac
say "DONE $role"
exit 0

#!/bin/sh
# The guest half of tests/nested_vhost.rs, run as /etc/hvsock-vm/test.sh inside a test VM whose
# vsock device is hvsock-vhost (busybox sh). It runs the project's static `hvsock` over
# AF_VSOCK and reports on the serial console as `T-<WHAT> ...` lines; the host checks them.
#
# In order: a refused connect (timed in centiseconds from /proc/uptime), a connect to a host
# receiver that sends nothing and half-closes at once, 64 MiB guest -> host and back with a
# half-close each way, 64 MiB host -> guest and back the same way (the guest listens on 6001),
# a connection that lives through an hvsockd restart (kill -9 + start), and a new connect
# once hvsockd is back.
# shellcheck disable=SC1091 # the guest path of scripts/nested-vm/guest/lib.sh
. /lib/hvsock-vm/lib.sh

hv_cmdline_has hvsock_test_vm=1 || hv_fail "no hvsock_test_vm=1 marker"
export HVSOCK_TRANSPORT=vsock
size=67108864

say() { echo "T-$*"; }
hash() { sha256sum <"$1" | cut -d' ' -f1; }
len() { stat -c %s "$1" 2>/dev/null || echo 0; }
cs() { cut -d' ' -f1 /proc/uptime | tr -d .; }
first_error() { grep -v -e 'listening on' -e 'connection from' -e 'connected to' "$1" | head -n1; }

# 1. Refused at once: an unregistered service.
t0=$(cs)
timeout 30 hvsock connect parent:5004 </dev/null >/tmp/refused.out 2>/tmp/refused.err
rc=$?
say "REFUSED rc=$rc cs=$(($(cs) - t0)) bytes=$(len /tmp/refused.out) $(head -n1 /tmp/refused.err)"

# 2. A host receiver that sends nothing and half-closes at once (hvsock listen ... </dev/null).
echo "to a silent receiver" | timeout 30 hvsock connect parent:5005 >/tmp/silent.out 2>/tmp/silent.err
say "SILENT rc=$? bytes=$(len /tmp/silent.out) $(first_error /tmp/silent.err)"

# 3. Guest -> host, 64 MiB: the guest half-closes after its last byte, the host answers with
#    64 MiB and half-closes in turn.
head -c "$size" /dev/urandom >/tmp/send
say "SENT $(hash /tmp/send) $size"
timeout 200 hvsock connect parent:5001 </tmp/send >/tmp/g2h.recv 2>/tmp/g2h.err
rc=$?
say "G2H rc=$rc $(hash /tmp/g2h.recv) $(len /tmp/g2h.recv) $(first_error /tmp/g2h.err)"
rm -f /tmp/g2h.recv

# 4. Host -> guest, 64 MiB each way, each side half-closing after its last byte.
timeout 200 hvsock listen -v wildcard:6001 </tmp/send >/tmp/h2g.recv 2>/tmp/h2g.err &
listener=$!
n=0
until grep -q 'listening on' /tmp/h2g.err 2>/dev/null; do
    n=$((n + 1))
    [ "$n" -lt 200 ] || { cat /tmp/h2g.err; hv_fail "hvsock listen did not start"; }
    sleep 0.05
done
say "H2G-LISTENING"
wait "$listener"
rc=$?
say "H2G rc=$rc $(hash /tmp/h2g.recv) $(len /tmp/h2g.recv) $(first_error /tmp/h2g.err)"
rm -f /tmp/h2g.recv

# 5. A connection that lives through an hvsockd restart: "before", then (the host restarts
#    hvsockd and writes "after") "ack", then EOF.
(
    echo before
    n=0
    until grep -q after /tmp/restart.out 2>/dev/null || [ "$n" -ge 1200 ]; do
        sleep 0.1
        n=$((n + 1))
    done
    echo ack
) | timeout 150 hvsock connect parent:5006 >/tmp/restart.out 2>/tmp/restart.err
say "RESTART rc=$? $(tr '\n' ' ' </tmp/restart.out)$(first_error /tmp/restart.err)"

# 6. A new connect once hvsockd is back (the device finds it again by itself).
n=0
until reply="$(echo again | timeout 10 hvsock connect parent:5007 2>/tmp/again.err)" && [ -n "$reply" ]; do
    n=$((n + 1))
    [ "$n" -lt 40 ] || break
    sleep 0.5
done
say "AGAIN tries=$n $reply $(first_error /tmp/again.err)"
say "DONE"
exit 0

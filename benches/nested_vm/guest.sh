#!/bin/sh
# The guest half of benches/nested_vm.rs (busybox sh, the project's static `hvsock` over
# AF_VSOCK). The host times everything; the guest only drives: a connection to 5001 that sends
# the bench's bytes to the host, one to 5002 that receives the host's, a `listen --keep` on
# 6002 for the host's connects, and a last connection to 5009 that the host closes when it is
# done. Every transfer has a fixed length, so it runs the same over a device without
# half-close (vhost-device-vsock).
# shellcheck disable=SC1091 # the guest path of scripts/nested-vm/guest/lib.sh
. /lib/hvsock-vm/lib.sh

hv_cmdline_has hvsock_test_vm=1 || hv_fail "no hvsock_test_vm=1 marker"
export HVSOCK_TRANSPORT=vsock
size="$(hv_cmdline_get hvsock_bench_bytes)"

say() { echo "T-$*"; }
hvsock listen --keep wildcard:6002 >/dev/null 2>/tmp/keep.err &
keep=$!
head -c "$size" /dev/zero >/tmp/data
say "READY"
timeout 300 hvsock connect parent:5001 </tmp/data >/dev/null 2>/tmp/g2h.err
say "G2H rc=$? $(head -n1 /tmp/g2h.err)"
timeout 300 hvsock connect parent:5002 </dev/null >/tmp/h2g.recv 2>/tmp/h2g.err
say "H2G rc=$? $(stat -c %s /tmp/h2g.recv) $(head -n1 /tmp/h2g.err)"
say "RATE-READY"
timeout 300 hvsock connect parent:5009 </dev/null >/dev/null 2>/tmp/done.err
kill "$keep" 2>/dev/null
say "DONE"
exit 0

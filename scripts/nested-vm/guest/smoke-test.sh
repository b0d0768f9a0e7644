#!/bin/sh
# The guest half of smoke.sh, run by guest/init.sh as /etc/hvsock-vm/test.sh (after hv_boot).
# Prints SMOKE-* lines that smoke.sh checks on the serial log. Uses /bin/vsock-probe (guest/vsock-probe.rs).
# shellcheck disable=SC1091 # the guest path of guest/lib.sh
. /lib/hvsock-vm/lib.sh

echo "SMOKE-CMDLINE $(cat /proc/cmdline)"
hv_cmdline_has hvsock_test_vm=1 || hv_fail "no hvsock_test_vm=1 marker"
echo "SMOKE-MARKER-OK"

while read -r m; do
    grep -q "^$m " /proc/modules || hv_fail "module $m is not in /proc/modules"
done </lib/modules/load-order
echo "SMOKE-MODULES-OK $(tr '\n' ' ' </lib/modules/load-order)"

[ -c /dev/vsock ] || hv_fail "/dev/vsock missing"
echo "SMOKE-DEV-VSOCK-OK"
for d in /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*; do
    [ -e "$d" ] || hv_fail "no virtio device bound to vmw_vsock_virtio_transport"
    echo "SMOKE-VIRTIO-BOUND-OK ${d##*/}"
done

want_cid="$(hv_cmdline_get hvsock_cid)"
cid="$(vsock-probe local-cid)" || hv_fail "vsock-probe local-cid failed"
[ "$cid" = "$want_cid" ] || hv_fail "guest CID is $cid, expected $want_cid"
echo "SMOKE-CID-OK $cid"

# guest -> host: the host (smoke.sh) listens on <uds>_5678 before the VM starts.
reply="$(timeout 20 vsock-probe connect 2 5678 hello-from-guest)" || hv_fail "guest->host connect to CID 2 port 5678 failed"
echo "$reply"
[ "$reply" = "PROBE-REPLY host-echo: hello-from-guest" ] || hv_fail "guest->host: unexpected reply '$reply'"
echo "SMOKE-GUEST-TO-HOST-OK"

# A sibling VM's CID (smoke.sh passes hvsock_smoke_peer_cid when it runs two): each VM has its own
# vhost-device-vsock, which drops packets for CIDs it does not serve, so this must not connect.
peer="$(hv_cmdline_get hvsock_smoke_peer_cid)"
if [ -n "$peer" ]; then
    if timeout 20 vsock-probe connect "$peer" 5678 hello-sibling >/tmp/peer.out 2>&1; then
        cat /tmp/peer.out
        hv_fail "a connection to sibling CID $peer succeeded"
    fi
    echo "SMOKE-SIBLING-UNREACHABLE-OK $peer: $(cat /tmp/peer.out)"
fi

# host -> guest: listen on 1234, tell the host we are ready, serve one connection.
vsock-probe listen 1234 >/tmp/listen.out 2>&1 &
lp=$!
n=0
until grep -q PROBE-LISTENING /tmp/listen.out; do
    n=$((n + 1))
    [ "$n" -lt 100 ] || { cat /tmp/listen.out; hv_fail "vsock-probe listen did not start"; }
    sleep 0.1
done
hv_ready
wait "$lp" || { cat /tmp/listen.out; hv_fail "vsock-probe listen failed"; }
cat /tmp/listen.out
grep -q 'PROBE-SERVED .*: hello-from-host$' /tmp/listen.out || hv_fail "host->guest: the listener got no hello-from-host"
echo "SMOKE-HOST-TO-GUEST-OK"
echo "SMOKE-ALL-OK"
exit 0

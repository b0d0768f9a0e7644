#!/bin/sh
# Runs hvsock-agent in the test guest over AF_VSOCK, its log on the console; busybox init
# respawns it. The host-served links are off: this hvsockd does not serve them.
export HVSOCK_TRANSPORT=vsock
exec /bin/hvsock-agent --disable heartbeat --disable time --disable kvp >/dev/console 2>&1

#!/bin/sh
# Runs hvsock-agent in the test guest over AF_VSOCK, its log on the console; busybox init
# respawns it. The test plays the host's heartbeat and time services; key-value is off.
export HVSOCK_TRANSPORT=vsock
exec /bin/hvsock-agent --disable kvp >/dev/console 2>&1

#!/bin/sh
# Runs hvsock-agent in the test guest over AF_VSOCK, its log on the console; busybox init
# respawns it. It talks to hvsockd's own heartbeat, time and key-value services.
export HVSOCK_TRANSPORT=vsock
exec /bin/hvsock-agent >/dev/console 2>&1

#!/bin/sh
# /init of tests/nested_agent.rs's guest: boots (modules, the vsock device), then hands PID 1 to
# busybox init, whose inittab starts hvsock-agent and whose SIGUSR2 (what the agent sends PID 1
# for `hvsock vm shutdown`) runs the shutdown entries and powers the guest off.
# shellcheck disable=SC1091 # the guest path of scripts/nested-vm/guest/lib.sh
. /lib/hvsock-vm/lib.sh
hv_boot
# A wrong clock, for the time sync to correct.
date -s '2001-01-01 00:00:00' >/dev/null
mkdir -p /root /srv
echo "made in the guest" >/srv/guest.txt
chmod 0640 /srv/guest.txt
exec /bin/busybox init

#!/bin/bash
# The guest half of tests/nested_vm_systemd.rs, run by hvsock-sysvm-test.service under the real
# systemd of a Debian guest (scripts/nested-vm/rootfs.sh) where packaging/'s units are installed
# and hvsockd.socket is enabled. hvsockd is this guest's provider (a "host" of its own): only its
# Unix sockets are used here, never AF_VSOCK.
#
# It reports on the serial console (its stdout), one whole line each:
#   HVSOCK-SYSVM CHECK <name> ok|FAIL <detail>   a check; the host test asserts the ones it requires
#   HVSOCK-SYSVM GAP <phase> <key=value>...      the connect loop's figures around a restart
#   HVSOCK-SYSVM INFO <text>                     context (layout, pids, descriptors)
#   HVSOCK-SYSVM LOG <line>                      hvsockd's journal, when a check failed
#   HVSOCK-GUEST-EXIT <n>                        the number of failed checks; then power-off
#
# Phases: boot (socket activation, sysusers, tmpfiles), setup (a sandbox partition in a child
# mount namespace that bind-mounted its partition's directory; `hvsock listen --keep` bound;
# an established connection from the host and one from the sandbox), then `restart`
# (systemctl restart hvsockd) and `kill` (kill -9 of hvsockd; Restart=on-failure brings it
# back): after each, hvsockd must have resumed its sockets from systemd's descriptor store, the
# listener must still be bound on the very same socket with no error, the sandbox's endpoint be
# the same socket and reach it through the same mount, both connections carry data, the
# registry hold its writes; a connect loop measures the time without service. Last, `stop`
# (systemctl stop hvsockd): systemd empties the store, the next start resumes nothing, and the
# listener binds again by itself.
set -u
# A write to a connection whose process ended fails (EPIPE) instead of killing the driver.
trap "" PIPE
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf 'HVSOCK-SYSVM %s\n' "$*"; }
failures=0
check() { # NAME OK(0|1) DETAIL...
    local name=$1 rc=$2
    shift 2
    if [ "$rc" = 0 ]; then say "CHECK $name ok $*"; else
        say "CHECK $name FAIL $*"
        failures=$((failures + 1))
    fi
}
finish() {
    if [ "$failures" != 0 ]; then
        journalctl -u hvsockd.service -u hvsockd.socket -n 60 --no-pager -o short-monotonic 2>&1 |
            while IFS= read -r l; do say "LOG $l"; done
    fi
    printf 'HVSOCK-GUEST-EXIT %d\n' "$failures"
    systemctl poweroff --no-block
    exit 0
}
now_us() { echo "${EPOCHREALTIME/./}"; }
# Waits up to $2 tenths of a second for file $1 to contain the line $3.
wait_line() {
    local i=0
    while [ "$i" -lt "$2" ]; do
        grep -qx -- "$3" "$1" 2>/dev/null && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}
# The socket descriptors of process $1: "fd=socket:[inode] ..." (the listener's identity).
sockets_of() {
    local f l out=""
    for f in /proc/"$1"/fd/*; do
        l=$(readlink "$f" 2>/dev/null) || continue
        case $l in socket:*) out="$out ${f##*/}=$l" ;; esac
    done
    echo "${out# }"
}
# Whether every socket descriptor number of $1 is a socket descriptor in $2 as well.
same_fd_numbers() {
    local w
    [ -n "$1" ] || return 1
    for w in $1; do
        case " $2" in *" ${w%%=*}=socket:"*) ;; *) return 1 ;; esac
    done
}
main_pid() { systemctl show -p MainPID --value hvsockd.service; }

# Safety: this runs only inside the nested test VM.
grep -qw hvsock_test_vm=1 /proc/cmdline || {
    say "CHECK marker FAIL no hvsock_test_vm=1 on the kernel command line"
    failures=1
    finish
}

PORT=5000
# ---------------------------------------------------------------- boot: socket activation
st=$(systemctl is-active hvsockd.socket)
check socket-unit "$([ "$st" = active ]; echo $?)" "hvsockd.socket is $st"
perm=$(stat -c '%U:%G %a %F' /run/hvsock/host.sock 2>&1)
check sysusers-group "$([ "$perm" = "root:hvsock 660 socket" ]; echo $?)" "host.sock: $perm"
before=$(systemctl is-active hvsockd.service)
perm=$(stat -c '%U:%G %a %F' /run/hvsock/admin.sock 2>&1)
check admin-sock-private "$([ "$perm" = "root:root 600 socket" ]; echo $?)" "admin.sock: $perm"
out=$(hvsock service add echo --port "$PORT" 2>&1)
rc=$?
after=$(systemctl is-active hvsockd.service)
check socket-activation "$([ "$before" != active ] && [ $rc = 0 ] && [ "$after" = active ]; echo $?)" \
    "hvsockd.service $before before the first request, $after after; service add: rc=$rc $out"
[ "$after" = active ] || finish

# ---------------------------------------------------------------- setup
vmid=$(hvsock vm add sandbox 2>/tmp/vmadd.err)
check vm-add "$?" "sandbox=$vmid $(head -n1 /tmp/vmadd.err)"
if [ -d "/run/hvsock/partitions/$vmid" ]; then
    layout=dir src="/run/hvsock/partitions/$vmid" sb_ep=/sandbox/hvsock/endpoint.sock
else
    layout=file src="/run/hvsock/partitions/$vmid.sock" sb_ep=/sandbox/endpoint.sock
fi
check partition-dir "$([ "$layout" = dir ] && [ -S "$src/endpoint.sock" ]; echo $?)" "the partition's endpoint: $layout layout ($src)"
mkdir -p /sandbox/hvsock
: >/sandbox/endpoint.sock
# The sandbox: a child mount namespace that bind-mounted its partition's directory (or, with
# the old layout, its endpoint file) and then only ever reaches hvsockd through that mount.
unshare -m --propagation private bash -c '
    if [ "$1" = dir ]; then mount --bind "$2" /sandbox/hvsock; else mount --bind "$2" /sandbox/endpoint.sock; fi &&
        echo ready >/tmp/sandbox.ready && exec sleep 100000' _ "$layout" "$src" 2>/tmp/sandbox.err &
sandbox=$!
wait_line /tmp/sandbox.ready 100 ready
check sandbox-mount "$?" "unshare -m + mount --bind $src: $(head -n1 /tmp/sandbox.err)"
in_sandbox() { nsenter -t "$sandbox" -m env HVSOCK_ENDPOINT="$sb_ep" "$@"; }

hvsock listen --keep --exec cat "wildcard:$PORT" >/dev/null 2>/tmp/listen.err &
listener=$!
echo_ok() { # WHO: one line through the listener (from the host or from the sandbox)
    local r
    if [ "$1" = sandbox ]; then
        r=$(echo "via-$1" | timeout 30 nsenter -t "$sandbox" -m env HVSOCK_ENDPOINT="$sb_ep" hvsock connect --timeout 20000 "parent:$PORT" 2>&1)
    else
        r=$(echo "via-$1" | timeout 30 hvsock connect --timeout 20000 "loopback:$PORT" 2>&1)
    fi
    [ "$r" = "via-$1" ] || { echo "$r" | head -n1; return 1; }
}
for _ in $(seq 50); do echo_ok host >/dev/null && break; sleep 0.2; done
why=$(echo_ok host)
check listen-bound "$?" "hvsock listen --keep (pid $listener) echoes from the host $why"
why=$(echo_ok sandbox)
check sandbox-reaches "$?" "from the sandbox through $sb_ep $why"
fds_before=$(sockets_of "$listener")
say "INFO listener pid $listener sockets: $fds_before"
endpoint_before=$(stat -c %i "$src/endpoint.sock" 2>&1)

# Established connections: one from the host, one from the sandbox; fds 5 and 6 feed them.
open_conn() { # NAME FD CMD...
    local name=$1 fd=$2
    shift 2
    rm -f "/tmp/$name.in"
    mkfifo "/tmp/$name.in"
    : >"/tmp/$name.out"
    "$@" <"/tmp/$name.in" >"/tmp/$name.out" 2>"/tmp/$name.err" &
    eval "exec $fd>/tmp/$name.in"
}
open_conn est-host 5 hvsock connect "loopback:$PORT"
open_conn est-sandbox 6 nsenter -t "$sandbox" -m env HVSOCK_ENDPOINT="$sb_ep" hvsock connect "parent:$PORT"
echo setup >&5
echo setup >&6
wait_line /tmp/est-host.out 200 setup
check established-host "$?" "$(head -n1 /tmp/est-host.err)"
wait_line /tmp/est-sandbox.out 200 setup
check established-sandbox "$?" "$(head -n1 /tmp/est-sandbox.err)"

# ---------------------------------------------------------------- the connect loop
# Connects from the host to a second `hvsock listen --keep` (no --exec: nothing to spawn per
# connection), one after another, each logged as "start_us end_us ok|fail". On this TCG guest
# each takes a good part of a second (process start-up mostly): that is the resolution.
GAP_PORT=5100
hvsock service add gap --port "$GAP_PORT" >/dev/null 2>&1
start_gap_listener() {
    hvsock listen --keep "wildcard:$GAP_PORT" >/dev/null 2>/tmp/gap-listen.err &
    gap_listener=$!
}
start_gap_listener
gap_loop() {
    local t0 t1
    while [ ! -e /tmp/gap.stop ]; do
        t0=$(now_us)
        if timeout 20 hvsock connect --timeout 15000 "loopback:$GAP_PORT" </dev/null >/dev/null 2>&1; then
            echo "$t0 $(now_us) ok"
        else
            echo "$t0 $(now_us) fail"
            sleep 0.05
        fi
    done
}
# From the action's start ($2, us; it ended at $3): the longest time without a connect
# completing (max_gap_ms) and the same before the action (baseline_gap_ms: the loop's own
# pace), the time until a connect started after the action was served (back_ms), the failed
# connects; never_back=1 when no connect started after the action succeeded.
gap_report() { # PHASE ACTION_START_US ACTION_END_US LOG
    awk -v phase="$1" -v a0="$2" -v a1="$3" '
        $3 == "ok" { if (last && $2 >= a0) { g = $2 - last; if (g > gap) gap = g }
                     else if (last) { g = $2 - last; if (g > base) base = g }
                     if ($1 >= a1 && !back) back = $2 - a0
                     last = $2 }
        $3 == "fail" && $2 >= a0 { fails++ }
        END { printf "GAP %s action_ms=%d max_gap_ms=%d baseline_gap_ms=%d back_ms=%d failed=%d%s\n",
              phase, (a1 - a0) / 1000, gap / 1000, base / 1000, back / 1000, fails, (back ? "" : " never_back=1") }' "$4"
}

# One phase: start the loop, act ($2...), wait for hvsockd to serve again, then check it all.
phase() {
    local name=$1 old_pid t0 t1 pid i
    shift
    old_pid=$(main_pid)
    rm -f /tmp/gap.stop
    gap_loop >"/tmp/gap-$name.log" &
    local loop=$!
    sleep 3
    # A registry write just before the action: it must survive it.
    hvsock service add "late-$name" --port "$((PORT + ${#name}))" >/dev/null 2>"/tmp/late-$name.err"
    local late_rc=$?
    t0=$(now_us)
    "$@"
    t1=$(now_us)
    for i in $(seq 300); do
        pid=$(main_pid)
        [ "$(systemctl is-active hvsockd.service)" = active ] && [ "$pid" != 0 ] && [ "$pid" != "$old_pid" ] && break
        sleep 0.1
    done
    check "$name-service-back" "$([ "$pid" != "$old_pid" ] && [ "$(systemctl is-active hvsockd.service)" = active ]; echo $?)" \
        "hvsockd pid $old_pid -> $pid after $((($(now_us) - t0) / 1000)) ms"
    # hvsockd took its sockets back from systemd's descriptor store (its own log says so).
    local resumed
    resumed=$(journalctl -u hvsockd.service --since "@$((t0 / 1000000))" -o cat --no-pager 2>&1 |
        grep -m1 "resuming the sockets")
    check "$name-resumed-from-store" "$([ -n "$resumed" ]; echo $?)" "${resumed:-no resuming line in the journal of hvsockd since the action}"
    # The partition's endpoint is the very socket the sandbox mounted (same inode).
    local endpoint_now
    endpoint_now=$(stat -c %i "$src/endpoint.sock" 2>&1)
    check "$name-endpoint-same-socket" "$([ "$endpoint_now" = "$endpoint_before" ]; echo $?)" \
        "endpoint.sock inode before: $endpoint_before; now: $endpoint_now"
    sleep 4
    touch /tmp/gap.stop
    wait "$loop"
    local gap
    gap=$(gap_report "$name" "$t0" "$t1" "/tmp/gap-$name.log")
    say "$gap"
    # Connectors whose timeout (15 s) exceeds the restart time get their answer: none fails.
    case "$gap" in
    *" failed=0"*never_back*) check "$name-connects-answered" 1 "$gap" ;;
    *" failed=0"*) check "$name-connects-answered" 0 "$gap" ;;
    *) check "$name-connects-answered" 1 "$gap" ;;
    esac

    hvsock vm show sandbox >/dev/null 2>"/tmp/reg-$name.err" && hvsock service show "late-$name" >/dev/null 2>>"/tmp/reg-$name.err"
    check "$name-registry" "$([ $? = 0 ] && [ $late_rc = 0 ]; echo $?)" "$(head -n1 "/tmp/late-$name.err") $(head -n1 "/tmp/reg-$name.err")"
    echo "$name" >&5
    wait_line /tmp/est-host.out 100 "$name"
    check "$name-established-host" "$?" "$(head -n1 /tmp/est-host.err)"
    echo "$name" >&6
    wait_line /tmp/est-sandbox.out 100 "$name"
    check "$name-established-sandbox" "$?" "$(head -n1 /tmp/est-sandbox.err)"
    local alive=1
    kill -0 "$listener" 2>/dev/null && alive=0
    check "$name-listener-no-error" "$([ $alive = 0 ] && [ ! -s /tmp/listen.err ]; echo $?)" \
        "hvsock listen --keep alive=$([ $alive = 0 ] && echo yes || echo no) stderr: $(head -n1 /tmp/listen.err)"
    local fds_now
    fds_now=$(sockets_of "$listener")
    # The application's descriptor numbers are unchanged (the library's re-bind keeps them, as
    # does the descriptor store) ...
    check "$name-listener-same-fd" "$([ $alive = 0 ] && same_fd_numbers "$fds_before" "$fds_now"; echo $?)" \
        "before: $fds_before; now: $fds_now"
    # ... and so is the socket behind them (same inode): hvsockd resumed the listener's session
    # from systemd's descriptor store; a re-bind by the library would have made a new one.
    check "$name-listener-same-socket" "$([ $alive = 0 ] && [ "$fds_now" = "$fds_before" ]; echo $?)" \
        "before: $fds_before; now: $fds_now"
    why=$(echo_ok host)
    check "$name-listener-serves" "$?" "a new connection echoed $why"
    if ! kill -0 "$gap_listener" 2>/dev/null; then
        say "INFO the connect loop's listener was lost: $(head -n1 /tmp/gap-listen.err); bound again"
        start_gap_listener
    fi
    if [ $alive != 0 ]; then
        # Keep the next phase independent of this one's outcome.
        hvsock listen --keep --exec cat "wildcard:$PORT" >/dev/null 2>/tmp/listen.err &
        listener=$!
        for _ in $(seq 50); do echo_ok host >/dev/null && break; sleep 0.2; done
        fds_before=$(sockets_of "$listener")
        say "INFO listener lost: bound again for the next phase (pid $listener)"
    fi
    # The sandbox's mount, made before the action, still leads to hvsockd (checked after the
    # listener was bound again if it was lost, so that this tests the mount alone).
    why=$(echo_ok sandbox)
    check "$name-sandbox-reaches" "$?" "through the same mount ($layout layout) $why"
}

kill_main() { kill -9 "$(main_pid)"; }
phase restart systemctl restart hvsockd.service
phase kill kill_main

# ---------------------------------------------------------------- stop
# `systemctl stop` empties the descriptor store (a stop means stop): the next start, by socket
# activation, resumes nothing, and the listener binds again by itself (library re-bind).
old_pid=$(main_pid)
t0=$(now_us)
systemctl stop hvsockd.service
stopped=$(systemctl is-active hvsockd.service)
why=$(echo_ok host)
rc=$?
pid=$(main_pid)
resumed=$(journalctl -u hvsockd.service --since "@$((t0 / 1000000))" -o cat --no-pager 2>&1 |
    grep -m1 "resuming the sockets")
# (The listener's re-bind itself may start hvsockd again through hvsockd.socket at once.)
check stop-store-emptied "$([ "$pid" != "$old_pid" ] && [ -z "$resumed" ]; echo $?)" \
    "hvsockd.service $stopped right after systemctl stop; pid $old_pid -> $pid; ${resumed:-nothing resumed at the next start}"
check stop-listener-serves "$rc" "after systemctl stop and a start by socket activation $why"
why=$(echo_ok sandbox)
check stop-sandbox-reaches "$?" "through the same mount ($layout layout) $why"
say "INFO listener sockets after stop: $(sockets_of "$listener") (before: $fds_before)"
finish

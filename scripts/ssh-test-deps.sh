#!/usr/bin/env bash
# Installs what the OpenSSH test of tests/agent_plumbing.rs needs, idempotently: Debian's
# openssh-server (for /usr/sbin/sshd, which the test runs as `sshd -i` behind `hvsock listen
# --keep --exec`, never as a daemon) and its privilege-separation directory /run/sshd.
# Needs root on a fresh machine (apt-get). The system's own sshd service is never started:
# a policy-rc.d that refuses service starts is in place while the package installs.
set -euo pipefail
if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null && command -v scp >/dev/null; then
    if [ -d /run/sshd ] || { [ "$(id -u)" = 0 ] && install -d -m 0755 /run/sshd; }; then
        exit 0
    fi
fi
if [ "$(id -u)" != 0 ]; then
    echo "ssh-test-deps.sh: openssh-server (/usr/sbin/sshd) or /run/sshd is missing and installing them needs root" >&2
    exit 1
fi
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# ssh-test-deps.sh: start no service while packages install\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    created=1
fi
cleanup() { if [ "$created" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
apt_install() {
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get -o DPkg::Lock::Timeout=300 install -y -q \
        --no-install-recommends openssh-server openssh-client >&2
}
if ! apt_install; then
    timeout 600 apt-get -o DPkg::Lock::Timeout=300 update -q >&2
    apt_install
fi
install -d -m 0755 /run/sshd 2>/dev/null || mkdir -p /run/sshd
[ -x /usr/sbin/sshd ] || { echo "ssh-test-deps.sh: /usr/sbin/sshd is still missing" >&2; exit 1; }

#!/usr/bin/env bash
# Installs what the nested-VM test needs into a cache dir, idempotently.
#
#   scripts/nested-vm/setup.sh            # as root on a fresh machine; seconds on a rerun
#
# Env:
#   HVSOCK_CACHE         cache root (default <repo>/.cache); everything goes to $HVSOCK_CACHE/nested-vm
#   HVSOCK_KERNEL_PKG    kernel package to use (default: what linux-image-cloud-amd64 depends on)
#   HVSOCK_VM_MODULES    modules to load in the guest, dependencies are added (default below)
#   HVSOCK_SETUP_FORCE=1 redo every step
#   HVSOCK_SETUP_MUSL_TOOLS=0  do not apt-get install musl-tools (only needed for crates with C code)
#   HVSOCK_SETUP_SYSTEMD_ROOTFS=0  do not build the Debian root file system with systemd (rootfs.sh)
#
# Writes $HVSOCK_CACHE/nested-vm/env.sh (QEMU, QEMU_FIRMWARE_DIRS, VMLINUZ, KERNEL_VERSION,
# MODULES_DIR, BUSYBOX, VHOST_DEVICE_VSOCK, ...) for the other scripts to source, and prints it.
#
# Root is needed only for `apt-get install` of QEMU's shared libraries (once per machine).
# Nothing is installed root-wide but those libraries (and musl-tools); QEMU itself, the kernel and
# busybox are unpacked from their .debs with dpkg-deb -x, so the preinstalled qemu-utils 10.x stays.
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=120 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

QEMU_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
VHOST_VERSION=0.3.0
MUSL_TARGET=x86_64-unknown-linux-musl
# Modules the guest loads, in this order; their dependencies (from each module's modinfo) are added
# before them. vsock_loopback gives the guest CID 1 (LOOPBACK), which costs nothing.
DEFAULT_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport vsock_loopback"
MODULES="${HVSOCK_VM_MODULES:-$DEFAULT_MODULES}"

DEBS="$NV_CACHE/debs"
STAMPS="$NV_CACHE/stamps"
FORCE="${HVSOCK_SETUP_FORCE:-0}"

mkdir -p "$NV_CACHE" "$DEBS" "$STAMPS" || nv_die "cannot create the cache dir $NV_CACHE (set HVSOCK_CACHE to a writable dir)"

# One setup at a time per cache dir.
exec 9>"$NV_CACHE/.setup.lock"
timeout 900 flock 9 || nv_die "another setup.sh holds $NV_CACHE/.setup.lock for more than 15 min"

step_done() { [[ "$FORCE" != 1 && -f "$STAMPS/$1" ]]; }
mark_done() { printf '%s\n' "${2:-done}" >"$STAMPS/$1"; }

need_root() {
    [[ "$(id -u)" == 0 ]] || nv_die "$1 needs root: rerun scripts/nested-vm/setup.sh as root (sudo -E)"
}

# Prints the newest $DEBS/PKG_*.deb (several versions may pile up over time); fails if none.
newest_deb() {
    local f best=""
    for f in "$DEBS/${1}"_*.deb; do
        [[ -f "$f" ]] || continue
        if [[ -z "$best" || "$f" -nt "$best" ]]; then best="$f"; fi
    done
    [[ -n "$best" ]] && printf '%s\n' "$best"
}

# apt-get download PKG... into $DEBS; on failure (e.g. no package lists yet) run apt-get update once and retry.
# Prints the .deb paths, one a line, in the order given.
apt_download() {
    local p missing=()
    for p in "$@"; do
        compgen -G "$DEBS/${p}_*.deb" >/dev/null || missing+=("$p")
    done
    if ((${#missing[@]})); then
        nv_log "apt-get download ${missing[*]}"
        if ! (cd "$DEBS" && timeout 600 apt-get download -q "${missing[@]}" >"$DEBS/download.log" 2>&1); then
            nv_log "apt-get download failed (see $DEBS/download.log); running apt-get update and retrying"
            need_root "apt-get update"
            timeout 600 apt-get update -q >"$DEBS/update.log" 2>&1 || nv_die "apt-get update failed: see $DEBS/update.log (is a Debian mirror reachable?)"
            (cd "$DEBS" && timeout 600 apt-get download -q "${missing[@]}" >"$DEBS/download.log" 2>&1) ||
                nv_die "apt-get download ${missing[*]} failed: see $DEBS/download.log"
        fi
    fi
    for p in "$@"; do
        # Newest file first if several versions were downloaded over time.
        newest_deb "$p" || nv_die "no .deb for $p in $DEBS after apt-get download"
    done
}

# Unpack .debs into DIR atomically (DIR.tmp, then rename).
unpack_debs() {
    local dir="$1" f
    shift
    rm -rf "$dir.tmp" "$dir"
    mkdir -p "$dir.tmp"
    for f in "$@"; do
        timeout 300 dpkg-deb -x "$f" "$dir.tmp" || nv_die "dpkg-deb -x $f failed"
    done
    mv "$dir.tmp" "$dir"
}

deb_version() { dpkg-deb -f "$1" Version; }

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

# apt-get install the packages that are not installed yet, refusing if apt would remove anything
# (that is how a plain `apt-get install qemu-system-x86` loses qemu-utils 10.x).
apt_install_missing() {
    local p todo=()
    for p in "$@"; do is_installed "$p" || todo+=("$p"); done
    ((${#todo[@]})) || return 0
    need_root "apt-get install ${todo[*]}"
    local sim="$NV_CACHE/apt-install-sim.log"
    timeout 300 apt-get install -s --no-install-recommends "${APT_OPTS[@]}" "${todo[@]}" >"$sim" 2>&1 ||
        nv_die "apt-get install -s ${todo[*]} failed: see $sim (apt-get update may be needed)"
    if grep -q '^Remv ' "$sim"; then
        grep '^Remv ' "$sim" >&2
        nv_die "installing ${todo[*]} would remove the packages above; refusing (see $sim)"
    fi
    nv_log "apt-get install ${todo[*]}"
    timeout 900 apt-get install --no-install-recommends "${APT_OPTS[@]}" "${todo[@]}" >"$NV_CACHE/apt-install.log" 2>&1 ||
        nv_die "apt-get install ${todo[*]} failed: see $NV_CACHE/apt-install.log"
}

# ---------------------------------------------------------------- QEMU
QEMU_ROOT="$NV_CACHE/qemu/root"
QEMU="$QEMU_ROOT/usr/bin/qemu-system-x86_64"
QEMU_FIRMWARE_DIRS="$QEMU_ROOT/usr/share/qemu:$QEMU_ROOT/usr/share/seabios:$QEMU_ROOT/usr/lib/ipxe/qemu"

setup_qemu() {
    if ! step_done qemu || [[ ! -x "$QEMU" ]]; then
        local debs list
        list="$(apt_download "${QEMU_PKGS[@]}")"
        mapfile -t debs <<<"$list"
        unpack_debs "$NV_CACHE/qemu/root" "${debs[@]}"
        mark_done qemu "$(deb_version "${debs[0]}")"
    fi
    # QEMU's shared libraries are root-wide, not in the cache (which CI may restore onto a fresh
    # machine), so check them on every run: ldd is quick. When some are missing, install the Depends
    # of qemu-system-x86 that are not its own sibling packages (first alternative of each, versions
    # dropped), then check again with ldd and by running the binary.
    if ldd "$QEMU" 2>&1 | grep -q 'not found'; then
        local deb depends libs
        deb="$(newest_deb qemu-system-x86)" || { rm -f "$STAMPS/qemu"; nv_die "qemu-system-x86 .deb vanished from $DEBS; rerun setup.sh"; }
        depends="$(dpkg-deb -f "$deb" Depends)" || nv_die "dpkg-deb -f $deb Depends failed"
        mapfile -t libs < <(tr ',' '\n' <<<"$depends" | sed -E 's/\|.*//; s/\(.*\)//; s/:any//; s/^[[:space:]]+//; s/[[:space:]]+$//' |
            grep -vE '^(qemu-|seabios$|ipxe-qemu$)' | grep -v '^$')
        apt_install_missing "${libs[@]}"
        if ldd "$QEMU" | grep -q 'not found'; then
            ldd "$QEMU" | grep 'not found' >&2
            nv_die "$QEMU still misses the shared libraries above; install their packages with apt-get"
        fi
    fi
    local v
    v="$(timeout 30 "$QEMU" --version 2>&1 | head -n1)" || nv_die "$QEMU --version failed: $v"
    QEMU_VERSION="$v"
    local d
    for d in ${QEMU_FIRMWARE_DIRS//:/ }; do [[ -d "$d" ]] || nv_die "QEMU firmware dir $d missing: rerun with HVSOCK_SETUP_FORCE=1"; done
}

# ---------------------------------------------------------------- kernel + modules
KERNEL_ROOT="$NV_CACHE/kernel/root"
MODULES_DIR="$NV_CACHE/kernel/modules"

resolve_kernel_pkg() {
    if [[ -n "${HVSOCK_KERNEL_PKG:-}" ]]; then
        printf '%s\n' "$HVSOCK_KERNEL_PKG"
        return
    fi
    local p
    p="$(timeout 60 apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
    if [[ -z "$p" ]]; then
        need_root "apt-get update"
        timeout 600 apt-get update -q >"$DEBS/update.log" 2>&1 || nv_die "apt-get update failed: see $DEBS/update.log"
        p="$(timeout 60 apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
    fi
    [[ -n "$p" ]] || nv_die "cannot resolve linux-image-cloud-amd64 to a linux-image-<ver>-cloud-amd64 package; set HVSOCK_KERNEL_PKG"
    printf '%s\n' "$p"
}

# Copy one module (decompressing .ko.xz/.ko.zst/.ko.gz) to $out/NAME.ko.
copy_module() {
    local src="$1" dst="$2"
    case "$src" in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) timeout 60 xz -dc "$src" >"$dst" 2>/dev/null || timeout 60 "$BUSYBOX" xzcat "$src" >"$dst" ;;
    *.ko.gz) timeout 60 gzip -dc "$src" >"$dst" ;;
    *.ko.zst) timeout 60 zstd -q -dc "$src" >"$dst" || nv_die "zstd needed to decompress $src (apt-get install zstd)" ;;
    *) nv_die "unknown module format: $src" ;;
    esac
}

setup_kernel() {
    if step_done kernel && compgen -G "$KERNEL_ROOT/boot/vmlinuz-*" >/dev/null && [[ -s "$MODULES_DIR/load-order" ]]; then
        KERNEL_VERSION="$(cat "$STAMPS/kernel")"
        VMLINUZ="$KERNEL_ROOT/boot/vmlinuz-$KERNEL_VERSION"
        return
    fi
    local pkg deb
    pkg="$(resolve_kernel_pkg)"
    deb="$(apt_download "$pkg")"
    unpack_debs "$KERNEL_ROOT" "$deb"
    local kdirs=("$KERNEL_ROOT"/lib/modules/*)
    if ((${#kdirs[@]} != 1)) || [[ ! -d "${kdirs[0]}" ]]; then nv_die "expected one lib/modules/<ver> in $deb, found: ${kdirs[*]}"; fi
    KERNEL_VERSION="$(basename "${kdirs[0]}")"
    VMLINUZ="$KERNEL_ROOT/boot/vmlinuz-$KERNEL_VERSION"
    [[ -f "$VMLINUZ" ]] || nv_die "no $VMLINUZ in $deb"

    # The .deb has no modules.dep (depmod runs in postinst): index the module files and read each
    # module's `depends=` from its .modinfo section, then order the closure depth-first.
    local -A file_of=() seen=()
    local f n
    while IFS= read -r f; do
        n="$(basename "$f")"
        n="${n%%.ko*}"
        file_of[${n//-/_}]="$f"
    done < <(find "${kdirs[0]}" -name '*.ko*' -type f)
    local builtin="${kdirs[0]}/modules.builtin"
    local order=()
    rm -rf "$MODULES_DIR.tmp" "$MODULES_DIR"
    mkdir -p "$MODULES_DIR.tmp"
    visit() {
        local m="${1//-/_}" d deps
        [[ -n "${seen[$m]:-}" ]] && return 0
        seen[$m]=1
        if [[ -z "${file_of[$m]:-}" ]]; then
            if grep -qE "/${m}\.ko(\.[a-z]+)?$" "$builtin" 2>/dev/null; then
                return 0 # built into the kernel
            fi
            nv_die "module $m is neither in $KERNEL_VERSION's modules nor built in"
        fi
        copy_module "${file_of[$m]}" "$MODULES_DIR.tmp/$m.ko"
        deps="$(tr '\0' '\n' <"$MODULES_DIR.tmp/$m.ko" | sed -n 's/^depends=//p' | head -n1)"
        for d in ${deps//,/ }; do visit "$d"; done
        order+=("$m")
    }
    for n in $MODULES; do visit "$n"; done
    printf '%s\n' "${order[@]}" >"$MODULES_DIR.tmp/load-order"
    mv "$MODULES_DIR.tmp" "$MODULES_DIR"
    mark_done kernel "$KERNEL_VERSION"
}

# ---------------------------------------------------------------- busybox
BUSYBOX="$NV_CACHE/busybox/root/bin/busybox"
BUSYBOX_TREE="$NV_CACHE/busybox/tree"
setup_busybox() {
    if ! step_done busybox || [[ ! -x "$BUSYBOX" ]]; then
        local deb
        deb="$(apt_download busybox-static)"
        unpack_debs "$NV_CACHE/busybox/root" "$deb"
        [[ -x "$BUSYBOX" ]] || nv_die "no bin/busybox in $deb"
        mark_done busybox "$(deb_version "$deb")"
    fi
    # Sanity: the applets the guest scripts and mkinitramfs.sh use.
    local a list
    list="$("$BUSYBOX" --list)"
    for a in sh insmod cpio mount poweroff timeout; do
        grep -qx "$a" <<<"$list" || nv_die "$BUSYBOX lacks the $a applet"
    done
    # A tree with bin/busybox and a symlink per applet, which mkinitramfs.sh copies in one go
    # (making 270 symlinks takes a second of forks; copying the tree takes milliseconds).
    if [[ ! -x "$BUSYBOX_TREE/bin/busybox" || "$BUSYBOX" -nt "$BUSYBOX_TREE/bin/busybox" ]]; then
        rm -rf "$BUSYBOX_TREE.tmp" "$BUSYBOX_TREE"
        mkdir -p "$BUSYBOX_TREE.tmp/bin"
        cp "$BUSYBOX" "$BUSYBOX_TREE.tmp/bin/busybox"
        while IFS= read -r a; do
            [[ "$a" == bin/busybox ]] && continue
            mkdir -p "$BUSYBOX_TREE.tmp/$(dirname "$a")"
            ln -sf /bin/busybox "$BUSYBOX_TREE.tmp/$a"
        done < <(timeout 10 "$BUSYBOX" --list-full)
        [[ -L "$BUSYBOX_TREE.tmp/bin/sh" ]] || nv_die "$BUSYBOX --list-full gave no bin/sh"
        mv "$BUSYBOX_TREE.tmp" "$BUSYBOX_TREE"
    fi
}

# ---------------------------------------------------------------- vhost-device-vsock
VHOST_DEVICE_VSOCK="$NV_CACHE/vhost-device-vsock/bin/vhost-device-vsock"
setup_vhost() {
    if [[ "$FORCE" != 1 && -x "$VHOST_DEVICE_VSOCK" ]] && timeout 10 "$VHOST_DEVICE_VSOCK" --version 2>/dev/null | grep -q " $VHOST_VERSION"; then
        return
    fi
    command -v cargo >/dev/null || nv_die "cargo not found: install Rust (rustup) first"
    nv_log "cargo install vhost-device-vsock $VHOST_VERSION (about a minute on 2 cores)"
    timeout 1800 cargo install --locked --quiet vhost-device-vsock --version "$VHOST_VERSION" \
        --root "$NV_CACHE/vhost-device-vsock" --force >"$NV_CACHE/cargo-install.log" 2>&1 ||
        nv_die "cargo install vhost-device-vsock failed: see $NV_CACHE/cargo-install.log"
    [[ -x "$VHOST_DEVICE_VSOCK" ]] || nv_die "cargo install did not produce $VHOST_DEVICE_VSOCK"
}

# ---------------------------------------------------------------- Rust musl target
setup_musl() {
    command -v rustup >/dev/null || nv_die "rustup not found: the musl target is added with rustup"
    if ! (cd "$NV_REPO" && timeout 60 rustup target list --installed) | grep -qx "$MUSL_TARGET"; then
        nv_log "rustup target add $MUSL_TARGET"
        (cd "$NV_REPO" && timeout 600 rustup target add "$MUSL_TARGET") >"$NV_CACHE/rustup.log" 2>&1 ||
            nv_die "rustup target add $MUSL_TARGET failed: see $NV_CACHE/rustup.log"
    fi
    # Pure-Rust crates link for musl without any musl toolchain: rustc drives the host's `cc` with the
    # crt objects and libc.a that rustup ships in the target's self-contained dir. A crate that
    # compiles C (cc-rs: rusqlite's bundled SQLite in hvsockd, for a guest that runs its own hvsockd)
    # fails with 'failed to find tool "x86_64-linux-musl-gcc"' unless musl-tools is installed.
    # It is small and installs nothing else, so install it unless told not to.
    if [[ "${HVSOCK_SETUP_MUSL_TOOLS:-1}" == 1 ]] && ! command -v x86_64-linux-musl-gcc >/dev/null; then
        apt_install_missing musl-tools
    fi
}

write_env() {
    local env="$NV_CACHE/env.sh"
    cat >"$env.tmp" <<EOF
# Written by scripts/nested-vm/setup.sh; source it. Do not edit (rerun setup.sh).
export NESTED_VM_CACHE='$NV_CACHE'
export NESTED_VM_SCRIPTS='$NV_SCRIPTS'
export QEMU='$QEMU'
# Colon-separated; pass each as -L DIR to QEMU.
export QEMU_FIRMWARE_DIRS='$QEMU_FIRMWARE_DIRS'
export QEMU_VERSION='$QEMU_VERSION'
export KERNEL_VERSION='$KERNEL_VERSION'
export VMLINUZ='$VMLINUZ'
# NAME.ko files (uncompressed) and load-order (one NAME a line, load in that order).
export MODULES_DIR='$MODULES_DIR'
export BUSYBOX='$BUSYBOX'
# bin/busybox plus a symlink per applet (bin/sh, sbin/insmod, usr/bin/...), to copy into an initramfs.
export BUSYBOX_TREE='$BUSYBOX_TREE'
export VHOST_DEVICE_VSOCK='$VHOST_DEVICE_VSOCK'
export MUSL_TARGET='$MUSL_TARGET'
EOF
    mv "$env.tmp" "$env"
    nv_log "wrote $env:"
    grep '^export' "$env"
    nv_log "use it with: . $env"
}

setup_busybox
setup_qemu
setup_kernel
setup_musl
setup_vhost
write_env
# The guest with systemd (tests/nested_vm_systemd.rs): built once by rootfs.sh (mmdebstrap, as
# root), cached under its own lock; a rerun only checks that the cached image is there.
if [[ "${HVSOCK_SETUP_SYSTEMD_ROOTFS:-1}" == 1 ]]; then
    "$NV_SCRIPTS/rootfs.sh" --base >/dev/null || nv_die "rootfs.sh --base failed (see its message above)"
fi

#!/usr/bin/env bash
# A Debian root file system with systemd, booted whole as the test guest's initramfs
# (rdinit=/lib/systemd/systemd), with the project's units from packaging/.
#
#   rootfs.sh --base                          # build the cached base if needed; print its path
#   rootfs.sh -o OUT [--add SRC:DEST]... [--enable UNIT]...
#
#   --base          only make sure the base image exists (as root the first time; seconds after)
#   -o, --output F  write the bootable initramfs F: the base image followed by an overlay archive
#                   holding packaging/'s units (hvsockd.service, hvsockd.socket, hvsockd-admin.socket, sysusers.d,
#                   tmpfiles.d, hvsock-agent.service) and what --add names
#   --add SRC:DEST  put file SRC at absolute DEST in the overlay (mode kept); repeatable
#   --enable UNIT   enable UNIT (a file of the overlay under /usr/lib/systemd/system) as
#                   `systemctl enable` does: a symlink in /etc/systemd/system/<T>.wants/ for each
#                   WantedBy=T of its [Install], and the same for the units its Also= names
#
# The base (cached under $HVSOCK_CACHE/nested-vm/systemd-rootfs/, keyed by a hash of the recipe
# below, the kernel version and the module files; built under a lock, older bases deleted):
# `mmdebstrap --variant=minbase --include=systemd-sysv,udev,kmod bookworm` into a folder (no man
# pages, docs or locales), the guest kernel's virtio/vsock modules from setup.sh's cache in
# /lib/modules/<kver>/extra plus depmod (udev loads them for the vhost-user-vsock device), getty
# and first-boot units masked, a fixed machine-id; then packed with cpio | gzip -1 and the
# folder deleted. Building needs root (mmdebstrap's root mode; apt-get install mmdebstrap if
# missing) and a Debian mirror through apt; using a cached base needs neither.
# Env: HVSOCK_ROOTFS_MIRROR  mirror for mmdebstrap (default: its own, deb.debian.org)
#
# Boot it with run-vm.sh --initrd OUT --memory 2048 --append 'rdinit=/lib/systemd/systemd'.
set -euo pipefail
umask 022

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    nv_usage
    exit "${1:-2}"
}

out="" base_only=0
adds=() enables=()
while (($#)); do
    case "$1" in
    --base) base_only=1; shift ;;
    -o | --output) out="${2:?-o needs a file}"; shift 2 ;;
    --add) adds+=("${2:?--add needs SRC:DEST}"); shift 2 ;;
    --enable) enables+=("${2:?--enable needs a unit}"); shift 2 ;;
    -h | --help) usage 0 ;;
    *) nv_warn "unknown argument: $1"; usage ;;
    esac
done
((base_only)) || [[ -n "$out" ]] || { nv_warn "give --base or -o OUT"; usage; }

nv_load_env
ROOTFS_CACHE="$NV_CACHE/systemd-rootfs"
mkdir -p "$ROOTFS_CACHE" || nv_die "cannot create $ROOTFS_CACHE (set HVSOCK_CACHE to a writable dir)"

# The key of the base: the recipe (the lines between the markers below), the kernel, the modules.
recipe_key() {
    {
        sed -n '/^# BEGIN BASE RECIPE/,/^# END BASE RECIPE/p' "${BASH_SOURCE[0]}"
        printf 'kernel %s\nmirror %s\n' "$KERNEL_VERSION" "${HVSOCK_ROOTFS_MIRROR:-}"
        cat "$MODULES_DIR/load-order"
        while IFS= read -r m; do sha256sum <"$MODULES_DIR/$m.ko"; done <"$MODULES_DIR/load-order"
    } | sha256sum | cut -c1-16
}
BASE="$ROOTFS_CACHE/base-$(recipe_key).cpio.gz"

install_mmdebstrap() {
    command -v mmdebstrap >/dev/null && return 0
    [[ "$(id -u)" == 0 ]] || nv_die "mmdebstrap is missing: rerun as root (scripts/nested-vm/setup.sh) to apt-get install it"
    local sim="$ROOTFS_CACHE/apt-install-sim.log"
    timeout 300 apt-get install -s -y -q --no-install-recommends mmdebstrap >"$sim" 2>&1 ||
        nv_die "apt-get install -s mmdebstrap failed: see $sim (apt-get update may be needed)"
    if grep -q '^Remv ' "$sim"; then nv_die "installing mmdebstrap would remove packages (see $sim); refusing"; fi
    nv_log "apt-get install mmdebstrap"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=120 mmdebstrap >"$ROOTFS_CACHE/apt-install.log" 2>&1 ||
        nv_die "apt-get install mmdebstrap failed: see $ROOTFS_CACHE/apt-install.log"
}

build_base() {
    [[ "$(id -u)" == 0 ]] || nv_die "building the systemd root file system needs root (mmdebstrap's root mode): rerun scripts/nested-vm/setup.sh as root"
    install_mmdebstrap
    local dir="$ROOTFS_CACHE/build.tmp" log="$ROOTFS_CACHE/mmdebstrap.log" t0=$SECONDS
    rm -rf "$dir" "$BASE.tmp"
    trap 'rm -rf "$dir" "$BASE.tmp"' EXIT
    nv_log "building the systemd root file system (mmdebstrap, about 1-2 min)"
    # BEGIN BASE RECIPE (its text is part of the cache key: editing it rebuilds the base)
    local mirror=()
    [[ -z "${HVSOCK_ROOTFS_MIRROR:-}" ]] || mirror=("$HVSOCK_ROOTFS_MIRROR")
    timeout 900 mmdebstrap --mode=root --format=directory --variant=minbase \
        --include=systemd-sysv,udev,kmod \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        bookworm "$dir" "${mirror[@]}" >"$log" 2>&1 || nv_die "mmdebstrap failed: see $log"
    # The guest kernel's virtio/vsock modules, indexed for udev's modalias loading.
    local kmods="$dir/usr/lib/modules/$KERNEL_VERSION"
    mkdir -p "$kmods/extra"
    while IFS= read -r m; do cp "$MODULES_DIR/$m.ko" "$kmods/extra/"; done <"$MODULES_DIR/load-order"
    cp "$NV_CACHE"/kernel/root/lib/modules/"$KERNEL_VERSION"/modules.{order,builtin,builtin.modinfo} "$kmods/" 2>/dev/null || true
    timeout 120 chroot "$dir" depmod -a "$KERNEL_VERSION" >>"$log" 2>&1 || nv_die "depmod in the root file system failed: see $log"
    mkdir -p "$dir/etc/modules-load.d"
    printf 'vmw_vsock_virtio_transport\nvsock_loopback\n' >"$dir/etc/modules-load.d/hvsock-vm.conf"
    # Nothing waits for a login or a first-boot answer on the serial console.
    local u
    for u in serial-getty@ttyS0.service getty@tty1.service console-getty.service systemd-firstboot.service \
        apt-daily.timer apt-daily-upgrade.timer; do
        ln -sfn /dev/null "$dir/etc/systemd/system/$u"
    done
    printf '0123456789abcdef0123456789abcdef\n' >"$dir/etc/machine-id"
    printf 'hvsock-vm\n' >"$dir/etc/hostname"
    rm -rf "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/*
    # END BASE RECIPE
    (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort |
        timeout 300 "$BUSYBOX" cpio -o -H newc 2>/dev/null | timeout 300 gzip -1 -n) >"$BASE.tmp" ||
        nv_die "packing $dir failed"
    rm -rf "$dir"
    mv "$BASE.tmp" "$BASE"
    trap - EXIT
    # Keep the cache small: one base at a time.
    find "$ROOTFS_CACHE" -maxdepth 1 -name 'base-*.cpio.gz' ! -path "$BASE" -delete
    nv_log "built $BASE ($(($(stat -c %s "$BASE") / 1048576)) MiB) in $((SECONDS - t0)) s"
}

if [[ ! -s "$BASE" ]]; then
    exec 8>"$ROOTFS_CACHE/.lock"
    timeout 1200 flock 8 || nv_die "another rootfs.sh holds $ROOTFS_CACHE/.lock for more than 20 min"
    [[ -s "$BASE" ]] || build_base
    exec 8>&-
fi
if ((base_only)); then
    printf '%s\n' "$BASE"
    exit 0
fi

# ---------------------------------------------------------------- the overlay
stage="$(mktemp -d "${TMPDIR:-/tmp}/hvsock-rootfs.XXXXXX")"
trap 'rm -rf "$stage" "$out.tmp.$$"' EXIT
units="$stage/usr/lib/systemd/system"
mkdir -p "$units" "$stage/usr/lib/sysusers.d" "$stage/usr/lib/tmpfiles.d" "$stage/etc/systemd/system"
pkg="$NV_REPO/packaging"
cp "$pkg"/systemd/*.service "$pkg"/systemd/*.socket "$units/"
cp "$pkg/sysusers.d/hvsock.conf" "$stage/usr/lib/sysusers.d/hvsock.conf"
cp "$pkg/tmpfiles.d/hvsock.conf" "$stage/usr/lib/tmpfiles.d/hvsock.conf"

for a in "${adds[@]}"; do
    src="${a%%:*}" dest="${a#*:}"
    [[ "$a" == *:* && -n "$src" && "$dest" == /* ]] || nv_die "--add $a: expected SRC:/absolute/DEST"
    [[ -f "$src" ]] || nv_die "--add $a: $src is not a file"
    mkdir -p "$stage$(dirname "$dest")"
    cp -L --preserve=mode "$src" "$stage$dest"
done

# As `systemctl enable`: the WantedBy= links of each unit and of the units its Also= names.
declare -A enabled=()
while ((${#enables[@]})); do
    u="${enables[0]}"
    enables=("${enables[@]:1}")
    [[ -z "${enabled[$u]:-}" ]] || continue
    enabled[$u]=1
    [[ -f "$units/$u" ]] || nv_die "--enable $u: no $u in the overlay's /usr/lib/systemd/system (--add it there)"
    for also in $(sed -n 's/^Also=//p' "$units/$u"); do enables+=("$also"); done
    wanted="$(sed -n 's/^WantedBy=//p' "$units/$u")"
    [[ -n "$wanted" ]] || nv_die "--enable $u: it has no WantedBy= in [Install]"
    for t in $wanted; do
        mkdir -p "$stage/etc/systemd/system/$t.wants"
        ln -sfn "/usr/lib/systemd/system/$u" "$stage/etc/systemd/system/$t.wants/$u"
    done
done

# Directories keep mode 0755 root:root: the kernel applies an archive's directory modes to the
# directories the base already made.
find "$stage" -mindepth 1 -type d -exec chmod 0755 {} +
find "$stage" -exec touch -h -d @0 {} +
(
    cat "$BASE"
    cd "$stage"
    find . -mindepth 1 | LC_ALL=C sort |
        timeout 60 "$BUSYBOX" cpio -o -H newc -R 0:0 --ignore-devno --renumber-inodes 2>/dev/null |
        timeout 60 gzip -n -6
) >"$out.tmp.$$" || nv_die "packing the overlay for $out failed"
mv "$out.tmp.$$" "$out"
nv_log "wrote $out ($(($(stat -c %s "$out") / 1048576)) MiB: base $(basename "$BASE") + overlay)"

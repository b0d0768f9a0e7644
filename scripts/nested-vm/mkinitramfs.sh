#!/usr/bin/env bash
# Builds a gzip'd newc initramfs for the test guest.
#
#   mkinitramfs.sh -o OUT.cpio.gz [--init FILE] [--add SRC:DEST]... [--no-modules]
#
#   -o, --output FILE    where to write the initramfs (required)
#   --init FILE          the guest's /init (default: guest/init.sh, which boots, runs
#                        /etc/hvsock-vm/test.sh if present and powers off)
#   --add SRC:DEST       also put file SRC at absolute path DEST (mode kept); repeatable,
#                        e.g. --add target/x86_64-unknown-linux-musl/release/hvsock:/bin/hvsock
#   --no-modules         leave out the kernel modules
#
# Always in the image: /bin/busybox with a symlink for every applet, /lib/modules/NAME.ko and
# /lib/modules/load-order (from setup.sh), /lib/hvsock-vm/lib.sh (guest helpers), /init.
# Paths come from $HVSOCK_CACHE/nested-vm/env.sh (run setup.sh first). Output is reproducible
# (sorted, uid 0, mtime 0, gzip -n), so equal inputs give equal bytes.
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    nv_usage
    exit "${1:-2}"
}

out="" init="$NV_SCRIPTS/guest/init.sh" modules=1
adds=()
while (($#)); do
    case "$1" in
    -o | --output) out="${2:?-o needs a file}"; shift 2 ;;
    --init) init="${2:?--init needs a file}"; shift 2 ;;
    --add) adds+=("${2:?--add needs SRC:DEST}"); shift 2 ;;
    --no-modules) modules=0; shift ;;
    -h | --help) usage 0 ;;
    *) nv_warn "unknown argument: $1"; usage ;;
    esac
done
[[ -n "$out" ]] || { nv_warn "-o OUT is required"; usage; }
[[ -f "$init" ]] || nv_die "--init $init: no such file"

nv_load_env

stage="$(mktemp -d "${TMPDIR:-/tmp}/hvsock-initramfs.XXXXXX")"
trap 'rm -rf "$stage" "$stage.cpio.log"' EXIT

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc/hvsock-vm,lib/modules,lib/hvsock-vm}

# busybox and its applet links (setup.sh made the tree).
[[ -n "${BUSYBOX_TREE:-}" && -L "$BUSYBOX_TREE/bin/sh" ]] || nv_die "busybox tree ${BUSYBOX_TREE:-unset} missing: rerun setup.sh"
cp -a "$BUSYBOX_TREE/." "$stage/"

if ((modules)); then
    [[ -s "$MODULES_DIR/load-order" ]] || nv_die "$MODULES_DIR/load-order missing: rerun setup.sh"
    while IFS= read -r m; do
        [[ -f "$MODULES_DIR/$m.ko" ]] || nv_die "$MODULES_DIR/$m.ko missing: rerun setup.sh with HVSOCK_SETUP_FORCE=1"
        cp "$MODULES_DIR/$m.ko" "$stage/lib/modules/"
    done <"$MODULES_DIR/load-order"
    cp "$MODULES_DIR/load-order" "$stage/lib/modules/load-order"
fi

cp "$NV_SCRIPTS/guest/lib.sh" "$stage/lib/hvsock-vm/lib.sh"
cp "$init" "$stage/init"
chmod 0755 "$stage/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\n' >"$stage/etc/group"

for a in "${adds[@]}"; do
    src="${a%%:*}" dest="${a#*:}"
    [[ "$a" == *:* && -n "$src" && "$dest" == /* ]] || nv_die "--add $a: expected SRC:/absolute/DEST"
    [[ -e "$src" ]] || nv_die "--add $a: $src does not exist"
    mkdir -p "$stage$(dirname "$dest")"
    cp -RL --preserve=mode "$src" "$stage$dest"
done

# Reproducible archive: fixed mtimes, sorted names, owner 0:0, no devno/inode noise, gzip -n.
find "$stage" -exec touch -h -d @0 {} +
tmp_out="$out.tmp.$$"
(
    cd "$stage"
    find . -mindepth 1 | LC_ALL=C sort |
        timeout 60 "$BUSYBOX" cpio -o -H newc -R 0:0 --ignore-devno --renumber-inodes 2>"$stage.cpio.log" |
        timeout 60 gzip -n -6
) >"$tmp_out" || {
    cat "$stage.cpio.log" >&2 || true
    rm -f "$tmp_out" "$stage.cpio.log"
    nv_die "cpio | gzip failed building $out"
}
rm -f "$stage.cpio.log"
mv "$tmp_out" "$out"
nv_log "wrote $out ($(stat -c %s "$out") bytes)"

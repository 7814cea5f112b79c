#!/usr/bin/env bash
# Builds the Linux guest kit (tests/linux-guest/README.md): Debian's cloud kernel (the bzImage and
# the ELF vmlinux inside it) and an initramfs with busybox-static, the virtio modules, our static
# guest-checker and ./init.
#
# Usage: tests/linux-guest/build-kit.sh [--out DIR] [--force]
#   --out DIR  where the kit goes (default: target/linux-guest, or $LINUX_GUEST_KIT_DIR)
#   --force    rebuild even when the stamp says the kit is current
#
# Idempotent: the kit is rebuilt only when an input changed (this script, ./init, the checker's
# sources, Cargo.lock, the toolchain, the kernel or busybox package version); otherwise the run
# only checks the stamp. On success prints `kernel=PATH`, `vmlinux=PATH`, `initrd=PATH` and
# `release=VERSION` on stdout. Exit status 3 means something the kit needs is missing on this
# machine (the reason is on stderr; ci/setup.sh installs it); any other non-zero status is a
# failure.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${LINUX_GUEST_KIT_DIR:-$ROOT/target/linux-guest}
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-kit: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# The checker is built for this target; x86-64 guests only (the kernel package is amd64).
TARGET=x86_64-unknown-linux-gnu
META=linux-image-cloud-amd64
# insmod order: each module after the ones it needs. A module the kernel has built in is skipped.
# virtio_mmio is for our own VMM's Linux guests (ACPI-described virtio-mmio devices).
MODULES="virtio_ring virtio virtio_mmio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_balloon"

log() { echo "build-kit: $*" >&2; }
unavailable() { echo "build-kit: unavailable: $*" >&2; exit 3; }

for tool in apt-get apt-cache dpkg-deb dpkg-query cpio gzip find sort sha256sum flock cargo od; do
    command -v "$tool" >/dev/null 2>&1 \
        || unavailable "$tool not found (ci/setup.sh installs the kit's tools: cpio, busybox-static)"
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
KIT=$OUT/kit
exec 9>"$OUT/.lock"
flock 9

# Package versions: the kernel package the metapackage names (e.g. linux-image-6.1.0-48-cloud-amd64
# and the exact version it pins) and busybox-static's candidate. apt-cache reads all of apt's
# lists (seconds without a pkgcache), so the answer is kept until the lists change.
LISTS=$(apt-config shell L Dir::State::lists/d | sed -n "s/^L='\(.*\)'$/\1/p")
LISTS_KEY=$(ls -l --time-style=+%s "${LISTS:-/var/lib/apt/lists/}" 2>/dev/null | sha256sum | cut -c1-64)
RESOLVED=$OUT/resolved
if [ ! -f "$RESOLVED" ] || [ "$(head -n1 "$RESOLVED")" != "$LISTS_KEY" ]; then
    SHOW=$(apt-cache show --no-all-versions "$META" busybox-static 2>/dev/null || true)
    dep=$(echo "$SHOW" | sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*-cloud-amd64\) *(= *\([^)]*\)).*/\1 \2/p' | head -n1)
    [ -n "$dep" ] || unavailable "apt knows no $META (run apt-get update)"
    bb=$(echo "$SHOW" | awk '/^Package: /{p=$2} /^Version: /{if (p=="busybox-static") print $2}' | head -n1)
    printf '%s\n%s\n%s\n' "$LISTS_KEY" "$dep" "${bb:--}" >"$RESOLVED"
fi
read -r KPKG KVER < <(sed -n 2p "$RESOLVED")
BB_CANDIDATE=$(sed -n 3p "$RESOLVED")

# busybox-static: the installed binary, else the package's.
BB_INSTALLED=$(dpkg-query -W -f='${Status}|${Version}' busybox-static 2>/dev/null || true)
if [ "${BB_INSTALLED%%|*}" = "install ok installed" ]; then
    BBVER=${BB_INSTALLED#*|}
    BBSRC=installed
else
    [ "$BB_CANDIDATE" != - ] \
        || unavailable "busybox-static is neither installed nor known to apt (ci/setup.sh installs it)"
    BBVER=$BB_CANDIDATE
    BBSRC=package
fi

STAMP_KEY=$(
    {
        echo "$KPKG=$KVER busybox-static=$BBVER target=$TARGET modules=$MODULES"
        cat "$0" "$HERE/init" "$ROOT/Cargo.lock" "$ROOT/rust-toolchain.toml" "$HERE/checker/Cargo.toml"
        find "$HERE/checker/src" -type f | LC_ALL=C sort | xargs cat
    } | sha256sum | cut -c1-64
)
if [ "$FORCE" = 0 ] && [ -f "$KIT/stamp" ] && [ "$(cat "$KIT/stamp")" = "$STAMP_KEY" ] \
    && [ -f "$KIT/vmlinuz" ] && [ -f "$KIT/vmlinux" ] && [ -f "$KIT/initrd.gz" ]; then
    echo "kernel=$KIT/vmlinuz"
    echo "vmlinux=$KIT/vmlinux"
    echo "initrd=$KIT/initrd.gz"
    echo "release=$(cat "$KIT/release")"
    exit 0
fi

START=$(date +%s)
WORK=$OUT/work
rm -rf "$WORK" "$KIT/stamp"
mkdir -p "$WORK" "$OUT/debs" "$KIT"

# Downloads PKG=VER into debs/ once and prints the .deb's path.
fetch_deb() {
    local pkg=$1 ver=$2 dir
    dir="$OUT/debs/$pkg/$(echo "$ver" | tr ':' '_')"
    if ! ls "$dir"/*.deb >/dev/null 2>&1; then
        log "downloading $pkg $ver"
        mkdir -p "$dir"
        local sandbox=()
        # apt drops to the _apt user for downloads, which cannot write here; as root, stay root.
        [ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
        (cd "$dir" && apt-get -qq "${sandbox[@]}" download "$pkg=$ver" >"$dir/apt.log" 2>&1) || {
            cat "$dir/apt.log" >&2
            rm -rf "$dir"
            unavailable "apt-get download $pkg=$ver failed"
        }
    fi
    ls "$dir"/*.deb | head -n1
}

# 1. Kernel and modules.
KDEB=$(fetch_deb "$KPKG" "$KVER")
log "unpacking $(basename "$KDEB")"
dpkg-deb -x "$KDEB" "$WORK/kernel"
RELEASE=$(ls "$WORK/kernel/lib/modules")
[ "$(echo "$RELEASE" | wc -l)" = 1 ] || { log "expected one kernel release in $KDEB, found: $RELEASE"; exit 1; }
MODDIR=$WORK/kernel/lib/modules/$RELEASE

RFS=$WORK/root
mkdir -p "$RFS"/{bin,dev,proc,sys,tmp,mnt,etc/gcmatest,lib/modules}
: >"$RFS/etc/gcmatest/modules"
for m in $MODULES; do
    ko=$(find "$MODDIR/kernel" -name "$m.ko" -o -name "$m.ko.*" | head -n1)
    if [ -z "$ko" ]; then
        if grep -q "/$m\.ko$" "$MODDIR/modules.builtin" 2>/dev/null; then
            log "$m is built into $RELEASE"
            continue
        fi
        log "module $m is neither in $KPKG nor built in"
        exit 1
    fi
    # busybox insmod takes plain ELF objects: decompress whatever the package compressed.
    case "$ko" in
        *.ko) cp "$ko" "$RFS/lib/modules/$m.ko" ;;
        *.ko.xz) xz -dc "$ko" >"$RFS/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$ko" >"$RFS/lib/modules/$m.ko" ;;
        *.ko.gz) gzip -dc "$ko" >"$RFS/lib/modules/$m.ko" ;;
        *) log "unknown module compression: $ko"; exit 1 ;;
    esac
    echo "$m" >>"$RFS/etc/gcmatest/modules"
done
cp "$WORK/kernel/boot/vmlinuz-$RELEASE" "$WORK/vmlinuz"

# The uncompressed kernel, an ELF vmlinux, cut out of the bzImage (boot protocol >= 2.08:
# payload_offset and payload_length at 0x248 in the setup header, counted from the end of the
# setup sectors) and decompressed by the tool its magic names. VMMs boot it without running the
# decompressor: ours through the 64-bit entry, QEMU through the PVH entry note.
extract_vmlinux() {
    local bz=$1 out=$2 setup off len start magic dec
    setup=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    [ "$setup" != 0 ] || setup=4
    read -r off len < <(od -An -tu4 -j $((0x248)) -N8 "$bz")
    start=$(((setup + 1) * 512 + off))
    magic=$(od -An -tx1 -j "$start" -N6 "$bz" | tr -d ' \n')
    case "$magic" in
        1f8b*) dec="gzip -dc" ;;
        fd377a585a00) dec="xz -dc" ;;
        5d0000*) dec="xz --format=lzma -dc" ;;
        02214c18*) dec="lz4 -dc" ;;
        28b52ffd*) dec="zstd -dc" ;;
        425a68*) dec="bzip2 -dc" ;;
        *) log "unknown compression of the kernel in $bz (magic $magic)"; exit 1 ;;
    esac
    command -v "${dec%% *}" >/dev/null 2>&1 \
        || unavailable "${dec%% *} not found (ci/setup.sh installs it; the kernel is compressed with it)"
    # (the decompressors stop at the end of their stream; trailing bytes are the size the
    # kernel's build appends)
    tail -c +$((start + 1)) "$bz" | head -c "$len" | $dec >"$out" 2>/dev/null || true
    [ "$(od -An -tx1 -N4 "$out" | tr -d ' \n')" = 7f454c46 ] \
        || { log "no ELF image came out of $bz's payload ($dec)"; exit 1; }
}
log "extracting vmlinux from vmlinuz-$RELEASE"
extract_vmlinux "$WORK/vmlinuz" "$WORK/vmlinux"

# 2. busybox and its applet links.
if [ "$BBSRC" = installed ]; then
    BB=$(dpkg-query -L busybox-static | grep -E '/s?bin/busybox$' | head -n1)
else
    dpkg-deb -x "$(fetch_deb busybox-static "$BBVER")" "$WORK/busybox"
    BB=$(find "$WORK/busybox" -path '*bin/busybox' -type f | head -n1)
fi
[ -n "$BB" ] && [ -x "$BB" ] || { log "no busybox binary in busybox-static $BBVER"; exit 1; }
cp "$BB" "$RFS/bin/busybox"
for applet in $("$RFS/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$RFS/bin/$applet"
done

# 3. The checker, static, in its own target directory so the workspace's build stays valid.
log "building guest-checker (static, $TARGET)"
(
    cd "$ROOT"
    unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
    RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
        cargo build --quiet --release --locked -p guest-checker --bin guest-checker \
        --target "$TARGET" --target-dir "$OUT/cargo"
) >&2
CHECKER=$OUT/cargo/$TARGET/release/guest-checker
# (grep reads all of readelf's output: with pipefail, an early exit would hide the match.)
if command -v readelf >/dev/null 2>&1 && readelf -lW "$CHECKER" | grep INTERP >/dev/null; then
    log "$CHECKER is not static"
    exit 1
fi
cp "$CHECKER" "$RFS/bin/guest-checker"

# 4. /init and the archive.
install -m 0755 "$HERE/init" "$RFS/init"
(cd "$RFS" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) \
    | gzip -n -6 >"$WORK/initrd.gz"

mv "$WORK/vmlinuz" "$KIT/vmlinuz"
mv "$WORK/vmlinux" "$KIT/vmlinux"
mv "$WORK/initrd.gz" "$KIT/initrd.gz"
echo "$RELEASE" >"$KIT/release"
{
    echo "kernel $KPKG $KVER ($RELEASE)"
    echo "busybox-static $BBVER ($BBSRC)"
    echo "modules $(tr '\n' ' ' <"$RFS/etc/gcmatest/modules")"
    echo "initrd $(stat -c %s "$KIT/initrd.gz") bytes"
} >"$KIT/manifest.txt"
echo "$STAMP_KEY" >"$KIT/stamp"
rm -rf "$WORK"
# Keep only the packages this kit was built from (a kernel update names a new package).
KDIR_KEEP="$OUT/debs/$KPKG/$(echo "$KVER" | tr ':' '_')"
BDIR_KEEP="$OUT/debs/busybox-static/$(echo "$BBVER" | tr ':' '_')"
for d in "$OUT"/debs/*/*/; do
    d=${d%/}
    [ "$d" = "$KDIR_KEEP" ] || [ "$d" = "$BDIR_KEEP" ] || rm -rf "$d"
done
find "$OUT/debs" -mindepth 1 -maxdepth 1 -type d -empty -delete
log "kit ready in $(($(date +%s) - START)) s: $(tr '\n' ';' <"$KIT/manifest.txt")"

echo "kernel=$KIT/vmlinuz"
echo "vmlinux=$KIT/vmlinux"
echo "initrd=$KIT/initrd.gz"
echo "release=$RELEASE"

#!/usr/bin/env bash
# Build the Linux guest used by the vstor guest tests: Debian's kernel and a
# busybox initramfs with the virtio-blk / virtio-scsi modules, fio, sg3_utils
# and blkdiscard.
#
#   tests/guest/build-initramfs.sh [OUTDIR]        (default: target/guest)
#
# Writes OUTDIR/vmlinuz, OUTDIR/initramfs.cpio.zst and OUTDIR/kernel-release.
# Idempotent: downloaded packages are cached in OUTDIR/debs, and the initramfs
# is rebuilt only when an input changed (these scripts, the kernel, busybox or
# the installed fio / sg3-utils / util-linux / libc), as recorded in
# OUTDIR/build.stamp.  Needs the host packages that setup.sh installs.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT=${1:-$REPO_ROOT/target/guest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Modules the tests need; their dependencies are added from modules.dep.
MODULES=(virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	virtio_blk scsi_mod sd_mod sg virtio_scsi)

require_packages "${HOST_PACKAGES[@]}"

# Binaries copied in with their shared libraries (besides busybox); the glob is
# expanded only now that sg3-utils is installed.
BINARIES=(/usr/bin/fio /usr/sbin/blkdiscard /usr/bin/sg_*)

# --- packages that are only unpacked, never installed -----------------------

apt_candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }

# The real, versioned kernel package behind the linux-image-amd64 metapackage.
kernel_package() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

# Download package $1 (candidate version) into $OUT/debs unless cached;
# print the path of the .deb.
fetch_deb() {
	local pkg=$1 ver deb
	ver=$(apt_candidate "$pkg")
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		# No package lists (fresh machine): refresh them once.
		apt-get update -qq >&2 || true
		ver=$(apt_candidate "$pkg")
	fi
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		# Offline: fall back to whatever is cached.
		deb=$(find "$OUT/debs" -maxdepth 1 -name "${pkg}_*.deb" 2>/dev/null | sort | tail -n 1)
		[ -n "$deb" ] || die "cannot find package $pkg"
		echo "$deb"
		return
	fi
	# apt-get download names files NAME_VERSION_ARCH.deb with ':' as %3a.
	deb=$(find "$OUT/debs" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" 2>/dev/null | head -n 1)
	if [ -z "$deb" ]; then
		log "downloading $pkg $ver"
		mkdir -p "$OUT/debs"
		# apt's _apt user may not be able to write there: that only warns.
		(cd "$OUT/debs" && apt-get download -qq "$pkg=$ver" 2>&1) | grep -v 'unsandboxed' >&2 || true
		deb=$(find "$OUT/debs" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" | head -n 1)
		[ -n "$deb" ] || die "apt-get download $pkg=$ver failed"
	fi
	echo "$deb"
}

KPKG=$(kernel_package)
if [ -z "$KPKG" ]; then
	apt-get update -qq >&2 || true
	KPKG=$(kernel_package)
fi
if [ -z "$KPKG" ]; then
	KDEB=$(find "$OUT/debs" -maxdepth 1 -name 'linux-image-*.deb' 2>/dev/null | sort | tail -n 1)
	[ -n "$KDEB" ] || die "cannot resolve linux-image-amd64"
else
	KDEB=$(fetch_deb "$KPKG")
fi
BBDEB=$(fetch_deb busybox-static)

# --- up to date? --------------------------------------------------------------

inputs_digest() {
	{
		sha256sum "$GUEST_DIR/lib.sh" "$GUEST_DIR/build-initramfs.sh" "$GUEST_DIR/init" \
			"$GUEST_DIR/pattern.awk" "$GUEST_DIR"/guest/*.sh | awk '{print $1}'
		basename "$KDEB"
		basename "$BBDEB"
		dpkg-query -W fio sg3-utils util-linux libc6 kmod
	} | sha256sum | awk '{print $1}'
}
DIGEST=$(inputs_digest)
INITRD=$OUT/initramfs.cpio.zst
if [ -f "$OUT/vmlinuz" ] && [ -f "$INITRD" ] && [ -f "$OUT/kernel-release" ] &&
	[ "$(cat "$OUT/build.stamp" 2>/dev/null)" = "$DIGEST" ]; then
	log "up to date: $OUT/vmlinuz $INITRD ($(cat "$OUT/kernel-release"))"
	exit 0
fi

# --- kernel -------------------------------------------------------------------

KTREE=$OUT/kernel/$(basename "$KDEB" .deb)
if [ ! -f "$KTREE/.done" ]; then
	log "unpacking $(basename "$KDEB")"
	rm -rf "$KTREE"
	mkdir -p "$KTREE"
	dpkg-deb -x "$KDEB" "$KTREE"
	touch "$KTREE/.done"
fi
# Debian 12 ships modules in /lib/modules, later releases in /usr/lib/modules.
MODROOT=
for d in "$KTREE"/lib/modules/* "$KTREE"/usr/lib/modules/*; do
	[ -d "$d" ] && MODROOT=$d && break
done
[ -n "$MODROOT" ] || die "no modules in $KDEB"
KVER=$(basename "$MODROOT")
KBASE=${MODROOT%/lib/modules/*} # what depmod -b / modinfo -b expect
[ -f "$MODROOT/modules.dep" ] || depmod -b "$KBASE" "$KVER"
VMLINUZ=$(find "$KTREE/boot" -name "vmlinuz-$KVER" | head -n 1)
[ -n "$VMLINUZ" ] || die "no vmlinuz in $KDEB"

# --- staging tree -------------------------------------------------------------

STAGE=$OUT/root
rm -rf "$STAGE"
mkdir -p "$STAGE"/{usr/bin,usr/sbin,usr/lib,usr/lib64,usr/share/vstor,dev,proc,sys,tmp,run,root,etc,tests}
# merged-/usr layout, as on the host, so ldd paths can be copied verbatim
ln -s usr/bin "$STAGE/bin"
ln -s usr/sbin "$STAGE/sbin"
ln -s usr/lib "$STAGE/lib"
ln -s usr/lib64 "$STAGE/lib64"
if [ "$(id -u)" -eq 0 ]; then
	mknod -m 600 "$STAGE/dev/console" c 5 1
	mknod -m 666 "$STAGE/dev/null" c 1 3
fi

# busybox: the static binary and one symlink per applet
BBTREE=$OUT/busybox
rm -rf "$BBTREE"
mkdir -p "$BBTREE"
dpkg-deb -x "$BBDEB" "$BBTREE"
install -m 755 "$BBTREE/bin/busybox" "$STAGE/usr/bin/busybox"
for applet in $("$STAGE/usr/bin/busybox" --list); do
	[ "$applet" = busybox ] || ln -sf busybox "$STAGE/usr/bin/$applet"
done

# A binary and every shared library it loads, at the same paths as on the host.
copy_with_libs() {
	local bin=$1 lib
	mkdir -p "$STAGE$(dirname "$bin")"
	rm -f "$STAGE$bin" # may be a busybox applet symlink (blkdiscard)
	cp -L "$bin" "$STAGE$bin"
	while read -r lib; do
		[ -e "$STAGE$lib" ] && continue
		mkdir -p "$STAGE$(dirname "$lib")"
		cp -L "$lib" "$STAGE$lib"
	done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}
for bin in "${BINARIES[@]}"; do
	[ -x "$bin" ] || die "missing $bin"
	copy_with_libs "$bin"
done
# fio built with dynamic ioengines keeps them here; the tests need none of the
# exotic ones, but copy libaio / io_uring engines if they are split out.
for eng in /usr/lib/x86_64-linux-gnu/fio/*{libaio,io_uring}*.so; do
	if [ -e "$eng" ]; then copy_with_libs "$eng"; fi
done

# kernel modules, in dependency order, uncompressed (busybox insmod may lack xz)
declare -A SEEN=()
ORDER=()
resolve_module() { # $1: path relative to $MODROOT, as in modules.dep
	local rel=$1 dep
	[ -n "${SEEN[$rel]:-}" ] && return
	SEEN[$rel]=1
	local deps
	deps=$(awk -v m="$rel:" '$1 == m {for (i = 2; i <= NF; i++) print $i}' "$MODROOT/modules.dep")
	for dep in $deps; do
		resolve_module "$dep"
	done
	ORDER+=("$rel")
}
for m in "${MODULES[@]}"; do
	path=$(modinfo -b "$KBASE" -k "$KVER" -n "$m") || die "module $m not found in $KVER"
	case $path in
	"$MODROOT"/*) resolve_module "${path#"$MODROOT"/}" ;;
	*) log "module $m is built in" ;;
	esac
done
mkdir -p "$STAGE/lib/modules/$KVER"
: >"$STAGE/etc/vstor-modules"
for rel in "${ORDER[@]}"; do
	dst=$STAGE/lib/modules/$KVER/${rel%.*}
	case $rel in *.ko) dst=$STAGE/lib/modules/$KVER/$rel ;; esac
	mkdir -p "$(dirname "$dst")"
	case $rel in
	*.ko) cp "$MODROOT/$rel" "$dst" ;;
	*.ko.xz) xz -dc "$MODROOT/$rel" >"$dst" ;;
	*.ko.zst) zstd -qdc "$MODROOT/$rel" >"$dst" ;;
	*.ko.gz) gzip -dc "$MODROOT/$rel" >"$dst" ;;
	*) die "unknown module file $rel" ;;
	esac
	echo "/lib/modules/$KVER/${dst#"$STAGE/lib/modules/$KVER/"}" >>"$STAGE/etc/vstor-modules"
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
	[ -f "$MODROOT/$f" ] && cp "$MODROOT/$f" "$STAGE/lib/modules/$KVER/"
done
depmod -b "$STAGE" "$KVER" # modules.dep for busybox modprobe
log "modules: $(tr '\n' ' ' <"$STAGE/etc/vstor-modules")"

# init and tests
install -m 755 "$GUEST_DIR/init" "$STAGE/init"
install -m 644 "$GUEST_DIR/pattern.awk" "$STAGE/usr/share/vstor/pattern.awk"
for t in "$GUEST_DIR"/guest/*.sh; do
	install -m 755 "$t" "$STAGE/tests/$(basename "$t")"
done
echo "vstor-guest" >"$STAGE/etc/hostname"

# --- pack -----------------------------------------------------------------------

log "packing $(du -sh "$STAGE" | cut -f1) into $INITRD"
(cd "$STAGE" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
	cpio --null -o -H newc -R 0:0 --quiet) | zstd -q -T0 -10 >"$INITRD.tmp"
mv "$INITRD.tmp" "$INITRD"
cp "$VMLINUZ" "$OUT/vmlinuz"
echo "$KVER" >"$OUT/kernel-release"
echo "$DIGEST" >"$OUT/build.stamp"
log "built $OUT/vmlinuz ($KVER) and $INITRD ($(du -h "$INITRD" | cut -f1))"

#!/usr/bin/env bash
# Builds the vstor C ABI (crate vstor-capi) in release mode and installs it:
#
#   PREFIX/LIBDIR/libvstor.so.<ABI>.<VERSION>   the shared library (soname libvstor.so.<ABI>)
#   PREFIX/LIBDIR/libvstor.so.<ABI>             -> libvstor.so.<ABI>.<VERSION>  (runtime link)
#   PREFIX/LIBDIR/libvstor.so                   -> libvstor.so.<ABI>            (build-time link)
#   PREFIX/LIBDIR/libvstor.a                    the static library
#   PREFIX/LIBDIR/pkgconfig/vstor.pc            from capi/vstor.pc.in
#   PREFIX/include/vstor.h                      the public header
#
# <ABI> is the ABI major version (the soname suffix set by capi/build.rs, which must equal
# VSTOR_ABI_VERSION in the header); <VERSION> is the crate version, e.g. libvstor.so.1.0.1.0 for
# ABI 1, crate 0.1.0. Compatible releases keep the soname and only change the real file name.
#
# Usage: scripts/install-capi.sh [--prefix DIR] [--destdir DIR] [--libdir NAME]
#   --prefix DIR    installation prefix written into vstor.pc (default /usr/local)
#   --destdir DIR   stage everything under DIR (packaging); vstor.pc still says PREFIX.
#                   Also taken from $DESTDIR.
#   --libdir NAME   library directory, relative to PREFIX or absolute (default lib;
#                   e.g. lib64 or lib/x86_64-linux-gnu)
# Re-running is safe: files are replaced, symlinks re-pointed, and an older
# libvstor.so.<ABI>.* left by a previous version is removed. Installing directly (no destdir)
# as root into a directory the dynamic linker's cache covers runs ldconfig.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PREFIX=/usr/local
DESTDIR=${DESTDIR:-}
LIBDIR_NAME=lib

die() { echo "install-capi: $*" >&2; exit 1; }
msg() { echo "install-capi: $*"; }

while [ $# -gt 0 ]; do
	case $1 in
	--prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
	--prefix=*) PREFIX=${1#*=}; shift ;;
	--destdir) [ $# -ge 2 ] || die "--destdir needs a directory"; DESTDIR=$2; shift 2 ;;
	--destdir=*) DESTDIR=${1#*=}; shift ;;
	--libdir) [ $# -ge 2 ] || die "--libdir needs a name"; LIBDIR_NAME=$2; shift 2 ;;
	--libdir=*) LIBDIR_NAME=${1#*=}; shift ;;
	-h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done

case $PREFIX in /*) ;; *) die "--prefix must be an absolute path (got '$PREFIX')" ;; esac
PREFIX=${PREFIX%/}
[ -n "$PREFIX" ] || PREFIX=/
if [ -n "$DESTDIR" ]; then
	mkdir -p "$DESTDIR"
	DESTDIR=$(cd "$DESTDIR" && pwd)
fi
# Absolute paths as the installed files see them, and the pkg-config spelling of each.
case $LIBDIR_NAME in
/*) LIBDIR=$LIBDIR_NAME; PC_LIBDIR=$LIBDIR_NAME ;;
*) LIBDIR=${PREFIX%/}/$LIBDIR_NAME; PC_LIBDIR="\${exec_prefix}/$LIBDIR_NAME" ;;
esac
LIBDIR=${LIBDIR%/}
INCLUDEDIR=${PREFIX%/}/include
PC_INCLUDEDIR="\${prefix}/include"

for tool in cargo readelf sed install; do
	command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh --base installs the toolchain)"
done

# Crate version (vstor-capi inherits the workspace version) and target directory.
pkgid=$(cargo pkgid -p vstor-capi)
VERSION=${pkgid##*[#@]}
[[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "cannot read the vstor-capi version from '$pkgid'"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET_DIR" ] || die "cannot find cargo's target directory"
OUT=$TARGET_DIR/release

# The system libraries a static link needs, as rustc reports them for the staticlib (std's own
# plus any #[link]/build-script libraries of the dependencies). This is a separate cargo unit
# (staticlib only); cargo caches and replays its output, so it recompiles only when capi or its
# dependencies change. It runs before the real build so that the artifacts installed below are
# the ones `cargo build` links (cargo re-links target/release/ on every build, fresh or not).
msg "finding the native libraries of the static library"
nsl_log=$(mktemp)
trap 'rm -f "$nsl_log"' EXIT
if ! cargo rustc --release -p vstor-capi --lib --crate-type staticlib -q \
	-- --print native-static-libs 2>"$nsl_log"; then
	cat "$nsl_log" >&2
	die "cargo rustc --print native-static-libs failed"
fi
LIBS_PRIVATE=$(sed -n 's/^note: native-static-libs: //p' "$nsl_log" | tail -n 1)
[ -n "$LIBS_PRIVATE" ] || { cat "$nsl_log" >&2; die "rustc did not report native-static-libs"; }

msg "cargo build --release -p vstor-capi"
cargo build --release -p vstor-capi

SO=$OUT/libvstor.so
A=$OUT/libvstor.a
HEADER=include/vstor.h
for f in "$SO" "$A" "$HEADER" capi/vstor.pc.in; do
	[ -f "$f" ] || die "missing $f"
done

# The ABI major version: the soname's suffix, which must match the header's VSTOR_ABI_VERSION.
SONAME=$(readelf -d "$SO" | sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p')
[[ $SONAME =~ ^libvstor\.so\.([0-9]+)$ ]] || die "unexpected soname '$SONAME' in $SO (capi/build.rs)"
ABI=${BASH_REMATCH[1]}
HEADER_ABI=$(sed -n 's/^#define VSTOR_ABI_VERSION \([0-9]*\)$/\1/p' "$HEADER")
[ "$ABI" = "$HEADER_ABI" ] ||
	die "soname $SONAME (capi/build.rs) disagrees with VSTOR_ABI_VERSION $HEADER_ABI ($HEADER)"

REAL=libvstor.so.$ABI.$VERSION
URL=$(sed -n 's/^repository = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
D_LIBDIR=$DESTDIR$LIBDIR
D_INCLUDEDIR=$DESTDIR$INCLUDEDIR
D_PCDIR=$D_LIBDIR/pkgconfig

msg "installing vstor $VERSION (ABI $ABI) into ${DESTDIR:+$DESTDIR (staged for) }$PREFIX"
install -d "$D_LIBDIR" "$D_PCDIR" "$D_INCLUDEDIR"

# Another version's real file for the same soname would compete with this one in ldconfig.
for old in "$D_LIBDIR"/libvstor.so."$ABI".*; do
	if [ -f "$old" ] && [ ! -L "$old" ] && [ "${old##*/}" != "$REAL" ]; then
		msg "removing the older ${old##*/}"
		rm -f "$old"
	fi
done

# Replace by rename (install writes a new inode), so a running process keeps its mapping.
install -m 0755 "$SO" "$D_LIBDIR/$REAL"
ln -sfn "$REAL" "$D_LIBDIR/libvstor.so.$ABI"
ln -sfn "libvstor.so.$ABI" "$D_LIBDIR/libvstor.so"
install -m 0644 "$A" "$D_LIBDIR/libvstor.a"
install -m 0644 "$HEADER" "$D_INCLUDEDIR/vstor.h"

pc_tmp=$(mktemp)
trap 'rm -f "$nsl_log" "$pc_tmp"' EXIT
# '|' never appears in these values except by accident in a path; refuse such a path.
for v in "$PREFIX" "$PC_LIBDIR" "$PC_INCLUDEDIR" "$VERSION" "$URL" "$LIBS_PRIVATE"; do
	case $v in *'|'* | *'&'* | *\\*) die "cannot write '$v' into vstor.pc" ;; esac
done
sed -e "s|@PREFIX@|$PREFIX|g" \
	-e "s|@LIBDIR@|$PC_LIBDIR|g" \
	-e "s|@INCLUDEDIR@|$PC_INCLUDEDIR|g" \
	-e "s|@VERSION@|$VERSION|g" \
	-e "s|@URL@|$URL|g" \
	-e "s|@LIBS_PRIVATE@|$LIBS_PRIVATE|g" \
	capi/vstor.pc.in >"$pc_tmp"
if grep -q '@[A-Z_]*@' "$pc_tmp"; then
	die "unfilled field in capi/vstor.pc.in: $(grep -o '@[A-Z_]*@' "$pc_tmp" | head -n 1)"
fi
install -m 0644 "$pc_tmp" "$D_PCDIR/vstor.pc"

msg "  $D_LIBDIR/$REAL (soname $SONAME)"
msg "  $D_LIBDIR/libvstor.so.$ABI -> $REAL"
msg "  $D_LIBDIR/libvstor.so -> libvstor.so.$ABI"
msg "  $D_LIBDIR/libvstor.a"
msg "  $D_INCLUDEDIR/vstor.h"
msg "  $D_PCDIR/vstor.pc (Libs.private: $LIBS_PRIVATE)"

# (Output captured first: with pipefail, `ldconfig | grep -q` can fail on SIGPIPE.)
ld_dirs=
if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then
	ld_dirs=$(ldconfig -N -X -v 2>/dev/null || true) # -N -X: change nothing
fi
if grep -q "^$LIBDIR:" <<<"$ld_dirs"; then
	msg "ldconfig (refreshing the dynamic linker cache for $LIBDIR)"
	ldconfig
elif [ -z "$DESTDIR" ]; then
	msg "note: if $LIBDIR is not searched by the dynamic linker, use LD_LIBRARY_PATH or an rpath"
fi
case ":${PKG_CONFIG_PATH:-}:" in
*":$LIBDIR/pkgconfig:"*) ;;
*) msg "pkg-config: PKG_CONFIG_PATH=$LIBDIR/pkgconfig pkg-config --cflags --libs vstor" ;;
esac
msg "done"

#!/usr/bin/env bash
# Installs the C ABI into a temporary prefix with scripts/install-capi.sh and checks what a C
# user gets from it:
#   - the installed files, symlinks and pkg-config data (and that re-installing is harmless,
#     and that --destdir/--libdir stage a /usr install correctly);
#   - smoke.c built with `pkg-config --cflags --libs vstor` against libvstor.so.1, and with
#     `pkg-config --static --libs vstor` against libvstor.a, both run;
#   - the soname is libvstor.so.<VSTOR_ABI_VERSION>, and the shared library exports exactly the
#     functions of include/vstor.h, all named vstor_*.
# Usage: tests/c-install/run.sh [--keep]   (--keep leaves the temporary directory for a look)
# Needs cargo, a C compiler ($CC, default cc), pkg-config, readelf and nm.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

KEEP=0
for arg in "$@"; do
	case $arg in
	--keep) KEEP=1 ;;
	-h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "c-install: unknown argument $arg" >&2; exit 2 ;;
	esac
done

CC=${CC:-cc}
for tool in cargo "$CC" pkg-config readelf nm; do
	command -v "$tool" >/dev/null || { echo "c-install: $tool not found" >&2; exit 1; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/vstor-c-install.XXXXXX")
cleanup() {
	if [ "$KEEP" = 1 ]; then echo "c-install: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

FAILURES=0
ok() { echo "c-install: ok: $*"; }
bad() { echo "c-install: FAIL: $*" >&2; FAILURES=$((FAILURES + 1)); }
step() { echo; echo "c-install: --- $*"; }

PREFIX=$TMP/prefix
LIB=$PREFIX/lib
VERSION=$(cargo pkgid -p vstor-capi)
VERSION=${VERSION##*[#@]}
ABI=$(sed -n 's/^#define VSTOR_ABI_VERSION \([0-9]*\)$/\1/p' include/vstor.h)
[ -n "$ABI" ] || { echo "c-install: no VSTOR_ABI_VERSION in include/vstor.h" >&2; exit 1; }
REAL=libvstor.so.$ABI.$VERSION

step "install into $PREFIX (twice: the second run must be harmless)"
scripts/install-capi.sh --prefix "$PREFIX"
# A stale real file from an "older version" must be cleaned up by the re-install.
cp "$LIB/$REAL" "$LIB/libvstor.so.$ABI.0.0.0"
scripts/install-capi.sh --prefix "$PREFIX" >"$TMP/install2.log"
[ ! -e "$LIB/libvstor.so.$ABI.0.0.0" ] && ok "older libvstor.so.$ABI.* removed on re-install" ||
	bad "older libvstor.so.$ABI.0.0.0 left behind"

for f in "$LIB/$REAL" "$LIB/libvstor.a" "$PREFIX/include/vstor.h" "$LIB/pkgconfig/vstor.pc"; do
	[ -f "$f" ] && [ ! -L "$f" ] && ok "${f#"$PREFIX"/} installed" || bad "${f#"$PREFIX"/} missing"
done
[ "$(readlink "$LIB/libvstor.so.$ABI")" = "$REAL" ] && ok "libvstor.so.$ABI -> $REAL" ||
	bad "libvstor.so.$ABI -> $(readlink "$LIB/libvstor.so.$ABI" || echo '(none)'), expected $REAL"
[ "$(readlink "$LIB/libvstor.so")" = "libvstor.so.$ABI" ] && ok "libvstor.so -> libvstor.so.$ABI" ||
	bad "libvstor.so -> $(readlink "$LIB/libvstor.so" || echo '(none)'), expected libvstor.so.$ABI"
cmp -s include/vstor.h "$PREFIX/include/vstor.h" && ok "installed vstor.h is include/vstor.h" ||
	bad "installed vstor.h differs from include/vstor.h"

step "shared library: soname and exports"
SONAME=$(readelf -d "$LIB/$REAL" | sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p')
[ "$SONAME" = "libvstor.so.$ABI" ] && ok "SONAME $SONAME" ||
	bad "SONAME '$SONAME', expected libvstor.so.$ABI (VSTOR_ABI_VERSION $ABI)"
nm -D --defined-only "$LIB/$REAL" | awk '{print $NF}' | sort >"$TMP/exports"
stray=$(grep -v '^vstor_' "$TMP/exports" || true)
if [ -s "$TMP/exports" ] && [ -z "$stray" ]; then
	ok "$(wc -l <"$TMP/exports") dynamic symbols, all vstor_*"
else
	bad "exported symbols not named vstor_*: ${stray:-(no exports at all)}"
fi
# Function names declared in the header (cbindgen puts each prototype's name on its first line).
sed -n 's/^[A-Za-z_][A-Za-z0-9_ *]*[ *]\(vstor_[A-Za-z0-9_]*\)(.*/\1/p' include/vstor.h |
	sort -u >"$TMP/declared"
if diff -u "$TMP/declared" "$TMP/exports" >"$TMP/exports.diff"; then
	ok "exports are exactly the $(wc -l <"$TMP/declared") functions of vstor.h"
else
	bad "exports differ from the header's functions (- header only, + library only):"
	sed -n '3,$p' "$TMP/exports.diff" | grep '^[-+]' >&2 || true
fi

step "pkg-config"
export PKG_CONFIG_PATH=$LIB/pkgconfig
pkg-config --validate vstor && ok "vstor.pc validates" || bad "pkg-config --validate vstor"
[ "$(pkg-config --modversion vstor)" = "$VERSION" ] && ok "Version $VERSION" ||
	bad "pkg-config --modversion vstor = $(pkg-config --modversion vstor), expected $VERSION"
[ "$(pkg-config --variable=prefix vstor)" = "$PREFIX" ] && ok "prefix is the temporary one" ||
	bad "pkg-config found another vstor.pc (prefix $(pkg-config --variable=prefix vstor))"
CFLAGS_PC=$(pkg-config --cflags vstor)
LIBS_PC=$(pkg-config --libs vstor)
LIBS_STATIC_PC=$(pkg-config --static --libs vstor)
echo "c-install: --cflags: $CFLAGS_PC"
echo "c-install: --libs: $LIBS_PC"
echo "c-install: --static --libs: $LIBS_STATIC_PC"

CFLAGS_C=(-std=c11 -O2 -Wall -Wextra -Werror -pedantic)

step "dynamic link: \$CC smoke.c \$(pkg-config --cflags --libs vstor)"
# shellcheck disable=SC2086 # pkg-config output is a word list
if "$CC" "${CFLAGS_C[@]}" tests/c-install/smoke.c $CFLAGS_PC $LIBS_PC -o "$TMP/smoke-dynamic"; then
	needed=$(readelf -d "$TMP/smoke-dynamic" | sed -n 's/.*(NEEDED).*\[\(libvstor[^]]*\)\]$/\1/p')
	[ "$needed" = "libvstor.so.$ABI" ] && ok "binary needs $needed" ||
		bad "binary needs '${needed:-no libvstor}', expected libvstor.so.$ABI"
	resolved=$(LD_LIBRARY_PATH=$LIB ldd "$TMP/smoke-dynamic" | sed -n 's/.*libvstor\.so[^ ]* => \([^ ]*\).*/\1/p')
	[ "$resolved" = "$LIB/libvstor.so.$ABI" ] && ok "loads $resolved" ||
		bad "libvstor resolves to '$resolved', expected $LIB/libvstor.so.$ABI"
	if out=$(LD_LIBRARY_PATH=$LIB "$TMP/smoke-dynamic"); then
		echo "c-install: $out"
		[[ $out == "libvstor $VERSION "* ]] && ok "dynamic smoke run" ||
			bad "dynamic smoke run printed an unexpected version"
	else
		bad "dynamic smoke run failed"
	fi
else
	bad "dynamic link failed"
fi

step "static link: \$CC smoke.c \$(pkg-config --cflags --static --libs vstor), -lvstor as libvstor.a"
# With both libvstor.so and libvstor.a in libdir, -lvstor picks the .so: ask for the archive.
static_libs=()
for w in $LIBS_STATIC_PC; do
	if [ "$w" = -lvstor ]; then static_libs+=(-l:libvstor.a); else static_libs+=("$w"); fi
done
# shellcheck disable=SC2086
if "$CC" "${CFLAGS_C[@]}" tests/c-install/smoke.c $CFLAGS_PC "${static_libs[@]}" -o "$TMP/smoke-static"; then
	if [[ $(readelf -d "$TMP/smoke-static") == *"(NEEDED)"*"[libvstor"* ]]; then
		bad "the static build still needs libvstor.so"
	else
		ok "binary does not need libvstor.so"
	fi
	if out=$(env -u LD_LIBRARY_PATH "$TMP/smoke-static"); then
		echo "c-install: $out"
		[[ $out == "libvstor $VERSION "* ]] && ok "static smoke run" ||
			bad "static smoke run printed an unexpected version"
	else
		bad "static smoke run failed"
	fi
else
	bad "static link failed"
fi

step "staged install: --destdir $TMP/stage --prefix /usr --libdir lib/x86_64-linux-gnu"
scripts/install-capi.sh --destdir "$TMP/stage" --prefix /usr --libdir lib/x86_64-linux-gnu \
	>"$TMP/install-staged.log"
SLIB=$TMP/stage/usr/lib/x86_64-linux-gnu
if [ -f "$SLIB/$REAL" ] && [ -L "$SLIB/libvstor.so.$ABI" ] && [ -f "$SLIB/libvstor.a" ] &&
	[ -f "$TMP/stage/usr/include/vstor.h" ] && [ -f "$SLIB/pkgconfig/vstor.pc" ]; then
	ok "files staged under DESTDIR"
else
	bad "staged install incomplete: $(cd "$TMP/stage" && find . | sort | tr '\n' ' ')"
fi
if [ "$(PKG_CONFIG_PATH=$SLIB/pkgconfig pkg-config --variable=libdir vstor)" = /usr/lib/x86_64-linux-gnu ] &&
	[ "$(PKG_CONFIG_PATH=$SLIB/pkgconfig pkg-config --variable=prefix vstor)" = /usr ]; then
	ok "staged vstor.pc says prefix /usr, libdir /usr/lib/x86_64-linux-gnu (no DESTDIR in it)"
else
	bad "staged vstor.pc: $(grep -E '^(prefix|libdir)=' "$SLIB/pkgconfig/vstor.pc" | tr '\n' ' ')"
fi

echo
if [ "$FAILURES" -ne 0 ]; then
	echo "c-install: $FAILURES check(s) FAILED" >&2
	exit 1
fi
echo "c-install: all checks passed"

#!/usr/bin/env bash
# C ABI tests: builds libvstor, checks that include/vstor.h and the example headers compile
# cleanly as C11 and C++17, builds examples/c/ against the shared and the static library, and
# runs them natively, under valgrind memcheck (no leak or memory error of any kind allowed) and
# with AddressSanitizer.
#
# Usage: tests/c/run.sh [--release]
#   --release   test target/release (default: target/debug; $CARGO_TARGET_DIR is honoured)
#
# Steps:
#   1. cargo build -p vstor-capi; the soname must be libvstor.so.1
#   2. tests/c/header_check.c as C11 (gcc) and C++17 (g++), -Wall -Wextra -Werror -pedantic,
#      linked and run
#   3. examples/c/{usage,blk_harness,misuse,scsi_harness}.c, gcc -std=c11 -Wall -Wextra
#      -Werror -pedantic, against libvstor.so (rpath), and misuse also statically against
#      libvstor.a
#   4. native runs: usage (README example), blk_harness on a raw file (default engine, then
#      VSTOR_DISABLE_IO_URING=1) and on memory:8M (synchronous completions), misuse, static
#      misuse, scsi_harness (virtio-scsi: two units, commands, hotplug events, misuse) on a raw
#      file
#   5. qcow2 through the C ABI: blk_harness on `qemu-img create -f qcow2 IMG 8M` (format
#      "qcow2"; default engine, then VSTOR_DISABLE_IO_URING=1 with lazy refcounts) and on a qcow2 over a patterned
#      raw backing file (format probed); contents checked through `qemu-img convert -O raw`,
#      then `qemu-img check` must be clean and the dirty bit clear
#   6. valgrind: blk_harness twice (default engine, then VSTOR_DISABLE_IO_URING=1), both qcow2
#      images, misuse, usage, scsi_harness
#   7. AddressSanitizer + UBSan build of the C side (the Rust library is not instrumented):
#      blk_harness (raw and qcow2), misuse and scsi_harness; skipped with a message if ASan
#      cannot run here
#
# Valgrind runs with --leak-check=full --errors-for-leak-kinds=all --error-exitcode=1, so any
# definite, indirect, possible or still-reachable block and any memory error fails the step,
# except what tests/c/valgrind.supp lists. What valgrind 3.19 reports on a clean run:
#   definitely lost: 0, indirectly lost: 0, possibly lost: 0, still reachable: 0,
#   suppressed: 192..576 bytes in 1..3 blocks (1 for usage, 2 for misuse, 3 for blk_harness),
#   856 bytes in 3 blocks for scsi_harness
# The suppressed blocks are arc_swap's global debt-list nodes (192 bytes per thread that ever
# read guest memory concurrently; by design never freed; see valgrind.supp) and, in programs
# that run SCSI commands, vstor-scsi-disk's command tables (built once per process). Nothing else:
# vstor frees its handle tables when the last handle closes, and the harness and misuse free
# all they allocate.
#
# io_uring under valgrind: valgrind 3.19 wraps io_uring_setup/enter/register, so vstor's Auto
# engine does get io_uring under valgrind on this kernel (the harness prints the engine it
# found, counted from /proc/self/fd); where the ring cannot be created, vstor falls back to its
# thread pool by itself (EngineKind::Auto). The second valgrind run forces the thread pool
# with VSTOR_DISABLE_IO_URING=1 either way.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

PROFILE=debug
CARGO_ARGS=()
for arg in "$@"; do
	case $arg in
	--release) PROFILE=release; CARGO_ARGS=(--release) ;;
	-h | --help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "tests/c/run.sh: unknown argument $arg" >&2; exit 2 ;;
	esac
done

START=$SECONDS
step() { printf '\n=== c-abi: %s (%s, +%ds)\n' "$*" "$(date -u +%H:%M:%S)" $((SECONDS - START)); }
die() { echo "tests/c/run.sh: FAILED: $*" >&2; exit 1; }

for tool in gcc g++ valgrind readelf qemu-img qemu-io; do
	command -v "$tool" >/dev/null || die "$tool is not installed (scripts/install-deps.sh)"
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LIBDIR=$TARGET/$PROFILE
BUILD=$TARGET/c-tests/$PROFILE
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/vstor-c-tests.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$BUILD"

step "build libvstor ($PROFILE)"
cargo build -p vstor-capi "${CARGO_ARGS[@]}"
[ -f "$LIBDIR/libvstor.so" ] && [ -f "$LIBDIR/libvstor.a" ] || die "libvstor.so / libvstor.a missing in $LIBDIR"
readelf -d "$LIBDIR/libvstor.so" | grep -q 'SONAME.*\[libvstor\.so\.1\]' ||
	die "libvstor.so has no soname libvstor.so.1"
# The loader looks for the soname: give it libvstor.so.1 next to the test binaries.
ln -sf "$LIBDIR/libvstor.so" "$BUILD/libvstor.so.1"
ln -sf "$LIBDIR/libvstor.so" "$BUILD/libvstor.so"

WARN=(-Wall -Wextra -Werror -pedantic)
INC=(-I"$ROOT/include" -I"$ROOT/examples/c")
LINK_SO=(-L"$BUILD" -lvstor -Wl,-rpath,"$BUILD" -lpthread)
# What `rustc --print native-static-libs` lists for the staticlib.
LINK_A=("$LIBDIR/libvstor.a" -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)

step "headers: C11 (gcc) and C++17 (g++), ${WARN[*]}"
gcc -std=c11 "${WARN[@]}" -g "${INC[@]}" tests/c/header_check.c -o "$BUILD/header_check_c" "${LINK_SO[@]}"
g++ -std=c++17 "${WARN[@]}" -g "${INC[@]}" -x c++ tests/c/header_check.c -x none \
	-o "$BUILD/header_check_cxx" "${LINK_SO[@]}"
"$BUILD/header_check_c"
"$BUILD/header_check_cxx"

step "build examples/c (gcc -std=c11 ${WARN[*]}; shared and static)"
CFLAGS=(-std=c11 "${WARN[@]}" -g -O1 "${INC[@]}")
for prog in usage blk_harness misuse scsi_harness; do
	gcc "${CFLAGS[@]}" "examples/c/$prog.c" -o "$BUILD/$prog" "${LINK_SO[@]}"
done
gcc "${CFLAGS[@]}" examples/c/misuse.c -o "$BUILD/misuse_static" "${LINK_A[@]}"
if readelf -d "$BUILD/misuse_static" | grep -q 'NEEDED.*libvstor'; then
	die "misuse_static depends on libvstor.so"
fi
echo "misuse_static: $(stat -c %s "$BUILD/misuse_static") bytes, no libvstor.so dependency"

new_image() { # a fresh 8 MiB raw image
	rm -f "$SCRATCH/disk.raw"
	truncate -s 8M "$SCRATCH/disk.raw"
	echo "$SCRATCH/disk.raw"
}

new_qcow2() { # a fresh 8 MiB qcow2 image; $1: more -o options
	rm -f "$SCRATCH/disk.qcow2"
	qemu-img create -q -f qcow2 ${1:+-o "$1"} "$SCRATCH/disk.qcow2" 8M
	echo "$SCRATCH/disk.qcow2"
}

new_qcow2_backed() { # an 8 MiB qcow2 image over a raw backing file holding patterns
	rm -f "$SCRATCH/base.raw" "$SCRATCH/overlay.qcow2"
	truncate -s 8M "$SCRATCH/base.raw"
	qemu-io -f raw -c 'write -q -P 0xa5 0 1M' -c 'write -q -P 0x3c 1536K 100K' \
		-c 'write -q -P 0x5a 3M 2M' -c 'write -q -P 0xc3 7M 1M' "$SCRATCH/base.raw" >/dev/null
	qemu-img create -q -f qcow2 -b "$SCRATCH/base.raw" -F raw "$SCRATCH/overlay.qcow2" 8M
	echo "$SCRATCH/overlay.qcow2"
}

# check_qcow2 IMG: after vstor closed it, qemu-img check is clean and the dirty bit is clear.
check_qcow2() {
	local out rc=0 incompat
	out=$(qemu-img check -f qcow2 "$1" 2>&1) || rc=$?
	[ "$rc" = 0 ] || { echo "$out"; die "qemu-img check $1 (exit $rc)"; }
	# incompatible_features: big-endian u64 at byte 72; bit 0 is the dirty bit
	incompat=$(od -An -tu1 -j79 -N1 "$1" | tr -d ' ')
	[ $((incompat & 1)) = 0 ] || die "$1: dirty bit set after vstor closed it"
	echo "  qemu-img check $(basename "$1"): $(echo "$out" | grep -E 'No errors|allocated' | tr '\n' ' ')"
}

step "native: usage, blk_harness (file: default engine, threads; memory:), misuse, static misuse"
"$BUILD/usage"
"$BUILD/blk_harness" "$(new_image)"
VSTOR_DISABLE_IO_URING=1 "$BUILD/blk_harness" "$(new_image)" | tail -n 1
"$BUILD/blk_harness" memory:8M | tail -n 1
"$BUILD/misuse" "$SCRATCH" >"$SCRATCH/misuse.out" || { cat "$SCRATCH/misuse.out"; die "misuse"; }
tail -n 1 "$SCRATCH/misuse.out"
"$BUILD/misuse_static" "$SCRATCH" | tail -n 1
"$BUILD/scsi_harness" "$(new_image)"

step "native: blk_harness on qcow2 (format qcow2: default engine, threads; probed, backing file)"
img=$(new_qcow2)
"$BUILD/blk_harness" --format qcow2 "$img" | sed -n '1p;$p'
check_qcow2 "$img"
img=$(new_qcow2 lazy_refcounts=on) # dirty while open: the close must clean it
VSTOR_DISABLE_IO_URING=1 "$BUILD/blk_harness" --format qcow2 "$img" | tail -n 1
check_qcow2 "$img"
img=$(new_qcow2_backed)
"$BUILD/blk_harness" --format probe "$img" | sed -n '1p;$p'
check_qcow2 "$img"

VALGRIND=(valgrind --error-exitcode=1 --leak-check=full --show-leak-kinds=all
	--errors-for-leak-kinds=all --suppressions="$ROOT/tests/c/valgrind.supp" --num-callers=40)

# vg NAME CMD...: runs CMD under memcheck, prints the summary lines, fails with the full log.
vg() {
	local name=$1 log=$SCRATCH/valgrind-$1.log rc=0
	shift
	"${VALGRIND[@]}" --log-file="$log" "$@" >"$SCRATCH/$name.out" 2>&1 || rc=$?
	grep -E 'engine:' "$SCRATCH/$name.out" | sed 's/^/  /' || true
	tail -n 1 "$SCRATCH/$name.out" | sed 's/^/  /'
	grep -E 'ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|suppressed:' \
		"$log" | sed 's/^==[0-9]*== */  valgrind: /'
	if [ "$rc" != 0 ]; then
		cat "$SCRATCH/$name.out"
		tail -n 150 "$log"
		die "$name under valgrind (exit $rc)"
	fi
}

step "valgrind: blk_harness (default engine: io_uring if valgrind lets vstor create a ring)"
vg harness-auto "$BUILD/blk_harness" "$(new_image)"
step "valgrind: blk_harness with VSTOR_DISABLE_IO_URING=1 (thread pool)"
VSTOR_DISABLE_IO_URING=1 vg harness-threads "$BUILD/blk_harness" "$(new_image)"
step "valgrind: blk_harness on qcow2 (format qcow2, default engine)"
img=$(new_qcow2)
vg harness-qcow2 "$BUILD/blk_harness" --format qcow2 "$img"
check_qcow2 "$img"
step "valgrind: blk_harness on qcow2 over a raw backing file (format probed, thread pool)"
img=$(new_qcow2_backed)
VSTOR_DISABLE_IO_URING=1 vg harness-qcow2-backed "$BUILD/blk_harness" --format probe "$img"
check_qcow2 "$img"
step "valgrind: misuse"
vg misuse "$BUILD/misuse" "$SCRATCH"
step "valgrind: usage (the README example)"
vg usage "$BUILD/usage"
step "valgrind: scsi_harness (virtio-scsi)"
vg scsi-harness "$BUILD/scsi_harness" "$(new_image)"

step "AddressSanitizer + UBSan (C side instrumented)"
SAN=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=1
if gcc -std=c11 -g "${SAN[@]}" "${INC[@]}" tests/c/header_check.c -o "$BUILD/header_check_asan" \
	"${LINK_SO[@]}" 2>"$SCRATCH/asan-build.log" &&
	"$BUILD/header_check_asan" >"$SCRATCH/asan-probe.log" 2>&1; then
	for prog in blk_harness misuse scsi_harness; do
		gcc "${CFLAGS[@]}" "${SAN[@]}" "examples/c/$prog.c" -o "$BUILD/${prog}_asan" "${LINK_SO[@]}"
	done
	"$BUILD/blk_harness_asan" "$(new_image)" | tail -n 1
	img=$(new_qcow2)
	"$BUILD/blk_harness_asan" --format qcow2 "$img" | tail -n 1
	check_qcow2 "$img"
	"$BUILD/misuse_asan" "$SCRATCH" >"$SCRATCH/misuse-asan.out" 2>&1 ||
		{ cat "$SCRATCH/misuse-asan.out"; die "misuse under ASan"; }
	tail -n 1 "$SCRATCH/misuse-asan.out"
	"$BUILD/scsi_harness_asan" "$(new_image)" | tail -n 1
else
	echo "SKIP: AddressSanitizer does not work here with libvstor:"
	cat "$SCRATCH/asan-build.log" "$SCRATCH/asan-probe.log" 2>/dev/null | head -n 20
fi

step "C ABI tests passed in $((SECONDS - START)) s"

#!/usr/bin/env bash
# Boot a Linux guest under QEMU (TCG) with a vhost-user-blk disk and run the
# in-guest virtio-blk test (guest/blk.sh: capacity, queue count, fio with
# verification, discard, write zeroes, host<->guest data patterns).
#
# Usage:
#   tests/guest/run-blk.sh [options] [IMG]
#   tests/guest/run-blk.sh --backend qsd IMG     qemu-storage-daemon serves IMG
#   tests/guest/run-blk.sh --backend vstor IMG   `vstor serve blk` serves IMG
#   VSTOR_SOCK=SOCK tests/guest/run-blk.sh --size BYTES
#                                                an already running backend
# Options:
#   --backend qsd|vstor   backend to start (default: vstor)
#   --socket SOCK         use a running backend (also env VSTOR_SOCK); needs
#                         --size; no host-side pattern checks are made
#   --size BYTES          expected disk size (default: the image's virtual size)
#   --format FMT          image format: raw or qcow2 (default: raw); used by
#                         qemu-img/qemu-io/qsd and, when given, passed to
#                         `vstor serve blk --format` (otherwise vstor probes);
#                         a missing IMG is created in it; after a non-raw run
#                         the host checks read the image through qemu-img
#                         convert, and qemu-img check must be clean
#   --create-size SIZE    size when IMG does not exist and is created (64M)
#   --queues N            queues for the backend and QEMU (default: 2)
#   --timeout SECONDS     kill QEMU after this long (default: 180, env
#                         VSTOR_GUEST_TIMEOUT); a guest watchdog fails the
#                         test and shows the stuck I/O at 2/3 of it
#   --no-discard-zeroes   do not require discarded blocks to read as zeroes
#   --guest-script FILE   run FILE in the guest instead of guest/blk.sh
#   --append ARGS         extra kernel command line words
#   --out DIR             build/cache dir (default: target/guest)
#   -v, --verbose         stream the serial console while it runs
# With no IMG, a temporary 64 MiB image (of --format) is used, e.g.
#   tests/guest/run-blk.sh --format qcow2      fio --verify on a fresh qcow2
# Environment: VSTOR_BIN (default target/release/vstor), VSTOR_SERVE_ARGS
# (extra words for `vstor serve blk`), QEMU (default qemu-system-x86_64).
# Exit status: 0 only if the guest printed "VSTOR-GUEST-RESULT: PASS" and the
# host-side checks passed; 1 on a test failure; 2 on a usage/setup error.
# The serial log is kept in OUTDIR/blk-BACKEND.serial.log (printed on failure).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BACKEND=vstor
SOCK=${VSTOR_SOCK:-}
SIZE=
FORMAT=raw
FORMAT_GIVEN=0
CREATE_SIZE=64M
QUEUES=2
TIMEOUT=${VSTOR_GUEST_TIMEOUT:-180}
DISCARD_ZEROES=1
GUEST_SCRIPT=
EXTRA_APPEND=
OUT=$REPO_ROOT/target/guest
VERBOSE=0
IMG=

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 2
}

while [ $# -gt 0 ]; do
	case $1 in
	--backend) BACKEND=$2; shift 2 ;;
	--socket) SOCK=$2; shift 2 ;;
	--size) SIZE=$2; shift 2 ;;
	--format) FORMAT=$2; FORMAT_GIVEN=1; shift 2 ;;
	--create-size) CREATE_SIZE=$2; shift 2 ;;
	--queues) QUEUES=$2; shift 2 ;;
	--timeout) TIMEOUT=$2; shift 2 ;;
	--no-discard-zeroes) DISCARD_ZEROES=0; shift ;;
	--guest-script) GUEST_SCRIPT=$2; shift 2 ;;
	--append) EXTRA_APPEND=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	-v | --verbose) VERBOSE=1; shift ;;
	-h | --help) usage ;;
	--) shift; break ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) [ -z "$IMG" ] || die "only one image"; IMG=$1; shift ;;
	esac
done
if [ $# -gt 0 ]; then
	if [ -n "$IMG" ] || [ $# -ne 1 ]; then die "only one image"; fi
	IMG=$1
fi
case $BACKEND in qsd | vstor) ;; *) die "--backend must be qsd or vstor" ;; esac
[ -z "$GUEST_SCRIPT" ] || [ -f "$GUEST_SCRIPT" ] || die "no such file: $GUEST_SCRIPT"

MIB=1048576
HOST_PATTERN=$((40 * MIB))  # host writes pattern "host" here before boot
GUEST_PATTERN=$((48 * MIB)) # the guest writes pattern "guest" here
PATTERN_SECTORS=128         # 64 KiB, as in guest/blk.sh

require_packages "${HOST_PACKAGES[@]}"
"$GUEST_DIR/build-initramfs.sh" "$OUT"
OUT=$(cd "$OUT" && pwd)
KERNEL=$OUT/vmlinuz
INITRD=$OUT/initramfs.cpio.zst

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vstor-guest.XXXXXX")
QEMU_PID=
BACKEND_PID=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	# shellcheck disable=SC2086 # empty PIDs must vanish
	kill_processes $QEMU_PID $BACKEND_PID
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the image and the backend ---------------------------------------------------

if [ -n "$SOCK" ]; then
	BACKEND=external
	[ -n "$SIZE" ] || die "--size is required with --socket / VSTOR_SOCK"
	[ -S "$SOCK" ] || die "$SOCK is not a socket"
	HOST_CHECKS=0
else
	HOST_CHECKS=1
	if [ -z "$IMG" ]; then
		IMG=$WORK/disk.img
	fi
	if [ ! -e "$IMG" ]; then
		log "creating $FORMAT image $IMG ($CREATE_SIZE)"
		qemu-img create -q -f "$FORMAT" "$IMG" "$CREATE_SIZE"
	fi
	IMG=$(realpath "$IMG")
	if [ -z "$SIZE" ]; then
		SIZE=$(qemu-img info --output=json -f "$FORMAT" "$IMG" |
			sed -n 's/^ *"virtual-size": *\([0-9]*\).*/\1/p' | head -n 1)
		[ -n "$SIZE" ] || die "cannot read the size of $IMG"
	fi
	[ "$SIZE" -ge $((64 * MIB)) ] || die "the test needs an image of at least 64 MiB"
	# Seed the pattern the guest must read (qemu-io works for every format).
	awk -v tag=host -v sectors=$PATTERN_SECTORS -f "$GUEST_DIR/pattern.awk" >"$WORK/host.pat"
	qemu-io -f "$FORMAT" -c "write -q -s $WORK/host.pat $HOST_PATTERN $((PATTERN_SECTORS * 512))" "$IMG" >/dev/null
	SOCK=$WORK/vblk.sock
fi

SERIAL=$OUT/blk-$BACKEND.serial.log
BACKEND_LOG=$OUT/blk-$BACKEND.backend.log
: >"$SERIAL"
: >"$BACKEND_LOG"

case $BACKEND in
qsd)
	node=file0
	blockdevs=(--blockdev "driver=file,node-name=file0,filename=$IMG,discard=unmap")
	if [ "$FORMAT" != raw ]; then
		blockdevs+=(--blockdev "driver=$FORMAT,node-name=fmt0,file=file0,discard=unmap")
		node=fmt0
	fi
	log "backend: $(qemu-storage-daemon --version | head -n 1)"
	qemu-storage-daemon "${blockdevs[@]}" \
		--export "type=vhost-user-blk,id=exp0,node-name=$node,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=$QUEUES" \
		</dev/null >"$BACKEND_LOG" 2>&1 &
	BACKEND_PID=$!
	;;
vstor)
	VSTOR_BIN=${VSTOR_BIN:-$REPO_ROOT/target/release/vstor}
	[ -x "$VSTOR_BIN" ] || die "$VSTOR_BIN not found: build it (cargo build --release -p vstor-cli) or set VSTOR_BIN"
	# shellcheck disable=SC2206 # VSTOR_SERVE_ARGS is meant to be split into words
	extra=(${VSTOR_SERVE_ARGS:-})
	[ "$FORMAT_GIVEN" = 0 ] || extra=(--format "$FORMAT" "${extra[@]}")
	log "backend: $VSTOR_BIN serve blk --image $IMG --socket $SOCK --queues $QUEUES ${extra[*]}"
	"$VSTOR_BIN" serve blk --image "$IMG" --socket "$SOCK" --queues "$QUEUES" "${extra[@]}" \
		</dev/null >"$BACKEND_LOG" 2>&1 &
	BACKEND_PID=$!
	;;
esac

if [ -n "$BACKEND_PID" ]; then
	for _ in $(seq 300); do
		[ -S "$SOCK" ] && break
		kill -0 "$BACKEND_PID" 2>/dev/null || break
		sleep 0.1
	done
	if [ ! -S "$SOCK" ]; then
		cat "$BACKEND_LOG" >&2
		die "the $BACKEND backend did not create $SOCK"
	fi
fi

# --- the guest ---------------------------------------------------------------------

APPEND="console=ttyS0 panic=-1 loglevel=4"
if [ -n "$GUEST_SCRIPT" ]; then
	# A second cpio archive appended to the first adds /test.sh.
	mkdir -p "$WORK/extra"
	install -m 755 "$GUEST_SCRIPT" "$WORK/extra/test.sh"
	(cd "$WORK/extra" && echo test.sh | cpio -o -H newc -R 0:0 --quiet) | zstd -q >"$WORK/extra.cpio.zst"
	cat "$INITRD" "$WORK/extra.cpio.zst" >"$WORK/initrd"
	INITRD=$WORK/initrd
else
	APPEND+=" vstor.test=blk"
fi
APPEND+=" vstor.size=$SIZE vstor.queues=$QUEUES vstor.discard_zeroes=$DISCARD_ZEROES"
APPEND+=" vstor.watchdog=$((TIMEOUT * 2 / 3))"
if [ "$HOST_CHECKS" = 1 ]; then
	APPEND+=" vstor.host_pattern=$HOST_PATTERN vstor.guest_pattern=$GUEST_PATTERN"
fi
[ -z "$EXTRA_APPEND" ] || APPEND+=" $EXTRA_APPEND"

QEMU=${QEMU:-qemu-system-x86_64}
# shellcheck disable=SC2054 # the commas are QEMU's
qemu_cmd=("$QEMU" -accel tcg -smp 2 -m 1G
	-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
	-nographic -nodefaults -serial stdio -monitor none -no-reboot
	-kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND"
	-chardev "socket,id=vblk,path=$SOCK"
	-device "vhost-user-blk-pci,chardev=vblk,num-queues=$QUEUES")
log "qemu: $("$QEMU" --version | head -n 1)"
log "running: ${qemu_cmd[*]}"
start=$SECONDS
if [ "$VERBOSE" = 1 ]; then
	"${qemu_cmd[@]}" </dev/null > >(tee "$SERIAL") 2>&1 &
else
	"${qemu_cmd[@]}" </dev/null >"$SERIAL" 2>&1 &
fi
QEMU_PID=$!

verdict=
while kill -0 "$QEMU_PID" 2>/dev/null; do
	if [ $((SECONDS - start)) -ge "$TIMEOUT" ]; then
		verdict="timed out after ${TIMEOUT}s"
		break
	fi
	if [ -n "$BACKEND_PID" ] && ! kill -0 "$BACKEND_PID" 2>/dev/null; then
		# A backend may exit once QEMU hangs up; only a QEMU that keeps
		# running without it means trouble.
		for _ in $(seq 50); do
			kill -0 "$QEMU_PID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$QEMU_PID" 2>/dev/null; then
			verdict="the backend exited while the guest was running"
		fi
		break
	fi
	sleep 0.2
done
stop_process "$QEMU_PID" 10
qemu_status=$STOPPED_STATUS
QEMU_PID=
elapsed=$((SECONDS - start))

# Stop the backend so everything it wrote is on disk before the host checks.
stop_process "$BACKEND_PID" 100
backend_status=$STOPPED_STATUS
BACKEND_PID=

if [ -z "$verdict" ]; then
	if grep -aq 'VSTOR-GUEST-RESULT: PASS' "$SERIAL"; then
		verdict=PASS
	elif line=$(grep -a 'VSTOR-GUEST-RESULT: ' "$SERIAL" | tail -n 1 | tr -d '\r') && [ -n "$line" ]; then
		verdict="guest reported ${line#*VSTOR-GUEST-RESULT: }"
		why=$(grep -a 'vstor-blk: FAILED: ' "$SERIAL" | tail -n 1 | tr -d '\r') || true
		[ -z "$why" ] || verdict+=": ${why#*vstor-blk: FAILED: }"
	else
		verdict="no result from the guest (QEMU exit status $qemu_status)"
	fi
fi
# The backend was asked to stop with SIGTERM: it must exit cleanly (143 is a
# backend without a handler killed by it), not crash or hang until SIGKILL.
if [ "$verdict" = PASS ] && [ "$backend_status" -ne 0 ] && [ "$backend_status" -ne 143 ]; then
	verdict="the $BACKEND backend exited with status $backend_status"
fi
if [ "$verdict" = PASS ] && grep -aq 'panicked at' "$BACKEND_LOG"; then
	verdict="the $BACKEND backend panicked"
fi

# --- host-side checks ---------------------------------------------------------------

if [ "$verdict" = PASS ] && [ "$HOST_CHECKS" = 1 ] && [ -z "$GUEST_SCRIPT" ]; then
	awk -v tag=guest -v sectors=$PATTERN_SECTORS -f "$GUEST_DIR/pattern.awk" >"$WORK/guest.want"
	flat=$IMG
	if [ "$FORMAT" != raw ]; then
		# (qemu-img dd's skip/count semantics differ between versions)
		qemu-img convert -f "$FORMAT" -O raw "$IMG" "$WORK/flat.raw"
		flat=$WORK/flat.raw
	fi
	dd if="$flat" of="$WORK/guest.got" bs=4096 skip=$((GUEST_PATTERN / 4096)) \
		count=$((PATTERN_SECTORS / 8)) status=none
	if ! cmp "$WORK/guest.want" "$WORK/guest.got"; then
		verdict="the image does not hold the guest's pattern at $GUEST_PATTERN"
	elif [ "$FORMAT" != raw ] && ! qemu-img check -q -f "$FORMAT" "$IMG"; then
		verdict="qemu-img check failed on $IMG"
	elif [ "$FORMAT" = qcow2 ] && [ $(($(od -An -tu1 -j79 -N1 "$IMG") & 1)) != 0 ]; then
		verdict="$IMG still has its dirty bit set after the backend exited"
	fi
fi

if [ "$verdict" = PASS ]; then
	grep -a 'vstor-blk: fio' "$SERIAL" | tr -d '\r' >&2 || true
	log "PASS: blk test against the $BACKEND backend in ${elapsed}s (serial log: $SERIAL, backend log: $BACKEND_LOG)"
	exit 0
fi
log "FAIL: $verdict (after ${elapsed}s; backend exit status $backend_status)"
log "---- serial console ($SERIAL) ----"
tr -d '\r' <"$SERIAL" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' >&2
log "---- backend log ($BACKEND_LOG) ----"
cat "$BACKEND_LOG" >&2
exit 1

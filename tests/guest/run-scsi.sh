#!/usr/bin/env bash
# Boot a Linux guest under QEMU (TCG) with a virtio-scsi controller holding
# three disks on target 0 and run the in-guest SCSI test (guest/scsi.sh): every
# LUN found with the right size and serial, one sg3_utils command per SCSI
# command of interest (INQUIRY and VPD pages, READ CAPACITY, REPORT LUNS, MODE
# SENSE, REPORT SUPPORTED OPERATION CODES / TMFs, REPORT TARGET PORT GROUPS,
# PERSISTENT RESERVE IN/OUT, UNMAP, WRITE SAME, COMPARE AND WRITE, GET LBA
# STATUS, SYNCHRONIZE CACHE, VERIFY, TEST UNIT READY, REQUEST SENSE), fio
# --verify on LUN 1, then a LUN hot-add and hot-remove and a resize of LUN 0
# that the host makes when the guest asks for them on the console.
#
# Usage:
#   tests/guest/run-scsi.sh --backend qemu|vstor [options]
# Backends:
#   qemu    QEMU's own virtio-scsi-pci + scsi-hd (the reference); the host
#           answers the guest's hotplug/resize requests through QMP
#           (device_add / device_del / block_resize)
#   vstor   `vstor serve scsi` behind vhost-user-scsi-pci; the requests go to
#           its control socket (add / remove / resize)
# Options:
#   --backend qemu|vstor  backend (required)
#   --queues N            request queues (default: 2)
#   --timeout SECONDS     kill QEMU after this long (default: 180, env
#                         VSTOR_GUEST_TIMEOUT); a guest watchdog fails the
#                         test and shows the stuck I/O at 2/3 of it
#   --no-hotplug          skip the hot-add/hot-remove and resize steps
#   --append ARGS         extra kernel command line words
#   --out DIR             build/cache dir (default: target/guest)
#   -v, --verbose         stream the serial console while it runs
# The LUNs (target 0): 0 and 1 raw 64 MiB, 2 qcow2 64 MiB; serials vs-lun0..2,
# LUN 0 has WWN 0x5000c0ffee000001.  Hot-added: LUN 3, raw 16 MiB, serial
# vs-hot3.  LUN 0 is grown to 80 MiB at the end.
# The guest prints one line per command, "VSTOR-SCSI-CMD NAME ok|unsupported|
# fail DETAIL", between VSTOR-SCSI-REPORT-BEGIN/END; the host keeps them in
# OUTDIR/scsi-BACKEND.report.txt (tests/guest/scsi-table.sh turns the qemu and
# vstor reports into a markdown table).  "unsupported" means the target
# answered ILLEGAL REQUEST (invalid opcode, or invalid field for a page or
# service action); "fail" any other error or wrong data.
# Verdict: with vstor every command must be ok; with qemu the report must be
# complete and the checks (LUNs, fio, hotplug, resize) must pass.
# Environment: VSTOR_BIN (default target/release/vstor), VSTOR_SERVE_ARGS
# (extra words for `vstor serve scsi`), QEMU (default qemu-system-x86_64).
# Exit status: 0 only if the guest printed "VSTOR-GUEST-RESULT: PASS" and the
# host-side checks passed; 1 on a test failure; 2 on a usage/setup error.
# The serial log is kept in OUTDIR/scsi-BACKEND.serial.log (printed on failure).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BACKEND=
QUEUES=2
TIMEOUT=${VSTOR_GUEST_TIMEOUT:-180}
HOTPLUG=1
EXTRA_APPEND=
OUT=$REPO_ROOT/target/guest
VERBOSE=0

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 2
}

while [ $# -gt 0 ]; do
	case $1 in
	--backend) BACKEND=$2; shift 2 ;;
	--queues) QUEUES=$2; shift 2 ;;
	--timeout) TIMEOUT=$2; shift 2 ;;
	--no-hotplug) HOTPLUG=0; shift ;;
	--append) EXTRA_APPEND=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	-v | --verbose) VERBOSE=1; shift ;;
	-h | --help) usage ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
case $BACKEND in qemu | vstor) ;; *) die "--backend must be qemu or vstor (see --help)" ;; esac

MIB=1048576
LUN_SIZE=$((64 * MIB))
HOT_SIZE=$((16 * MIB))
RESIZE_TO=$((80 * MIB))
WWN0=0x5000c0ffee000001

require_packages "${HOST_PACKAGES[@]}"
command -v python3 >/dev/null || die "python3 is needed to talk to QMP / the vstor control socket"
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

SERIAL=$OUT/scsi-$BACKEND.serial.log
BACKEND_LOG=$OUT/scsi-$BACKEND.backend.log
HOST_LOG=$OUT/scsi-$BACKEND.host.log
REPORT=$OUT/scsi-$BACKEND.report.txt
: >"$SERIAL"
: >"$BACKEND_LOG"
: >"$HOST_LOG"
rm -f "$REPORT"

# --- images --------------------------------------------------------------------

IMG0=$WORK/lun0.raw
IMG1=$WORK/lun1.raw
IMG2=$WORK/lun2.qcow2
IMG3=$WORK/hot3.raw
qemu-img create -q -f raw "$IMG0" "$LUN_SIZE"
qemu-img create -q -f raw "$IMG1" "$LUN_SIZE"
qemu-img create -q -f qcow2 "$IMG2" "$LUN_SIZE"
qemu-img create -q -f raw "$IMG3" "$HOT_SIZE"

# One request on a Unix socket: $1 = qmp|line, $2 = socket, $3 = JSON.  qmp:
# the QMP handshake, then the command; prints the reply (events skipped).
# line: one JSON line out, one line back.  Fails unless the reply says success.
unix_request() {
	python3 - "$@" <<'EOF'
import json, socket, sys
mode, path, req = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(path)
f = s.makefile("rw")
def reply():
    while True:
        line = f.readline()
        if not line:
            sys.exit("connection closed")
        msg = json.loads(line)
        if "event" not in msg:
            return line.strip(), msg
if mode == "qmp":
    reply()  # greeting
    f.write('{"execute":"qmp_capabilities"}\n'); f.flush()
    reply()
f.write(req + "\n"); f.flush()
text, msg = reply()
print(text)
ok = ("return" in msg) if mode == "qmp" else msg.get("ok") is True
sys.exit(0 if ok else 1)
EOF
}

# --- the backend -------------------------------------------------------------------

# shellcheck disable=SC2054 # the commas are QEMU's
case $BACKEND in
qemu)
	QMP=$WORK/qmp.sock
	SCSI_ARGS=(-qmp "unix:$QMP,server=on,wait=off"
		-device "virtio-scsi-pci,id=scsi0,num_queues=$QUEUES")
	drive_opts=cache=none,aio=threads,discard=unmap
	for l in 0 1 2; do
		img=IMG$l
		fmt=raw
		[ "$l" != 2 ] || fmt=qcow2
		dev="scsi-hd,drive=d$l,bus=scsi0.0,channel=0,scsi-id=0,lun=$l,serial=vs-lun$l"
		[ "$l" != 0 ] || dev+=",wwn=$WWN0"
		SCSI_ARGS+=(-drive "if=none,id=d$l,file=${!img},format=$fmt,$drive_opts" -device "$dev")
	done
	# LUN 3's drive exists from the start; device_add attaches it.
	SCSI_ARGS+=(-drive "if=none,id=d3,file=$IMG3,format=raw,$drive_opts")
	;;
vstor)
	VSTOR_BIN=${VSTOR_BIN:-$REPO_ROOT/target/release/vstor}
	[ -x "$VSTOR_BIN" ] || die "$VSTOR_BIN not found: build it (cargo build --release -p vstor-cli) or set VSTOR_BIN"
	"$VSTOR_BIN" serve scsi --help >/dev/null 2>&1 || die "$VSTOR_BIN has no \`serve scsi\` subcommand: rebuild it"
	SOCK=$WORK/vscsi.sock
	CTRL=$WORK/vscsi.ctrl
	# shellcheck disable=SC2206 # VSTOR_SERVE_ARGS is meant to be split into words
	serve=("$VSTOR_BIN" serve scsi --socket "$SOCK" --queues "$QUEUES" --control "$CTRL"
		--lun "target=0,lun=0,image=$IMG0,format=raw,serial=vs-lun0,wwn=$WWN0"
		--lun "target=0,lun=1,image=$IMG1,format=raw,serial=vs-lun1"
		--lun "target=0,lun=2,image=$IMG2,format=qcow2,serial=vs-lun2"
		${VSTOR_SERVE_ARGS:-})
	log "backend: ${serve[*]}"
	"${serve[@]}" </dev/null >"$BACKEND_LOG" 2>&1 &
	BACKEND_PID=$!
	for _ in $(seq 300); do
		[ -S "$SOCK" ] && [ -S "$CTRL" ] && break
		kill -0 "$BACKEND_PID" 2>/dev/null || break
		sleep 0.1
	done
	if [ ! -S "$SOCK" ] || [ ! -S "$CTRL" ]; then
		cat "$BACKEND_LOG" >&2
		die "the vstor backend did not create $SOCK and $CTRL"
	fi
	SCSI_ARGS=(-chardev "socket,id=vs,path=$SOCK"
		-device "vhost-user-scsi-pci,chardev=vs,num_queues=$QUEUES")
	;;
esac

# The host's side of a guest request ($1: add, remove or resize).
host_request() {
	local req
	case $BACKEND:$1 in
	qemu:add) req='{"execute":"device_add","arguments":{"driver":"scsi-hd","id":"hot3","drive":"d3","bus":"scsi0.0","channel":0,"scsi-id":0,"lun":3,"serial":"vs-hot3"}}' ;;
	qemu:remove) req='{"execute":"device_del","arguments":{"id":"hot3"}}' ;;
	qemu:resize) req="{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"d0\",\"size\":$RESIZE_TO}}" ;;
	vstor:add) req="{\"cmd\":\"add\",\"target\":0,\"lun\":3,\"image\":\"$IMG3\",\"format\":\"raw\",\"type\":\"disk\",\"serial\":\"vs-hot3\"}" ;;
	vstor:remove) req='{"cmd":"remove","target":0,"lun":3}' ;;
	vstor:resize) req="{\"cmd\":\"resize\",\"target\":0,\"lun\":0,\"size\":$RESIZE_TO}" ;;
	*) echo "unknown guest request $1"; return 1 ;;
	esac
	echo "> $req"
	if [ "$BACKEND" = qemu ]; then
		unix_request qmp "$QMP" "$req" 2>&1
	else
		unix_request line "$CTRL" "$req" 2>&1
	fi
}

# --- the guest ---------------------------------------------------------------------

APPEND="console=ttyS0 panic=-1 loglevel=4 vstor.test=scsi vstor.backend=$BACKEND"
APPEND+=" vstor.luns=3 vstor.lun_size=$LUN_SIZE vstor.wwn=$WWN0 vstor.queues=$QUEUES"
APPEND+=" vstor.hotplug=$HOTPLUG vstor.hot_size=$HOT_SIZE vstor.resize_to=$RESIZE_TO"
APPEND+=" vstor.watchdog=$((TIMEOUT * 2 / 3))"
[ -z "$EXTRA_APPEND" ] || APPEND+=" $EXTRA_APPEND"

QEMU=${QEMU:-qemu-system-x86_64}
# shellcheck disable=SC2054 # the commas are QEMU's
qemu_cmd=("$QEMU" -accel tcg -smp 2 -m 1G
	-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
	-nographic -nodefaults -serial stdio -monitor none -no-reboot
	-kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND"
	"${SCSI_ARGS[@]}")
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
handled=0
while kill -0 "$QEMU_PID" 2>/dev/null; do
	if [ $((SECONDS - start)) -ge "$TIMEOUT" ]; then
		verdict="timed out after ${TIMEOUT}s"
		break
	fi
	if [ -n "$BACKEND_PID" ] && ! kill -0 "$BACKEND_PID" 2>/dev/null; then
		for _ in $(seq 50); do
			kill -0 "$QEMU_PID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$QEMU_PID" 2>/dev/null; then
			verdict="the backend exited while the guest was running"
		fi
		break
	fi
	# Guest requests: "VSTOR-SCSI-REQ N OP", N counting from 1.
	mapfile -t reqs < <(grep -a '^VSTOR-SCSI-REQ [0-9]* [a-z]*' "$SERIAL" | tr -d '\r' || true)
	while [ "$handled" -lt "${#reqs[@]}" ]; do
		read -r _ n op <<<"${reqs[$handled]}"
		handled=$((handled + 1))
		log "guest request $n: $op (at $((SECONDS - start))s)"
		if [ "$n" != "$handled" ]; then
			echo "guest request $n out of order (expected $handled)" >>"$HOST_LOG"
		fi
		if out=$(host_request "$op"); then
			printf '%s\n' "$out" >>"$HOST_LOG"
		else
			printf '%s\n' "$out" >>"$HOST_LOG"
			log "request $op failed: $(tail -n 1 <<<"$out")"
		fi
	done
	sleep 0.2
done
stop_process "$QEMU_PID" 10
qemu_status=$STOPPED_STATUS
QEMU_PID=
elapsed=$((SECONDS - start))

stop_process "$BACKEND_PID" 100
backend_status=$STOPPED_STATUS
BACKEND_PID=

# The report: the lines between the markers, without the prefix.
if tr -d '\r' <"$SERIAL" | awk '
	/^VSTOR-SCSI-REPORT-BEGIN/ { on = 1; n = 0; next }
	/^VSTOR-SCSI-REPORT-END/ { if (on) { for (i = 1; i <= n; i++) print l[i]; done = 1 }; on = 0; next }
	on && /^VSTOR-SCSI-CMD / { l[++n] = substr($0, 16) }
	END { exit !done }' >"$REPORT.tmp"; then
	mv "$REPORT.tmp" "$REPORT"
else
	rm -f "$REPORT.tmp"
fi

if [ -z "$verdict" ]; then
	if grep -aq 'VSTOR-GUEST-RESULT: PASS' "$SERIAL"; then
		verdict=PASS
	elif line=$(grep -a 'VSTOR-GUEST-RESULT: ' "$SERIAL" | tail -n 1 | tr -d '\r') && [ -n "$line" ]; then
		verdict="guest reported ${line#*VSTOR-GUEST-RESULT: }"
		why=$(grep -a 'vstor-scsi: FAILED: ' "$SERIAL" | tail -n 1 | tr -d '\r') || true
		[ -z "$why" ] || verdict+=": ${why#*vstor-scsi: FAILED: }"
	else
		verdict="no result from the guest (QEMU exit status $qemu_status)"
	fi
fi
if [ "$verdict" = PASS ] && [ ! -f "$REPORT" ]; then
	verdict="no complete command report on the console"
fi
if [ "$verdict" = PASS ] && [ "$backend_status" -ne 0 ] && [ "$backend_status" -ne 143 ]; then
	verdict="the $BACKEND backend exited with status $backend_status"
fi
if [ "$verdict" = PASS ] && grep -aq 'panicked at' "$BACKEND_LOG"; then
	verdict="the $BACKEND backend panicked"
fi
if [ "$verdict" = PASS ] && ! qemu-img check -q -f qcow2 "$IMG2"; then
	verdict="qemu-img check failed on LUN 2's qcow2 image"
fi
if [ "$verdict" = PASS ] && [ "$HOTPLUG" = 1 ] &&
	[ "$(stat -c %s "$IMG0")" != "$RESIZE_TO" ]; then
	verdict="LUN 0's image is $(stat -c %s "$IMG0") bytes after the resize, not $RESIZE_TO"
fi

if [ -f "$REPORT" ]; then
	log "report ($REPORT):"
	column -t -l 3 "$REPORT" >&2 2>/dev/null || cat "$REPORT" >&2
fi
if [ "$verdict" = PASS ]; then
	grep -a 'vstor-scsi: fio' "$SERIAL" | tr -d '\r' >&2 || true
	log "PASS: scsi test against the $BACKEND backend in ${elapsed}s (serial log: $SERIAL, host log: $HOST_LOG)"
	exit 0
fi
log "FAIL: $verdict (after ${elapsed}s; backend exit status $backend_status)"
log "---- serial console ($SERIAL) ----"
tr -d '\r' <"$SERIAL" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' >&2
log "---- host requests ($HOST_LOG) ----"
cat "$HOST_LOG" >&2
if [ -s "$BACKEND_LOG" ]; then
	log "---- backend log ($BACKEND_LOG) ----"
	cat "$BACKEND_LOG" >&2
fi
exit 1

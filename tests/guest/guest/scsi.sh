#!/bin/sh
# In-guest virtio-scsi test, run by /init when the kernel command line says
# vstor.test=scsi (started by run-scsi.sh).  Parameters (see /init):
#   vstor.backend=NAME     qemu or vstor: with vstor every command must be ok
#   vstor.luns=N           LUNs expected on target 0 at boot (0..N-1)
#   vstor.lun_size=BYTES   capacity of each of them
#   vstor.wwn=0xHEX        LUN 0's WWN (an NAA designator in VPD page 0x83)
#   vstor.queues=N         request queues of the controller
#   vstor.hotplug=1        ask the host for a hot-add / hot-remove of LUN 3
#                          (vstor.hot_size bytes) and a resize of LUN 0 to
#                          vstor.resize_to bytes
# Serials are vs-lunN (vs-hot3 for the hot-added LUN).  LUN 2 is qcow2.
#
# Output: one line per command between VSTOR-SCSI-REPORT-BEGIN and
# VSTOR-SCSI-REPORT-END:  VSTOR-SCSI-CMD NAME ok|unsupported|fail DETAIL
# ("unsupported": ILLEGAL REQUEST, invalid opcode or invalid field for a page
# or service action; "fail": any other error, or wrong data).  Rows named
# check:* are the test's own checks and must be ok with every backend.
# A request to the host is one console line, VSTOR-SCSI-REQ N add|remove|resize;
# the guest then watches sysfs (no manual rescan) for up to 30 s.
#
# Layout of LUN 0 (512-byte blocks; LBAs for 512, scaled for other sizes):
#   [1M, 2M) UNMAP; [2M, 3M) WRITE SAME with UNMAP; [3M, 4M) WRITE SAME;
#   4M COMPARE AND WRITE; 5M VERIFY with BYTCHK.  LUN 1: fio [0, 16M).
set -u

BACKEND=${VSTOR_BACKEND:-unknown}
NLUNS=${VSTOR_LUNS:-3}
LUN_SIZE=${VSTOR_LUN_SIZE:-67108864}
WWN=${VSTOR_WWN:-}
QUEUES=${VSTOR_QUEUES:-}
HOTPLUG=${VSTOR_HOTPLUG:-0}
HOT_SIZE=${VSTOR_HOT_SIZE:-16777216}
RESIZE_TO=${VSTOR_RESIZE_TO:-}
MIB=1048576
PR_KEY=0x1234abcd

step() { echo "== vstor-scsi: $*"; }
info() { echo "vstor-scsi: $*"; }
fail() {
	echo "vstor-scsi: FAILED: $*"
	exit 1
}

NOK=0
NBAD=0
NCHECKBAD=0
BADLIST=
CHECKBAD=
# row NAME STATUS DETAIL: one report line.
row() {
	d=$(printf '%s' "$3" | tr '\n\t\r' '   ' | sed 's/  */ /g; s/^ //; s/ $//' | cut -c1-240)
	echo "VSTOR-SCSI-CMD $1 $2 ${UA:-}$d"
	UA=
	if [ "$2" = ok ]; then
		NOK=$((NOK + 1))
	else
		# the last command's output, for the serial log
		if [ -n "${OUT:-}" ] && [ "${1#check:}" = "$1" ]; then
			printf '%s\n' "$OUT" | head -n 40 | sed 's/^/vstor-scsi:  | /'
		fi
		NBAD=$((NBAD + 1))
		BADLIST="$BADLIST $1"
		case $1 in check:*) NCHECKBAD=$((NCHECKBAD + 1)) CHECKBAD="$CHECKBAD $1" ;; esac
	fi
}

# The sense key and additional sense that sg3_utils printed (needs -v).
sense() {
	printf '%s\n' "$OUT" | sed -n 's/.*Sense key: \(.*\)/\1/p; s/.*Additional sense: \(.*\)/\1/p' |
		tr '\n' ':' | sed 's/:$//; s/:/: /'
}

# run CMD...: run an sg3_utils command; RC and OUT get its status and output.
# A unit attention is shown in the detail and the command retried once.  A
# transport error (which some tools report with status 0) becomes RC=transport.
UA=
run() {
	OUT=$("$@" 2>&1)
	RC=$?
	if [ "$RC" = 6 ]; then
		UA="[retried after a unit attention: $(sense)] "
		OUT=$("$@" 2>&1)
		RC=$?
	fi
	if printf '%s\n' "$OUT" | grep -q 'Host_status\|DID_\|transport:'; then
		RC=transport
	fi
}

# bad NAME [DETAIL]: the row for a command that did not succeed (RC != 0).
bad() {
	s=$(sense)
	case $RC in
	9) row "$1" unsupported "invalid opcode${s:+ ($s)}${2:+; $2}" ;;
	5 | 17) row "$1" unsupported "illegal request${s:+ ($s)}${2:+; $2}" ;;
	transport) row "$1" fail "transport error: $(printf '%s\n' "$OUT" | grep 'Host_status\|DID_\|transport:' | head -n 2)" ;;
	*)
		[ -n "$s" ] || s=$(printf '%s\n' "$OUT" | grep -v '^ *$' | tail -n 2)
		row "$1" fail "exit status $RC: $s${2:+; $2}"
		;;
	esac
}

# cmd NAME CMD...: run CMD; a row unless it succeeded (then return 0 and the
# caller checks the data and writes the row).
cmd() {
	name=$1
	shift
	run "$@"
	[ "$RC" = 0 ] && return 0
	bad "$name"
	return 1
}

# Data helpers on LUN 0 (block device $SD0, block size $BS), all O_DIRECT.
rd() { dd if="/dev/$SD0" bs="$BS" skip="$1" count="$2" iflag=direct 2>/dev/null; }
wr() { dd of="/dev/$SD0" bs="$BS" seek="$1" count="$2" oflag=direct conv=notrunc,fsync 2>/dev/null; }
# fill OCTAL N: N blocks of the byte \OCTAL on stdout
fill() { tr '\000' "\\$1" </dev/zero | dd bs="$BS" count="$2" iflag=fullblock 2>/dev/null; }
# other LBA N OCTAL: number of bytes in the blocks that are not \OCTAL
other() { rd "$1" "$2" | tr -d "\\$3" | wc -c; }

# --- the controller and its LUNs ------------------------------------------------

step "waiting for the virtio-scsi disks"
H=
i=0
while :; do
	if [ -z "$H" ]; then
		for h in /sys/class/scsi_host/host*; do
			[ "$(cat "$h/proc_name" 2>/dev/null)" = virtio_scsi ] && H=${h##*/host}
		done
	fi
	n=0
	if [ -n "$H" ]; then
		for l in $(seq 0 $((NLUNS - 1))); do
			for b in "/sys/bus/scsi/devices/$H:0:0:$l/block/"*; do
				[ -e "$b/size" ] && [ "$(cat "$b/size")" != 0 ] && n=$((n + 1))
			done
		done
	fi
	[ "$n" -ge "$NLUNS" ] && break
	i=$((i + 1))
	[ "$i" -le 200 ] || fail "found $n of $NLUNS disks on host ${H:-?} after 20 s: $(ls /sys/bus/scsi/devices/)"
	sleep 0.1
done
# a LUN's sd and sg names
sd_of() { ls "/sys/bus/scsi/devices/$H:0:0:$1/block/" 2>/dev/null; }
sg_of() { ls "/sys/bus/scsi/devices/$H:0:0:$1/scsi_generic/" 2>/dev/null; }
for f in /sys/bus/virtio/devices/*; do
	[ "$(cat "$f/device")" = 0x0008 ] && info "$(basename "$f") features $(cat "$f/features")"
done
SD0=$(sd_of 0)
SG0=/dev/$(sg_of 0)
SD1=$(sd_of 1)
SD2=$(sd_of 2)
BS=$(cat "/sys/block/$SD0/queue/logical_block_size")

lunbad=
for d in /sys/bus/scsi/devices/"$H":*; do
	[ -e "$d/block" ] || continue
	l=${d##*:}
	sd=$(sd_of "$l")
	q=/sys/block/$sd/queue
	info "lun $l: $sd $(sg_of "$l") $(cat "$d/vendor" "$d/model" "$d/rev" 2>/dev/null | tr -s ' \n' '  ')" \
		"size=$(($(cat "/sys/block/$sd/size") * 512)) ro=$(cat "/sys/block/$sd/ro")" \
		"lbs=$(cat "$q/logical_block_size") pbs=$(cat "$q/physical_block_size")" \
		"hw_queues=$(find "/sys/block/$sd/mq" -mindepth 1 -maxdepth 1 | wc -l) max_sectors_kb=$(cat "$q/max_sectors_kb")" \
		"discard_max=$(cat "$q/discard_max_bytes") write_same_max=$(cat "$q/write_same_max_bytes")" \
		"write_zeroes_max=$(cat "$q/write_zeroes_max_bytes")" \
		"provisioning_mode=$(cat "$d/scsi_disk/"*/provisioning_mode 2>/dev/null)" \
		"cache_type=\"$(cat "$d/scsi_disk/"*/cache_type 2>/dev/null)\""
	case $l in
	[0-9] | [0-9][0-9]) ;;
	*) lunbad="$lunbad unexpected LUN $l;" ;;
	esac
	[ "$l" -lt "$NLUNS" ] || lunbad="$lunbad unexpected LUN $l;"
	size=$(($(cat "/sys/block/$sd/size") * 512))
	[ "$size" = "$LUN_SIZE" ] || lunbad="$lunbad LUN $l has $size bytes, expected $LUN_SIZE;"
	[ "$(cat "/sys/block/$sd/ro")" = 0 ] || lunbad="$lunbad LUN $l is read-only;"
	if [ -n "$QUEUES" ]; then
		want=$QUEUES
		[ "$want" -le "$(nproc)" ] || want=$(nproc)
		hwq=$(find "/sys/block/$sd/mq" -mindepth 1 -maxdepth 1 | wc -l)
		[ "$hwq" = "$want" ] || lunbad="$lunbad LUN $l has $hwq hardware queues, expected $want;"
	fi
	sn=$(sg_vpd -p sn -r "/dev/$sd" 2>/dev/null | tail -c +5 | tr -d '\000 ')
	[ "$sn" = "vs-lun$l" ] || lunbad="$lunbad LUN $l has serial '$sn', expected vs-lun$l;"
done

echo "VSTOR-SCSI-REPORT-BEGIN backend=$BACKEND"
if [ -z "$lunbad" ]; then
	row check:luns ok "$NLUNS LUNs of $LUN_SIZE bytes on host $H target 0, block size $BS"
else
	row check:luns fail "$lunbad"
fi

# --- INQUIRY and VPD pages --------------------------------------------------------

step "INQUIRY and VPD pages on LUN 0 ($SD0, $SG0)"
if cmd sg_inq sg_inq -v "$SG0"; then
	d=$(printf '%s\n' "$OUT" | sed -n 's/.*identification: *//p; s/.*revision level: *//p' | tr '\n' ' ')
	f=$(printf '%s\n' "$OUT" | grep -o 'version=0x[0-9a-f]*\|TPGS=[0-9]\|HiSUP=[0-9]\|CmdQue=[0-9]\|Protect=[0-9]' | tr '\n' ' ')
	if printf '%s\n' "$OUT" | grep -q 'PDT=0 '; then
		row sg_inq ok "$d; $f"
	else
		row sg_inq fail "peripheral device type is not 0 (disk): $d; $f"
	fi
fi
TPGS=$(printf '%s\n' "$OUT" | sed -n 's/.*TPGS=\([0-9]\).*/\1/p')

PAGES=
if cmd sg_vpd:0x00 sg_vpd -v -p 0 -r "$SG0"; then
	# raw: 4-byte header, then one byte per page
	PAGES=$(sg_vpd -p 0 -r "$SG0" 2>/dev/null | od -An -tx1 -v | tr -s ' \n' '  ' | cut -d' ' -f6-)
	PAGES=" $PAGES "
	miss=
	for p in 00 80 83; do
		case $PAGES in *" $p "*) ;; *) miss="$miss 0x$p" ;; esac
	done
	if [ -z "$miss" ]; then
		row sg_vpd:0x00 ok "pages:$PAGES"
	else
		row sg_vpd:0x00 fail "mandatory pages not listed:$miss; list:$PAGES"
	fi
fi
for p in 80 83 b0 b1 b2; do
	name=sg_vpd:0x$p
	listed=0
	case $PAGES in *" $p "*) listed=1 ;; esac
	# --force: ask the device even if page 0x00 does not list the page
	run sg_vpd -v --force -p "0x$p" "$SG0"
	if [ "$RC" != 0 ]; then
		if [ "$listed" = 1 ]; then
			row "$name" fail "listed in page 0x00 but: exit status $RC $(sense)"
		else
			bad "$name"
		fi
		continue
	fi
	[ "$listed" = 1 ] || { row "$name" fail "answered but not listed in page 0x00"; continue; }
	case $p in
	80)
		sn=$(printf '%s\n' "$OUT" | sed -n 's/.*Unit serial number: *//p')
		if [ "$sn" = vs-lun0 ]; then
			row "$name" ok "serial $sn"
		else
			row "$name" fail "serial '$sn', expected vs-lun0"
		fi
		;;
	83)
		d=$(printf '%s\n' "$OUT" | sed -n 's/.*designator type: \([^,]*\),.*/\1/p' | tr '\n' ',' | sed 's/,$//')
		if [ -n "$WWN" ] && ! printf '%s\n' "$OUT" | grep -qi "$WWN"; then
			row "$name" fail "no NAA designator $WWN; designators: $d"
		else
			row "$name" ok "designators: $d"
		fi
		;;
	b0)
		d=$(printf '%s\n' "$OUT" | sed -n 's/.*\(Maximum compare and write length\|Maximum transfer length\|Optimal transfer length\|Maximum unmap LBA count\|Maximum unmap block descriptor count\|Optimal unmap granularity\|Maximum write same length\): \([^ ]*\).*/\1=\2/p' |
			sed 's/Maximum /max /; s/Optimal /opt /; s/ length//; s/ count//' | tr '\n' ',')
		row "$name" ok "${d%,}"
		;;
	b1)
		d=$(printf '%s\n' "$OUT" | sed -n 's/^ *\(Medium rotation rate.*\|Non-rotating.*\|Nominal form factor.*\|Product type.*\)/\1/p' | tr '\n' ',')
		row "$name" ok "${d%,}"
		;;
	b2)
		LBPU=$(printf '%s\n' "$OUT" | sed -n 's/.*(LBPU): \([01]\).*/\1/p')
		LBPWS=$(printf '%s\n' "$OUT" | sed -n 's/.*(LBPWS): \([01]\).*/\1/p')
		LBPWS10=$(printf '%s\n' "$OUT" | sed -n 's/.*(LBPWS10): \([01]\).*/\1/p')
		VPD_LBPRZ=$(printf '%s\n' "$OUT" | sed -n 's/.*(LBPRZ): \([01]\).*/\1/p')
		pt=$(printf '%s\n' "$OUT" | sed -n 's/.*Provisioning type: \(.*\)/\1/p')
		row "$name" ok "LBPU=$LBPU LBPWS=$LBPWS LBPWS10=$LBPWS10 LBPRZ=$VPD_LBPRZ type=$pt"
		;;
	esac
done

# --- capacity, LUNs, mode pages, opcodes --------------------------------------------

step "READ CAPACITY, REPORT LUNS, MODE SENSE, REPORT SUPPORTED OPERATION CODES"
# readcap_check NAME: blocks x block size must be the LUN size
readcap_check() {
	blocks=$(printf '%s\n' "$OUT" | sed -n 's/.*Number of logical blocks=\([0-9]*\).*/\1/p')
	len=$(printf '%s\n' "$OUT" | sed -n 's/.*Logical block length=\([0-9]*\).*/\1/p')
	if [ -n "$blocks" ] && [ -n "$len" ] && [ $((blocks * len)) = "$LUN_SIZE" ] && [ "$len" = "$BS" ]; then
		row "$1" ok "$blocks blocks of $len bytes${2:+; $2}"
	else
		row "$1" fail "${blocks:-?} blocks of ${len:-?} bytes, expected $LUN_SIZE bytes in blocks of $BS"
	fi
}
cmd sg_readcap:10 sg_readcap -v "$SG0" && readcap_check sg_readcap:10
LBPRZ=0
if cmd sg_readcap:16 sg_readcap -v -l "$SG0"; then
	LBPME=$(printf '%s\n' "$OUT" | sed -n 's/.*lbpme=\([01]\).*/\1/p')
	LBPRZ=$(printf '%s\n' "$OUT" | sed -n 's/.*lbprz=\([01]\).*/\1/p')
	pbe=$(printf '%s\n' "$OUT" | sed -n 's/.*per physical block exponent=\([0-9]*\).*/\1/p')
	if [ -n "${VPD_LBPRZ:-}" ] && [ "$VPD_LBPRZ" != "$LBPRZ" ]; then
		row sg_readcap:16 fail "lbprz=$LBPRZ but VPD page 0xb2 says LBPRZ=$VPD_LBPRZ"
	else
		readcap_check sg_readcap:16 "lbpme=$LBPME lbprz=$LBPRZ pb_exp=$pbe"
	fi
fi

for s in 0 2; do
	if cmd "sg_luns:select$s" sg_luns -v -s "$s" "$SG0"; then
		luns=$(printf '%s\n' "$OUT" | sed -n 's/^ *\([0-9a-fA-F]\{16\}\)$/\1/p' | tr 'A-F\n' 'a-f ')
		miss=
		for l in $(seq 0 $((NLUNS - 1))); do
			case " $luns" in *" 000${l}000000000000 "*) ;; *) miss="$miss $l" ;; esac
		done
		extra=
		for x in $luns; do
			case $x in 000[0-9]000000000000) ;; c1*) [ "$s" != 0 ] || extra="$extra $x" ;; *) extra="$extra $x" ;; esac
		done
		if [ -n "$miss$extra" ]; then
			row "sg_luns:select$s" fail "missing LUNs:${miss:- none}; unexpected:${extra:- none}; list: $luns"
		else
			row "sg_luns:select$s" ok "$luns"
		fi
	fi
done

for v in 10 6; do
	six=
	[ "$v" = 10 ] || six=--six
	# shellcheck disable=SC2086 # $six is empty or one word
	if cmd "sg_modes:$v" sg_modes -v $six -a "$SG0"; then
		pages=$(printf '%s\n' "$OUT" | sed -n 's/^>> \(.*\), page_control.*/\1/p' | sed 's/ (obsolete)//' | tr '\n' ',')
		hdr=$(printf '%s\n' "$OUT" | sed -n 's/.*\(WP=[01]\).*\(DpoFua=[01]\).*/\1 \2/p')
		case $pages in
		*Caching*) row "sg_modes:$v" ok "$hdr; ${pages%,}" ;;
		*) row "sg_modes:$v" fail "no caching page: ${pages%,}" ;;
		esac
	fi
done

if cmd sg_opcodes sg_opcodes -v -n "$SG0"; then
	n=$(printf '%s\n' "$OUT" | grep -c '^ *[0-9a-f][0-9a-f]  ')
	if printf '%s\n' "$OUT" | grep -qi ' inquiry$' && printf '%s\n' "$OUT" | grep -qi 'test unit ready'; then
		row sg_opcodes ok "$n commands"
	else
		row sg_opcodes fail "INQUIRY or TEST UNIT READY missing from the $n commands"
	fi
	info "REPORT SUPPORTED OPERATION CODES:"
	printf '%s\n' "$OUT" | grep '^ *[0-9a-f][0-9a-f]  ' | sed 's/^/vstor-scsi:   /'
fi
# one command (reporting option 1), and one with a service action (option 2)
if cmd sg_opcodes:0x28 sg_opcodes -v -n -o 0x28 "$SG0"; then
	d=$(printf '%s\n' "$OUT" | grep -v 'cdb:' | grep -i 'support' | head -n 1)
	case $d in
	*[Nn]ot\ support*) row sg_opcodes:0x28 fail "READ(10) reported as: $d" ;;
	*) row sg_opcodes:0x28 ok "$d" ;;
	esac
fi
if cmd sg_opcodes:0x9e/0x10 sg_opcodes -v -n -o 0x9e -s 0x10 "$SG0"; then
	d=$(printf '%s\n' "$OUT" | grep -v 'cdb:' | grep -i 'support' | head -n 1)
	case $d in
	*[Nn]ot\ support*) row sg_opcodes:0x9e/0x10 fail "READ CAPACITY(16) reported as: $d" ;;
	*) row sg_opcodes:0x9e/0x10 ok "$d" ;;
	esac
fi
if cmd sg_opcodes:tmf sg_opcodes -v -n --tmf "$SG0"; then
	d=$(printf '%s\n' "$OUT" | grep -v 'cdb:' | sed -n 's/^    \([A-Za-z].*\)/\1/p' | tr '\n' ',')
	row sg_opcodes:tmf ok "${d%,}"
fi
if cmd sg_rtpg sg_rtpg -v -d "$SG0"; then
	d=$(printf '%s\n' "$OUT" | grep -i 'target port group id\|asymmetric access state\|access state' | head -n 2)
	row sg_rtpg ok "TPGS=$TPGS; $d"
fi

# --- persistent reservations -----------------------------------------------------------

step "PERSISTENT RESERVE IN/OUT"
if cmd sg_persist:read-keys sg_persist -v -n --in -k "$SG0"; then
	if printf '%s\n' "$OUT" | grep -qi 'there are NO registered'; then
		row sg_persist:read-keys ok "no keys"
	else
		row sg_persist:read-keys fail "expected no registered keys: $(printf '%s\n' "$OUT" | grep -i 'key' | head -n 2)"
	fi
fi
if cmd sg_persist:capabilities sg_persist -v -n --in -c "$SG0"; then
	d=$(printf '%s\n' "$OUT" | sed -n 's/.*(\([A-Za-z_0-9]*\)): *\([0-9]\).*/\1=\2/p' | tr '\n' ' ')
	row sg_persist:capabilities ok "$d"
fi
if cmd sg_persist:register sg_persist -v -n --out --register --param-sark="$PR_KEY" "$SG0"; then
	run sg_persist -n --in -k "$SG0"
	if printf '%s\n' "$OUT" | grep -qi "$PR_KEY"; then
		row sg_persist:register ok "key $PR_KEY registered"
	else
		row sg_persist:register fail "READ KEYS does not show $PR_KEY: $(printf '%s\n' "$OUT" | tr '\n' ' ')"
	fi
fi
if cmd sg_persist:reserve sg_persist -v -n --out --reserve --param-rk="$PR_KEY" --prout-type=1 "$SG0"; then
	row sg_persist:reserve ok "type 1 (write exclusive)"
fi
if cmd sg_persist:read-reservation sg_persist -v -n --in -r "$SG0"; then
	d=$(printf '%s\n' "$OUT" | grep -i 'key\|type' | tr '\n' ' ')
	if printf '%s\n' "$OUT" | grep -qi "key=$PR_KEY" && printf '%s\n' "$OUT" | grep -qi 'Write Exclusive'; then
		row sg_persist:read-reservation ok "$d"
	else
		row sg_persist:read-reservation fail "expected a write exclusive reservation by $PR_KEY: $d"
	fi
fi
if cmd sg_persist:release sg_persist -v -n --out --release --param-rk="$PR_KEY" --prout-type=1 "$SG0"; then
	run sg_persist -n --in -r "$SG0"
	if printf '%s\n' "$OUT" | grep -qi 'no reservation'; then
		row sg_persist:release ok "released"
	else
		row sg_persist:release fail "still reserved: $(printf '%s\n' "$OUT" | tr '\n' ' ')"
	fi
fi
if cmd sg_persist:unregister sg_persist -v -n --out --register --param-rk="$PR_KEY" --param-sark=0 "$SG0"; then
	run sg_persist -n --in -k "$SG0"
	if printf '%s\n' "$OUT" | grep -qi 'there are NO registered'; then
		row sg_persist:unregister ok "no keys left"
	else
		row sg_persist:unregister fail "keys left: $(printf '%s\n' "$OUT" | tr '\n' ' ')"
	fi
fi

# --- provisioning and writes -----------------------------------------------------------

step "UNMAP, WRITE SAME, COMPARE AND WRITE, GET LBA STATUS"
SPM=$((MIB / BS)) # blocks per MiB
# zeroes_after NAME LBA N WHAT: the row after an unmap-like command over blocks
# that held non-zero data: zeroes are required when LBPRZ=1.
zeroes_after() {
	left=$(other "$2" "$3" 000)
	if [ "$left" = 0 ]; then
		row "$1" ok "$4; reads back as zeroes (lbprz=$LBPRZ)"
	elif [ "$LBPRZ" = 1 ]; then
		row "$1" fail "$4; $left non-zero bytes left although lbprz=1"
	else
		row "$1" ok "$4; $left non-zero bytes left (lbprz=0: allowed)"
	fi
}
fill 245 "$SPM" | wr "$SPM" "$SPM"
[ "$(other "$SPM" "$SPM" 245)" = 0 ] || fail "the fill at 1M did not read back"
if cmd sg_unmap sg_unmap -v -f --lba="$SPM" --num="$SPM" "$SG0"; then
	zeroes_after sg_unmap "$SPM" "$SPM" "1 MiB"
fi

# GET LBA STATUS at the unmapped range; the status is only shown.
if cmd sg_get_lba_status sg_get_lba_status -v -b --lba="$SPM" "$SG0"; then
	d=$(printf '%s\n' "$OUT" | grep -i '^ *0x' | head -n 2 | tr '\n' ' ')
	first=$(printf '%s\n' "$OUT" | grep -i '^ *0x' | head -n 1 | awk '{print $1}')
	if [ -z "$first" ] || [ $((first)) -ne "$SPM" ]; then
		row sg_get_lba_status fail "no descriptor for LBA $SPM: $(printf '%s\n' "$OUT" | tr '\n' ' ')"
	else
		row sg_get_lba_status ok "lba blocks status: $d"
	fi
fi

# WRITE SAME: a pattern block, and zeroes with UNMAP, each on 1/4 MiB
Q=$((SPM / 4))
fill 132 1 >/tmp/ws.blk
fill 245 "$SPM" | wr $((2 * SPM)) "$SPM"
fill 245 "$SPM" | wr $((3 * SPM)) "$SPM"
for v in 10 16; do
	lba=$((3 * SPM))
	[ "$v" = 10 ] || lba=$((lba + Q))
	if cmd "sg_write_same:$v" sg_write_same -v "--$v" --in=/tmp/ws.blk --lba="$lba" --num="$Q" "$SG0"; then
		left=$(other "$lba" "$Q" 132)
		if [ "$left" = 0 ]; then
			row "sg_write_same:$v" ok "$Q blocks"
		else
			row "sg_write_same:$v" fail "$left bytes of $Q blocks differ from the data block"
		fi
	fi
done
for v in 10 16; do
	lba=$((2 * SPM))
	[ "$v" = 10 ] || lba=$((lba + Q))
	if cmd "sg_write_same:$v-unmap" sg_write_same -v "--$v" --unmap --lba="$lba" --num="$Q" "$SG0"; then
		zeroes_after "sg_write_same:$v-unmap" "$lba" "$Q" "$Q blocks"
	fi
done

# COMPARE AND WRITE on one block at 4M: a match writes, a mismatch must not
CAW=$((4 * SPM))
fill 101 1 | wr "$CAW" 1
{ fill 101 1; fill 102 1; } >/tmp/caw.ok
{ fill 103 1; fill 104 1; } >/tmp/caw.bad
if cmd sg_compare_and_write sg_compare_and_write -v --in=/tmp/caw.ok --lba="$CAW" --num=1 --xferlen=$((2 * BS)) "$SG0"; then
	left=$(other "$CAW" 1 102)
	if [ "$left" = 0 ]; then
		row sg_compare_and_write ok "matched and written"
	else
		row sg_compare_and_write fail "the block does not hold the new data ($left bytes differ)"
	fi
fi
rd "$CAW" 1 >/tmp/caw.before
run sg_compare_and_write -v --in=/tmp/caw.bad --lba="$CAW" --num=1 --xferlen=$((2 * BS)) "$SG0"
if [ "$RC" = 14 ]; then
	if rd "$CAW" 1 | cmp -s /tmp/caw.before -; then
		row sg_compare_and_write:miscompare ok "MISCOMPARE ($(sense)), block unchanged"
	else
		row sg_compare_and_write:miscompare fail "MISCOMPARE but the block changed"
	fi
elif [ "$RC" = 0 ]; then
	row sg_compare_and_write:miscompare fail "no MISCOMPARE for different data"
else
	bad sg_compare_and_write:miscompare
fi

# --- the rest -----------------------------------------------------------------------

step "SYNCHRONIZE CACHE, VERIFY, TEST UNIT READY, REQUEST SENSE"
cmd sg_sync:10 sg_sync -v "$SG0" && row sg_sync:10 ok ""
cmd sg_sync:16 sg_sync -v --16 "$SG0" && row sg_sync:16 ok ""
cmd sg_verify sg_verify -v --lba=0 --count=64 "$SG0" && row sg_verify ok "BYTCHK=0, 64 blocks"
VFY=$((5 * SPM))
fill 151 2 | wr "$VFY" 2
fill 151 2 >/tmp/vfy.ok
{ fill 151 1; fill 152 1; } >/tmp/vfy.bad
cmd sg_verify:bytchk sg_verify -v --lba="$VFY" --count=2 --ndo=$((2 * BS)) --in=/tmp/vfy.ok "$SG0" &&
	row sg_verify:bytchk ok "BYTCHK=1, 2 blocks match"
run sg_verify -v --lba="$VFY" --count=2 --ndo=$((2 * BS)) --in=/tmp/vfy.bad "$SG0"
case $RC in
14) row sg_verify:bytchk-miscompare ok "MISCOMPARE ($(sense))" ;;
0) row sg_verify:bytchk-miscompare fail "no MISCOMPARE for different data" ;;
*) bad sg_verify:bytchk-miscompare ;;
esac
cmd sg_turs sg_turs -v "$SG0" && row sg_turs ok ""
if cmd sg_requests sg_requests -v "$SG0"; then
	s=$(sense)
	case $s in
	"No Sense: No additional sense information") row sg_requests ok "$s" ;;
	*) row sg_requests fail "expected no sense, got: ${s:-$(printf '%s\n' "$OUT" | tr '\n' ' ')}" ;;
	esac
fi

# --- LUN 2 (qcow2) and fio on LUN 1 ------------------------------------------------------

step "write and read back 1 MiB on LUN 2 ($SD2)"
fill 307 "$SPM" >/tmp/q.want
dd if=/tmp/q.want of="/dev/$SD2" bs=64k seek=128 oflag=direct conv=notrunc,fsync 2>/dev/null
dd if="/dev/$SD2" of=/tmp/q.got bs=64k skip=128 count=16 iflag=direct 2>/dev/null
if cmp -s /tmp/q.want /tmp/q.got; then
	row check:qcow2 ok "1 MiB at 8 MiB written and read back on LUN 2"
else
	row check:qcow2 fail "1 MiB at 8 MiB on LUN 2 did not read back"
fi

if fio --enghelp 2>/dev/null | grep -qw libaio; then engine=libaio; else engine=psync; fi
step "fio random 4k writes + crc32c verify on LUN 1 ($SD1), 2 jobs x 8M, iodepth 8, $engine"
if fio --name=rand --filename="/dev/$SD1" --rw=randwrite --bs=4k --size=8M \
	--numjobs=2 --offset_increment=8M --cpus_allowed=0-1 --cpus_allowed_policy=split \
	--direct=1 --ioengine="$engine" --iodepth=8 \
	--verify=crc32c --do_verify=1 --verify_fatal=1 --group_reporting \
	--output-format=terse --terse-version=3 >/tmp/fio.out 2>&1; then
	d=$(awk -F';' 'NF > 50 { printf "read %s KiB (%s IOPS), wrote %s KiB (%s IOPS), errors %s", $6, $8, $47, $49, $5 }' /tmp/fio.out)
	info "fio $d"
	# Each request queue must have completed requests (one fio job per CPU,
	# blk-mq maps each CPU to its own queue).  Without per-queue MSI-X
	# vectors (named virtioN-request) this is skipped.
	irqs=$(awk '$NF ~ /^virtio[0-9]+-request$/ {
		n = 0; for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) n += $i
		printf "%d ", n }' /proc/interrupts)
	idle=0
	for n in $irqs; do [ "$n" -gt 0 ] || idle=$((idle + 1)); done
	if [ "$idle" = 0 ]; then
		row check:fio ok "$d; completions per request queue: ${irqs:-no per-queue vectors}"
	else
		row check:fio fail "$d; $idle request queue(s) completed nothing: $irqs"
	fi
else
	cat /tmp/fio.out
	row check:fio fail "fio randwrite + verify on LUN 1: $(tail -n 1 /tmp/fio.out)"
fi
grep 'virtio' /proc/interrupts | sed 's/^/vstor-scsi: /'

# --- hotplug and resize --------------------------------------------------------------

REQ=0
request() {
	REQ=$((REQ + 1))
	echo "VSTOR-SCSI-REQ $REQ $1"
}
# wait_for SECONDS CMD...: poll CMD every 0.2 s; WAITED = tenths of seconds
wait_for() {
	limit=$(($1 * 10))
	shift
	WAITED=0
	while [ "$WAITED" -lt "$limit" ]; do
		"$@" && return 0
		sleep 0.2
		WAITED=$((WAITED + 2))
	done
	return 1
}
lun_up() {
	b=$(sd_of "$1")
	[ -n "$b" ] && [ -e "/sys/block/$b/size" ] && [ "$(cat "/sys/block/$b/size")" != 0 ]
}
lun_gone() { [ ! -e "/sys/class/scsi_device/$H:0:0:$1" ]; }

if [ "$HOTPLUG" = 1 ]; then
	step "hot-add LUN 3"
	request add
	if wait_for 30 lun_up 3; then
		sd=$(sd_of 3)
		size=$(($(cat "/sys/block/$sd/size") * 512))
		sn=$(sg_vpd -p sn -r "/dev/$sd" 2>/dev/null | tail -c +5 | tr -d '\000 ')
		luns=$(sg_luns "/dev/$SD0" 2>/dev/null | sed -n 's/^ *\([0-9a-fA-F]\{16\}\)$/\1/p' | tr '\n' ' ')
		fill 266 16 | dd of="/dev/$sd" bs="$BS" seek=64 oflag=direct conv=notrunc,fsync 2>/dev/null
		left=$(dd if="/dev/$sd" bs="$BS" skip=64 count=16 iflag=direct 2>/dev/null | tr -d '\266' | wc -c)
		why=
		[ "$size" = "$HOT_SIZE" ] || why="$why size $size, expected $HOT_SIZE;"
		[ "$sn" = vs-hot3 ] || why="$why serial '$sn', expected vs-hot3;"
		case " $luns" in *" 0003000000000000 "*) ;; *) why="$why REPORT LUNS on LUN 0 lacks LUN 3 ($luns);" ;; esac
		[ "$left" = 0 ] || why="$why 8 KiB written did not read back;"
		if [ -z "$why" ]; then
			row check:hotplug-add ok "LUN 3 ($sd) up after $((WAITED / 10)).$((WAITED % 10)) s, $size bytes, serial $sn"
		else
			row check:hotplug-add fail "LUN 3 ($sd) up after $((WAITED / 10)).$((WAITED % 10)) s but:$why"
		fi
		step "hot-remove LUN 3"
		request remove
		if wait_for 30 lun_gone 3; then
			luns=$(sg_luns "/dev/$SD0" 2>/dev/null | sed -n 's/^ *\([0-9a-fA-F]\{16\}\)$/\1/p' | tr '\n' ' ')
			case " $luns" in
			*" 0003000000000000 "*) row check:hotplug-remove fail "LUN 3 gone from sysfs but still in REPORT LUNS ($luns)" ;;
			*) row check:hotplug-remove ok "LUN 3 gone after $((WAITED / 10)).$((WAITED % 10)) s" ;;
			esac
		else
			row check:hotplug-remove fail "LUN 3 still present 30 s after the request"
		fi
	else
		hint=
		if [ -e "/sys/class/scsi_device/$H:0:0:16387" ]; then
			hint="; LUN 16387 = 0x4003: the event's LUN used flat space addressing (Linux takes event lun[2..3] as the LUN number; QEMU uses lun[2]=0 below 256)"
		fi
		row check:hotplug-add fail "LUN 3 did not appear in 30 s: $(cd /sys/class/scsi_device && echo *)$hint"
		row check:hotplug-remove fail "not tried (the add failed)"
	fi

	step "grow LUN 0 to $RESIZE_TO bytes"
	old=$(cat "/sys/block/$SD0/size")
	request resize
	grown() { [ "$(cat "/sys/block/$SD0/size")" != "$old" ]; }
	how=event
	if ! wait_for 5 grown; then
		# The kernel did not pick it up on its own: one TEST UNIT READY, which
		# gets the CAPACITY DATA HAS CHANGED unit attention.
		how="after a TEST UNIT READY ($(sg_turs -v "/dev/$SD0" 2>&1 | sed -n 's/.*Additional sense: //p' | head -n 1))"
		wait_for 25 grown || how=
	fi
	new=$(($(cat "/sys/block/$SD0/size") * 512))
	run sg_readcap -l "$SG0"
	cap=$(printf '%s\n' "$OUT" | sed -n 's/.*Device size: \([0-9]*\) bytes.*/\1/p')
	if [ -z "$how" ]; then
		row check:resize fail "size still $new bytes 30 s after the request (READ CAPACITY: ${cap:-?})"
	elif [ "$new" != "$RESIZE_TO" ] || [ "$cap" != "$RESIZE_TO" ]; then
		row check:resize fail "size $new bytes ($how), READ CAPACITY ${cap:-?}, expected $RESIZE_TO"
	else
		row check:resize ok "$((old * 512)) -> $new bytes ($how)"
	fi
fi

echo "VSTOR-SCSI-REPORT-END ok=$NOK not-ok=$NBAD"

sync
info "$NOK ok, $NBAD not ok:${BADLIST:- none}"
[ "$NCHECKBAD" = 0 ] || fail "$NCHECKBAD of the test's own checks failed:$CHECKBAD (not ok in all:$BADLIST)"
if [ "$BACKEND" != qemu ] && [ "$NBAD" != 0 ]; then
	fail "$NBAD commands not ok:$BADLIST"
fi
step "done ($BACKEND)"

#!/bin/sh
# In-guest virtio-blk test, run by /init when the kernel command line says
# vstor.test=blk.  Parameters come from the command line (see /init):
#   vstor.size=BYTES          expected capacity of the disk (required)
#   vstor.queues=N            expected number of blk-mq hardware queues
#   vstor.host_pattern=OFF    the host wrote pattern "host" at OFF: check it
#   vstor.guest_pattern=OFF   write pattern "guest" at OFF for the host to check
#   vstor.discard_zeroes=1    a discarded range must read back as zeroes
#   vstor.dev=NAME            disk to test (default vda)
# Layout of the disk (needs >= 64 MiB):
#   [0, 32M)  fio random 4k writes from 2 jobs (one per CPU, so both queues
#             are used), verified with crc32c
#   [32M,40M) fio sequential 256k writes (multi-segment requests), verified
#   [52M,60M) fio random writes of mixed sizes (512 B .. 128 KiB, 512-byte
#             aligned), verified
#   [0, 1M)   afterwards: overwritten, discarded, read back
#   [1M, 2M)  afterwards: BLKZEROOUT (write zeroes), read back
#   40M, 48M  default host / guest pattern offsets (64 KiB each)
# Exit status 0 means every check passed.
set -eu

DEV=${VSTOR_DEV:-vda}
DISK=/dev/$DEV
SECTORS=128                        # pattern length: 128 x 512 = 64 KiB
PATTERN_AWK=/usr/share/vstor/pattern.awk
MIB=1048576
# util-linux's blkdiscard (busybox's has no -z, and busybox sh would prefer its
# own applet over a PATH lookup)
BLKDISCARD=/usr/sbin/blkdiscard
[ -x "$BLKDISCARD" ] || BLKDISCARD=blkdiscard

step() { echo "== vstor-blk: $*"; }
fail() {
	echo "vstor-blk: FAILED: $*"
	exit 1
}

# Read LEN bytes at byte offset OFF (both multiples of 4096) with O_DIRECT.
read_range() {
	dd if="$DISK" bs=4096 skip=$(($1 / 4096)) count=$(($2 / 4096)) iflag=direct 2>/dev/null
}

# Number of non-zero bytes in [OFF, OFF+LEN).
nonzero_bytes() {
	read_range "$1" "$2" | tr -d '\000' | wc -c
}

pattern() {
	awk -v tag="$1" -v sectors="$SECTORS" -f "$PATTERN_AWK"
}

step "waiting for $DISK"
i=0
while [ ! -b "$DISK" ] || [ ! -e "/sys/block/$DEV/size" ]; do
	i=$((i + 1))
	[ "$i" -le 100 ] || fail "$DISK did not appear"
	sleep 0.1
done

Q=/sys/block/$DEV/queue
size=$(($(cat "/sys/block/$DEV/size") * 512))
nqueues=$(find "/sys/block/$DEV/mq" -mindepth 1 -maxdepth 1 | wc -l)
discard_max=$(cat "$Q/discard_max_bytes")
wz_max=$(cat "$Q/write_zeroes_max_bytes" 2>/dev/null || echo 0)
echo "vstor-blk: size=$size queues=$nqueues ro=$(cat "/sys/block/$DEV/ro")" \
	"lbs=$(cat "$Q/logical_block_size") pbs=$(cat "$Q/physical_block_size")" \
	"max_sectors_kb=$(cat "$Q/max_sectors_kb") max_segments=$(cat "$Q/max_segments")" \
	"write_cache=\"$(cat "$Q/write_cache")\"" \
	"discard_max=$discard_max discard_gran=$(cat "$Q/discard_granularity")" \
	"write_zeroes_max=$wz_max"
for f in /sys/bus/virtio/devices/*; do
	[ "$(cat "$f/device")" = 0x0002 ] && echo "vstor-blk: $(basename "$f") features $(cat "$f/features")"
done

step "capacity"
[ -n "${VSTOR_SIZE:-}" ] || fail "vstor.size not given"
[ "$size" -eq "$VSTOR_SIZE" ] || fail "size is $size, expected $VSTOR_SIZE"
[ "$size" -ge $((64 * MIB)) ] || fail "the test needs a disk of at least 64 MiB"
[ "$(cat "/sys/block/$DEV/ro")" = 0 ] || fail "$DISK is read-only"
if [ -n "${VSTOR_QUEUES:-}" ]; then
	want=$VSTOR_QUEUES
	[ "$want" -le "$(nproc)" ] || want=$(nproc) # blk-mq caps queues at the CPU count
	[ "$nqueues" -eq "$want" ] || fail "$nqueues hardware queues, expected $want"
fi

if [ -n "${VSTOR_HOST_PATTERN:-}" ]; then
	step "read the pattern the host wrote at $VSTOR_HOST_PATTERN"
	pattern host >/tmp/host.want
	read_range "$VSTOR_HOST_PATTERN" $((SECTORS * 512)) >/tmp/host.got
	cmp /tmp/host.want /tmp/host.got || fail "host pattern mismatch at $VSTOR_HOST_PATTERN"
fi

if fio --enghelp 2>/dev/null | grep -qw libaio; then engine=libaio; else engine=psync; fi

step "fio random 4k writes + crc32c verify, 2 jobs x 16M, iodepth 8, $engine"
fio --name=rand --filename="$DISK" --rw=randwrite --bs=4k --size=16M \
	--numjobs=2 --offset_increment=16M --cpus_allowed=0-1 --cpus_allowed_policy=split \
	--direct=1 --ioengine="$engine" --iodepth=8 \
	--verify=crc32c --do_verify=1 --verify_fatal=1 --group_reporting \
	--output-format=terse --terse-version=3 >/tmp/fio-rand.out ||
	{
		cat /tmp/fio-rand.out
		fail "fio random write/verify"
	}
# terse v3: field 6 = read KiB, 47 = write KiB; a verify pass reads all it wrote
awk -F';' 'NF > 50 { printf "vstor-blk: fio %s: read %s KiB (%s IOPS), wrote %s KiB (%s IOPS), errors %s\n", $3, $6, $8, $47, $49, $5 }' /tmp/fio-rand.out

step "fio sequential 256k writes + crc32c verify, 8M at 32M"
fio --name=seq --filename="$DISK" --rw=write --bs=256k --size=8M --offset=32M \
	--direct=1 --ioengine="$engine" --iodepth=4 \
	--verify=crc32c --do_verify=1 --verify_fatal=1 \
	--output-format=terse --terse-version=3 >/tmp/fio-seq.out ||
	{
		cat /tmp/fio-seq.out
		fail "fio sequential write/verify"
	}
awk -F';' 'NF > 50 { printf "vstor-blk: fio %s: read %s KiB, wrote %s KiB, errors %s\n", $3, $6, $47, $5 }' /tmp/fio-seq.out

step "fio random mixed-size writes (512 B .. 128 KiB) + crc32c verify, 8M at 52M"
fio --name=mixed --filename="$DISK" --rw=randwrite --size=8M --offset=52M \
	--bssplit=512/10:4k/30:16k/20:64k/30:128k/10 --blockalign=512 \
	--direct=1 --ioengine="$engine" --iodepth=8 \
	--verify=crc32c --do_verify=1 --verify_fatal=1 \
	--output-format=terse --terse-version=3 >/tmp/fio-mixed.out ||
	{
		cat /tmp/fio-mixed.out
		fail "fio mixed-size write/verify"
	}
awk -F';' 'NF > 50 { printf "vstor-blk: fio %s: read %s KiB, wrote %s KiB, errors %s\n", $3, $6, $47, $5 }' /tmp/fio-mixed.out

# Each request queue must have completed requests (fio ran one job per CPU and
# blk-mq maps each CPU to its own queue).  The MSI-X vectors are named
# virtioN-req.Q; they are absent if the vectors are shared, then skip this.
if [ "$nqueues" -gt 1 ]; then
	vdev=$(basename "$(readlink -f "/sys/block/$DEV/device")")
	irqs=$(awk -v pfx="$vdev-req." 'index($NF, pfx) == 1 {
		n = 0; for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) n += $i
		printf "%s=%d ", $NF, n }' /proc/interrupts)
	echo "vstor-blk: completions (interrupts) per queue: ${irqs:-none found}"
	for q in $irqs; do
		[ "${q#*=}" -gt 0 ] || fail "queue ${q%=*} completed no request"
	done
fi

step "flush"
sync
blockdev --flushbufs "$DISK"

if [ "$discard_max" -gt 0 ]; then
	step "discard [0, 1M)"
	tr '\000' '\245' </dev/zero | dd of="$DISK" bs=64k count=16 iflag=fullblock oflag=direct conv=fsync 2>/dev/null
	[ "$(nonzero_bytes 0 $MIB)" -eq $MIB ] || fail "fill before discard did not read back"
	"$BLKDISCARD" -o 0 -l $MIB "$DISK" || fail "blkdiscard"
	left=$(nonzero_bytes 0 $MIB)
	echo "vstor-blk: $left non-zero bytes left after discard"
	if [ "${VSTOR_DISCARD_ZEROES:-0}" = 1 ] && [ "$left" -ne 0 ]; then
		fail "discarded range is not zero ($left non-zero bytes)"
	fi
else
	step "discard: not advertised, skipped"
fi

step "write zeroes (BLKZEROOUT) [1M, 2M)"
tr '\000' '\132' </dev/zero | dd of="$DISK" bs=64k count=16 seek=16 iflag=fullblock oflag=direct conv=fsync 2>/dev/null
[ "$(nonzero_bytes $MIB $MIB)" -eq $MIB ] || fail "fill before write-zeroes did not read back"
"$BLKDISCARD" -z -o $MIB -l $MIB "$DISK" || fail "blkdiscard -z"
left=$(nonzero_bytes $MIB $MIB)
[ "$left" -eq 0 ] || fail "zeroed range has $left non-zero bytes"

if [ -n "${VSTOR_GUEST_PATTERN:-}" ]; then
	step "write the guest pattern at $VSTOR_GUEST_PATTERN"
	pattern guest >/tmp/guest.want
	dd if=/tmp/guest.want of="$DISK" bs=4096 seek=$((VSTOR_GUEST_PATTERN / 4096)) \
		oflag=direct conv=fsync,notrunc 2>/dev/null || fail "writing the guest pattern"
	read_range "$VSTOR_GUEST_PATTERN" $((SECTORS * 512)) >/tmp/guest.got
	cmp /tmp/guest.want /tmp/guest.got || fail "guest pattern did not read back"
fi

sync
blockdev --flushbufs "$DISK"
step "all checks passed"

#!/usr/bin/env bash
# qcow2-bench.sh — the qcow2 driver: `vstor img bench` vs `qemu-img bench`, same images, same
# request pattern, in one run, reported as IOPS ratios.
#
# Usage: benches/scripts/qcow2-bench.sh [--quick] [--rounds N] [--count N] [--cases LIST]
#                                       [--caches LIST]
#
#   --quick      smoke check for CI (< 30 s): 1 round, few requests, a 64 MiB image. Fails
#                only if a tool fails, never on the figures. Results go to the work dir.
#   --rounds N   measurements per tool and case (default 5); the median is reported
#   --count N    requests per measurement (default 200000; QD1 cases use a quarter)
#   --cases L    comma-separated subset of: read-qd1,read-qd32,overwrite-qd32,alloc-qd32
#                (default: all)
#   --caches L   comma-separated cache modes to run every case in: none (O_DIRECT: the disk
#                and the host filesystem set the pace) and writeback (page cache: the
#                software path sets it) (default: none,writeback)
#
# Cases (4 KiB requests, both tools with `-t CACHE -i io_uring`, sequential offsets with a
# 4 KiB step as qemu-img bench does, wrapping at the end of the image):
#   read-qd1        reads, 1 in flight, on a fully allocated qcow2 image (64 KiB clusters)
#   read-qd32       the same with 32 in flight
#   overwrite-qd32  writes into allocated clusters, 32 in flight
#   alloc-qd32      writes into a fresh empty image (a new one every measurement), so every
#                   cluster is allocated during the run (L2 and refcount updates included)
#
# Fairness: same image file, cache mode, engine and request pattern on both sides; in
# writeback mode the page cache is warmed (the image read once) before every measurement.
# Every round runs each case with both tools back to back, the order alternating between
# rounds, and the ratio of each pair is taken before the median, so slow drifts in machine
# load cancel. IOPS come from the "Run completed in S seconds" line each tool prints (the
# timed loop only, without process start and image open); where a tool does not print it,
# the wall time of the process is used instead.
#
# Environment: WORK_DIR (images; default target/qcow2-bench; must support O_DIRECT, so not
# tmpfs), VSTOR (a prebuilt vstor binary; default: cargo build --release -p vstor-cli),
# QEMU_IMG (default from PATH), RESULTS (default benches/results/qcow2.md, or
# WORK_DIR/quick.md with --quick).
set -euo pipefail

ROUNDS=5
COUNT=200000
CASES=read-qd1,read-qd32,overwrite-qd32,alloc-qd32
CACHES=none,writeback
QUICK=0
IMG_BYTES=$((1024 * 1024 * 1024))
BS=4096
CLUSTER=65536

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --count) COUNT=$2; shift ;;
    --cases) CASES=$2; shift ;;
    --caches) CACHES=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "qcow2-bench: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if ((QUICK)); then
    ROUNDS=1
    COUNT=4000
    IMG_BYTES=$((64 * 1024 * 1024))
fi

QEMU_IMG=${QEMU_IMG:-qemu-img}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK_DIR=${WORK_DIR:-$TARGET_DIR/qcow2-bench}
if ((QUICK)); then RESULTS=${RESULTS:-$WORK_DIR/quick.md}; else RESULTS=${RESULTS:-$ROOT/benches/results/qcow2.md}; fi
FULL=$WORK_DIR/full.qcow2
FRESH=$WORK_DIR/fresh.qcow2

die() { echo "qcow2-bench: $*" >&2; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $COUNT =~ ^[1-9][0-9]*$ ]] || die "--count must be a positive integer"
for tool in awk "$QEMU_IMG" qemu-io; do
    command -v "$tool" >/dev/null || die "$tool not found (install qemu-utils)"
done

cleanup() { rm -f "$FULL" "$FRESH"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n ${VSTOR:-} ]]; then
    [[ -x $VSTOR ]] || die "VSTOR=$VSTOR is not executable"
else
    command -v cargo >/dev/null || die "cargo not found (or set VSTOR)"
    echo "== building vstor (release)" >&2
    (cd "$ROOT" && cargo build --release -p vstor-cli >&2)
    VSTOR=$TARGET_DIR/release/vstor
    [[ -x $VSTOR ]] || die "$VSTOR was not built"
fi
"$VSTOR" img bench --help >/dev/null 2>&1 || die "$VSTOR has no 'img bench' command"

mkdir -p "$WORK_DIR" "$(dirname "$RESULTS")"

IFS=, read -r -a case_list <<<"$CASES"
IFS=, read -r -a cache_list <<<"$CACHES"
for m in "${cache_list[@]}"; do
    [[ $m =~ ^(none|writeback)$ ]] || die "unknown cache mode $m"
done
for c in "${case_list[@]}"; do
    [[ $c =~ ^(read-qd1|read-qd32|overwrite-qd32|alloc-qd32)$ ]] || die "unknown case $c"
done

# The engine: io_uring where this qemu-img has it (Debian's 7.2 and 10.0 do), else Linux
# AIO on both sides (vstor: its thread engine, the closest it has).
echo "== writing a $((IMG_BYTES >> 20)) MiB fully allocated qcow2 image at $FULL" >&2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=$CLUSTER "$FULL" "$IMG_BYTES"
fill=()
for ((off = 0; off < IMG_BYTES; off += 64 << 20)); do fill+=(-c "write -P 0x5a $off $((64 << 20))"); done
qemu-io -f qcow2 -t none "${fill[@]}" "$FULL" >/dev/null
AIO=io_uring
VSTOR_AIO=io_uring
if ! "$QEMU_IMG" bench -f qcow2 -c 1 -d 1 -s $BS -t none -i io_uring "$FULL" >/dev/null 2>&1; then
    AIO=native
    VSTOR_AIO=threads
fi

# run_tool TOOL CASE CACHE: sets RESULT to the IOPS of one measurement.
run_tool() {
    local tool=$1 c=$2 cache=$3 img=$FULL depth=32 count=$COUNT write=() out t0 t1 secs
    case $c in
    read-qd1) depth=1; count=$((COUNT / 4)) ;;
    read-qd32) ;;
    overwrite-qd32) write=(-w) ;;
    alloc-qd32)
        write=(-w)
        img=$FRESH
        rm -f "$FRESH"
        "$QEMU_IMG" create -q -f qcow2 -o cluster_size=$CLUSTER "$FRESH" "$IMG_BYTES"
        # Every request allocates (or fills a cluster allocated by the one before): no wrap.
        ((count <= IMG_BYTES / BS)) || count=$((IMG_BYTES / BS))
        ;;
    esac
    ((count > 0)) || count=1
    if [[ $cache == writeback && $img == "$FULL" ]]; then
        # Warm the page cache for both tools alike: the O_DIRECT cases before invalidated it,
        # and whichever tool ran first would otherwise pay for reading it from the disk.
        cat "$img" >/dev/null
    fi
    t0=$(date +%s.%N)
    case $tool in
    vstor)
        out=$("$VSTOR" img bench -f qcow2 -c "$count" -d "$depth" -s $BS -t "$cache" \
            -i "$VSTOR_AIO" "${write[@]}" "$img" 2>&1) || { echo "$out" >&2; die "vstor img bench ($c) failed"; }
        ;;
    qemu)
        out=$("$QEMU_IMG" bench -f qcow2 -c "$count" -d "$depth" -s $BS -t "$cache" \
            -i "$AIO" "${write[@]}" "$img" 2>&1) || { echo "$out" >&2; die "qemu-img bench ($c) failed"; }
        ;;
    esac
    t1=$(date +%s.%N)
    secs=$(sed -n 's/.*[Cc]ompleted in \([0-9.e+-]*\) s.*/\1/p' <<<"$out" | tail -1)
    [[ -n $secs ]] || secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    RESULT=$(awk -v n="$count" -v s="$secs" 'BEGIN { print (s > 0 ? n / s : 0) }')
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
minmax() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f", lo, hi }'; }

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A iops ratio
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order="vstor qemu"; else order="qemu vstor"; fi
    for m in "${cache_list[@]}"; do
        for c in "${case_list[@]}"; do
            for tool in $order; do
                echo "== round $round/$ROUNDS: $tool $c cache=$m" >&2
                run_tool "$tool" "$c" "$m"
                iops[$tool/$c/$m]+="$RESULT "
                [[ $tool == vstor ]] && v_last=$RESULT || q_last=$RESULT
            done
            ratio[$c/$m]+="$(awk -v v="$v_last" -v q="$q_last" 'BEGIN { print (q > 0 ? v / q : 0) }') "
        done
    done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || rev+="+dirty"
cmd="benches/scripts/qcow2-bench.sh"
((QUICK)) && cmd+=" --quick" || cmd+=" --rounds $ROUNDS --count $COUNT"
[[ $CASES == read-qd1,read-qd32,overwrite-qd32,alloc-qd32 ]] || cmd+=" --cases $CASES"
[[ $CACHES == none,writeback ]] || cmd+=" --caches $CACHES"
{
    echo "# qcow2: vstor img bench vs qemu-img bench"
    echo
    echo "- command: \`$cmd\`"
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); vstor $rev; $("$QEMU_IMG" --version | head -1)"
    echo "- host: $(uname -sr), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')); load average $load_start at start, $load_end at end"
    echo "- image: $((IMG_BYTES >> 20)) MiB qcow2, ${CLUSTER}-byte clusters, in $(df --output=fstype "$WORK_DIR" | tail -1); requests of $BS bytes, sequential with a $BS-byte step; cache modes: $CACHES (none = O_DIRECT), qemu aio=$AIO, vstor aio=$VSTOR_AIO"
    echo "- $COUNT requests per measurement ($((COUNT / 4)) for QD1); median of $ROUNDS interleaved pair(s); ratio: median over rounds of (vstor IOPS / qemu-img IOPS) in the same round, with the range"
    echo
    echo "| case | cache | vstor IOPS | qemu-img IOPS | vstor/qemu | range |"
    echo "|---|---|---:|---:|---:|---:|"
    for m in "${cache_list[@]}"; do
        for c in "${case_list[@]}"; do
            k=$c/$m
            awk -v c="$c" -v m="$m" -v v="$(med "${iops[vstor/$k]}")" -v q="$(med "${iops[qemu/$k]}")" \
                -v r="$(med "${ratio[$k]}")" -v range="$(minmax "${ratio[$k]}")" \
                'BEGIN { printf "| %s | %s | %.0f | %.0f | %.2f | %s |\n", c, m, v, q, r, range }'
        done
    done
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"

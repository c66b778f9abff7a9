#!/usr/bin/env bash
# scsi-bench.sh — virtio-scsi vs virtio-blk: 4 KiB random reads at QD32 through the guest-free
# in-process request path (each crate's driver harness, the device's queue handler, the same
# backend), measured side by side in one process, reported as IOPS ratios.
#
# Usage: benches/scripts/scsi-bench.sh [--quick] [--rounds N] [--count N] [--backends LIST]
#
#   --quick       smoke check for CI (< 30 s): 1 round, few requests, a 64 MiB file. Fails
#                 only if the benchmark fails, never on the figures. Results go to the work dir.
#   --rounds N    interleaved rounds (default 7); the median of the per-round ratios is reported
#   --count N     requests per side per round (default 200000)
#   --backends L  comma-separated subset of: file (a 256 MiB raw file in the page cache, opened
#                 with vstor_blockdev::open, writeback cache, automatic engine), null (a null
#                 device, no memset), memory (an in-memory device) (default: file,null,memory)
#
# What runs (benches/src/bin/scsi_vs_blk.rs): batches of 32 requests published at once, one
# run of the queue (virtio-blk waits for its engine's completions), then the used ring is
# reaped. virtio-blk: IN header, 4 KiB data-in, status; virtio-scsi: command header with
# READ(10), response with the 96-byte sense buffer, 4 KiB data-in. The same pseudo-random LBA
# sequence on both sides. Every round runs both sides back to back, the order alternating
# between rounds, and the ratio (scsi IOPS / blk IOPS) is taken per round before the median,
# so drifts in machine load cancel. The target is scsi/blk >= 0.90.
#
# Environment: CARGO_TARGET_DIR (default: target), TMPDIR (where the file backend lives; the
# page cache must hold it), RESULTS (default benches/results/scsi.md, or
# CARGO_TARGET_DIR/scsi-bench/quick.md with --quick).
set -euo pipefail

ROUNDS=7
COUNT=200000
BACKENDS=file,null,memory
QUICK=0
SIZE_MIB=256

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --count) COUNT=$2; shift ;;
    --backends) BACKENDS=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "scsi-bench: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if ((QUICK)); then
    ROUNDS=1
    COUNT=20000
    SIZE_MIB=64
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK_DIR=$TARGET_DIR/scsi-bench
if ((QUICK)); then RESULTS=${RESULTS:-$WORK_DIR/quick.md}; else RESULTS=${RESULTS:-$ROOT/benches/results/scsi.md}; fi

die() { echo "scsi-bench: $*" >&2; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $COUNT =~ ^[1-9][0-9]*$ ]] || die "--count must be a positive integer"
IFS=, read -r -a backend_list <<<"$BACKENDS"
for b in "${backend_list[@]}"; do
    [[ $b =~ ^(file|null|memory)$ ]] || die "unknown backend $b"
done
command -v cargo >/dev/null || die "cargo not found"

echo "== building scsi_vs_blk (release)" >&2
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p vstor-benches --bin scsi_vs_blk >&2)
BIN=$TARGET_DIR/release/scsi_vs_blk
[[ -x $BIN ]] || die "$BIN was not built"
mkdir -p "$WORK_DIR" "$(dirname "$RESULTS")"

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
rows=$("$BIN" --rounds "$ROUNDS" --count "$COUNT" --backends "$BACKENDS" --size "$SIZE_MIB") ||
    die "scsi_vs_blk failed"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || rev+="+dirty"
cmd="benches/scripts/scsi-bench.sh"
((QUICK)) && cmd+=" --quick" || cmd+=" --rounds $ROUNDS --count $COUNT"
[[ $BACKENDS == file,null,memory ]] || cmd+=" --backends $BACKENDS"
{
    echo "# virtio-scsi vs virtio-blk: in-process request path, 4 KiB random reads, QD32"
    echo
    echo "- command: \`$cmd\`"
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); vstor $rev"
    echo "- host: $(uname -sr), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')); load average $load_start at start, $load_end at end"
    echo "- backends: file = ${SIZE_MIB} MiB raw file in the page cache (vstor_blockdev::open, writeback, automatic engine); null = null device; memory = in-memory device; the same device object behind both sides"
    echo "- $COUNT requests per side per round, batches of 32; $ROUNDS interleaved round(s); scsi/blk: median over rounds of (scsi IOPS / blk IOPS) in the same round, with the range. IOPS columns are medians, for orientation only (machine-dependent); compare the ratios."
    echo
    echo "| backend | blk IOPS | scsi IOPS | scsi/blk | range |"
    echo "|---|---:|---:|---:|---:|"
    echo "$rows"
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"

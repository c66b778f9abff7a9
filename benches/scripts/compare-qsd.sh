#!/usr/bin/env bash
# compare-qsd.sh — `vstor serve blk` vs `qemu-storage-daemon --export type=vhost-user-blk`,
# in one run, driven by the same client (`vstor bench`, libblkio's virtio-blk-vhost-user
# driver), reported as IOPS ratios.
#
# Usage: benches/scripts/compare-qsd.sh [--quick] [--rounds N] [--seconds S] [--cases LIST]
#
#   --quick      smoke check for CI: 1 round of 1 s per case on a 64 MiB image. Fails only if a
#                server or a bench run fails, never on the figures. Results go to the work dir.
#   --rounds N   measurements per server and case (default 5); the median is reported
#   --seconds S  length of each measurement (default 5)
#   --cases L    comma-separated subset of: null-qd1,null-qd32,file-qd1,file-qd32,
#                direct-qd1,direct-qd32 (default: all)
#
# Cases (4k random reads, 1 queue of 256 entries, fresh server process per measurement):
#   null    vstor `--image null:SIZE` vs qsd `driver=null-co,read-zeroes=off`: neither side
#           touches the data buffers (vstor's null device does not zero-fill unless asked).
#   file    a raw file read through the host page cache (both sides writeback, io_uring),
#           the cache warmed before every measurement: the software path with a real engine.
#   direct  the same file with O_DIRECT (vstor `--cache none`, qsd `cache.direct=on`), both
#           io_uring: mostly measures the disk.
#
# Fairness: same client, queue count, queue size, engine and cache mode on both sides;
# nothing is pinned (on a machine with few CPUs the client and the server share them). Every
# round runs each case on both servers back to back, the order alternating between rounds, and
# the ratio of each pair is taken before the median, so slow drifts in machine load cancel.
# The server CPU columns are the server process's user+system time during the run divided by
# the requests completed (from /proc/PID/stat): a figure that depends less on the machine's
# noise than IOPS.
#
# Environment: QSD (qemu-storage-daemon binary, default from PATH), WORK_DIR (socket, logs and
# image; default target/compare-qsd; must support O_DIRECT, so not tmpfs), VSTOR (a prebuilt
# vstor binary; default: cargo build --release -p vstor-cli), RESULTS (default
# benches/results/latest.md, or WORK_DIR/quick.md with --quick).
set -euo pipefail

ROUNDS=5
SECONDS_PER_RUN=5
CASES=null-qd1,null-qd32,file-qd1,file-qd32,direct-qd1,direct-qd32
QUICK=0
IMG_BYTES=$((1024 * 1024 * 1024))

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --seconds) SECONDS_PER_RUN=$2; shift ;;
    --cases) CASES=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare-qsd: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if ((QUICK)); then
    ROUNDS=1
    SECONDS_PER_RUN=1
    IMG_BYTES=$((64 * 1024 * 1024))
fi

QSD=${QSD:-qemu-storage-daemon}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK_DIR=${WORK_DIR:-$TARGET_DIR/compare-qsd}
if ((QUICK)); then RESULTS=${RESULTS:-$WORK_DIR/quick.md}; else RESULTS=${RESULTS:-$ROOT/benches/results/latest.md}; fi
SOCK=$WORK_DIR/blk.sock
IMG=$WORK_DIR/disk.raw
QUEUE_SIZE=256
CLK_TCK=$(getconf CLK_TCK)

die() { echo "compare-qsd: $*" >&2; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
for tool in jq awk "$QSD"; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    [[ -n "$SERVER_PID" ]] && { wait "$SERVER_PID" 2>/dev/null || true; }
    SERVER_PID=""
    rm -f "$SOCK"
}
cleanup() {
    stop_server
    rm -f "$IMG"
}
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

mkdir -p "$WORK_DIR" "$(dirname "$RESULTS")"
rm -f "$SOCK"

IFS=, read -r -a case_list <<<"$CASES"
need_file=0
for c in "${case_list[@]}"; do
    [[ $c =~ ^(null|file|direct)-qd[1-9][0-9]*$ ]] || die "unknown case $c"
    [[ $c == null-* ]] || need_file=1
done
if ((need_file)); then
    echo "== writing a $((IMG_BYTES >> 20)) MiB raw image at $IMG (allocated, not sparse)" >&2
    dd if=/dev/zero of="$IMG" bs=1M count=$((IMG_BYTES >> 20)) oflag=direct status=none
    sync
fi

# The QEMU engine: io_uring where this qsd build has it (Debian's 7.2 and 10.0 do), else
# Linux AIO for O_DIRECT and the thread pool for buffered I/O; vstor follows suit so both
# sides always use the same kind of engine.
QSD_URING=1
if ((need_file)); then
    rm -f "$SOCK"
    timeout 10 "$QSD" --blockdev "driver=file,node-name=probe,filename=$IMG,aio=io_uring" \
        --export "type=vhost-user-blk,id=probe,node-name=probe,addr.type=unix,addr.path=$SOCK" \
        </dev/null >/dev/null 2>"$WORK_DIR/probe.log" &
    probe=$!
    for _ in $(seq 100); do
        [[ -S $SOCK ]] && break
        kill -0 "$probe" 2>/dev/null || break
        sleep 0.05
    done
    [[ -S $SOCK ]] || QSD_URING=0
    kill -TERM "$probe" 2>/dev/null || true
    wait "$probe" 2>/dev/null || true
    rm -f "$SOCK"
fi

# qsd_args BACKEND: the --blockdev options of the QEMU side.
qsd_blockdev() {
    case $1 in
    null) echo "driver=null-co,node-name=disk,size=$IMG_BYTES,read-zeroes=off" ;;
    file)
        if ((QSD_URING)); then aio=io_uring; else aio=threads; fi
        echo "driver=file,node-name=disk,filename=$IMG,cache.direct=off,aio=$aio"
        ;;
    direct)
        if ((QSD_URING)); then aio=io_uring; else aio=native; fi
        echo "driver=file,node-name=disk,filename=$IMG,cache.direct=on,aio=$aio"
        ;;
    esac
}
vstor_image_args() {
    local aio=io_uring
    ((QSD_URING)) || aio=threads
    case $1 in
    null) echo "--image null:$IMG_BYTES" ;;
    file) echo "--image $IMG --format raw --cache writeback --aio $aio" ;;
    direct) echo "--image $IMG --format raw --cache none --aio $aio" ;;
    esac
}

# start_server SERVER BACKEND: starts it in the background and waits for its socket.
start_server() {
    local server=$1 backend=$2 log=$WORK_DIR/$1-$2.log
    rm -f "$SOCK"
    case $server in
    vstor)
        # shellcheck disable=SC2046 # word splitting of the image arguments is intended
        "$VSTOR" serve blk $(vstor_image_args "$backend") --socket "$SOCK" --queues 1 \
            --queue-size "$QUEUE_SIZE" </dev/null >/dev/null 2>"$log" &
        ;;
    qsd)
        "$QSD" --blockdev "$(qsd_blockdev "$backend")" \
            --export "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=1" \
            </dev/null >/dev/null 2>"$log" &
        ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 200); do
        [[ -S $SOCK ]] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$log" >&2
    die "$server ($backend) did not create $SOCK"
}

# cpu_ticks PID: user+system clock ticks of the process (all threads).
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# measure SERVER BACKEND QD: sets RESULT to "iops cpu_us_per_io p50_us" of one run. (Not run
# in a subshell, so SERVER_PID stays visible to the cleanup trap.)
measure() {
    local server=$1 backend=$2 qd=$3 out t0 t1
    if [[ $backend == file ]]; then
        cat "$IMG" >/dev/null # the whole image in the page cache, for both sides alike
    fi
    start_server "$server" "$backend"
    t0=$(cpu_ticks "$SERVER_PID")
    if ! out=$("$VSTOR" bench --socket "$SOCK" --rw randread --bs 4k --iodepth "$qd" \
        --queues 1 --seconds "$SECONDS_PER_RUN" --json); then
        cat "$WORK_DIR/$server-$backend.log" >&2
        die "vstor bench against $server ($backend, qd $qd) failed"
    fi
    t1=$(cpu_ticks "$SERVER_PID")
    kill -0 "$SERVER_PID" 2>/dev/null || die "$server ($backend) exited during the run"
    stop_server
    RESULT=$(jq -r --argjson t "$((t1 - t0))" --argjson hz "$CLK_TCK" \
        '"\(.iops) \(if (.reads + .writes) > 0 then $t / $hz * 1e6 / (.reads + .writes) else 0 end) \(.lat_us.p50)"' <<<"$out")
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
minmax() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f", lo, hi }'; }

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A iops cpu p50 ratio
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order="vstor qsd"; else order="qsd vstor"; fi
    for c in "${case_list[@]}"; do
        backend=${c%-qd*}
        qd=${c#*-qd}
        for server in $order; do
            echo "== round $round/$ROUNDS: $server $c (${SECONDS_PER_RUN}s)" >&2
            measure "$server" "$backend" "$qd"
            read -r i u l <<<"$RESULT"
            iops[$server/$c]+="$i "
            cpu[$server/$c]+="$u "
            p50[$server/$c]+="$l "
            [[ $server == vstor ]] && v_last=$i || q_last=$i
        done
        ratio[$c]+="$(awk -v v="$v_last" -v q="$q_last" 'BEGIN { print (q > 0 ? v / q : 0) }') "
    done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || rev+="+dirty"
if ((QSD_URING)); then engines="io_uring on both sides"; else engines="no io_uring in this qsd: qsd aio=native (direct) / threads (file), vstor --aio threads"; fi
cmd="benches/scripts/compare-qsd.sh"
((QUICK)) && cmd+=" --quick" || cmd+=" --rounds $ROUNDS --seconds $SECONDS_PER_RUN"
[[ $CASES == null-qd1,null-qd32,file-qd1,file-qd32,direct-qd1,direct-qd32 ]] || cmd+=" --cases $CASES"
{
    echo "# vstor serve blk vs qemu-storage-daemon (vhost-user-blk)"
    echo
    echo "- command: \`$cmd\`"
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); vstor $rev; $($QSD --version | head -1)"
    echo "- host: $(uname -sr), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')); load average $load_start at start, $load_end at end"
    echo "- client: vstor bench (libblkio virtio-blk-vhost-user), 4k randread, 1 queue of $QUEUE_SIZE, ${SECONDS_PER_RUN}s per run, median of $ROUNDS interleaved pair(s); nothing pinned"
    echo "- null: vstor \`null:\` vs qsd \`null-co,read-zeroes=off\`; file: $((IMG_BYTES >> 20)) MiB raw file, page cache (writeback, warmed); direct: same file, O_DIRECT; $engines"
    echo "- ratio: median over rounds of (vstor IOPS / qsd IOPS) in the same round, with the range; CPU: server user+sys µs per request"
    echo
    echo "| case | vstor IOPS | qsd IOPS | vstor/qsd | range | vstor CPU µs/IO | qsd CPU µs/IO |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for c in "${case_list[@]}"; do
        awk -v c="$c" -v v="$(med "${iops[vstor/$c]}")" -v q="$(med "${iops[qsd/$c]}")" \
            -v r="$(med "${ratio[$c]}")" -v range="$(minmax "${ratio[$c]}")" \
            -v vc="$(med "${cpu[vstor/$c]}")" -v qc="$(med "${cpu[qsd/$c]}")" \
            'BEGIN { printf "| %s | %.0f | %.0f | %.2f | %s | %.2f | %.2f |\n", c, v, q, r, range, vc, qc }'
    done
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"

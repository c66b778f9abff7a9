#!/usr/bin/env bash
# The device-model cost of one 4 KiB request through the C ABI (libvstor), null backend, no
# data copy: ns/request (wall clock, best of N runs) and instructions/request under callgrind.
#
#   benches/scripts/capi-bench.sh [--quick] [--no-callgrind] [--out FILE]
#
# Builds libvstor in release (cargo build --release -p vstor-capi), builds benches/c/capi_bench.c
# with -O2 against target/release/libvstor.so, checks that the bench catches failed requests
# (--inject-error must fail), then for read and write at QD1 and QD32:
#   - timing: 5 runs of 1M requests (best reported), plus the same with every
#     vstor_device_kick timed on its own ("in kick": the device model without the guest side);
#   - callgrind, twice: --toggle-collect=vstor_device_kick (everything under the kick: the vstor
#     side only, the C interrupt callback included) and the whole process (for context: guest
#     side, setup and teardown included), each divided by the requests the process ran.
# Prints a markdown table and writes it to benches/results/capi.md (--quick: to
# target/capi-bench/capi-quick.md, so CI leaves the tree clean; --out overrides both). In an
# existing results file, everything from the line
#   <!-- everything below this line is kept by capi-bench.sh -->
# on (the hotspot analysis) is kept.
#
# --quick: small counts for CI (well under 30 s once libvstor is built). Any failed request
# (status byte not VIRTIO_BLK_S_OK, wrong used length, lost or extra completion) fails the
# script in every mode; missing the performance targets never does (PASS/MISS is printed; the
# machines are noisy).
#
# The callgrind profiles stay in target/capi-bench/callgrind.<case>.{kick,all}.out; inspect
# them with, for instance:
#   callgrind_annotate --inclusive=yes target/capi-bench/callgrind.read-qd32.kick.out | head -40
#   callgrind_annotate --tree=caller target/capi-bench/callgrind.read-qd32.kick.out
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

QUICK=0
CALLGRIND=1
OUT_MD=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-callgrind) CALLGRIND=0 ;;
        --out) OUT_MD=${2:?--out needs a file}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "capi-bench: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

TARGET_NS=300
TARGET_INSTR=2000
if [ "$QUICK" = 1 ]; then
    REQUESTS=100000; RUNS=3; WARMUP=5000
    CG_REQUESTS=5000; CG_WARMUP=500
    : "${OUT_MD:=target/capi-bench/capi-quick.md}"
else
    REQUESTS=1000000; RUNS=5; WARMUP=20000
    CG_REQUESTS=100000; CG_WARMUP=2000
    : "${OUT_MD:=benches/results/capi.md}"
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
LIB=$TARGET_DIR/release/libvstor.so
BUILD=$TARGET_DIR/capi-bench
BENCH=$BUILD/capi_bench
CC=${CC:-cc}

echo "== building libvstor (release)" >&2
cargo build --release -p vstor-capi --quiet
mkdir -p "$BUILD"
# The library's soname is libvstor.so.1: give the loader that name next to the binary.
ln -sf "$LIB" "$BUILD/libvstor.so.1"
echo "== building $BENCH" >&2
$CC -O2 -g -std=c11 -Wall -Wextra -Iinclude -Iexamples/c benches/c/capi_bench.c \
    -o "$BENCH" "$LIB" -Wl,-rpath,'$ORIGIN'

# Self-test: a bench that cannot see failed requests would time failures.
if "$BENCH" --requests 20000 --runs 1 --warmup 0 --quiet --inject-error >/dev/null 2>&1; then
    echo "capi-bench: FAIL: --inject-error did not make the bench fail" >&2
    exit 1
fi

HAVE_VALGRIND=0
if [ "$CALLGRIND" = 1 ]; then
    if command -v valgrind >/dev/null 2>&1; then
        HAVE_VALGRIND=1
    else
        echo "capi-bench: valgrind not found: instructions/request not measured" >&2
    fi
fi

field() { # field NAME "RESULT line"
    sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"
}

# callgrind CASE KIND ARGS...: runs the bench under callgrind, prints "instructions requests".
callgrind() {
    local name=$1 kind=$2; shift 2
    local file=$BUILD/callgrind.$name.$kind.out toggle=()
    [ "$kind" = kick ] && toggle=(--toggle-collect=vstor_device_kick)
    local res
    res=$(valgrind --tool=callgrind --callgrind-out-file="$file" "${toggle[@]}" \
        "$BENCH" "$@" --requests "$CG_REQUESTS" --warmup "$CG_WARMUP" --runs 1 --quiet \
        2>"$file.log") || {
        cat "$file.log" >&2
        echo "capi-bench: FAIL: $name under callgrind" >&2
        exit 1
    }
    local instr n
    instr=$(sed -n 's/^summary: //p' "$file")
    n=$(field total_requests "$res")
    if [ -z "$instr" ] || [ -z "$n" ] || [ "$n" = 0 ]; then
        echo "capi-bench: FAIL: no instruction count in $file" >&2
        exit 1
    fi
    echo "$instr $n"
}

per_req() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a / b }'; }
verdict() { # verdict VALUE TARGET -> PASS / MISS
    awk -v v="$1" -v t="$2" 'BEGIN { print (v != "n/a" && v + 0 <= t) ? "PASS" : "MISS" }'
}

CASES=(read-qd1 read-qd32 write-qd1 write-qd32)
ROWS=()
for c in "${CASES[@]}"; do
    op=${c%-qd*}; qd=${c#*-qd}
    args=(--op "$op" --qd "$qd")
    echo "== $c: timing ($RUNS x $REQUESTS requests)" >&2
    res=$("$BENCH" "${args[@]}" --requests "$REQUESTS" --runs "$RUNS" --warmup "$WARMUP" \
        --split --quiet) || { echo "capi-bench: FAIL: $c" >&2; exit 1; }
    echo "   $res" >&2
    ns=$(field ns_per_req "$res")
    kick_ns=$(field kick_ns_per_req "$res")
    rps=$(field req_per_s "$res")
    vstor_ir=n/a; all_ir=n/a
    if [ "$HAVE_VALGRIND" = 1 ]; then
        echo "== $c: callgrind ($CG_REQUESTS requests)" >&2
        # (assignments, not process substitutions: a failure here must stop the script)
        cg=$(callgrind "$c" kick "${args[@]}")
        vstor_ir=$(per_req $cg)
        cg=$(callgrind "$c" all "${args[@]}")
        all_ir=$(per_req $cg)
    fi
    ns_v=$(verdict "$kick_ns" "$TARGET_NS")
    ir_v=$(verdict "$vstor_ir" "$TARGET_INSTR")
    [ "$vstor_ir" = n/a ] && ir_v="n/a"
    ROWS+=("| $c | $ns | $kick_ns | $rps | $vstor_ir | $all_ir | ≤$TARGET_NS ns, ≤$TARGET_INSTR instr | ns $ns_v, instr $ir_v |")
done

# A hand-written analysis below the marker line in an existing results file is kept.
MARKER='<!-- everything below this line is kept by capi-bench.sh -->'
KEEP=""
if [ -f "$OUT_MD" ]; then
    KEEP=$(sed -n "/^$MARKER\$/,\$p" "$OUT_MD")
fi
{
    echo "# C ABI device-model cost per 4 KiB request (null backend, no data copy)"
    echo
    echo "- command: \`benches/scripts/capi-bench.sh$([ "$QUICK" = 1 ] && echo " --quick")\`"
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); vstor $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- capi virtio-core virtio-blk blockdev 2>/dev/null || echo ' (modified)'); $($CC --version | head -1); $(valgrind --version 2>/dev/null || echo 'no valgrind')"
    echo "- host: $(uname -sr), $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)); load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- bench: \`benches/c/capi_bench.c\`: \`null:1G\` with NULL options (reads do not touch the buffers), 1 queue of 256, EVENT_IDX, 3 descriptors per request (16-byte header, 4 KiB data, status), random 4 KiB-aligned sectors; QD requests added, published, one \`vstor_device_kick\` (null completes them inside it), used ring reaped, every status byte and used length checked"
    echo "- timing: best of $RUNS runs of $REQUESTS requests; \"loop\" is the whole guest+device loop, \"in kick\" only the time inside \`vstor_device_kick\` (each kick timed, timer cost subtracted, interleaved runs)"
    echo "- instructions: callgrind, $CG_REQUESTS requests (+$CG_WARMUP warm-up); \"vstor\" = inclusive cost under \`vstor_device_kick\` (\`--toggle-collect=vstor_device_kick\`), \"process\" = every instruction of the process (setup and the guest-side ring code included), both divided by the requests the process ran"
    echo "- targets (device model, judged on \"in kick\" ns and \"vstor\" instructions): ≤$TARGET_NS ns and ≤$TARGET_INSTR instructions per request"
    echo
    echo "| case | loop ns/req | in-kick ns/req | loop req/s | vstor instr/req | process instr/req | target | result |"
    echo "|---|---:|---:|---:|---:|---:|---|---|"
    printf '%s\n' "${ROWS[@]}"
    if [ -n "$KEEP" ]; then
        echo
        printf '%s\n' "$KEEP"
    fi
} >"$OUT_MD.tmp"
mv "$OUT_MD.tmp" "$OUT_MD"
cat "$OUT_MD"
echo >&2
echo "capi-bench: all requests succeeded; results in $OUT_MD" >&2

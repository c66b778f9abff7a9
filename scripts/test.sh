#!/usr/bin/env bash
# Runs every vstor test: formatting, clippy, unit/device/end-to-end tests (with io_uring and
# with the thread fallback), the fuzz corpus replay, the C ABI checks (header, ABI baseline, C
# hypervisor harness and misuse suite under valgrind and ASan, pkg-config install), the Linux
# guest test under TCG, and smoke runs of the benchmarks.
#
# Usage: scripts/test.sh [--quick]
#   --quick   skip the guest test and the benchmark smoke run (for fast local iterations;
#             CI always runs the full set)
# Missing system packages are installed first (scripts/install-deps.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=0
for arg in "$@"; do
	case $arg in
	--quick) QUICK=1 ;;
	-h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "test.sh: unknown argument $arg" >&2; exit 2 ;;
	esac
done

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

if [ "$QUICK" = 1 ]; then
	scripts/install-deps.sh --base
else
	scripts/install-deps.sh
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (io_uring where the kernel allows it)"
cargo test --workspace

step "block layer again with io_uring refused (thread fallback)"
VSTOR_DISABLE_IO_URING=1 cargo test -p vstor-blockdev -p vstor-cli

step "C ABI: header current, ABI against the capi/abi/ baseline"
scripts/gen-header.sh --check
scripts/check-abi.sh

step "C ABI: C11/C++17 header, C hypervisor harness and misuse suite (native, valgrind, ASan)"
tests/c/run.sh

step "C ABI: install with pkg-config, link shared and static"
tests/c-install/run.sh

if [ "$QUICK" = 1 ]; then
	step "done (--quick: guest test and benchmark smoke run skipped)"
	exit 0
fi

step "release build"
cargo build --release -p vstor-cli

step "Linux guest: vhost-user-blk-pci on vstor serve blk (TCG)"
tests/guest/run-blk.sh --backend vstor

step "Linux guest: the same on a qcow2 image"
tests/guest/run-blk.sh --backend vstor --format qcow2

step "Linux guest: vhost-user-scsi-pci on vstor serve scsi (sg3_utils, fio, hotplug, resize)"
tests/guest/run-scsi.sh --backend vstor

step "Linux guest: the same sg3_utils run on QEMU's own scsi-hd (the reference)"
tests/guest/run-scsi.sh --backend qemu
tests/guest/scsi-table.sh

step "benchmark smoke run against qemu-storage-daemon"
benches/scripts/compare-qsd.sh --quick

step "benchmark smoke run: C ABI cost per request (ns, callgrind instructions)"
benches/scripts/capi-bench.sh --quick

step "benchmark smoke run: virtio-scsi against virtio-blk in process"
benches/scripts/scsi-bench.sh --quick

step "benchmark smoke run: qcow2, vstor img bench against qemu-img bench"
benches/scripts/qcow2-bench.sh --quick

step "all tests passed"

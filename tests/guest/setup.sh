#!/usr/bin/env bash
# Install what the Linux guest tests (run-blk.sh) need, on Debian 12:
#   - host packages: QEMU (qemu-system-x86, qemu-utils, qemu-storage-daemon),
#     fio, sg3-utils, util-linux, kmod, cpio, xz-utils, zstd;
#   - the guest: Debian's kernel (linux-image-amd64) and busybox-static,
#     downloaded with `apt-get download` and unpacked into OUTDIR without
#     being installed, then packed with fio and blkdiscard into an initramfs.
#
#   tests/guest/setup.sh [OUTDIR]        (default: target/guest)
#
# Idempotent: installs only missing packages (with sudo unless root; Debian's
# qemu-system-x86 7.2 and qemu-utils are installed in one command, see lib.sh)
# and rebuilds the guest only when an input changed.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT=${1:-$REPO_ROOT/target/guest}

ensure_packages "${HOST_PACKAGES[@]}"
"$GUEST_DIR/build-initramfs.sh" "$OUT"

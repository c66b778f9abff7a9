#!/usr/bin/env bash
# Installs the Debian packages vstor's tests need, only those that are missing.
#
# Usage: scripts/install-deps.sh [--base]
#   --base   only what the cargo tests, the C ABI tests and the benchmark scripts need (jq,
#            valgrind, abigail-tools, pkg-config, g++, qemu-utils if qemu-img is missing);
#            without it also
#            the guest test's packages (QEMU system emulator, kernel, busybox, fio; see
#            tests/guest/setup.sh).
# Rust itself (stable, with rustfmt and clippy) must already be installed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_ONLY=0
[ "${1:-}" = --base ] && BASE_ONLY=1

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

missing=()
for pkg in jq valgrind abigail-tools pkg-config g++; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# qemu-img / qemu-io are the peers of the format tests. Machines ship qemu-utils 10.0; only if
# they are missing is Debian's installed (the guest test's setup installs it with
# qemu-system-x86 in one command, as the two must match).
if ! command -v qemu-img >/dev/null || ! command -v qemu-io >/dev/null; then
	echo "install-deps: installing qemu-utils (qemu-img, qemu-io)"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-utils
fi

for tool in cargo rustfmt cargo-clippy; do
	command -v "$tool" >/dev/null || { echo "install-deps: $tool not found (install Rust stable with rustfmt and clippy)" >&2; exit 1; }
done

if [ "$BASE_ONLY" = 0 ]; then
	"$ROOT/tests/guest/setup.sh"
fi

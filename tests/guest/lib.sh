# shellcheck shell=bash
# Helpers shared by build-initramfs.sh and run-blk.sh (sourced, not run).

# Absolute paths of this directory and of the workspace root.
GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$GUEST_DIR/../.." && pwd)
export GUEST_DIR REPO_ROOT

log() { printf '[vstor-guest] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

# True if the Debian package $1 is installed.
pkg_installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

# The missing ones among the Debian packages given as arguments, one a line.
missing_packages() {
	local p
	for p in "$@"; do
		pkg_installed "$p" || echo "$p"
	done
}

# Fail unless every Debian package given as an argument is installed.
require_packages() {
	local missing
	missing=$(missing_packages "$@" | tr '\n' ' ')
	[ -z "$missing" ] || die "missing packages: ${missing% }; run tests/guest/setup.sh"
}

# Install the Debian packages given as arguments that are not installed yet
# (with sudo unless root).
#
# Debian 12's qemu-system-x86 (7.2) cannot live beside a newer qemu-utils (10.0
# from backports is preinstalled on some machines: its Breaks forbids
# qemu-system-common < 8.0), so when qemu-system-x86 has to be installed,
# qemu-utils is requested in the same command at the very same version
# (downgrading it if needed) so that qemu-img and qemu-io stay (in 7.2
# qemu-storage-daemon comes with qemu-system-common).
ensure_packages() {
	local missing=() p sudo=()
	mapfile -t missing < <(missing_packages "$@")
	[ "${#missing[@]}" -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || die "missing packages (${missing[*]}); run as root or install them"
		sudo=(sudo)
	fi
	log "installing: ${missing[*]}"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
	local args=() ver
	for p in "${missing[@]}"; do
		case $p in
		qemu-utils) ;; # handled with qemu-system-x86 below, or on its own
		*) args+=("$p") ;;
		esac
	done
	if printf '%s\n' "${missing[@]}" | grep -qx 'qemu-system-x86'; then
		ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
		if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then die "no installable qemu-system-x86"; fi
		args+=("qemu-utils=$ver")
	elif printf '%s\n' "${missing[@]}" | grep -qx 'qemu-utils'; then
		args+=(qemu-utils)
	fi
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends --allow-downgrades "${args[@]}" >&2
}

# Packages the harness needs on the host.
# shellcheck disable=SC2034 # used by the scripts that source this file
HOST_PACKAGES=(qemu-system-x86 qemu-utils kmod cpio fio sg3-utils util-linux xz-utils zstd)

# Stops process $1 (a child of this shell): SIGTERM, then SIGKILL if it is still there after
# $2 tenths of a second (default 10). Sets STOPPED_STATUS to its exit status (0 if it was not
# running). Not for use in a command substitution: `wait` needs the parent shell.
# shellcheck disable=SC2034 # STOPPED_STATUS is read by the scripts that source this file
stop_process() {
	local pid=$1 tenths=${2:-10}
	STOPPED_STATUS=0
	[ -n "$pid" ] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		for _ in $(seq "$tenths"); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || STOPPED_STATUS=$?
}

# Kills the processes given as arguments (for EXIT traps: no status wanted).
kill_processes() {
	local pid
	for pid in "$@"; do
		if kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			sleep 1
			kill -9 "$pid" 2>/dev/null || true
		fi
	done
}

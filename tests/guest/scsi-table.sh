#!/usr/bin/env bash
# Join the command reports of run-scsi.sh for the vstor and qemu backends into
# a markdown table on stdout:
#   | command | vstor | QEMU scsi-hd |
# Each cell is ok, unsupported or fail; with --details a non-ok cell also
# shows the report's detail (the sense, or what was wrong).
#
# Usage:
#   tests/guest/scsi-table.sh [--details] [OUTDIR]
#   tests/guest/scsi-table.sh [--details] VSTOR_REPORT QEMU_REPORT
# OUTDIR (default: target/guest) holds scsi-vstor.report.txt and
# scsi-qemu.report.txt; a missing report gives a column of "-".
# Rows are in the order of the vstor report, then rows only QEMU's has.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DETAILS=0
args=()
while [ $# -gt 0 ]; do
	case $1 in
	--details) DETAILS=1; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) args+=("$1"); shift ;;
	esac
done
case ${#args[@]} in
0 | 1)
	dir=${args[0]:-$REPO_ROOT/target/guest}
	VSTOR=$dir/scsi-vstor.report.txt
	QEMU=$dir/scsi-qemu.report.txt
	;;
2) VSTOR=${args[0]} QEMU=${args[1]} ;;
*) die "too many arguments (see --help)" ;;
esac
[ -f "$VSTOR" ] || [ -f "$QEMU" ] || die "neither $VSTOR nor $QEMU exists: run tests/guest/run-scsi.sh first"
files=()
for f in "$VSTOR" "$QEMU"; do
	if [ -f "$f" ]; then
		files+=("$f")
	else
		log "no $f: its column is left empty"
		files+=(/dev/null)
	fi
done

# Report lines: NAME STATUS DETAIL...
awk -v details="$DETAILS" '
	function cell(s, d) {
		if (s == "") return "-"
		if (details && s != "ok" && d != "") {
			gsub(/\|/, "\\|", d)
			return s ": " d
		}
		return s
	}
	{ file = (FILENAME == ARGV[1]) ? 1 : 2 }
	{
		name = $1; status = $2
		detail = $0
		sub(/^[^ ]+ +[^ ]+ ?/, "", detail)
		if (!(name in seen)) { seen[name] = 1; order[++n] = name }
		st[file, name] = status; de[file, name] = detail
	}
	END {
		print "| command | vstor | QEMU scsi-hd |"
		print "|---|---|---|"
		for (i = 1; i <= n; i++) {
			k = order[i]
			printf "| %s | %s | %s |\n", k, cell(st[1, k], de[1, k]), cell(st[2, k], de[2, k])
		}
	}' "${files[@]}"

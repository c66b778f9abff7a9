# Deterministic data pattern shared by the host (run-blk.sh) and the guest
# (guest/blk.sh), so each side can check what the other one wrote.
#   awk -v tag=TAG -v sectors=N -f pattern.awk
# prints N 512-byte sectors; sector i is "vstor-TAG-<i>|" repeated and cut to
# 512 bytes, so a misplaced, torn or stale sector shows up in a byte compare.
BEGIN {
	for (i = 0; i < sectors; i++) {
		s = sprintf("vstor-%s-%06d|", tag, i)
		line = ""
		while (length(line) < 512)
			line = line s
		printf "%s", substr(line, 1, 512)
	}
}

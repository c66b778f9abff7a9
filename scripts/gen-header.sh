#!/usr/bin/env bash
# Regenerates include/vstor.h from capi/ with the pinned cbindgen.
#   scripts/gen-header.sh          write include/vstor.h
#   scripts/gen-header.sh --check  fail if the committed header is stale (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
CBINDGEN_VERSION=0.29.4
if ! cbindgen --version 2>/dev/null | grep -qx "cbindgen $CBINDGEN_VERSION"; then
    echo "installing cbindgen $CBINDGEN_VERSION" >&2
    cargo install --quiet --locked cbindgen --version "$CBINDGEN_VERSION"
fi
out=include/vstor.h
if [[ "${1:-}" == "--check" ]]; then
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    cbindgen -q --config capi/cbindgen.toml --crate vstor-capi --output "$tmp" capi
    if ! diff -u "$out" "$tmp"; then
        echo "include/vstor.h is stale: run scripts/gen-header.sh and commit it" >&2
        exit 1
    fi
    echo "include/vstor.h is current"
else
    cbindgen -q --config capi/cbindgen.toml --crate vstor-capi --output "$out" capi
    echo "wrote $out"
fi

#!/usr/bin/env bash
# Installs into a temporary prefix the way a packager would, then builds the
# C example against that copy through pkg-config alone and runs it: the
# header, libraries, SONAME links and oci-cache.pc must all be in place.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT

make -s -C "$root" install PREFIX="$prefix" >/dev/null
for f in include/oci_cache.h lib/liboci_cache.a lib/liboci_cache.so lib/liboci_cache.so.0 lib/pkgconfig/oci-cache.pc; do
    [ -e "$prefix/$f" ] || { echo "install-check: $prefix/$f is missing" >&2; exit 1; }
done

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
cc -std=c11 -Wall -Wextra -Werror -pedantic -o "$prefix/pull" "$root/examples-c/pull.c" \
    $(pkg-config --cflags --libs oci-cache)
needed=$(readelf -d "$prefix/pull" | sed -n 's/.*(NEEDED).*\[\(liboci_cache[^]]*\)\]/\1/p')
[ "$needed" = "liboci_cache.so.0" ] || { echo "install-check: pull needs '$needed', not liboci_cache.so.0" >&2; exit 1; }
# Run from the installed copy only: a usage message proves it loaded.
out=$(LD_LIBRARY_PATH="$prefix/lib" "$prefix/pull" 2>&1 || true)
case "$out" in
    *"usage:"*) echo "install-check: ok";;
    *) echo "install-check: pull did not start: $out" >&2; exit 1;;
esac

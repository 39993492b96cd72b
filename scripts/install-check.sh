#!/usr/bin/env bash
# Installs into a temporary prefix the way a packager would, then builds the
# C example (shared and static) and the Go example (the ocicache_pkgconfig
# tag) against that copy through pkg-config alone and runs them: the header,
# libraries, SONAME links and oci-cache.pc must all be in place. Last,
# `make uninstall` must remove every file install put there.
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
starts() {
    local out
    out=$(LD_LIBRARY_PATH="$prefix/lib" "$@" 2>&1 || true)
    case "$out" in
        *"usage:"*) ;;
        *) echo "install-check: $1 did not start: $out" >&2; exit 1;;
    esac
}
starts "$prefix/pull"

# Static: the archive plus Libs.private, as pkg-config --static gives them.
libs=$(pkg-config --static --libs-only-l oci-cache)
cc -std=c11 -Wall -Wextra -Werror -pedantic -o "$prefix/pull-static" "$root/examples-c/pull.c" \
    $(pkg-config --cflags oci-cache) "$prefix/lib/liboci_cache.a" ${libs/-loci_cache/}
if readelf -d "$prefix/pull-static" | grep -q 'NEEDED.*liboci_cache'; then
    echo "install-check: pull-static needs the shared library" >&2; exit 1
fi
starts "$prefix/pull-static"

# Go, with the tag that finds the library through pkg-config. Its own build
# cache, removed with the prefix: go's cache does not key on pkg-config's
# output, so a package built against an earlier temporary prefix would be
# reused and link against a directory that is gone.
export GOCACHE="$prefix/go-cache" GOPROXY=off
(cd "$root/go" && go vet -tags ocicache_pkgconfig ./... &&
    go build -tags ocicache_pkgconfig -o "$prefix/pull-go" ./example)
needed=$(readelf -d "$prefix/pull-go" | sed -n 's/.*(NEEDED).*\[\(liboci_cache[^]]*\)\]/\1/p')
[ "$needed" = "liboci_cache.so.0" ] || { echo "install-check: the Go example needs '$needed', not liboci_cache.so.0" >&2; exit 1; }
starts "$prefix/pull-go"

make -s -C "$root" uninstall PREFIX="$prefix" >/dev/null
rm -rf "$prefix/pull" "$prefix/pull-static" "$prefix/pull-go" "$GOCACHE"
left=$(find "$prefix" ! -type d)
[ -z "$left" ] || { echo "install-check: uninstall left behind:" $left >&2; exit 1; }
echo "install-check: ok"

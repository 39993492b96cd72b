#!/usr/bin/env bash
# Installs into a temporary prefix the way a packager would, then builds the
# C example (shared and static) and the Go example (the ocicache_pkgconfig
# tag) against that copy through pkg-config alone and runs them: the header,
# libraries, SONAME links and oci-cache.pc must all be in place. Then
# `make uninstall` must remove every file install put there. Last, a
# packager's DESTDIR install: exactly the expected files, the library and
# command line without debug sections (their debug info split beside), the
# command line running, and an uninstall that leaves the staging tree empty.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT

make -s -C "$root" install PREFIX="$prefix" >/dev/null
for f in include/oci_cache.h lib/liboci_cache.a lib/liboci_cache.so lib/liboci_cache.so.0 lib/pkgconfig/oci-cache.pc bin/oci-cache; do
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

# A packager's staging install: PREFIX=/usr under DESTDIR. The library and
# the command line carry no debug sections; their debug info sits where
# gdb looks for it (/usr/lib/debug + the file's path), named by their
# .gnu_debuglink.
stage=$prefix/stage
make -s -C "$root" install PREFIX=/usr DESTDIR="$stage" >/dev/null
so=$(cd "$stage/usr/lib" && echo liboci_cache.so.*.*.*)
expected="usr/bin/oci-cache
usr/include/oci_cache.h
usr/lib/debug/usr/bin/oci-cache.debug
usr/lib/debug/usr/lib/$so.debug
usr/lib/liboci_cache.a
usr/lib/liboci_cache.so
usr/lib/liboci_cache.so.0
usr/lib/$so
usr/lib/pkgconfig/oci-cache.pc"
got=$(cd "$stage" && find . ! -type d | sed 's|^\./||' | LC_ALL=C sort)
[ "$got" = "$(echo "$expected" | LC_ALL=C sort)" ] ||
    { echo "install-check: DESTDIR install made:" $got >&2; exit 1; }
grep -qx 'libdir=/usr/lib' "$stage/usr/lib/pkgconfig/oci-cache.pc" ||
    { echo "install-check: oci-cache.pc does not name /usr/lib" >&2; exit 1; }
# (.debug_gdb_scripts, which rustc puts in a program, is loaded data naming
# gdb's pretty-printers, not debug info.)
for f in "usr/lib/$so" usr/bin/oci-cache; do
    if readelf -S -W "$stage/$f" | grep '\.debug_' | grep -vq '\.debug_gdb_scripts'; then
        echo "install-check: $f has debug sections" >&2; exit 1
    fi
    link=$(readelf --string-dump=.gnu_debuglink "$stage/$f" 2>/dev/null | sed -n 's/^ *\[ *0\] *//p')
    [ "$link" = "$(basename "$f").debug" ] ||
        { echo "install-check: $f links its debug info as '$link'" >&2; exit 1; }
    readelf -S "$stage/usr/lib/debug/$f.debug" 2>/dev/null | grep -q '\.debug_info' ||
        { echo "install-check: usr/lib/debug/$f.debug has no .debug_info" >&2; exit 1; }
done
if readelf -S "$stage/usr/lib/liboci_cache.a" | grep -q '\.debug_'; then
    echo "install-check: liboci_cache.a has debug sections" >&2; exit 1
fi
version=$("$stage/usr/bin/oci-cache" --version)
[ "$version" = "oci-cache ${so#liboci_cache.so.}" ] ||
    { echo "install-check: the installed oci-cache --version said '$version'" >&2; exit 1; }
make -s -C "$root" uninstall PREFIX=/usr DESTDIR="$stage" >/dev/null
left=$(find "$stage" -mindepth 1)
[ -z "$left" ] || { echo "install-check: the DESTDIR uninstall left behind:" $left >&2; exit 1; }
echo "install-check: ok"

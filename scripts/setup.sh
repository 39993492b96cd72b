#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian
# machine: the registry the tests start, the tools that read the store back,
# the C/C++ and Go toolchains (and cmake, which builds zlib-ng; nasm,
# autoconf, automake and libtool, which build ISA-L's igzip for the default
# `isal` feature; TLS is rustls with ring, which needs only the C compiler),
# valgrind for the C and Go tests, binutils for `make install` (objcopy,
# strip), bsdutils for the command line's terminal tests (script), the
# pinned cbindgen the header is generated with, and cargo-fuzz with a
# nightly toolchain for the fuzz smoke run.
set -euo pipefail

packages=(docker-registry skopeo umoci jq zstd pigz curl tar gcc g++ make cmake nasm autoconf automake libtool pkg-config binutils bsdutils valgrind golang-go)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

cbindgen_version=0.29.4
if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen $cbindgen_version" ]; then
    cargo install --quiet --locked cbindgen --version "$cbindgen_version"
fi

# The fuzz targets (fuzz/, scripts/fuzz-smoke.sh) need cargo-fuzz and nightly.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install --quiet --locked cargo-fuzz

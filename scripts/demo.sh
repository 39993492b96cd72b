#!/usr/bin/env bash
# The demo: starts a throwaway registry on loopback, pushes an image built
# from files on this machine (gzip and zstd variants), then pulls it with
# oci-cache into demo-out/store (an OCI layout) and demo-out/layers, and
# pulls it again with the registry stopped to show the warm, offline path,
# then reads files of the image through the view, without unpacking it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/demo-out"
pull="$root/target/release/examples/pull"
view="$root/target/release/examples/view"
work=$(mktemp -d)
registry_pid=""
cleanup() {
    [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YAML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port, secret: demo}
YAML
env -u REGISTRY_HTTP_ADDR docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$port/v2/" >/dev/null || { cat "$work/registry.log"; exit 1; }
echo "== registry on 127.0.0.1:$port"

# Two layers from files every Debian machine has.
umoci init --layout "$work/layout"
umoci new --image "$work/layout:demo"
umoci insert --image "$work/layout:demo" /usr/share/zoneinfo /usr/share/zoneinfo
umoci insert --image "$work/layout:demo" /usr/share/common-licenses /usr/share/common-licenses
skopeo copy -q --dest-compress-format zstd "oci:$work/layout:demo" "oci:$work/zstd:demo"
skopeo copy -q --dest-tls-verify=false "oci:$work/layout:demo" "docker://127.0.0.1:$port/demo:gzip"
skopeo copy -q --dest-tls-verify=false "oci:$work/zstd:demo" "docker://127.0.0.1:$port/demo:zstd"

rm -rf "$out"
mkdir -p "$out/layers"
for tag in gzip zstd; do
    echo "== pull 127.0.0.1:$port/demo:$tag"
    "$pull" "127.0.0.1:$port/demo:$tag" "$out/store" "$out/layers"
done

kill "$registry_pid"; wait "$registry_pid" 2>/dev/null || true; registry_pid=""
echo "== registry stopped; pull again from the store and the layer directory"
"$pull" "127.0.0.1:$port/demo:gzip" "$out/store" "$out/layers"

echo "== skopeo reads the store"
skopeo inspect "oci:$out/store:127.0.0.1:$port/demo:gzip" | jq '{Digest, Layers, Os, Architecture}'
echo "== layer tars, and their indexes (written in the same pass)"
ls -l "$out/layers/sha256" "$out/layers/tar-index/sha256"

echo "== the image's files, read through the view without unpacking"
"$view" "127.0.0.1:$port/demo:gzip" "$out/store" "$out/layers" /usr/share/common-licenses
"$view" "127.0.0.1:$port/demo:gzip" "$out/store" "$out/layers" /usr/share/common-licenses/Apache-2.0 >"$work/license"
head -n 5 "$work/license"

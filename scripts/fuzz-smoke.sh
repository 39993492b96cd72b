#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each briefly, starting from
# its seed corpus in fuzz/corpus/<target>; fails if any target crashes.
#
#   scripts/fuzz-smoke.sh                    every target, a bounded number of runs
#   scripts/fuzz-smoke.sh layer manifest     only these targets
#   FUZZ_SECONDS=450 scripts/fuzz-smoke.sh   the long run: 450 s a target, ~1 hour
#   FUZZ_CORPUS_OUT=dir scripts/fuzz-smoke.sh   keep new inputs in dir/<target>
#
# The committed seeds are only read: new inputs go to a temp dir (removed at
# the end) or FUZZ_CORPUS_OUT. A crashing input is saved in
# fuzz/artifacts/<target>/; replay it with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
# Needs a nightly toolchain and cargo-fuzz (scripts/setup.sh installs both).
# FUZZ_RUNS, FUZZ_LAYER_RUNS and FUZZ_MAX_SECONDS tune the short run, which
# uses a fixed seed (FUZZ_SEED, default 1) so that it does not pass and fail
# by chance; a long run is seeded at random unless FUZZ_SEED is set.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
# Every [[bin]] of fuzz/Cargo.toml: a target added there runs here unasked.
mapfile -t all_targets < <(cargo +nightly fuzz list)
[ ${#all_targets[@]} -gt 0 ] || { echo "fuzz: cargo fuzz list found no targets" >&2; exit 2; }
targets=("$@")
[ $# -gt 0 ] || targets=("${all_targets[@]}")
runs=${FUZZ_RUNS:-20000}
layer_runs=${FUZZ_LAYER_RUNS:-4000}
max_seconds=${FUZZ_MAX_SECONDS:-30}

started=$SECONDS
# The C dependencies are built without ASan: ISA-L's configure links a
# -static test program, which GCC refuses with -fsanitize=address (that cc
# passes on from the Rust sanitizer). The Rust code stays instrumented.
CFLAGS="${CFLAGS:-} -fno-sanitize=address" cargo +nightly fuzz build >/dev/null
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin=target/$host/release
echo "fuzz: built ${#all_targets[@]} targets in $((SECONDS - started)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
for target in "${targets[@]}"; do
    [ -f "fuzz_targets/$target.rs" ] || { echo "fuzz: no target $target" >&2; exit 2; }
    if [ -n "${FUZZ_SECONDS:-}" ]; then
        limits=(-max_total_time="$FUZZ_SECONDS" ${FUZZ_SEED:+-seed="$FUZZ_SEED"})
    elif [ "$target" = layer ]; then
        limits=(-runs="$layer_runs" -max_total_time="$max_seconds" -seed="${FUZZ_SEED:-1}")
    else
        limits=(-runs="$runs" -max_total_time="$max_seconds" -seed="${FUZZ_SEED:-1}")
    fi
    out=${FUZZ_CORPUS_OUT:+$FUZZ_CORPUS_OUT/$target}
    out=${out:-$work/corpus/$target}
    mkdir -p "$out" "artifacts/$target"
    log=$work/$target.log
    target_started=$SECONDS
    # The first corpus dir receives new inputs; the seeds after it are only read.
    if "$bin/$target" "${limits[@]}" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" "$out" "corpus/$target" >"$log" 2>&1; then
        stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 |
            sed -E 's/^#([0-9]+)[[:space:]]+DONE[[:space:]]+cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/\1 runs, cov \2, ft \3, corpus \4/' || true)
        speed=$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$log")
        [ "${speed:-0}" = 0 ] && speed= || speed=", $speed exec/s"
        echo "fuzz: $target ok: ${stats:-?}, $((SECONDS - target_started)) s$speed"
    else
        failed+=("$target")
        cp "$log" "artifacts/$target/failure.log"
        echo "fuzz: $target FAILED (log: fuzz/artifacts/$target/failure.log):" >&2
        grep -E '^==[0-9]+== ?ERROR|panicked at|^SUMMARY|deadly signal|^Base64:' "$log" | head -n 8 >&2 || true
        sed -n 's/.*Test unit written to \(.*\)/fuzz: crashing input: fuzz\/\1/p' "$log" >&2
    fi
done
echo "fuzz: ${#targets[@]} targets in $((SECONDS - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashed: ${failed[*]}" >&2
    exit 1
fi

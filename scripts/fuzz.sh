#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/, replays the committed crash
# inputs (fuzz/regressions/<target>/) and seeds (fuzz/corpus/<target>/),
# then fuzzes each target for a bounded time. Exits non-zero if any input
# crashes, leaks, times out or exceeds the memory limit.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 20; with no TARGET, all targets run.
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 unlocks the -Z
# sanitizer flags cargo-fuzz passes. Builds go to fuzz/target (separate from
# the workspace's target/ so the sanitizer flags never invalidate it); the
# grown corpus goes to fuzz/target/corpus/<target> and crash artifacts to
# fuzz/artifacts/<target>/, both untracked. A crash worth keeping is copied
# into fuzz/regressions/<target>/ once it is fixed.
set -euo pipefail

secs=${1:-20}
shift || true
cd "$(dirname "$0")/.."
root=$PWD
fuzz=$root/fuzz

export RUSTC_BOOTSTRAP=1
# cargo-fuzz itself, pinned so CI runs are reproducible; installed once.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd "$fuzz/fuzz_targets" && ls -- *.rs | sed 's/\.rs$//')
fi

# -O with debug assertions: optimised enough to reach a useful number of
# runs in seconds, and overflow checks still catch arithmetic bugs.
# 16 codegen units instead of cargo-fuzz's 1: a faster build (this runs in
# CI) for somewhat fewer runs per second.
# AddressSanitizer (cargo-fuzz's default) works with the C dependencies
# (bundled SQLite, zstd, xz) because they are only linked, not instrumented.
(cd "$fuzz" && cargo fuzz build -O --debug-assertions --codegen-units 16 --target-dir "$fuzz/target")
bin_dir=$fuzz/target/x86_64-unknown-linux-gnu/release

# Limits: a target that needs more than 2 GiB or 10 s for one input has a
# bug of its own (the parsers are meant to be bounded).
limits=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10)

failed=()
for t in "${targets[@]}"; do
    bin=$bin_dir/$t
    [ -x "$bin" ] || { echo "fuzz: no such target: $t" >&2; exit 2; }
    mkdir -p "$fuzz/target/corpus/$t" "$fuzz/artifacts/$t" "$fuzz/regressions/$t" "$fuzz/corpus/$t"
    artifacts=(-artifact_prefix="$fuzz/artifacts/$t/")

    # 1. Every known input once: past crashes must stay fixed.
    mapfile -t inputs < <(find "$fuzz/regressions/$t" "$fuzz/corpus/$t" -type f | sort)
    if [ "${#inputs[@]}" -gt 0 ]; then
        echo "== $t: replaying ${#inputs[@]} regression and seed inputs"
        if ! "$bin" "${limits[@]}" "${artifacts[@]}" "${inputs[@]}" > "$fuzz/target/$t.replay.log" 2>&1; then
            tail -40 "$fuzz/target/$t.replay.log" >&2
            failed+=("$t (replay)")
            continue
        fi
    fi

    # 2. Bounded fuzzing; new inputs go to the untracked working corpus.
    echo "== $t: fuzzing for ${secs}s"
    if ! "$bin" "${limits[@]}" "${artifacts[@]}" -max_total_time="$secs" -print_final_stats=1 \
        "$fuzz/target/corpus/$t" "$fuzz/corpus/$t" "$fuzz/regressions/$t" \
        > "$fuzz/target/$t.fuzz.log" 2>&1; then
        tail -60 "$fuzz/target/$t.fuzz.log" >&2
        failed+=("$t")
        continue
    fi
    grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^stat::peak_rss_mb' \
        "$fuzz/target/$t.fuzz.log" | sed "s/^/   $t /"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: all targets passed"

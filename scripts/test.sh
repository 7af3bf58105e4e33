#!/usr/bin/env bash
# The project's one test command (the README names it; .ci/run calls it):
# installs missing system packages, builds the workspace once, runs every
# fuzz target for a bounded time, then every test suite of every crate (the
# Nix tests and the end-to-end and fault-injection suites included).
#
#   PCR_FUZZ_SECONDS=N   seconds per fuzz target (default 10; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

profile=default
[ "${CI:-}" = "true" ] && profile=ci

# One build of every binary and test target, shared by all suites: the
# integration tests spawn the workspace's binaries from target/debug.
cargo build --workspace --bins --tests --locked

# Fuzzing first so the test runner's summary is the run's closing line; a
# fuzz failure still lets the tests run, and fails the command at the end.
fuzz_status=0
fuzz_secs=${PCR_FUZZ_SECONDS:-10}
if [ "$fuzz_secs" != 0 ]; then
  scripts/fuzz.sh "$fuzz_secs" || fuzz_status=$?
fi

test_status=0
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile "$profile" --no-tests=warn || test_status=$?
else
  cargo test --workspace --locked || test_status=$?
fi

if [ "$fuzz_status" != 0 ]; then
  echo "test.sh: fuzzing failed (exit $fuzz_status); see the output above" >&2
  exit "$fuzz_status"
fi
exit "$test_status"

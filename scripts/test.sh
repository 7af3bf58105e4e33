#!/usr/bin/env bash
# The project's one test command (the README names it; .ci/run calls it):
# installs missing system packages, builds the workspace once, then runs
# every test suite of every crate, the Nix tests included.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

profile=default
[ "${CI:-}" = "true" ] && profile=ci

# One build of every binary and test target, shared by all suites: the
# integration tests spawn the workspace's binaries from target/debug.
cargo build --workspace --bins --tests --locked

if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile "$profile" --no-tests=warn
else
  cargo test --workspace --locked
fi

#!/usr/bin/env bash
# The one test command: installs what the tests need (PostgreSQL 13 to 18, the S3 servers, a
# Docker engine), then checks formatting and lints and runs every test: the Rust suites, then
# the container tests (scripts/e2e.sh, as root). Used by CI (.ci/run) and developers.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/test-deps.sh)"

# The container tests put a release binary in the image. Its build (the longest single step)
# runs beside the Rust tests, which mostly wait on their servers; its output goes to a log
# that is shown if it fails.
release_log=$(mktemp)
cargo build --release --locked --bin pgsidecar >"$release_log" 2>&1 &
release=$!
# `|| true`: under errexit a failing trap command (the build already ended) sets the exit status.
trap 'kill "$release" 2>/dev/null || true; rm -f "$release_log"' EXIT

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
if ! wait "$release"; then
  cat "$release_log" >&2
  exit 1
fi
scripts/e2e.sh

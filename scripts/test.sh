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
# The container tests' base image (debootstrap, mostly waiting on the network) is made beside
# them too.
base_log=$(mktemp)
scripts/base-image.sh >"$base_log" 2>&1 &
base=$!
# `|| true`: under errexit a failing trap command (the job already ended) sets the exit status.
trap 'kill "$release" "$base" 2>/dev/null || true; rm -f "$release_log" "$base_log"' EXIT

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Three at a time on two cores: most integration tests wait on servers, timeouts and schedules
# (the longest, 200 backups at one a second, takes 200 s), so a third thread cuts the suite
# from about 580 s to 420 s with the load still under the core count.
cargo test --all-targets --locked -- --test-threads=3
if ! wait "$release"; then
  cat "$release_log" >&2
  exit 1
fi
if ! wait "$base"; then
  cat "$base_log" >&2
  exit 1
fi
scripts/e2e.sh

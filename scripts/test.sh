#!/usr/bin/env bash
# The one test command: installs what the tests need (PostgreSQL 13 to 18, the S3 servers, a
# Docker engine), then checks formatting and lints and runs every test: the Rust suites, then
# the container tests (scripts/e2e.sh, as root). Used by CI (.ci/run) and developers.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/test-deps.sh)"

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
scripts/e2e.sh

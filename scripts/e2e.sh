#!/usr/bin/env bash
# The container tests alone: builds the image through the shipped Dockerfile, then runs
# compose.yml and swarm-stack.yml end to end on a Docker engine of their own, and stops all
# of it, pass or fail. The last line is the summary: `N passed, N failed`.
# Needs root. scripts/test.sh runs it after the other tests; alone: scripts/e2e.sh
# (the release binary it puts in the image is built here with `cargo build --release --locked`).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

if [ -z "${PGSC_TEST_TRIXIE_ROOTFS:-}" ]; then
  eval "$(scripts/test-deps.sh)" || exit 1
fi
scripts/base-image.sh || exit 1
# shellcheck source=tests/e2e/lib.sh
source tests/e2e/lib.sh
# shellcheck source=tests/e2e/compose.sh
source tests/e2e/compose.sh
# shellcheck source=tests/e2e/swarm.sh
source tests/e2e/swarm.sh

summary() {
  cleanup
  if [ ${#E2E_FAILURES[@]} -gt 0 ]; then
    printf 'failed: %s\n' "${E2E_FAILURES[@]}"
  fi
  echo "e2e: $E2E_PASSED passed, $E2E_FAILED failed"
  [ "$E2E_FAILED" -eq 0 ] && [ "$E2E_PASSED" -gt 0 ]
}
trap 'summary; exit $?' EXIT
trap 'exit 130' INT TERM

started=$SECONDS
cargo build --release --locked --bin pgsidecar >&2 || { fail "cargo build --release" "failed"; exit 1; }
check "dockerd starts" start_dockerd || exit 1
import_base
check "docker build (the shipped Dockerfile, binary built on this host)" build_pgsidecar_image
check "the stand-in images build" build_standin_images
size=$(docker image inspect -f '{{.Size}}' pgsidecar:local 2>/dev/null || echo 0)
base=$(docker image inspect -f '{{.Size}}' debian:trixie-slim 2>/dev/null || echo 0)
packed=$(docker save pgsidecar:local 2>/dev/null | gzip -1 | wc -c)
log "image pgsidecar:local: $((size / 1000000)) MB ($(( (size - base) / 1000000 )) MB over the base), $((packed / 1000000)) MB as a gzip'd docker save"
check "the image runs pgsidecar as its entrypoint" output_has "pgsidecar" docker run --rm pgsidecar:local --version
check "the image carries the PostgreSQL 17 client tools" output_has "pg_dump (PostgreSQL) 17" \
  docker run --rm --entrypoint /usr/lib/postgresql/17/bin/pg_dump pgsidecar:local --version

# E2E_ONLY=compose or E2E_ONLY=swarm runs one of the two.
[ "${E2E_ONLY:-compose}" = compose ] && compose_e2e
# The compose stack is gone before the swarm starts (the same names).
(cd "$E2E_TMP/user/pgsidecar" 2>/dev/null && docker compose --profile local-s3 down -v --timeout 5 >/dev/null 2>&1)
[ "${E2E_ONLY:-swarm}" = swarm ] && swarm_e2e
cd "$E2E_REPO" || exit 1
log "container tests took $((SECONDS - started)) s"

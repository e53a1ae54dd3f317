# shellcheck shell=bash
# Shared by the container tests (sourced by scripts/e2e.sh): a Docker engine of their own,
# the images, checks that count, and a cleanup that leaves nothing running or mounted.
#
# Needs the exports of scripts/test-deps.sh (PGSC_TEST_TRIXIE_ROOTFS, PGSC_TEST_DOCKER_PLUGINS,
# PGSC_TEST_S3S_FS) and root (dockerd, debootstrap's base image).

E2E_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
E2E_TMP=$(mktemp -d /tmp/pgsidecar-e2e.XXXXXX)
# Everything below talks to this engine only: its own socket, data and state directories, no
# iptables rules and no default bridge. The CLI plugins (Compose v2, buildx) come from a config
# directory of its own, so the machine's Docker setup is neither used nor changed. BuildKit
# whatever the CLI's age: only it builds just the stages a target needs.
export DOCKER_HOST="unix://$E2E_TMP/docker.sock"
export DOCKER_CONFIG="$E2E_TMP/docker-config"
export COMPOSE_PROGRESS=plain BUILDKIT_PROGRESS=plain DOCKER_CLI_HINTS=false DOCKER_BUILDKIT=1

E2E_PASSED=0
E2E_FAILED=0
E2E_FAILURES=()

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# check NAME COMMAND...: runs the command; counts, reports and returns the outcome.
check() {
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then
    E2E_PASSED=$((E2E_PASSED + 1))
    log "ok: $name"
  else
    E2E_FAILED=$((E2E_FAILED + 1))
    E2E_FAILURES+=("$name")
    log "FAILED: $name"
    printf '%s\n' "$out" | tail -n 40 | sed 's/^/    | /' >&2
    return 1
  fi
}

# fail NAME WHY: counts a failure found without a command (a step that could not run).
fail() {
  E2E_FAILED=$((E2E_FAILED + 1))
  E2E_FAILURES+=("$1")
  log "FAILED: $1: $2"
}

# wait_for SECONDS COMMAND...: polls the command once a second until it succeeds.
wait_for() {
  local limit=$1; shift
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - start >= limit )); then return 1; fi
    sleep 1
  done
}

# Asserts that TEXT (from stdin) contains or lacks a fixed string.
contains() { local text; text=$(cat); grep -qF -- "$1" <<<"$text" || { printf 'expected %q in:\n%s\n' "$1" "$text"; return 1; }; }
lacks() { local text; text=$(cat); ! grep -qF -- "$1" <<<"$text" || { printf 'did not expect %q in:\n%s\n' "$1" "$text"; return 1; }; }

start_dockerd() {
  mkdir -p "$E2E_TMP"/{data,exec} "$DOCKER_CONFIG/cli-plugins"
  ln -s "$PGSC_TEST_DOCKER_PLUGINS"/docker-compose "$PGSC_TEST_DOCKER_PLUGINS"/docker-buildx \
    "$DOCKER_CONFIG/cli-plugins/"
  dockerd --host "$DOCKER_HOST" --data-root "$E2E_TMP/data" --exec-root "$E2E_TMP/exec" \
    --pidfile "$E2E_TMP/docker.pid" --storage-driver vfs --iptables=false --ip-masq=false \
    --bridge=none >"$E2E_TMP/dockerd.log" 2>&1 &
  if ! wait_for 60 docker version; then
    tail -n 30 "$E2E_TMP/dockerd.log" >&2
    return 1
  fi
  log "dockerd $(docker version -f '{{.Server.Version}}') at $DOCKER_HOST"
}

# Stops whatever the tests started, pass or fail: swarm, stacks, containers, networks, the
# engine and its containerd, then mounts and files.
cleanup() {
  local rc=$?
  set +e
  if [ -S "$E2E_TMP/docker.sock" ]; then
    log "cleaning up"
    docker swarm leave --force >/dev/null 2>&1
    local ids; ids=$(docker ps -aq 2>/dev/null)
    # shellcheck disable=SC2086 # one id a word
    [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
    docker network prune -f >/dev/null 2>&1
  fi
  if [ -s "$E2E_TMP/docker.pid" ]; then
    local pid; pid=$(cat "$E2E_TMP/docker.pid")
    kill "$pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null
  fi
  # dockerd's own containerd and shims, should any have outlived it.
  pkill -f "$E2E_TMP/exec" 2>/dev/null
  awk -v p="$E2E_TMP" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null; done
  # Bridges of networks that outlived the engine (swarm's docker_gwbridge, compose's br-*).
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 |
                grep -E '^(docker_gwbridge|br-[0-9a-f]{12})$'); do
    if [ -f "$E2E_TMP/links-before" ] && ! grep -qx "$link" "$E2E_TMP/links-before"; then
      ip link delete "$link" 2>/dev/null
    fi
  done
  # dockerd makes /run/docker/plugins whatever its exec root: remove it when it was not there.
  [ -f "$E2E_TMP/run-docker-absent" ] && rmdir /run/docker/plugins /run/docker 2>/dev/null
  rm -rf "$E2E_TMP" 2>/dev/null
  return $rc
}

# What was there before the tests, so cleanup removes only the tests' own.
ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 >"$E2E_TMP/links-before"
[ -e /run/docker ] || touch "$E2E_TMP/run-docker-absent"

# Base image: the locally made Debian trixie, tagged as the image a user's build pulls, so the
# Dockerfile builds here exactly as written.
import_base() {
  docker import --change 'CMD ["bash"]' "$PGSC_TEST_TRIXIE_ROOTFS" debian:trixie-slim >/dev/null
}

# The pgsidecar image, through the shipped Dockerfile's runtime stage, with the release binary
# built on this host (the Rust stage needs crates.io, which a container here cannot reach).
# --network host: the runtime stage installs Debian packages, and the engine has no NAT.
build_pgsidecar_image() {
  local bin_dir="$E2E_REPO/target/image"
  mkdir -p "$bin_dir"
  install -m 0755 "$E2E_REPO/target/release/pgsidecar" "$bin_dir/pgsidecar"
  docker build --network host --build-arg BINARY=prebuilt -t pgsidecar:local "$E2E_REPO"
}

# Stand-ins for the official postgres:17 image and for an S3 server (s3s-fs with curl for the
# bucket step), from the same base.
build_standin_images() {
  docker build --network host -t pgsidecar-e2e/postgres:17 "$E2E_REPO/tests/e2e/images/postgres"
  local ctx="$E2E_TMP/s3-context"
  mkdir -p "$ctx"
  cp "$E2E_REPO/tests/e2e/images/s3/Dockerfile" "$ctx/"
  cp "$PGSC_TEST_S3S_FS" "$ctx/s3s-fs"
  docker build --network host -t pgsidecar-e2e/s3:local "$ctx"
}

# The files a user's clone holds (tracked and new, as in this working tree), in a directory of
# their own, so the tests' .env and secrets/ never land in the checkout.
user_checkout() {
  local dest=$1
  mkdir -p "$dest"
  (cd "$E2E_REPO" && git ls-files -z --cached --others --exclude-standard |
    xargs -0 cp --parents -t "$dest" 2>/dev/null) || return 1
  rm -rf "$dest/target" "$dest/.env" "$dest/secrets"
}

# The lines of the first ```sh block after a README heading, comments stripped.
readme_block() {
  awk -v h="$1" '
    $0 == h { inside = 1; next }
    inside && /^```sh/ { code = 1; next }
    code && /^```/ { exit }
    code { sub(/[ \t]+#.*$/, ""); print }
  ' "$E2E_REPO/README.md"
}

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
# $1: the tag (pgsidecar:local); the rest: more build arguments.
build_pgsidecar_image() {
  local tag=${1:-pgsidecar:local} bin_dir="$E2E_REPO/target/image"
  shift
  mkdir -p "$bin_dir"
  install -m 0755 "$E2E_REPO/target/release/pgsidecar" "$bin_dir/pgsidecar"
  docker build --network host --build-arg BINARY=prebuilt "$@" -t "$tag" "$E2E_REPO"
}

# s3s-fs names the file holding an object's metadata after its bucket and key in base64; for
# the keys of archived WAL (about 130 characters) during a multipart upload that name passes the
# file system's 255-byte limit, and the upload fails (real S3 and MinIO take keys of 1024
# bytes). The stand-in's copy is built from the same release with s3s-fs-long-keys.patch, which
# names those files after the key's md5 when the base64 is long; built once, then cached beside
# the tests' other dependencies.
patched_s3s_fs() {
  local patch="$E2E_REPO/tests/e2e/images/s3/s3s-fs-long-keys.patch"
  local version; version=$(basename "$(dirname "$(dirname "$PGSC_TEST_S3S_FS")")")   # s3s-fs-X.Y.Z
  local dir; dir="$(dirname "$(dirname "$(dirname "$PGSC_TEST_S3S_FS")")")/$version-e2e-$(sha256sum "$patch" | cut -c1-12)"
  if [ ! -x "$dir/bin/s3s-fs" ]; then
    local src; src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -mindepth 2 -maxdepth 2 -type d -name "$version" | head -n 1)
    [ -n "$src" ] || { echo "no source of $version under the cargo registry (scripts/test-deps.sh installs it)" >&2; return 1; }
    rm -rf "$dir" && mkdir -p "$dir" && cp -r "$src" "$dir/src" && rm -f "$dir/src/Cargo.lock" &&
      patch -d "$dir/src" -p1 <"$patch" >&2 &&
      (cd "$dir/src" && CARGO_TARGET_DIR="$dir/target" cargo build --release --features binary >&2) &&
      install -D -m 0755 "$dir/target/release/s3s-fs" "$dir/bin/s3s-fs" && rm -rf "$dir/target" || return 1
  fi
  echo "$dir/bin/s3s-fs"
}

# Stand-ins for the official postgres:17 image and for an S3 server (s3s-fs with curl for the
# bucket step), from the same base.
build_standin_images() {
  docker build --network host -t pgsidecar-e2e/postgres:17 "$E2E_REPO/tests/e2e/images/postgres"
  local ctx="$E2E_TMP/s3-context" s3s_fs
  s3s_fs=$(patched_s3s_fs) || return 1
  mkdir -p "$ctx"
  cp "$E2E_REPO/tests/e2e/images/s3/Dockerfile" "$ctx/"
  cp "$s3s_fs" "$ctx/s3s-fs"
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

# The lines of the first (or Nth) ```sh block after a README heading, comments stripped.
readme_block() {
  awk -v h="$1" -v n="${2:-1}" '
    $0 == h { inside = 1; next }
    inside && /^```sh/ { if (++seen == n) code = 1; next }
    code && /^```/ { exit }
    code { sub(/[ \t]+#.*$/, ""); print }
  ' "$E2E_REPO/README.md"
}

# Point-in-time recovery, shared by both halves. `list --pitr --json` arrives on stdin.
# Succeeds when a restorable base backup is listed on timeline $1 or later.
pitr_base_on_timeline() {
  python3 -c 'import json, sys
n = int(sys.argv[1])
sys.exit(0 if any(b["restorable"] and b["timeline"] >= n for b in json.load(sys.stdin)) else 1)' "$1"
}
# Succeeds when the newest WAL stored (the window's "stored …") is at or after epoch second $1.
pitr_stored_since() {
  python3 -c 'import json, re, sys, datetime
at = [datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
      for b in json.load(sys.stdin) for m in [re.search(r"stored (\S+ \S+) UTC", b["window"])] if m]
sys.exit(0 if at and max(at) >= int(sys.argv[1]) else 1)' "$1"
}
# A digest of a volume's every path, size, time, owner, mode and file contents, read through a
# read-only mount: it changes when anything in the volume was written.
volume_digest() {
  docker run --rm --user 0 --entrypoint sh -v "$1:/v:ro" pgsidecar:local -c \
    'cd /v && find . -printf "%p %s %T@ %U:%G %m\n" | sort && find . -type f -exec sha256sum {} + | sort' |
    sha256sum | cut -d' ' -f1
}
# The owners (uid:gid) of what `pitr restore` wrote into volume $1 (pgdata and pgdata.wal),
# one line each, and the number of WAL files staged.
restored_owners() {
  docker run --rm --user 0 --entrypoint sh -v "$1:/r:ro" pgsidecar:local -c \
    'find /r/pgdata /r/pgdata.wal -printf "%U:%G\n" | sort -u; echo "wal files: $(find /r/pgdata.wal -type f | wc -l)"'
}
owned_by_postgres() {
  local out; out=$(restored_owners "$1")
  printf '%s\n' "$out"
  [ "$(grep -c '^[0-9]*:[0-9]*$' <<<"$out")" = 1 ] && grep -qx '999:999' <<<"$out" && ! grep -q 'wal files: 0$' <<<"$out"
}
# Batch A (rows written before the moment) and batch B (after it) as the marks table holds
# them, and the check pitr verify runs on the restored server (used by compose.sh and swarm.sh).
# shellcheck disable=SC2034
PITR_MARKS_SQL="select coalesce(string_agg(batch || ':' || n, ',' order by batch), '') from (select batch, count(*) n from pitr_marks group by batch) s"
# shellcheck disable=SC2034
PITR_VERIFY_QUERY="SELECT count(*) FILTER (WHERE batch = 'A') = 100 AND count(*) FILTER (WHERE batch = 'B') = 0 FROM pitr_marks"

# `$1 | $2 $3…`: the archive as listed by $1, read by a check.
pitr_through() { local list=$1; shift; "$list" | "$@"; }

# Batch A, the moment, batch B, and B's WAL stored: what both halves do before the disaster.
# $1 runs SQL as the database's owner (psql arguments), $2 reads through the application's
# connection, $3 lists the archive (`list --pitr --json`). Sets PITR_MOMENT.
pitr_marks_around_a_moment() {
  local sql=$1 conn=$2 list=$3
  "$sql" -d app -c "create table pitr_marks (batch text, id int);
    insert into pitr_marks select 'A', generate_series(1, 100)"
  sleep 2
  # shellcheck disable=SC2034  # read by compose.sh and swarm.sh
  PITR_MOMENT=$(date -u '+%Y-%m-%d %H:%M:%S+00')
  sleep 2
  "$sql" -d app -c "insert into pitr_marks select 'B', generate_series(1, 50)"
  local b_at; b_at=$(date +%s)
  check "batches A and B are in the live database" test "$("$conn" "$PITR_MARKS_SQL")" = "A:100,B:50"
  check "the WAL holding batch B is stored" wait_for 60 pitr_through "$list" pitr_stored_since $((b_at + 2))
}

# After the move to the restored volume: the application reads batch A alone, the sidecar
# archives the new timeline, and the old volume ($3, digest $4 from before) is as it was.
# $1 reads through the application's connection, $2 lists the archive; $5 names the half.
pitr_after_the_move() {
  local conn=$1 list=$2 volume=$3 before=$4 half=$5 swapped=$SECONDS
  check "through the application's connection: batch A present, batch B absent" \
    test "$("$conn" "$PITR_MARKS_SQL")" = "A:100"
  check "the sidecar archives the new timeline: a base backup on timeline 2 is listed" \
    wait_for 300 pitr_through "$list" pitr_base_on_timeline 2
  log "PITR ($half): base backup on the new timeline listed $((SECONDS - swapped)) s after the move"
  check "the old volume $volume is still there" docker volume inspect "$volume"
  check "nothing in $volume was written after the kill" test "$(volume_digest "$volume")" = "$before"
}

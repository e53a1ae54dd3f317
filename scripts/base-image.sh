#!/usr/bin/env bash
# Makes the container tests' base image (a root file system for `docker import`) and the Compose
# and buildx CLI plugins, under PGSC_TEST_DEPS (default ~/.cache/pgsidecar-test/debian-trixie).
# Idempotent: does nothing while they are there and less than a week old. Needs root and
# debootstrap (scripts/test-deps.sh installs it). scripts/test.sh runs it in the background
# beside the Rust tests (it waits on the network, they on the CPU); scripts/e2e.sh runs it too.
set -euo pipefail

DEPS="${PGSC_TEST_DEPS:-$HOME/.cache/pgsidecar-test}"
TRIXIE="$DEPS/debian-trixie"
PLUGINS="$TRIXIE/cli-plugins"
mkdir -p "$DEPS"
log() { echo "base-image: $*" >&2; }

# The container tests' base image: a minimal Debian trixie, the suite of the official postgres:17
# image and of the sidecar's runtime stage, made the way Debian's own slim images are (no
# documentation, no package lists). From the same suite, the Compose v2 and buildx CLI plugins
# (bookworm's docker-compose 1.x knows no profiles). Remade weekly for security updates.
if [ ! -s "$TRIXIE/rootfs.tar" ] || [ ! -x "$PLUGINS/docker-compose" ] || [ ! -x "$PLUGINS/docker-buildx" ] \
   || [ -n "$(find "$TRIXIE/rootfs.tar" -mtime +7 2>/dev/null)" ]; then
  log "debootstrap --variant=minbase trixie (base image for the container tests)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase trixie "$work/root" http://deb.debian.org/debian >&2
  (chroot "$work/root" sh -c 'cd /tmp && apt-get download -q docker-compose docker-buildx') >&2
  mkdir -p "$work/debs" "$PLUGINS"
  for deb in "$work"/root/tmp/*.deb; do dpkg-deb -x "$deb" "$work/debs"; done
  install -m 0755 "$work"/debs/usr/libexec/docker/cli-plugins/docker-{compose,buildx} "$PLUGINS/"
  root="$work/root"
  rm -f "$root"/tmp/*.deb "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'EXCLUDES'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EXCLUDES
  echo 'APT::Install-Recommends "false";' > "$root/etc/apt/apt.conf.d/docker-no-recommends"
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  rm -rf "$root"/usr/share/{man,info}/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
  : > "$root/etc/resolv.conf"; : > "$root/etc/hostname"
  tar -C "$root" -cf "$TRIXIE/rootfs.tar.new" . && mv "$TRIXIE/rootfs.tar.new" "$TRIXIE/rootfs.tar"
  rm -rf "$work"
  trap - EXIT
fi

# pgsidecar: the release binary on Debian trixie (the family of the official postgres:17
# image), with the PostgreSQL 17 client tools.
#
#   docker build -t pgsidecar:local .
#   docker build --build-arg PG_MAJORS="17 18" -t pgsidecar:local .   # more majors, from PGDG
#   docker build --build-arg PG_SERVER=true -t pgsidecar:local .        # servers too, for PITR drills
#
# Per server, pgsidecar picks the client whose major matches, else the newest newer one: a
# client older than the server is refused before anything is dumped.
#
# BINARY chooses where /usr/local/bin/pgsidecar comes from: `build` (the default) compiles this
# checkout in the Rust stage; `prebuilt` takes target/image/pgsidecar, a release binary built
# beforehand on a glibc host (how the project's offline tests build the same runtime stage).

ARG RUST_VERSION=1.95
ARG DEBIAN_SUITE=trixie
ARG BINARY=build

FROM rust:${RUST_VERSION}-slim-${DEBIAN_SUITE} AS build
# aws-lc-sys (TLS for the S3 client) builds with cmake and perl. Build tools only, in a stage
# that is thrown away: pinning their versions would only break the build when the suite moves.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake perl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgsidecar \
    && install -m 0755 target/release/pgsidecar /pgsidecar

FROM scratch AS prebuilt
COPY target/image/pgsidecar /pgsidecar

# A stage named by an argument: BuildKit builds only the one chosen.
# hadolint ignore=DL3006
FROM ${BINARY} AS binary

FROM debian:${DEBIAN_SUITE}-slim AS runtime
ARG DEBIAN_SUITE
ARG PG_MAJORS="17"
# true: the server package of each major (postgresql-M, which brings the clients and LLVM for
# JIT: 563 MB unpacked instead of 297 MB) and zstd, which a PITR drill needs to start a server on
# the restored cluster and replay its WAL; false: the client tools alone.
ARG PG_SERVER=false
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pgsidecar" \
      org.opencontainers.image.description="Streams PostgreSQL backups to S3 on a schedule and restores them with one command" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/pgsidecar/pgsidecar"
# Package versions follow the Debian suite, so security fixes arrive with a rebuild and no edit
# here. A major Debian does not carry comes from the PostgreSQL project's own repository
# (PGDG), set up as https://wiki.postgresql.org/wiki/Apt describes; PG_MAJORS is split into one
# package name per major on purpose.
# hadolint ignore=DL3008,SC2086
RUN set -eu; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates tini tzdata; \
    pkgs=""; pgdg=""; \
    case "${PG_SERVER}" in \
      true) pkg=postgresql-; pkgs=zstd; \
            install -d /etc/postgresql-common/createcluster.d; \
            echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/pgsidecar.conf ;; \
      false) pkg=postgresql-client- ;; \
      *) echo "PG_SERVER must be true or false, not '${PG_SERVER}'" >&2; exit 1 ;; \
    esac; \
    for m in ${PG_MAJORS}; do \
      pkgs="$pkgs $pkg$m"; \
      apt-cache show "$pkg$m" >/dev/null 2>&1 || pgdg=yes; \
    done; \
    if [ -n "$pgdg" ]; then \
      apt-get install -y --no-install-recommends curl; \
      install -d /usr/share/postgresql-common/pgdg; \
      curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
      echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${DEBIAN_SUITE}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
      apt-get purge -y --auto-remove curl; \
      apt-get update; \
    fi; \
    apt-get install -y --no-install-recommends ${pkgs}; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin pgsidecar
COPY --from=binary /pgsidecar /usr/local/bin/pgsidecar
# One binary, several names: `docker exec sidecar restore latest` runs `pgsidecar restore latest`.
RUN for c in backup restore list verify drill prune ack health; do ln -s pgsidecar "/usr/local/bin/$c"; done
USER 10001:10001
ENV TMPDIR=/tmp
HEALTHCHECK --interval=60s --timeout=15s --start-period=120s --retries=3 \
    CMD ["pgsidecar", "health"]
# tini forwards SIGTERM to the daemon and reaps pg_dump/pg_restore children.
ENTRYPOINT ["/usr/bin/tini", "--", "pgsidecar"]
CMD ["run"]

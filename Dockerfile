# syntax=docker/dockerfile:1
# pgsidecar: the release binary on Alpine, with the PostgreSQL 17 and 18 client tools.
#
#   docker build -t pgsidecar .
#   docker build --build-arg PG_MAJORS="16 18" -t pgsidecar:pg16 .
#
# Per server, pgsidecar picks the client whose major matches and otherwise the newest:
# 18 dumps and restores servers 13-18, and 17 matches the server most users run.

ARG ALPINE_VERSION=3.23
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS build
# Build tools only, in a stage that is thrown away: pinning their versions would only make the
# build break whenever the Alpine branch moves on.
# hadolint ignore=DL3018
RUN apk add --no-cache build-base cmake perl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgsidecar \
    && install -m 0755 target/release/pgsidecar /pgsidecar

FROM alpine:${ALPINE_VERSION}
ARG PG_MAJORS="17 18"
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pgsidecar" \
      org.opencontainers.image.description="Streams PostgreSQL backups to S3 on a schedule and restores them with one command" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/pgsidecar/pgsidecar"
# Versions follow the Alpine release branch (security fixes arrive without a rebuild of this
# file); PG_MAJORS is split into one package name per major on purpose.
# hadolint ignore=DL3018,SC2086
RUN pkgs=""; for m in ${PG_MAJORS}; do pkgs="$pkgs postgresql${m}-client"; done \
    && apk add --no-cache tini ca-certificates tzdata ${pkgs} \
    && adduser -D -H -u 10001 -s /sbin/nologin pgsidecar
COPY --from=build /pgsidecar /usr/local/bin/pgsidecar
# One binary, several names: `docker exec sidecar restore latest` runs `pgsidecar restore latest`.
RUN for c in backup restore list verify drill prune; do ln -s pgsidecar "/usr/local/bin/$c"; done
USER 10001
ENV TMPDIR=/tmp
HEALTHCHECK --interval=60s --timeout=15s --start-period=120s --retries=3 \
    CMD ["pgsidecar", "health"]
# tini forwards SIGTERM to the daemon and reaps pg_dump/pg_restore children.
ENTRYPOINT ["/sbin/tini", "--", "pgsidecar"]
CMD ["run"]

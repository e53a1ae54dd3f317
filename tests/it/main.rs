//! Integration tests: the real binary against real PostgreSQL servers and a real S3 server.

mod harness;

/// Backups that succeed: round trips on each server major, listing, local storage, pieces.
mod backup;
/// Configuration errors and `config` output, from the command line.
mod config_cli;
/// The daemon: schedules, retries, notifications, overlap, shutdown, catch-up, health.
mod daemon;
/// Several destinations from one dump: copies, the `all`/`any` policy, retries, retention per
/// destination, reads from a copy, `copy`, metrics.
mod destinations;
/// Client-side encryption with age: round trips, wrong or missing identities, tampering.
mod encryption;
/// Backups that fail: each leaves no object, no manifest and no open upload.
mod failures;
/// Faults mid-backup or mid-restore: nothing falsely reported, nothing partial listed, next run succeeds.
mod faults;
/// `pgsidecar backup` by hand: status file, retention, notifications and retries, as scheduled.
mod manual_backup;
/// Alerting rules (promtool) and the Grafana dashboard against a real daemon and Prometheus.
mod monitoring;
/// The container files: Dockerfile lint, Compose schema, configuration names without drift.
mod packaging;
/// Point-in-time recovery: WAL archiving, base backups, restores to a moment.
mod pitr;
/// Retention: prune and its safety floor; every database of a server.
mod prune;
/// Restores that succeed: modes, server majors, database properties, the command names.
mod restore;
/// Restores and drills that must fail safely: damage, kills, refusals, regressions.
mod restore_safety;
/// Secrets never reach output, notifications, manifests or object metadata.
mod secrets;
/// The status page at `/` in headless Chromium at desktop and phone widths, and its access control.
mod status_page;
/// The storage contract, run against every backend: round trips, no overwrite, listing, aborts, sweep.
mod storage_contract;
/// S3 features: server-side encryption, tags, object lock, lifecycle rules.
mod storage_features;
/// TLS to PostgreSQL: verify-full against a server with a CA the test creates.
mod tls;

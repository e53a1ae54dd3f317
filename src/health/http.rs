//! Optional HTTP listener (off unless `http.listen` is set): `/healthz` and Prometheus
//! `/metrics`, both rendered from the daemon's [`Status`].

use std::sync::atomic::AtomicU64;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::health::status::Status;

/// What `/` and `/metrics` require of a client (`/healthz` stays open, for probes).
#[derive(Debug, Clone, serde::Serialize)]
pub enum HttpAuth {
    /// `Authorization: Bearer <token>`.
    Bearer(crate::secret::Secret),
    /// `Authorization: Basic` with this user and password (RFC 7617).
    Basic {
        user: String,
        password: crate::secret::Secret,
    },
}

/// Whether `headers` satisfy `auth` (no auth: always). Compared in constant time, so the
/// time taken tells nothing of the secret.
fn allows(auth: Option<&HttpAuth>, headers: &HeaderMap) -> bool {
    use base64::Engine;
    let Some(auth) = auth else {
        return true;
    };
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let expected = match auth {
        HttpAuth::Bearer(token) => format!("Bearer {}", token.expose()),
        HttpAuth::Basic { user, password } => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.expose()))
        ),
    };
    let (a, b) = (given.trim().as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 401 with the challenge of `auth`'s scheme.
fn refused(auth: Option<&HttpAuth>) -> Response {
    let challenge = match auth {
        Some(HttpAuth::Basic { .. }) => "Basic realm=\"pgsidecar\", charset=\"UTF-8\"",
        _ => "Bearer realm=\"pgsidecar\"",
    };
    (
        StatusCode::UNAUTHORIZED,
        [("www-authenticate", challenge)],
        "authorization required\n",
    )
        .into_response()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    job: String,
    database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    job: String,
    database: String,
    destination: String,
}

type FGauge = Family<Labels, Gauge<f64, AtomicU64>>;
type FCounter = Family<Labels, Counter>;

/// Prometheus text for `status` at `now` (pure).
pub fn render_metrics(status: &Status, now: DateTime<Utc>) -> String {
    let mut registry = Registry::with_prefix("pgsidecar");
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let f = FGauge::default();
        registry.register(name, help, f.clone());
        f
    };
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let f = FCounter::default();
        registry.register(name, help, f.clone());
        f
    };
    let last_success = gauge(
        &mut registry,
        "last_success_timestamp_seconds",
        "Start time of the newest successful backup",
    );
    let age = gauge(
        &mut registry,
        "last_success_age_seconds",
        "Age of the newest successful backup",
    );
    let last_attempt = gauge(
        &mut registry,
        "last_attempt_timestamp_seconds",
        "Time of the last backup attempt",
    );
    let duration = gauge(
        &mut registry,
        "last_duration_seconds",
        "Duration of the last successful backup",
    );
    let stored = gauge(
        &mut registry,
        "last_stored_bytes",
        "Stored (compressed) size of the last successful backup",
    );
    let raw = gauge(
        &mut registry,
        "last_raw_bytes",
        "Raw pg_dump size of the last successful backup",
    );
    let backups = counter(&mut registry, "backups", "Successful backups since start");
    let attempts = counter(&mut registry, "attempts", "Backup attempts since start");
    let failures = counter(
        &mut registry,
        "failures",
        "Failed backup runs (all attempts failed) since start",
    );
    let skipped = counter(&mut registry, "skipped", "Skipped firings since start");
    let drill_at = gauge(
        &mut registry,
        "drill_last_timestamp_seconds",
        "Time of the last restore drill",
    );
    let drill_passed = gauge(
        &mut registry,
        "drill_last_passed",
        "1 if the last restore drill passed, 0 if it failed",
    );
    let drill_secs = gauge(
        &mut registry,
        "drill_restore_seconds",
        "Time the last passing restore drill took to restore and check (the measured RTO)",
    );
    let pruned = counter(
        &mut registry,
        "pruned",
        "Backups deleted by prune since start",
    );
    let drill_failures = counter(
        &mut registry,
        "drill_failures",
        "Failed restore drills since start",
    );
    let max_age = gauge(
        &mut registry,
        "backup_max_age_seconds",
        "Oldest the newest successful backup may be before health fails (schedule period plus grace)",
    );
    let anomalies = gauge(
        &mut registry,
        "last_anomalies",
        "Size anomalies (and missing row counts) the newest successful backup recorded",
    );
    let dest_success = Family::<DestinationLabels, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "destination_last_success_timestamp_seconds",
        "Start time of the newest backup stored in this destination",
        dest_success.clone(),
    );
    let dest_age = Family::<DestinationLabels, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "destination_last_success_age_seconds",
        "Age of the newest backup stored in this destination",
        dest_age.clone(),
    );
    let dest_failures = Family::<DestinationLabels, Counter>::default();
    registry.register(
        "destination_failures",
        "Backup runs that stored nothing in this destination, since start",
        dest_failures.clone(),
    );
    for job in &status.jobs {
        for db in &job.databases {
            for (name, d) in &db.destinations {
                let l = DestinationLabels {
                    job: job.name.clone(),
                    database: db.database.clone(),
                    destination: name.clone(),
                };
                if let Some(t) = d.last_success_at {
                    dest_success.get_or_create(&l).set(t.timestamp() as f64);
                    dest_age
                        .get_or_create(&l)
                        .set((now - t).num_seconds() as f64);
                }
                dest_failures.get_or_create(&l).inc_by(d.failures_total);
            }
            let l = Labels {
                job: job.name.clone(),
                database: db.database.clone(),
            };
            if let Some(t) = db.last_success_at {
                last_success.get_or_create(&l).set(t.timestamp() as f64);
                age.get_or_create(&l).set((now - t).num_seconds() as f64);
            }
            if let Some(t) = db.last_attempt_at {
                last_attempt.get_or_create(&l).set(t.timestamp() as f64);
            }
            if let Some(m) = job.max_age_secs {
                max_age.get_or_create(&l).set(m as f64);
            }
            if db.last_success_at.is_some() {
                anomalies
                    .get_or_create(&l)
                    .set(db.last_anomalies.len() as f64);
            }
            if let Some(d) = db.last_duration_secs {
                duration.get_or_create(&l).set(d);
            }
            if let Some(b) = db.last_stored_bytes {
                stored.get_or_create(&l).set(b as f64);
            }
            if let Some(b) = db.last_raw_bytes {
                raw.get_or_create(&l).set(b as f64);
            }
            backups.get_or_create(&l).inc_by(db.backups_total);
            attempts.get_or_create(&l).inc_by(db.attempts_total);
            failures.get_or_create(&l).inc_by(db.failures_total);
            skipped.get_or_create(&l).inc_by(db.skipped_total);
            if let Some(t) = db.last_drill_at {
                drill_at.get_or_create(&l).set(t.timestamp() as f64);
            }
            if let Some(p) = db.last_drill_passed {
                drill_passed
                    .get_or_create(&l)
                    .set(if p { 1.0 } else { 0.0 });
            }
            if let Some(d) = db.last_drill_restore_secs {
                drill_secs.get_or_create(&l).set(d);
            }
            drill_failures
                .get_or_create(&l)
                .inc_by(db.drill_failures_total);
            pruned.get_or_create(&l).inc_by(db.pruned_total);
        }
    }
    if let Some(p) = &status.pitr {
        register_pitr(&mut registry, p, now);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

/// The `pgsidecar_pitr_*` metrics of WAL archiving.
fn register_pitr(
    registry: &mut Registry,
    p: &crate::health::status::PitrStatus,
    now: DateTime<Utc>,
) {
    let mut gauge = |name: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(v);
            registry.register(name, help, g);
        }
    };
    gauge(
        "pitr_archive_lag_seconds",
        "Age of the oldest WAL the server wrote that is not stored yet (0 when all is)",
        p.lag_secs.map(|l| l as f64),
    );
    gauge(
        "pitr_max_lag_seconds",
        "Archive lag above which health fails (pitr.max_lag)",
        Some(p.max_lag_secs as f64),
    );
    gauge(
        "pitr_last_stored_timestamp_seconds",
        "When the last WAL object was stored",
        p.last_stored_at.map(|t| t.timestamp() as f64),
    );
    gauge(
        "pitr_slot_retained_bytes",
        "WAL the sidecar's replication slot holds on the server",
        p.slot_retained_bytes.map(|b| b as f64),
    );
    gauge(
        "pitr_slot_keep_bytes",
        "max_slot_wal_keep_size of the server, when bounded",
        p.slot_keep_bytes.map(|b| b as f64),
    );
    gauge(
        "pitr_slot_lost",
        "1 when the replication slot is lost or missing",
        Some(if p.slot_lost { 1.0 } else { 0.0 }),
    );
    gauge(
        "pitr_base_backup_last_success_timestamp_seconds",
        "When the newest base backup finished",
        p.last_base_backup_at.map(|t| t.timestamp() as f64),
    );
    gauge(
        "pitr_base_backup_age_seconds",
        "Age of the newest base backup",
        p.last_base_backup_at
            .map(|t| (now - t).num_seconds() as f64),
    );
    gauge(
        "pitr_wal_gaps",
        "1 when the periodic WAL check found a hole in the newest base backup's chain",
        Some(if p.gap.is_some() { 1.0 } else { 0.0 }),
    );
    gauge(
        "pitr_drill_last_timestamp_seconds",
        "When the last point-in-time restore drill ran",
        p.last_drill_at.map(|t| t.timestamp() as f64),
    );
    gauge(
        "pitr_drill_age_seconds",
        "Time since the last point-in-time restore drill ran",
        p.last_drill_at.map(|t| (now - t).num_seconds() as f64),
    );
    gauge(
        "pitr_drill_last_passed",
        "1 if the last point-in-time restore drill passed, 0 if it failed",
        p.last_drill_passed.map(|b| if b { 1.0 } else { 0.0 }),
    );
    gauge(
        "pitr_drill_rto_seconds",
        "Time the last passing point-in-time drill took from the restore's start to a promoted, checked server",
        p.last_drill_rto_secs,
    );
    gauge(
        "pitr_drill_rpo_seconds",
        "Time between the last passing point-in-time drill's target and the last commit it brought back",
        p.last_drill_rpo_secs,
    );
    let mut counter = |name: &str, help: &str, value: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        registry.register(name, help, c);
    };
    counter(
        "pitr_drill_failures",
        "Failed point-in-time restore drills since start",
        p.drill_failures_total,
    );
    counter(
        "pitr_receiver_restarts",
        "Archiving sessions that ended in an error and were started again, since start",
        p.receiver_restarts_total,
    );
    counter(
        "pitr_alerts",
        "WAL archiving alerts sent since start",
        p.alerts_total,
    );
}

/// Serves `/healthz` and `/metrics` on `addr` until `shutdown`, from the board `status`
/// returns at each request.
pub async fn serve(
    addr: std::net::SocketAddr,
    auth: Option<HttpAuth>,
    status: impl Fn() -> Status + Clone + Send + Sync + 'static,
    clock: crate::schedule::Clock,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let health_status = status.clone();
    let page_status = status.clone();
    let (page_auth, health_auth, metrics_auth) = (auth.clone(), auth.clone(), auth);
    let app = Router::new()
        .route(
            "/",
            get(move |headers: HeaderMap| {
                let allowed = allows(page_auth.as_ref(), &headers);
                let page = allowed.then(|| super::page::render(&page_status(), clock.now()));
                async move {
                    match page {
                        Some(html) => (
                            StatusCode::OK,
                            [("content-type", "text/html; charset=utf-8")],
                            html,
                        )
                            .into_response(),
                        None => refused(page_auth.as_ref()),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move |headers: HeaderMap| {
                let problems = health_status().problems(clock.now());
                // Probes need only the status; why it fails names databases, hosts and keys,
                // which a guarded listener shows only to those who may see the page.
                let detailed = allows(health_auth.as_ref(), &headers);
                async move {
                    match (problems.is_empty(), detailed) {
                        (true, _) => (StatusCode::OK, "ok\n".to_string()),
                        (false, true) => {
                            (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
                        }
                        (false, false) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unhealthy (credentials show why)\n".to_string(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let allowed = allows(metrics_auth.as_ref(), &headers);
                let text = allowed.then(|| render_metrics(&status(), clock.now()));
                async move {
                    match text {
                        Some(text) => (
                            [(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        )
                            .into_response(),
                        None => refused(metrics_auth.as_ref()),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving the status page at /, /healthz and /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::status::PitrStatus;

    #[test]
    fn archiving_metrics_appear_only_with_archiving() {
        let now: DateTime<Utc> = "2026-11-30T12:00:00Z".parse().unwrap();
        let mut status = Status {
            pid: 1,
            started_at: now,
            heartbeat_at: now,
            jobs: vec![],
            pitr: None,
        };
        assert!(!render_metrics(&status, now).contains("pitr"));
        status.pitr = Some(PitrStatus {
            lag_secs: Some(42),
            max_lag_secs: 300,
            slot_retained_bytes: Some(16 << 20),
            slot_keep_bytes: Some(1 << 30),
            last_base_backup_at: Some(now - chrono::TimeDelta::hours(2)),
            receiver_restarts_total: 3,
            ..Default::default()
        });
        let text = render_metrics(&status, now);
        for line in [
            "pgsidecar_pitr_archive_lag_seconds 42.0",
            "pgsidecar_pitr_max_lag_seconds 300.0",
            "pgsidecar_pitr_slot_retained_bytes 16777216.0",
            "pgsidecar_pitr_slot_keep_bytes 1073741824.0",
            "pgsidecar_pitr_slot_lost 0.0",
            "pgsidecar_pitr_base_backup_age_seconds 7200.0",
            "pgsidecar_pitr_receiver_restarts_total 3",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // Never stored yet: no timestamp rather than a zero that reads as 1970.
        assert!(
            !text.contains("pitr_last_stored_timestamp_seconds"),
            "{text}"
        );
    }
}

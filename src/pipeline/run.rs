//! Job pipeline: the one place that knows what follows a backup. A run of one database is
//! backup (with retries when asked) → status board → retention → notification, the same for a
//! scheduled firing and for `pgsidecar backup`.
//!
//! Invariants: prune runs only after a success, and only on that database (another whose
//! newest attempt failed keeps everything it has); a failure is recorded before it is
//! notified, so `health` never lags a message; one failing database never stops the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::backup::{self, BackupError, Completed, Missed, WhenBusy};
use super::destinations::{Delivery, Placement};
use super::Job;
use crate::health::Board;
use crate::notify::{Dispatcher, Event, EventKind};
use crate::retry::RetryPolicy;
use crate::schedule::Clock;
use crate::source::ToolsConfig;
use crate::storage::{Destination, Storage};

/// Everything a run needs besides its job, built once by the composition root.
pub struct Context {
    /// The primary destination (`[storage]`).
    pub storage: Storage,
    /// The `[[copies]]` destinations, in the order of their names.
    pub copies: Vec<Destination>,
    pub notify: Dispatcher,
    pub board: Board,
    pub clock: Clock,
    pub tools: ToolsConfig,
    /// This sidecar's name in notifications (the container's host name).
    pub sidecar: String,
    /// Stops waiting and retrying (SIGTERM).
    pub shutdown: CancellationToken,
    /// Stops the running backup or drill (SIGTERM, after the daemon's grace period).
    pub abort: CancellationToken,
    /// One per database: a process's backups and drills of one database take turns here
    /// instead of skipping each other at the advisory lock, which is for other sidecars.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How a run was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A firing of the job's schedule (or the catch-up of a missed one) at this time: retried
    /// by the job's policy, skipped when another sidecar is doing the same work.
    Scheduled(DateTime<Utc>),
    /// `run` without any schedule: one backup of every job, retried by the job's policy,
    /// skipped when another sidecar holds the database's backup lock.
    Once,
    /// `pgsidecar backup`: waits for another backup of the database, and tries once unless
    /// `retry` (`--retry`) asks for the job's policy.
    Manual { retry: bool },
}

/// How one database's run ended.
pub struct Outcome {
    pub database: String,
    pub result: Result<Completed, BackupError>,
    /// Attempts made.
    pub attempts: u32,
    /// What kept the retention policy from being applied after a successful backup (the
    /// backup itself is stored; the next run prunes again).
    pub prune_errors: Vec<String>,
}

impl Context {
    /// A context for `storage`, `notify` and `board`, reading time from `clock`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        storage: Storage,
        copies: Vec<Destination>,
        notify: Dispatcher,
        board: Board,
        clock: Clock,
        tools: ToolsConfig,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) -> Context {
        Context {
            storage,
            copies,
            notify,
            board,
            clock,
            tools,
            sidecar: hostname(),
            shutdown,
            abort,
            turns: Mutex::default(),
        }
    }

    /// The store of destination `name` (`primary` or a copy's name).
    pub fn store(&self, name: &str) -> Option<&Storage> {
        crate::storage::find(&self.storage, &self.copies, name)
    }

    /// The turn of one database: its backups and drills run one at a time in this process.
    pub fn turn(&self, job: &Job, db: &str) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!("{}:{}/{db}", job.database.host, job.database.port);
        let mut turns = self.turns.lock().expect("not poisoned");
        turns.entry(key).or_default().clone()
    }

    /// An event of `kind` about `db`, with the facts every event carries.
    pub fn event(
        &self,
        job: &Job,
        db: &str,
        kind: EventKind,
        attempt: u32,
        fill: impl FnOnce(&mut Event),
    ) -> Event {
        let now = self.clock.now();
        let mut e = Event {
            kind,
            job: job.name.clone(),
            database: db.to_string(),
            server: format!("{}:{}", job.database.host, job.database.port),
            sidecar: self.sidecar.clone(),
            attempt,
            attempts: job.retry.attempts,
            at: now,
            stored_bytes: None,
            raw_bytes: None,
            duration_secs: None,
            key: None,
            next_run: job.schedule.as_ref().and_then(|s| s.next_after(now)),
            error: None,
            stderr_tail: Vec::new(),
            summary: None,
            pruned: 0,
            warnings: Vec::new(),
            anomalies: Vec::new(),
        };
        fill(&mut e);
        e
    }
}

/// The name events give the sidecar: the container's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pgsidecar".to_string())
}

/// Runs `job` for every database it backs up, at most `max_parallel` at once. `Err` when
/// the databases of a `*` job cannot be listed (recorded as a failure and notified).
pub async fn run_job(
    ctx: &Context,
    job: &Job,
    trigger: Trigger,
) -> Result<Vec<Outcome>, BackupError> {
    let databases = match backup::databases(job).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(job = %job.name, "{e}");
            ctx.notify
                .dispatch(ctx.event(job, "*", EventKind::Failed, 1, |ev| {
                    ev.error = Some(format!("cannot list the databases to back up: {e}"));
                }));
            return Err(e);
        }
    };
    Ok(futures::stream::iter(databases)
        .map(|db| async move {
            if ctx.shutdown.is_cancelled() {
                return Outcome {
                    result: Err(BackupError::Cancelled {
                        database: db.clone(),
                    }),
                    database: db,
                    attempts: 0,
                    prune_errors: Vec::new(),
                };
            }
            run_database(ctx, job, &db, trigger).await
        })
        .buffer_unordered(job.max_parallel)
        .collect()
        .await)
}

/// Backs up `db` of `job` and runs its tail: status, retention, notification.
pub async fn run_database(ctx: &Context, job: &Job, db: &str, trigger: Trigger) -> Outcome {
    let turn = ctx.turn(job, db);
    let _turn = turn.lock().await;
    let (when_busy, policy) = match trigger {
        Trigger::Scheduled(at) => (WhenBusy::Skip(Some(at)), job.retry.clone()),
        Trigger::Once => (WhenBusy::Skip(None), job.retry.clone()),
        Trigger::Manual { retry } => (
            WhenBusy::Wait,
            if retry {
                job.retry.clone()
            } else {
                RetryPolicy {
                    attempts: 1,
                    ..job.retry.clone()
                }
            },
        ),
    };
    // Events say how many attempts this run makes (one by hand without --retry).
    let event = |kind, attempt, fill: &dyn Fn(&mut Event)| {
        let mut e = ctx.event(job, db, kind, attempt, fill);
        e.attempts = policy.attempts;
        e
    };
    ctx.notify.dispatch(event(EventKind::Started, 1, &|_| {}));
    let progress = Mutex::new(Progress {
        remaining: job.placements(),
        stored: Vec::new(),
        failed: Vec::new(),
    });
    let (result, attempts) = crate::retry::retry(
        &policy,
        &ctx.shutdown,
        |e: &BackupError| e.is_permanent(),
        |attempt, e, wait| {
            ctx.board.update_db(&job.name, db, |entry| {
                entry.attempts_total += 1;
                entry.last_attempt_at = Some(ctx.clock.now());
                entry.last_error = Some(crate::secret::redact(&e.to_string()).into_owned());
            });
            if matches!(e, BackupError::Busy { .. }) {
                return;
            }
            match wait {
                Some(w) => {
                    tracing::warn!(job = %job.name, database = %db, attempt, attempts = policy.attempts, "attempt failed, retrying in {}: {e}", humantime::format_duration(w));
                    ctx.notify.dispatch(event(EventKind::AttemptFailed, attempt, &|ev| {
                        ev.error = Some(e.to_string());
                        ev.stderr_tail = e.stderr_tail().to_vec();
                    }));
                }
                None => tracing::error!(job = %job.name, database = %db, attempt, attempts = policy.attempts, "backup failed: {e}"),
            }
        },
        |_| attempt(ctx, job, db, when_busy, &progress),
    )
    .await;
    let progress = progress.into_inner().expect("not poisoned");
    for (name, m) in &progress.stored {
        ctx.board.update_db(&job.name, db, |entry| {
            let d = entry.destinations.entry(name.clone()).or_default();
            d.last_success_at = d.last_success_at.max(Some(m.started_at));
        });
    }
    let unreached: Vec<String> = match &result {
        Ok(()) => progress
            .failed
            .iter()
            .map(|m| m.destination.clone())
            .collect(),
        Err(_) => progress
            .remaining
            .iter()
            .map(|p| p.destination.clone())
            .collect(),
    };
    for name in unreached {
        ctx.board.update_db(&job.name, db, |entry| {
            entry.destinations.entry(name).or_default().failures_total += 1
        });
    }
    let result = result.map(|()| Completed {
        manifest: progress.stored[0].1.clone(),
        stored: progress.stored,
        failed: progress.failed,
    });
    let mut prune_errors = Vec::new();
    match &result {
        Ok(done) => {
            let m = &done.manifest;
            ctx.board.update_db(&job.name, db, |entry| {
                entry.attempts_total += 1;
                entry.backups_total += 1;
                entry.last_attempt_at = Some(m.started_at);
                entry.last_success_at = Some(m.started_at);
                entry.last_duration_secs = Some(m.duration_ms as f64 / 1000.0);
                entry.last_stored_bytes = Some(m.stored_bytes);
                entry.last_raw_bytes = Some(m.raw_bytes);
                entry.last_key = Some(m.key.clone());
                entry.last_error = None;
                entry.last_anomalies = m.anomalies.clone();
                entry.remember(crate::health::status::RecentBackup {
                    started_at: m.started_at,
                    stored_bytes: m.stored_bytes,
                    duration_secs: m.duration_ms as f64 / 1000.0,
                    anomaly: !m.anomalies.is_empty(),
                });
            });
            let (pruned, errors) = prune_after_backup(ctx, job, db, &done.stored).await;
            prune_errors = errors;
            ctx.board.save();
            let kind = if attempts > 1 {
                EventKind::SucceededAfterRetries
            } else {
                EventKind::Succeeded
            };
            ctx.notify.dispatch(event(kind, attempts, &|e| {
                e.stored_bytes = Some(m.stored_bytes);
                e.raw_bytes = Some(m.raw_bytes);
                e.duration_secs = Some(m.duration_ms as f64 / 1000.0);
                e.key = Some(m.key.clone());
                if pruned > 0 {
                    e.summary = Some(format!(
                        "Pruned {pruned} old backup(s) by the retention policy."
                    ));
                }
                e.pruned = pruned;
                e.anomalies = m.anomalies.clone();
                e.warnings = m.anomalies.clone();
                e.warnings.extend(
                    done.failed
                        .iter()
                        .map(|f| format!("not stored in `{}`: {}", f.destination, f.error)),
                );
                e.warnings.extend(prune_errors.iter().cloned());
                if !job.copies.is_empty() {
                    let names: Vec<&str> = done.stored.iter().map(|(n, _)| n.as_str()).collect();
                    let stored = format!("Stored in {}.", names.join(", "));
                    e.summary = Some(match e.summary.take() {
                        Some(s) => format!("{stored} {s}"),
                        None => stored,
                    });
                }
            }));
        }
        Err(BackupError::Busy { .. }) => {
            tracing::info!(job = %job.name, database = %db, "another sidecar is backing up this database; firing skipped");
            ctx.board
                .update_db(&job.name, db, |entry| entry.skipped_total += 1);
        }
        Err(e) => {
            ctx.board
                .update_db(&job.name, db, |entry| entry.failures_total += 1);
            ctx.board.save();
            ctx.notify
                .dispatch(event(EventKind::Failed, attempts, &|ev| {
                    ev.error = Some(e.to_string());
                    ev.stderr_tail = e.stderr_tail().to_vec();
                }));
        }
    }
    Outcome {
        database: db.to_string(),
        result,
        attempts,
        prune_errors,
    }
}

/// What a run has stored so far, across its attempts: a retry goes only to the destinations
/// still in `remaining`.
struct Progress {
    remaining: Vec<Placement>,
    stored: Vec<(String, crate::catalog::manifest::Manifest)>,
    failed: Vec<Missed>,
}

/// One attempt of a run: a backup to every destination that lacks one from this run. `Ok`
/// when none lacks one, or, with `destinations.policy = "any"`, when one holds it.
async fn attempt(
    ctx: &Context,
    job: &Job,
    db: &str,
    when_busy: WhenBusy,
    progress: &Mutex<Progress>,
) -> Result<(), BackupError> {
    let remaining = progress.lock().expect("not poisoned").remaining.clone();
    let targets: Vec<backup::Target> = remaining
        .iter()
        .filter_map(|place| {
            Some(backup::Target {
                storage: ctx.store(&place.destination)?,
                place,
            })
        })
        .collect();
    let result =
        backup::backup_database(job, &ctx.tools, &targets, db, when_busy, &ctx.abort).await;
    let mut p = progress.lock().expect("not poisoned");
    let failed = match result {
        Ok(done) => {
            p.stored.extend(done.stored);
            done.failed
        }
        Err(e) if p.stored.is_empty() => return Err(e),
        Err(BackupError::Nowhere { failed, .. }) => failed,
        Err(e) => remaining
            .iter()
            .map(|place| backup::missed_by(place.destination.clone(), &e))
            .collect(),
    };
    p.remaining
        .retain(|place| failed.iter().any(|m| m.destination == place.destination));
    p.failed = failed;
    if p.remaining.is_empty() || job.delivery == Delivery::Any {
        return Ok(());
    }
    Err(BackupError::Partial {
        database: db.to_string(),
        stored: p.stored.iter().map(|(n, _)| n.clone()).collect(),
        failed: p.failed.clone(),
    })
}

/// Prunes `db` in every destination that holds the new backup, each by its own retention;
/// returns how many backups were deleted and what failed. A failed prune is logged and
/// returned, never turned into a failed backup: the backup is stored, and the next run prunes
/// again. A destination the backup did not reach is not pruned.
async fn prune_after_backup(
    ctx: &Context,
    job: &Job,
    db: &str,
    stored: &[(String, crate::catalog::manifest::Manifest)],
) -> (u64, Vec<String>) {
    let (mut deleted, mut errors) = (0, Vec::new());
    for place in job.placements() {
        let (Some(storage), true) = (
            ctx.store(&place.destination),
            stored.iter().any(|(n, _)| *n == place.destination),
        ) else {
            continue;
        };
        let (d, e) = prune_destination(ctx, job, db, &place, storage).await;
        deleted += d;
        errors.extend(e);
    }
    ctx.board
        .update_db(&job.name, db, |entry| entry.pruned_total += deleted);
    (deleted, errors)
}

async fn prune_destination(
    ctx: &Context,
    job: &Job,
    db: &str,
    place: &Placement,
    storage: &Storage,
) -> (u64, Vec<String>) {
    if place.retention.is_none() {
        return (0, Vec::new());
    }
    // Messages name the destination only when there is more than one.
    let named = |m: String| {
        if job.copies.is_empty() {
            m
        } else {
            format!("{}: {m}", place.destination)
        }
    };
    let reports = match crate::retention::prune::prune_job(
        storage,
        job.prune_scope_in(place),
        Some(db),
        &|_| false,
        false,
        ctx.clock.now(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(job = %job.name, database = %db, destination = %place.destination, "cannot prune: {e}");
            return (0, vec![named(format!("cannot prune: {e}"))]);
        }
    };
    let (mut deleted, mut errors) = (0, Vec::new());
    for report in &reports {
        if let Some(why) = &report.held {
            tracing::info!(job = %job.name, database = %db, "not pruning: {why}");
        }
        for (key, until) in &report.locked {
            tracing::info!(job = %job.name, database = %db, key, "not pruned: object lock until {until}");
        }
        for e in &report.errors {
            tracing::warn!(job = %job.name, database = %db, destination = %place.destination, "prune: {e}");
            errors.push(named(format!("prune: {e}")));
        }
        deleted += report.deleted.len() as u64;
    }
    if deleted > 0 {
        tracing::info!(job = %job.name, database = %db, destination = %place.destination, count = deleted, "pruned old backups");
    }
    (deleted, errors)
}

//! Restore drill: proves on a schedule that the newest backup of each database can actually be
//! restored. It is restored into a scratch database, its tables and row counts are compared
//! with those the manifest recorded at backup time, the time it took (the recovery time a real
//! restore would need) is measured, and the scratch database is dropped again.
//!
//! A drill never touches the database it came from: it only creates and drops its own
//! `<db>__drill_<time>` database. An encrypted backup is decrypted with the job's
//! `[encryption]` keys (the identity file, or the passphrase), so the drill also proves that
//! the key kept for restores still opens the backups.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::catalog;
use crate::pipeline::Job;
use crate::restore::{self, Mode, Options, RestoreError};
use crate::shutdown::Bounded;
use crate::source::DatabaseConfig;
use crate::source::ToolsConfig;
use crate::storage::{Storage, StorageError};

/// Why a drill failed.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("cannot list the backups of `{database}`: {source}")]
    Catalog {
        database: String,
        #[source]
        source: StorageError,
    },
    #[error("there is no complete backup of `{database}` to drill with")]
    NoBackup { database: String },
    #[error("restore drill of `{key}` gave up after {} (retry.attempt_timeout): a connection stopped answering or the restore is slower than the limit allows; {left}", humantime::format_duration(*.limit))]
    TimedOut {
        key: String,
        limit: Duration,
        left: String,
    },
    #[error("restore drill of `{key}` failed: {source}")]
    Restore {
        key: String,
        #[source]
        source: RestoreError,
    },
}

/// What a passing drill found.
#[derive(Debug)]
pub struct DrillReport {
    pub key: String,
    pub backup_age: chrono::TimeDelta,
    /// Time from the start of the download to a checked database.
    pub restore_time: Duration,
    pub stored_bytes: u64,
    pub tables: usize,
    pub rows: u64,
    /// Whether the manifest had row counts to compare with (older backups do not).
    pub counts_checked: bool,
}

impl DrillReport {
    /// One line for logs and notifications.
    pub fn summary(&self) -> String {
        format!(
            "restored in {:.1}s: {} tables, {} rows{}; backup was {} old",
            self.restore_time.as_secs_f64(),
            self.tables,
            self.rows,
            if self.counts_checked {
                ", every table and row count matches the manifest"
            } else {
                " (this backup has no recorded row counts to compare with)"
            },
            catalog::human_age(self.backup_age)
        )
    }
}

/// Drills the newest backup of `database` of `job` on `server`.
#[tracing::instrument(name = "drill", skip_all, fields(job = %job.name, database = %database))]
pub async fn drill(
    job: &Job,
    server: &DatabaseConfig,
    tools: &ToolsConfig,
    storage: &Storage,
    database: &str,
    cancel: &CancellationToken,
) -> Result<DrillReport, DrillError> {
    let catalog = catalog::load(storage, &job.prefix, Some(database))
        .await
        .map_err(|source| DrillError::Catalog {
            database: database.to_string(),
            source,
        })?;
    let entry = catalog
        .entries
        .first()
        .ok_or_else(|| DrillError::NoBackup {
            database: database.to_string(),
        })?;
    let m = &entry.manifest;
    let restore_err = |source| DrillError::Restore {
        key: m.key.clone(),
        source,
    };
    let scratch = restore::scratch_name(database, crate::keys::DRILL_TAG, Utc::now());
    let mode = Mode::NewDatabase {
        name: scratch.clone(),
        replace: false,
        drop_old: false,
    };
    let options = Options {
        progress: false,
        encryption: job.encryption.clone(),
        scratch: true,
        ..Options::default()
    };
    tracing::info!(key = %m.key, scratch = %scratch, "restore drill starting");
    // A drill holds its database's turn, so a connection that stops answering would also hold
    // back that database's backups: the drill gets the same time limit as a backup attempt.
    let limit = job.retry.attempt_timeout;
    let scratch_name = &scratch;
    let attempt = crate::shutdown::within(limit, cancel, |token| async move {
        let plan = restore::plan(entry, storage, server, tools, mode, options).await?;
        // Every drill ends within the limit (plus its cleanup), so an older scratch database
        // is one whose drill was killed (a SIGKILL, a lost node) and will never be dropped.
        if let Some(stale) = Utc::now().checked_sub_signed(crate::shutdown::longest_run(limit)) {
            let major = plan.target.server_major;
            for name in restore::drop_stale_scratch(server, database, crate::keys::DRILL_TAG, stale, major).await {
                tracing::warn!(scratch = %name, "dropped a scratch database left by an interrupted drill");
            }
        }
        let restored = restore::execute(&plan, storage, &token).await?;
        restore::drop_scratch(server, scratch_name, plan.target.server_major)
            .await
            .map_err(|cause| restore::RestoreError::ScratchLeft {
                database: scratch_name.clone(),
                cause,
            })?;
        Ok(restored)
    })
    .await;
    let restored = match attempt {
        Bounded::Finished(r)
        | Bounded::TimedOut {
            cleaned_up: Some(r @ Ok(_)),
        } => r.map_err(restore_err)?,
        Bounded::TimedOut { cleaned_up } => {
            return Err(DrillError::TimedOut {
                key: m.key.clone(),
                limit,
                left: match cleaned_up {
                    Some(_) => "its scratch database was dropped".to_string(),
                    None => {
                        format!("its scratch database `{scratch}` may be left: drop it by hand")
                    }
                },
            })
        }
    };
    let report = DrillReport {
        key: m.key.clone(),
        backup_age: Utc::now() - m.started_at,
        restore_time: restored.duration,
        stored_bytes: m.stored_bytes,
        tables: restored.tables.len(),
        rows: restored.rows(),
        counts_checked: m.tables.is_some(),
    };
    tracing::info!(key = %m.key, "restore drill passed: {}", report.summary());
    Ok(report)
}

/// The databases of `job` a drill restores: its list, or with `*` those with backups in
/// storage (a drill needs backups, not the source server).
pub async fn databases(storage: &Storage, job: &Job) -> Result<Vec<String>, DrillError> {
    if !job.databases.iter().any(|d| d == "*") {
        return Ok(job
            .databases
            .iter()
            .filter(|d| !job.exclude.contains(d))
            .cloned()
            .collect());
    }
    let found = catalog::load(storage, &job.prefix, None)
        .await
        .map_err(|source| DrillError::Catalog {
            database: "*".into(),
            source,
        })?;
    let mut names: Vec<String> = found
        .entries
        .into_iter()
        .map(|e| e.manifest.database)
        .filter(|d| !job.exclude.contains(d))
        .collect();
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

/// One drill of each database of `jobs` (`only`: just that database), recorded on the board
/// and notified like a backup. Returns `(job, database, outcome)` in order.
pub async fn run_drills<'a>(
    ctx: &super::run::Context,
    jobs: &'a [Job],
    only: Option<&str>,
) -> Vec<(&'a Job, String, Result<DrillReport, DrillError>)> {
    use crate::notify::EventKind;
    let mut out = Vec::new();
    for job in jobs {
        let names = match databases(&ctx.storage, job).await {
            Ok(n) => n,
            Err(e) => {
                // Said and notified: a drill that cannot even list its backups failed.
                tracing::error!(job = %job.name, "{e}");
                ctx.notify
                    .dispatch(ctx.event(job, "*", EventKind::DrillFailed, 1, |ev| {
                        ev.error = Some(e.to_string());
                        ev.next_run = None;
                    }));
                out.push((job, "*".to_string(), Err(e)));
                continue;
            }
        };
        for db in names.into_iter().filter(|d| only.is_none_or(|o| o == d)) {
            if ctx.shutdown.is_cancelled() {
                return out;
            }
            // A drill waits for a backup of the same database to finish: it restores the
            // newest one.
            let turn = ctx.turn(job, &db);
            let _turn = turn.lock().await;
            let result = drill(
                job,
                &job.drill_server,
                &ctx.tools,
                &ctx.storage,
                &db,
                &ctx.abort,
            )
            .await;
            ctx.board.update_listed_db(&job.name, &db, |entry| {
                entry.last_drill_at = Some(ctx.clock.now());
                entry.last_drill_passed = Some(result.is_ok());
                match &result {
                    Ok(r) => entry.last_drill_restore_secs = Some(r.restore_time.as_secs_f64()),
                    Err(_) => entry.drill_failures_total += 1,
                }
            });
            ctx.board.save();
            let event = match &result {
                Ok(r) => ctx.event(job, &db, EventKind::DrillPassed, 1, |e| {
                    e.key = Some(r.key.clone());
                    e.stored_bytes = Some(r.stored_bytes);
                    e.duration_secs = Some(r.restore_time.as_secs_f64());
                    e.summary = Some(r.summary());
                    e.next_run = None;
                }),
                Err(err) => {
                    tracing::error!(job = %job.name, database = %db, "{err}");
                    ctx.event(job, &db, EventKind::DrillFailed, 1, |e| {
                        e.error = Some(err.to_string());
                        e.next_run = None;
                    })
                }
            };
            ctx.notify.dispatch(event);
            out.push((job, db, result));
        }
    }
    out
}

//! Restore stage, carrying a plan out. Invariant: nothing existing is dropped or overwritten
//! before the replacement has been fully restored and checked; a failure before the swap
//! drops the scratch database and leaves everything else as it was.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::restorer::{hint_for, Restorer};
use super::scratch::{drop_database, swap};
use super::shape::Shape;
use super::verify::{self, Feed};
use super::{ident, maintenance, query_err, Mode, Plan, RestoreError};
use crate::keys;
use crate::source::dump;
use crate::source::tables::{self, TableRows};
use crate::storage::Storage;

/// What a finished restore did.
#[derive(Debug)]
pub struct Restored {
    pub database: String,
    /// Where the replaced database was kept, if one was.
    pub kept_old: Option<String>,
    pub duration: Duration,
    pub tables: Vec<TableRows>,
    pub stored_bytes: u64,
}

impl Restored {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Runs the restore described by `plan`.
pub async fn execute(
    plan: &Plan,
    storage: &Storage,
    cancel: &CancellationToken,
) -> Result<Restored, RestoreError> {
    let clock = Instant::now();
    let t = &plan.target;
    if let Some(roles) = plan.roles.as_ref().filter(|r| !r.statements.is_empty()) {
        let admin = maintenance(&plan.server).await?;
        let sql = format!("BEGIN;\n{}\nCOMMIT;", roles.statements.join("\n"));
        admin.batch_execute(&sql).await.map_err(query_err(
            "creating the missing roles (nothing else was changed)",
        ))?;
        tracing::info!(roles = %roles.missing.join(", "), "created the missing roles");
    }
    match &plan.mode {
        Mode::InPlace => {
            let left = format!("database `{}` is unchanged", t.name);
            restore_into(plan, storage, &t.name, true, cancel, &left).await?;
            let tables = count_tables(plan, &t.name).await?;
            Ok(Restored {
                database: t.name.clone(),
                kept_old: None,
                duration: clock.elapsed(),
                tables,
                stored_bytes: plan.entry.manifest.stored_bytes,
            })
        }
        Mode::NewDatabase { name, drop_old, .. } => {
            let admin = maintenance(&plan.server).await?;
            let now = Utc::now();
            let scratch = keys::scratch_name(name, keys::RESTORING_TAG, now);
            let shape = Shape::decide(plan, &admin).await?;
            for note in &shape.notes {
                tracing::warn!("not carried over: {note}");
            }
            shape.create(&admin, &scratch, t.server_major).await?;
            let left = match &t.existing {
                Some(_) => {
                    format!("`{name}` is unchanged; the partial restore `{scratch}` was dropped")
                }
                None => format!("the partial restore `{scratch}` was dropped"),
            };
            let restored = async {
                restore_into(plan, storage, &scratch, false, cancel, &left).await?;
                let tables = count_tables(plan, &scratch).await?;
                if let Some(expected) = &plan.entry.manifest.tables {
                    let problems = tables::compare(expected, &tables);
                    if !problems.is_empty() {
                        return Err(RestoreError::Check {
                            database: scratch.clone(),
                            problems,
                            left: left.clone(),
                        });
                    }
                }
                // Properties last: a setting such as default_transaction_read_only or a revoked
                // CONNECT must not get in the way of the restore and its counts.
                let problems = shape.apply_and_check(plan, &admin, &scratch).await?;
                if !problems.is_empty() {
                    return Err(RestoreError::Check {
                        database: scratch.clone(),
                        problems,
                        left: left.clone(),
                    });
                }
                if cancel.is_cancelled() {
                    return Err(RestoreError::Cancelled { left: left.clone() });
                }
                Ok(tables)
            }
            .await;
            let tables = match restored {
                Ok(t) => t,
                Err(e) => {
                    let _ = drop_database(&admin, &plan.server, &scratch, t.server_major).await;
                    return Err(e);
                }
            };
            let kept_old = match swap(&admin, &scratch, name, now).await {
                Ok(k) => k,
                Err(e) => {
                    let _ = drop_database(&admin, &plan.server, &scratch, t.server_major).await;
                    return Err(e);
                }
            };
            let kept_old = match (kept_old, drop_old) {
                (Some(old), true) => {
                    // The swap is done: a failure now must not read as a failed restore. A
                    // subscription keeps it from dropping; the user decides what happens to its
                    // slot on the publisher, so it is not disarmed here.
                    admin
                        .batch_execute(&format!("DROP DATABASE {}", ident(&old)))
                        .await
                        .map_err(|e| RestoreError::OldNotDropped {
                            database: name.clone(),
                            old: old.clone(),
                            cause: dump::pg_error_text(&e),
                        })?;
                    None
                }
                (k, _) => k,
            };
            Ok(Restored {
                database: name.clone(),
                kept_old,
                duration: clock.elapsed(),
                tables,
                stored_bytes: plan.entry.manifest.stored_bytes,
            })
        }
    }
}

async fn count_tables(plan: &Plan, database: &str) -> Result<Vec<TableRows>, RestoreError> {
    let client = dump::connect(&plan.server, database).await?;
    tables::count(&client)
        .await
        .map_err(query_err("counting the restored rows"))
}

/// Streams the archive into pg_restore restoring into `database`. With `single_transaction`
/// the objects are dropped and recreated inside one transaction.
async fn restore_into(
    plan: &Plan,
    storage: &Storage,
    database: &str,
    single_transaction: bool,
    cancel: &CancellationToken,
    left: &str,
) -> Result<(), RestoreError> {
    let entry = &plan.entry;
    let progress_bytes = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start(
        plan.options.progress,
        entry.manifest.stored_bytes,
        progress_bytes.clone(),
    );
    let cancelled = || RestoreError::Cancelled {
        left: left.to_string(),
    };
    // With --jobs, pg_restore needs a seekable file: the archive is checked completely while
    // it is written, before pg_restore starts.
    let local = match plan.options.jobs {
        None => None,
        Some(_) => {
            let file = tempfile::Builder::new()
                .prefix("pgsidecar-restore-")
                .suffix(".dump")
                .tempfile()
                .map_err(|e| RestoreError::TempFile {
                    path: std::env::temp_dir(),
                    cause: e.to_string(),
                })?;
            let path = file.path().to_path_buf();
            tracing::info!(path = %path.display(), "--jobs: writing the archive to a local file; it is removed afterwards");
            let sink =
                tokio::fs::File::from_std(file.reopen().map_err(|e| RestoreError::TempFile {
                    path: path.clone(),
                    cause: e.to_string(),
                })?);
            let feed = Feed {
                hold_back: false,
                check_after_close: false,
            };
            let streamed = tokio::select! {
                r = verify::stream_archive(storage, entry, &plan.options.encryption, sink, feed, progress_bytes.clone()) => {
                    r.map_err(|source| RestoreError::Aborted { source: Box::new(source), left: left.to_string() })?
                }
                _ = cancel.cancelled() => return Err(cancelled()),
            };
            if let Some(e) = streamed.sink_error {
                return Err(RestoreError::TempFile {
                    path,
                    cause: e.to_string(),
                });
            }
            Some(file)
        }
    };
    let (restorer, stdin) = Restorer::start(
        plan,
        database,
        single_transaction,
        local.as_ref().map(|f| f.path()),
    )?;
    let failed = |(status, stderr): (String, Vec<String>)| RestoreError::Restore {
        database: database.to_string(),
        hint: hint_for(
            &stderr,
            plan.entry.manifest.globals.is_some(),
            single_transaction,
        ),
        status,
        stderr,
        left: left.to_string(),
    };
    if let Some(stdin) = stdin {
        let feed = Feed {
            hold_back: true,
            check_after_close: false,
        };
        let streamed = tokio::select! {
            r = verify::stream_archive(storage, entry, &plan.options.encryption, stdin, feed, progress_bytes) => r,
            _ = cancel.cancelled() => return Err(cancelled()),
        };
        match streamed {
            // pg_restore stopped reading: its own error says why.
            Ok(s) if s.sink_error.is_some() => {
                return Err(match restorer.wait().await {
                    Err(f) => failed(f),
                    Ok(()) => failed(("stopped reading the archive early".into(), Vec::new())),
                })
            }
            Ok(_) => {}
            // Dropping the restorer kills pg_restore before it could commit.
            Err(source) => {
                drop(restorer);
                return Err(RestoreError::Aborted {
                    source: Box::new(source),
                    left: left.to_string(),
                });
            }
        }
    }
    tokio::select! {
        r = restorer.wait() => r.map_err(failed),
        _ = cancel.cancelled() => Err(cancelled()),
    }
}

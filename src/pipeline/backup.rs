//! Job: the one place that knows the order of a backup's stages —
//! preflight → dump source → transforms (count, compress, encrypt, hash) → storage sinks →
//! manifests. The hash is over the stored (encrypted) bytes. One dump feeds every destination
//! of the attempt at once (see [`crate::storage::fanout`]); each gets its own manifest.
//! Beside the dump, in the snapshot it imports, the tables' rows are counted for the manifest.
//!
//! Invariant: a backup is reported complete in a destination only when pg_dump exited 0, that
//! destination's upload completed and was checked, and its manifest (sizes, sha256, versions)
//! is written. On any failure or cancellation nothing is left in a destination that `list` or
//! `restore` would take for a backup; one destination failing never stops the others.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::catalog::manifest::{self, Manifest};
use crate::codec::hash::{Counted, Hashed};
use crate::codec::Codec;
use crate::pipeline::Job;
use crate::shutdown::Bounded;
use crate::source::dump::{self, DumpError};
use crate::source::tools::{self, ToolError};
use crate::source::ToolsConfig;
use crate::storage::{Storage, StorageError};

/// Why a backup failed. Each message names the database and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup of database `{database}` failed: {source}")]
    Database {
        database: String,
        #[source]
        source: DumpError,
    },
    #[error("backup of database `{database}` failed: {source}")]
    Tool {
        database: String,
        #[source]
        source: ToolError,
    },
    #[error("backup of database `{database}` to `{key}` failed: {source}")]
    Storage {
        database: String,
        key: String,
        #[source]
        source: StorageError,
    },
    #[error("backup of database `{database}` was cancelled; nothing was stored")]
    Cancelled { database: String },
    #[error("backup of database `{database}` gave up after {} (retry.attempt_timeout): a connection stopped answering or the dump is slower than the limit allows; nothing was stored", humantime::format_duration(*.limit))]
    TimedOut {
        database: String,
        limit: std::time::Duration,
    },
    #[error("another backup of database `{database}` is running (another pgsidecar holds its lock); this one was skipped")]
    Busy { database: String },
    /// Stored in some destinations, not in others (`destinations.policy = "all"`).
    #[error("backup of database `{database}` is stored in {} but {}", .stored.join(", "), not_stored(.failed))]
    Partial {
        database: String,
        stored: Vec<String>,
        failed: Vec<Missed>,
    },
    /// Stored in no destination.
    #[error("backup of database `{database}` failed in every destination: {}", .failed.iter().map(|m| format!("{}: {}", m.destination, m.error)).collect::<Vec<_>>().join("; "))]
    Nowhere {
        database: String,
        failed: Vec<Missed>,
    },
}

/// A destination a backup did not reach, and why.
#[derive(Debug, Clone)]
pub struct Missed {
    pub destination: String,
    pub error: String,
    pub permanent: bool,
}

/// "not in `offsite` (cause); not in `nas` (cause)".
pub fn not_stored(failed: &[Missed]) -> String {
    failed
        .iter()
        .map(|m| format!("not in `{}` ({})", m.destination, m.error))
        .collect::<Vec<_>>()
        .join("; ")
}

impl BackupError {
    /// Whether another attempt cannot succeed without a change of configuration.
    pub fn is_permanent(&self) -> bool {
        match self {
            BackupError::Database { source, .. } => source.is_permanent(),
            BackupError::Tool { .. } => true,
            BackupError::Storage { source, .. } => source.is_permanent(),
            BackupError::Cancelled { .. } | BackupError::Busy { .. } => true,
            BackupError::TimedOut { .. } => false,
            BackupError::Partial { failed, .. } | BackupError::Nowhere { failed, .. } => {
                failed.iter().all(|m| m.permanent)
            }
        }
    }

    /// pg_dump's last stderr lines, when pg_dump failed.
    pub fn stderr_tail(&self) -> &[String] {
        match self {
            BackupError::Database { source, .. } => source.stderr_tail(),
            _ => &[],
        }
    }
}

/// The databases a run of `job` backs up: its list, or with `*` every database found on the
/// server now (so new ones are picked up), minus `exclude`. Scratch databases of restores and
/// drills in progress, and the old copies a `--full` restore keeps, are never backed up.
pub async fn databases(job: &Job) -> Result<Vec<String>, BackupError> {
    let names = if job.databases.iter().any(|d| d == "*") {
        dump::list_databases(&job.database)
            .await
            .map_err(|source| BackupError::Database {
                database: "*".into(),
                source,
            })?
            .into_iter()
            .filter(|d| !crate::keys::is_scratch_database(d))
            .collect()
    } else {
        job.databases.clone()
    };
    Ok(names
        .into_iter()
        .filter(|d| !job.exclude.contains(d))
        .collect())
}

/// Removes what interrupted backups left under `prefix`: dump objects without a manifest and
/// unfinished multipart uploads. Only pgsidecar's own dump keys are touched.
async fn remove_leftovers(
    storage: &Storage,
    prefix: &str,
    objects: &[crate::storage::ObjectInfo],
) -> Result<(), StorageError> {
    for o in objects {
        let orphan = crate::keys::is_dump_key(&o.key)
            && crate::keys::started_from_key(&crate::keys::manifest_key(&o.key)).is_some()
            && !objects
                .iter()
                .any(|m| m.key == crate::keys::manifest_key(&o.key));
        if orphan {
            tracing::info!(key = %o.key, "removing a dump object without manifest left by an interrupted backup");
            storage.delete(&o.key).await?;
        }
    }
    storage.abort_stale_uploads(prefix, None).await?;
    Ok(())
}

/// `pg_dumpall --globals-only` of `db`'s server, compressed and encrypted like the dump: its
/// record (without a key: each destination has its own) and the bytes to store.
async fn dump_globals(
    codec: &Codec<'_>,
    tools: &ToolsConfig,
    db: &crate::source::DatabaseConfig,
    server_major: u32,
) -> Result<(manifest::Globals, Bytes), BackupError> {
    let database = db.dbname.clone();
    let tool = tools::for_server("pg_dumpall", &tools.bin_dirs, server_major)
        .await
        .map_err(|source| BackupError::Tool {
            database: database.clone(),
            source,
        })?;
    let (sql, role_passwords) =
        dump::dump_globals(&tool, db)
            .await
            .map_err(|source| BackupError::Database {
                database: database.clone(),
                source,
            })?;
    if !role_passwords {
        tracing::info!("role passwords are not readable by this user; roles are stored without them (--no-role-passwords)");
    }
    let stored = codec
        .encode_bytes(sql.clone())
        .await
        .map_err(|e| BackupError::Storage {
            database: database.clone(),
            key: "globals".into(),
            source: StorageError::Source {
                key: "globals".into(),
                source: e,
            },
        })?;
    let globals = manifest::Globals {
        key: String::new(),
        raw_bytes: sql.len() as u64,
        stored_bytes: stored.len() as u64,
        sha256: crate::codec::hash::sha256_hex(&stored),
        role_passwords,
    };
    Ok((globals, Bytes::from(stored)))
}

/// The newest complete backup among `objects` (the listing taken at the start), if it can be
/// read; a comparison with it is a best effort that never fails a backup.
async fn previous_manifest(
    storage: &Storage,
    objects: &[crate::storage::ObjectInfo],
) -> Option<Manifest> {
    let newest = objects
        .iter()
        .filter(|o| o.key.ends_with(crate::keys::MANIFEST_SUFFIX))
        .filter_map(|o| crate::keys::started_from_key(&o.key).map(|t| (t, &o.key)))
        .max()?;
    let bytes = storage.get_bytes(newest.1).await.ok()?;
    Manifest::parse(newest.1, &bytes).ok()
}

/// A backup stored in at least one destination.
#[derive(Debug, Clone)]
pub struct Completed {
    /// The manifest of the first destination that holds it (the primary's, when it does).
    pub manifest: Manifest,
    /// Each destination that holds it, with its own manifest, in the order of the attempt.
    pub stored: Vec<(String, Manifest)>,
    /// The destinations it did not reach.
    pub failed: Vec<Missed>,
}

/// One destination of an attempt: where the job's backups go in it.
pub struct Target<'a> {
    pub place: &'a crate::pipeline::destinations::Placement,
    pub storage: &'a Storage,
}

/// What to do when another backup of the same database holds its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenBusy {
    /// Give up at once (a scheduled firing: the other sidecar is doing the work). With the
    /// firing's time, also give up when a backup started at or after it already exists: another
    /// sidecar answered this firing and finished before this one took the lock.
    Skip(Option<DateTime<Utc>>),
    /// Wait for the other backup to finish (a backup asked for by hand).
    Wait,
}

/// How far ahead of a backup's start the newest key may lie and still be followed (see the
/// key choice in [`backup_database`]): backups in quick succession, not a wrong clock.
const KEY_CATCH_UP: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// Takes one backup of `database` for `job` and stores it, with a manifest each, in every
/// destination of `targets` (one dump for all), giving up after `job.retry.attempt_timeout`.
/// `Ok` when at least one destination holds it; [`Completed::failed`] names the others.
#[tracing::instrument(name = "backup", skip_all, fields(job = %job.name, database = %database))]
pub async fn backup_database(
    job: &Job,
    tools: &ToolsConfig,
    targets: &[Target<'_>],
    database: &str,
    when_busy: WhenBusy,
    cancel: &CancellationToken,
) -> Result<Completed, BackupError> {
    // A connection that stops answering without being closed (a black-holed network) leaves
    // pg_dump or an S3 request waiting forever; the deadline cancels the attempt through the
    // same path as SIGTERM, so the uploads are aborted and nothing is left behind.
    let limit = job.retry.attempt_timeout;
    let attempt = crate::shutdown::within(limit, cancel, |token| async move {
        backup_attempt(job, tools, targets, database, when_busy, &token).await
    })
    .await;
    match attempt {
        Bounded::Finished(r)
        | Bounded::TimedOut {
            cleaned_up: Some(r @ Ok(_)),
        } => r,
        Bounded::TimedOut { .. } => Err(BackupError::TimedOut {
            database: database.to_string(),
            limit,
        }),
    }
}

/// One destination's share of an attempt, as it goes.
struct Leg<'a> {
    target: &'a Target<'a>,
    objects: Vec<crate::storage::ObjectInfo>,
    key: String,
    pieces: Vec<crate::storage::StoredPiece>,
    globals: Option<manifest::Globals>,
}

impl Leg<'_> {
    fn name(&self) -> &str {
        &self.target.place.destination
    }

    /// This leg's destination with the storage error that left it without the backup.
    fn missed(&self, database: &str, key: &str, source: StorageError) -> (String, BackupError) {
        (
            self.name().to_string(),
            BackupError::Storage {
                database: database.to_string(),
                key: key.to_string(),
                source,
            },
        )
    }

    /// Removes what this leg stored (its dump pieces and globals): without a manifest they
    /// are no backup, and must not look like one.
    async fn remove(&self) {
        for piece in &self.pieces {
            let _ = self.target.storage.delete(&piece.key).await;
        }
        if let Some(g) = &self.globals {
            let _ = self.target.storage.delete(&g.key).await;
        }
    }
}

async fn backup_attempt(
    job: &Job,
    tools: &ToolsConfig,
    targets: &[Target<'_>],
    database: &str,
    when_busy: WhenBusy,
    cancel: &CancellationToken,
) -> Result<Completed, BackupError> {
    let clock = Instant::now();
    let db_err = |source| BackupError::Database {
        database: database.to_string(),
        source,
    };
    let mut db = job.database.clone();
    db.dbname = database.to_string();

    let cancelled = || BackupError::Cancelled {
        database: database.to_string(),
    };
    // Cancelling here is free: nothing has been stored yet. Once the uploads run, each storage
    // sink watches `cancel` itself, so it can abort its upload before returning.
    let server = tokio::select! {
        r = dump::preflight(&db) => r.map_err(db_err)?,
        _ = cancel.cancelled() => return Err(cancelled()),
    };
    // Held until this function returns: two sidecars never dump one database at once.
    let _lock = tokio::select! {
        r = dump::lock(&db, when_busy == WhenBusy::Wait) => match r.map_err(db_err)? {
            Some(lock) => lock,
            None => return Err(BackupError::Busy { database: database.to_string() }),
        },
        _ = cancel.cancelled() => return Err(cancelled()),
    };
    let tool = tools::for_server("pg_dump", &tools.bin_dirs, server.major)
        .await
        .map_err(|source| BackupError::Tool {
            database: database.to_string(),
            source,
        })?;

    // With the lock held, no other backup of this database runs: what is under its prefix
    // without a manifest is left over from an interrupted one. A destination that cannot be
    // read now is left out of this attempt; the others go on.
    let mut missed: Vec<(String, BackupError)> = Vec::new();
    let mut legs: Vec<Leg> = Vec::new();
    for target in targets {
        let prefix = crate::keys::database_prefix(&target.place.prefix, database);
        let prefix_err = |source| BackupError::Storage {
            database: database.to_string(),
            key: prefix.clone(),
            source,
        };
        let listed = tokio::select! {
            r = async {
                let objects = target.storage.list(&prefix).await?;
                remove_leftovers(target.storage, &prefix, &objects).await?;
                Ok(objects)
            } => r.map_err(prefix_err),
            _ = cancel.cancelled() => return Err(cancelled()),
        };
        match listed {
            Ok(objects) => legs.push(Leg {
                target,
                objects,
                key: String::new(),
                pieces: Vec::new(),
                globals: None,
            }),
            Err(e) => missed.push((target.place.destination.clone(), e)),
        }
    }
    if legs.is_empty() {
        return Err(nowhere(database, missed));
    }
    if let WhenBusy::Skip(Some(fired_at)) = when_busy {
        // Another sidecar answered this firing and finished before this one got the lock.
        if legs
            .iter()
            .flat_map(|l| &l.objects)
            .filter_map(|o| crate::keys::started_from_key(&o.key))
            .any(|t| t.timestamp() >= fired_at.timestamp())
        {
            return Err(BackupError::Busy {
                database: database.to_string(),
            });
        }
    }

    let started = Utc::now();
    let encryption = job.encryption.record();
    // Keys name the second a backup started, and list, prune and the anomaly check order
    // backups by them: a backup started within the same second as the newest one (a manual
    // backup right after a scheduled one) takes the second after it, so keys never collide and
    // never sort a newer backup before an older one. A key far in the future (a clock that
    // was wrong) is not followed. The database's lock is held, so no other backup of it can
    // take the name meanwhile. Every destination gets the same second.
    let newest = legs
        .iter()
        .flat_map(|l| &l.objects)
        .filter_map(|o| crate::keys::started_from_key(&o.key))
        .filter(|&t| t.timestamp() >= started.timestamp() && t <= started + KEY_CATCH_UP)
        .max();
    let key_in = |prefix: &str, at: DateTime<Utc>| {
        crate::keys::dump_key(prefix, database, at, job.compression, encryption.is_some())
    };
    let taken = |at: DateTime<Utc>| {
        legs.iter().any(|l| {
            let key = key_in(&l.target.place.prefix, at);
            let manifest_key = crate::keys::manifest_key(&key);
            l.objects
                .iter()
                .any(|o| o.key == manifest_key || o.key == key)
        })
    };
    let first = newest.map_or(started, |t| t + chrono::TimeDelta::seconds(1));
    let at = (0..)
        .map(|s| first + chrono::TimeDelta::seconds(s))
        .find(|&at| !taken(at))
        .expect("an unbounded range has a free second");
    for leg in &mut legs {
        leg.key = key_in(&leg.target.place.prefix, at);
    }
    let key = legs[0].key.clone();
    tracing::info!(
        server = %server.version,
        pg_dump = %tool.version,
        size = server.database_size,
        key = %key,
        destinations = legs.iter().map(|l| l.name()).collect::<Vec<_>>().join(","),
        "starting backup"
    );
    // Held until this function returns: pg_dump imports the snapshot when it starts, and the
    // row counts are taken in the same transaction while the dump streams.
    let snapshot = tokio::select! {
        r = dump::export_snapshot(&db) => match r {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot export a snapshot; dumping without one, and recording no row counts"
                );
                None
            }
        },
        _ = cancel.cancelled() => return Err(cancelled()),
    };
    let source = dump::spawn(&tool, &db, snapshot.as_ref().map(|s| s.id())).map_err(db_err)?;
    let (counted, raw_bytes) = Counted::new(source);
    let codec = Codec {
        compression: job.compression,
        encryption: &job.encryption,
    };
    let mut stored = Hashed::new(codec.encode(counted));

    // Counting runs beside the upload and never holds it up or fails it: a failed count only
    // leaves the manifest without counts.
    let counting = async {
        let Some(snapshot) = snapshot.as_ref() else {
            return Err("no snapshot could be exported".to_string());
        };
        snapshot.count_tables().await.map_err(|e| {
            let cause = dump::pg_error_text(&e);
            tracing::warn!(error = %cause, "cannot count the rows of the tables; the manifest records no row counts");
            cause
        })
    };
    tokio::pin!(counting);
    let mut tables = Err(String::new());
    let mut counts_done = false;
    let (pumped, uploaded) = {
        // One read of the dump, one reader per destination: the slowest sets the pace, and a
        // destination that fails drops out while the others go on.
        let (readers, pump) = crate::storage::fanout::fan_out(&mut stored, legs.len());
        let uploads = legs
            .iter()
            .zip(readers)
            .map(|(leg, mut reader)| async move {
                let r = leg
                    .target
                    .storage
                    .put_stream(&leg.key, &mut reader, server.database_size, cancel)
                    .await;
                drop(reader);
                r
            });
        // The uploads decide the end: once none is left (complete, failed or cancelled), a
        // pump still waiting on the dump (a black-holed connection) is dropped with it, which
        // stops pg_dump. A pump that finished first is read before them (`biased`), so a
        // failed dump is never mistaken for failed uploads.
        let work = async {
            let mut pump = std::pin::pin!(pump);
            let mut uploads = std::pin::pin!(futures::future::join_all(uploads));
            let mut pumped = None;
            loop {
                tokio::select! {
                    biased;
                    r = &mut pump, if pumped.is_none() => pumped = Some(r),
                    u = &mut uploads => {
                        break (pumped.unwrap_or(Ok(crate::storage::fanout::Pumped::Abandoned)), u)
                    }
                }
            }
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => break r,
                t = &mut counting, if !counts_done => {
                    tables = t;
                    counts_done = true;
                }
            }
        }
    };
    if let Err(source) = pumped {
        // The dump itself failed (pg_dump's exit status, or reading it): no destination
        // completed an upload of it, since every reader got the error before its end.
        if dump::as_dump_error(&source).is_some() {
            let inner = source.into_inner().expect("checked above");
            let dump_error = *inner.downcast::<DumpError>().expect("checked above");
            return Err(db_err(dump_error));
        }
        return Err(BackupError::Storage {
            database: database.to_string(),
            key: key.clone(),
            source: StorageError::Source { key, source },
        });
    }
    let mut done_legs = Vec::new();
    for (mut leg, result) in legs.into_iter().zip(uploaded) {
        match result {
            Ok(pieces) => {
                leg.pieces = pieces;
                done_legs.push(leg);
            }
            Err(StorageError::Cancelled) => return Err(cancelled()),
            Err(e) => {
                tracing::warn!(destination = leg.name(), "upload failed: {e}");
                missed.push(leg.missed(database, &leg.key, e));
            }
        }
    }
    if done_legs.is_empty() {
        return Err(nowhere(database, missed));
    }
    let mut legs = done_legs;
    let digest = stored.finish();
    if !counts_done {
        // The dump is stored by now: cancelling only gives up the counts, not the backup.
        tables = tokio::select! {
            t = &mut counting => t,
            _ = cancel.cancelled() => {
                tracing::warn!("cancelled while counting rows; the manifest records no row counts");
                Err("cancelled while counting".to_string())
            }
        };
    }
    // Drills and the anomaly check compare against these counts: a backup without them is
    // stored, but said to be incomplete rather than reported as a clean success.
    let (tables, count_problem) = match tables {
        Ok(t) => (Some(t), None),
        Err(cause) => (
            None,
            Some(format!(
                "row counts could not be recorded ({cause}): drills and size checks of this backup have nothing to compare"
            )),
        ),
    };

    if job.globals {
        let dumped = tokio::select! {
            r = dump_globals(&codec, tools, &db, server.major) => r,
            _ = cancel.cancelled() => Err(cancelled()),
        };
        let (record, bytes) = match dumped {
            Ok(g) => g,
            Err(e) => {
                for leg in &legs {
                    leg.remove().await;
                }
                return Err(e);
            }
        };
        let mut kept = Vec::new();
        for mut leg in legs {
            let key = crate::keys::globals_key(&leg.key);
            match leg.target.storage.put_bytes(&key, bytes.clone()).await {
                Ok(()) => {
                    leg.globals = Some(manifest::Globals {
                        key,
                        ..record.clone()
                    });
                    kept.push(leg);
                }
                Err(source) => {
                    leg.remove().await;
                    missed.push(leg.missed(database, &key, source));
                }
            }
        }
        legs = kept;
    }

    let raw_total = raw_bytes.load(Ordering::Relaxed);
    let anomalies = match previous_manifest(legs[0].target.storage, &legs[0].objects).await {
        Some(prev) => crate::catalog::anomaly::compare(
            &prev,
            raw_total,
            tables.as_deref(),
            job.max_drop_percent,
        ),
        None => Vec::new(),
    };
    for a in &anomalies {
        tracing::warn!("size anomaly: {a}");
    }
    let anomalies: Vec<String> = anomalies.into_iter().chain(count_problem).collect();

    // What the database is beyond its contents; a backup without it still restores its data.
    let database_properties = match dump::connect(&db, database).await {
        Ok(client) => crate::source::properties::read(&client, database, server.major)
            .await
            .map_err(|e| dump::pg_error_text(&e)),
        Err(e) => Err(e.to_string()),
    }
    .unwrap_or_else(|e| {
        tracing::warn!("cannot read the database's properties (encoding, locale, privileges, settings); the manifest records none: {e}");
        None
    });

    let finished = Utc::now();
    let mut completed = Vec::new();
    for leg in legs {
        let manifest = Manifest {
            format: manifest::FORMAT.to_string(),
            format_version: manifest::format_version(encryption.as_ref()),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            job: job.name.clone(),
            database: database.to_string(),
            host: db.host.clone(),
            port: db.port,
            server_version: server.version.clone(),
            server_major: server.major,
            pg_dump_version: tool.version.clone(),
            pg_dump_major: tool.major,
            dump_format: "custom".to_string(),
            started_at: started,
            finished_at: finished,
            duration_ms: clock.elapsed().as_millis() as u64,
            database_size_bytes: server.database_size,
            raw_bytes: raw_total,
            stored_bytes: digest.bytes,
            compression: job.compression,
            encryption: encryption.clone(),
            sha256: digest.sha256.clone(),
            key: leg.key.clone(),
            objects: leg.pieces.clone(),
            tables: tables.clone(),
            globals: leg.globals.clone(),
            anomalies: anomalies.clone(),
            database_properties: database_properties.clone(),
        };
        let manifest_key = crate::keys::manifest_key(&leg.key);
        match leg
            .target
            .storage
            .put_bytes(&manifest_key, Bytes::from(manifest.to_json()))
            .await
        {
            Ok(()) => {
                tracing::info!(
                    key = %leg.key,
                    destination = leg.name(),
                    raw_bytes = manifest.raw_bytes,
                    stored_bytes = manifest.stored_bytes,
                    elapsed_ms = manifest.duration_ms,
                    "backup complete"
                );
                completed.push((leg.name().to_string(), manifest));
            }
            Err(source) => {
                // Without its manifest the dump is no backup; do not leave it to look like one.
                leg.remove().await;
                missed.push(leg.missed(database, &leg.key, source));
            }
        }
    }
    if completed.is_empty() {
        return Err(nowhere(database, missed));
    }
    Ok(Completed {
        manifest: completed[0].1.clone(),
        stored: completed,
        failed: missed.into_iter().map(|(d, e)| missed_by(d, &e)).collect(),
    })
}

/// A destination's failure as a [`Missed`].
pub fn missed_by(destination: String, e: &BackupError) -> Missed {
    Missed {
        destination,
        error: e.to_string(),
        permanent: e.is_permanent(),
    }
}

/// The error of an attempt that reached no destination: with one destination its own error
/// as it was, with several all of them.
fn nowhere(database: &str, mut missed: Vec<(String, BackupError)>) -> BackupError {
    if missed.len() == 1 {
        return missed.pop().expect("one").1;
    }
    BackupError::Nowhere {
        database: database.to_string(),
        failed: missed.into_iter().map(|(d, e)| missed_by(d, &e)).collect(),
    }
}

//! Job: the one place that knows the order of a backup's stages —
//! preflight → dump source → transforms (count, compress, encrypt, hash) → storage sink →
//! manifest. The hash is over the stored (encrypted) bytes.
//! Beside the dump, in the snapshot it imports, the tables' rows are counted for the manifest.
//!
//! Invariant: a backup is reported complete only when pg_dump exited 0, the upload completed
//! and was checked, and the manifest (sizes, sha256, versions) is written. On any failure or
//! cancellation nothing is left that `list` or `restore` would take for a backup.

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

/// Stores `pg_dumpall --globals-only` of `db`'s server beside the dump `dump_key`, compressed
/// and encrypted like the dump.
async fn store_globals(
    codec: &Codec<'_>,
    tools: &ToolsConfig,
    storage: &Storage,
    db: &crate::source::DatabaseConfig,
    server_major: u32,
    dump_key: &str,
) -> Result<manifest::Globals, BackupError> {
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
    let key = crate::keys::globals_key(dump_key);
    let source_err = |e| BackupError::Storage {
        database: database.clone(),
        key: key.clone(),
        source: StorageError::Source {
            key: key.clone(),
            source: e,
        },
    };
    let stored = codec.encode_bytes(sql.clone()).await.map_err(source_err)?;
    let globals = manifest::Globals {
        key: key.clone(),
        raw_bytes: sql.len() as u64,
        stored_bytes: stored.len() as u64,
        sha256: crate::codec::hash::sha256_hex(&stored),
        role_passwords,
    };
    storage
        .put_bytes(&key, Bytes::from(stored))
        .await
        .map_err(|source| BackupError::Storage {
            database,
            key,
            source,
        })?;
    Ok(globals)
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

/// A completed backup.
#[derive(Debug, Clone)]
pub struct Completed {
    pub manifest: Manifest,
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

/// Takes one backup of `database` for `job` and stores it with its manifest, giving up after
/// `job.retry.attempt_timeout`.
#[tracing::instrument(name = "backup", skip_all, fields(job = %job.name, database = %database))]
pub async fn backup_database(
    job: &Job,
    tools: &ToolsConfig,
    storage: &Storage,
    database: &str,
    when_busy: WhenBusy,
    cancel: &CancellationToken,
) -> Result<Completed, BackupError> {
    // A connection that stops answering without being closed (a black-holed network) leaves
    // pg_dump or an S3 request waiting forever; the deadline cancels the attempt through the
    // same path as SIGTERM, so the upload is aborted and nothing is left behind.
    let limit = job.retry.attempt_timeout;
    let attempt = crate::shutdown::within(limit, cancel, |token| async move {
        backup_attempt(job, tools, storage, database, when_busy, &token).await
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

async fn backup_attempt(
    job: &Job,
    tools: &ToolsConfig,
    storage: &Storage,
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
    // Cancelling here is free: nothing has been stored yet. Once the upload runs, the storage
    // sink watches `cancel` itself, so it can abort the upload before returning.
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
    // without a manifest is left over from an interrupted one.
    let prefix = crate::keys::database_prefix(&job.prefix, database);
    let prefix_err = |source| BackupError::Storage {
        database: database.to_string(),
        key: prefix.clone(),
        source,
    };
    let objects = tokio::select! {
        r = storage.list(&prefix) => r.map_err(prefix_err)?,
        _ = cancel.cancelled() => return Err(cancelled()),
    };
    if let WhenBusy::Skip(Some(fired_at)) = when_busy {
        // Another sidecar answered this firing and finished before this one got the lock.
        if objects
            .iter()
            .filter_map(|o| crate::keys::started_from_key(&o.key))
            .any(|t| t.timestamp() >= fired_at.timestamp())
        {
            return Err(BackupError::Busy {
                database: database.to_string(),
            });
        }
    }
    tokio::select! {
        r = remove_leftovers(storage, &prefix, &objects) => r.map_err(prefix_err)?,
        _ = cancel.cancelled() => return Err(cancelled()),
    }

    let started = Utc::now();
    let encryption = job.encryption.record();
    // Keys name the second a backup started, and list, prune and the anomaly check order
    // backups by them: a backup started within the same second as the newest one (a manual
    // backup right after a scheduled one) takes the second after it, so keys never collide and
    // never sort a newer backup before an older one. A key far in the future (a clock that
    // was wrong) is not followed. The database's lock is held, so no other backup of it can
    // take the name meanwhile.
    let newest = objects
        .iter()
        .filter_map(|o| crate::keys::started_from_key(&o.key))
        .filter(|&t| t.timestamp() >= started.timestamp() && t <= started + KEY_CATCH_UP)
        .max();
    let taken = |key: &str| {
        let manifest_key = crate::keys::manifest_key(key);
        objects
            .iter()
            .any(|o| o.key == manifest_key || o.key == key)
    };
    let first = newest.map_or(started, |t| t + chrono::TimeDelta::seconds(1));
    let key = (0..)
        .map(|s| {
            crate::keys::dump_key(
                &job.prefix,
                database,
                first + chrono::TimeDelta::seconds(s),
                job.compression,
                encryption.is_some(),
            )
        })
        .find(|k| !taken(k))
        .expect("an unbounded range has a free second");
    let manifest_key = crate::keys::manifest_key(&key);
    let storage_err = |source| BackupError::Storage {
        database: database.to_string(),
        key: key.clone(),
        source,
    };
    tracing::info!(
        server = %server.version,
        pg_dump = %tool.version,
        size = server.database_size,
        key = %key,
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
    let uploaded = {
        let upload = storage.put_stream(&key, &mut stored, server.database_size, cancel);
        tokio::pin!(upload);
        loop {
            tokio::select! {
                r = &mut upload => break r,
                t = &mut counting, if !counts_done => {
                    tables = t;
                    counts_done = true;
                }
            }
        }
    };
    let pieces = match uploaded {
        Ok(p) => p,
        Err(StorageError::Source { source, .. }) if dump::as_dump_error(&source).is_some() => {
            let inner = source.into_inner().expect("checked above");
            let dump_error = *inner.downcast::<DumpError>().expect("checked above");
            return Err(db_err(dump_error));
        }
        Err(StorageError::Cancelled) => return Err(cancelled()),
        Err(e) => return Err(storage_err(e)),
    };
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

    let globals = if job.globals {
        let stored = tokio::select! {
            r = store_globals(&codec, tools, storage, &db, server.major, &key) => r,
            _ = cancel.cancelled() => Err(cancelled()),
        };
        match stored {
            Ok(g) => Some(g),
            Err(e) => {
                for piece in &pieces {
                    let _ = storage.delete(&piece.key).await;
                }
                return Err(e);
            }
        }
    } else {
        None
    };

    let raw_total = raw_bytes.load(Ordering::Relaxed);
    let anomalies = match previous_manifest(storage, &objects).await {
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
        encryption,
        sha256: digest.sha256,
        key: key.clone(),
        objects: pieces,
        tables,
        globals,
        anomalies,
        database_properties,
    };
    if let Err(e) = storage
        .put_bytes(&manifest_key, Bytes::from(manifest.to_json()))
        .await
    {
        // Without its manifest the dump is no backup; do not leave it to look like one.
        for piece in &manifest.objects {
            let _ = storage.delete(&piece.key).await;
        }
        if let Some(g) = &manifest.globals {
            let _ = storage.delete(&g.key).await;
        }
        return Err(storage_err(e));
    }
    tracing::info!(
        key = %key,
        raw_bytes = manifest.raw_bytes,
        stored_bytes = manifest.stored_bytes,
        elapsed_ms = manifest.duration_ms,
        "backup complete"
    );
    Ok(Completed { manifest })
}

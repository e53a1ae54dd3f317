//! Base backups: `pg_basebackup -D - -Ft -X none` streamed through the codec straight into
//! storage (no local copy, bounded memory), then a manifest recording where replay starts
//! and where the backup becomes consistent.
//!
//! Invariant: a base backup's manifest is written only after pg_basebackup exited 0 and the
//! upload completed; without the manifest the objects are leftovers, never a backup.

use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::archive::BaseBackup;
use super::server::{ClusterFacts, Primary, ServerError};
use super::wal::Lsn;
use crate::codec::encryption::Encryption;
use crate::codec::hash::{Counted, Hashed};
use crate::codec::{Codec, Compression};
use crate::source::process::{CheckedOutput, Child, LogAs};
use crate::source::tools::{self, ToolError};
use crate::source::{dump, DatabaseConfig, ToolsConfig};
use crate::storage::{Storage, StorageError};

/// Errors taking a base backup.
#[derive(Debug, thiserror::Error)]
pub enum BaseBackupError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot start pg_basebackup: {0}")]
    Spawn(std::io::Error),
    #[error("the cluster has tablespaces outside its data directory ({0}); point-in-time recovery by pgsidecar covers clusters whose data all lives in the data directory, so no base backup was taken")]
    Tablespaces(String),
    #[error("base backup upload to `{key}` failed: {source}")]
    Storage {
        key: String,
        #[source]
        source: StorageError,
    },
    #[error("the base backup holds no readable {0}")]
    NoPosition(&'static str),
    #[error("cancelled")]
    Cancelled,
}

/// Takes a base backup of the cluster `facts` describes and stores it under `cluster`.
pub async fn take(
    db: &DatabaseConfig,
    tools_config: &ToolsConfig,
    storage: &Storage,
    cluster: &str,
    facts: &ClusterFacts,
    encryption: &Encryption,
    cancel: &CancellationToken,
) -> Result<BaseBackup, BaseBackupError> {
    let primary = Primary::connect(db).await?;
    let extra: Vec<String> = primary
        .client()
        .query(
            "SELECT spcname FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')",
            &[],
        )
        .await
        .map_err(|e| ServerError::Query {
            what: "listing tablespaces",
            cause: dump::pg_error_text(&e),
        })?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !extra.is_empty() {
        return Err(BaseBackupError::Tablespaces(extra.join(", ")));
    }
    let size: i64 = primary
        .client()
        .query_one(
            "SELECT sum(pg_database_size(oid))::bigint FROM pg_database",
            &[],
        )
        .await
        .map(|r| r.get::<_, Option<i64>>(0).unwrap_or(0))
        .unwrap_or(0);
    let tool = tools::for_server("pg_basebackup", &tools_config.bin_dirs, facts.major).await?;
    let started_at = Utc::now();
    let key = crate::keys::base_backup_key(cluster, started_at, encryption.scheme().is_some());
    let mut cmd = dump::client_command(&tool, db, &db.dbname);
    cmd.args([
        "-D",
        "-",
        "-Ft",
        "-X",
        "none",
        "--checkpoint=fast",
        "--no-password",
        // The sidecar records its own sha256; pg_basebackup's manifest would land in the
        // working directory with some client versions.
        "--no-manifest",
        "-l",
        "pgsidecar",
    ])
    // TCP keepalives, so a server that vanished without closing is noticed.
    .arg(format!("--dbname={}", dump::conninfo(&db.dbname)))
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    let child = Child::spawn(&mut cmd, LogAs::Wal).map_err(BaseBackupError::Spawn)?;
    let output = CheckedOutput::new("pg_basebackup", child);
    let (output, head) = Head::new(output);
    let (counted, raw_bytes) = Counted::new(output);
    let codec = Codec {
        compression: Compression::Zstd {
            level: crate::codec::DEFAULT_ZSTD_LEVEL,
        },
        encryption,
    };
    let mut stored = Hashed::new(codec.encode(counted));
    tracing::info!(key = %key, pg_basebackup = %tool.version, "starting base backup");
    let objects = match storage
        .put_stream(&key, &mut stored, size.max(0) as u64, cancel)
        .await
    {
        Ok(o) => o,
        Err(StorageError::Cancelled) => return Err(BaseBackupError::Cancelled),
        Err(source) => {
            return Err(BaseBackupError::Storage {
                key: key.clone(),
                source,
            })
        }
    };
    let result = finish(
        db,
        storage,
        &key,
        objects.clone(),
        started_at,
        facts,
        encryption,
        stored,
        raw_bytes,
        head,
    )
    .await;
    if result.is_err() {
        // Without its manifest the tar is no backup: nothing else would ever delete it.
        for piece in &objects {
            let _ = storage.delete(&piece.key).await;
        }
    }
    result
}

/// Reads the backup's positions and writes its manifest.
#[allow(clippy::too_many_arguments)]
async fn finish(
    db: &DatabaseConfig,
    storage: &Storage,
    key: &str,
    objects: Vec<crate::storage::StoredPiece>,
    started_at: chrono::DateTime<Utc>,
    facts: &ClusterFacts,
    encryption: &Encryption,
    stored: Hashed<crate::codec::compress::BoxRead>,
    raw_bytes: Arc<std::sync::atomic::AtomicU64>,
    head: Arc<Mutex<Vec<u8>>>,
) -> Result<BaseBackup, BaseBackupError> {
    let digest = stored.finish();
    let head = head.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (start_lsn, timeline) =
        start_point(&head).ok_or(BaseBackupError::NoPosition("backup_label's start point"))?;
    // pg_basebackup reports the end point only when it fetches WAL itself (not with `-X
    // none`); the server's position once it finished is at or after the end point, so
    // archiving up to it makes the backup consistent. A new connection: the first may have
    // idled out during a long backup.
    let primary = Primary::connect(db).await?;
    let end_lsn = primary.facts().await?.current;
    // The segment holding the end point is complete at once, so the backup is usable as
    // soon as the archiver has stored it, not when the database next fills a segment.
    if let Err(e) = primary.switch_wal().await {
        tracing::warn!("{e}; the base backup becomes usable when its last segment fills");
    }
    let manifest = BaseBackup {
        key: key.to_string(),
        objects,
        started_at,
        finished_at: Utc::now(),
        start_lsn,
        end_lsn,
        timeline,
        system_identifier: facts.system_identifier.to_string(),
        server_version: facts.version.clone(),
        server_major: facts.major,
        wal_segment_size: facts.segment_size,
        raw_bytes: raw_bytes.load(std::sync::atomic::Ordering::Relaxed),
        stored_bytes: digest.bytes,
        sha256: digest.sha256,
        encryption: encryption.record(),
        pgsidecar_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let manifest_key = crate::keys::base_manifest_key(key);
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    storage
        .put_bytes(&manifest_key, json.into())
        .await
        .map_err(|source| BaseBackupError::Storage {
            key: manifest_key,
            source,
        })?;
    tracing::info!(key = %key, start = %start_lsn, end = %end_lsn, stored_bytes = manifest.stored_bytes, "base backup complete");
    Ok(manifest)
}

/// How much of the tar stream's start is kept to read `backup_label`, which the server sends
/// as the first member of the data directory's tar.
const HEAD_BYTES: usize = 64 << 10;

/// Keeps a copy of the first [`HEAD_BYTES`] read through it.
struct Head<R> {
    inner: R,
    head: Arc<Mutex<Vec<u8>>>,
}

impl<R> Head<R> {
    fn new(inner: R) -> (Head<R>, Arc<Mutex<Vec<u8>>>) {
        let head = Arc::new(Mutex::new(Vec::new()));
        (
            Head {
                inner,
                head: head.clone(),
            },
            head,
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Head<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if head.len() < HEAD_BYTES {
            let new = &buf.filled()[before..];
            let take = new.len().min(HEAD_BYTES - head.len());
            head.extend_from_slice(&new[..take]);
        }
        Poll::Ready(Ok(()))
    }
}

/// The start point and timeline in the `backup_label` at the start of a tar stream:
/// `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)` and `START TIMELINE: 1`.
fn start_point(tar_head: &[u8]) -> Option<(Lsn, u32)> {
    let mut archive = tar::Archive::new(tar_head);
    let mut label = String::new();
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.path().ok()?.as_os_str() == "backup_label" {
            std::io::Read::read_to_string(&mut entry, &mut label).ok()?;
            break;
        }
    }
    let value = |key: &str| {
        label
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let lsn = value("START WAL LOCATION:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let tli = value("START TIMELINE:")?.parse().ok()?;
    Some((lsn, tli))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(name: &str, content: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        b.append_data(&mut h, name, content.as_bytes()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_cksum();
        b.append_data(&mut h, "PG_VERSION", &b"17\n"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn the_start_point_is_read_from_backup_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2026-11-30 10:00:00 UTC\n\
                     LABEL: pgsidecar\nSTART TIMELINE: 3\n";
        let tar = tar_with("backup_label", label);
        assert_eq!(start_point(&tar), Some(("0/2000028".parse().unwrap(), 3)));
        // Cut short, as the kept head of a large stream is.
        assert_eq!(
            start_point(&tar[..1024]),
            Some(("0/2000028".parse().unwrap(), 3))
        );
        assert_eq!(start_point(&tar_with("PG_VERSION", "17\n")), None);
        assert_eq!(start_point(b"not a tar"), None);
    }
}

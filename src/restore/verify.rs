//! Restore stage, the read path of a stored backup (verify). Invariant: a backup only counts as
//! read back once its stored bytes match the manifest's size and sha256 (with
//! [`Feed::hold_back`], the consumer gets the last byte only then); nothing is written anywhere.
//!
//! Proves a stored backup can be read back, without touching any database. The stored
//! bytes are streamed once: their sha256 and size are checked against the manifest, they are
//! decrypted when encrypted (age authenticates every chunk), decompressed (zstd and gzip check
//! their own frames), and the archive is handed to `pg_restore --list`, which must accept it.

use std::process::Stdio;

use crate::codec::hash::Sha256Hex;
use crate::codec::Codec;
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::catalog::Entry;
use crate::codec::encryption::{DecryptError, Encryption};
use crate::source::process::{Child, Exit, Failure, LogAs};
use crate::source::tools::{self, ToolError};
use crate::source::ToolsConfig;
use crate::storage::{Storage, StorageError};

/// Why a backup did not verify. Each message names the object.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no backup matches `{0}` (use `latest`, a time such as 2026-11-24T02:00:00Z, or a key from `list`)")]
    NoMatch(String),
    #[error("cannot read `{key}`: {source}")]
    Storage {
        key: String,
        #[source]
        source: StorageError,
    },
    #[error("`{key}` is damaged: {reason}")]
    Damaged { key: String, reason: String },
    /// The backup is encrypted and the configured keys do not open it.
    #[error("cannot decrypt `{key}`: {source}")]
    Key {
        key: String,
        #[source]
        source: DecryptError,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("pg_restore rejected the archive in `{key}`: {stderr}")]
    Archive { key: String, stderr: String },
}

impl VerifyError {
    /// Refusals caused by how the command was called (a missing or wrong key): nothing was read
    /// beyond the start of the first object.
    pub fn is_usage(&self) -> bool {
        matches!(self, VerifyError::Key { .. })
    }
}

/// Checks that `entry` can be decrypted with `encryption`, before anything is changed: that a
/// key for it is configured, then (reading only the age header at the start of the first
/// stored object) that the key opens it. Unencrypted backups pass at once.
pub async fn check_decryptable(
    storage: &Storage,
    entry: &Entry,
    encryption: &Encryption,
) -> Result<(), VerifyError> {
    let m = &entry.manifest;
    let Some(record) = &m.encryption else {
        return Ok(());
    };
    let key_err = |source| VerifyError::Key {
        key: m.key.clone(),
        source,
    };
    encryption.check_keys(record).map_err(key_err)?;
    let first = m.objects.first().map_or(&m.key, |p| &p.key);
    let head = storage
        .get(first)
        .await
        .map_err(|source| VerifyError::Storage {
            key: first.clone(),
            source,
        })?;
    encryption
        .check_header(record, head)
        .await
        .map_err(|e| match e {
            e @ DecryptError::Failed(_) => VerifyError::Damaged {
                key: m.key.clone(),
                reason: e.to_string(),
            },
            other => key_err(other),
        })
}

/// The backup `selector` names: `latest`, an RFC 3339 time (the newest backup started at or
/// before it), or a dump or manifest key. `entries` are newest first (pure).
pub fn select<'a>(entries: &'a [Entry], selector: &str) -> Option<&'a Entry> {
    if selector == "latest" {
        return entries.first();
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(selector) {
        let t: DateTime<Utc> = t.to_utc();
        return entries.iter().find(|e| e.manifest.started_at <= t);
    }
    entries
        .iter()
        .find(|e| e.manifest.key == selector || e.manifest_key == selector)
}

/// What a successful verification found.
#[derive(Debug)]
pub struct Verified {
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    /// Entries in the archive's table of contents.
    pub toc_entries: usize,
}

/// Reads every piece of `entry`'s dump in order, as one stream.
async fn open_pieces(
    storage: &Storage,
    entry: &Entry,
) -> Result<Box<dyn AsyncRead + Send + Unpin>, VerifyError> {
    storage
        .get_pieces(&entry.manifest.objects)
        .await
        .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>)
        .map_err(|(key, source)| VerifyError::Storage { key, source })
}

/// How [`stream_archive`] treats its consumer.
#[derive(Debug, Clone, Copy)]
pub struct Feed {
    /// Withhold the last decompressed chunk until the stored bytes proved intact. pg_restore
    /// cannot finish (and so cannot commit) before it has read the archive's last byte, so a
    /// damaged object can never be committed.
    pub hold_back: bool,
    /// When the consumer stops reading early, read on to the end to check the object anyway
    /// (`pg_restore --list` stops after the table of contents).
    pub check_after_close: bool,
}

/// What [`stream_archive`] read.
#[derive(Debug)]
pub struct Streamed {
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    /// Why the consumer stopped reading before the end (the object was then not checked
    /// unless [`Feed::check_after_close`]).
    pub sink_error: Option<std::io::Error>,
}

/// Streams `entry`'s archive into `sink`: the stored bytes are hashed and counted (into
/// `progress`), decrypted with `encryption` when the backup is encrypted, decompressed, and
/// written out. Errors when the stored bytes do not match the manifest, fail decryption, or do
/// not decompress to the recorded size, naming the object.
pub async fn stream_archive<W: AsyncWrite + Unpin>(
    storage: &Storage,
    entry: &Entry,
    encryption: &Encryption,
    sink: W,
    feed: Feed,
    progress: Arc<AtomicU64>,
) -> Result<Streamed, VerifyError> {
    let m = &entry.manifest;
    let damaged = |reason: String| VerifyError::Damaged {
        key: m.key.clone(),
        reason,
    };
    let (tx, rx) = tokio::io::duplex(1 << 20);
    // Decoding sits after the hash: the sha256 stays over the bytes as stored. A missing key
    // fails here, before anything is read.
    let codec = Codec {
        compression: m.compression,
        encryption,
    };
    let mut raw = codec
        .decode(m.encryption.as_ref(), rx)
        .map_err(|source| VerifyError::Key {
            key: m.key.clone(),
            source,
        })?;
    let mut stored = open_pieces(storage, entry).await?;
    let hasher = tokio::spawn(async move {
        let mut tx = tx;
        let mut h = Sha256Hex::default();
        let mut n = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        let mut feeding = true;
        loop {
            let k = stored.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
            progress.store(n, Ordering::Relaxed);
            // When the decompressor stopped (it reports why), keep hashing to the end.
            feeding = feeding && tx.write_all(&buf[..k]).await.is_ok();
        }
        Ok::<_, std::io::Error>((h.finish(), n))
    });
    let mut sink = Some(sink);
    let mut held: Vec<u8> = Vec::new();
    let mut raw_bytes = 0u64;
    let mut sink_error = None;
    let mut buf = vec![0u8; 256 * 1024];
    let decode_error = loop {
        match raw.read(&mut buf).await {
            Ok(0) => break None,
            Ok(k) => {
                raw_bytes += k as u64;
                let now: Vec<u8> = if feed.hold_back {
                    std::mem::replace(&mut held, buf[..k].to_vec())
                } else {
                    buf[..k].to_vec()
                };
                if let Some(s) = sink.as_mut() {
                    if let Err(e) = s.write_all(&now).await {
                        sink = None;
                        sink_error = Some(e);
                        if !feed.check_after_close {
                            hasher.abort();
                            return Ok(Streamed {
                                stored_bytes: 0,
                                raw_bytes,
                                sink_error,
                            });
                        }
                    }
                }
            }
            Err(e) => break Some(e),
        }
    };
    drop(raw);
    let (sha256, stored_bytes) = hasher
        .await
        .map_err(|e| damaged(format!("reading stopped: {e}")))?
        .map_err(|e| damaged(format!("reading failed: {e}")))?;
    if stored_bytes != m.stored_bytes || sha256 != m.sha256 {
        return Err(damaged(format!(
            "sha256 {sha256} over {stored_bytes} bytes does not match the manifest ({} over {} bytes)",
            m.sha256, m.stored_bytes
        )));
    }
    if let Some(e) = decode_error {
        if crate::codec::encryption::as_decrypt_error(&e).is_some() {
            let source = *e
                .into_inner()
                .and_then(|inner| inner.downcast::<DecryptError>().ok())
                .expect("checked above");
            return Err(match source {
                e @ DecryptError::Failed(_) => damaged(e.to_string()),
                other => VerifyError::Key {
                    key: m.key.clone(),
                    source: other,
                },
            });
        }
        return Err(damaged(format!("decompression failed: {e}")));
    }
    if raw_bytes != m.raw_bytes {
        return Err(damaged(format!(
            "decompressed to {raw_bytes} bytes, the manifest says {}",
            m.raw_bytes
        )));
    }
    if let Some(mut s) = sink {
        // Proven intact: release the end of the archive.
        let released = async {
            s.write_all(&held).await?;
            s.flush().await?;
            s.shutdown().await
        };
        if let Err(e) = released.await {
            sink_error = Some(e);
        }
    }
    Ok(Streamed {
        stored_bytes,
        raw_bytes,
        sink_error,
    })
}

/// Verifies `entry` as described in the module documentation; `encryption` decrypts it when it
/// is encrypted.
pub async fn verify(
    storage: &Storage,
    tools: &ToolsConfig,
    entry: &Entry,
    encryption: &Encryption,
) -> Result<Verified, VerifyError> {
    let m = &entry.manifest;
    check_decryptable(storage, entry, encryption).await?;
    let found = tools::discover("pg_restore", &tools.bin_dirs).await?;
    // No server is involved: any pg_restore that can read the archive can list it.
    let tool = tools::choose_for_restore(&found, m.pg_dump_major, u32::MAX)?;
    let mut cmd = tokio::process::Command::new(&tool.path);
    cmd.arg("--list")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = Child::spawn(&mut cmd, LogAs::PgRestore).map_err(|e| VerifyError::Damaged {
        key: m.key.clone(),
        reason: format!("cannot start pg_restore: {e}"),
    })?;
    let stdin = child.take_stdin().expect("stdin is piped");
    // Drained concurrently: a long listing must not block pg_restore while it is being fed.
    let stdout = drain(child.take_stdout());
    let feed = Feed {
        hold_back: false,
        check_after_close: true,
    };
    let streamed = stream_archive(storage, entry, encryption, stdin, feed, Arc::default()).await?;
    match child.wait().await {
        Ok(_) => {}
        Err(Failure {
            exit: Exit::Unwaited(e),
            ..
        }) => {
            return Err(VerifyError::Damaged {
                key: m.key.clone(),
                reason: format!("pg_restore did not finish: {e}"),
            })
        }
        Err(Failure { stderr, .. }) => {
            return Err(VerifyError::Archive {
                key: m.key.clone(),
                stderr: stderr.join("\n").trim().to_string(),
            })
        }
    }
    let stdout = stdout.await.unwrap_or_default();
    if let Some(g) = &m.globals {
        crate::restore::globals::fetch(storage, g, m.encryption.as_ref(), encryption)
            .await
            .map_err(|e| VerifyError::Damaged {
                key: g.key.clone(),
                reason: e.to_string(),
            })?;
    }
    let toc_entries = String::from_utf8_lossy(&stdout)
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .count();
    Ok(Verified {
        stored_bytes: streamed.stored_bytes,
        raw_bytes: streamed.raw_bytes,
        toc_entries,
    })
}

/// Reads a child's pipe to the end in the background.
pub(crate) fn drain<R: AsyncRead + Send + Unpin + 'static>(
    pipe: Option<R>,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut out).await;
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::manifest::Manifest;

    /// A stored uncompressed object of `len` bytes and a manifest claiming `sha256`.
    async fn stored(dir: &std::path::Path, len: usize, sha256: Option<&str>) -> (Storage, Entry) {
        let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let storage = Storage::Local(crate::storage::local::LocalStorage::new(dir));
        storage
            .put_bytes("p/app/x.dump", body.clone().into())
            .await
            .unwrap();
        let sha = sha256.map_or_else(|| crate::codec::hash::sha256_hex(&body), str::to_string);
        let json = serde_json::json!({
            "format": "pgsidecar-manifest", "format_version": 1, "tool_version": "0",
            "job": "j", "database": "app", "host": "h", "port": 5432,
            "server_version": "17.0", "server_major": 17, "pg_dump_version": "17.0",
            "pg_dump_major": 17, "dump_format": "custom",
            "started_at": "2026-11-24T02:00:00Z", "finished_at": "2026-11-24T02:00:01Z",
            "duration_ms": 1000, "database_size_bytes": len, "raw_bytes": len,
            "stored_bytes": len, "compression": { "algorithm": "none" }, "sha256": sha,
            "key": "p/app/x.dump", "objects": [{ "key": "p/app/x.dump", "size": len }]
        });
        let manifest =
            Manifest::parse("p/app/x.manifest.json", json.to_string().as_bytes()).unwrap();
        let entry = Entry {
            destinations: Vec::new(),
            manifest_key: "p/app/x.manifest.json".into(),
            manifest,
        };
        (storage, entry)
    }

    const HOLD: Feed = Feed {
        hold_back: true,
        check_after_close: false,
    };

    #[tokio::test]
    async fn a_mismatch_withholds_the_end_of_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let len = 3 * 1024 * 1024;
        let (storage, entry) = stored(dir.path(), len, Some(&"0".repeat(64))).await;
        let mut received = Vec::new();
        let none = Encryption::default();
        let err = stream_archive(&storage, &entry, &none, &mut received, HOLD, Arc::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("does not match the manifest"),
            "{err}"
        );
        assert!(
            !received.is_empty() && received.len() < len,
            "{}",
            received.len()
        );
    }

    #[tokio::test]
    async fn an_intact_archive_is_delivered_whole() {
        let dir = tempfile::tempdir().unwrap();
        let len = 3 * 1024 * 1024 + 17;
        let (storage, entry) = stored(dir.path(), len, None).await;
        let mut received = Vec::new();
        let progress = Arc::new(AtomicU64::new(0));
        let none = Encryption::default();
        let s = stream_archive(
            &storage,
            &entry,
            &none,
            &mut received,
            HOLD,
            progress.clone(),
        )
        .await
        .unwrap();
        assert_eq!(received.len(), len);
        assert_eq!((s.stored_bytes, s.raw_bytes), (len as u64, len as u64));
        assert_eq!(progress.load(Ordering::Relaxed), len as u64);
    }
}

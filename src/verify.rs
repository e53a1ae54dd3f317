//! Verify: proves a stored backup can be read back, without touching any database. The stored
//! bytes are streamed once: their sha256 and size are checked against the manifest, they are
//! decompressed (zstd and gzip check their own frames), and the archive is handed to
//! `pg_restore --list`, which must accept it.

use std::process::Stdio;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::catalog::Entry;
use crate::config::{Compression, ToolsConfig};
use crate::pgtools::{self, ToolError};
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
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("pg_restore rejected the archive in `{key}`: {stderr}")]
    Archive { key: String, stderr: String },
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
    let mut stream: Box<dyn AsyncRead + Send + Unpin> = Box::new(tokio::io::empty());
    for piece in &entry.manifest.objects {
        let part = storage
            .get(&piece.key)
            .await
            .map_err(|source| VerifyError::Storage {
                key: piece.key.clone(),
                source,
            })?;
        stream = Box::new(stream.chain(part));
    }
    Ok(stream)
}

/// Verifies `entry` as described in the module documentation.
pub async fn verify(
    storage: &Storage,
    tools: &ToolsConfig,
    entry: &Entry,
) -> Result<Verified, VerifyError> {
    let m = &entry.manifest;
    let key = m.key.clone();
    let damaged = |reason: String| VerifyError::Damaged {
        key: key.clone(),
        reason,
    };
    let tool = pgtools::for_server("pg_restore", &tools.bin_dirs, m.pg_dump_major).await?;

    // Stored bytes → (hash, count) → decompress → pg_restore --list.
    let (tx, rx) = tokio::io::duplex(1 << 20);
    let hasher = tokio::spawn({
        let mut stored = open_pieces(storage, entry).await?;
        let mut tx = tx;
        async move {
            let mut h = Sha256::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let k = stored.read(&mut buf).await?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k as u64;
                if tx.write_all(&buf[..k]).await.is_err() {
                    // The decompressor stopped (it reported why); keep hashing to the end.
                    continue;
                }
            }
            drop(tx);
            Ok::<_, std::io::Error>((hex::encode(h.finalize()), n))
        }
    });
    let mut raw: Box<dyn AsyncRead + Send + Unpin> = match m.compression {
        Compression::Zstd { .. } => {
            let mut d = async_compression::tokio::bufread::ZstdDecoder::new(BufReader::new(rx));
            d.multiple_members(true);
            Box::new(d)
        }
        Compression::Gzip { .. } => {
            let mut d = async_compression::tokio::bufread::GzipDecoder::new(BufReader::new(rx));
            d.multiple_members(true);
            Box::new(d)
        }
        Compression::None => Box::new(rx),
    };
    let mut child = tokio::process::Command::new(&tool.path)
        .arg("--list")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| damaged(format!("cannot start pg_restore: {e}")))?;
    let mut stdin = child.stdin.take();
    // Drained concurrently: a long listing must not block pg_restore while it is being fed.
    let drain = |pipe: Option<Box<dyn AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut out = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut out).await;
            }
            out
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let mut raw_bytes = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let decode_error = loop {
        match raw.read(&mut buf).await {
            Ok(0) => break None,
            Ok(k) => {
                raw_bytes += k as u64;
                // pg_restore may stop reading once it has the table of contents.
                if let Some(s) = stdin.as_mut() {
                    if s.write_all(&buf[..k]).await.is_err() {
                        stdin = None;
                    }
                }
            }
            Err(e) => break Some(e),
        }
    };
    drop(stdin);
    drop(raw);
    let (sha256, stored_bytes) = hasher
        .await
        .map_err(|e| damaged(format!("reading stopped: {e}")))?
        .map_err(|e| damaged(format!("reading failed: {e}")))?;
    let status = child
        .wait()
        .await
        .map_err(|e| damaged(format!("pg_restore did not finish: {e}")))?;
    let (stdout, stderr) = (
        stdout.await.unwrap_or_default(),
        stderr.await.unwrap_or_default(),
    );
    if stored_bytes != m.stored_bytes || sha256 != m.sha256 {
        return Err(damaged(format!(
            "sha256 {sha256} over {stored_bytes} bytes does not match the manifest ({} over {} bytes)",
            m.sha256, m.stored_bytes
        )));
    }
    if let Some(e) = decode_error {
        return Err(damaged(format!("decompression failed: {e}")));
    }
    if raw_bytes != m.raw_bytes {
        return Err(damaged(format!(
            "decompressed to {raw_bytes} bytes, the manifest says {}",
            m.raw_bytes
        )));
    }
    if !status.success() {
        return Err(VerifyError::Archive {
            key,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    let toc_entries = String::from_utf8_lossy(&stdout)
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .count();
    Ok(Verified {
        stored_bytes,
        raw_bytes,
        toc_entries,
    })
}

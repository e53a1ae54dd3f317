//! Storage sink: where dumps and manifests are kept. One trait, one implementation per
//! backend (S3, local directory), dispatched through the closed [`Storage`] enum.
//!
//! Invariants: `put_stream` either stores the whole stream and returns its pieces, or leaves
//! nothing behind: partial uploads are aborted and partial files removed, on every error path
//! and on cancellation. No write replaces a stored object. Every object written (dumps,
//! globals, manifests) carries the same configured encryption, tags and retention.
//! `tests/it/storage_contract.rs` checks this contract against every backend.

pub mod fanout;
pub mod local;
pub mod s3;
mod settings;

pub use settings::{
    Lifecycle, ObjectLock, Sse, StorageConfig, StorageLocation, S3_MAX_PARTS, S3_MAX_PART_SIZE,
    S3_MIN_PART_SIZE,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

use crate::codec::compress::BoxRead;

/// Errors from a storage backend. Messages name the bucket or path and the key.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("bucket `{bucket}` does not exist (or is not visible with these credentials)")]
    NoSuchBucket { bucket: String },
    #[error("access denied to bucket `{bucket}` while trying to {op} ({code}): check the credentials and the bucket policy")]
    AccessDenied {
        bucket: String,
        op: &'static str,
        code: String,
    },
    #[error("object `{key}` not found")]
    NotFound { key: String },
    #[error("cannot reach the S3 endpoint while trying to {op} `{key}`: {cause}")]
    Unreachable {
        op: &'static str,
        key: String,
        cause: String,
    },
    #[error("timed out after {secs}s while trying to {op} `{key}`")]
    Timeout {
        op: &'static str,
        key: String,
        secs: u64,
    },
    #[error("S3 refused to {op} `{key}`: HTTP {status} {code}: {message}")]
    Service {
        op: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("upload of `{key}` did not complete: {reason}")]
    Incomplete { key: String, reason: String },
    #[error("reading the backup stream for `{key}` failed: {source}")]
    Source {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} `{}` failed: {source}", .path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The credentials lack one permission; the caller may carry on without what it gives.
    #[error("permission `{action}` is missing on bucket `{bucket}`")]
    Denied {
        /// The IAM action, e.g. `s3:PutLifecycleConfiguration`.
        action: &'static str,
        bucket: String,
    },
    /// The store does not implement an optional operation (HTTP 501).
    #[error("the S3 store of bucket `{bucket}` does not implement {op}")]
    Unsupported { op: &'static str, bucket: String },
    #[error("object `{key}` already exists; refusing to overwrite a stored backup")]
    AlreadyExists { key: String },
    #[error("cancelled")]
    Cancelled,
}

impl StorageError {
    /// Whether trying again cannot help: wrong bucket, denied access, bad request.
    pub fn is_permanent(&self) -> bool {
        match self {
            StorageError::NoSuchBucket { .. }
            | StorageError::AccessDenied { .. }
            | StorageError::Denied { .. }
            | StorageError::Unsupported { .. }
            | StorageError::NotFound { .. }
            | StorageError::AlreadyExists { .. }
            | StorageError::Cancelled => true,
            StorageError::Service { status, code, .. } => {
                // These come back as 400 but heal on a retry.
                let transient_code = matches!(
                    code.as_str(),
                    "RequestTimeout"
                        | "ExpiredToken"
                        | "BadDigest"
                        | "RequestTimeTooSkewed"
                        | "SlowDown"
                );
                (400..500).contains(status) && !matches!(status, 408 | 409 | 429) && !transient_code
            }
            _ => false,
        }
    }
}

/// A stored object, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
}

/// One object holding part of a stream. A stream larger than one object can hold (10,000
/// parts) continues in further pieces, concatenated in order on restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredPiece {
    pub key: String,
    pub size: u64,
}

/// What [`Storage::ensure_lifecycle`] did to the bucket's lifecycle rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleChange {
    /// The rules were already as configured; nothing was written.
    Unchanged,
    /// The configuration was rewritten: the sidecar's rules replaced, every other rule kept.
    Updated,
    /// This storage has no lifecycle rules (a local directory, or a store that does not
    /// implement them).
    Unsupported,
}

/// What every backend provides. Keys are full object keys (the prefix included).
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Stores `body` under `key` (and `key.002`, … if it outgrows one object). `expected_size`
    /// is a hint for sizing upload parts. Never replaces a stored object: if `key` (or a
    /// continuation piece) exists, fails with [`StorageError::AlreadyExists`] naming it, and
    /// leaves that object as it is and nothing of this upload.
    async fn put_stream(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Unpin + Send),
        expected_size: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<StoredPiece>, StorageError>;
    /// Stores a small object in one request, never replacing a stored object: if `key` exists,
    /// fails with [`StorageError::AlreadyExists`] naming it and leaves it as it is. An object
    /// that already holds exactly `bytes` counts as written, so a resent request whose first
    /// attempt landed is no error.
    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError>;
    /// Streams an object; a missing one is [`StorageError::NotFound`].
    async fn get(&self, key: &str) -> Result<BoxRead, StorageError>;
    /// Reads a small object whole; a missing one is [`StorageError::NotFound`].
    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError>;
    /// Every object whose key starts with `prefix`, each once, in byte order of the keys.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;
    /// Removes `key`; removing a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Aborts unfinished uploads of dumps under `prefix` left by an earlier crash (with
    /// `started_before`, only those begun before it); returns how many.
    async fn abort_stale_uploads(
        &self,
        prefix: &str,
        started_before: Option<DateTime<Utc>>,
    ) -> Result<usize, StorageError>;
    /// Unfinished uploads under `prefix` (for checks and tests).
    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// The date until which object lock retention keeps `key` from being deleted, if that
    /// is in the future; `None` for an unlocked or missing object.
    async fn locked_until(&self, key: &str) -> Result<Option<DateTime<Utc>>, StorageError>;
    /// Puts the configured lifecycle rules in place for objects under `prefix`, keeping
    /// every rule the sidecar does not own; writes nothing when they are already there.
    async fn ensure_lifecycle(
        &self,
        lifecycle: &Lifecycle,
        prefix: &str,
    ) -> Result<LifecycleChange, StorageError>;
}

/// A store by the name backups go to it under: the primary (`[storage]`) or a copy.
pub struct Destination {
    pub name: String,
    pub storage: Storage,
}

/// The name the `[storage]` destination goes by (`--from primary`, the `IN` column of `list`,
/// the `destination` label of the metrics). No copy may take it.
pub const PRIMARY: &str = "primary";

/// The store of destination `name` among the primary and the copies.
pub fn find<'a>(
    primary: &'a Storage,
    copies: &'a [Destination],
    name: &str,
) -> Option<&'a Storage> {
    if name == PRIMARY {
        return Some(primary);
    }
    copies.iter().find(|d| d.name == name).map(|d| &d.storage)
}

/// The configured backend.
pub enum Storage {
    S3(s3::S3Storage),
    Local(local::LocalStorage),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Storage::S3($b) => $call,
            Storage::Local($b) => $call,
        }
    };
}

impl Storage {
    /// Builds the backend named by the storage URL.
    pub async fn from_config(cfg: &StorageConfig) -> Storage {
        match &cfg.location {
            StorageLocation::S3 { bucket, .. } => {
                Storage::S3(s3::S3Storage::new(cfg, bucket).await)
            }
            StorageLocation::Local { root } => Storage::Local(local::LocalStorage::new(root)),
        }
    }

    pub async fn put_stream(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Unpin + Send),
        expected_size: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<StoredPiece>, StorageError> {
        dispatch!(self, b => b.put_stream(key, body, expected_size, cancel).await)
    }
    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        dispatch!(self, b => b.put_bytes(key, bytes).await)
    }
    pub async fn get(&self, key: &str) -> Result<BoxRead, StorageError> {
        dispatch!(self, b => b.get(key).await)
    }
    /// Every piece of one stored stream, in order, as one stream; `Err` names the piece that
    /// could not be opened.
    pub async fn get_pieces(
        &self,
        pieces: &[StoredPiece],
    ) -> Result<BoxRead, (String, StorageError)> {
        use tokio::io::AsyncReadExt;
        let mut stream: BoxRead = Box::pin(tokio::io::empty());
        for piece in pieces {
            let part = self
                .get(&piece.key)
                .await
                .map_err(|e| (piece.key.clone(), e))?;
            stream = Box::pin(stream.chain(part));
        }
        Ok(stream)
    }
    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        dispatch!(self, b => b.get_bytes(key).await)
    }
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        dispatch!(self, b => b.list(prefix).await)
    }
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        dispatch!(self, b => b.delete(key).await)
    }
    /// Aborts unfinished dump uploads under `prefix` (begun before `started_before`, if
    /// given); returns how many. A store that cannot list uploads, or a key not allowed to, is
    /// only warned about: this is housekeeping, and the lifecycle rule covers it.
    pub async fn abort_stale_uploads(
        &self,
        prefix: &str,
        started_before: Option<DateTime<Utc>>,
    ) -> Result<usize, StorageError> {
        let aborted: Result<usize, StorageError> =
            dispatch!(self, b => b.abort_stale_uploads(prefix, started_before).await);
        match aborted {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(count = n, "aborted unfinished uploads from an earlier run");
                }
                Ok(n)
            }
            Err(e @ (StorageError::Unsupported { .. } | StorageError::Denied { .. })) => {
                tracing::warn!(
                    "cannot look for unfinished uploads of earlier runs ({e}); their parts stay stored until a lifecycle rule aborts them (storage.lifecycle.abort_incomplete_after_days)"
                );
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
    pub async fn pending_uploads(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        dispatch!(self, b => b.pending_uploads(prefix).await)
    }
    /// See [`Backend::locked_until`]: prune skips (and reports) a backup locked until then.
    pub async fn locked_until(&self, key: &str) -> Result<Option<DateTime<Utc>>, StorageError> {
        dispatch!(self, b => b.locked_until(key).await)
    }
    /// See [`Backend::ensure_lifecycle`]. A missing permission comes back as
    /// [`StorageError::Denied`] naming the action, so the caller can warn and carry on.
    pub async fn ensure_lifecycle(
        &self,
        lifecycle: &Lifecycle,
        prefix: &str,
    ) -> Result<LifecycleChange, StorageError> {
        dispatch!(self, b => b.ensure_lifecycle(lifecycle, prefix).await)
    }
}

/// Part size for an upload expected to store about `expected` bytes: large enough that
/// `max_parts` parts hold twice the expectation (a dump is usually smaller than the database
/// on disk, compressed smaller still), rounded up to whole MiB, between S3's 5 MiB minimum
/// and [`AUTO_PART_CEILING`]. Memory use is this size times (parts in flight + 1); the ceiling
/// keeps it bounded for any database (a larger dump continues in further objects).
pub fn choose_part_size(expected: u64, max_parts: u32) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let wanted = expected.saturating_mul(2).div_ceil(max_parts as u64);
    wanted
        .div_ceil(MIB)
        .saturating_mul(MIB)
        .clamp(crate::storage::S3_MIN_PART_SIZE, AUTO_PART_CEILING)
}

/// Largest part size chosen automatically: 10,000 parts of it hold 640 GiB per object.
pub const AUTO_PART_CEILING: u64 = 64 * 1024 * 1024;

/// Whether an unfinished upload begun at `started` is older than `cutoff` (with no cutoff,
/// every one is). One of unknown age is never old enough: it may be a running backup's.
pub(crate) fn begun_before(started: Option<DateTime<Utc>>, cutoff: Option<DateTime<Utc>>) -> bool {
    cutoff.is_none_or(|cutoff| started.is_some_and(|t| t < cutoff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_covers_twice_the_database() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(choose_part_size(0, 10_000), 5 * MIB);
        assert_eq!(choose_part_size(1 << 30, 10_000), 5 * MIB);
        let big = 200u64 << 30;
        let p = choose_part_size(big, 10_000);
        assert!(p * 10_000 >= 2 * big && p.is_multiple_of(MIB), "{p}");
        // Memory stays bounded for any database size; larger dumps continue in pieces.
        assert_eq!(choose_part_size(u64::MAX, 10_000), AUTO_PART_CEILING);
    }
}

//! Local directory storage (`file:///path`), for a mounted volume or NFS share.
//!
//! Files are written under a temporary name, fsynced, then renamed into place: a crash or a
//! failed dump can leave a `.tmp-` file behind, never a half-written file under a backup's name.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{Backend, LifecycleChange, ObjectInfo, StorageError, StoredPiece};
use crate::codec::compress::BoxRead;
use crate::storage::Lifecycle;

/// A directory holding backups.
pub struct LocalStorage {
    root: PathBuf,
}

const TMP_MARK: &str = ".tmp-";

impl LocalStorage {
    pub fn new(root: &Path) -> Self {
        LocalStorage {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
        move |source| {
            if source.kind() == std::io::ErrorKind::NotFound && op == "read" {
                StorageError::NotFound {
                    key: path.display().to_string(),
                }
            } else {
                StorageError::Io {
                    op,
                    path: path.to_path_buf(),
                    source,
                }
            }
        }
    }

    /// Writes `body` to a temp file next to `key`, then renames it into place.
    async fn write_atomically(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Unpin + Send),
        cancel: &CancellationToken,
    ) -> Result<u64, StorageError> {
        let dest = self.path(key);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return Err(StorageError::AlreadyExists { key: key.into() });
        }
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(Self::io("create directory", &dir))?;
        let file_name = dest.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{file_name}{TMP_MARK}{}", std::process::id()));
        let result = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .await
                .map_err(Self::io("create", &tmp))?;
            let written = tokio::select! {
                r = tokio::io::copy(body, &mut file) => r.map_err(|source| StorageError::Source { key: key.into(), source })?,
                _ = cancel.cancelled() => return Err(StorageError::Cancelled),
            };
            file.flush().await.map_err(Self::io("write", &tmp))?;
            file.sync_all().await.map_err(Self::io("fsync", &tmp))?;
            tokio::fs::rename(&tmp, &dest)
                .await
                .map_err(Self::io("rename", &tmp))?;
            // The rename is durable only once the directory entry is.
            if let Ok(d) = tokio::fs::File::open(&dir).await {
                let _ = d.sync_all().await;
            }
            Ok(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

impl Backend for LocalStorage {
    async fn put_stream(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Unpin + Send),
        _expected_size: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<StoredPiece>, StorageError> {
        let size = self.write_atomically(key, body, cancel).await?;
        Ok(vec![StoredPiece {
            key: key.to_string(),
            size,
        }])
    }

    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let mut reader: &[u8] = &bytes;
        match self
            .write_atomically(key, &mut reader, &CancellationToken::new())
            .await
        {
            Ok(_) => Ok(()),
            // The trait's promise, kept for S3's resent requests: a file holding exactly these
            // bytes counts as written.
            Err(StorageError::AlreadyExists { .. })
                if self
                    .get_bytes(key)
                    .await
                    .is_ok_and(|stored| stored == bytes) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn get(&self, key: &str) -> Result<BoxRead, StorageError> {
        let path = self.path(key);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(Self::io("read", &path))?;
        Ok(Box::pin(file))
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let path = self.path(key);
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(Self::io("read", &path))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let mut rd = match tokio::fs::read_dir(&dir).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io("list", &dir)(e)),
            };
            while let Some(entry) = rd.next_entry().await.map_err(Self::io("list", &dir))? {
                let meta = entry
                    .metadata()
                    .await
                    .map_err(Self::io("stat", &entry.path()))?;
                let path = entry.path();
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel.to_string_lossy().into_owned();
                if key.starts_with(prefix) && !key.contains(TMP_MARK) {
                    out.push(ObjectInfo {
                        key,
                        size: meta.len(),
                        last_modified: meta.modified().ok().map(DateTime::<Utc>::from),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Self::io("delete", &path)(e)),
            _ => Ok(()),
        }
    }

    async fn abort_stale_uploads(
        &self,
        prefix: &str,
        started_before: Option<DateTime<Utc>>,
    ) -> Result<usize, StorageError> {
        let mut n = 0;
        for key in self.pending_uploads(prefix).await? {
            let path = self.path(&key);
            // A temp file's last write is the newest sign of life of its upload.
            let written = tokio::fs::metadata(&path)
                .await
                .and_then(|m| m.modified())
                .ok()
                .map(DateTime::<Utc>::from);
            if super::begun_before(written, started_before)
                && tokio::fs::remove_file(&path).await.is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        // Temp files are hidden from `list`; find them directly.
        let dir = self.path(prefix);
        let dir = if dir.is_dir() {
            dir
        } else {
            dir.parent().unwrap_or(&self.root).to_path_buf()
        };
        let mut out = Vec::new();
        if let Ok(mut rd) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(entry)) = rd.next_entry().await {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.contains(TMP_MARK) {
                    if let Ok(rel) = entry.path().strip_prefix(&self.root) {
                        out.push(rel.to_string_lossy().into_owned());
                    }
                }
            }
        }
        Ok(out)
    }

    async fn locked_until(&self, _key: &str) -> Result<Option<DateTime<Utc>>, StorageError> {
        // A directory has no object lock; file permissions are the operator's business.
        Ok(None)
    }

    async fn ensure_lifecycle(
        &self,
        _lifecycle: &Lifecycle,
        _prefix: &str,
    ) -> Result<LifecycleChange, StorageError> {
        Ok(LifecycleChange::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Backend;

    #[tokio::test]
    async fn only_uploads_older_than_the_cutoff_are_aborted() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("p/app");
        std::fs::create_dir_all(&dir).unwrap();
        let old = dir.join(format!(".2026-11-20T020000Z.dump.zst{TMP_MARK}1"));
        let young = dir.join(format!(".2026-11-25T020000Z.dump.zst{TMP_MARK}2"));
        for f in [&old, &young] {
            std::fs::write(f, b"part").unwrap();
        }
        let two_days_ago =
            std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        let storage = LocalStorage::new(root.path());
        let cutoff = Utc::now() - chrono::TimeDelta::days(1);
        assert_eq!(
            storage
                .abort_stale_uploads("p/app/", Some(cutoff))
                .await
                .unwrap(),
            1
        );
        assert!(!old.exists(), "the day-old upload is aborted");
        assert!(young.exists(), "a running backup's upload is left alone");
        assert_eq!(
            storage.abort_stale_uploads("p/app/", None).await.unwrap(),
            1
        );
        assert!(!young.exists());
    }
}

//! Catalog: copying backups from one destination to another (`pgsidecar copy`), how a new or
//! lagging destination is filled from an existing one.
//!
//! Invariants: each object streams from store to store (no local copy) and is checked against
//! its manifest's sha256 and size on the way, so a damaged object never completes its upload;
//! the manifest goes last, so a backup whose copy failed is not listed in the target; nothing
//! in the source is changed, nothing in the target replaced.

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::manifest::Manifest;
use super::Entry;
use crate::codec::hash::{Checked, StreamDigest};
use crate::storage::{Storage, StorageError};

/// Why copying could not start.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot list the backups under `{prefix}` in {side}: {source}")]
    List {
        side: String,
        prefix: String,
        #[source]
        source: StorageError,
    },
}

/// One side of a copy: a store and the prefix a job's backups live under in it.
pub struct Side<'a> {
    /// For messages: `primary`, or the copy's name.
    pub name: &'a str,
    pub storage: &'a Storage,
    pub prefix: &'a str,
}

/// What a copy did.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// The keys of the backups written in the target (or, with `dry_run`, that would be),
    /// as `list` shows them, with their stored bytes.
    pub copied: Vec<(String, u64)>,
    /// Backups the target held already.
    pub present: usize,
    /// Backups that failed, each with its source key and the reason; nothing of them is
    /// listed in the target.
    pub failed: Vec<(String, String)>,
    /// Manifests of the source that could not be read (not backups, so not copied).
    pub problems: Vec<String>,
}

/// Copies every backup under `from` (of `database`, or all) that `to` lacks, oldest first.
pub async fn copy_missing(
    from: &Side<'_>,
    to: &Side<'_>,
    database: Option<&str>,
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<CopyReport, CopyError> {
    let list_err = |side: &Side<'_>| {
        let (name, prefix) = (side.name.to_string(), side.prefix.to_string());
        move |source| CopyError::List {
            side: name,
            prefix,
            source,
        }
    };
    let source = super::load(from.storage, from.prefix, database)
        .await
        .map_err(list_err(from))?;
    let target = super::load(to.storage, to.prefix, database)
        .await
        .map_err(list_err(to))?;
    let mut report = CopyReport {
        problems: source.problems,
        ..CopyReport::default()
    };
    for entry in source.entries.iter().rev() {
        let Some(manifest_key) = rebase(&entry.manifest_key, from.prefix, to.prefix) else {
            report.failed.push((
                entry.manifest_key.clone(),
                format!("is not under the prefix `{}`", from.prefix),
            ));
            continue;
        };
        if target
            .entries
            .iter()
            .any(|e| e.manifest_key == manifest_key)
        {
            report.present += 1;
            continue;
        }
        let shown = (
            rebase(&entry.manifest.key, from.prefix, to.prefix)
                .unwrap_or_else(|| manifest_key.clone()),
            entry.manifest.stored_bytes,
        );
        if dry_run {
            report.copied.push(shown);
            continue;
        }
        if cancel.is_cancelled() {
            break;
        }
        match copy_one(from, to, entry, &manifest_key, cancel).await {
            Ok(()) => report.copied.push(shown),
            Err(why) => report.failed.push((entry.manifest.key.clone(), why)),
        }
    }
    Ok(report)
}

/// `key` moved from under `from` to under `to`.
fn rebase(key: &str, from: &str, to: &str) -> Option<String> {
    let rest = if from.is_empty() {
        key
    } else {
        key.strip_prefix(from)?.strip_prefix('/')?
    };
    Some(crate::keys::join_prefix(to, rest))
}

/// One backup: its dump (checked), its globals (checked), then its manifest naming the new
/// objects. On failure what was written of it is removed again.
async fn copy_one(
    from: &Side<'_>,
    to: &Side<'_>,
    entry: &Entry,
    manifest_key: &str,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let m = &entry.manifest;
    let moved = |key: &str| {
        rebase(key, from.prefix, to.prefix)
            .ok_or_else(|| format!("`{key}` is not under `{}`", from.prefix))
    };
    let key = moved(&m.key)?;
    let stored = from
        .storage
        .get_pieces(&m.objects)
        .await
        .map_err(|(key, e)| format!("reading `{key}` from {}: {e}", from.name))?;
    let expected = StreamDigest {
        sha256: m.sha256.clone(),
        bytes: m.stored_bytes,
    };
    let mut checked = Checked::new(stored, expected, format!("`{}` in {}", m.key, from.name));
    let pieces = to
        .storage
        .put_stream(&key, &mut checked, m.stored_bytes, cancel)
        .await
        .map_err(|e| format!("writing `{key}` to {}: {e}", to.name))?;
    let mut written: Vec<String> = pieces.iter().map(|p| p.key.clone()).collect();
    let rest = async {
        let globals = match &m.globals {
            None => None,
            Some(g) => {
                let bytes = from
                    .storage
                    .get_bytes(&g.key)
                    .await
                    .map_err(|e| format!("reading `{}` from {}: {e}", g.key, from.name))?;
                let sha = crate::codec::hash::sha256_hex(&bytes);
                if sha != g.sha256 || bytes.len() as u64 != g.stored_bytes {
                    return Err(format!(
                        "`{}` in {} does not match its manifest: sha256 {sha} over {} bytes, the manifest says {} over {} bytes",
                        g.key,
                        from.name,
                        bytes.len(),
                        g.sha256,
                        g.stored_bytes
                    ));
                }
                let gkey = moved(&g.key)?;
                to.storage
                    .put_bytes(&gkey, bytes)
                    .await
                    .map_err(|e| format!("writing `{gkey}` to {}: {e}", to.name))?;
                written.push(gkey.clone());
                Some(super::manifest::Globals {
                    key: gkey,
                    ..g.clone()
                })
            }
        };
        let copied = Manifest {
            key: key.clone(),
            objects: pieces.clone(),
            globals,
            ..m.clone()
        };
        to.storage
            .put_bytes(manifest_key, Bytes::from(copied.to_json()))
            .await
            .map_err(|e| format!("writing `{manifest_key}` to {}: {e}", to.name))
    };
    let result = rest.await;
    if result.is_err() {
        for k in &written {
            let _ = to.storage.delete(k).await;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::rebase;

    #[test]
    fn keys_move_from_prefix_to_prefix() {
        assert_eq!(
            rebase("a/prod/app/x.dump.zst", "a/prod", "b/c/prod").as_deref(),
            Some("b/c/prod/app/x.dump.zst")
        );
        assert_eq!(
            rebase("prod/app/x", "", "b").as_deref(),
            Some("b/prod/app/x")
        );
        assert_eq!(rebase("prod/app/x", "prod", "").as_deref(), Some("app/x"));
        assert_eq!(rebase("other/app/x", "prod", "b"), None);
        assert_eq!(rebase("prodx/app/x", "prod", "b"), None);
    }
}

//! Restore to a moment: the base backup that can reach the target is laid into an empty
//! directory, every WAL file replay needs is staged beside it and checked, and recovery is
//! configured (`recovery.signal`, `restore_command`, the target). The server is started by the
//! operator (or the drill) on that directory.
//!
//! Invariants: the chain is checked for gaps before anything is written; a non-empty target
//! directory is refused; every staged file's sha256 is checked against its key; what this
//! command wrote is removed when it fails.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt;

use super::archive::{Archive, BaseBackup, Reach};
use super::wal;
use crate::codec::encryption::{DecryptError, Encryption};
use crate::codec::hash::Sha256Hex;
use crate::codec::{compress, Compression};
use crate::keys;
use crate::storage::{Storage, StorageError};

/// What to recover to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The end of the archived WAL.
    Latest,
    /// The last commit at or before this time (`recovery_target_time`, inclusive).
    Time(DateTime<Utc>),
}

impl std::str::FromStr for Target {
    type Err = String;
    /// `latest`, or a time with its offset (`2026-11-30 14:05:00+01`, RFC 3339).
    fn from_str(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if s == "latest" {
            return Ok(Target::Latest);
        }
        let parsed = DateTime::parse_from_rfc3339(s)
            .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%#z"))
            .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
            .map_err(|_| {
                format!("`{s}` is neither `latest` nor a time with its offset, such as `2026-11-30 14:05:00+01` or `2026-11-30T13:05:00Z`")
            })?;
        Ok(Target::Time(parsed.to_utc()))
    }
}

/// Errors of a point-in-time restore.
#[derive(Debug, thiserror::Error)]
pub enum PitrRestoreError {
    #[error("no WAL archive under `{0}`: is point-in-time recovery enabled (pitr.enabled) and has the sidecar archived yet?")]
    NoArchive(String),
    #[error("the archive holds several clusters ({0}); choose one with --system-identifier")]
    SeveralClusters(String),
    #[error("no archive of cluster {0} under `{1}`")]
    NoSuchCluster(u64, String),
    #[error("no base backup can reach {target}: {why}")]
    NoBaseBackup { target: String, why: String },
    #[error("`{}` is not empty; a restore writes only into a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("`{}`: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading `{key}` failed: {source}")]
    Storage {
        key: String,
        #[source]
        source: StorageError,
    },
    #[error("`{key}` cannot be decrypted: {source}")]
    Decrypt {
        key: String,
        #[source]
        source: DecryptError,
    },
    #[error("`{key}` is damaged: {reason}")]
    Damaged { key: String, reason: String },
    #[error("`{0}` is encrypted and no encryption key is configured: set encryption.identity_file or encryption.passphrase")]
    NoKeys(String),
    #[error("`{}` cannot be used for the WAL: its path has `{found}`, which restore_command cannot quote; choose another --wal-dir", .path.display())]
    UnsafePath { path: PathBuf, found: char },
    #[error("stopped by a signal; what the restore wrote was removed")]
    Cancelled,
    #[error("--owner `{0}` is not `UID` or `UID:GID`")]
    Owner(String),
}

/// What a restore prepared.
#[derive(Debug)]
pub struct Prepared {
    pub base: BaseBackup,
    pub data_dir: PathBuf,
    pub wal_dir: PathBuf,
    /// WAL files staged (segments, the partial, history files).
    pub staged: usize,
    /// The last WAL file staged and when it was stored (the newest moment it can reach).
    pub last: String,
    pub last_stored_at: Option<DateTime<Utc>>,
    /// Said to the operator before the server is started; the restore may not do what was
    /// asked.
    pub warnings: Vec<String>,
    /// Said to the operator; nothing to act on.
    pub notes: Vec<String>,
}

/// The request.
pub struct Request<'a> {
    pub storage: &'a Storage,
    pub pitr_prefix: &'a str,
    pub system_identifier: Option<u64>,
    pub target: Target,
    pub data_dir: &'a Path,
    /// Where WAL is staged (default: `<data_dir>.wal` beside it).
    pub wal_dir: Option<&'a Path>,
    pub encryption: &'a Encryption,
    /// `UID[:GID]` to own what is written (the server's user).
    pub owner: Option<&'a str>,
    /// Stops the restore; what it wrote is removed.
    pub cancel: &'a tokio_util::sync::CancellationToken,
}

/// The clusters (system identifiers) archived under `pitr_prefix`.
pub async fn clusters(storage: &Storage, pitr_prefix: &str) -> Result<Vec<u64>, PitrRestoreError> {
    let listed = storage
        .list(&format!("{pitr_prefix}/"))
        .await
        .map_err(|source| PitrRestoreError::Storage {
            key: pitr_prefix.to_string(),
            source,
        })?;
    let mut ids: Vec<u64> = listed
        .iter()
        .filter_map(|o| keys::pitr_cluster_of(pitr_prefix, &o.key))
        .collect();
    ids.dedup();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// The cluster to restore: the one asked for, or the only one.
pub async fn choose_cluster(
    storage: &Storage,
    pitr_prefix: &str,
    asked: Option<u64>,
) -> Result<u64, PitrRestoreError> {
    let ids = clusters(storage, pitr_prefix).await?;
    match (asked, ids.as_slice()) {
        (_, []) => Err(PitrRestoreError::NoArchive(pitr_prefix.to_string())),
        (Some(id), _) if ids.contains(&id) => Ok(id),
        (Some(id), _) => Err(PitrRestoreError::NoSuchCluster(id, pitr_prefix.to_string())),
        (None, [one]) => Ok(*one),
        (None, many) => Err(PitrRestoreError::SeveralClusters(
            many.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The base backup to restore `target` from, and what it reaches (pure): the newest one that
/// finished at or before the target and whose WAL to its end is stored.
pub fn choose_base(archive: &Archive, target: Target) -> Result<(&BaseBackup, Reach), String> {
    let mut why = Vec::new();
    for base in archive.base_backups.iter().rev() {
        if let Target::Time(t) = target {
            if base.finished_at > t {
                continue;
            }
        }
        match archive.reach(base) {
            Ok(reach) => {
                // Past a hole nothing replays: refuse rather than stop short of the target
                // without saying so.
                let short = match (&reach.gap_after, target) {
                    (None, _) => None,
                    (Some(gap), Target::Latest) => Some(gap),
                    (Some(gap), Target::Time(t)) => {
                        (reach.last_stored_at.is_none_or(|at| at < t)).then_some(gap)
                    }
                };
                match short {
                    None => return Ok((base, reach)),
                    Some(gap) => why.push(format!(
                        "WAL segment {gap} is missing, so the WAL stored after it cannot be replayed (choose a --time before {})",
                        reach
                            .last_stored_at
                            .map_or("the hole".to_string(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    )),
                }
            }
            Err(gap) => why.push(format!(
                "the base backup of {} misses WAL segment {}",
                base.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                gap.missing
            )),
        }
    }
    if archive.base_backups.is_empty() {
        why.push("no base backup is stored".into());
    } else if why.is_empty() {
        why.push(format!(
            "the oldest base backup finished at {}, after the target",
            archive.base_backups[0]
                .finished_at
                .format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    Err(why.join("; "))
}

/// Prepares `req.data_dir` for recovery to `req.target`.
pub async fn prepare(req: &Request<'_>) -> Result<Prepared, PitrRestoreError> {
    let id = choose_cluster(req.storage, req.pitr_prefix, req.system_identifier).await?;
    let cluster = keys::pitr_cluster_prefix(req.pitr_prefix, id);
    let archive = Archive::load(req.storage, &cluster, None)
        .await
        .map_err(|source| PitrRestoreError::Storage {
            key: cluster.clone(),
            source,
        })?;
    let target_text = match req.target {
        Target::Latest => "the newest archived WAL".to_string(),
        Target::Time(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    };
    // The gap check, before anything is written.
    let (base, reach) =
        choose_base(&archive, req.target).map_err(|why| PitrRestoreError::NoBaseBackup {
            target: target_text.clone(),
            why,
        })?;
    if let Some(twice) = archive.problems.iter().find(|p| p.contains("stored twice")) {
        return Err(PitrRestoreError::Damaged {
            key: cluster.clone(),
            reason: twice.clone(),
        });
    }
    let owner = req.owner.map(parse_owner).transpose()?;
    let data_dir = std::path::absolute(req.data_dir).map_err(io_err(req.data_dir))?;
    let wal_dir = match req.wal_dir {
        Some(w) => std::path::absolute(w).map_err(io_err(w))?,
        None => {
            let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
            name.push(".wal");
            data_dir.with_file_name(name)
        }
    };
    // The WAL directory is written into restore_command, a shell command in a quoted
    // configuration string where `%` is special.
    let path_text = relative_to(&data_dir, &wal_dir).display().to_string();
    if let Some(c) = unquotable(&path_text) {
        return Err(PitrRestoreError::UnsafePath {
            path: wal_dir.clone(),
            found: c,
        });
    }
    let mut created = Vec::new();
    for dir in [&data_dir, &wal_dir] {
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(PitrRestoreError::NotEmpty(dir.clone()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                created.push(dir.clone());
            }
            Err(e) => return Err(io_err(dir)(e)),
        }
    }
    let base = base.clone();
    drop(reach);
    // Cancelling is seen between files and at every read of the base backup, so nothing is
    // written after the cleanup below.
    let result = lay_out(req, &cluster, archive, &base, &data_dir, &wal_dir, owner).await;
    if result.is_err() {
        // What this command wrote goes; directories it found empty stay (empty).
        for dir in [&data_dir, &wal_dir] {
            if created.contains(dir) {
                let _ = std::fs::remove_dir_all(dir);
            } else {
                empty_dir(dir);
            }
        }
    }
    let mut prepared = result?;
    if let Target::Time(t) = req.target {
        if prepared.last_stored_at.is_some_and(|at| at < t) {
            prepared.warnings.push(format!(
                "the target is after the newest archived WAL (stored {}): recovery would stop with FATAL \"recovery ended before configured recovery target was reached\". Restore with --time latest instead, or turn on pitr.heartbeat so the archive always holds a recent commit",
                prepared
                    .last_stored_at
                    .expect("checked")
                    .format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
    }
    Ok(prepared)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> PitrRestoreError + '_ {
    move |source| PitrRestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn parse_owner(text: &str) -> Result<(u32, u32), PitrRestoreError> {
    let bad = || PitrRestoreError::Owner(text.to_string());
    let (u, g) = text.split_once(':').unwrap_or((text, text));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

async fn lay_out(
    req: &Request<'_>,
    cluster: &str,
    mut archive: Archive,
    base: &BaseBackup,
    data_dir: &Path,
    wal_dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Prepared, PitrRestoreError> {
    // WAL first: while the daemon archives, a partial segment is replaced (and deleted)
    // every partial_interval, so it is fetched before the long unpacking, and the archive is
    // read again if it went in the meantime.
    let mut attempts = 0;
    let (staged, last, last_stored_at) = loop {
        attempts += 1;
        let reach = archive
            .reach(base)
            .map_err(|gap| PitrRestoreError::NoBaseBackup {
                target: "the chosen time".into(),
                why: format!("WAL segment {} is missing", gap.missing),
            })?;
        match stage_wal(req, &archive, base, &reach, wal_dir).await {
            Err(PitrRestoreError::Storage {
                source: StorageError::NotFound { .. },
                ..
            }) if attempts < 5 => {
                empty_dir(wal_dir);
                archive = Archive::load(req.storage, cluster, Some(base.wal_segment_size))
                    .await
                    .map_err(|source| PitrRestoreError::Storage {
                        key: cluster.to_string(),
                        source,
                    })?;
            }
            other => break other?,
        }
    };
    let (mut warnings, mut notes) = (Vec::new(), Vec::new());
    let (mut staged, mut last) = (staged, last);
    if let Some(fork) = cut_at_fork(wal_dir, base.timeline, base.wal_segment_size)? {
        staged -= fork.removed;
        if let Some(name) = fork.last {
            last = name;
        }
        // A time after the fork is never reached on this timeline: recovery stops with FATAL.
        let said = match req.target {
            Target::Latest => &mut notes,
            Target::Time(_) => &mut warnings,
        };
        said.push(format!(
            "timeline {} was left at {} when timeline {} began (a restore or a promotion): the WAL written on timeline {} after that point is not replayed, so this restore ends there. A time after it restores from a base backup of timeline {} or later; before that backup's end it cannot be restored",
            base.timeline, fork.at, fork.child, base.timeline, fork.child
        ));
    }
    extract_base(req, base, data_dir).await?;
    configure_recovery(data_dir, wal_dir, req.target, base.timeline)?;
    if let Some((uid, gid)) = owner {
        for dir in [data_dir, wal_dir] {
            chown_tree(dir, uid, gid)?;
        }
    }
    use std::os::unix::fs::PermissionsExt;
    for dir in [data_dir, wal_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    Ok(Prepared {
        base: base.clone(),
        data_dir: data_dir.to_path_buf(),
        wal_dir: wal_dir.to_path_buf(),
        staged,
        last,
        last_stored_at,
        warnings,
        notes,
    })
}

/// Where the restored timeline was left for a newer one.
struct Fork {
    child: u32,
    at: super::wal::Lsn,
    /// Staged WAL files removed (past the fork).
    removed: usize,
    /// The last WAL file kept, when the cut changed it.
    last: Option<String>,
}

/// Ends the staged WAL of timeline `tli` where the earliest newer timeline (a history file
/// naming `tli` as its parent) left it: later segments go, and the segment holding the fork
/// is zero-filled after it, which replay reads as the end of WAL. What `tli` wrote after a
/// restore or promotion branched off belongs to a history the operator left behind, and is
/// never replayed into a restore.
fn cut_at_fork(
    wal_dir: &Path,
    tli: u32,
    size: wal::SegmentSize,
) -> Result<Option<Fork>, PitrRestoreError> {
    let mut fork: Option<(u32, super::wal::Lsn)> = None;
    let mut staged_segments = Vec::new();
    for entry in std::fs::read_dir(wal_dir).map_err(io_err(wal_dir))? {
        let path = entry.map_err(io_err(wal_dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".zst"))
            .unwrap_or_default()
            .to_string();
        if let Some(child) = wal::parse_history_name(&name).filter(|c| *c > tli) {
            let text = zstd::decode_all(std::fs::File::open(&path).map_err(io_err(&path))?)
                .map_err(io_err(&path))?;
            for line in String::from_utf8_lossy(&text).lines() {
                let mut fields = line.split_whitespace();
                let (Some(parent), Some(at)) = (fields.next(), fields.next()) else {
                    continue;
                };
                if parent.parse::<u32>() != Ok(tli) {
                    continue;
                }
                if let Ok(at) = at.parse::<super::wal::Lsn>() {
                    // Every descendant's history names the fork; the oldest child made it.
                    if fork.is_none_or(|(c, f)| (at, child) < (f, c)) {
                        fork = Some((child, at));
                    }
                }
            }
        } else if let Some((t, segno)) = (name.len() == 24)
            .then(|| size.parse_name(&name).ok())
            .flatten()
        {
            if t == tli {
                staged_segments.push((segno, path));
            }
        }
    }
    let Some((child, at)) = fork else {
        return Ok(None);
    };
    let fork_segno = size.segment_of(at);
    let offset = (at.0 - fork_segno * size.bytes()) as usize;
    let mut removed = 0;
    let mut last = None;
    staged_segments.sort();
    for (segno, path) in &staged_segments {
        if *segno > fork_segno || (*segno == fork_segno && offset == 0) {
            std::fs::remove_file(path).map_err(io_err(path))?;
            removed += 1;
        } else if *segno == fork_segno {
            let mut bytes = zstd::decode_all(std::fs::File::open(path).map_err(io_err(path))?)
                .map_err(io_err(path))?;
            bytes.truncate(offset);
            bytes.resize(size.bytes() as usize, 0);
            let packed = zstd::encode_all(bytes.as_slice(), 3).map_err(io_err(path))?;
            std::fs::write(path, packed).map_err(io_err(path))?;
        }
    }
    if removed > 0 || staged_segments.iter().any(|(s, _)| *s == fork_segno) {
        last = staged_segments
            .iter()
            .rev()
            .find(|(s, _)| *s < fork_segno || (*s == fork_segno && offset > 0))
            .map(|(s, _)| size.file_name(tli, *s));
    }
    Ok(Some(Fork {
        child,
        at,
        removed,
        last,
    }))
}

/// Stages the segments `reach` covers, the partial after them and every history file;
/// returns how many, the last one's name, and when it was stored.
async fn stage_wal(
    req: &Request<'_>,
    archive: &Archive,
    base: &BaseBackup,
    reach: &Reach,
    wal_dir: &Path,
) -> Result<(usize, String, Option<DateTime<Utc>>), PitrRestoreError> {
    let size = base.wal_segment_size;
    let tli = base.timeline;
    let record = base.encryption.as_ref();
    let mut staged = 0;
    let mut last = String::new();
    // The partial first, straight after the listing: the archiver replaces it every
    // heartbeat, while complete segments stay until retention removes them.
    let mut partial = None;
    if let Some((segno, _, stored)) = &reach.partial {
        // Replay reads a partial segment under the complete segment's name: it is the last
        // one, and recovery ends where its valid WAL ends.
        let name = size.file_name(tli, *segno);
        stage(req, record, stored, &wal_dir.join(format!("{name}.zst"))).await?;
        staged += 1;
        partial = Some(format!("{name} (partial)"));
    }
    if let Some(to) = reach.complete_to {
        for segno in reach.first..=to {
            let stored = &archive.segments[&(tli, segno)];
            let name = size.file_name(tli, segno);
            stage(req, record, stored, &wal_dir.join(format!("{name}.zst"))).await?;
            staged += 1;
            last = name;
        }
    }
    if let Some(name) = partial {
        last = name;
    }
    // Every history file: on promotion the server picks a timeline no history names, so a
    // restored server never reuses one already archived.
    for (t, stored) in &archive.histories {
        let to = wal_dir.join(format!("{}.zst", wal::history_name(*t)));
        stage(req, record, stored, &to).await?;
        staged += 1;
    }
    Ok((staged, last, reach.last_stored_at))
}

fn empty_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Streams the base backup's objects, checks their sha256, decrypts, decompresses and
/// unpacks the tar into `data_dir`.
async fn extract_base(
    req: &Request<'_>,
    base: &BaseBackup,
    data_dir: &Path,
) -> Result<(), PitrRestoreError> {
    let stored = req
        .storage
        .get_pieces(&base.objects)
        .await
        .map_err(|(key, source)| PitrRestoreError::Storage { key, source })?;
    let (hashed, digest) = crate::codec::hash::Tapped::new(stored);
    let plain: compress::BoxRead =
        match &base.encryption {
            None => Box::pin(hashed),
            Some(record) => req.encryption.decrypt(record, hashed).map_err(|source| {
                PitrRestoreError::Decrypt {
                    key: base.key.clone(),
                    source,
                }
            })?,
        };
    let raw = compress::decompress(plain, Compression::Zstd { level: 3 });
    let dir = data_dir.to_path_buf();
    let key = base.key.clone();
    let cancel = req.cancel.clone();
    let unpacked = tokio::task::spawn_blocking(move || {
        let bridge = Cancellable(tokio_util::io::SyncIoBridge::new(raw), cancel);
        let mut tar = tar::Archive::new(bridge);
        tar.set_preserve_permissions(true);
        tar.set_overwrite(false);
        tar.unpack(&dir)?;
        // The tar ends at its end-of-archive blocks; what follows (padding) is read too, so
        // the stored bytes are hashed to their end and checked.
        std::io::copy(&mut tar.into_inner(), &mut std::io::sink()).map(drop)
    })
    .await
    .expect("the unpacking task does not panic");
    if req.cancel.is_cancelled() {
        return Err(PitrRestoreError::Cancelled);
    }
    let got = digest.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(got) = &got {
        if got.sha256 != base.sha256 || got.bytes != base.stored_bytes {
            return Err(PitrRestoreError::Damaged {
                key: key.clone(),
                reason: format!(
                    "stored {} bytes with sha256 {}, the manifest records {} bytes with {}",
                    got.bytes, got.sha256, base.stored_bytes, base.sha256
                ),
            });
        }
    }
    unpacked.map_err(|e| PitrRestoreError::Damaged {
        key,
        reason: format!("cannot unpack it into `{}`: {e}", data_dir.display()),
    })?;
    if got.is_none() {
        return Err(PitrRestoreError::Damaged {
            key: base.key.clone(),
            reason: "the stream ended before it was read to the end".into(),
        });
    }
    Ok(())
}

/// A reader that fails once `1` is cancelled: the unpacking stops at its next read.
struct Cancellable<R>(R, tokio_util::sync::CancellationToken);

impl<R: std::io::Read> std::io::Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.1.is_cancelled() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "stopped by a signal",
            ));
        }
        self.0.read(buf)
    }
}

/// Downloads the WAL file `key` into `to` (zstd, as `restore_command` reads it), checking that
/// it decompresses to content with `sha256`.
async fn stage(
    req: &Request<'_>,
    record: Option<&crate::codec::encryption::EncryptionRecord>,
    stored: &super::archive::Stored,
    to: &Path,
) -> Result<(), PitrRestoreError> {
    if req.cancel.is_cancelled() {
        return Err(PitrRestoreError::Cancelled);
    }
    let (key, sha256) = (stored.key.as_str(), stored.sha256.as_str());
    let storage_err = |source| PitrRestoreError::Storage {
        key: key.to_string(),
        source,
    };
    let stored = req.storage.get_bytes(key).await.map_err(storage_err)?;
    let compressed: Vec<u8> = if key.ends_with(keys::ENCRYPTED_SUFFIX) {
        // WAL is encrypted as the base backup it follows (one [encryption] section for both);
        // the configuration's scheme serves when the base backup was not encrypted.
        let record = record
            .cloned()
            .or_else(|| req.encryption.record())
            .ok_or_else(|| PitrRestoreError::NoKeys(key.to_string()))?;
        let mut out = Vec::new();
        req.encryption
            .decrypt(&record, std::io::Cursor::new(stored.to_vec()))
            .map_err(|source| PitrRestoreError::Decrypt {
                key: key.to_string(),
                source,
            })?
            .read_to_end(&mut out)
            .await
            .map_err(|e| PitrRestoreError::Damaged {
                key: key.to_string(),
                reason: e.to_string(),
            })?;
        out
    } else {
        stored.to_vec()
    };
    let mut raw = compress::decompress(
        std::io::Cursor::new(compressed.clone()),
        Compression::Zstd { level: 3 },
    );
    let mut hash = Sha256Hex::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = raw
            .read(&mut buf)
            .await
            .map_err(|e| PitrRestoreError::Damaged {
                key: key.to_string(),
                reason: format!("does not decompress: {e}"),
            })?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let got = hash.finish();
    if got != sha256 {
        return Err(PitrRestoreError::Damaged {
            key: key.to_string(),
            reason: format!("its content has sha256 {got}, its name says {sha256}"),
        });
    }
    // WAL holds table data and password hashes: readable by its owner only.
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .and_then(|mut f| f.write_all(&compressed))
        .map_err(io_err(to))
}

/// Writes `recovery.signal` and the recovery settings (replay stays on the base backup's
/// `timeline`, the one whose segments are staged) into `postgresql.auto.conf` (read
/// last, so they win over the restored configuration).
fn configure_recovery(
    data_dir: &Path,
    wal_dir: &Path,
    target: Target,
    timeline: u32,
) -> Result<(), PitrRestoreError> {
    let signal = data_dir.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(io_err(&signal))?;
    // restore_command runs in the data directory: a path relative to it keeps working when
    // both directories are mounted elsewhere (a volume in another container).
    let wal_ref = relative_to(data_dir, wal_dir);
    let mut settings = format!(
        "\n# pgsidecar pitr restore, {}\nrestore_command = 'zstd -d -q -f -o \"%p\" \"{}/%f.zst\"'\nrecovery_target_timeline = '{timeline}'\n",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        wal_ref.display()
    );
    // Every target is written, empty when unused: a base backup of a restored cluster
    // carries the earlier restore's lines, and a stale target must not stop this one.
    settings.push_str(
        "recovery_target = ''\nrecovery_target_lsn = ''\nrecovery_target_name = ''\nrecovery_target_xid = ''\n",
    );
    settings.push_str(&format!(
        "recovery_target_time = '{}'\nrecovery_target_action = 'promote'\n",
        match target {
            Target::Time(t) => t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            Target::Latest => String::new(),
        }
    ));
    let auto = data_dir.join("postgresql.auto.conf");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&auto)
        .map_err(io_err(&auto))?;
    file.write_all(settings.as_bytes()).map_err(io_err(&auto))
}

/// The first character of `path` that restore_command cannot carry: quotes of the
/// configuration string or the shell, shell expansions, and `%` (PostgreSQL's placeholders).
fn unquotable(path: &str) -> Option<char> {
    path.chars()
        .find(|c| matches!(c, '\'' | '"' | '$' | '`' | '\\' | '%') || c.is_control())
}

/// `wal_dir` as seen from `data_dir` when they share a parent (`../data.wal`), else as given.
fn relative_to(data_dir: &Path, wal_dir: &Path) -> PathBuf {
    match (data_dir.parent(), wal_dir.parent(), wal_dir.file_name()) {
        (Some(a), Some(b), Some(name)) if a == b => Path::new("..").join(name),
        _ => wal_dir.to_path_buf(),
    }
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), PitrRestoreError> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(io_err(dir))?;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        if entry.file_type().map_err(io_err(&path))?.is_dir() {
            chown_tree(&path, uid, gid)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_as_operators_write_them() {
        assert_eq!("latest".parse::<Target>().unwrap(), Target::Latest);
        let t: DateTime<Utc> = "2026-11-30T13:05:00Z".parse().unwrap();
        assert_eq!(
            "2026-11-30 14:05:00+01".parse::<Target>().unwrap(),
            Target::Time(t)
        );
        assert_eq!(
            "2026-11-30T13:05:00Z".parse::<Target>().unwrap(),
            Target::Time(t)
        );
        let err = "yesterday".parse::<Target>().unwrap_err();
        assert!(err.contains("`yesterday`"), "{err}");
        // A time without its offset is ambiguous and refused.
        assert!("2026-11-30 14:05:00".parse::<Target>().is_err());
    }

    #[test]
    fn paths_restore_command_cannot_quote_are_refused() {
        assert_eq!(unquotable("../data.wal"), None);
        assert_eq!(unquotable("/var/lib/postgresql/restore 1/data.wal"), None);
        for bad in ["/a'b", "/a\"b", "/a$b", "/a`b", "/a%b", "/a\\b", "/a\nb"] {
            assert!(unquotable(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn wal_dir_is_referred_to_relative_to_the_data_dir() {
        assert_eq!(
            relative_to(Path::new("/v/data"), Path::new("/v/data.wal")),
            PathBuf::from("../data.wal")
        );
        assert_eq!(
            relative_to(Path::new("/v/data"), Path::new("/w/wal")),
            PathBuf::from("/w/wal")
        );
    }

    #[test]
    fn the_restored_timeline_ends_where_a_newer_one_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let size = wal::SegmentSize::try_from(1u64 << 20).unwrap();
        let put = |name: &str, bytes: &[u8]| {
            std::fs::write(
                dir.path().join(format!("{name}.zst")),
                zstd::encode_all(bytes, 3).unwrap(),
            )
            .unwrap()
        };
        for segno in 1..=3u64 {
            put(&size.file_name(1, segno), &vec![0xAB; 1 << 20]);
        }
        // Timeline 2 left timeline 1 inside segment 2; timeline 3 (from 2) names 1 too.
        put(
            "00000002.history",
            b"1\t0/00280000\tbefore 2026-11-30 14:05:00+00\n",
        );
        put("00000003.history", b"1\t0/00280000\tbefore 2026-11-30 14:05:00+00\n2\t0/00390000\tno recovery target specified\n");
        let fork = cut_at_fork(dir.path(), 1, size).unwrap().unwrap();
        assert_eq!(
            (fork.child, fork.at.to_string(), fork.removed),
            (2, "0/280000".to_string(), 1)
        );
        assert_eq!(fork.last.as_deref(), Some(size.file_name(1, 2).as_str()));
        let read = |segno: u64| {
            zstd::decode_all(
                std::fs::File::open(dir.path().join(format!("{}.zst", size.file_name(1, segno))))
                    .unwrap(),
            )
            .unwrap()
        };
        assert!(read(1).iter().all(|b| *b == 0xAB));
        let cut = read(2);
        assert_eq!(cut.len(), 1 << 20);
        assert!(cut[..0x80000].iter().all(|b| *b == 0xAB));
        assert!(cut[0x80000..].iter().all(|b| *b == 0));
        assert!(!dir
            .path()
            .join(format!("{}.zst", size.file_name(1, 3)))
            .exists());
        // Timeline 2 was itself left by 3: its own restore is cut there; timeline 3 is not.
        assert!(cut_at_fork(dir.path(), 3, size).unwrap().is_none());
    }
}

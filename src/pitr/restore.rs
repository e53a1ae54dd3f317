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
    /// Said to the operator before the server is started.
    pub warnings: Vec<String>,
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
    let owner = req.owner.map(parse_owner).transpose()?;
    let data_dir = req.data_dir.to_path_buf();
    let wal_dir = req.wal_dir.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
        name.push(".wal");
        data_dir.with_file_name(name)
    });
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
    let result = lay_out(req, &archive, base, &reach, &data_dir, &wal_dir, owner).await;
    if result.is_err() {
        // What this command wrote goes; directories it found empty stay (empty).
        for dir in [&data_dir, &wal_dir] {
            if created.contains(dir) {
                let _ = std::fs::remove_dir_all(dir);
            } else if let Ok(entries) = std::fs::read_dir(dir) {
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
    archive: &Archive,
    base: &BaseBackup,
    reach: &Reach,
    data_dir: &Path,
    wal_dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Prepared, PitrRestoreError> {
    extract_base(req, base, data_dir).await?;
    let size = base.wal_segment_size;
    let tli = base.timeline;
    let mut staged = 0;
    let mut last = String::new();
    let mut last_stored_at = None;
    if let Some(to) = reach.complete_to {
        for segno in reach.first..=to {
            let stored = &archive.segments[&(tli, segno)];
            let name = size.file_name(tli, segno);
            stage(
                req,
                base.encryption.as_ref(),
                &stored.key,
                &stored.sha256,
                &wal_dir.join(format!("{name}.zst")),
            )
            .await?;
            staged += 1;
            last = name;
        }
    }
    last_stored_at = reach.last_stored_at.or(last_stored_at);
    if let Some((segno, at, stored)) = &reach.partial {
        // Replay reads a partial segment under the complete segment's name: it is the last
        // one, and recovery ends where its valid WAL ends.
        let name = size.file_name(tli, *segno);
        stage(
            req,
            base.encryption.as_ref(),
            &stored.key,
            &stored.sha256,
            &wal_dir.join(format!("{name}.zst")),
        )
        .await?;
        staged += 1;
        last = format!("{name} (partial)");
        last_stored_at = Some(*at);
    }
    // Only the history of the timelines this replay can be on; a branch made later (a test
    // restore archived under the same cluster) must not draw recovery away.
    for (t, stored) in archive.histories.range(..=tli) {
        stage(
            req,
            base.encryption.as_ref(),
            &stored.key,
            &stored.sha256,
            &wal_dir.join(format!("{}.zst", wal::history_name(*t))),
        )
        .await?;
        staged += 1;
    }
    configure_recovery(data_dir, wal_dir, req.target)?;
    if let Some((uid, gid)) = owner {
        for dir in [data_dir, wal_dir] {
            chown_tree(dir, uid, gid)?;
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(data_dir))?;
    Ok(Prepared {
        base: base.clone(),
        data_dir: data_dir.to_path_buf(),
        wal_dir: wal_dir.to_path_buf(),
        staged,
        last,
        last_stored_at,
        warnings: Vec::new(),
    })
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
    let unpacked = tokio::task::spawn_blocking(move || {
        let bridge = tokio_util::io::SyncIoBridge::new(raw);
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
        reason: format!("cannot unpack it: {e}"),
    })?;
    if got.is_none() {
        return Err(PitrRestoreError::Damaged {
            key: base.key.clone(),
            reason: "the stream ended before it was read to the end".into(),
        });
    }
    Ok(())
}

/// Downloads the WAL file `key` into `to` (zstd, as `restore_command` reads it), checking that
/// it decompresses to content with `sha256`.
async fn stage(
    req: &Request<'_>,
    record: Option<&crate::codec::encryption::EncryptionRecord>,
    key: &str,
    sha256: &str,
    to: &Path,
) -> Result<(), PitrRestoreError> {
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
    std::fs::write(to, &compressed).map_err(io_err(to))
}

/// Writes `recovery.signal` and the recovery settings into `postgresql.auto.conf` (read
/// last, so they win over the restored configuration).
fn configure_recovery(
    data_dir: &Path,
    wal_dir: &Path,
    target: Target,
) -> Result<(), PitrRestoreError> {
    // `current`: the staged WAL is the base backup's timeline only.
    let signal = data_dir.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(io_err(&signal))?;
    // restore_command runs in the data directory: a path relative to it keeps working when
    // both directories are mounted elsewhere (a volume in another container).
    let wal_ref = relative_to(data_dir, wal_dir);
    let mut settings = format!(
        "\n# pgsidecar pitr restore, {}\nrestore_command = 'zstd -d -q -f -o \"%p\" \"{}/%f.zst\"'\nrecovery_target_timeline = 'current'\n",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        wal_ref.display()
    );
    if let Target::Time(t) = target {
        settings.push_str(&format!(
            "recovery_target_time = '{}'\nrecovery_target_action = 'promote'\n",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00")
        ));
    }
    let auto = data_dir.join("postgresql.auto.conf");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&auto)
        .map_err(io_err(&auto))?;
    file.write_all(settings.as_bytes()).map_err(io_err(&auto))
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
}

//! Continuous WAL archiving: `pg_receivewal` (without a slot) writes into a small spool,
//! every completed segment is stored (zstd, optional age, named by its sha256), and only then
//! is the sidecar's slot advanced past it. The segment being written is stored as a partial
//! every `pitr.partial_interval` while it changes.
//!
//! Invariants:
//! - the slot's `restart_lsn` never passes WAL that is not stored, so a lost spool, a killed
//!   container or a crashed receiver cannot open a gap: every (re)start empties the spool and
//!   seeds it so streaming resumes at the slot's position;
//! - a segment whose name is stored with other contents stops archiving (and is reported):
//!   the archive is never overwritten and never mixed with another history;
//! - a lost slot (WAL removed by `max_slot_wal_keep_size`) is reported, recreated, and a base
//!   backup is taken at once, since older backups can only reach the last stored segment.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::archive::Archive;
use super::server::{ClusterFacts, Primary, ServerError};
use super::wal::{self, Lsn};
use super::PitrConfig;
use crate::codec::encryption::Encryption;
use crate::codec::hash::Sha256Hex;
use crate::codec::{Codec, Compression};
use crate::keys;
use crate::source::process::{Child, LogAs};
use crate::source::{dump, tools, ToolsConfig};
use crate::storage::{Storage, StorageError};

/// Errors that stop one archiving session (the daemon starts another after a pause, except
/// for [`ArchiveError::is_permanent`] ones, which need the operator).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Tool(#[from] tools::ToolError),
    #[error("cannot start pg_receivewal: {0}")]
    Spawn(std::io::Error),
    #[error("pg_receivewal {0}")]
    Receiver(String),
    #[error("spool `{}`: {source}", .path.display())]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storing `{key}` failed: {source}")]
    Storage {
        key: String,
        #[source]
        source: StorageError,
    },
    #[error("segment {name} is already stored with other contents (`{stored}`); archiving stopped so the archive is not mixed with another history. Check that no other cluster with system identifier {system_identifier} archives here")]
    Conflict {
        name: String,
        stored: String,
        system_identifier: u64,
    },
    #[error("max_slot_wal_keep_size is -1, so the slot `{slot}` could keep WAL on the primary without bound while storage is unreachable. Set a bound on the server (ALTER SYSTEM SET max_slot_wal_keep_size = '20GB'; SELECT pg_reload_conf();) or accept the risk with pitr.allow_unbounded_wal = true")]
    UnboundedWal { slot: String },
    #[error("the slot `{slot}` lost WAL the archive had not stored (wal_status lost): the archive has a gap after {after}. A new slot is created and a base backup taken at once; restores to times before the gap use the older base backups. Raise max_slot_wal_keep_size, or make storage reachable sooner, to avoid this")]
    SlotLost { slot: String, after: String },
    #[error("{0} received segments waited in the spool (storage is slower than the server writes WAL); the receiver was stopped and starts again at the slot's position, the server keeps the rest")]
    SpoolFull(usize),
    #[error("the slot `{slot}` is missing although this cluster's archive runs to {after} (dropped by hand, or by `pitr disable` while archiving was on): WAL written since may not be stored. A new slot is created and a base backup taken at once")]
    SlotMissing { slot: String, after: String },
    #[error("received segment {got}, expected {expected}; restarting the receiver at the slot's position")]
    OutOfOrder { got: String, expected: String },
}

impl ArchiveError {
    pub fn is_permanent(&self) -> bool {
        match self {
            ArchiveError::Conflict { .. } | ArchiveError::UnboundedWal { .. } => true,
            ArchiveError::Server(e) => e.is_permanent(),
            ArchiveError::Tool(_) => true,
            _ => false,
        }
    }
}

/// What archiving needs from the composition root.
pub struct Archiver<'a> {
    pub config: &'a PitrConfig,
    pub tools: &'a ToolsConfig,
    pub storage: &'a Storage,
    pub encryption: &'a Encryption,
}

/// What one archiving session reports while it runs.
pub trait Observer: Send + Sync {
    /// A segment (or history file) was stored and the slot moved to `slot`.
    fn stored(&self, name: &str, slot: Lsn);
    /// The segment being written was stored as a partial.
    fn partial_stored(&self);
    /// The periodic look at the server: how far behind the archive is, and the slot.
    fn checked(&self, check: &Check);
    /// A problem the operator must hear about; archiving goes on (or restarts).
    fn alert(&self, error: &ArchiveError);
    /// Asks for a base backup now (a new slot, or none stored for this cluster).
    fn base_backup_needed(&self, why: &str);
    /// The newest base backup of this cluster in storage finished at `at`.
    fn base_backup_seen(&self, at: chrono::DateTime<Utc>);
}

/// What the periodic check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Age in seconds of the oldest WAL the server wrote that is not stored (0: all is).
    pub lag_secs: i64,
    /// Bytes of WAL the slot holds on the server.
    pub retained_bytes: Option<u64>,
    /// `max_slot_wal_keep_size` in bytes, `None` without a bound.
    pub keep_bytes: Option<u64>,
}

/// Server positions seen at the periodic checks, oldest first, and the archive lag they give.
#[derive(Debug, Default)]
pub struct Positions(std::collections::VecDeque<(chrono::DateTime<Utc>, Lsn)>);

/// Positions kept: two hours of checks at [`SLOT_CHECK`].
const POSITIONS_KEPT: usize = 720;

impl Positions {
    /// Records that the server had written up to `lsn` at `at`.
    pub fn push(&mut self, at: chrono::DateTime<Utc>, lsn: Lsn) {
        self.0.push_back((at, lsn));
        while self.0.len() > POSITIONS_KEPT {
            self.0.pop_front();
        }
    }

    /// Seconds since the oldest check whose position is not stored yet: WAL written before
    /// that check waits for storage (0 when every position seen is stored). It errs low by at
    /// most the time between checks, never high: a busy server whose WAL is stored as it
    /// comes shows no lag.
    pub fn lag(&mut self, stored: Lsn, now: chrono::DateTime<Utc>) -> i64 {
        while self.0.front().is_some_and(|(_, lsn)| *lsn <= stored) {
            self.0.pop_front();
        }
        self.0
            .front()
            .map_or(0, |(at, _)| (now - *at).num_seconds().max(0))
    }
}

/// How often the spool is looked at.
const POLL: Duration = Duration::from_millis(500);
/// Received segments the spool may hold before the receiver is stopped: the sidecar's disk
/// holds a bounded amount, the primary (through the slot) the rest.
const SPOOL_MAX_SEGMENTS: usize = 16;
/// How often the slot's state is read (lost, retained bytes).
const SLOT_CHECK: Duration = Duration::from_secs(10);

impl Archiver<'_> {
    /// Connects, makes sure the slot exists, and returns the cluster's facts and prefix.
    pub async fn prepare(
        &self,
        observer: &dyn Observer,
    ) -> Result<(Primary, ClusterFacts, String, Lsn, bool), ArchiveError> {
        let primary = Primary::connect(&self.config.database).await?;
        let facts = primary.facts().await?;
        let cluster = keys::pitr_cluster_prefix(&self.config.prefix, facts.system_identifier);
        let slot = &self.config.slot;
        let mut created = false;
        let restart = match primary.slot(slot).await? {
            Some(state) if !state.is_lost() => state.restart_lsn.expect("not lost"),
            existing => {
                if facts.max_slot_wal_keep.is_none() && !self.config.allow_unbounded_wal {
                    return Err(ArchiveError::UnboundedWal { slot: slot.clone() });
                }
                let archive = Archive::load(self.storage, &cluster, Some(facts.segment_size))
                    .await
                    .map_err(|source| ArchiveError::Storage {
                        key: cluster.clone(),
                        source,
                    })?;
                let last_stored = archive
                    .segments
                    .iter()
                    .next_back()
                    .map(|((t, s), _)| facts.segment_size.file_name(*t, *s));
                // A cluster restored from this archive (or promoted) runs on a timeline the
                // archive has no WAL of: it never had the slot, and nothing was lost.
                let newer_timeline = archive
                    .segments
                    .keys()
                    .map(|(t, _)| *t)
                    .max()
                    .is_some_and(|t| facts.timeline > t);
                match (&existing, last_stored) {
                    (None, Some(_)) if newer_timeline => tracing::info!(
                        timeline = facts.timeline,
                        "the cluster runs on a timeline new to the archive (restored or promoted): archiving it from here"
                    ),
                    (Some(_), after) => {
                        observer.alert(&ArchiveError::SlotLost {
                            slot: slot.clone(),
                            after: after.unwrap_or_else(|| "(nothing stored)".into()),
                        });
                        primary.drop_slot(slot).await?;
                    }
                    // Dropped by hand (or `pitr disable`) while this cluster has an archive:
                    // the WAL since its last segment may be gone.
                    (None, Some(after)) => observer.alert(&ArchiveError::SlotMissing {
                        slot: slot.clone(),
                        after,
                    }),
                    (None, None) => {}
                }
                let at = primary.create_slot(slot).await?;
                tracing::info!(slot = %slot, at = %at, "created the replication slot");
                observer.base_backup_needed("the replication slot was (re)created");
                created = true;
                at
            }
        };
        Ok((primary, facts, cluster, restart, created))
    }

    /// Archives until `cancel` fires or an error stops this session.
    pub async fn run(
        &self,
        observer: &dyn Observer,
        progress: &mut Progress,
        cancel: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let (primary, facts, cluster, restart, created) = self.prepare(observer).await?;
        let size = facts.segment_size;
        let archive = Archive::load(self.storage, &cluster, Some(size))
            .await
            .map_err(|source| ArchiveError::Storage {
                key: cluster.clone(),
                source,
            })?;
        if let Some(newest) = archive.base_backups.iter().map(|b| b.finished_at).max() {
            observer.base_backup_seen(newest);
        }
        if !created
            && archive
                .base_backups
                .iter()
                .all(|b| b.timeline != facts.timeline)
        {
            observer.base_backup_needed("no base backup of this cluster's timeline is stored");
        }
        for key in &archive.superseded {
            let _ = self.storage.delete(key).await;
        }
        let spool = &self.config.spool;
        reset_spool(spool)?;
        let mut expected = size.segment_of(restart);
        let seed = spool.join(format!(
            "{}.partial",
            size.file_name(facts.timeline, expected)
        ));
        std::fs::File::create(&seed).map_err(spool_err(&seed))?;

        let tool = tools::for_server("pg_receivewal", &self.tools.bin_dirs, facts.major).await?;
        let mut cmd =
            dump::client_command(&tool, &self.config.database, &self.config.database.dbname);
        cmd.arg("-D")
            .arg(spool)
            .args(["--no-loop", "--no-password", "--status-interval=10"])
            // TCP keepalives, so a server that vanished without closing is noticed.
            .arg(format!(
                "--dbname={}",
                dump::conninfo(&self.config.database.dbname)
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let receiver = Child::spawn(&mut cmd, LogAs::Wal).map_err(ArchiveError::Spawn)?;
        // Dropping it kills pg_receivewal (see [`Child`]).
        let mut receiving = Some(Box::pin(receiver.wait()));
        tracing::info!(slot = %self.config.slot, from = %size.file_name(facts.timeline, expected), "archiving WAL");

        let mut session = Session {
            archiver: self,
            cluster: &cluster,
            facts: &facts,
            archive,
            last_partial: None,
            progress,
        };
        session.progress.stored = session.progress.stored.max(restart);
        let mut next_partial = Instant::now() + self.config.partial_interval;
        let mut next_slot_check = Instant::now() + SLOT_CHECK;
        let mut next_heartbeat = self.config.heartbeat.map(|h| Instant::now() + h);
        loop {
            // Complete segments first, in order: the slot moves only over a stored prefix.
            // A receiver far ahead of storage is stopped rather than fill the sidecar's disk;
            // what it wrote is stored first, then the next session starts at the slot.
            let completed = session.completed()?;
            let mut waiting = completed.len();
            for (name, path) in completed {
                if waiting > SPOOL_MAX_SEGMENTS {
                    receiving = None;
                }
                let (_, segno) = size
                    .parse_name(&name)
                    .map_err(|e| ArchiveError::Receiver(e.to_string()))?;
                if segno != expected {
                    return Err(ArchiveError::OutOfOrder {
                        got: name,
                        expected: size.file_name(facts.timeline, expected),
                    });
                }
                session.store_segment(&name, &path, cancel).await?;
                expected += 1;
                let to = size.start_of(expected);
                session.progress.stored = session.progress.stored.max(to);
                primary.advance_slot(&self.config.slot, to).await?;
                std::fs::remove_file(&path).map_err(spool_err(&path))?;
                observer.stored(&name, to);
                waiting = session.completed()?.len();
            }
            if receiving.is_none() {
                return Err(ArchiveError::SpoolFull(waiting.max(SPOOL_MAX_SEGMENTS + 1)));
            }
            session.store_histories(cancel).await?;
            let now = Instant::now();
            if now >= next_partial {
                if session.store_partial(expected, cancel).await? {
                    observer.partial_stored();
                }
                next_partial = now + self.config.partial_interval;
            }
            if now >= next_slot_check {
                let state = match primary.slot(&self.config.slot).await? {
                    Some(s) if !s.is_lost() => s,
                    _ => {
                        return Err(ArchiveError::SlotLost {
                            slot: self.config.slot.clone(),
                            after: size.file_name(facts.timeline, expected.saturating_sub(1)),
                        })
                    }
                };
                let at = Utc::now();
                let current = primary.current_lsn().await?;
                let progress = &mut session.progress;
                progress.positions.push(at, current);
                observer.checked(&Check {
                    lag_secs: progress.positions.lag(progress.stored, at),
                    retained_bytes: state.retained_bytes,
                    keep_bytes: facts.max_slot_wal_keep,
                });
                next_slot_check = now + SLOT_CHECK;
            }
            if let Some(at) = next_heartbeat.filter(|at| now >= *at) {
                if let Err(e) = primary.heartbeat().await {
                    tracing::warn!("{e}");
                }
                next_heartbeat = self.config.heartbeat.map(|h| at.max(now) + h);
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                r = async { receiving.as_mut().expect("checked by the guard").await }, if receiving.is_some() => {
                    // The server may be gone for good (the crash a restore is for): what the
                    // receiver got before it ended is stored now, complete segments first.
                    // The next session starts again at the slot either way.
                    for (name, path) in session.completed()? {
                        let (_, segno) = size
                            .parse_name(&name)
                            .map_err(|e| ArchiveError::Receiver(e.to_string()))?;
                        if segno != expected {
                            break;
                        }
                        session.store_segment(&name, &path, cancel).await?;
                        expected += 1;
                        // The server may not answer; the next session advances the slot.
                        let _ = primary.advance_slot(&self.config.slot, size.start_of(expected)).await;
                    }
                    match session.store_partial(expected, cancel).await {
                        Ok(true) => observer.partial_stored(),
                        Ok(false) => {}
                        Err(e) => tracing::warn!("cannot store the last partial segment: {e}"),
                    }
                    let why = match r {
                        Ok(lines) => format!("exited{}", crate::source::process::stderr_suffix(&lines)),
                        Err(f) => format!("{}{}", f.exit.sentence(), crate::source::process::stderr_suffix(&f.stderr)),
                    };
                    return Err(ArchiveError::Receiver(why));
                }
                _ = cancel.cancelled() => {
                    // One last partial, so a stop loses as little as possible.
                    if let Err(e) = session.store_partial(expected, &CancellationToken::new()).await {
                        tracing::warn!("cannot store the last partial segment: {e}");
                    }
                    return Ok(());
                }
            }
        }
    }
}

struct Session<'a> {
    archiver: &'a Archiver<'a>,
    cluster: &'a str,
    facts: &'a ClusterFacts,
    archive: Archive,
    /// The segment and sha256 of the last partial stored, and its key.
    last_partial: Option<(u64, String, String)>,
    /// What is stored and what the server wrote, kept across sessions.
    progress: &'a mut Progress,
}

/// How far the stored WAL reaches (complete segments, then the last partial's data), and the
/// server's positions at the checks: the archive lag, kept across archiving sessions so a
/// session that keeps failing shows a growing lag.
#[derive(Debug, Default)]
pub struct Progress {
    pub stored: Lsn,
    pub positions: Positions,
}

impl Session<'_> {
    /// Completed segment files in the spool, oldest first.
    fn completed(&self) -> Result<Vec<(String, PathBuf)>, ArchiveError> {
        let spool = &self.archiver.config.spool;
        let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(spool)
            .map_err(spool_err(spool))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                wal::is_segment_name(&name).then(|| (name, e.path()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn encrypted(&self) -> bool {
        self.archiver.encryption.scheme().is_some()
    }

    async fn store_segment(
        &mut self,
        name: &str,
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let size = self.facts.segment_size;
        let id = size
            .parse_name(name)
            .map_err(|e| ArchiveError::Receiver(e.to_string()))?;
        let (sha, _) = scan_file(path).await?;
        if let Some(stored) = self.archive.segments.get(&id) {
            if stored.sha256 == sha {
                return Ok(());
            }
            return Err(ArchiveError::Conflict {
                name: name.to_string(),
                stored: stored.key.clone(),
                system_identifier: self.facts.system_identifier,
            });
        }
        let key = keys::wal_segment_key(self.cluster, name, &sha, self.encrypted());
        self.upload(path, &key, cancel).await?;
        self.archive.segments.insert(
            id,
            super::archive::Stored {
                key: key.clone(),
                sha256: sha,
            },
        );
        // Its partial uploads are superseded by the complete segment.
        if let Some((_, stored)) = self.archive.partials.remove(&id) {
            let _ = self.archiver.storage.delete(&stored.key).await;
        }
        if let Some((segno, _, key)) = &self.last_partial {
            if *segno == id.1 {
                let _ = self.archiver.storage.delete(key).await;
                self.last_partial = None;
            }
        }
        tracing::debug!(key = %key, "stored WAL segment");
        Ok(())
    }

    async fn store_histories(&mut self, cancel: &CancellationToken) -> Result<(), ArchiveError> {
        let spool = self.archiver.config.spool.clone();
        let names: Vec<(u32, PathBuf)> = std::fs::read_dir(&spool)
            .map_err(spool_err(&spool))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some((wal::parse_history_name(&name)?, e.path()))
            })
            .collect();
        for (tli, path) in names {
            let (sha, _) = scan_file(&path).await?;
            if let Some(stored) = self.archive.histories.get(&tli) {
                if stored.sha256 != sha {
                    return Err(ArchiveError::Conflict {
                        name: wal::history_name(tli),
                        stored: stored.key.clone(),
                        system_identifier: self.facts.system_identifier,
                    });
                }
            } else {
                let key = keys::wal_history_key(self.cluster, tli, &sha, self.encrypted());
                self.upload(&path, &key, cancel).await?;
                self.archive
                    .histories
                    .insert(tli, super::archive::Stored { key, sha256: sha });
            }
        }
        Ok(())
    }

    /// Stores the segment being written when it changed since it was last stored; returns
    /// whether it did.
    async fn store_partial(
        &mut self,
        segno: u64,
        cancel: &CancellationToken,
    ) -> Result<bool, ArchiveError> {
        let name = self
            .facts
            .segment_size
            .file_name(self.facts.timeline, segno);
        let spool = &self.archiver.config.spool;
        let path = spool.join(format!("{name}.partial"));
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > 0 => {}
            _ => return Ok(false),
        }
        // pg_receivewal keeps writing the file, and renames it when the segment is complete:
        // store a copy, so the key's sha256 is the stored content's; a file renamed away
        // meanwhile is stored as a complete segment next.
        let copy = spool.join(format!(".{name}.snapshot"));
        match std::fs::copy(&path, &copy) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(spool_err(&copy)(e)),
        }
        let result = async {
            let (sha, data_end) = scan_file(&copy).await?;
            let reaches = Lsn(self.facts.segment_size.start_of(segno).0 + data_end);
            let before = self.progress.stored;
            self.progress.stored = before.max(reaches);
            if self
                .last_partial
                .as_ref()
                .is_some_and(|(s, h, _)| *s == segno && *h == sha)
            {
                return Ok(false);
            }
            let key =
                keys::wal_partial_key(self.cluster, &name, Utc::now(), &sha, self.encrypted());
            if let Err(e) = self.upload(&copy, &key, cancel).await {
                // Not stored after all.
                self.progress.stored = before;
                return Err(e);
            }
            tracing::debug!(key = %key, "stored the partial segment");
            if let Some((_, _, old)) = self.last_partial.replace((segno, sha, key)) {
                let _ = self.archiver.storage.delete(&old).await;
            }
            Ok(true)
        }
        .await;
        let _ = std::fs::remove_file(&copy);
        result
    }

    async fn upload(
        &self,
        path: &Path,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let file = tokio::fs::File::open(path).await.map_err(spool_err(path))?;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let codec = Codec {
            compression: Compression::Zstd {
                level: crate::codec::DEFAULT_ZSTD_LEVEL,
            },
            encryption: self.archiver.encryption,
        };
        let mut body = codec.encode(file);
        match self
            .archiver
            .storage
            .put_stream(key, &mut body, len, cancel)
            .await
        {
            // The key holds the content's sha256: the same key is the same WAL.
            Ok(_) | Err(StorageError::AlreadyExists { .. }) => Ok(()),
            Err(source) => Err(ArchiveError::Storage {
                key: key.to_string(),
                source,
            }),
        }
    }
}

fn spool_err(path: &Path) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Spool {
        path: path.to_path_buf(),
        source,
    }
}

/// Empties the spool (or creates it): what is in it may be older than the slot's position,
/// and pg_receivewal would resume from it. Only WAL files are removed (the directory may be
/// a volume's mount point).
fn reset_spool(spool: &Path) -> Result<(), ArchiveError> {
    std::fs::create_dir_all(spool).map_err(spool_err(spool))?;
    for entry in std::fs::read_dir(spool).map_err(spool_err(spool))? {
        let entry = entry.map_err(spool_err(spool))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.get(..24).is_some_and(wal::is_segment_name)
            || wal::parse_history_name(&name).is_some()
            || name.ends_with(".snapshot");
        if ours {
            std::fs::remove_file(entry.path()).map_err(spool_err(&entry.path()))?;
        }
    }
    Ok(())
}

/// sha256 of a file's content, hex, and where its data ends (the offset after its last
/// non-zero byte: pg_receivewal pads a segment being written with zeros). Read on a blocking
/// thread: a segment may be 1 GB.
pub async fn scan_file(path: &Path) -> Result<(String, u64), ArchiveError> {
    let owned = path.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
        use std::io::Read;
        let mut file = std::fs::File::open(&owned)?;
        let mut hash = Sha256Hex::default();
        let mut buf = vec![0u8; 1 << 20];
        let (mut offset, mut data_end) = (0u64, 0u64);
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            if let Some(last) = buf[..n].iter().rposition(|b| *b != 0) {
                data_end = offset + last as u64 + 1;
            }
            offset += n as u64;
        }
        Ok((hash.finish(), data_end))
    })
    .await
    .expect("hashing does not panic");
    hashed.map_err(spool_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_check_whose_position_is_not_stored() {
        let t = |s: i64| -> chrono::DateTime<Utc> {
            "2026-11-30T12:00:00Z"
                .parse::<chrono::DateTime<Utc>>()
                .unwrap()
                + chrono::TimeDelta::seconds(s)
        };
        let mut p = Positions::default();
        assert_eq!(p.lag(Lsn(0), t(0)), 0);
        p.push(t(0), Lsn(100));
        p.push(t(10), Lsn(200));
        p.push(t(20), Lsn(300));
        // Stored up to 250: the position seen at 20 s waits.
        assert_eq!(p.lag(Lsn(250), t(25)), 5);
        // All stored: no lag, and the checks are forgotten.
        assert_eq!(p.lag(Lsn(300), t(25)), 0);
        // Nothing any check saw is stored: the oldest check's age.
        let mut q = Positions::default();
        q.push(t(0), Lsn(100));
        q.push(t(10), Lsn(200));
        assert_eq!(q.lag(Lsn(50), t(30)), 30);
        // A busy server stored as it writes: only the check just made is not stored yet.
        let mut busy = Positions::default();
        busy.push(t(0), Lsn(100));
        assert_eq!(busy.lag(Lsn(100), t(9)), 0);
        busy.push(t(10), Lsn(200));
        assert_eq!(busy.lag(Lsn(190), t(10)), 0);
        // An idle server (the position does not move) has no lag once stored.
        let mut idle = Positions::default();
        for s in 0..5 {
            idle.push(t(s * 10), Lsn(500));
        }
        assert_eq!(idle.lag(Lsn(500), t(60)), 0);
    }
}

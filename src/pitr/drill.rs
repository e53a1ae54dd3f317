//! Point-in-time restore drill: proves that the archive restores, the way a lost server would
//! need it. A moment is chosen (the end of the archive, or a random time in a recoverable
//! window), restored into a scratch directory, a PostgreSQL server of the archive's major is
//! started on it with no TCP listener, `pitr verify`'s checks run against it, the time to a
//! checked server (RTO) and the commits it could not bring back (RPO) are measured, and the
//! server and the directory are removed.
//!
//! Invariants: a drill never touches the live server or the archive (it only reads); the
//! scratch server listens only on a Unix socket in the drill's own 0700 directory, with its
//! own `pg_hba.conf`; nothing of a drill outlives it, and what an interrupted drill left
//! (a SIGKILL) is removed by the next one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::archive::Archive;
use super::check::Finding;
use super::restore::{self, PitrRestoreError, Target};
use super::settings::DrillChoice;
use super::verify;
use super::PitrConfig;
use crate::codec::encryption::Encryption;
use crate::source::{tools, DatabaseConfig, SslMode, ToolsConfig};
use crate::storage::Storage;

/// Why a drill failed.
#[derive(Debug, thiserror::Error)]
pub enum PitrDrillError {
    #[error(transparent)]
    Restore(#[from] PitrRestoreError),
    #[error("the archive has no recoverable window to drill: {0}")]
    NoWindow(String),
    #[error("`{}`: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no PostgreSQL {major} server (`postgres`) to replay the archive with: {cause}. Install the server package of that major beside the client tools (postgresql-{major} on Debian; in the image, build it with `--build-arg PG_SERVER=true`, README: PITR drills in the container)")]
    NoServer { major: u32, cause: String },
    #[error("PostgreSQL refuses to run as root: give pitr.drill.dir (`{}`) to another user, e.g. `chown postgres {}`", .0.display(), .0.display())]
    Root(PathBuf),
    #[error("the restored server did not pass its checks: {failed}; its log ends with: {log}")]
    Checks { failed: String, log: String },
    #[error("the drill took longer than pitr.drill.timeout ({})", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("stopped by a signal; the drill's directory was removed")]
    Cancelled,
}

/// What a passing drill found.
#[derive(Debug, Clone)]
pub struct DrillReport {
    /// The moment restored.
    pub target: Target,
    /// Key of the base backup restored from.
    pub base_key: String,
    /// WAL files staged.
    pub staged: usize,
    /// From the start of the restore to a promoted, checked server: what a real restore of
    /// this archive takes on this machine.
    pub rto: Duration,
    /// The last commit the restore brought back.
    pub last_replayed_commit: Option<DateTime<Utc>>,
    /// How much before the target (the drill's start, for the newest) that commit was: the
    /// writes a restore to that moment loses. On a quiet database it includes the time
    /// nothing was written (`pitr.heartbeat` bounds it).
    pub rpo: Option<Duration>,
    pub findings: Vec<Finding>,
}

impl DrillReport {
    /// One line for logs and notifications.
    pub fn summary(&self) -> String {
        format!(
            "restored {} from {} and {} WAL file(s), promoted and checked in {:.1}s (RTO); last commit back {}{}",
            match self.target {
                Target::Latest => "the newest archived WAL".to_string(),
                Target::Time(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            },
            self.base_key.rsplit('/').next().unwrap_or(&self.base_key),
            self.staged,
            self.rto.as_secs_f64(),
            self.last_replayed_commit
                .map_or("none (no commit after the base backup)".to_string(), |t| {
                    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
                }),
            self.rpo
                .map_or(String::new(), |d| format!(", {:.1}s before the target (RPO)", d.as_secs_f64())),
        )
    }
}

/// What a drill runs with.
pub struct Drill<'a> {
    pub config: &'a PitrConfig,
    pub tools: &'a ToolsConfig,
    pub storage: &'a Storage,
    pub encryption: &'a Encryption,
}

/// Socket port of the scratch server: only its own directory holds the socket.
const PORT: u16 = 5432;

impl Drill<'_> {
    /// Runs one drill of the cluster the sidecar archives (the only one, or the live
    /// server's when the archive holds several), restoring `target`.
    pub async fn run(
        &self,
        choice: Choice,
        cancel: &CancellationToken,
    ) -> Result<DrillReport, PitrDrillError> {
        let root = &self.config.drill.dir;
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        remove_leftovers(root);
        let scratch = root.join(format!("drill-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ")));
        let limit = self.config.drill.timeout;
        let outcome = tokio::select! {
            r = tokio::time::timeout(limit, self.run_in(&scratch, choice, cancel)) => {
                r.unwrap_or(Err(PitrDrillError::TimedOut(limit)))
            }
            _ = cancel.cancelled() => Err(PitrDrillError::Cancelled),
        };
        if let Err(PitrDrillError::TimedOut(_) | PitrDrillError::Cancelled) = &outcome {
            tracing::warn!(
                "the drill's server log ends with: {}",
                log_tail(&scratch.join("server.log"))
            );
        }
        // The server (kill_on_drop) is gone with the future; its files go now.
        if let Err(e) = std::fs::remove_dir_all(&scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %scratch.display(), "the drill's directory is left: {e}");
            }
        }
        outcome
    }

    async fn run_in(
        &self,
        scratch: &Path,
        choice: Choice,
        cancel: &CancellationToken,
    ) -> Result<DrillReport, PitrDrillError> {
        let began = Utc::now();
        let id = self.cluster().await?;
        let target = match choice {
            Choice::Target(t) => t,
            Choice::Config => match self.config.drill.target {
                DrillChoice::Newest => Target::Latest,
                DrillChoice::Random => self.random_time(id).await?,
            },
        };
        std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
        set_mode(scratch, 0o700)?;
        // PostgreSQL will not run as root: as root, the drill's files and server belong to
        // whoever owns pitr.drill.dir.
        let run_as = if nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::MetadataExt;
            let root = &self.config.drill.dir;
            let meta = std::fs::metadata(root).map_err(io_err(root))?;
            if meta.uid() == 0 {
                return Err(PitrDrillError::Root(root.clone()));
            }
            // The owner's own group, not the directory's: a server in group root meets
            // directories closed to that group (/root's 0701, where tools may live).
            let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
                .ok()
                .flatten()
                .map_or(meta.gid(), |u| u.gid.as_raw());
            std::os::unix::fs::chown(scratch, Some(meta.uid()), Some(gid))
                .map_err(io_err(scratch))?;
            Some((meta.uid(), gid))
        } else {
            None
        };
        let owner = run_as.map(|(u, g)| format!("{u}:{g}"));
        let started = Instant::now();
        let data = scratch.join("data");
        let prepared = restore::prepare(&restore::Request {
            storage: self.storage,
            pitr_prefix: &self.config.prefix,
            system_identifier: Some(id),
            target,
            data_dir: &data,
            wal_dir: None,
            encryption: self.encryption,
            owner: owner.as_deref(),
            cancel,
        })
        .await?;
        let mut server = self
            .start_server(scratch, &data, prepared.base.server_major, run_as)
            .await?;
        let db = &self.config.database;
        let local = DatabaseConfig {
            host: scratch.display().to_string(),
            port: PORT,
            sslmode: SslMode::Disable,
            sslrootcert: None,
            tls: crate::source::tls::Connector::new(SslMode::Disable, None)
                .expect("no certificate to read"),
            ..db.clone()
        };
        let expect = verify::Expectation {
            storage: self.storage,
            pitr_prefix: &self.config.prefix,
            target,
            query: self.config.drill.query.as_deref(),
            // Inside the drill's limit, so a server that never answers is reported with why.
            wait: (self.config.drill.timeout * 9 / 10).saturating_sub(started.elapsed()),
        };
        // A server that stops (FATAL in replay) ends the wait at once.
        let verified = tokio::select! {
            v = verify::verify(&local, &expect) => v,
            status = server.wait() => {
                return Err(PitrDrillError::Checks {
                    failed: format!(
                        "the server exited ({}) before it promoted",
                        status.map_or_else(|e| e.to_string(), |s| s.to_string())
                    ),
                    log: log_tail(&scratch.join("server.log")),
                });
            }
        };
        let rto = started.elapsed();
        stop_server(&mut server).await;
        if !verified.passed() {
            return Err(PitrDrillError::Checks {
                failed: verified
                    .findings
                    .iter()
                    .filter(|f| !f.ok)
                    .map(|f| f.what.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
                log: log_tail(&scratch.join("server.log")),
            });
        }
        let until = match target {
            Target::Latest => began,
            Target::Time(t) => t,
        };
        Ok(DrillReport {
            target,
            base_key: prepared.base.key.clone(),
            staged: prepared.staged,
            rto,
            last_replayed_commit: verified.last_replayed_commit,
            rpo: verified
                .last_replayed_commit
                .and_then(|at| (until - at).to_std().ok()),
            findings: verified.findings,
        })
    }

    /// The live server's cluster when it answers, else the archive's only one.
    async fn cluster(&self) -> Result<u64, PitrDrillError> {
        let live = match super::server::Primary::connect(&self.config.database).await {
            Ok(p) => p.facts().await.ok().map(|f| f.system_identifier),
            Err(_) => None,
        };
        Ok(restore::choose_cluster(self.storage, &self.config.prefix, live).await?)
    }

    /// A time drawn uniformly from the recoverable windows, each ending early enough that
    /// a later commit (a heartbeat, or the next write) lets recovery stop there.
    async fn random_time(&self, id: u64) -> Result<Target, PitrDrillError> {
        let cluster = crate::keys::pitr_cluster_prefix(&self.config.prefix, id);
        let archive = Archive::load(self.storage, &cluster, None)
            .await
            .map_err(|source| PitrRestoreError::Storage {
                key: cluster.clone(),
                source,
            })?;
        let margin = self
            .config
            .heartbeat
            .unwrap_or(Duration::from_secs(300))
            .max(self.config.partial_interval)
            * 2;
        let windows = windows(&archive, TimeDelta::from_std(margin).unwrap_or_default());
        pick(&windows, rand::random::<f64>())
            .map(Target::Time)
            .ok_or_else(|| {
                PitrDrillError::NoWindow(format!(
                    "no base backup's window is longer than {} (the margin that leaves a later commit to stop at)",
                    humantime::format_duration(margin)
                ))
            })
    }

    async fn start_server(
        &self,
        scratch: &Path,
        data: &Path,
        major: u32,
        run_as: Option<(u32, u32)>,
    ) -> Result<tokio::process::Child, PitrDrillError> {
        let no_server = |cause: String| PitrDrillError::NoServer { major, cause };
        let found = tools::for_server("postgres", &self.tools.bin_dirs, major)
            .await
            .map_err(|e| no_server(e.to_string()))?;
        if found.major != major {
            return Err(no_server(format!(
                "only PostgreSQL {} was found ({})",
                found.major,
                found.path.display()
            )));
        }
        // Only the sidecar's own user reaches the socket (0700 directory): trust is enough,
        // and the restored pg_hba.conf (peer rules, addresses) is not the drill's concern.
        let hba = scratch.join("pg_hba.conf");
        std::fs::write(&hba, "local all all trust\n").map_err(io_err(&hba))?;
        // A cluster whose configuration lives outside its data directory (Debian's
        // /etc/postgresql) has none in the backup; the server needs the file to exist.
        let conf = data.join("postgresql.conf");
        if !conf.exists() {
            std::fs::write(&conf, "").map_err(io_err(&conf))?;
        }
        let log = scratch.join("server.log");
        let log_file = std::fs::File::create(&log).map_err(io_err(&log))?;
        if let Some((uid, gid)) = run_as {
            for p in [&hba, &conf, &log] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(io_err(p))?;
            }
        }
        let mut cmd = tokio::process::Command::new(&found.path);
        cmd.arg("-D")
            .arg(data)
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", scratch.display()))
            .arg("-c")
            .arg(format!("port={PORT}"))
            .arg("-c")
            .arg(format!("hba_file={}", hba.display()))
            .args(["-c", "archive_mode=off", "-c", "logging_collector=off"])
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().map_err(io_err(&log))?)
            .stderr(log_file)
            .kill_on_drop(true);
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.spawn().map_err(io_err(&found.path))
    }
}

/// What a drill restores: the configured choice, or a target given by hand.
#[derive(Debug, Clone, Copy)]
pub enum Choice {
    Config,
    Target(Target),
}

/// Each restorable base backup's window (pure): from its end to its last stored WAL, less
/// `margin` at the end.
pub fn windows(archive: &Archive, margin: TimeDelta) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    archive
        .base_backups
        .iter()
        .filter_map(|b| {
            let reach = archive.reach(b).ok()?;
            let end = reach.last_stored_at? - margin;
            (end > b.finished_at).then_some((b.finished_at, end))
        })
        .collect()
}

/// The point at `fraction` (0..1) of the windows laid end to end (pure).
pub fn pick(windows: &[(DateTime<Utc>, DateTime<Utc>)], fraction: f64) -> Option<DateTime<Utc>> {
    let total: i64 = windows
        .iter()
        .map(|(a, b)| (*b - *a).num_milliseconds())
        .sum();
    if total <= 0 {
        return None;
    }
    let mut left = (total as f64 * fraction.clamp(0.0, 1.0)) as i64;
    for (a, b) in windows {
        let len = (*b - *a).num_milliseconds();
        if left <= len {
            return Some(*a + TimeDelta::milliseconds(left));
        }
        left -= len;
    }
    windows.last().map(|w| w.1)
}

/// Asks for a fast shutdown, and kills the server when it does not stop within 30 s.
async fn stop_server(server: &mut tokio::process::Child) {
    if let Some(pid) = server.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    if tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .is_err()
    {
        let _ = server.kill().await;
    }
}

/// Removes what earlier drills left (killed before their cleanup): only `drill-*` entries.
fn remove_leftovers(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("drill-") {
            tracing::warn!(dir = %e.path().display(), "removing what an interrupted drill left");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn set_mode(path: &Path, mode: u32) -> Result<(), PitrDrillError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> PitrDrillError + '_ {
    move |source| PitrDrillError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_random_time_falls_inside_a_window_never_between_them() {
        let w = [
            (at("2026-11-30T10:00:00Z"), at("2026-11-30T10:10:00Z")),
            (at("2026-11-30T12:00:00Z"), at("2026-11-30T12:30:00Z")),
        ];
        assert_eq!(pick(&w, 0.0), Some(at("2026-11-30T10:00:00Z")));
        // A quarter of 40 minutes is 10: the end of the first window.
        assert_eq!(pick(&w, 0.25), Some(at("2026-11-30T10:10:00Z")));
        assert_eq!(pick(&w, 0.5), Some(at("2026-11-30T12:10:00Z")));
        assert_eq!(pick(&w, 1.0), Some(at("2026-11-30T12:30:00Z")));
        for i in 0..=100 {
            let t = pick(&w, f64::from(i) / 100.0).unwrap();
            assert!(w.iter().any(|(a, b)| *a <= t && t <= *b), "{t}");
        }
        assert_eq!(pick(&[], 0.5), None);
    }
}

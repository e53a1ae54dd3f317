//! Health: the status board a process keeps, and the status file it shares it through.
//!
//! Invariants: the daemon and a command run by hand (`pgsidecar backup`, `drill`) record
//! outcomes in the same file without losing each other's: every write happens under an
//! exclusive lock on `<status file>.lock` and starts from what the file holds; the daemon
//! takes a newer outcome recorded by a command into its own board (so `/healthz` and
//! `/metrics` see it at the next heartbeat), and a command changes only the databases it ran.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::status::{DbStatus, Status, StatusError};
use crate::schedule::Clock;

/// Who owns the board, which decides how it is written.
enum Owner {
    /// The daemon: the whole board, with its pid and heartbeat.
    Daemon,
    /// A command run by hand: only the databases it touched, `(job, database)`.
    Command(Mutex<Vec<(String, String)>>),
}

/// A process's status, shared through the status file.
pub struct Board {
    status: Mutex<Status>,
    path: PathBuf,
    clock: Clock,
    owner: Owner,
}

impl Board {
    /// The daemon's board, starting from `status`.
    pub fn for_daemon(status: Status, path: PathBuf, clock: Clock) -> Board {
        Board {
            status: Mutex::new(status),
            path,
            clock,
            owner: Owner::Daemon,
        }
    }

    /// The board of a command run by hand: what the file holds now (an empty board with no
    /// live daemon when there is none), plus `jobs` so every job can be recorded.
    pub fn for_command(path: PathBuf, clock: Clock, jobs: &[(String, Option<String>)]) -> Board {
        let now = clock.now();
        let mut status = Status::read(&path).unwrap_or_else(|_| Status {
            pitr: None,
            pid: 0,
            started_at: now,
            heartbeat_at: now,
            jobs: Vec::new(),
        });
        status.ensure_jobs(jobs);
        Board {
            status: Mutex::new(status),
            path,
            clock,
            owner: Owner::Command(Mutex::default()),
        }
    }

    /// Changes the entry of `job`/`database` (created if missing).
    pub fn update_db(&self, job: &str, database: &str, change: impl FnOnce(&mut DbStatus)) {
        change(self.lock().db_mut(job, database));
        if let Owner::Command(touched) = &self.owner {
            let mut touched = touched.lock().expect("not poisoned");
            let key = (job.to_string(), database.to_string());
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
    }

    /// Like [`Board::update_db`], but the daemon records only databases its board lists: a
    /// drill of a `*` job may restore a database no longer backed up, which must not appear
    /// as one without a backup.
    pub fn update_listed_db(&self, job: &str, database: &str, change: impl FnOnce(&mut DbStatus)) {
        if matches!(self.owner, Owner::Daemon) {
            let mut status = self.lock();
            let listed = status
                .jobs
                .iter_mut()
                .filter(|j| j.name == job)
                .flat_map(|j| j.databases.iter_mut())
                .find(|d| d.database == database);
            if let Some(entry) = listed {
                change(entry);
            }
            return;
        }
        self.update_db(job, database, change);
    }

    /// Changes the board as a whole.
    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.lock());
    }

    /// A copy of the board as it is now.
    pub fn snapshot(&self) -> Status {
        self.lock().clone()
    }

    /// Where the board is saved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the board to the status file (logged, not returned: a status file that cannot
    /// be written must not fail a backup).
    pub fn save(&self) {
        if let Err(e) = self.try_save() {
            tracing::warn!("{e}");
        }
    }

    fn try_save(&self) -> Result<(), StatusError> {
        // A lock that cannot be taken (a lock file another user created) must not stop the
        // heartbeat: `health` would then call a live daemon dead.
        let _guard = FileLock::acquire(&self.path)
            .inspect_err(|e| tracing::debug!("writing the status file unlocked: {e}"))
            .ok();
        let on_disk = Status::read(&self.path).ok();
        let snapshot = match &self.owner {
            Owner::Daemon => {
                let mut board = self.lock();
                if let Some(on_disk) = &on_disk {
                    // Only what commands recorded since this daemon started: older records
                    // are a previous daemon's, and storage is the truth about successes.
                    let since = board.started_at;
                    board.adopt_newer_outcomes(on_disk, since);
                }
                board.heartbeat_at = self.clock.now();
                board.clone()
            }
            Owner::Command(touched) => {
                let board = self.lock();
                let mut out = on_disk.unwrap_or_else(|| board.clone());
                out.ensure_jobs(
                    &board
                        .jobs
                        .iter()
                        .map(|j| (j.name.clone(), j.schedule.clone()))
                        .collect::<Vec<_>>(),
                );
                for (job, db) in touched.lock().expect("not poisoned").iter() {
                    let mine = board
                        .jobs
                        .iter()
                        .filter(|j| &j.name == job)
                        .flat_map(|j| &j.databases)
                        .find(|d| &d.database == db)
                        .cloned()
                        .unwrap_or_default();
                    out.db_mut(job, db).adopt(&mine);
                }
                out
            }
        };
        snapshot.write(&self.path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().expect("not poisoned")
    }
}

/// An exclusive lock on `<path>.lock`, held while the status file is read and rewritten.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock, StatusError> {
        let lock_path = path.with_extension("lock");
        let err = |source| StatusError::Write {
            path: lock_path.clone(),
            source,
        };
        // flock needs no write access: an existing lock file is opened read-only, so one
        // created by another user (a command run as root) still serves.
        let file = std::fs::File::open(&lock_path)
            .or_else(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
            })
            .map_err(err)?;
        file.lock().map_err(err)?;
        Ok(FileLock(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_command_and_the_daemon_keep_each_others_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let clock = Clock::System;
        let jobs = [("prod".to_string(), Some("0 2 * * *".to_string()))];
        let mut status = Status {
            pitr: None,
            pid: 1,
            started_at: t("2026-01-01T00:00:00Z"),
            heartbeat_at: t("2026-01-01T00:00:00Z"),
            jobs: Vec::new(),
        };
        status.ensure_jobs(&jobs);
        let daemon = Board::for_daemon(status, path.clone(), clock);
        daemon.update_db("prod", "other", |_| {});
        daemon.update_db("prod", "app", |d| {
            d.last_success_at = Some(t("2026-01-01T02:00:00Z"));
            d.last_attempt_at = d.last_success_at;
            d.backups_total = 1;
        });
        daemon.save();

        // A backup by hand of another database, then of `app`, later than the daemon's.
        let command = Board::for_command(path.clone(), clock, &jobs);
        command.update_db("prod", "other", |d| {
            d.last_attempt_at = Some(t("2026-01-01T03:00:00Z"));
            d.last_error = Some("connection refused".into());
        });
        command.update_db("prod", "app", |d| {
            d.last_success_at = Some(t("2026-01-01T04:00:00Z"));
            d.last_attempt_at = d.last_success_at;
            d.last_key = Some("manual-key".into());
        });
        command.update_db("prod", "foreign", |d| {
            d.last_attempt_at = Some(t("2026-01-01T05:00:00Z"))
        });
        command.save();
        let file = Status::read(&path).unwrap();
        assert_eq!(file.pid, 1, "a command leaves the daemon's pid");
        assert!(file.last_attempt_failed("prod", "other"));

        // The daemon's next heartbeat takes the newer outcomes and keeps its counters.
        daemon.save();
        let board = daemon.snapshot();
        let app = board.jobs[0].databases.iter().find(|d| d.database == "app");
        let app = app.unwrap();
        assert_eq!(app.last_success_at, Some(t("2026-01-01T04:00:00Z")));
        assert_eq!(app.last_key.as_deref(), Some("manual-key"));
        assert_eq!(app.backups_total, 1);
        assert!(board.last_attempt_failed("prod", "other"));
        // A database the daemon does not back up is not brought into its board.
        assert!(!board.jobs[0]
            .databases
            .iter()
            .any(|d| d.database == "foreign"));
        assert!(Status::read(&path)
            .unwrap()
            .last_attempt_failed("prod", "other"));
    }
}

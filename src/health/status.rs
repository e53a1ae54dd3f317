//! Status: what the daemon knows about each job's backups, shared by the status file (read by
//! `pgsidecar health`, the container's HEALTHCHECK), `/healthz` and `/metrics`.
//!
//! Invariant: health reflects the age of the newest *successful* backup, never of the last
//! attempt, so a sidecar that keeps failing turns unhealthy even while it is busy retrying.

use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// How often the daemon rewrites the status file.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);
/// A status file older than this means the daemon is gone or hung.
const HEARTBEAT_LIMIT: TimeDelta = TimeDelta::seconds(90);

/// Errors reading the status file.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no status file at `{}` ({source}): is `pgsidecar run` running in this container?", .path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("status file `{}` is not valid: {cause}", .path.display())]
    Parse {
        path: std::path::PathBuf,
        cause: String,
    },
    #[error("cannot write status file `{}`: {source}", .path.display())]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The daemon's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub jobs: Vec<JobStatus>,
    /// WAL archiving, when `pitr.enabled`.
    #[serde(default)]
    pub pitr: Option<PitrStatus>,
}

/// WAL archiving for point-in-time recovery, as the daemon last saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PitrStatus {
    /// When the last WAL object (segment, partial segment) was stored.
    pub last_stored_at: Option<DateTime<Utc>>,
    /// The last complete segment stored.
    pub last_segment: Option<String>,
    /// How far behind the server the archive is: the age of the oldest WAL the server wrote
    /// that is not stored yet (0 when everything is), at the last check.
    pub lag_secs: Option<i64>,
    /// Alert and fail `health` above this archive lag (`pitr.max_lag`).
    pub max_lag_secs: i64,
    /// Bytes of WAL the slot holds on the server.
    pub slot_retained_bytes: Option<u64>,
    /// `max_slot_wal_keep_size` in bytes; `None` without a bound.
    pub slot_keep_bytes: Option<u64>,
    /// The slot is lost or missing (WAL the archive did not store may be gone).
    pub slot_lost: bool,
    /// When the newest base backup finished.
    pub last_base_backup_at: Option<DateTime<Utc>>,
    /// Oldest acceptable age of the newest base backup, in seconds (period plus grace).
    pub base_backup_max_age_secs: Option<i64>,
    pub receiver_restarts_total: u64,
    pub alerts_total: u64,
    pub last_error: Option<String>,
    /// A hole the periodic WAL check found in the newest base backup's chain: the segment
    /// missing, while WAL after it is stored.
    #[serde(default)]
    pub gap: Option<String>,
    /// The last point-in-time restore drill: when it ran, whether it passed, its RTO and RPO.
    #[serde(default)]
    pub last_drill_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_drill_passed: Option<bool>,
    #[serde(default)]
    pub last_drill_rto_secs: Option<f64>,
    #[serde(default)]
    pub last_drill_rpo_secs: Option<f64>,
    #[serde(default)]
    pub drill_failures_total: u64,
}

/// One job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    pub schedule: Option<String>,
    /// Oldest acceptable age of the newest success, in seconds (period plus grace).
    pub max_age_secs: Option<i64>,
    pub next_run: Option<DateTime<Utc>>,
    pub databases: Vec<DbStatus>,
}

/// One database of a job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DbStatus {
    pub database: String,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_duration_secs: Option<f64>,
    pub last_stored_bytes: Option<u64>,
    pub last_raw_bytes: Option<u64>,
    pub last_key: Option<String>,
    pub last_error: Option<String>,
    pub backups_total: u64,
    pub attempts_total: u64,
    pub failures_total: u64,
    pub skipped_total: u64,
    /// The last restore drill: when it ran, whether it passed, how long the restore took.
    #[serde(default)]
    pub last_drill_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_drill_passed: Option<bool>,
    #[serde(default)]
    pub last_drill_restore_secs: Option<f64>,
    #[serde(default)]
    pub drill_failures_total: u64,
    /// Backups deleted by prune since start.
    #[serde(default)]
    pub pruned_total: u64,
    /// Each destination's own record, by name (`primary` and the copies).
    #[serde(default)]
    pub destinations: std::collections::BTreeMap<String, DestinationStatus>,
    /// Size anomalies (and missing row counts) the newest successful backup recorded.
    #[serde(default)]
    pub last_anomalies: Vec<String>,
    /// The newest successful backups, oldest first, at most [`RECENT`]: what the status page
    /// draws.
    #[serde(default)]
    pub recent: Vec<RecentBackup>,
}

/// How many backups per database [`DbStatus::recent`] keeps.
pub const RECENT: usize = 30;

/// One successful backup, as the status page draws it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentBackup {
    pub started_at: DateTime<Utc>,
    pub stored_bytes: u64,
    pub duration_secs: f64,
    /// Whether it recorded a size anomaly.
    pub anomaly: bool,
}

impl DbStatus {
    /// Adds `b` to [`DbStatus::recent`] in time order (once), keeping the newest [`RECENT`].
    pub fn remember(&mut self, b: RecentBackup) {
        if self.recent.iter().any(|r| r.started_at == b.started_at) {
            return;
        }
        self.recent.push(b);
        self.recent.sort_by_key(|r| r.started_at);
        let excess = self.recent.len().saturating_sub(RECENT);
        self.recent.drain(..excess);
    }
}

/// One database in one destination.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DestinationStatus {
    /// Start of the newest backup this destination holds.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Runs that ended without a backup in this destination, since start.
    pub failures_total: u64,
}

impl DbStatus {
    /// Whether the newest backup attempt failed: it came after the newest success.
    fn attempt_failed(&self) -> bool {
        self.last_attempt_at.is_some() && self.last_attempt_at > self.last_success_at
    }

    /// Takes `other`'s last restore drill when it is newer than this entry's.
    fn adopt_drill(&mut self, other: &DbStatus) {
        if other.last_drill_at > self.last_drill_at {
            self.last_drill_at = other.last_drill_at;
            self.last_drill_passed = other.last_drill_passed;
            self.last_drill_restore_secs = other.last_drill_restore_secs;
        }
    }

    /// Takes `other`'s outcomes where they are newer than this entry's (the newest attempt
    /// with its error, the newest success with its facts, the newest drill); counters stay.
    pub fn adopt(&mut self, other: &DbStatus) {
        if other.last_attempt_at > self.last_attempt_at {
            self.last_attempt_at = other.last_attempt_at;
            self.last_error = other.last_error.clone();
        }
        if other.last_success_at > self.last_success_at {
            self.last_success_at = other.last_success_at;
            self.last_duration_secs = other.last_duration_secs;
            self.last_stored_bytes = other.last_stored_bytes;
            self.last_raw_bytes = other.last_raw_bytes;
            self.last_key = other.last_key.clone();
            self.last_anomalies = other.last_anomalies.clone();
        }
        for b in &other.recent {
            self.remember(b.clone());
        }
        self.adopt_drill(other);
        for (name, theirs) in &other.destinations {
            let ours = self.destinations.entry(name.clone()).or_default();
            if theirs.last_success_at > ours.last_success_at {
                ours.last_success_at = theirs.last_success_at;
            }
        }
    }
}

impl Status {
    /// Whether the newest backup attempt of `job`/`database` failed.
    pub fn last_attempt_failed(&self, job: &str, database: &str) -> bool {
        self.jobs
            .iter()
            .filter(|j| j.name == job)
            .flat_map(|j| &j.databases)
            .any(|d| d.database == database && d.attempt_failed())
    }

    /// Takes over from `previous`, an earlier daemon's status, what storage cannot tell a
    /// restarted one, for the databases this one backs up (those already listed):
    /// - each database's failed newest attempt: prune holds a database whose newest attempt
    ///   failed, and `health` says why, until a backup succeeds;
    /// - the last restore drill of each database, and the last PITR drill: without them the
    ///   drill metrics, and the alert on an overdue drill, would wait for the next drill.
    ///
    /// A database no longer backed up is not brought back. Counters start again at zero, as
    /// Prometheus expects of a restarted process.
    pub fn carry_over(&mut self, previous: &Status) {
        for old_job in &previous.jobs {
            let Some(job) = self.jobs.iter_mut().find(|j| j.name == old_job.name) else {
                continue;
            };
            for old in &old_job.databases {
                let Some(entry) = job
                    .databases
                    .iter_mut()
                    .find(|d| d.database == old.database)
                else {
                    continue;
                };
                if old.attempt_failed() && old.last_attempt_at > entry.last_success_at {
                    entry.last_attempt_at = old.last_attempt_at;
                    entry.last_error = old.last_error.clone();
                }
                entry.adopt_drill(old);
            }
        }
        if let (Some(ours), Some(old)) = (self.pitr.as_mut(), previous.pitr.as_ref()) {
            if old.last_drill_at > ours.last_drill_at {
                ours.last_drill_at = old.last_drill_at;
                ours.last_drill_passed = old.last_drill_passed;
                ours.last_drill_rto_secs = old.last_drill_rto_secs;
                ours.last_drill_rpo_secs = old.last_drill_rpo_secs;
            }
        }
    }

    /// Adds the jobs (name, schedule) this board does not list yet.
    pub fn ensure_jobs(&mut self, jobs: &[(String, Option<String>)]) {
        for (name, schedule) in jobs {
            if !self.jobs.iter().any(|j| &j.name == name) {
                self.jobs.push(JobStatus {
                    name: name.clone(),
                    schedule: schedule.clone(),
                    max_age_secs: None,
                    next_run: None,
                    databases: Vec::new(),
                });
            }
        }
    }

    /// Takes newer outcomes that another process (a backup or drill run by hand) recorded in
    /// `other` at or after `since`, for the jobs and databases this board lists; others are
    /// not brought in (the file may hold databases this daemon no longer backs up).
    pub fn adopt_newer_outcomes(&mut self, other: &Status, since: DateTime<Utc>) {
        for other_job in &other.jobs {
            let Some(job) = self.jobs.iter_mut().find(|j| j.name == other_job.name) else {
                continue;
            };
            for theirs in &other_job.databases {
                if let Some(mine) = job
                    .databases
                    .iter_mut()
                    .find(|d| d.database == theirs.database)
                {
                    let recent = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t >= since);
                    if recent(theirs.last_attempt_at) || recent(theirs.last_drill_at) {
                        mine.adopt(theirs);
                    }
                }
            }
        }
    }

    /// The database entry of `job`/`database`, created if missing.
    pub fn db_mut(&mut self, job: &str, database: &str) -> &mut DbStatus {
        let j = self
            .jobs
            .iter_mut()
            .find(|j| j.name == job)
            .expect("jobs are registered at start");
        if let Some(i) = j.databases.iter().position(|d| d.database == database) {
            return &mut j.databases[i];
        }
        j.databases.push(DbStatus {
            database: database.to_string(),
            ..DbStatus::default()
        });
        j.databases.last_mut().expect("just pushed")
    }

    /// Why the sidecar is unhealthy at `now`, or nothing when it is healthy (pure).
    pub fn problems(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut out = self.liveness_problems(now);
        out.extend(self.staleness_problems(now));
        out.extend(self.pitr_problems(now));
        out
    }

    /// WAL archiving that is behind, lost its slot, or lacks a recent base backup.
    pub fn pitr_problems(&self, now: DateTime<Utc>) -> Vec<String> {
        let Some(p) = &self.pitr else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if p.slot_lost {
            out.push(format!(
                "WAL archiving: the replication slot is lost or missing{}",
                error_suffix(&p.last_error)
            ));
        }
        if let Some(lag) = p.lag_secs.filter(|l| *l > p.max_lag_secs) {
            out.push(format!(
                "WAL archiving is {} behind the server, more than the allowed {}{}",
                human(TimeDelta::seconds(lag)),
                human(TimeDelta::seconds(p.max_lag_secs)),
                error_suffix(&p.last_error)
            ));
        }
        if let Some(gap) = &p.gap {
            out.push(format!(
                "WAL archiving: segment {gap} is missing from the archive, so the WAL stored after it cannot be replayed; a new base backup starts a restorable chain"
            ));
        }
        if let Some(max_age) = p.base_backup_max_age_secs {
            // Counted from the daemon's start when none was seen: a fresh archive gets one
            // base backup's time.
            let since = p.last_base_backup_at.unwrap_or(self.started_at);
            if (now - since).num_seconds() > max_age {
                out.push(format!(
                    "WAL archiving: the newest base backup is {} old, more than the allowed {}",
                    human(now - since),
                    human(TimeDelta::seconds(max_age))
                ));
            }
        }
        out
    }

    /// Whether the daemon has stopped updating its status (wedged, or gone).
    pub fn liveness_problems(&self, now: DateTime<Utc>) -> Vec<String> {
        let beat = now - self.heartbeat_at;
        if beat > HEARTBEAT_LIMIT {
            vec![format!(
                "the daemon has not updated its status for {}s (pid {})",
                beat.num_seconds(),
                self.pid
            )]
        } else {
            Vec::new()
        }
    }

    /// Databases whose newest successful backup is missing or older than its job allows.
    pub fn staleness_problems(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut out = Vec::new();
        for job in &self.jobs {
            let Some(max_age) = job.max_age_secs else {
                continue;
            };
            for db in &job.databases {
                match db.last_success_at {
                    None => out.push(format!(
                        "job `{}` database `{}` has no successful backup yet{}",
                        job.name,
                        db.database,
                        error_suffix(&db.last_error)
                    )),
                    Some(t) if (now - t).num_seconds() > max_age => out.push(format!(
                        "job `{}` database `{}`: newest successful backup is {} old, more than the allowed {}{}",
                        job.name,
                        db.database,
                        human(now - t),
                        human(TimeDelta::seconds(max_age)),
                        error_suffix(&db.last_error)
                    )),
                    Some(_) => {}
                }
            }
        }
        out
    }

    /// Writes the file atomically (temp name, then rename), readable by its owner only.
    pub fn write(&self, path: &Path) -> Result<(), StatusError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| StatusError::Write {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("status serializes"))
            .map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Reads the file written by the daemon.
    pub fn read(path: &Path) -> Result<Status, StatusError> {
        let bytes = std::fs::read(path).map_err(|source| StatusError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| StatusError::Parse {
            path: path.to_path_buf(),
            cause: e.to_string(),
        })
    }
}

fn error_suffix(e: &Option<String>) -> String {
    e.as_ref()
        .map(|e| format!(" (last error: {e})"))
        .unwrap_or_default()
}

/// A short duration such as `3h5m` or `2d4h`.
pub(crate) fn human(d: TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    if s >= 86400 {
        format!("{}d{}h", s / 86400, (s % 86400) / 3600)
    } else if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// Whether process `pid` is alive.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archiving_behind_or_slot_lost_or_no_base_backup_is_unhealthy() {
        let now: DateTime<Utc> = "2026-11-30T12:00:00Z".parse().unwrap();
        let mut s = status(Some("2026-11-30T11:00:00Z"));
        s.jobs[0].max_age_secs = None;
        s.started_at = now - TimeDelta::hours(1);
        let healthy = PitrStatus {
            lag_secs: Some(20),
            max_lag_secs: 300,
            last_base_backup_at: Some(now - TimeDelta::days(2)),
            base_backup_max_age_secs: Some(8 * 86400),
            ..Default::default()
        };
        s.pitr = Some(healthy.clone());
        assert!(
            s.pitr_problems(now).is_empty(),
            "{:?}",
            s.pitr_problems(now)
        );
        s.pitr = Some(PitrStatus {
            lag_secs: Some(900),
            last_error: Some("S3 unreachable".into()),
            ..healthy.clone()
        });
        let p = s.pitr_problems(now);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("15m0s behind") && p[0].contains("S3 unreachable"),
            "{p:?}"
        );
        s.pitr = Some(PitrStatus {
            slot_lost: true,
            last_base_backup_at: Some(now - TimeDelta::days(9)),
            ..healthy
        });
        let p = s.pitr_problems(now);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("slot is lost") && p[1].contains("9d0h old"),
            "{p:?}"
        );
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn status(last_success: Option<&str>) -> Status {
        Status {
            pitr: None,
            pid: 1,
            started_at: t("2026-11-20T00:00:00Z"),
            heartbeat_at: t("2026-11-25T10:00:00Z"),
            jobs: vec![JobStatus {
                name: "prod".into(),
                schedule: Some("0 2 * * *".into()),
                max_age_secs: Some(26 * 3600),
                next_run: None,
                databases: vec![DbStatus {
                    database: "app".into(),
                    last_success_at: last_success.map(t),
                    last_error: Some("S3 down".into()),
                    ..DbStatus::default()
                }],
            }],
        }
    }

    #[test]
    fn a_failed_newest_attempt_outlives_a_restart() {
        let mut previous = status(Some("2026-11-24T02:00:00Z"));
        previous.jobs[0].databases[0].last_attempt_at = Some(t("2026-11-25T02:00:00Z"));
        previous.jobs.push(JobStatus {
            name: "removed-since".into(),
            ..previous.jobs[0].clone()
        });
        previous.jobs[0].databases.push(DbStatus {
            database: "dropped-since".into(),
            last_attempt_at: Some(t("2026-11-25T02:00:00Z")),
            ..DbStatus::default()
        });
        // After a restart, seeded from storage: the newest success is still the one before.
        let restarted = || {
            let mut s = status(Some("2026-11-24T02:00:00Z"));
            s.jobs[0].databases[0].last_error = None;
            s
        };
        let mut fresh = restarted();
        fresh.carry_over(&previous);
        assert!(fresh.last_attempt_failed("prod", "app"));
        assert_eq!(
            fresh.jobs[0].databases[0].last_error.as_deref(),
            Some("S3 down")
        );
        assert_eq!(fresh.jobs.len(), 1, "jobs no longer configured stay out");
        assert_eq!(
            fresh.jobs[0].databases.len(),
            1,
            "databases no longer backed up stay out"
        );

        // A success after the failure (found in storage at start) ends the hold.
        let mut fresh = restarted();
        fresh.jobs[0].databases[0].last_success_at = Some(t("2026-11-25T03:00:00Z"));
        fresh.carry_over(&previous);
        assert!(!fresh.last_attempt_failed("prod", "app"));

        // Nothing is carried from a success.
        let mut fresh = restarted();
        fresh.carry_over(&status(Some("2026-11-24T02:00:00Z")));
        assert!(!fresh.last_attempt_failed("prod", "app"));
    }

    #[test]
    fn the_last_drills_outlive_a_restart() {
        let mut previous = status(Some("2026-11-24T02:00:00Z"));
        let app = &mut previous.jobs[0].databases[0];
        app.last_drill_at = Some(t("2026-11-24T04:00:00Z"));
        app.last_drill_passed = Some(false);
        app.last_drill_restore_secs = Some(12.5);
        app.drill_failures_total = 3;
        previous.pitr = Some(PitrStatus {
            last_drill_at: Some(t("2026-11-24T05:00:00Z")),
            last_drill_passed: Some(true),
            last_drill_rto_secs: Some(4.0),
            last_drill_rpo_secs: Some(1.5),
            ..PitrStatus::default()
        });
        let restarted = || {
            let mut s = status(Some("2026-11-24T02:00:00Z"));
            s.pitr = Some(PitrStatus::default());
            s
        };
        let mut fresh = restarted();
        fresh.carry_over(&previous);
        let app = &fresh.jobs[0].databases[0];
        assert_eq!(app.last_drill_at, Some(t("2026-11-24T04:00:00Z")));
        assert_eq!(app.last_drill_passed, Some(false));
        assert_eq!(app.last_drill_restore_secs, Some(12.5));
        assert_eq!(app.drill_failures_total, 0, "counters start again");
        let pitr = fresh.pitr.as_ref().unwrap();
        assert_eq!(pitr.last_drill_at, Some(t("2026-11-24T05:00:00Z")));
        assert_eq!(pitr.last_drill_passed, Some(true));
        assert_eq!(pitr.last_drill_rto_secs, Some(4.0));
        assert_eq!(pitr.last_drill_rpo_secs, Some(1.5));

        // A newer drill (adopted from a drill run by hand meanwhile) is kept.
        let mut fresh = restarted();
        fresh.jobs[0].databases[0].last_drill_at = Some(t("2026-11-25T04:00:00Z"));
        fresh.jobs[0].databases[0].last_drill_passed = Some(true);
        fresh.carry_over(&previous);
        assert_eq!(fresh.jobs[0].databases[0].last_drill_passed, Some(true));

        // With PITR turned off since, nothing of it comes back.
        let mut fresh = status(Some("2026-11-24T02:00:00Z"));
        fresh.carry_over(&previous);
        assert!(fresh.pitr.is_none());
    }

    #[test]
    fn healthy_until_the_newest_success_is_too_old() {
        let now = t("2026-11-25T10:00:30Z");
        assert!(status(Some("2026-11-25T02:00:00Z"))
            .problems(now)
            .is_empty());
        let p = status(Some("2026-11-23T02:00:00Z")).problems(now);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("2d8h old") && p[0].contains("S3 down"),
            "{p:?}"
        );
        assert!(status(None).problems(now)[0].contains("no successful backup yet"));
    }

    #[test]
    fn stale_heartbeat_is_unhealthy() {
        let p = status(Some("2026-11-25T02:00:00Z")).problems(t("2026-11-25T10:05:00Z"));
        assert!(p[0].contains("has not updated its status"), "{p:?}");
    }
}

//! Prune: deletes the backups a job's retention policy no longer keeps.
//!
//! Safety floor, in this order: a database is not pruned at all while its newest backup
//! attempt failed or while it has fewer complete backups than the policy keeps; the newest
//! complete backup is never deleted; only backups with a pgsidecar manifest under the job's
//! prefix are candidates (foreign objects are never touched); an object under object lock is
//! skipped and reported rather than hidden behind a delete marker; and a backup's objects are
//! deleted before its manifest, so a crash mid-prune leaves at worst objects without a
//! manifest (cleaned later), never a manifest pointing at nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Duration as TimeDelta, Utc};

use crate::catalog::{self, Entry};
use crate::retention::{self, Policy, Reason};
use crate::storage::{Storage, StorageError};

/// Objects without a manifest younger than this may belong to a backup finishing right now.
const LEFTOVER_AGE: TimeDelta = TimeDelta::days(1);

/// Errors pruning.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("job `{0}` has no retention policy: set [retention] (e.g. PGSIDECAR_RETENTION__KEEP_DAILY=7) to prune")]
    NoPolicy(String),
    #[error("cannot read the backups under `{prefix}`: {source}")]
    List {
        prefix: String,
        #[source]
        source: StorageError,
    },
}

/// What prune decided and did for one database.
#[derive(Debug, Default)]
pub struct DbReport {
    pub database: String,
    /// Kept backups (key, why), newest first.
    pub kept: Vec<(String, DateTime<Utc>, Vec<Reason>)>,
    /// Deleted (or, in a dry run, to be deleted) backups.
    pub deleted: Vec<(String, DateTime<Utc>)>,
    /// Backups the policy gave up but object lock protects, with the lock's end.
    pub locked: Vec<(String, DateTime<Utc>)>,
    /// Why nothing was pruned, when the safety floor held.
    pub held: Option<String>,
    /// Objects without a manifest (older than a day) removed.
    pub leftovers: Vec<String>,
    /// Unfinished multipart uploads aborted because they began longer ago than any backup
    /// attempt may run (at least a day); never in a dry run: an upload is not a backup.
    pub uploads_aborted: usize,
    /// Deletions that failed, with the error.
    pub errors: Vec<String>,
}

/// Prunes one database's backups (`entries`, any order). `newest_attempt_failed` comes from
/// the caller, which knows how the last backup went.
#[allow(clippy::too_many_arguments)]
pub async fn prune_database(
    storage: &Storage,
    database: &str,
    entries: &[Entry],
    policy: &Policy,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
    newest_attempt_failed: bool,
    dry_run: bool,
) -> DbReport {
    let mut report = DbReport {
        database: database.to_string(),
        ..DbReport::default()
    };
    let mut decisions = retention::select(entries, |e| e.manifest.started_at, policy, tz, now);
    protect_before_anomalies(storage, &mut decisions).await;
    if newest_attempt_failed {
        report.held = Some(
            "its newest backup attempt failed; nothing is pruned until a backup succeeds".into(),
        );
    } else if entries.len() < policy.minimum() {
        report.held = Some(format!(
            "only {} complete backup(s), fewer than the policy keeps ({}); nothing is pruned",
            entries.len(),
            policy.minimum()
        ));
    }
    for d in &decisions {
        let m = &d.item.manifest;
        if d.is_kept() || report.held.is_some() {
            report
                .kept
                .push((m.key.clone(), m.started_at, d.keep.clone()));
            continue;
        }
        match locked_until(storage, d.item).await {
            Ok(Some(until)) => {
                report.locked.push((m.key.clone(), until));
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                report.errors.push(format!("{}: {e}", m.key));
                continue;
            }
        }
        if !dry_run {
            if let Err(e) = delete_backup(storage, d.item).await {
                report.errors.push(e.to_string());
                continue;
            }
            tracing::info!(key = %m.key, "pruned");
        }
        report.deleted.push((m.key.clone(), m.started_at));
    }
    report
}

/// The latest object-lock end among a backup's objects: on a versioned bucket a DELETE of a
/// locked object only hides it behind a delete marker, so a backup with any locked object is
/// left whole.
async fn locked_until(
    storage: &Storage,
    entry: &Entry,
) -> Result<Option<DateTime<Utc>>, StorageError> {
    let m = &entry.manifest;
    let keys = m
        .objects
        .iter()
        .map(|p| p.key.as_str())
        .chain(m.globals.as_ref().map(|g| g.key.as_str()))
        .chain([entry.manifest_key.as_str()]);
    let mut latest = None;
    for key in keys {
        latest = latest.max(storage.locked_until(key).await?);
    }
    Ok(latest)
}

/// How many unacknowledged anomalies prune holds, newest first. Holding every one would let a
/// database whose every backup warns (a misjudged churn, a warning nobody reads) grow its
/// storage without bound; the newest ones are the evidence an operator still needs.
pub const MAX_HELD_ANOMALIES: usize = 3;

/// Keeps each backup whose size anomaly nobody acknowledged yet, and the backup just older
/// than it, which may be the last good copy: the newest [`MAX_HELD_ANOMALIES`] of them; older
/// ones are left to the policy. `decisions` are newest first.
async fn protect_before_anomalies(
    storage: &Storage,
    decisions: &mut [retention::Decision<'_, Entry>],
) {
    let mut held = 0;
    for i in 0..decisions.len() {
        let e = decisions[i].item;
        if e.manifest.anomalies.is_empty() || acknowledged(storage, e).await {
            continue;
        }
        if held == MAX_HELD_ANOMALIES {
            tracing::info!(key = %e.manifest.key, "not holding an older unacknowledged anomaly: at most {MAX_HELD_ANOMALIES} are held");
            continue;
        }
        held += 1;
        for (j, reason) in [(i, Reason::Anomaly), (i + 1, Reason::BeforeAnomaly)] {
            if let Some(d) = decisions.get_mut(j) {
                if !d.keep.contains(&reason) {
                    d.keep.push(reason);
                }
            }
        }
    }
}

async fn acknowledged(storage: &Storage, entry: &Entry) -> bool {
    storage
        .get_bytes(&crate::keys::ack_key(&entry.manifest_key))
        .await
        .is_ok()
}

/// Deletes one backup: its objects first, the manifest last.
async fn delete_backup(storage: &Storage, entry: &Entry) -> Result<(), StorageError> {
    let m = &entry.manifest;
    for piece in &m.objects {
        storage.delete(&piece.key).await?;
    }
    if let Some(g) = &m.globals {
        storage.delete(&g.key).await?;
    }
    storage.delete(&entry.manifest_key).await?;
    if !m.anomalies.is_empty() {
        // The acknowledgement belongs to the backup; a missing one is fine.
        let _ = storage
            .delete(&crate::keys::ack_key(&entry.manifest_key))
            .await;
    }
    Ok(())
}

/// Removes objects pgsidecar named that have had no manifest for more than a day (what a crash
/// between upload and manifest leaves). Returns the keys removed (or to remove, in a dry run).
async fn remove_leftovers(
    storage: &Storage,
    prefix: &str,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<String>, StorageError> {
    let objects = storage.list(prefix).await?;
    let mut removed = Vec::new();
    for o in &objects {
        let manifest_key = crate::keys::manifest_key(&o.key);
        let orphan = crate::keys::is_dump_key(&o.key)
            && crate::keys::started_from_key(&manifest_key).is_some()
            && !objects.iter().any(|m| m.key == manifest_key)
            && o.last_modified.is_some_and(|t| now - t > LEFTOVER_AGE);
        if orphan {
            if !dry_run {
                storage.delete(&o.key).await?;
            }
            removed.push(o.key.clone());
        }
    }
    Ok(removed)
}

/// What one job's prune covers, in the job's terms.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The job's name, for messages.
    pub job: &'a str,
    /// The key prefix of the job's backups.
    pub prefix: &'a str,
    /// What to keep; `None` is an error ([`PruneError::NoPolicy`]), never "delete all".
    pub policy: Option<&'a Policy>,
    /// The zone of the policy's calendar periods.
    pub timezone: chrono_tz::Tz,
    /// How long one backup attempt may run: uploads begun longer ago are abandoned.
    pub attempt_timeout: std::time::Duration,
}

/// Prunes every database of `job` found in storage (`only`: just that one), as of `now`.
pub async fn prune_job(
    storage: &Storage,
    job: Scope<'_>,
    only: Option<&str>,
    failed_last: &(dyn Fn(&str) -> bool + Sync),
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<Vec<DbReport>, PruneError> {
    let policy = job
        .policy
        .ok_or_else(|| PruneError::NoPolicy(job.job.to_string()))?;
    let tz = job.timezone;
    let catalog = catalog::load(storage, job.prefix, only)
        .await
        .map_err(|source| PruneError::List {
            prefix: job.prefix.to_string(),
            source,
        })?;
    for problem in &catalog.problems {
        tracing::warn!("{problem}");
    }
    let mut by_db: BTreeMap<&str, Vec<Entry>> = BTreeMap::new();
    for e in &catalog.entries {
        by_db
            .entry(e.manifest.database.as_str())
            .or_default()
            .push(e.clone());
    }
    let mut reports = Vec::new();
    for (db, entries) in by_db {
        let mut report = prune_database(
            storage,
            db,
            &entries,
            policy,
            tz,
            now,
            failed_last(db),
            dry_run,
        )
        .await;
        let prefix = crate::keys::database_prefix(job.prefix, db);
        match remove_leftovers(storage, &prefix, now, dry_run).await {
            Ok(keys) => report.leftovers = keys,
            Err(e) => report.errors.push(format!("{prefix}: {e}")),
        }
        // A backup running now (in this daemon or another) began its upload less than an
        // attempt's time limit ago; a day, when the limit is shorter.
        let running_at_most = crate::shutdown::longest_run(job.attempt_timeout).max(LEFTOVER_AGE);
        let cutoff = now.checked_sub_signed(running_at_most);
        if !dry_run && cutoff.is_some() {
            match storage.abort_stale_uploads(&prefix, cutoff).await {
                Ok(n) => report.uploads_aborted = n,
                Err(e) => report.errors.push(format!("{prefix}: {e}")),
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

/// The plan or outcome as `prune` prints it.
pub fn render(job: &str, reports: &[DbReport], dry_run: bool) -> String {
    let mut out = String::new();
    let (del, keep) = if dry_run {
        ("would delete", "keep")
    } else {
        ("deleted", "kept")
    };
    for r in reports {
        let _ = writeln!(
            out,
            "{} (job {job}): {} backup(s), {keep} {}, {del} {}{}",
            r.database,
            r.kept.len() + r.deleted.len() + r.locked.len(),
            r.kept.len(),
            r.deleted.len(),
            if r.locked.is_empty() {
                String::new()
            } else {
                format!(", {} locked", r.locked.len())
            }
        );
        if let Some(why) = &r.held {
            let _ = writeln!(out, "  held: {why}");
        }
        for (key, at, reasons) in &r.kept {
            let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "  {keep:<12} {}  {:<28} {key}",
                at.format("%Y-%m-%d %H:%M"),
                reasons.join(", ")
            );
        }
        for (key, at) in &r.deleted {
            let _ = writeln!(
                out,
                "  {del:<12} {}  {:<28} {key}",
                at.format("%Y-%m-%d %H:%M"),
                ""
            );
        }
        for (key, until) in &r.locked {
            let _ = writeln!(
                out,
                "  {:<12} {}  {:<28} {key}",
                "locked",
                until.format("%Y-%m-%d %H:%M"),
                "object lock until then"
            );
        }
        for key in &r.leftovers {
            let _ = writeln!(out, "  {del:<12} leftover without manifest: {key}");
        }
        if r.uploads_aborted > 0 {
            let _ = writeln!(
                out,
                "  aborted      {} unfinished upload(s) older than any running backup",
                r.uploads_aborted
            );
        }
        for e in &r.errors {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    if reports.is_empty() {
        let _ = writeln!(out, "job {job}: no backups");
    }
    out
}

#[cfg(test)]
mod tests {
    // Golden files in snapshots/: after a deliberate change, `INSTA_UPDATE=always cargo test --lib prune` rewrites them; review `git diff`.
    use super::*;
    use crate::catalog::tests::{at, entry};
    use crate::storage::local::LocalStorage;

    /// What `prune --dry-run` prints: a database pruned by the policy with an unacknowledged
    /// anomaly held, and one held back whole because its newest attempt failed.
    #[tokio::test]
    async fn golden_dry_run_plan() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::Local(LocalStorage::new(dir.path()));
        let now = at("2026-11-24T12:00:00Z");
        let daily = |database: &str, days: u32| -> Vec<Entry> {
            (0..days)
                .map(|d| {
                    let started = format!("2026-11-{:02}T02:00:00Z", 24 - d);
                    entry(database, &started, 1 << 20, 4 << 20, 5_000)
                })
                .collect()
        };
        let mut app = daily("app", 8);
        app[5].manifest.anomalies = vec!["table public.orders is empty (it had 500 rows)".into()];
        let billing = daily("billing", 3);
        let policy = Policy {
            keep_last: Some(2),
            keep_daily: Some(4),
            ..Policy::default()
        };
        let tz = chrono_tz::UTC;
        let reports = [
            prune_database(&storage, "app", &app, &policy, tz, now, false, true).await,
            prune_database(&storage, "billing", &billing, &policy, tz, now, true, true).await,
        ];
        insta::assert_snapshot!("dry_run_plan", render("prod", &reports, true));
    }

    /// Every kind of line, as a dry run and as the real run print them.
    #[test]
    fn golden_report_lines() {
        let key = |day: u32| format!("prod/app/2026-11-{day:02}T020000Z.dump.zst");
        // A dry run aborts no upload: an upload is not a backup.
        let report = |uploads_aborted| DbReport {
            database: "app".into(),
            kept: vec![
                (
                    key(24),
                    at("2026-11-24T02:00:00Z"),
                    vec![Reason::Newest, Reason::Last(2)],
                ),
                (
                    key(23),
                    at("2026-11-23T02:00:00Z"),
                    vec![Reason::Daily, Reason::Weekly],
                ),
            ],
            deleted: vec![(key(10), at("2026-11-10T02:00:00Z"))],
            locked: vec![(key(9), at("2026-12-09T02:00:00Z"))],
            held: None,
            leftovers: vec!["prod/app/2026-11-20T020000Z.dump.zst".into()],
            uploads_aborted,
            errors: vec![format!("{}: access denied", key(8))],
        };
        insta::assert_snapshot!("report_dry_run", render("prod", &[report(0)], true));
        insta::assert_snapshot!("report_done", render("prod", &[report(2)], false));
        insta::assert_snapshot!("no_backups", render("prod", &[], true));
    }
}

//! Daemon (`pgsidecar run`): fires each job and the restore drills on their schedules through
//! the pipeline, keeps the status board that `health`, `/healthz` and `/metrics` report, and
//! shuts down through one cancellation path.
//!
//! Invariants:
//! - a job never overlaps itself: its firings are handled one after another by one task, and a
//!   firing that passed while the previous run was still going is skipped and reported;
//! - on SIGTERM scheduling stops at once; a running backup gets `shutdown_grace` to finish and
//!   is then cancelled (pg_dump killed, upload aborted, no manifest); the daemon then exits 0;
//! - without any schedule, `run` takes one backup of every job and exits (one-shot mode);
//!   with a schedule it never exits on its own.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::status::{DbStatus, JobStatus, PitrStatus, Status};
use crate::health::Board;
use crate::notify::{Dispatcher, EventKind};
use crate::pipeline::{self, Job, Trigger};
use crate::schedule::{fire_on_schedule, Clock, Firings};
use crate::storage::Storage;

/// The daemon's state: the validated configuration and the pipeline's context.
struct Daemon {
    config: Config,
    ctx: pipeline::Context,
}

/// Runs until `shutdown` (with schedules) or after one backup of every job (without).
/// Returns whether every backup of a one-shot run succeeded.
pub async fn run(
    config: Config,
    storage: Storage,
    copies: Vec<crate::storage::Destination>,
    notify: Dispatcher,
    clock: Clock,
    shutdown: CancellationToken,
) -> bool {
    let status = initial_status(&config, clock.now());
    // Read before this daemon's first write replaces it; carried again once storage has told
    // which databases a `*` job has.
    let previous = Status::read(&config.health.status_file).ok();
    let board = Board::for_daemon(status, config.health.status_file.clone(), clock);
    if let Some(previous) = &previous {
        board.update(|s| s.carry_over(previous));
    }
    let abort = CancellationToken::new();
    let ctx = pipeline::Context::new(
        storage,
        copies,
        notify,
        board,
        clock,
        config.tools.clone(),
        shutdown.clone(),
        abort.clone(),
    );
    let d = Arc::new(Daemon { config, ctx });
    let grace = d.config.shutdown_grace;
    tokio::spawn(async move {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
        if !abort.is_cancelled() {
            tracing::warn!("shutdown grace of {grace:?} is over; cancelling the running backup");
            abort.cancel();
        }
    });
    // The status file, and its heartbeat, first: `health` must see a live daemon while
    // storage is read, however long that takes.
    d.ctx.board.save();
    let writer = tokio::spawn(heartbeat(d.clone()));
    seed_from_storage(&d).await;
    if let Some(previous) = &previous {
        d.ctx.board.update(|s| s.carry_over(previous));
    }
    // Now, not at the next heartbeat: `health` reads this file, and must tell what /healthz
    // and /metrics tell from the moment they serve.
    d.ctx.board.save();
    if let Some(addr) = d.config.http_listen {
        let d = d.clone();
        tokio::spawn(async move {
            let (stop, clock) = (d.ctx.shutdown.clone(), d.ctx.clock);
            let auth = d.config.http_auth.clone();
            let status = move || d.ctx.board.snapshot();
            if let Err(e) = crate::health::http::serve(addr, auth, status, clock, stop).await {
                tracing::error!(%addr, "cannot serve the status page, /healthz and /metrics: {e}");
            }
        });
    }

    let scheduled: Vec<usize> = (0..d.config.jobs.len())
        .filter(|&i| d.config.jobs[i].schedule.is_some())
        .collect();
    let all_ok = if scheduled.is_empty() && !d.config.pitr.enabled {
        tracing::info!("no schedule configured: taking one backup of each job, then exiting");
        let mut ok = true;
        for job in &d.config.jobs {
            ok &= succeeded(pipeline::run::run_job(&d.ctx, job, Trigger::Once).await);
        }
        ok
    } else {
        for (i, j) in d.config.jobs.iter().enumerate() {
            if !scheduled.contains(&i) {
                tracing::warn!(job = %j.name, "job has no schedule; `run` ignores it (use `backup --job {}`)", j.name);
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in scheduled {
            tasks.spawn(job_loop(d.clone(), i));
        }
        if d.config.drill_schedule.is_some() {
            tasks.spawn(drill_loop(d.clone()));
        }
        if d.config.pitr.enabled {
            let d = d.clone();
            tasks.spawn(async move {
                let service = crate::pitr::service::Service {
                    board: &d.ctx.board,
                    config: &d.config.pitr,
                    tools: &d.config.tools,
                    storage: &d.ctx.storage,
                    encryption: &d.config.encryption,
                    notify: &d.ctx.notify,
                };
                service.run(d.ctx.shutdown.clone()).await;
            });
        }
        while tasks.join_next().await.is_some() {}
        true
    };
    d.ctx.notify.flush(crate::notify::FLUSH_LIMIT).await;
    writer.abort();
    d.ctx.board.save();
    all_ok
}

/// Whether every database of a run succeeded (a skipped one counts: another sidecar did it).
fn succeeded(run: Result<Vec<pipeline::Outcome>, pipeline::backup::BackupError>) -> bool {
    run.is_ok_and(|outcomes| {
        outcomes.iter().all(|o| {
            o.prune_errors.is_empty()
                && matches!(
                    o.result,
                    Ok(_) | Err(pipeline::backup::BackupError::Busy { .. })
                )
        })
    })
}

/// The board a starting daemon begins with: every job, and every named database (one
/// without a success is unhealthy from the start).
fn initial_status(config: &Config, now: DateTime<Utc>) -> Status {
    let pitr = &config.pitr;
    Status {
        pitr: pitr.enabled.then(|| PitrStatus {
            max_lag_secs: pitr.max_lag.as_secs() as i64,
            base_backup_max_age_secs: Some(
                (pitr.base_backup_schedule.period(now)
                    + TimeDelta::from_std(
                        config.health.grace.unwrap_or(Duration::from_secs(86_400)),
                    )
                    .unwrap_or(TimeDelta::days(1)))
                .num_seconds(),
            ),
            ..Default::default()
        }),
        pid: std::process::id(),
        started_at: now,
        heartbeat_at: now,
        jobs: config
            .jobs
            .iter()
            .map(|j| JobStatus {
                name: j.name.clone(),
                schedule: j.schedule.as_ref().map(|s| s.expr().to_string()),
                max_age_secs: j
                    .schedule
                    .as_ref()
                    .map(|s| max_age(j, config, s, now).num_seconds()),
                next_run: None,
                databases: j
                    .databases
                    .iter()
                    .filter(|d| *d != "*")
                    .map(|d| DbStatus {
                        database: d.clone(),
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// How old the newest success may be before `health` fails: the schedule's period plus the
/// configured grace, or by default the whole retry window plus 30 minutes.
fn max_age(
    job: &Job,
    config: &Config,
    schedule: &crate::schedule::Schedule,
    now: DateTime<Utc>,
) -> TimeDelta {
    let grace = config.health.grace.unwrap_or_else(|| {
        job.retry
            .interval
            .saturating_mul(job.retry.attempts.saturating_sub(1))
            .saturating_add(Duration::from_secs(1800))
    });
    schedule.period(now) + TimeDelta::from_std(grace).unwrap_or(TimeDelta::days(1))
}

/// Fills each database's last success from the stored manifests, so a restarted sidecar
/// reports the real age of its backups.
async fn seed_from_storage(d: &Daemon) {
    for job in &d.config.jobs {
        let databases = match pipeline::backup::databases(job).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(job = %job.name, "cannot list the databases to back up: {e}");
                known_databases(d, job)
            }
        };
        for db in &databases {
            // With `destinations.policy = "all"` a backup counts once every destination holds
            // one: the last success is the oldest of their newest backups.
            let mut oldest_newest: Option<Option<DateTime<Utc>>> = None;
            if !job.copies.is_empty() {
                for place in job.placements() {
                    let Some(storage) = d.ctx.store(&place.destination) else {
                        continue;
                    };
                    match newest_backup(storage, &job.in_destination(&place), db).await {
                        Ok(newest) => {
                            d.ctx.board.update_db(&job.name, db, |entry| {
                                entry
                                    .destinations
                                    .entry(place.destination.clone())
                                    .or_default()
                                    .last_success_at = newest
                            });
                            oldest_newest = Some(oldest_newest.map_or(newest, |o| o.min(newest)));
                        }
                        Err(e) => {
                            tracing::warn!(job = %job.name, database = %db, destination = %place.destination, "cannot read existing backups: {e}")
                        }
                    }
                }
            }
            match newest_backup(&d.ctx.storage, job, db).await {
                Ok(newest) => {
                    let counted = match (job.delivery, oldest_newest) {
                        (crate::pipeline::destinations::Delivery::All, Some(all)) => all,
                        _ => newest,
                    };
                    d.ctx
                        .board
                        .update_db(&job.name, db, |entry| entry.last_success_at = counted);
                    seed_recent(d, job, db).await;
                }
                Err(e) => {
                    tracing::warn!(job = %job.name, database = %db, "cannot read existing backups: {e}")
                }
            }
        }
    }
}

/// The databases of `job` this daemon knows of: the configured ones, or with `*` those seen
/// so far.
fn known_databases(d: &Daemon, job: &Job) -> Vec<String> {
    if job.databases.iter().any(|name| name == "*") {
        d.ctx
            .board
            .snapshot()
            .jobs
            .iter()
            .filter(|j| j.name == job.name)
            .flat_map(|j| j.databases.iter().map(|db| db.database.clone()))
            .collect()
    } else {
        job.databases
            .iter()
            .filter(|name| !job.exclude.contains(name))
            .cloned()
            .collect()
    }
}

/// The start of the newest backup of `db`, read from manifest key names alone, so a bucket
/// with years of backups does not delay start-up.
async fn newest_backup(
    storage: &Storage,
    job: &Job,
    db: &str,
) -> Result<Option<DateTime<Utc>>, crate::storage::StorageError> {
    let prefix = crate::keys::database_prefix(&job.prefix, db);
    let objects = storage.list(&prefix).await?;
    Ok(objects
        .iter()
        .filter_map(|o| crate::keys::started_from_key(&o.key))
        .max())
}

/// Reads the manifests of the newest backups of `db` (at most [`RECENT`] of them) into the
/// status page's history. Best effort: a manifest that cannot be read is left out.
///
/// [`RECENT`]: crate::health::status::RECENT
async fn seed_recent(d: &Daemon, job: &Job, db: &str) {
    let prefix = crate::keys::database_prefix(&job.prefix, db);
    let Ok(objects) = d.ctx.storage.list(&prefix).await else {
        return;
    };
    let mut manifests: Vec<(DateTime<Utc>, &str)> = objects
        .iter()
        .filter(|o| o.key.ends_with(crate::keys::MANIFEST_SUFFIX))
        .filter_map(|o| Some((crate::keys::started_from_key(&o.key)?, o.key.as_str())))
        .collect();
    manifests.sort();
    let newest = &manifests[manifests
        .len()
        .saturating_sub(crate::health::status::RECENT)..];
    for (_, key) in newest {
        let Ok(bytes) = d.ctx.storage.get_bytes(key).await else {
            continue;
        };
        let Ok(m) = crate::catalog::manifest::Manifest::parse(key, &bytes) else {
            continue;
        };
        d.ctx.board.update_db(&job.name, db, |entry| {
            entry.remember(crate::health::status::RecentBackup {
                started_at: m.started_at,
                stored_bytes: m.stored_bytes,
                duration_secs: m.duration_ms as f64 / 1000.0,
                anomaly: !m.anomalies.is_empty(),
            });
            if Some(m.started_at) >= entry.last_success_at {
                entry.last_anomalies = m.anomalies.clone();
                entry.last_stored_bytes = Some(m.stored_bytes);
                entry.last_duration_secs = Some(m.duration_ms as f64 / 1000.0);
            }
        });
    }
}

async fn heartbeat(d: Arc<Daemon>) {
    loop {
        d.ctx.board.save();
        tokio::time::sleep(crate::health::status::HEARTBEAT).await;
    }
}

/// How long a starting daemon waits for its database server before a catch-up. A Swarm stack
/// starts the sidecar and the database together (Swarm has no `depends_on`); a catch-up that
/// failed on a server still starting would be tried again only `retry.interval` later.
const SERVER_WAIT: Duration = Duration::from_secs(300);

/// Returns once the job's server accepts a connection, refuses it for good (wrong password:
/// the backup attempt reports that), [`SERVER_WAIT`] has passed, or shutdown began.
async fn wait_for_server(ctx: &pipeline::Context, job: &Job) {
    let start = tokio::time::Instant::now();
    let mut waiting = false;
    loop {
        match crate::source::dump::connect(&job.database, &job.database.dbname).await {
            Ok(_) => break,
            Err(e) if e.is_permanent() || start.elapsed() >= SERVER_WAIT => break,
            Err(e) if !waiting => {
                tracing::info!(job = %job.name, "waiting up to {} for the database server: {e}", humantime::format_duration(SERVER_WAIT));
                waiting = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = ctx.shutdown.cancelled() => break,
        }
    }
    if waiting {
        tracing::info!(job = %job.name, waited_s = start.elapsed().as_secs(), "done waiting for the database server");
    }
}

/// Fires job `index` on its schedule until shutdown, catching up first when the last
/// firing's backup is missing.
async fn job_loop(d: Arc<Daemon>, index: usize) {
    let job = &d.config.jobs[index];
    let schedule = job.schedule.as_ref().expect("only scheduled jobs loop");
    let clock = d.ctx.clock;
    tracing::info!(job = %job.name, schedule = schedule.expr(), timezone = %job.timezone, "scheduled");
    if let Some(missed) = missed_firing(&d, job, schedule, clock.now()).filter(|_| job.catch_up) {
        tracing::info!(job = %job.name, missed = %missed, "the last scheduled backup is missing (was the sidecar down?); catching up now");
        wait_for_server(&d.ctx, job).await;
        let _ = pipeline::run::run_job(&d.ctx, job, Trigger::Scheduled(missed)).await;
    }
    let firings = JobFirings { d: &d, index };
    fire_on_schedule(schedule, &clock, &d.ctx.shutdown, clock.now(), &firings).await;
}

/// A backup job as the firing loop drives it.
struct JobFirings<'a> {
    d: &'a Daemon,
    index: usize,
}

impl Firings for JobFirings<'_> {
    async fn fire(&self, at: DateTime<Utc>) {
        let job = &self.d.config.jobs[self.index];
        let _ = pipeline::run::run_job(&self.d.ctx, job, Trigger::Scheduled(at)).await;
    }

    fn next(&self, at: DateTime<Utc>) {
        self.d
            .ctx
            .board
            .update(|s| s.jobs[self.index].next_run = Some(at));
    }

    fn skipped(&self, missed: &[DateTime<Utc>]) {
        let (ctx, job) = (&self.d.ctx, &self.d.config.jobs[self.index]);
        tracing::warn!(job = %job.name, count = missed.len(), "skipped firings while the previous run was still going");
        for db in &known_databases(self.d, job) {
            ctx.board.update_db(&job.name, db, |entry| {
                entry.skipped_total += missed.len() as u64
            });
            ctx.notify
                .dispatch(ctx.event(job, db, EventKind::Skipped, 0, |e| {
                    e.error = Some(format!(
                        "{} firing(s) passed while the previous run was still going (first at {})",
                        missed.len(),
                        missed[0].format("%Y-%m-%d %H:%M:%S UTC")
                    ));
                }));
        }
    }
}

/// Runs the restore drills on their schedule until shutdown.
async fn drill_loop(d: Arc<Daemon>) {
    let schedule = d
        .config
        .drill_schedule
        .as_ref()
        .expect("only a scheduled drill loops");
    tracing::info!(schedule = schedule.expr(), "restore drills scheduled");
    let clock = d.ctx.clock;
    fire_on_schedule(
        schedule,
        &clock,
        &d.ctx.shutdown,
        clock.now(),
        &DrillFirings(&d),
    )
    .await;
}

/// The restore drills as the firing loop drives them.
struct DrillFirings<'a>(&'a Daemon);

impl Firings for DrillFirings<'_> {
    async fn fire(&self, _at: DateTime<Utc>) {
        pipeline::drill::run_drills(&self.0.ctx, &self.0.config.jobs, None).await;
    }
}

/// The last firing, when some database of `job` has no success since it.
fn missed_firing(
    d: &Daemon,
    job: &Job,
    schedule: &crate::schedule::Schedule,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let board = d.ctx.board.snapshot();
    let successes: Vec<_> = known_databases(d, job)
        .iter()
        .map(|db| {
            board
                .jobs
                .iter()
                .filter(|j| j.name == job.name)
                .flat_map(|j| &j.databases)
                .find(|entry| &entry.database == db)
                .and_then(|entry| entry.last_success_at)
        })
        .collect();
    catch_up_for(schedule, now, &successes)
}

/// The firing to catch up on: the last one at or before `now`, when some database's newest
/// success (`successes`, one per database) is older, or no database is known yet.
fn catch_up_for(
    schedule: &crate::schedule::Schedule,
    now: DateTime<Utc>,
    successes: &[Option<DateTime<Utc>>],
) -> Option<DateTime<Utc>> {
    let last_fire = schedule.prev_at_or_before(now)?;
    (successes.is_empty() || successes.iter().any(|t| t.is_none_or(|t| t < last_fire)))
        .then_some(last_fire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_start_after_a_missed_firing_catches_up_on_that_firing() {
        let daily = Schedule::parse("0 2 * * *", "Europe/Berlin".parse().unwrap()).unwrap();
        let now = t("2026-06-10T09:00:00Z");
        let fired = t("2026-06-10T00:00:00Z");
        // One database backed up before the firing, one after: the older one is missing.
        let before = Some(t("2026-06-09T00:00:05Z"));
        let after = Some(t("2026-06-10T00:00:05Z"));
        assert_eq!(catch_up_for(&daily, now, &[after, before]), Some(fired));
        assert_eq!(catch_up_for(&daily, now, &[after, None]), Some(fired));
        assert_eq!(catch_up_for(&daily, now, &[after, after]), None);
        // Nothing known yet (a `*` job before its first listing): catch up.
        assert_eq!(catch_up_for(&daily, now, &[]), Some(fired));
    }
}

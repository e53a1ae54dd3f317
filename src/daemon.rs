//! Daemon (`pgsidecar run`): fires each job on its schedule, retries failed backups, keeps the
//! status that `health` and `/metrics` report, and notifies every outcome.
//!
//! Invariants:
//! - a job never overlaps itself: its firings are handled one after another by one task, and a
//!   firing that passed while the previous run was still going is skipped and reported;
//! - on SIGTERM scheduling stops at once; a running backup gets `shutdown_grace` to finish and
//!   is then cancelled (pg_dump killed, upload aborted, no manifest); the daemon then exits 0;
//! - without any schedule, `run` takes one backup of every job and exits (one-shot mode);
//!   with a schedule it never exits on its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::status::{JobStatus, Status};
use crate::notify::{Dispatcher, Event, EventKind};
use crate::pipeline::backup::{self, BackupError, WhenBusy};
use crate::pipeline::Job;
use crate::schedule::{fire_on_schedule, Clock, Firings};
use crate::storage::Storage;

/// Time allowed to deliver queued notifications before the process exits.
const NOTIFY_FLUSH: Duration = Duration::from_secs(15);

/// Everything a job run needs, built once.
struct Context {
    config: Config,
    storage: Storage,
    notify: Dispatcher,
    board: Arc<Mutex<Status>>,
    /// Cancelled by SIGTERM: stop scheduling and retrying.
    shutdown: CancellationToken,
    /// Cancelled `shutdown_grace` after SIGTERM: stop the running backup.
    abort: CancellationToken,
    sidecar: String,
    /// Every wall-time reading and wait of the daemon goes through it.
    clock: Clock,
    /// One per database this daemon backs up: two of its own jobs on the same database take
    /// turns here instead of skipping each other at the advisory lock, which is for other
    /// sidecars.
    db_turns: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Runs until `shutdown` (with schedules) or after one backup of every job (without).
/// Returns whether every backup of a one-shot run succeeded.
pub async fn run(
    config: Config,
    storage: Storage,
    clock: Clock,
    shutdown: CancellationToken,
) -> bool {
    let now = clock.now();
    let mut status = Status {
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
                    .map(|s| max_age(j, &config, s, now).num_seconds()),
                next_run: None,
                // Every database is listed from the start: one without a success is unhealthy.
                databases: j
                    .databases
                    .iter()
                    .filter(|d| *d != "*")
                    .map(|d| crate::health::status::DbStatus {
                        database: d.clone(),
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect(),
    };
    // Read before this daemon's first write replaces it; carried again once storage has told
    // which databases a `*` job has.
    let previous = Status::read(&config.health.status_file).ok();
    if let Some(previous) = &previous {
        status.carry_failures(previous);
    }
    let abort = CancellationToken::new();
    let ctx = Arc::new(Context {
        notify: Dispatcher::from_config(&config.notify),
        board: Arc::new(Mutex::new(status)),
        shutdown: shutdown.clone(),
        abort: abort.clone(),
        sidecar: hostname(),
        clock,
        db_turns: Mutex::new(std::collections::HashMap::new()),
        storage,
        config,
    });
    let grace = ctx.config.shutdown_grace;
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
    save_status(&ctx);
    let writer = tokio::spawn(write_status(ctx.clone()));
    seed_from_storage(&ctx).await;
    if let Some(previous) = &previous {
        ctx.board
            .lock()
            .expect("not poisoned")
            .carry_failures(previous);
    }
    // Now, not at the next heartbeat: `health` reads this file, and must tell what /healthz
    // and /metrics tell from the moment they serve.
    save_status(&ctx);
    if let Some(addr) = ctx.config.http_listen {
        let (board, stop) = (ctx.board.clone(), ctx.shutdown.clone());
        let clock = ctx.clock;
        tokio::spawn(async move {
            if let Err(e) = crate::health::http::serve(addr, board, clock, stop).await {
                tracing::error!(%addr, "cannot serve /healthz and /metrics: {e}");
            }
        });
    }

    let scheduled: Vec<usize> = (0..ctx.config.jobs.len())
        .filter(|&i| ctx.config.jobs[i].schedule.is_some())
        .collect();
    let all_ok = if scheduled.is_empty() {
        tracing::info!("no schedule configured: taking one backup of each job, then exiting");
        let mut ok = true;
        for i in 0..ctx.config.jobs.len() {
            ok &= run_job(&ctx, i, None).await;
        }
        ok
    } else {
        for (i, j) in ctx.config.jobs.iter().enumerate() {
            if !scheduled.contains(&i) {
                tracing::warn!(job = %j.name, "job has no schedule; `run` ignores it (use `backup --job {}`)", j.name);
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in scheduled {
            tasks.spawn(job_loop(ctx.clone(), i));
        }
        if ctx.config.drill_schedule.is_some() {
            tasks.spawn(drill_loop(ctx.clone()));
        }
        while tasks.join_next().await.is_some() {}
        true
    };
    ctx.notify.flush(NOTIFY_FLUSH).await;
    writer.abort();
    save_status(&ctx);
    all_ok
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

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pgsidecar".to_string())
}

/// Fills each database's last success from the stored manifests, so a restarted sidecar
/// reports the real age of its backups.
async fn seed_from_storage(ctx: &Context) {
    for job in &ctx.config.jobs {
        let databases = match backup::databases(job).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(job = %job.name, "cannot list the databases to back up: {e}");
                known_databases(ctx, job)
            }
        };
        for db in &databases {
            match newest_backup(ctx, job, db).await {
                Ok(newest) => {
                    let mut board = ctx.board.lock().expect("not poisoned");
                    let entry = board.db_mut(&job.name, db);
                    entry.last_success_at = newest;
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
fn known_databases(ctx: &Context, job: &Job) -> Vec<String> {
    if job.databases.iter().any(|d| d == "*") {
        let board = ctx.board.lock().expect("not poisoned");
        board
            .jobs
            .iter()
            .filter(|j| j.name == job.name)
            .flat_map(|j| j.databases.iter().map(|d| d.database.clone()))
            .collect()
    } else {
        job.databases
            .iter()
            .filter(|d| !job.exclude.contains(d))
            .cloned()
            .collect()
    }
}

/// The start of the newest backup of `db`, read from manifest key names alone, so a bucket
/// with years of backups does not delay start-up.
async fn newest_backup(
    ctx: &Context,
    job: &Job,
    db: &str,
) -> Result<Option<DateTime<Utc>>, crate::storage::StorageError> {
    let prefix = crate::catalog::manifest::database_prefix(&job.prefix, db);
    let objects = ctx.storage.list(&prefix).await?;
    Ok(objects
        .iter()
        .filter_map(|o| crate::catalog::manifest::started_from_key(&o.key))
        .max())
}

async fn write_status(ctx: Arc<Context>) {
    loop {
        save_status(&ctx);
        tokio::time::sleep(crate::health::status::HEARTBEAT).await;
    }
}

fn save_status(ctx: &Context) {
    let snapshot = {
        let mut b = ctx.board.lock().expect("not poisoned");
        b.heartbeat_at = ctx.clock.now();
        b.clone()
    };
    if let Err(e) = snapshot.write(&ctx.config.health.status_file) {
        tracing::warn!("{e}");
    }
}

/// How long a starting daemon waits for its database server before a catch-up. A Swarm stack
/// starts the sidecar and the database together (Swarm has no `depends_on`); a catch-up that
/// failed on a server still starting would be tried again only `retry.interval` later.
const SERVER_WAIT: Duration = Duration::from_secs(300);

/// Returns once the job's server accepts a connection, refuses it for good (wrong password:
/// the backup attempt reports that), [`SERVER_WAIT`] has passed, or shutdown began.
async fn wait_for_server(ctx: &Context, job: &Job) {
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
async fn job_loop(ctx: Arc<Context>, index: usize) {
    let job = &ctx.config.jobs[index];
    let schedule = job.schedule.as_ref().expect("only scheduled jobs loop");
    tracing::info!(job = %job.name, schedule = schedule.expr(), timezone = %job.timezone, "scheduled");
    if let Some(missed) =
        missed_firing(&ctx, job, schedule, ctx.clock.now()).filter(|_| job.catch_up)
    {
        tracing::info!(job = %job.name, missed = %missed, "the last scheduled backup is missing (was the sidecar down?); catching up now");
        wait_for_server(&ctx, job).await;
        run_job(&ctx, index, Some(missed)).await;
    }
    let firings = JobFirings { ctx: &ctx, index };
    fire_on_schedule(
        schedule,
        &ctx.clock,
        &ctx.shutdown,
        ctx.clock.now(),
        &firings,
    )
    .await;
}

/// A backup job as the firing loop drives it.
struct JobFirings<'a> {
    ctx: &'a Context,
    index: usize,
}

impl Firings for JobFirings<'_> {
    async fn fire(&self, at: DateTime<Utc>) {
        run_job(self.ctx, self.index, Some(at)).await;
    }

    fn next(&self, at: DateTime<Utc>) {
        self.ctx.board.lock().expect("not poisoned").jobs[self.index].next_run = Some(at);
    }

    fn skipped(&self, missed: &[DateTime<Utc>]) {
        let (ctx, job) = (self.ctx, &self.ctx.config.jobs[self.index]);
        tracing::warn!(job = %job.name, count = missed.len(), "skipped firings while the previous run was still going");
        for db in &known_databases(ctx, job) {
            ctx.board
                .lock()
                .expect("not poisoned")
                .db_mut(&job.name, db)
                .skipped_total += missed.len() as u64;
            ctx.notify
                .dispatch(event(ctx, job, db, EventKind::Skipped, 0, |e| {
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
async fn drill_loop(ctx: Arc<Context>) {
    let schedule = ctx
        .config
        .drill_schedule
        .as_ref()
        .expect("only a scheduled drill loops");
    tracing::info!(schedule = schedule.expr(), "restore drills scheduled");
    fire_on_schedule(
        schedule,
        &ctx.clock,
        &ctx.shutdown,
        ctx.clock.now(),
        &DrillFirings(&ctx),
    )
    .await;
}

/// The restore drills as the firing loop drives them.
struct DrillFirings<'a>(&'a Context);

impl Firings for DrillFirings<'_> {
    async fn fire(&self, _at: DateTime<Utc>) {
        let ctx = self.0;
        for job in &ctx.config.jobs {
            for db in &known_databases(ctx, job) {
                if ctx.shutdown.is_cancelled() {
                    return;
                }
                drill_one(ctx, job, db).await;
            }
        }
    }
}

/// One drill of one database, recorded and notified like a backup.
async fn drill_one(ctx: &Context, job: &Job, db: &str) {
    // A drill waits for a backup of the same database to finish: it restores the newest one.
    let turn = db_turn(ctx, job, db);
    let _turn = turn.lock().await;
    let result = crate::pipeline::drill::drill(
        job,
        &job.drill_server,
        &ctx.config.tools,
        &ctx.storage,
        db,
        &ctx.abort,
    )
    .await;
    {
        let mut board = ctx.board.lock().expect("not poisoned");
        let entry = board.db_mut(&job.name, db);
        entry.last_drill_at = Some(ctx.clock.now());
        entry.last_drill_passed = Some(result.is_ok());
        match &result {
            Ok(r) => entry.last_drill_restore_secs = Some(r.restore_time.as_secs_f64()),
            Err(_) => entry.drill_failures_total += 1,
        }
    }
    save_status(ctx);
    let e = match result {
        Ok(r) => event(ctx, job, db, EventKind::DrillPassed, 1, |e| {
            e.key = Some(r.key.clone());
            e.stored_bytes = Some(r.stored_bytes);
            e.duration_secs = Some(r.restore_time.as_secs_f64());
            e.summary = Some(r.summary());
            e.next_run = None;
        }),
        Err(err) => {
            tracing::error!(job = %job.name, database = %db, "{err}");
            event(ctx, job, db, EventKind::DrillFailed, 1, |e| {
                e.error = Some(err.to_string());
                e.next_run = None;
            })
        }
    };
    ctx.notify.dispatch(e);
}

/// The turn of one database: backups and drills of it run one at a time in this daemon.
fn db_turn(ctx: &Context, job: &Job, db: &str) -> Arc<tokio::sync::Mutex<()>> {
    let key = format!("{}:{}/{db}", job.database.host, job.database.port);
    let mut turns = ctx.db_turns.lock().expect("not poisoned");
    turns.entry(key).or_default().clone()
}

/// The last firing, when some database of `job` has no success since it.
fn missed_firing(
    ctx: &Context,
    job: &Job,
    schedule: &crate::schedule::Schedule,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let databases = known_databases(ctx, job);
    let mut board = ctx.board.lock().expect("not poisoned");
    let successes: Vec<_> = databases
        .iter()
        .map(|db| board.db_mut(&job.name, db).last_success_at)
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

fn event(
    ctx: &Context,
    job: &Job,
    db: &str,
    kind: EventKind,
    attempt: u32,
    fill: impl FnOnce(&mut Event),
) -> Event {
    let now = ctx.clock.now();
    let mut e = Event {
        kind,
        job: job.name.clone(),
        database: db.to_string(),
        server: format!("{}:{}", job.database.host, job.database.port),
        sidecar: ctx.sidecar.clone(),
        attempt,
        attempts: job.retry.attempts,
        at: now,
        stored_bytes: None,
        raw_bytes: None,
        duration_secs: None,
        key: None,
        next_run: job.schedule.as_ref().and_then(|s| s.next_after(now)),
        error: None,
        stderr_tail: Vec::new(),
        summary: None,
        pruned: 0,
        warnings: Vec::new(),
    };
    fill(&mut e);
    e
}

/// One run of a job: every database, each with retries. Returns whether all succeeded.
/// `fired_at` is the scheduled time this run answers, if any.
async fn run_job(ctx: &Context, index: usize, fired_at: Option<DateTime<Utc>>) -> bool {
    use futures::StreamExt;
    let job = &ctx.config.jobs[index];
    let databases = match backup::databases(job).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(job = %job.name, "{e}");
            ctx.notify
                .dispatch(event(ctx, job, "*", EventKind::Failed, 1, |ev| {
                    ev.error = Some(format!("cannot list the databases to back up: {e}"));
                }));
            return false;
        }
    };
    // One failing database never stops the others; at most `max_parallel` run at once.
    let results: Vec<bool> = futures::stream::iter(databases)
        .map(|db| async move {
            if ctx.shutdown.is_cancelled() {
                return false;
            }
            backup_with_retries(ctx, job, &db, fired_at).await
        })
        .buffer_unordered(job.max_parallel)
        .collect()
        .await;
    results.into_iter().all(|ok| ok)
}

/// Prunes `db` after a successful backup; returns how many backups were deleted.
async fn prune_after_backup(ctx: &Context, job: &Job, db: &str) -> u64 {
    let Some(policy) = &job.retention else {
        return 0;
    };
    let tz = job.timezone;
    let catalog = match crate::catalog::load(&ctx.storage, &job.prefix, Some(db)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(job = %job.name, database = %db, "cannot list backups to prune: {e}");
            return 0;
        }
    };
    let report = crate::prune::prune_database(
        &ctx.storage,
        db,
        &catalog.entries,
        policy,
        tz,
        ctx.clock.now(),
        false,
        false,
    )
    .await;
    if let Some(why) = &report.held {
        tracing::info!(job = %job.name, database = %db, "not pruning: {why}");
    }
    for (key, until) in &report.locked {
        tracing::info!(job = %job.name, database = %db, key, "not pruned: object lock until {until}");
    }
    for e in &report.errors {
        tracing::warn!(job = %job.name, database = %db, "prune: {e}");
    }
    let n = report.deleted.len() as u64;
    ctx.board
        .lock()
        .expect("not poisoned")
        .db_mut(&job.name, db)
        .pruned_total += n;
    n
}

async fn backup_with_retries(
    ctx: &Context,
    job: &Job,
    db: &str,
    fired_at: Option<DateTime<Utc>>,
) -> bool {
    let turn = db_turn(ctx, job, db);
    let _turn = turn.lock().await;
    ctx.notify
        .dispatch(event(ctx, job, db, EventKind::Started, 1, |_| {}));
    let (result, attempts) = crate::retry::retry(
        &job.retry,
        &ctx.shutdown,
        |e: &BackupError| e.is_permanent(),
        |attempt, e, wait| {
            {
                let mut board = ctx.board.lock().expect("not poisoned");
                let entry = board.db_mut(&job.name, db);
                entry.attempts_total += 1;
                entry.last_attempt_at = Some(ctx.clock.now());
                entry.last_error = Some(crate::secret::redact(&e.to_string()).into_owned());
            }
            if matches!(e, BackupError::Busy { .. }) {
                return;
            }
            match wait {
                Some(w) => {
                    tracing::warn!(job = %job.name, database = %db, attempt, attempts = job.retry.attempts, "attempt failed, retrying in {}: {e}", humantime::format_duration(w));
                    ctx.notify.dispatch(event(ctx, job, db, EventKind::AttemptFailed, attempt, |ev| {
                        ev.error = Some(e.to_string());
                        ev.stderr_tail = e.stderr_tail().to_vec();
                    }));
                }
                None => tracing::error!(job = %job.name, database = %db, attempt, attempts = job.retry.attempts, "backup failed: {e}"),
            }
        },
        |_| backup::backup_database(job, &ctx.config.tools, &ctx.storage, db, WhenBusy::Skip(fired_at), &ctx.abort),
    )
    .await;
    match result {
        Ok(done) => {
            let m = &done.manifest;
            {
                let mut board = ctx.board.lock().expect("not poisoned");
                let entry = board.db_mut(&job.name, db);
                entry.attempts_total += 1;
                entry.backups_total += 1;
                entry.last_attempt_at = Some(m.started_at);
                entry.last_success_at = Some(m.started_at);
                entry.last_duration_secs = Some(m.duration_ms as f64 / 1000.0);
                entry.last_stored_bytes = Some(m.stored_bytes);
                entry.last_raw_bytes = Some(m.raw_bytes);
                entry.last_key = Some(m.key.clone());
                entry.last_error = None;
            }
            let pruned = prune_after_backup(ctx, job, db).await;
            save_status(ctx);
            let kind = if attempts > 1 {
                EventKind::SucceededAfterRetries
            } else {
                EventKind::Succeeded
            };
            ctx.notify
                .dispatch(event(ctx, job, db, kind, attempts, |e| {
                    e.stored_bytes = Some(m.stored_bytes);
                    e.raw_bytes = Some(m.raw_bytes);
                    e.duration_secs = Some(m.duration_ms as f64 / 1000.0);
                    e.key = Some(m.key.clone());
                    if pruned > 0 {
                        e.summary = Some(format!(
                            "Pruned {pruned} old backup(s) by the retention policy."
                        ));
                    }
                    e.pruned = pruned;
                    e.warnings = m.anomalies.clone();
                }));
            true
        }
        Err(BackupError::Busy { .. }) => {
            tracing::info!(job = %job.name, database = %db, "another sidecar is backing up this database; firing skipped");
            ctx.board
                .lock()
                .expect("not poisoned")
                .db_mut(&job.name, db)
                .skipped_total += 1;
            true
        }
        Err(e) => {
            ctx.board
                .lock()
                .expect("not poisoned")
                .db_mut(&job.name, db)
                .failures_total += 1;
            save_status(ctx);
            ctx.notify
                .dispatch(event(ctx, job, db, EventKind::Failed, attempts, |ev| {
                    ev.error = Some(e.to_string());
                    ev.stderr_tail = e.stderr_tail().to_vec();
                }));
            false
        }
    }
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

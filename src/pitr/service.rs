//! The daemon's point-in-time recovery service: archiving that restarts after failures
//! (alerting when it cannot go on), and base backups on their schedule or at once when the
//! archive needs one.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::archiver::{ArchiveError, Archiver, Check, Observer};
use super::server::Primary;
use super::wal::Lsn;
use super::{base, PitrConfig};
use crate::codec::encryption::Encryption;
use crate::health::status::PitrStatus;
use crate::health::Board;
use crate::notify::{Dispatcher, Event, EventKind};
use crate::source::ToolsConfig;
use crate::storage::Storage;

/// What the service runs with (built by the composition root).
pub struct Service<'a> {
    /// Where archiving's state is recorded for `health` and `/metrics`.
    pub board: &'a Board,
    pub config: &'a PitrConfig,
    pub tools: &'a ToolsConfig,
    pub storage: &'a Storage,
    pub encryption: &'a Encryption,
    pub notify: &'a Dispatcher,
}

/// Restarts of the archiver in a row after which the operator is told.
const ALERT_AFTER_FAILURES: u32 = 5;
/// Longest pause between archiver restarts.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// Pause before a failed base backup is tried again.
const BASE_BACKUP_RETRY: Duration = Duration::from_secs(600);

struct Reporter<'a> {
    service: &'a Service<'a>,
    base_needed: Notify,
    /// Alerts already sent for the episode going on: archive lag, slot nearly full.
    alerted_lag: std::sync::atomic::AtomicBool,
    alerted_slot: std::sync::atomic::AtomicBool,
    alerted_gap: std::sync::atomic::AtomicBool,
    alerted_overdue: std::sync::atomic::AtomicBool,
}

/// Share of `max_slot_wal_keep_size` the slot may hold before an alert.
const SLOT_ALERT_SHARE: f64 = 0.8;

impl Reporter<'_> {
    fn record(&self, change: impl FnOnce(&mut PitrStatus)) {
        self.service.board.update(|s| {
            if let Some(p) = s.pitr.as_mut() {
                change(p);
            }
        });
    }

    /// Records the archive lag alone (no session could look at the server) and alerts once
    /// when it passes `pitr.max_lag`.
    fn lag(&self, lag_secs: i64) {
        self.record(|p| p.lag_secs = Some(lag_secs));
        self.lag_alert(lag_secs);
    }

    fn lag_alert(&self, lag_secs: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        let max_lag = self.service.config.max_lag.as_secs() as i64;
        if lag_secs > max_lag {
            if !self.alerted_lag.swap(true, Relaxed) {
                self.notify(format!(
                    "WAL archiving is {lag_secs}s behind the server (pitr.max_lag is {max_lag}s): the WAL waits on the server's slot. Check that storage is reachable and the sidecar's log"
                ));
            }
        } else {
            self.alerted_lag.store(false, Relaxed);
        }
    }

    /// Alerts once when the slot holds more than [`SLOT_ALERT_SHARE`] of what the server
    /// keeps for it.
    fn slot_alert(&self, retained: Option<u64>, keep: Option<u64>) {
        use std::sync::atomic::Ordering::Relaxed;
        let (Some(held), Some(keep)) = (retained, keep) else {
            return;
        };
        if keep > 0 && held as f64 > keep as f64 * SLOT_ALERT_SHARE {
            if !self.alerted_slot.swap(true, Relaxed) {
                self.notify(format!(
                    "the replication slot holds {} MB of WAL, more than {:.0}% of max_slot_wal_keep_size ({} MB): when it is full the server removes WAL the archive has not stored and the archive gets a gap. Make storage reachable, or raise max_slot_wal_keep_size",
                    held >> 20,
                    SLOT_ALERT_SHARE * 100.0,
                    keep >> 20
                ));
            }
        } else {
            self.alerted_slot.store(false, Relaxed);
        }
    }

    /// Records a drill's outcome on the board and notifies it.
    fn drill_done(
        &self,
        outcome: &Result<super::drill::DrillReport, super::drill::PitrDrillError>,
    ) {
        self.record(|p| {
            p.last_drill_at = Some(Utc::now());
            p.last_drill_passed = Some(outcome.is_ok());
            match outcome {
                Ok(r) => {
                    p.last_drill_rto_secs = Some(r.rto.as_secs_f64());
                    p.last_drill_rpo_secs = r.rpo.map(|d| d.as_secs_f64());
                }
                Err(_) => p.drill_failures_total += 1,
            }
        });
        self.service.board.save();
        let mut event = match outcome {
            Ok(r) => {
                tracing::info!("point-in-time restore drill passed: {}", r.summary());
                let mut e = self.event(EventKind::DrillPassed, String::new());
                e.error = None;
                e.key = Some(r.base_key.clone());
                e.duration_secs = Some(r.rto.as_secs_f64());
                e.summary = Some(r.summary());
                e
            }
            Err(err) => {
                let text = crate::secret::redact(&err.to_string()).into_owned();
                tracing::error!("point-in-time restore drill failed: {text}");
                self.event(EventKind::DrillFailed, text)
            }
        };
        event.job = "pitr".into();
        self.service.notify.dispatch(event);
    }

    fn notify(&self, text: String) {
        tracing::error!("{text}");
        self.record(|p| p.alerts_total += 1);
        self.service
            .notify
            .dispatch(self.event(EventKind::ArchiveAlert, text));
    }

    fn event(&self, kind: EventKind, error: String) -> Event {
        let db = &self.service.config.database;
        Event {
            kind,
            job: "pitr".into(),
            database: "(cluster)".into(),
            server: format!("{}:{}", db.host, db.port),
            sidecar: crate::pipeline::run::hostname(),
            attempt: 1,
            attempts: 1,
            at: Utc::now(),
            stored_bytes: None,
            raw_bytes: None,
            duration_secs: None,
            key: None,
            next_run: None,
            error: Some(error),
            stderr_tail: Vec::new(),
            summary: None,
            pruned: 0,
            warnings: Vec::new(),
            anomalies: Vec::new(),
        }
    }
}

impl Observer for Reporter<'_> {
    fn stored(&self, name: &str, slot: Lsn) {
        tracing::info!(segment = name, slot = %slot, "archived WAL segment");
        self.record(|p| {
            p.last_stored_at = Some(Utc::now());
            p.last_segment = Some(name.to_string());
        });
    }
    fn partial_stored(&self) {
        self.record(|p| p.last_stored_at = Some(Utc::now()));
    }
    fn checked(&self, check: &Check) {
        self.record(|p| {
            p.lag_secs = Some(check.lag_secs);
            p.slot_retained_bytes = check.retained_bytes;
            p.slot_keep_bytes = check.keep_bytes;
            p.slot_lost = false;
            if check.lag_secs == 0 {
                p.last_error = None;
            }
        });
        self.lag_alert(check.lag_secs);
        self.slot_alert(check.retained_bytes, check.keep_bytes);
    }
    fn alert(&self, error: &ArchiveError) {
        if matches!(
            error,
            ArchiveError::SlotLost { .. } | ArchiveError::SlotMissing { .. }
        ) {
            self.record(|p| p.slot_lost = true);
        }
        self.record(|p| {
            p.last_error = Some(crate::secret::redact(&error.to_string()).into_owned())
        });
        self.notify(error.to_string());
    }
    fn base_backup_seen(&self, at: chrono::DateTime<Utc>) {
        self.record(|p| {
            if p.last_base_backup_at.is_none_or(|t| t < at) {
                p.last_base_backup_at = Some(at);
            }
        });
    }
    fn base_backup_needed(&self, why: &str) {
        tracing::info!("a base backup is needed: {why}");
        self.base_needed.notify_one();
    }
}

impl Service<'_> {
    /// Archives and takes base backups until `cancel` fires.
    pub async fn run(&self, cancel: CancellationToken) {
        let reporter = Reporter {
            service: self,
            base_needed: Notify::new(),
            alerted_lag: Default::default(),
            alerted_slot: Default::default(),
            alerted_gap: Default::default(),
            alerted_overdue: Default::default(),
        };
        tokio::join!(
            self.archive(&reporter, &cancel),
            self.base_backups(&reporter, &cancel),
            self.watch(&reporter, &cancel),
            self.drills(&reporter, &cancel)
        );
    }

    /// The periodic checks, every `pitr.check_interval`: holes in the archive and the newest
    /// base backup's age, each alerted once per episode.
    async fn watch(&self, reporter: &Reporter<'_>, cancel: &CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.check_interval) => {}
                _ = cancel.cancelled() => return,
            }
            self.check_base_backup_age(reporter);
            if let Err(e) = self.check_for_gaps(reporter).await {
                tracing::warn!("the periodic WAL check could not read the archive: {e}");
            }
        }
    }

    fn check_base_backup_age(&self, reporter: &Reporter<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        let status = self.board.snapshot();
        let Some(p) = &status.pitr else { return };
        let Some(max_age) = p.base_backup_max_age_secs else {
            return;
        };
        // Counted from the daemon's start when none was seen, as `health` does.
        let since = p.last_base_backup_at.unwrap_or(status.started_at);
        let age = (Utc::now() - since).num_seconds();
        if age > max_age {
            if !reporter.alerted_overdue.swap(true, Relaxed) {
                reporter.notify(format!(
                    "the newest base backup is {age}s old, more than pitr.base_backup_schedule allows ({max_age}s with health.grace): base backups are failing (see the alerts before this one), and every restore replays more WAL. Run `pgsidecar pitr base-backup` to see why"
                ));
            }
        } else {
            reporter.alerted_overdue.store(false, Relaxed);
        }
    }

    /// Reads the archive of the live cluster and records a hole in the newest base backup's
    /// chain: a missing segment with WAL stored after it (a segment not stored *yet* is
    /// archiving's lag, not a hole). A hole asks for a base backup, which starts a chain that
    /// restores again.
    async fn check_for_gaps(&self, reporter: &Reporter<'_>) -> Result<(), super::PitrError> {
        use std::sync::atomic::Ordering::Relaxed;
        let primary = Primary::connect(&self.config.database).await?;
        let facts = primary.facts().await?;
        drop(primary);
        let cluster =
            crate::keys::pitr_cluster_prefix(&self.config.prefix, facts.system_identifier);
        let archive =
            super::archive::Archive::load(self.storage, &cluster, Some(facts.segment_size)).await?;
        let gap = archive
            .base_backups
            .last()
            .and_then(|base| match archive.reach(base) {
                Ok(reach) => reach.gap_after,
                Err(gap) => {
                    let size = base.wal_segment_size;
                    let missing = size.parse_name(&gap.missing).ok()?.1;
                    archive
                        .segment_numbers(base.timeline)
                        .range(missing..)
                        .next()
                        .is_some()
                        .then_some(gap.missing)
                }
            });
        reporter.record(|p| p.gap = gap.clone());
        match gap {
            Some(name) => {
                if !reporter.alerted_gap.swap(true, Relaxed) {
                    reporter.notify(format!(
                        "the periodic WAL check found segment {name} missing from the archive: the WAL stored after it cannot be replayed, so no restore reaches past it. A base backup is taken now to start a chain that restores again; find out what deleted the object (a lifecycle rule, a person)"
                    ));
                    reporter.base_needed.notify_one();
                }
            }
            None => reporter.alerted_gap.store(false, Relaxed),
        }
        Ok(())
    }

    /// Point-in-time restore drills on `pitr.drill.schedule`, recorded for `/metrics` and
    /// notified like the logical drills.
    async fn drills(&self, reporter: &Reporter<'_>, cancel: &CancellationToken) {
        let Some(schedule) = &self.config.drill.schedule else {
            return;
        };
        loop {
            let now = Utc::now();
            let wait = schedule
                .next_after(now)
                .and_then(|t| (t - now).to_std().ok())
                .unwrap_or(Duration::from_secs(86_400));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return,
            }
            let drill = super::drill::Drill {
                config: self.config,
                tools: self.tools,
                storage: self.storage,
                encryption: self.encryption,
            };
            let outcome = drill.run(super::drill::Choice::Config, cancel).await;
            if cancel.is_cancelled() {
                return;
            }
            reporter.drill_done(&outcome);
        }
    }

    async fn archive(&self, reporter: &Reporter<'_>, cancel: &CancellationToken) {
        let archiver = Archiver {
            config: self.config,
            tools: self.tools,
            storage: self.storage,
            encryption: self.encryption,
        };
        let mut failures = 0u32;
        let mut pause = Duration::from_secs(1);
        let mut progress = super::archiver::Progress::default();
        while !cancel.is_cancelled() {
            let started = tokio::time::Instant::now();
            let Err(e) = archiver.run(reporter, &mut progress, cancel).await else {
                break;
            };
            // While sessions fail the server goes on writing: its position, read apart from
            // the failed session, makes the lag grow from the last stored position.
            // So does the WAL the slot holds, which is what fills the server's disk.
            if let Ok(primary) = Primary::connect(&self.config.database).await {
                if let Ok(lsn) = primary.current_lsn().await {
                    progress.positions.push(Utc::now(), lsn);
                }
                if let (Ok(Some(slot)), Ok(facts)) =
                    (primary.slot(&self.config.slot).await, primary.facts().await)
                {
                    reporter.record(|p| {
                        p.slot_retained_bytes = slot.retained_bytes;
                        p.slot_keep_bytes = facts.max_slot_wal_keep;
                    });
                    reporter.slot_alert(slot.retained_bytes, facts.max_slot_wal_keep);
                }
            }
            reporter.lag(progress.positions.lag(progress.stored, Utc::now()));
            // A session that ran a while was healthy: start counting again.
            if started.elapsed() > Duration::from_secs(300) {
                failures = 0;
                pause = Duration::from_secs(1);
            }
            // A full spool is storage catching up, not a fault: go on at once.
            if matches!(e, ArchiveError::SpoolFull(_)) {
                tracing::info!("{e}");
                continue;
            }
            failures += 1;
            reporter.record(|p| {
                p.receiver_restarts_total += 1;
                p.last_error = Some(crate::secret::redact(&e.to_string()).into_owned());
            });
            // The next session finds the slot lost, alerts once, and recreates it.
            let slot_lost = matches!(e, ArchiveError::SlotLost { .. });
            if !slot_lost && (e.is_permanent() || failures == ALERT_AFTER_FAILURES) {
                reporter.alert(&e);
            } else {
                tracing::warn!(failures, "WAL archiving stopped, restarting: {e}");
            }
            if slot_lost {
                // The next session recreates the slot; it asks for a base backup itself.
                continue;
            }
            let wait = if e.is_permanent() {
                Duration::from_secs(300)
            } else {
                pause
            };
            pause = (pause * 2).min(MAX_PAUSE);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => break,
            }
        }
    }

    async fn base_backups(&self, reporter: &Reporter<'_>, cancel: &CancellationToken) {
        let schedule = &self.config.base_backup_schedule;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let now = Utc::now();
            let until_firing = schedule
                .next_after(now)
                .and_then(|t| (t - now).to_std().ok())
                .unwrap_or(Duration::from_secs(86_400));
            let until_retry = retry_at
                .map(|t| t.saturating_duration_since(tokio::time::Instant::now()))
                .unwrap_or(Duration::MAX);
            tokio::select! {
                _ = tokio::time::sleep(until_firing.min(until_retry)) => {}
                _ = reporter.base_needed.notified() => {}
                _ = cancel.cancelled() => return,
            }
            match self.take_base_backup(cancel).await {
                Ok(()) => {
                    retry_at = None;
                    reporter.base_backup_seen(Utc::now());
                }
                Err(e) if cancel.is_cancelled() => {
                    tracing::info!("base backup stopped: {e}");
                    return;
                }
                Err(e) => {
                    reporter.notify(format!(
                        "base backup failed: {e}; it is tried again in {} minutes",
                        BASE_BACKUP_RETRY.as_secs() / 60
                    ));
                    retry_at = Some(tokio::time::Instant::now() + BASE_BACKUP_RETRY);
                }
            }
        }
    }

    async fn take_base_backup(&self, cancel: &CancellationToken) -> Result<(), super::PitrError> {
        let primary = Primary::connect(&self.config.database).await?;
        let facts = primary.facts().await?;
        drop(primary);
        let cluster =
            crate::keys::pitr_cluster_prefix(&self.config.prefix, facts.system_identifier);
        base::take(
            &self.config.database,
            self.tools,
            self.storage,
            &cluster,
            &facts,
            self.encryption,
            cancel,
        )
        .await?;
        // A new base backup is when older ones may go.
        if let Some(policy) = &self.config.retention {
            let (plan, errors) = super::prune::prune_cluster(
                self.storage,
                &self.config.prefix,
                facts.system_identifier,
                policy,
                self.config.timezone,
                Utc::now(),
                false,
            )
            .await?;
            if !plan.deleted_bases.is_empty() || !plan.deleted_wal.is_empty() {
                tracing::info!(
                    base_backups = plan.deleted_bases.len(),
                    wal = plan.deleted_wal.len(),
                    wal_from = plan.wal_from.as_deref().unwrap_or("-"),
                    "pruned the archive"
                );
            }
            for e in errors {
                tracing::warn!("prune of the archive: {e}");
            }
        }
        Ok(())
    }
}

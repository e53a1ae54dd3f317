//! The daemon's point-in-time recovery service: archiving that restarts after failures
//! (alerting when it cannot go on), and base backups on their schedule or at once when the
//! archive needs one.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::archiver::{ArchiveError, Archiver, Observer};
use super::server::Primary;
use super::wal::Lsn;
use super::{base, PitrConfig};
use crate::codec::encryption::Encryption;
use crate::notify::{Dispatcher, Event, EventKind};
use crate::source::ToolsConfig;
use crate::storage::Storage;

/// What the service runs with (built by the composition root).
pub struct Service<'a> {
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
}

impl Reporter<'_> {
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
        }
    }
}

impl Observer for Reporter<'_> {
    fn stored(&self, name: &str, slot: Lsn) {
        tracing::info!(segment = name, slot = %slot, "archived WAL segment");
    }
    fn alert(&self, error: &ArchiveError) {
        tracing::error!("{error}");
        self.service
            .notify
            .dispatch(self.event(EventKind::ArchiveAlert, error.to_string()));
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
        };
        tokio::join!(
            self.archive(&reporter, &cancel),
            self.base_backups(&reporter, &cancel)
        );
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
        while !cancel.is_cancelled() {
            let started = tokio::time::Instant::now();
            let Err(e) = archiver.run(reporter, cancel).await else {
                break;
            };
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
                Ok(()) => retry_at = None,
                Err(e) if cancel.is_cancelled() => {
                    tracing::info!("base backup stopped: {e}");
                    return;
                }
                Err(e) => {
                    let e = format!("base backup failed: {e}");
                    tracing::error!("{e}");
                    self.notify
                        .dispatch(reporter.event(EventKind::ArchiveAlert, e));
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

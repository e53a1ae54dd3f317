//! Notify: tells people and monitors what happened. One [`Notifier`] per backend (Slack,
//! generic JSON webhook, ping URLs); the [`Dispatcher`] filters events by policy and delivers
//! them in the background.
//!
//! Invariant: a notifier that is down, slow or failing never fails or delays a backup: each
//! delivery has a short timeout and a few retries, runs off the backup's path, and its
//! failures are only logged. No secret is in any payload.

pub mod ping;
mod settings;
pub mod slack;
pub mod webhook;

pub use settings::{NotifyConfig, NotifyEvents};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::task::TaskTracker;

/// Errors delivering one notification.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{target} could not be reached: {cause}")]
    Send { target: &'static str, cause: String },
    #[error("{target} answered HTTP {status}")]
    Status { target: &'static str, status: u16 },
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A run of a job began (only ping URLs care).
    Started,
    /// The backup succeeded at the first attempt.
    Succeeded,
    /// The backup succeeded after failed attempts.
    SucceededAfterRetries,
    /// One attempt failed and another follows.
    AttemptFailed,
    /// Every attempt failed, or a permanent error ended the run.
    Failed,
    /// A firing was skipped: the previous run was still going, or another sidecar held the lock.
    Skipped,
    /// A restore drill restored the newest backup and it matched its manifest.
    DrillPassed,
    /// A restore drill failed: the newest backup could not be restored or did not match.
    DrillFailed,
    /// WAL archiving for point-in-time recovery needs the operator (a lost slot, a conflict,
    /// a receiver that keeps failing); `error` says what happened and what to do.
    ArchiveAlert,
}

impl EventKind {
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            EventKind::Failed | EventKind::DrillFailed | EventKind::ArchiveAlert
        )
    }

    pub fn is_success(self) -> bool {
        matches!(
            self,
            EventKind::Succeeded | EventKind::SucceededAfterRetries | EventKind::DrillPassed
        )
    }

    pub fn is_drill(self) -> bool {
        matches!(self, EventKind::DrillPassed | EventKind::DrillFailed)
    }
}

/// The facts of one event; every notifier renders these.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub kind: EventKind,
    pub job: String,
    pub database: String,
    /// PostgreSQL server as `host:port`.
    pub server: String,
    /// Host name of the machine or container running pgsidecar.
    pub sidecar: String,
    pub attempt: u32,
    pub attempts: u32,
    pub at: DateTime<Utc>,
    pub stored_bytes: Option<u64>,
    pub raw_bytes: Option<u64>,
    pub duration_secs: Option<f64>,
    pub key: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub stderr_tail: Vec<String>,
    /// What a drill found (tables, rows, restore time), or what prune did.
    pub summary: Option<String>,
    /// Backups deleted by prune after this backup.
    pub pruned: u64,
    /// Everything a success warns about: its size anomalies, the destinations it did not
    /// reach (`destinations.policy = "any"`), a prune that failed.
    pub warnings: Vec<String>,
    /// Of those, what shrank since the previous backup (kept until `pgsidecar ack`).
    pub anomalies: Vec<String>,
}

/// One notification backend.
#[allow(async_fn_in_trait)]
pub trait Notifier {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Whether this backend wants `kind` at all (ping URLs only know start, success, failure).
    fn wants(&self, kind: EventKind) -> bool;
    async fn send(&self, client: &reqwest::Client, event: &Event) -> Result<(), NotifyError>;
}

/// The configured backends.
pub enum Notifiers {
    Slack(slack::Slack),
    Webhook(webhook::Webhook),
    Ping(ping::Ping),
}

impl Notifiers {
    fn name(&self) -> &'static str {
        match self {
            Notifiers::Slack(n) => n.name(),
            Notifiers::Webhook(n) => n.name(),
            Notifiers::Ping(n) => n.name(),
        }
    }
    fn wants(&self, kind: EventKind) -> bool {
        match self {
            Notifiers::Slack(n) => n.wants(kind),
            Notifiers::Webhook(n) => n.wants(kind),
            Notifiers::Ping(n) => n.wants(kind),
        }
    }
    async fn send(&self, client: &reqwest::Client, event: &Event) -> Result<(), NotifyError> {
        match self {
            Notifiers::Slack(n) => n.send(client, event).await,
            Notifiers::Webhook(n) => n.send(client, event).await,
            Notifiers::Ping(n) => n.send(client, event).await,
        }
    }
}

/// POSTs JSON and maps the outcome; shared by the JSON backends.
pub(crate) async fn post_json(
    client: &reqwest::Client,
    target: &'static str,
    url: &str,
    body: &serde_json::Value,
) -> Result<(), NotifyError> {
    deliver(target, client.post(url).json(body)).await
}

/// Sends a request and maps the outcome: any 2xx is delivered.
pub(crate) async fn deliver(
    target: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<(), NotifyError> {
    let resp = request.send().await.map_err(|e| NotifyError::Send {
        target,
        // reqwest's message may contain the URL, which is a secret.
        cause: describe_reqwest(&e),
    })?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(NotifyError::Status {
            target,
            status: resp.status().as_u16(),
        })
    }
}

/// A reqwest error without its URL (the URL of a webhook is a secret).
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connect() {
        return "connection failed".into();
    }
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

/// How long a process waits for queued deliveries before it exits.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(15);

/// Delivers events in the background according to the policy.
pub struct Dispatcher {
    notifiers: Arc<Vec<Notifiers>>,
    client: reqwest::Client,
    events: NotifyEvents,
    each_attempt: bool,
    tracker: TaskTracker,
    /// Whether the last outcome per (job, database) was a failure, for "recoveries".
    last_failed: Mutex<HashMap<(String, String, bool), bool>>,
}

/// How a delivery is retried: three tries, 1 s then 2 s apart. Short, because the whole
/// delivery is bounded by the flush before exit.
const DELIVERY: crate::retry::RetryPolicy = crate::retry::RetryPolicy {
    attempts: 3,
    interval: Duration::from_secs(1),
    exponential: true,
    max_interval: Duration::from_secs(2),
    jitter: false,
    attempt_timeout: Duration::from_secs(60),
};

impl Dispatcher {
    /// Builds the notifiers named in the configuration.
    pub fn from_config(cfg: &NotifyConfig) -> Dispatcher {
        let mut notifiers = Vec::new();
        if let Some(url) = &cfg.slack_webhook_url {
            notifiers.push(Notifiers::Slack(slack::Slack::new(url.clone())));
        }
        if let Some(url) = &cfg.webhook_url {
            notifiers.push(Notifiers::Webhook(webhook::Webhook::new(url.clone())));
        }
        if cfg.ping_start_url.is_some()
            || cfg.ping_success_url.is_some()
            || cfg.ping_failure_url.is_some()
        {
            notifiers.push(Notifiers::Ping(ping::Ping::new(
                cfg.ping_start_url.clone(),
                cfg.ping_success_url.clone(),
                cfg.ping_failure_url.clone(),
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .build()
            .expect("an HTTP client with timeouts builds");
        Dispatcher {
            notifiers: Arc::new(notifiers),
            client,
            events: cfg.events,
            each_attempt: cfg.each_attempt,
            tracker: TaskTracker::new(),
            last_failed: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the policy sends `event` (pure apart from remembering the last outcome).
    fn selected(&self, event: &Event) -> bool {
        // Drill outcomes and backup outcomes recover separately.
        let key = (
            event.job.clone(),
            event.database.clone(),
            event.kind.is_drill(),
        );
        let mut last = self.last_failed.lock().expect("not poisoned");
        let was_failing = last.get(&key).copied().unwrap_or(false);
        if event.kind.is_failure() {
            last.insert(key, true);
        } else if event.kind.is_success() {
            last.insert(key, false);
        }
        match event.kind {
            EventKind::Started => true,
            EventKind::AttemptFailed => self.each_attempt,
            EventKind::Failed
            | EventKind::Skipped
            | EventKind::DrillFailed
            | EventKind::ArchiveAlert => true,
            EventKind::Succeeded | EventKind::SucceededAfterRetries | EventKind::DrillPassed => {
                match self.events {
                    NotifyEvents::All => true,
                    NotifyEvents::Failures => false,
                    NotifyEvents::FailuresAndRecoveries => was_failing,
                }
            }
        }
    }

    /// Queues `event` for every notifier that wants it; returns at once.
    pub fn dispatch(&self, mut event: Event) {
        if !self.selected(&event) {
            return;
        }
        // Errors and pg_dump's stderr can quote anything; nothing secret leaves the sidecar.
        let clean = |t: &mut String| *t = crate::secret::redact(t).into_owned();
        event
            .error
            .iter_mut()
            .chain(event.summary.iter_mut())
            .chain(event.stderr_tail.iter_mut())
            .chain(event.warnings.iter_mut())
            .chain(event.anomalies.iter_mut())
            .for_each(clean);
        let event = Arc::new(event);
        for index in 0..self.notifiers.len() {
            if !self.notifiers[index].wants(event.kind) {
                continue;
            }
            let (notifiers, client, event) =
                (self.notifiers.clone(), self.client.clone(), event.clone());
            self.tracker.spawn(async move {
                let n = &notifiers[index];
                let never = tokio_util::sync::CancellationToken::new();
                let (result, tries) = crate::retry::retry(
                    &DELIVERY,
                    &never,
                    |_| false,
                    |_, e, wait| {
                        if wait.is_some() {
                            tracing::debug!(
                                notifier = n.name(),
                                "notification failed, retrying: {e}"
                            );
                        }
                    },
                    |_| n.send(&client, &event),
                )
                .await;
                if let Err(e) = result {
                    tracing::warn!(
                        notifier = n.name(),
                        "notification not delivered after {tries} tries: {e}"
                    );
                }
            });
        }
    }

    /// Waits up to `limit` for queued deliveries (before exit).
    pub async fn flush(&self, limit: Duration) {
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some notifications were still being delivered at exit");
        }
        self.tracker.reopen();
    }
}

/// Human-readable bytes (IEC).
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(kind: EventKind) -> Event {
        Event {
            kind,
            job: "prod".into(),
            database: "app".into(),
            server: "db:5432".into(),
            sidecar: "sidecar-1".into(),
            attempt: 2,
            attempts: 10,
            at: DateTime::parse_from_rfc3339("2026-11-24T02:03:04Z")
                .unwrap()
                .to_utc(),
            stored_bytes: Some(123 * 1024 * 1024),
            raw_bytes: Some(456 * 1024 * 1024),
            duration_secs: Some(83.4),
            key: Some("prod/app/2026-11-24T020000Z.dump.zst".into()),
            next_run: Some(
                DateTime::parse_from_rfc3339("2026-11-25T02:00:00Z")
                    .unwrap()
                    .to_utc(),
            ),
            error: None,
            stderr_tail: vec![],
            summary: None,
            pruned: 0,
            warnings: vec![],
            anomalies: vec![],
        }
    }

    /// A fixed "now", a day after [`event`]'s time, for renderers that take one.
    pub(crate) fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T02:03:04Z")
            .unwrap()
            .to_utc()
    }

    fn dispatcher(events: NotifyEvents, each_attempt: bool) -> Dispatcher {
        let cfg = NotifyConfig {
            events,
            each_attempt,
            timeout: Duration::from_secs(1),
            slack_webhook_url: None,
            webhook_url: None,
            ping_start_url: None,
            ping_success_url: None,
            ping_failure_url: None,
        };
        Dispatcher::from_config(&cfg)
    }

    #[test]
    fn policy_selects_failures_and_recoveries() {
        let d = dispatcher(NotifyEvents::FailuresAndRecoveries, false);
        assert!(!d.selected(&event(EventKind::Succeeded)));
        assert!(!d.selected(&event(EventKind::AttemptFailed)));
        assert!(d.selected(&event(EventKind::Failed)));
        assert!(
            d.selected(&event(EventKind::SucceededAfterRetries)),
            "a recovery"
        );
        assert!(!d.selected(&event(EventKind::Succeeded)));
        let f = dispatcher(NotifyEvents::Failures, true);
        assert!(f.selected(&event(EventKind::AttemptFailed)));
        assert!(!f.selected(&event(EventKind::Succeeded)));
    }
}

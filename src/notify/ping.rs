//! Ping URLs in the healthchecks.io / Uptime Kuma style: a request to a start, success or
//! failure URL, so an outside dead-man's switch notices when backups (or the sidecar) stop.

use super::{Event, EventKind, Notifier, NotifyError};
use crate::secret::Secret;

/// The three ping URLs; any may be absent.
pub struct Ping {
    start: Option<Secret>,
    success: Option<Secret>,
    failure: Option<Secret>,
}

impl Ping {
    pub fn new(start: Option<Secret>, success: Option<Secret>, failure: Option<Secret>) -> Self {
        Ping {
            start,
            success,
            failure,
        }
    }

    fn url(&self, kind: EventKind) -> Option<&Secret> {
        match kind {
            EventKind::Started => self.start.as_ref(),
            EventKind::Succeeded | EventKind::SucceededAfterRetries => self.success.as_ref(),
            EventKind::Failed => self.failure.as_ref(),
            // Ping URLs watch the backup schedule; drills report through Slack and webhooks.
            EventKind::AttemptFailed
            | EventKind::Skipped
            | EventKind::DrillPassed
            | EventKind::DrillFailed
            | EventKind::ArchiveAlert => None,
        }
    }
}

impl Notifier for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn wants(&self, kind: EventKind) -> bool {
        self.url(kind).is_some()
    }
    async fn send(&self, client: &reqwest::Client, event: &Event) -> Result<(), NotifyError> {
        let Some(url) = self.url(event.kind) else {
            return Ok(());
        };
        // The body is a short summary; healthchecks.io shows it in its log.
        let body = match &event.error {
            Some(e) => format!("{} {}: {e}", event.job, event.database),
            None => format!("{} {}: {:?}", event.job, event.database, event.kind),
        };
        super::deliver("ping URL", client.post(url.expose()).body(body)).await
    }
}

//! Generic JSON webhook: the event's facts as one JSON object.

use serde_json::Value;

use super::{post_json, Event, EventKind, Notifier, NotifyError};
use crate::secret::Secret;

/// A URL that receives every event as JSON.
pub struct Webhook {
    url: Secret,
}

impl Webhook {
    pub fn new(url: Secret) -> Self {
        Webhook { url }
    }
}

/// The body posted for `event` (pure, so its shape is tested without a network).
pub fn render(event: &Event) -> Value {
    serde_json::to_value(event).expect("events serialize")
}

impl Notifier for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }
    fn wants(&self, kind: EventKind) -> bool {
        kind != EventKind::Started
    }
    async fn send(&self, client: &reqwest::Client, event: &Event) -> Result<(), NotifyError> {
        post_json(client, "webhook", self.url.expose(), &render(event)).await
    }
}

#[cfg(test)]
mod tests {
    // Golden files in snapshots/: after a deliberate change, `INSTA_UPDATE=always cargo test --lib notify::webhook` rewrites them; review `git diff`.
    use super::*;
    use crate::notify::tests::event;

    /// The JSON receivers parse: its field names and value shapes are an interface.
    #[test]
    fn golden_bodies() {
        insta::assert_json_snapshot!("success", render(&event(EventKind::Succeeded)));

        let mut failed = event(EventKind::Failed);
        failed.stored_bytes = None;
        failed.raw_bytes = None;
        failed.key = None;
        failed.error = Some("pg_dump exited with status 1".into());
        failed.stderr_tail = vec!["pg_dump: error: connection to server lost".into()];
        insta::assert_json_snapshot!("failure", render(&failed));

        let mut anomaly = event(EventKind::Succeeded);
        anomaly.anomalies = vec!["table public.orders is empty (it had 500 rows)".into()];
        anomaly.warnings = anomaly.anomalies.clone();
        anomaly.pruned = 2;
        anomaly.summary = Some("Pruned 2 old backup(s) by the retention policy.".into());
        insta::assert_json_snapshot!("anomaly_warning", render(&anomaly));
    }
}

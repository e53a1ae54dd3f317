//! Generic JSON webhook: the event's facts as one JSON object.

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

impl Notifier for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }
    fn wants(&self, kind: EventKind) -> bool {
        kind != EventKind::Started
    }
    async fn send(&self, client: &reqwest::Client, event: &Event) -> Result<(), NotifyError> {
        let body = serde_json::to_value(event).expect("events serialize");
        post_json(client, "webhook", self.url.expose(), &body).await
    }
}

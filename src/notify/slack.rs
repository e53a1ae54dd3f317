//! Slack incoming webhook: one message per outcome, coloured good / warning / danger.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{human_bytes, post_json, Event, EventKind, Notifier, NotifyError};
use crate::secret::Secret;

/// A Slack incoming webhook.
pub struct Slack {
    url: Secret,
}

impl Slack {
    pub fn new(url: Secret) -> Self {
        Slack { url }
    }
}

/// The message for `event` (pure, so its text is tested without a network); `now` caps the
/// timestamp Slack shows, and is passed in so that the message is testable.
pub fn render(event: &Event, now: DateTime<Utc>) -> Value {
    let (color, status) = match event.kind {
        EventKind::Succeeded => ("good", "succeeded".to_string()),
        EventKind::SucceededAfterRetries => (
            "warning",
            format!(
                "succeeded after {} failed attempt(s)",
                event.attempt.saturating_sub(1)
            ),
        ),
        EventKind::Failed => ("danger", "FAILED".to_string()),
        EventKind::AttemptFailed => ("warning", "attempt failed, retrying".to_string()),
        EventKind::Skipped => ("warning", "skipped".to_string()),
        EventKind::Started => ("#439FE0", "started".to_string()),
        EventKind::DrillPassed => ("good", "passed".to_string()),
        EventKind::DrillFailed => ("danger", "FAILED".to_string()),
        EventKind::ArchiveAlert => ("danger", "needs attention".to_string()),
    };
    let (color, status) = if event.warnings.is_empty() {
        (color, status)
    } else if event.anomalies.is_empty() {
        ("warning", format!("{status} with a WARNING"))
    } else {
        (
            "warning",
            format!("{status} with a WARNING: it is much smaller than the one before"),
        )
    };
    let what = if event.kind.is_drill() {
        "Restore drill"
    } else if event.kind == EventKind::ArchiveAlert {
        "WAL archiving"
    } else {
        "Backup"
    };
    let title = format!("{what} of `{}` ({}) {status}", event.database, event.job);
    let mut fields = vec![
        field("Job", &event.job),
        field("Database", &event.database),
        field("Server", &event.server),
        field("Sidecar", &event.sidecar),
    ];
    if !event.kind.is_drill() {
        fields.push(field(
            "Attempt",
            &format!("{} of {}", event.attempt, event.attempts),
        ));
    }
    if let Some(b) = event.stored_bytes {
        fields.push(field("Stored size", &human_bytes(b)));
    }
    if let Some(b) = event.raw_bytes {
        fields.push(field("Raw size", &human_bytes(b)));
    }
    if let Some(d) = event.duration_secs {
        fields.push(field("Duration", &format!("{d:.1}s")));
    }
    if let Some(k) = &event.key {
        fields.push(json!({"title": "Key", "value": format!("`{k}`"), "short": false}));
    }
    if let Some(n) = event.next_run {
        fields.push(field(
            "Next run",
            &n.format("%Y-%m-%d %H:%M UTC").to_string(),
        ));
    }
    let mut text = String::new();
    if !event.anomalies.is_empty() {
        text.push_str(&format!(
            "*Size anomaly* (the backup before it is kept until `pgsidecar ack`):\n• {}\n",
            event.anomalies.join("\n• ")
        ));
    }
    let others: Vec<&str> = event
        .warnings
        .iter()
        .filter(|w| !event.anomalies.contains(w))
        .map(String::as_str)
        .collect();
    if !others.is_empty() {
        text.push_str(&format!("*Warning:*\n• {}\n", others.join("\n• ")));
    }
    if let Some(summary) = &event.summary {
        text.push_str(summary);
    }
    if let Some(e) = &event.error {
        text.push_str(&format!("*Cause:* {e}"));
    }
    if !event.stderr_tail.is_empty() {
        text.push_str(&format!(
            "\n*{} said:*\n```{}```",
            if event.kind.is_drill() {
                "pg_restore"
            } else {
                "pg_dump"
            },
            event.stderr_tail.join("\n")
        ));
    }
    json!({
        "text": title,
        "attachments": [{
            "color": color,
            "title": title,
            "text": text,
            "fields": fields,
            "footer": "pgsidecar",
            "ts": event.at.timestamp().min(now.timestamp()),
        }]
    })
}

fn field(title: &str, value: &str) -> Value {
    json!({"title": title, "value": value, "short": true})
}

impl Notifier for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }
    fn wants(&self, kind: EventKind) -> bool {
        kind != EventKind::Started
    }
    async fn send(&self, client: &reqwest::Client, event: &Event) -> Result<(), NotifyError> {
        post_json(
            client,
            "Slack webhook",
            self.url.expose(),
            &render(event, Utc::now()),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    // Golden files in snapshots/: after a deliberate change, `INSTA_UPDATE=always cargo test --lib notify::slack` rewrites them; review `git diff`.
    use super::*;
    use crate::notify::tests::{event, now};

    #[test]
    fn success_after_retries_is_a_warning_with_the_facts() {
        let v = render(&event(EventKind::SucceededAfterRetries), now());
        let a = &v["attachments"][0];
        assert_eq!(a["color"], "warning");
        let text = v.to_string();
        for needle in [
            "Attempt",
            "2 of 10",
            "123.0 MiB",
            "456.0 MiB",
            "83.4s",
            "prod/app/2026-11-24T020000Z.dump.zst",
            "2026-11-25 02:00 UTC",
            "db:5432",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn an_anomaly_turns_success_into_a_warning_that_says_what_shrank() {
        let mut e = event(EventKind::Succeeded);
        e.anomalies = vec!["table public.orders is empty (it had 500 rows)".into()];
        e.warnings = e.anomalies.clone();
        let v = render(&e, now());
        assert_eq!(v["attachments"][0]["color"], "warning");
        assert!(v["text"].as_str().unwrap().contains("much smaller"), "{v}");
        assert!(v.to_string().contains("public.orders is empty"), "{v}");
        assert!(v.to_string().contains("Size anomaly"), "{v}");
    }

    /// A destination the backup missed (`policy = "any"`) is a warning, not a size anomaly:
    /// nothing shrank, and `ack` has nothing to do with it.
    #[test]
    fn a_missed_destination_is_a_warning_but_no_size_anomaly() {
        let mut e = event(EventKind::Succeeded);
        e.warnings = vec!["not stored in `offsite`: cannot reach the S3 endpoint".into()];
        let v = render(&e, now());
        let text = v.to_string();
        assert_eq!(v["attachments"][0]["color"], "warning");
        assert!(
            v["text"].as_str().unwrap().ends_with("with a WARNING"),
            "{v}"
        );
        assert!(text.contains("not stored in `offsite`"), "{text}");
        assert!(
            !text.contains("smaller") && !text.contains("pgsidecar ack"),
            "{text}"
        );
    }

    #[test]
    fn drills_say_what_they_found() {
        let mut e = event(EventKind::DrillFailed);
        e.error = Some("`prod/app/x.dump.zst` is damaged: sha256 mismatch".into());
        let v = render(&e, now());
        assert_eq!(v["attachments"][0]["color"], "danger");
        assert_eq!(v["text"], "Restore drill of `app` (prod) FAILED");
        assert!(v.to_string().contains("sha256 mismatch"));
        let mut e = event(EventKind::DrillPassed);
        e.summary = Some("restored in 3.0s: 4 tables, 1000 rows".into());
        let v = render(&e, now());
        assert_eq!(v["attachments"][0]["color"], "good");
        assert!(v.to_string().contains("4 tables, 1000 rows"));
        assert!(!v.to_string().contains("Attempt"));
    }

    #[test]
    fn failure_is_danger_with_cause_and_stderr() {
        let mut e = event(EventKind::Failed);
        e.error = Some("pg_dump exited with status 1".into());
        e.stderr_tail = vec!["pg_dump: error: connection lost".into()];
        let v = render(&e, now());
        assert_eq!(v["attachments"][0]["color"], "danger");
        let text = v["attachments"][0]["text"].as_str().unwrap();
        assert!(
            text.contains("pg_dump exited with status 1") && text.contains("connection lost"),
            "{text}"
        );
    }

    /// The messages as Slack receives them, one golden file per kind of outcome.
    #[test]
    fn golden_messages() {
        insta::assert_json_snapshot!("success", render(&event(EventKind::Succeeded), now()));
        insta::assert_json_snapshot!(
            "success_after_retries",
            render(&event(EventKind::SucceededAfterRetries), now())
        );

        let mut failed = event(EventKind::Failed);
        failed.stored_bytes = None;
        failed.raw_bytes = None;
        failed.key = None;
        failed.error = Some("pg_dump exited with status 1".into());
        failed.stderr_tail = vec![
            "pg_dump: error: connection to server lost".into(),
            "pg_dump: detail: the server closed the connection unexpectedly".into(),
        ];
        insta::assert_json_snapshot!("failure", render(&failed, now()));

        let mut anomaly = event(EventKind::Succeeded);
        anomaly.anomalies = vec![
            "the dump is 2.0 MiB, 90% smaller than the 20.0 MiB before it".into(),
            "table public.orders is empty (it had 500 rows)".into(),
        ];
        anomaly.warnings = anomaly.anomalies.clone();
        anomaly.pruned = 2;
        anomaly.summary = Some("Pruned 2 old backup(s) by the retention policy.".into());
        insta::assert_json_snapshot!("anomaly_warning", render(&anomaly, now()));

        let mut drill = event(EventKind::DrillPassed);
        drill.summary = Some("restored in 3.0s: 4 tables, 1000 rows".into());
        insta::assert_json_snapshot!("drill_passed", render(&drill, now()));
    }

    #[test]
    fn the_timestamp_is_never_in_the_future() {
        let e = event(EventKind::Succeeded);
        let before = e.at - chrono::TimeDelta::hours(1);
        let v = render(&e, before);
        assert_eq!(v["attachments"][0]["ts"], before.timestamp());
    }
}

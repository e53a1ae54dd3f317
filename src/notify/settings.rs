//! Notify: which outcomes are sent, and where (validated settings).

use std::time::Duration;

use serde::Serialize;

use crate::secret::Secret;

/// Which outcomes are notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvents {
    All,
    Failures,
    FailuresAndRecoveries,
}

/// Notification targets and policy.
#[derive(Debug, Clone, Serialize)]
pub struct NotifyConfig {
    pub events: NotifyEvents,
    pub each_attempt: bool,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub slack_webhook_url: Option<Secret>,
    pub webhook_url: Option<Secret>,
    pub ping_start_url: Option<Secret>,
    pub ping_success_url: Option<Secret>,
    pub ping_failure_url: Option<Secret>,
}

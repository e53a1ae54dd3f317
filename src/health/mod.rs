//! Health: the status the daemon keeps, and what `health`, `/healthz` and `/metrics` report
//! from it.

pub mod board;
pub mod http;
pub mod page;
pub mod status;

pub use board::Board;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// What `health` checks against.
#[derive(Debug, Clone, Serialize)]
pub struct HealthConfig {
    pub status_file: PathBuf,
    /// Extra age allowed beyond a schedule's period (default: the retry window plus 30 minutes).
    #[serde(with = "humantime_serde")]
    pub grace: Option<Duration>,
}

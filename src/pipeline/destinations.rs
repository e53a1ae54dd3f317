//! Job: where a backup goes. `[storage]` is the primary; each `[[copies]]` entry is another
//! destination with its own store, prefix and retention, fed by the same dump (3-2-1).

use serde::Serialize;

use crate::retention::Policy;
use crate::storage::StorageConfig;

pub use crate::storage::PRIMARY;

/// One `[[copies]]` entry, validated.
#[derive(Debug, Clone, Serialize)]
pub struct CopyConfig {
    pub name: String,
    pub storage: StorageConfig,
    /// Its own retention; `None`: each job's.
    pub retention: Option<Policy>,
}

/// `destinations.policy`: whether a backup that reached only some destinations is a success
/// (for health, notifications and the exit status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Only a backup stored in every destination counts; a partial one is retried to the
    /// destinations that lack it, then reported as failed.
    All,
    /// A backup stored in at least one destination counts, with a warning naming the others.
    Any,
}

/// A job's place in one destination: the destination's prefix followed by the job's own
/// sub-prefix, so every destination holds the same keys below its prefix.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub destination: String,
    pub prefix: String,
    pub retention: Option<Policy>,
}

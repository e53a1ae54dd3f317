//! Configuration: figment layers (built-in defaults < TOML file < `PGSIDECAR_*` environment)
//! are deserialized into [`RawConfig`], then validated into [`Config`], whose fields are ready
//! to use (URLs parsed, secrets loaded from their files, libpq's variables applied).
//!
//! Invariant: a bad value never gets past [`load`]; its error names the key and where the value
//! came from (file, environment variable), and never echoes a secret.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::codec::{Compression, DEFAULT_ZSTD_LEVEL};
use crate::health::HealthConfig;
use crate::logging::{LogConfig, LogFormat};
use crate::notify::{NotifyConfig, NotifyEvents};
use crate::pipeline::Job;
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::source::{DatabaseConfig, SslMode, ToolsConfig};
use crate::storage::{
    Lifecycle, ObjectLock, Sse, StorageConfig, StorageLocation, S3_MAX_PARTS, S3_MAX_PART_SIZE,
    S3_MIN_PART_SIZE,
};

mod database;
mod layers;
mod raw;
mod storage;
#[cfg(test)]
mod tests;
mod validate;

use database::*;
pub use layers::load_raw;
use layers::*;
pub use raw::*;
pub use storage::parse_storage_url;
use storage::*;
pub use validate::validate;

/// Prefix of every environment variable that sets a configuration key.
pub const ENV_PREFIX: &str = "PGSIDECAR_";
/// Separator of nested keys in environment variable names (`PGSIDECAR_STORAGE__URL`).
pub const ENV_SPLIT: &str = "__";
/// Environment variable naming the TOML file, when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "PGSIDECAR_CONFIG";

/// Errors found while loading or validating configuration. All are permanent: retrying
/// cannot fix them, so the binary exits with the usage/config code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One or more values could not be parsed; each line names a key and its source.
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Parse(Vec<String>),
    /// A value parsed but is not acceptable.
    #[error("invalid configuration: `{key}`{}: {message}", source_suffix(.source_name))]
    Invalid {
        key: String,
        source_name: Option<String>,
        message: String,
    },
    /// The configuration file named by `--config` or `PGSIDECAR_CONFIG` does not exist.
    #[error("configuration file `{}` cannot be read: {source}", .path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn source_suffix(source: &Option<String>) -> String {
    source
        .as_ref()
        .map(|s| format!(" (from {s})"))
        .unwrap_or_default()
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            source_name: None,
            message: message.into(),
        }
    }

    /// The same error about a section checked under another name (`storage.url` of a copy is
    /// `copies.offsite.url`): its key and the keys its message names.
    fn in_section(self, checked_as: &str, section: &str) -> Self {
        match self {
            ConfigError::Invalid {
                key,
                source_name,
                message,
            } => {
                let from = format!("{checked_as}.");
                let to = format!("{section}.");
                ConfigError::Invalid {
                    key: match key.strip_prefix(&from) {
                        Some(rest) => format!("{to}{rest}"),
                        None => key,
                    },
                    source_name,
                    message: message.replace(&from, &to),
                }
            }
            other => other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validated configuration.

/// The configuration every other module receives: complete and checked.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub jobs: Vec<Job>,
    pub storage: StorageConfig,
    pub notify: NotifyConfig,
    pub health: HealthConfig,
    /// Address of the optional `/healthz` and `/metrics` listener.
    pub http_listen: Option<std::net::SocketAddr>,
    /// What `/` and `/metrics` require of a client (`/healthz` requires nothing).
    pub http_auth: Option<crate::health::http::HttpAuth>,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub tools: ToolsConfig,
    pub log: LogConfig,
    /// When restore drills run (they also run by hand with `pgsidecar drill`).
    #[serde(serialize_with = "crate::pipeline::job::serialize_schedule")]
    pub drill_schedule: Option<crate::schedule::Schedule>,
    /// Client-side encryption (one section for every job, and the WAL archive).
    pub encryption: crate::codec::encryption::Encryption,
    pub pitr: crate::pitr::PitrConfig,
    /// Destinations beside `storage`, each fed by the same dump, in the order of their names.
    pub copies: Vec<crate::pipeline::destinations::CopyConfig>,
}

const DEFAULT_GZIP_LEVEL: i32 = 6;
/// Long enough for a multi-terabyte dump at a few hundred MB/s, short enough that a hung
/// attempt is retried the same day.
const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// Where a value came from, for `load`'s callers and tests.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The TOML file, if any.
    pub file: Option<PathBuf>,
    /// The process environment (`PGSIDECAR_*` and libpq's `PG*`).
    pub env: Vec<(String, String)>,
}

impl Sources {
    /// The file from `--config`, else `PGSIDECAR_CONFIG`; and the real environment.
    pub fn from_process(config_file: Option<PathBuf>) -> Self {
        // Variables that are not UTF-8 cannot be configuration; skip them rather than panic.
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let file = config_file.or_else(|| {
            env.iter()
                .find(|(k, _)| k == CONFIG_FILE_ENV)
                .map(|(_, v)| PathBuf::from(v))
        });
        Sources { file, env }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Loads and validates the configuration from its layers.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    // The AWS SDK's default chain reads these itself; an error or a log line must still not
    // show them.
    for name in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        if let Some(value) = sources.var(name) {
            crate::secret::remember(value);
        }
    }
    let raw = load_raw(sources)?;
    validate(raw, sources)
}

impl Config {
    /// The job called `name`, or the only job when `name` is `None`.
    pub fn job(&self, name: Option<&str>) -> Result<&Job, ConfigError> {
        let names = || {
            self.jobs
                .iter()
                .map(|j| j.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) => self.jobs.iter().find(|j| j.name == n).ok_or_else(|| {
                ConfigError::invalid("--job", format!("no job `{n}`; jobs are: {}", names()))
            }),
            None if self.jobs.len() == 1 => Ok(&self.jobs[0]),
            None => Err(ConfigError::invalid(
                "--job",
                format!("several jobs are configured; choose one of: {}", names()),
            )),
        }
    }
}

impl Config {
    /// The effective configuration as TOML, every secret replaced by a placeholder.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

//! Configuration: the raw layers as deserialized, before validation (every field optional,
//! unknown keys refused).

use super::*;

// ---------------------------------------------------------------------------------------------
// Raw configuration: what the layers contain, before validation.

/// The configuration as written, every key optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Name of the single job configured by the top-level keys.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub job: Option<String>,
    /// Schedule of the single job (`PGSIDECAR_SCHEDULE`).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub schedule: Option<String>,
    /// IANA time zone schedules are evaluated in (default: `TZ`, else UTC).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub timezone: Option<String>,
    /// Run at start when the newest backup is older than the last scheduled firing.
    pub catch_up: Option<bool>,
    /// Store the server's roles and tablespaces (`pg_dumpall --globals-only`) with each dump.
    pub globals: Option<bool>,
    /// Time a running backup gets to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
    pub jobs: Option<Vec<RawJob>>,
    pub database: RawDatabase,
    pub storage: RawStorage,
    pub compression: RawCompression,
    pub retry: RawRetry,
    pub notify: RawNotify,
    pub health: RawHealth,
    pub http: RawHttp,
    pub tools: RawTools,
    pub log: RawLog,
    pub drill: RawDrill,
    pub retention: RawRetention,
    pub anomaly: RawAnomaly,
    pub encryption: RawEncryption,
    pub pitr: RawPitr,
    /// `[[copies]]` / `[copies.NAME]` / `PGSIDECAR_COPIES__NAME__…`: destinations beside
    /// `[storage]`, by name (the file's array is keyed by each entry's `name` when read).
    pub copies: std::collections::BTreeMap<String, RawStorage>,
    pub destinations: RawDestinations,
    /// Databases the single job leaves out (with `databases = ["*"]`).
    #[serde(deserialize_with = "lenient::opt_string_list")]
    pub exclude: Option<Vec<String>>,
    /// Databases of the single job (`PGSIDECAR_DATABASES`: a list or `*`).
    #[serde(deserialize_with = "lenient::opt_string_list")]
    pub databases: Option<Vec<String>>,
    /// Databases of one job backed up at once.
    pub max_parallel: Option<usize>,
}

/// `[[jobs]]`: one backup job; unset keys inherit the top-level sections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJob {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string_list")]
    pub databases: Option<Vec<String>>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub schedule: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub timezone: Option<String>,
    /// Sub-prefix under the storage URL (default: the job name).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub prefix: Option<String>,
    pub catch_up: Option<bool>,
    pub globals: Option<bool>,
    #[serde(deserialize_with = "lenient::opt_string_list")]
    pub exclude: Option<Vec<String>>,
    pub max_parallel: Option<usize>,
    pub retention: Option<RawRetention>,
    pub database: Option<RawDatabase>,
    pub compression: Option<RawCompression>,
    pub retry: Option<RawRetry>,
}

/// `[retry]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub backoff: Option<String>,
    #[serde(with = "humantime_serde")]
    pub max_interval: Option<Duration>,
    pub jitter: Option<bool>,
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Option<Duration>,
}

/// `[notify]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNotify {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub events: Option<String>,
    pub each_attempt: Option<bool>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub slack: RawSlack,
    pub webhook: RawWebhook,
    pub ping: RawPing,
}

/// `[notify.slack]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSlack {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub webhook_url: Option<String>,
    pub webhook_url_file: Option<PathBuf>,
}

/// `[notify.webhook]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhook {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
}

/// `[notify.ping]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPing {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub start_url: Option<String>,
    pub start_url_file: Option<PathBuf>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub success_url: Option<String>,
    pub success_url_file: Option<PathBuf>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub failure_url: Option<String>,
    pub failure_url_file: Option<PathBuf>,
}

/// `[drill]`: scheduled restore drills.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDrill {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub schedule: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub timezone: Option<String>,
    /// Server to restore drills into, over the job's connection settings (default: the job's).
    pub database: Option<RawDatabase>,
}

/// `[encryption]`: client-side encryption with age, for every job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEncryption {
    /// age X25519 public keys (`age1…`) new backups are encrypted to; from the environment
    /// one comma-separated string.
    #[serde(deserialize_with = "lenient::opt_string_list")]
    pub recipients: Option<Vec<String>>,
    /// A file with one recipient per line (`#` comments).
    pub recipients_file: Option<PathBuf>,
    /// age identity file (`AGE-SECRET-KEY-1…`) for restore, verify and drills.
    pub identity_file: Option<PathBuf>,
    /// Passphrase (scrypt) instead of recipients; a secret, with a `_file` form.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub passphrase: Option<String>,
    pub passphrase_file: Option<PathBuf>,
}

/// `[health]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub status_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub grace: Option<Duration>,
}

/// `[pitr]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPitr {
    pub enabled: Option<bool>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub slot: Option<String>,
    #[serde(with = "humantime_serde")]
    pub partial_interval: Option<Duration>,
    /// `0s` writes no heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub base_backup_schedule: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub timezone: Option<String>,
    /// The replication role (default: `database.user`).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub user: Option<String>,
    /// Its password (default: `database.password` when `user` is unset).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub spool: Option<PathBuf>,
    pub allow_unbounded_wal: Option<bool>,
    /// Archive lag above which `health` fails and an alert is sent.
    #[serde(with = "humantime_serde")]
    pub max_lag: Option<Duration>,
    /// Which base backups to keep (`[pitr.retention]`, the `[retention]` rules); WAL is kept
    /// from the oldest kept one's start. Unset: nothing is pruned.
    pub retention: RawRetention,
    /// How often the archive is read for holes and the base backup's age is checked.
    #[serde(with = "humantime_serde")]
    pub check_interval: Option<Duration>,
    /// `[pitr.drill]`: scheduled point-in-time restore drills.
    pub drill: RawPitrDrill,
}

/// `[pitr.drill]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPitrDrill {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub schedule: Option<String>,
    /// `newest` or `random`.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub target: Option<String>,
    pub dir: Option<PathBuf>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub query: Option<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// `[http]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub listen: Option<String>,
    /// A token `/` and `/metrics` require as `Authorization: Bearer …` (a secret).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub bearer_token: Option<String>,
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth for `/` and `/metrics`: the user, and its password (a secret).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub basic_auth_user: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub basic_auth_password: Option<String>,
    pub basic_auth_password_file: Option<PathBuf>,
}

/// `[database]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDatabase {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub url: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub url_file: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub user: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub dbname: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub sslmode: Option<String>,
    /// CA certificate(s) the server's certificate must chain to (`verify-ca`, `verify-full`).
    pub sslrootcert: Option<PathBuf>,
    pub passfile: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

/// `[storage]`, and each `[[copies]]` entry (which alone takes `name` and `retention`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    /// A copy's name (`[[copies]]` only).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub name: Option<String>,
    /// Which backups a copy keeps (`[[copies]]` only; the primary's is `[retention]`).
    pub retention: Option<RawRetention>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub url: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub endpoint: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub region: Option<String>,
    pub path_style: Option<bool>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub storage_class: Option<String>,
    pub part_size: Option<bytesize::ByteSize>,
    pub max_parts: Option<u32>,
    pub parts_in_flight: Option<usize>,
    pub part_attempts: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub part_timeout: Option<Duration>,
    /// Static credentials (otherwise the AWS SDK's default chain); the secret key takes a
    /// `_file` like every secret, for Docker secrets.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub access_key_id: Option<String>,
    pub access_key_id_file: Option<PathBuf>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub secret_access_key: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    /// Server-side encryption: `AES256` or `aws:kms`.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub sse: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub sse_kms_key_id: Option<String>,
    /// Tags put on every object (`[storage.tags]`, or `PGSIDECAR_STORAGE__TAGS__<NAME>`).
    pub tags: Option<std::collections::BTreeMap<String, String>>,
    /// Object lock: `GOVERNANCE` or `COMPLIANCE`, with `object_lock_retain`.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub object_lock_mode: Option<String>,
    #[serde(with = "humantime_serde")]
    pub object_lock_retain: Option<Duration>,
    pub lifecycle: RawLifecycle,
}

/// `[destinations]`: how the primary and the copies count together.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDestinations {
    /// `all` or `any`.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub policy: Option<String>,
}

/// `[storage.lifecycle]`: bucket lifecycle rules the sidecar keeps in place for its prefix.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLifecycle {
    pub expire_after_days: Option<u32>,
    pub transition_after_days: Option<u32>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub transition_storage_class: Option<String>,
    pub abort_incomplete_after_days: Option<u32>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub rule_id_prefix: Option<String>,
}

/// `[anomaly]`: when a backup counts as suspiciously smaller than the previous one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAnomaly {
    /// A drop of the dump size or of a table's rows beyond this percentage warns (0: off).
    pub max_drop_percent: Option<u32>,
}

/// `[retention]`: which backups `prune` keeps (restic-style GFS buckets and/or an age).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// `[compression]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCompression {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub algorithm: Option<String>,
    pub level: Option<i32>,
}

/// `[tools]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTools {
    #[serde(deserialize_with = "lenient::opt_path_list")]
    pub bin_dirs: Option<Vec<PathBuf>>,
}

/// `[log]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub format: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub level: Option<String>,
}

/// Environment variables set numbers and booleans as text, and figment guesses their type:
/// a password `12345` arrives as a number. These accept any scalar where a string is meant.
mod lenient {
    use serde::{Deserialize, Deserializer};
    use std::path::PathBuf;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i128),
        F(f64),
        B(bool),
    }

    impl Scalar {
        fn into_string(self) -> String {
            match self {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            }
        }
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_string))
    }

    /// A list of names, or one string of names separated by `,` (`PGSIDECAR_DATABASES=a,b`).
    pub fn opt_string_list<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<String>>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(Scalar),
            Many(Vec<Scalar>),
        }
        Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
            OneOrMany::One(s) => s
                .into_string()
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            OneOrMany::Many(v) => v.into_iter().map(Scalar::into_string).collect(),
        }))
    }

    /// A list of paths, or one string of paths separated by `:` as in `PATH`.
    pub fn opt_path_list<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<PathBuf>>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
            OneOrMany::One(s) => s
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
            OneOrMany::Many(v) => v.into_iter().map(PathBuf::from).collect(),
        }))
    }
}

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
}

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

/// `[http]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub listen: Option<String>,
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

/// `[storage]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
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
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub tools: ToolsConfig,
    pub log: LogConfig,
    /// When restore drills run (they also run by hand with `pgsidecar drill`).
    #[serde(serialize_with = "crate::pipeline::job::serialize_schedule")]
    pub drill_schedule: Option<crate::schedule::Schedule>,
    /// Client-side encryption (one section for every job).
    pub encryption: crate::codec::encryption::Encryption,
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

/// Merges the layers, lowest first, and deserializes them.
pub fn load_raw(sources: &Sources) -> Result<RawConfig, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(path) = &sources.file {
        if let Err(source) = std::fs::metadata(path) {
            return Err(ConfigError::File {
                path: path.clone(),
                source,
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    // The environment must come after the file, or the file would silently win.
    let env = PrefixedEnv(
        sources
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != CONFIG_FILE_ENV)
            .cloned()
            .collect(),
    );
    figment = figment.merge(env);
    figment
        .extract::<RawConfig>()
        .map_err(|e| ConfigError::Parse(e.into_iter().map(describe_figment_error).collect()))
}

/// `PGSIDECAR_SECTION__KEY=value` pairs as a figment provider. Like figment's own `Env`, but
/// over the pairs it is given rather than the process environment, so tests can set them.
struct PrefixedEnv(Vec<(String, String)>);

impl figment::Provider for PrefixedEnv {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("`{ENV_PREFIX}` environment variable(s)"))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, value) in &self.0 {
            let key = name[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace(ENV_SPLIT, ".");
            if key.is_empty() {
                continue;
            }
            if key.split('.').any(str::is_empty) {
                return Err(figment::Error::from(format!(
                    "environment variable {name} does not name a key (use PGSIDECAR_SECTION__KEY)"
                )));
            }
            let nested = figment::util::nest(&key, env_value(value))
                .into_dict()
                .expect("a key without empty segments nests into a dict");
            dict = merge_dicts(dict, nested);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// An environment value as figment would read it, except that a value whose text would change
/// (`007` read as 7, quotes or spaces stripped) stays the exact string: passwords must arrive
/// as typed.
fn env_value(raw: &str) -> figment::value::Value {
    use figment::value::Value;
    let parsed: Value = raw.parse().expect("parsing a value is infallible");
    let same = match &parsed {
        Value::String(_, s) => s == raw,
        Value::Char(_, c) => c.to_string() == raw,
        Value::Bool(_, b) => b.to_string() == raw,
        Value::Num(_, n) => [
            n.to_u128().map(|v| v.to_string()),
            n.to_i128().map(|v| v.to_string()),
            n.to_f64().map(|v| v.to_string()),
        ]
        .iter()
        .flatten()
        .any(|t| t == raw),
        Value::Dict(..) | Value::Array(..) | Value::Empty(..) => true,
    };
    if same {
        parsed
    } else {
        Value::from(raw.to_string())
    }
}

fn merge_dicts(mut a: figment::value::Dict, b: figment::value::Dict) -> figment::value::Dict {
    use figment::value::Value;
    for (k, v) in b {
        let merged = match (a.remove(&k), v) {
            (Some(Value::Dict(_, x)), Value::Dict(tag, y)) => Value::Dict(tag, merge_dicts(x, y)),
            (_, v) => v,
        };
        a.insert(k, merged);
    }
    a
}

/// One line per bad value: the key, where it came from, and what is wrong with it.
fn describe_figment_error(e: figment::Error) -> String {
    use figment::error::Kind;
    let mut path = e.path.clone();
    let message = match &e.kind {
        Kind::UnknownField(field, _) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            "unknown key".to_string()
        }
        Kind::InvalidType(actual, expected) => {
            // The actual value is not echoed: it may be a secret put under the wrong key.
            format!("expected {expected}, found {}", kind_of(actual))
        }
        Kind::Message(m) => m.clone(),
        other => other.to_string(),
    };
    let key = path.join(".");
    let source = match &e.metadata {
        Some(md) if md.name.contains(ENV_PREFIX) => {
            let parts: Vec<String> = path.iter().map(|p| p.to_ascii_uppercase()).collect();
            format!("environment variable {ENV_PREFIX}{}", parts.join(ENV_SPLIT))
        }
        Some(md) => match &md.source {
            Some(figment::Source::File(p)) => format!("file {}", p.display()),
            _ => md.name.to_string(),
        },
        None => "configuration".to_string(),
    };
    if key.is_empty() {
        format!("  {source}: {message}")
    } else {
        format!("  `{key}` (from {source}): {message}")
    }
}

fn kind_of(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a number",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "another type",
    }
}

/// Reads a secret from a `<key>_file`, trimming the trailing newline editors and `echo` add.
fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid(
            &format!("{key}_file"),
            format!("cannot read `{}`: {e}", path.display()),
        )
    })?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

fn secret_value(
    key: &str,
    value: Option<String>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            key,
            format!("set either `{key}` or `{key}_file`, not both"),
        )),
        (Some(v), None) => Ok(Some(Secret::new(v))),
        (None, Some(p)) => read_secret_file(key, p).map(Some),
        (None, None) => Ok(None),
    }
}

/// A secret whose absence is a valid choice (no Slack, an instance role instead of keys).
/// Blank means unset: a compose file's `${VAR:-}` gives an empty value, and Docker refuses an
/// empty secret, so "none" is stored as a lone newline. Not for the passphrase: a blank one
/// must stop the sidecar, not turn encryption off.
fn optional_secret(
    key: &str,
    value: Option<String>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    Ok(secret_value(key, value, file)?.filter(|s| !s.expose().trim().is_empty()))
}

/// Turns the raw layers into a checked [`Config`].
pub fn validate(raw: RawConfig, sources: &Sources) -> Result<Config, ConfigError> {
    let storage = validate_storage(raw.storage)?;
    let encryption = validate_encryption(raw.encryption)?;
    let base_prefix = storage.base_prefix();
    let default_tz = raw
        .timezone
        .clone()
        .or_else(|| {
            sources
                .var("TZ")
                .map(|t| t.trim_start_matches(':').to_string())
        })
        .unwrap_or_else(|| "UTC".to_string());
    let jobs_given = raw.jobs.is_some();
    let raw_jobs = match raw.jobs {
        Some(jobs) => {
            if raw.schedule.is_some() || raw.job.is_some() {
                return Err(ConfigError::invalid(
                    "jobs",
                    "set either [[jobs]] or the single-job keys `job`/`schedule`, not both",
                ));
            }
            if jobs.is_empty() {
                return Err(ConfigError::invalid("jobs", "is empty"));
            }
            jobs
        }
        None => vec![RawJob {
            name: raw.job.clone(),
            schedule: raw.schedule.clone(),
            prefix: Some(String::new()),
            ..RawJob::default()
        }],
    };
    let mut jobs = Vec::new();
    for (i, rj) in raw_jobs.into_iter().enumerate() {
        let key = |k: &str| {
            if jobs_given {
                format!("jobs[{i}].{k}")
            } else {
                k.to_string()
            }
        };
        let name = match rj.name {
            Some(n) => n,
            None if jobs_given => return Err(ConfigError::invalid(&key("name"), "is required")),
            None => "default".to_string(),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Err(ConfigError::invalid(
                &key("name"),
                format!("`{name}` must be letters, digits, `-` or `_`"),
            ));
        }
        if jobs.iter().any(|j: &Job| j.name == name) {
            return Err(ConfigError::invalid(
                &key("name"),
                format!("`{name}` is used twice"),
            ));
        }
        let job_db = merge_database(raw.database.clone(), rj.database.unwrap_or_default());
        // The job's own settings are checked first, so their errors name their own keys.
        let database =
            validate_database(job_db.clone(), sources).map_err(|e| prefix_key(e, jobs_given, i))?;
        let drill_server = validate_database(
            merge_database(job_db, raw.drill.database.clone().unwrap_or_default()),
            sources,
        )
        .map_err(|e| match e {
            ConfigError::Invalid {
                key,
                source_name,
                message,
            } => ConfigError::Invalid {
                key: format!("drill.{key}"),
                source_name,
                message,
            },
            other => other,
        })?;
        let databases = rj
            .databases
            .or(if jobs_given {
                None
            } else {
                raw.databases.clone()
            })
            .unwrap_or_else(|| vec![database.dbname.clone()]);
        if databases.len() > 1 && databases.iter().any(|d| d == "*") {
            return Err(ConfigError::invalid(
                &key("databases"),
                "`*` (every database) cannot be combined with names; use `exclude` to leave some out",
            ));
        }
        let max_drop_percent = raw.anomaly.max_drop_percent.unwrap_or(50);
        if max_drop_percent > 99 {
            return Err(ConfigError::invalid(
                "anomaly.max_drop_percent",
                format!("{max_drop_percent} is outside 0 (off) to 99"),
            ));
        }
        let max_parallel = rj.max_parallel.or(raw.max_parallel).unwrap_or(1);
        if !(1..=32).contains(&max_parallel) {
            return Err(ConfigError::invalid(
                &key("max_parallel"),
                format!("{max_parallel} is outside 1 to 32"),
            ));
        }
        let retention = validate_retention(merge_retention(
            raw.retention.clone(),
            rj.retention.unwrap_or_default(),
        ))
        .map_err(|e| prefix_key(e, jobs_given, i))?;
        if databases.is_empty() || databases.iter().any(|d| d.is_empty()) {
            return Err(ConfigError::invalid(
                &key("databases"),
                "needs at least one database name",
            ));
        }
        let tz_name = rj.timezone.unwrap_or_else(|| default_tz.clone());
        let tz = crate::schedule::parse_tz(&tz_name)
            .map_err(|e| ConfigError::invalid(&key("timezone"), e.to_string()))?;
        let schedule = match rj.schedule.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(expr) => Some(
                crate::schedule::Schedule::parse(expr, tz)
                    .map_err(|e| ConfigError::invalid(&key("schedule"), e.to_string()))?,
            ),
        };
        let sub = rj.prefix.unwrap_or_else(|| name.clone());
        let sub = sub.trim_matches('/');
        let prefix = match (base_prefix.is_empty(), sub.is_empty()) {
            (_, true) => base_prefix.clone(),
            (true, false) => sub.to_string(),
            (false, false) => format!("{base_prefix}/{sub}"),
        };
        let compression = validate_compression(merge_compression(
            raw.compression.clone(),
            rj.compression.unwrap_or_default(),
        ))
        .map_err(|e| prefix_key(e, jobs_given, i))?;
        let retry = validate_retry(merge_retry(raw.retry.clone(), rj.retry.unwrap_or_default()))
            .map_err(|e| prefix_key(e, jobs_given, i))?;
        jobs.push(Job {
            name,
            databases,
            database,
            schedule,
            timezone: tz,
            prefix,
            catch_up: rj.catch_up.or(raw.catch_up).unwrap_or(true),
            globals: rj.globals.or(raw.globals).unwrap_or(false),
            exclude: rj.exclude.or(raw.exclude.clone()).unwrap_or_default(),
            max_parallel,
            retention,
            max_drop_percent,
            compression,
            retry,
            drill_server,
            encryption: encryption.clone(),
        });
    }
    let drill_schedule = match raw.drill.schedule.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(expr) => {
            let tz_name = raw.drill.timezone.clone().unwrap_or(default_tz.clone());
            let tz = crate::schedule::parse_tz(&tz_name)
                .map_err(|e| ConfigError::invalid("drill.timezone", e.to_string()))?;
            Some(
                crate::schedule::Schedule::parse(expr, tz)
                    .map_err(|e| ConfigError::invalid("drill.schedule", e.to_string()))?,
            )
        }
    };
    let http_listen = match raw.http.listen {
        None => None,
        Some(l) if l.is_empty() => None,
        Some(l) => Some(l.parse().map_err(|_| {
            ConfigError::invalid(
                "http.listen",
                format!("`{l}` is not an address such as 0.0.0.0:9187"),
            )
        })?),
    };
    Ok(Config {
        jobs,
        storage,
        notify: validate_notify(raw.notify)?,
        health: HealthConfig {
            status_file: raw
                .health
                .status_file
                .unwrap_or_else(|| std::env::temp_dir().join("pgsidecar-status.json")),
            grace: raw.health.grace,
        },
        http_listen,
        shutdown_grace: raw.shutdown_grace.unwrap_or(Duration::from_secs(30)),
        tools: ToolsConfig {
            bin_dirs: raw.tools.bin_dirs.unwrap_or_default(),
        },
        log: validate_log(raw.log)?,
        drill_schedule,
        encryption,
    })
}

/// Checks that every configured key parses. Errors name the key and, for files, the line;
/// none quotes a key or the passphrase. An empty value (a compose file's `${VAR:-}`) means
/// unset.
fn validate_encryption(
    raw: RawEncryption,
) -> Result<crate::codec::encryption::Encryption, ConfigError> {
    use crate::codec::encryption::{self, Encryption};
    let nonempty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
    let mut recipients = encryption::parse_recipients(&raw.recipients.unwrap_or_default())
        .map_err(|m| ConfigError::invalid("encryption.recipients", m))?;
    if let Some(path) = nonempty(raw.recipients_file) {
        recipients.extend(
            encryption::read_recipients_file(&path)
                .map_err(|e| ConfigError::invalid("encryption.recipients_file", e.to_string()))?,
        );
    }
    let passphrase = secret_value(
        "encryption.passphrase",
        raw.passphrase.filter(|p| !p.is_empty()),
        nonempty(raw.passphrase_file).as_deref(),
    )?;
    if passphrase.as_ref().is_some_and(|p| p.expose().is_empty()) {
        return Err(ConfigError::invalid(
            "encryption.passphrase_file",
            "the file is empty",
        ));
    }
    let mut encryption = Encryption::new(recipients, passphrase).map_err(|m| {
        ConfigError::invalid(
            "encryption.passphrase",
            format!("{m}: encryption.recipients / encryption.recipients_file encrypt to age public keys, encryption.passphrase to a passphrase"),
        )
    })?;
    if let Some(path) = nonempty(raw.identity_file) {
        encryption = encryption
            .with_identity_file(&path, "encryption.identity_file")
            .map_err(|e| ConfigError::invalid("encryption.identity_file", e.to_string()))?;
    }
    Ok(encryption)
}

/// Names a job's key as `jobs[i].section.key` in errors from a shared validator.
fn prefix_key(e: ConfigError, jobs_given: bool, i: usize) -> ConfigError {
    match e {
        ConfigError::Invalid {
            key,
            source_name,
            message,
        } if jobs_given => ConfigError::Invalid {
            key: format!("jobs[{i}].{key} (or {key})"),
            source_name,
            message,
        },
        other => other,
    }
}

/// Field-wise override: `Some` in `over` wins.
macro_rules! merge_fields {
    ($base:expr, $over:expr, $($f:ident),+) => {{
        let (mut b, o) = ($base, $over);
        $( if o.$f.is_some() { b.$f = o.$f; } )+
        b
    }};
}

fn merge_database(base: RawDatabase, over: RawDatabase) -> RawDatabase {
    merge_fields!(
        base,
        over,
        url,
        url_file,
        host,
        port,
        user,
        password,
        password_file,
        dbname,
        sslmode,
        sslrootcert,
        passfile,
        connect_timeout
    )
}

fn merge_compression(base: RawCompression, over: RawCompression) -> RawCompression {
    merge_fields!(base, over, algorithm, level)
}

fn merge_retry(base: RawRetry, over: RawRetry) -> RawRetry {
    merge_fields!(
        base,
        over,
        attempts,
        interval,
        backoff,
        max_interval,
        jitter,
        attempt_timeout
    )
}

fn merge_retention(base: RawRetention, over: RawRetention) -> RawRetention {
    merge_fields!(
        base,
        over,
        keep_last,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        max_age
    )
}

fn validate_retention(raw: RawRetention) -> Result<Option<crate::retention::Policy>, ConfigError> {
    let policy = crate::retention::Policy {
        keep_last: raw.keep_last,
        keep_hourly: raw.keep_hourly,
        keep_daily: raw.keep_daily,
        keep_weekly: raw.keep_weekly,
        keep_monthly: raw.keep_monthly,
        keep_yearly: raw.keep_yearly,
        max_age: raw.max_age,
    };
    if policy.is_empty() {
        return Ok(None);
    }
    // A zero would silently mean "keep none by this rule"; an empty section is how to turn
    // pruning off, so a zero is more likely a mistake.
    for (name, v) in [
        ("keep_last", raw.keep_last),
        ("keep_hourly", raw.keep_hourly),
        ("keep_daily", raw.keep_daily),
        ("keep_weekly", raw.keep_weekly),
        ("keep_monthly", raw.keep_monthly),
        ("keep_yearly", raw.keep_yearly),
    ] {
        if v == Some(0) {
            return Err(ConfigError::invalid(
                &format!("retention.{name}"),
                "must be at least 1 (leave it out to not use this rule)",
            ));
        }
    }
    if raw.max_age.is_some_and(|d| d < Duration::from_secs(3600)) {
        return Err(ConfigError::invalid(
            "retention.max_age",
            "must be at least 1h",
        ));
    }
    Ok(Some(policy))
}

fn validate_retry(raw: RawRetry) -> Result<RetryPolicy, ConfigError> {
    let attempts = raw.attempts.unwrap_or(10);
    if !(1..=1000).contains(&attempts) {
        return Err(ConfigError::invalid(
            "retry.attempts",
            format!("{attempts} is outside 1 to 1000"),
        ));
    }
    let interval = raw.interval.unwrap_or(Duration::from_secs(600));
    let exponential = match raw.backoff.as_deref().unwrap_or("fixed") {
        "fixed" => false,
        "exponential" => true,
        other => {
            return Err(ConfigError::invalid(
                "retry.backoff",
                format!("`{other}` is not one of fixed, exponential"),
            ))
        }
    };
    let max_interval = raw
        .max_interval
        .unwrap_or(Duration::from_secs(3600))
        .max(interval);
    let attempt_timeout = raw.attempt_timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT);
    if attempt_timeout < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "retry.attempt_timeout",
            "must be at least 1s",
        ));
    }
    Ok(RetryPolicy {
        attempts,
        interval,
        exponential,
        max_interval,
        jitter: raw.jitter.unwrap_or(false),
        attempt_timeout,
    })
}

fn validate_url_secret(
    key: &str,
    value: Option<String>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    let secret = optional_secret(key, value, file)?;
    if let Some(s) = &secret {
        match url::Url::parse(s.expose()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            // The value is a secret: say what is wrong without quoting it.
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    "is not an http:// or https:// URL",
                ))
            }
        }
    }
    Ok(secret)
}

fn validate_notify(raw: RawNotify) -> Result<NotifyConfig, ConfigError> {
    let events = match raw.events.as_deref().unwrap_or("all") {
        "all" => NotifyEvents::All,
        "failures" => NotifyEvents::Failures,
        "failures_and_recoveries" => NotifyEvents::FailuresAndRecoveries,
        other => {
            return Err(ConfigError::invalid(
                "notify.events",
                format!("`{other}` is not one of all, failures, failures_and_recoveries"),
            ))
        }
    };
    let timeout = raw.timeout.unwrap_or(Duration::from_secs(10));
    if timeout.is_zero() {
        return Err(ConfigError::invalid("notify.timeout", "must be above zero"));
    }
    Ok(NotifyConfig {
        events,
        each_attempt: raw.each_attempt.unwrap_or(false),
        timeout,
        slack_webhook_url: validate_url_secret(
            "notify.slack.webhook_url",
            raw.slack.webhook_url,
            raw.slack.webhook_url_file.as_deref(),
        )?,
        webhook_url: validate_url_secret(
            "notify.webhook.url",
            raw.webhook.url,
            raw.webhook.url_file.as_deref(),
        )?,
        ping_start_url: validate_url_secret(
            "notify.ping.start_url",
            raw.ping.start_url,
            raw.ping.start_url_file.as_deref(),
        )?,
        ping_success_url: validate_url_secret(
            "notify.ping.success_url",
            raw.ping.success_url,
            raw.ping.success_url_file.as_deref(),
        )?,
        ping_failure_url: validate_url_secret(
            "notify.ping.failure_url",
            raw.ping.failure_url,
            raw.ping.failure_url_file.as_deref(),
        )?,
    })
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

fn validate_database(raw: RawDatabase, sources: &Sources) -> Result<DatabaseConfig, ConfigError> {
    // Precedence: explicit `database.*` keys, then `database.url`, then libpq's variables.
    let url = optional_secret(
        "database.url",
        raw.url,
        raw.url_file.as_deref().map(Path::new),
    )?;
    let from_url = match &url {
        Some(u) => Some(parse_database_url(u)?),
        None => None,
    };
    let from_url = from_url.unwrap_or_default();

    let host = raw
        .host
        .or(from_url.host)
        .or_else(|| sources.var("PGHOST").map(str::to_string))
        .unwrap_or_else(|| "localhost".to_string());
    if host.starts_with('/') {
        return Err(ConfigError::invalid(
            "database.host",
            format!("`{host}` is a Unix socket directory; pgsidecar connects over TCP: give a host name"),
        ));
    }
    let port = match raw.port.or(from_url.port) {
        Some(p) => p,
        None => match sources.var("PGPORT") {
            Some(p) => p.parse().map_err(|_| ConfigError::Invalid {
                key: "database.port".into(),
                source_name: Some("environment variable PGPORT".into()),
                message: format!("`{p}` is not a port number"),
            })?,
            None => 5432,
        },
    };
    let user = raw
        .user
        .or(from_url.user)
        .or_else(|| sources.var("PGUSER").map(str::to_string))
        .unwrap_or_else(|| "postgres".to_string());
    let dbname = raw
        .dbname
        .or(from_url.dbname)
        .or_else(|| sources.var("PGDATABASE").map(str::to_string))
        .unwrap_or_else(|| user.clone());
    let sslmode_text = raw
        .sslmode
        .or(from_url.sslmode)
        .or_else(|| sources.var("PGSSLMODE").map(str::to_string))
        .unwrap_or_else(|| "prefer".to_string());
    let sslmode = match sslmode_text.as_str() {
        "disable" => SslMode::Disable,
        "prefer" | "allow" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(ConfigError::invalid(
                "database.sslmode",
                format!("`{other}` is not an sslmode (disable, allow, prefer, require, verify-ca, verify-full)"),
            ))
        }
    };
    let sslrootcert = raw
        .sslrootcert
        .or(from_url.sslrootcert)
        .or_else(|| sources.var("PGSSLROOTCERT").map(PathBuf::from));
    if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) {
        match &sslrootcert {
            None => {
                return Err(ConfigError::invalid(
                    "database.sslrootcert",
                    format!("is required with sslmode `{sslmode_text}`: the CA certificate the server's certificate must chain to (PGSIDECAR_DATABASE__SSLROOTCERT)"),
                ))
            }
            Some(p) if !p.is_file() => {
                return Err(ConfigError::invalid(
                    "database.sslrootcert",
                    format!("`{}` is not a readable file", p.display()),
                ))
            }
            Some(_) => {}
        }
    }
    let mut password = optional_secret(
        "database.password",
        raw.password,
        raw.password_file.as_deref(),
    )?
    .or(from_url.password)
    .or_else(|| sources.var("PGPASSWORD").map(Secret::new));
    if password.is_none() {
        let passfile = raw
            .passfile
            .or_else(|| sources.var("PGPASSFILE").map(PathBuf::from))
            .or_else(|| sources.var("HOME").map(|h| Path::new(h).join(".pgpass")));
        if let Some(path) = passfile {
            password = crate::source::pgpass::lookup(&path, &host, port, &dbname, &user);
        }
    }
    Ok(DatabaseConfig {
        host,
        port,
        user,
        password,
        dbname,
        sslmode,
        sslrootcert,
        connect_timeout: raw.connect_timeout.unwrap_or(Duration::from_secs(10)),
    })
}

#[derive(Default)]
struct UrlParts {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<Secret>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
}

/// Parses `postgres://user:pass@host:port/db?sslmode=…`. Errors never quote the URL: it may
/// hold a password.
fn parse_database_url(url: &Secret) -> Result<UrlParts, ConfigError> {
    let parsed = url::Url::parse(url.expose())
        .map_err(|e| ConfigError::invalid("database.url", format!("not a valid URL ({e})")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(ConfigError::invalid(
            "database.url",
            format!(
                "scheme `{}` is not supported: use postgres://user:password@host:port/database",
                parsed.scheme()
            ),
        ));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut parts = UrlParts {
        host: parsed.host_str().filter(|h| !h.is_empty()).map(decode),
        port: parsed.port(),
        user: Some(parsed.username())
            .filter(|u| !u.is_empty())
            .map(decode),
        password: parsed.password().map(|p| Secret::new(decode(p))),
        dbname: Some(parsed.path().trim_start_matches('/'))
            .filter(|d| !d.is_empty())
            .map(decode),
        sslmode: None,
        sslrootcert: None,
    };
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "sslmode" => parts.sslmode = Some(v.into_owned()),
            "sslrootcert" => parts.sslrootcert = Some(PathBuf::from(v.into_owned())),
            "host" => parts.host = Some(v.into_owned()),
            "port" => {
                parts.port = Some(v.parse().map_err(|_| {
                    ConfigError::invalid("database.url", format!("port `{v}` is not a number"))
                })?)
            }
            "user" => parts.user = Some(v.into_owned()),
            "dbname" => parts.dbname = Some(v.into_owned()),
            "application_name" | "connect_timeout" => {}
            other => {
                return Err(ConfigError::invalid(
                    "database.url",
                    format!("parameter `{other}` is not supported"),
                ))
            }
        }
    }
    Ok(parts)
}

fn validate_storage(raw: RawStorage) -> Result<StorageConfig, ConfigError> {
    let url = raw.url.ok_or_else(|| {
        ConfigError::invalid(
            "storage.url",
            "is required: set PGSIDECAR_STORAGE__URL=s3://bucket/prefix (or file:///path)",
        )
    })?;
    let location = parse_storage_url(&url)?;
    // An empty value (a compose file's `${VAR:-}`) means unset.
    let endpoint = raw.endpoint.filter(|e| !e.trim().is_empty());
    // Blank values and files mean "use the AWS default chain" (an instance role), so one
    // compose file serves both.
    let access_key_id = optional_secret(
        "storage.access_key_id",
        raw.access_key_id,
        raw.access_key_id_file.as_deref(),
    )?;
    let secret_access_key = optional_secret(
        "storage.secret_access_key",
        raw.secret_access_key,
        raw.secret_access_key_file.as_deref(),
    )?;
    if access_key_id.is_some() != secret_access_key.is_some() {
        return Err(ConfigError::invalid(
            if access_key_id.is_some() {
                "storage.secret_access_key"
            } else {
                "storage.access_key_id"
            },
            "set both storage.access_key_id and storage.secret_access_key (or neither, for the AWS default chain)",
        ));
    }
    if let Some(endpoint) = &endpoint {
        let parsed = url::Url::parse(endpoint).map_err(|e| {
            ConfigError::invalid(
                "storage.endpoint",
                format!("`{endpoint}` is not a URL ({e})"),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ConfigError::invalid(
                "storage.endpoint",
                format!("`{endpoint}` must be an http:// or https:// URL"),
            ));
        }
    }
    let part_size = raw.part_size.map(|s| s.as_u64());
    if let Some(size) = part_size {
        if !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&size) {
            return Err(ConfigError::invalid(
                "storage.part_size",
                format!("{size} bytes is outside S3's limits of 5 MiB to 5 GiB"),
            ));
        }
    }
    let max_parts = raw.max_parts.unwrap_or(S3_MAX_PARTS);
    if !(1..=S3_MAX_PARTS).contains(&max_parts) {
        return Err(ConfigError::invalid(
            "storage.max_parts",
            format!("{max_parts} is outside 1 to {S3_MAX_PARTS}"),
        ));
    }
    let parts_in_flight = raw.parts_in_flight.unwrap_or(2);
    if !(1..=64).contains(&parts_in_flight) {
        return Err(ConfigError::invalid(
            "storage.parts_in_flight",
            format!("{parts_in_flight} is outside 1 to 64"),
        ));
    }
    let part_attempts = raw.part_attempts.unwrap_or(5);
    if part_attempts == 0 {
        return Err(ConfigError::invalid(
            "storage.part_attempts",
            "must be at least 1",
        ));
    }
    let part_timeout = raw.part_timeout.unwrap_or(Duration::from_secs(120));
    if part_timeout.is_zero() {
        return Err(ConfigError::invalid(
            "storage.part_timeout",
            "must be above zero",
        ));
    }
    let sse = match raw.sse.as_deref() {
        None | Some("") => {
            if raw.sse_kms_key_id.is_some() {
                return Err(ConfigError::invalid(
                    "storage.sse_kms_key_id",
                    "needs storage.sse = \"aws:kms\"",
                ));
            }
            None
        }
        Some("AES256") => Some(Sse::Aes256),
        Some("aws:kms") => Some(Sse::Kms {
            key_id: raw.sse_kms_key_id.clone(),
        }),
        Some(other) => {
            return Err(ConfigError::invalid(
                "storage.sse",
                format!("`{other}` is not `AES256` or `aws:kms`"),
            ))
        }
    };
    let object_lock = match (raw.object_lock_mode.as_deref(), raw.object_lock_retain) {
        (None, None) => None,
        (Some(mode @ ("GOVERNANCE" | "COMPLIANCE")), Some(retain)) if !retain.is_zero() => {
            Some(ObjectLock {
                mode: mode.to_string(),
                retain,
            })
        }
        (Some(mode), _) if !matches!(mode, "GOVERNANCE" | "COMPLIANCE") => {
            return Err(ConfigError::invalid(
                "storage.object_lock_mode",
                format!("`{mode}` is not `GOVERNANCE` or `COMPLIANCE`"),
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "storage.object_lock_mode",
                "is required with storage.object_lock_retain (`GOVERNANCE` or `COMPLIANCE`)",
            ))
        }
        _ => {
            return Err(ConfigError::invalid(
                "storage.object_lock_retain",
                "is required with storage.object_lock_mode and must be above zero (e.g. `30d`)",
            ))
        }
    };
    let l = raw.lifecycle;
    let lifecycle = if l.expire_after_days.is_none()
        && l.transition_after_days.is_none()
        && l.abort_incomplete_after_days.is_none()
    {
        if l.transition_storage_class.is_some() {
            return Err(ConfigError::invalid(
                "storage.lifecycle.transition_storage_class",
                "needs storage.lifecycle.transition_after_days",
            ));
        }
        None
    } else {
        for (k, v) in [
            ("expire_after_days", l.expire_after_days),
            ("transition_after_days", l.transition_after_days),
            ("abort_incomplete_after_days", l.abort_incomplete_after_days),
        ] {
            if v == Some(0) {
                return Err(ConfigError::invalid(
                    &format!("storage.lifecycle.{k}"),
                    "must be at least 1",
                ));
            }
        }
        let transition = match (l.transition_after_days, l.transition_storage_class) {
            (None, None) => None,
            (Some(d), Some(c)) => Some((d, c)),
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "storage.lifecycle.transition_storage_class",
                    "is required with transition_after_days (e.g. `GLACIER_IR`)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "storage.lifecycle.transition_after_days",
                    "is required with transition_storage_class",
                ))
            }
        };
        if let (Some(e), Some((t, _))) = (l.expire_after_days, &transition) {
            if *t >= e {
                return Err(ConfigError::invalid(
                    "storage.lifecycle.transition_after_days",
                    format!("{t} is not before expire_after_days ({e})"),
                ));
            }
        }
        Some(Lifecycle {
            expire_after_days: l.expire_after_days,
            transition,
            abort_incomplete_after_days: l.abort_incomplete_after_days.unwrap_or(1),
            rule_id_prefix: l.rule_id_prefix.unwrap_or_else(|| "pgsidecar".to_string()),
        })
    };
    let tags = raw.tags.unwrap_or_default();
    if tags.len() > 10 {
        return Err(ConfigError::invalid(
            "storage.tags",
            format!("has {} tags; S3 allows at most 10 per object", tags.len()),
        ));
    }
    // S3's tag alphabet: letters, digits, spaces and `+ - = . _ : / @`.
    let tag_ok = |t: &str| {
        t.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "+-=._:/@".contains(c))
    };
    for (k, v) in &tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 || !tag_ok(k) || !tag_ok(v) {
            return Err(ConfigError::invalid(
                &format!("storage.tags.{k}"),
                format!("`{k}={v}`: keys are 1-128 and values up to 256 characters of letters, digits, spaces and + - = . _ : / @"),
            ));
        }
    }
    Ok(StorageConfig {
        access_key_id,
        secret_access_key,
        sse,
        tags,
        object_lock,
        lifecycle,
        url,
        location,
        endpoint,
        region: raw.region.filter(|r| !r.trim().is_empty()),
        path_style: raw.path_style,
        storage_class: raw.storage_class,
        part_size,
        max_parts,
        parts_in_flight,
        part_attempts,
        part_timeout,
    })
}

/// Parses `s3://bucket/prefix` or `file:///path`.
pub fn parse_storage_url(text: &str) -> Result<StorageLocation, ConfigError> {
    let bad = |m: String| ConfigError::invalid("storage.url", m);
    let parsed = url::Url::parse(text).map_err(|e| bad(format!("`{text}` is not a URL ({e})")))?;
    match parsed.scheme() {
        "s3" => {
            let bucket = parsed.host_str().unwrap_or_default().to_string();
            if !valid_bucket_name(&bucket) {
                return Err(bad(format!(
                    "`{bucket}` is not a valid bucket name (3-63 characters: lower-case letters, digits, `.` and `-`)"
                )));
            }
            // The prefix as written, not as a URL encodes it: `s3://b/nightly backups` means
            // the keys `nightly backups/…`, as other S3 tools and IAM policies read it (the
            // URL form would store `nightly%20backups/…`). Only control characters are refused.
            let after_bucket = &text["s3://".len().min(text.len())..];
            let written = after_bucket.split_once('/').map_or("", |(_, p)| p);
            if let Some(c) = written.chars().find(|c| c.is_control()) {
                return Err(bad(format!(
                    "the prefix `{}` holds the control character U+{:04X}",
                    written.escape_debug(),
                    c as u32
                )));
            }
            let prefix = written.trim_matches('/').to_string();
            Ok(StorageLocation::S3 { bucket, prefix })
        }
        "file" => {
            let root = parsed
                .to_file_path()
                .map_err(|_| bad(format!("`{text}` is not an absolute file path")))?;
            Ok(StorageLocation::Local { root })
        }
        other => Err(bad(format!(
            "scheme `{other}` is not supported: use s3://bucket/prefix or file:///path"
        ))),
    }
}

fn valid_bucket_name(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn validate_compression(raw: RawCompression) -> Result<Compression, ConfigError> {
    let algorithm = raw.algorithm.unwrap_or_else(|| "zstd".to_string());
    let check = |range: std::ops::RangeInclusive<i32>, default: i32| {
        let level = raw.level.unwrap_or(default);
        if range.contains(&level) {
            Ok(level)
        } else {
            Err(ConfigError::invalid(
                "compression.level",
                format!(
                    "{level} is outside {}..={} for {algorithm}",
                    range.start(),
                    range.end()
                ),
            ))
        }
    };
    match algorithm.as_str() {
        "zstd" => Ok(Compression::Zstd {
            level: check(1..=19, DEFAULT_ZSTD_LEVEL)?,
        }),
        "gzip" => Ok(Compression::Gzip {
            level: check(1..=9, DEFAULT_GZIP_LEVEL)?,
        }),
        "none" => Ok(Compression::None),
        other => Err(ConfigError::invalid(
            "compression.algorithm",
            format!("`{other}` is not one of zstd, gzip, none"),
        )),
    }
}

fn validate_log(raw: RawLog) -> Result<LogConfig, ConfigError> {
    let format = match raw.format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError::invalid(
                "log.format",
                format!("`{other}` is not one of text, json"),
            ))
        }
    };
    let level = raw.level.unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        return Err(ConfigError::invalid(
            "log.level",
            format!("`{level}` is not a level (error, warn, info, debug, trace) or filter"),
        ));
    }
    Ok(LogConfig { format, level })
}

impl Config {
    /// The effective configuration as TOML, every secret replaced by a placeholder.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    /// Regression: `s3://b/nightly backups` was stored as `nightly%20backups/…`.
    #[test]
    fn storage_prefixes_are_taken_as_written() {
        for (url, want) in [
            ("s3://bucket-a/nightly backups", "nightly backups"),
            ("s3://bucket-a/sauvegardes/données/", "sauvegardes/données"),
            ("s3://bucket-a/already%20encoded", "already%20encoded"),
            ("s3://bucket-a", ""),
            ("s3://bucket-a/", ""),
        ] {
            match super::parse_storage_url(url).unwrap() {
                super::StorageLocation::S3 { prefix, .. } => assert_eq!(prefix, want, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let err = super::parse_storage_url("s3://bucket-a/a\tb").unwrap_err();
        assert!(
            err.to_string().contains("control character U+0009"),
            "{err}"
        );
    }

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            file: None,
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    const URL: (&str, &str) = ("PGSIDECAR_STORAGE__URL", "s3://bucket-a/prod");

    #[test]
    fn libpq_variables_are_defaults_and_keys_override_them() {
        let c = load(&env(&[
            URL,
            ("PGHOST", "db"),
            ("PGPORT", "6543"),
            ("PGUSER", "app"),
            ("PGPASSWORD", "pw"),
            ("PGDATABASE", "app_prod"),
            ("PGSIDECAR_DATABASE__HOST", "other"),
        ]))
        .unwrap();
        assert_eq!(c.jobs[0].database.host, "other");
        assert_eq!(c.jobs[0].database.port, 6543);
        assert_eq!(c.jobs[0].database.user, "app");
        assert_eq!(c.jobs[0].database.dbname, "app_prod");
        assert_eq!(c.jobs[0].database.password.as_ref().unwrap().expose(), "pw");
        assert_eq!(
            c.storage.location,
            StorageLocation::S3 {
                bucket: "bucket-a".into(),
                prefix: "prod".into()
            }
        );
    }

    #[test]
    fn numeric_password_from_env_stays_a_string() {
        let c = load(&env(&[URL, ("PGSIDECAR_DATABASE__PASSWORD", "12345")])).unwrap();
        assert_eq!(
            c.jobs[0].database.password.as_ref().unwrap().expose(),
            "12345"
        );
    }

    #[test]
    fn env_secrets_arrive_exactly_as_typed() {
        for pw in ["007", "1.50", "+5", " padded ", "\"quoted\"", "true"] {
            let c = load(&env(&[URL, ("PGSIDECAR_DATABASE__PASSWORD", pw)])).unwrap();
            assert_eq!(c.jobs[0].database.password.as_ref().unwrap().expose(), pw);
        }
        let c = load(&env(&[URL, ("PGSIDECAR_DATABASE__PORT", "6432")])).unwrap();
        assert_eq!(c.jobs[0].database.port, 6432);
    }

    #[test]
    fn malformed_variable_names_are_errors_not_panics() {
        for name in [
            "PGSIDECAR___X",
            "PGSIDECAR_STORAGE____URL",
            "PGSIDECAR_STORAGE__",
        ] {
            let err = load(&env(&[URL, (name, "x")])).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn url_with_escaped_password_is_decoded() {
        let c = load(&env(&[
            URL,
            (
                "PGSIDECAR_DATABASE__URL",
                "postgres://u:p%3A%40%2F%3F%23%25@h:7777/d%20b?sslmode=disable",
            ),
        ]))
        .unwrap();
        assert_eq!(
            c.jobs[0].database.password.as_ref().unwrap().expose(),
            "p:@/?#%"
        );
        assert_eq!(c.jobs[0].database.dbname, "d b");
        assert_eq!(c.jobs[0].database.port, 7777);
        assert_eq!(c.jobs[0].database.sslmode, SslMode::Disable);
    }

    #[test]
    fn wrong_type_names_key_and_env_var() {
        let err = load(&env(&[URL, ("PGSIDECAR_DATABASE__PORT", "abc")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`database.port`"), "{text}");
        assert!(text.contains("PGSIDECAR_DATABASE__PORT"), "{text}");
    }

    #[test]
    fn unknown_env_key_is_rejected_by_name() {
        let err = load(&env(&[URL, ("PGSIDECAR_STORAGE__URLL", "x")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`storage.urll`"), "{text}");
        assert!(text.contains("unknown key"), "{text}");
    }

    #[test]
    fn unknown_file_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[storage]\nurl = \"s3://bucket-a/x\"\nbogus = 1\n").unwrap();
        let err = load(&Sources {
            file: Some(path.clone()),
            env: vec![],
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("`storage.bogus`"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[storage]\nurl = \"s3://from-file/x\"\n").unwrap();
        let c = load(&Sources {
            file: Some(path),
            env: vec![("PGSIDECAR_STORAGE__URL".into(), "s3://from-env/y".into())],
        })
        .unwrap();
        assert_eq!(c.storage.url, "s3://from-env/y");
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let c = load(&env(&[
            URL,
            ("PGSIDECAR_DATABASE__PASSWORD_FILE", path.to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(
            c.jobs[0].database.password.as_ref().unwrap().expose(),
            "s3cret"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (k, v, key) in [
            ("PGSIDECAR_STORAGE__URL", "ftp://x/y", "storage.url"),
            ("PGSIDECAR_STORAGE__URL", "s3://UPPER/y", "storage.url"),
            ("PGSIDECAR_COMPRESSION__LEVEL", "40", "compression.level"),
            (
                "PGSIDECAR_RETRY__ATTEMPT_TIMEOUT",
                "0s",
                "retry.attempt_timeout",
            ),
            (
                "PGSIDECAR_COMPRESSION__ALGORITHM",
                "lz5",
                "compression.algorithm",
            ),
            ("PGSIDECAR_STORAGE__PART_SIZE", "1MiB", "storage.part_size"),
            (
                "PGSIDECAR_STORAGE__ENDPOINT",
                "not a url",
                "storage.endpoint",
            ),
            ("PGSIDECAR_DATABASE__URL", "mysql://x", "database.url"),
            ("PGSIDECAR_LOG__FORMAT", "xml", "log.format"),
            ("PGSIDECAR_DATABASE__SSLMODE", "maybe", "database.sslmode"),
            (
                "PGSIDECAR_RETENTION__KEEP_DAILY",
                "0",
                "retention.keep_daily",
            ),
            ("PGSIDECAR_RETENTION__MAX_AGE", "5m", "retention.max_age"),
            ("PGSIDECAR_DATABASES", "*,app", "databases"),
            ("PGSIDECAR_MAX_PARALLEL", "0", "max_parallel"),
            ("PGSIDECAR_STORAGE__SSE", "rot13", "storage.sse"),
            (
                "PGSIDECAR_STORAGE__SSE_KMS_KEY_ID",
                "k",
                "storage.sse_kms_key_id",
            ),
            (
                "PGSIDECAR_STORAGE__OBJECT_LOCK_MODE",
                "FOREVER",
                "storage.object_lock_mode",
            ),
            (
                "PGSIDECAR_STORAGE__OBJECT_LOCK_MODE",
                "COMPLIANCE",
                "storage.object_lock_retain",
            ),
            (
                "PGSIDECAR_STORAGE__LIFECYCLE__TRANSITION_AFTER_DAYS",
                "30",
                "storage.lifecycle.transition_storage_class",
            ),
            (
                "PGSIDECAR_DRILL__SCHEDULE",
                "every tuesday",
                "drill.schedule",
            ),
            ("PGSIDECAR_STORAGE__TAGS__TEAM", "a&b", "storage.tags.team"),
        ] {
            let mut e = vec![URL];
            e.retain(|(name, _)| *name != k);
            e.push((k, v));
            let err = load(&env(&e)).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{k}={v}: {err}");
        }
    }

    #[test]
    fn databases_retention_and_storage_features_from_env() {
        let c = load(&env(&[
            URL,
            ("PGSIDECAR_DATABASES", "*"),
            ("PGSIDECAR_EXCLUDE", "postgres, scratch"),
            ("PGSIDECAR_RETENTION__KEEP_DAILY", "7"),
            ("PGSIDECAR_RETENTION__MAX_AGE", "90d"),
            ("PGSIDECAR_STORAGE__SSE", "aws:kms"),
            ("PGSIDECAR_STORAGE__SSE_KMS_KEY_ID", "alias/backups"),
            ("PGSIDECAR_STORAGE__TAGS__ENV", "prod"),
            ("PGSIDECAR_STORAGE__OBJECT_LOCK_MODE", "GOVERNANCE"),
            ("PGSIDECAR_STORAGE__OBJECT_LOCK_RETAIN", "30d"),
            ("PGSIDECAR_STORAGE__LIFECYCLE__EXPIRE_AFTER_DAYS", "400"),
        ]))
        .unwrap();
        let j = &c.jobs[0];
        assert_eq!(j.databases, ["*"]);
        assert_eq!(j.exclude, ["postgres", "scratch"]);
        let r = j.retention.as_ref().unwrap();
        assert_eq!(r.keep_daily, Some(7));
        assert_eq!(r.max_age, Some(Duration::from_secs(90 * 86400)));
        assert_eq!(
            c.storage.sse,
            Some(Sse::Kms {
                key_id: Some("alias/backups".into())
            })
        );
        assert_eq!(c.storage.tags.get("env").map(String::as_str), Some("prod"));
        assert_eq!(c.storage.object_lock.as_ref().unwrap().mode, "GOVERNANCE");
        let l = c.storage.lifecycle.as_ref().unwrap();
        assert_eq!(
            (l.expire_after_days, l.abort_incomplete_after_days),
            (Some(400), 1)
        );
    }

    /// A fresh age key pair: (identity text, recipient text).
    fn age_keys() -> (String, String) {
        let id = age::x25519::Identity::generate();
        let secret = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_string();
        (secret, id.to_public().to_string())
    }

    #[test]
    fn encryption_recipients_from_env_list_and_file() {
        let (_, r1) = age_keys();
        let (_, r2) = age_keys();
        let (_, r3) = age_keys();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recipients.txt");
        std::fs::write(&file, format!("# ops team\n{r3}\n\n")).unwrap();
        let c = load(&env(&[
            URL,
            ("PGSIDECAR_ENCRYPTION__RECIPIENTS", &format!("{r1}, {r2}")),
            (
                "PGSIDECAR_ENCRYPTION__RECIPIENTS_FILE",
                file.to_str().unwrap(),
            ),
        ]))
        .unwrap();
        let got: Vec<String> = c
            .encryption
            .recipients
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(got, [r1, r2, r3]);
        assert_eq!(
            c.jobs[0].encryption.scheme(),
            Some(crate::codec::encryption::Scheme::X25519)
        );
        // Unset, and set to empty values, encryption is off.
        let c = load(&env(&[
            URL,
            ("PGSIDECAR_ENCRYPTION__RECIPIENTS", ""),
            ("PGSIDECAR_ENCRYPTION__PASSPHRASE", ""),
            ("PGSIDECAR_ENCRYPTION__IDENTITY_FILE", ""),
        ]))
        .unwrap();
        assert_eq!(c.encryption.scheme(), None);
        assert!(c.jobs[0].encryption.record().is_none());
    }

    #[test]
    fn encryption_identity_file_is_read_and_passphrase_is_redacted() {
        let (secret, recipient) = age_keys();
        let dir = tempfile::tempdir().unwrap();
        let id_file = dir.path().join("key.txt");
        std::fs::write(&id_file, format!("# public key: {recipient}\n{secret}\n")).unwrap();
        let pw_file = dir.path().join("pw");
        std::fs::write(&pw_file, "tr0ub4dor&3\n").unwrap();
        let c = load(&env(&[
            URL,
            (
                "PGSIDECAR_ENCRYPTION__IDENTITY_FILE",
                id_file.to_str().unwrap(),
            ),
            (
                "PGSIDECAR_ENCRYPTION__PASSPHRASE_FILE",
                pw_file.to_str().unwrap(),
            ),
        ]))
        .unwrap();
        assert_eq!(
            c.encryption.identities[0].recipient().to_string(),
            recipient
        );
        assert_eq!(
            c.encryption.passphrase.as_ref().unwrap().expose(),
            "tr0ub4dor&3"
        );
        assert_eq!(
            c.encryption.scheme(),
            Some(crate::codec::encryption::Scheme::Scrypt)
        );
        let out = c.to_redacted_toml();
        assert!(
            !out.contains("tr0ub4dor") && !out.contains(&secret) && out.contains("[encryption]"),
            "{out}"
        );
        assert!(!format!("{c:?}").contains(&secret));
    }

    #[test]
    fn bad_encryption_settings_name_their_key_and_echo_no_secret() {
        let (secret, recipient) = age_keys();
        let dir = tempfile::tempdir().unwrap();
        let public_as_identity = dir.path().join("wrong-way-round.txt");
        std::fs::write(&public_as_identity, format!("{recipient}\n")).unwrap();
        let secret_as_recipient = dir.path().join("recipients.txt");
        std::fs::write(&secret_as_recipient, format!("# x\n{secret}\n")).unwrap();
        let missing = dir.path().join("missing");
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "PGSIDECAR_ENCRYPTION__RECIPIENTS",
                format!("{recipient},age1notakey"),
                "encryption.recipients",
            ),
            (
                "PGSIDECAR_ENCRYPTION__RECIPIENTS",
                secret.clone(),
                "encryption.recipients",
            ),
            (
                "PGSIDECAR_ENCRYPTION__RECIPIENTS_FILE",
                secret_as_recipient.display().to_string(),
                "encryption.recipients_file",
            ),
            (
                "PGSIDECAR_ENCRYPTION__IDENTITY_FILE",
                public_as_identity.display().to_string(),
                "encryption.identity_file",
            ),
            (
                "PGSIDECAR_ENCRYPTION__IDENTITY_FILE",
                missing.display().to_string(),
                "encryption.identity_file",
            ),
            (
                "PGSIDECAR_ENCRYPTION__PASSPHRASE_FILE",
                missing.display().to_string(),
                "encryption.passphrase_file",
            ),
        ];
        for (k, v, key) in &cases {
            let err = load(&env(&[URL, (k, v)])).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{k}: {err}");
            assert!(!err.contains(&secret), "{k}: {err}");
        }
        let err = load(&env(&[
            URL,
            ("PGSIDECAR_ENCRYPTION__RECIPIENTS", &recipient),
            ("PGSIDECAR_ENCRYPTION__PASSPHRASE", "hunter2"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`encryption.passphrase`")
                && err.contains("not both")
                && !err.contains("hunter2"),
            "{err}"
        );
        let err = load(&env(&[
            URL,
            ("PGSIDECAR_ENCRYPTION__PASSPHRASE", "hunter2"),
            ("PGSIDECAR_ENCRYPTION__PASSPHRASE_FILE", "/x"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`encryption.passphrase`") && !err.contains("hunter2"),
            "{err}"
        );
        let err = load(&env(&[URL, ("PGSIDECAR_ENCRYPTION__KEY", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`encryption.key`"), "{err}");
    }

    #[test]
    fn missing_storage_url_says_how_to_set_it() {
        let err = load(&env(&[])).unwrap_err().to_string();
        assert!(err.contains("PGSIDECAR_STORAGE__URL"), "{err}");
    }

    #[test]
    fn redacted_output_hides_password() {
        let c = load(&env(&[URL, ("PGPASSWORD", "topsecret")])).unwrap();
        let out = c.to_redacted_toml();
        assert!(!out.contains("topsecret"), "{out}");
        assert!(out.contains(crate::secret::REDACTED), "{out}");
    }

    #[test]
    fn bad_url_error_does_not_echo_password() {
        let err = load(&env(&[
            URL,
            (
                "PGSIDECAR_DATABASE__URL",
                "postgres://u:hunter2@h:notaport/db",
            ),
        ]))
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("database.url"), "{err}");
    }

    #[test]
    fn two_jobs_from_one_file_inherit_and_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"
timezone = "Europe/Berlin"
[database]
host = "db"
user = "app"
[storage]
url = "s3://bucket-a/backups"
[retry]
attempts = 3

[[jobs]]
name = "prod"
databases = ["app_prod"]
schedule = "0 2 * * *"

[[jobs]]
name = "staging"
databases = ["app_staging"]
schedule = "0 2 * * 0"
database = { host = "staging-db" }
retry = { attempts = 1 }
"#,
        )
        .unwrap();
        let c = load(&Sources {
            file: Some(path),
            env: vec![],
        })
        .unwrap();
        let (prod, staging) = (&c.jobs[0], &c.jobs[1]);
        assert_eq!(prod.prefix, "backups/prod");
        assert_eq!(staging.prefix, "backups/staging");
        assert_eq!(prod.database.host, "db");
        assert_eq!(staging.database.host, "staging-db");
        assert_eq!(staging.database.user, "app");
        assert_eq!((prod.retry.attempts, staging.retry.attempts), (3, 1));
        assert_eq!(
            prod.schedule.as_ref().unwrap().tz(),
            chrono_tz::Europe::Berlin
        );
        assert_eq!(
            c.job(Some("staging")).unwrap().databases,
            vec!["app_staging"]
        );
        assert!(c
            .job(None)
            .unwrap_err()
            .to_string()
            .contains("prod, staging"));
    }

    #[test]
    fn single_job_from_env_with_defaults() {
        let c = load(&env(&[
            URL,
            ("PGSIDECAR_SCHEDULE", "0 2 * * *"),
            ("TZ", "America/New_York"),
        ]))
        .unwrap();
        let j = &c.jobs[0];
        assert_eq!(j.name, "default");
        assert_eq!(j.prefix, "prod");
        assert_eq!(j.timezone, chrono_tz::America::New_York);
        assert_eq!(j.retry.attempts, 10);
        assert_eq!(j.retry.interval, Duration::from_secs(600));
        assert!(j.catch_up);
    }

    #[test]
    fn bad_schedule_and_zone_name_the_key_and_field() {
        let err = load(&env(&[URL, ("PGSIDECAR_SCHEDULE", "0 25 * * *")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`schedule`") && err.contains("the hour field `25`"),
            "{err}"
        );
        let err = load(&env(&[URL, ("PGSIDECAR_TIMEZONE", "Europe/Nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`timezone`") && err.contains("Europe/Nowhere"),
            "{err}"
        );
        let err = load(&env(&[URL, ("PGSIDECAR_RETRY__BACKOFF", "sometimes")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`retry.backoff`"), "{err}");
        let err = load(&env(&[
            URL,
            (
                "PGSIDECAR_NOTIFY__SLACK__WEBHOOK_URL",
                "hooks.slack.com/secret-part",
            ),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`notify.slack.webhook_url`") && !err.contains("secret-part"),
            "{err}"
        );
    }

    /// The quick start's compose file passes an unset Slack URL as an empty value, and a
    /// Swarm secret for "none" holds a newline: both mean "not configured", not a bad URL.
    #[test]
    fn blank_secrets_mean_unset() {
        let newline = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(newline.path(), "\n").unwrap();
        let path = newline.path().to_str().unwrap();
        let c = load(&env(&[
            URL,
            ("PGSIDECAR_NOTIFY__SLACK__WEBHOOK_URL", ""),
            ("PGSIDECAR_NOTIFY__WEBHOOK__URL_FILE", path),
            ("PGSIDECAR_STORAGE__ACCESS_KEY_ID_FILE", path),
            ("PGSIDECAR_STORAGE__SECRET_ACCESS_KEY", " "),
        ]))
        .unwrap();
        assert!(c.notify.slack_webhook_url.is_none());
        assert!(c.notify.webhook_url.is_none());
        assert!(c.storage.access_key_id.is_none() && c.storage.secret_access_key.is_none());

        // A passphrase file that came out blank must not quietly turn encryption off.
        let err = load(&env(&[
            URL,
            ("PGSIDECAR_ENCRYPTION__PASSPHRASE_FILE", path),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`encryption.passphrase_file`") && err.contains("empty"),
            "{err}"
        );
    }
}

//! Configuration: validation of the raw layers into the stages' own settings.

use super::*;

/// Turns the raw layers into a checked [`Config`].
pub fn validate(raw: RawConfig, sources: &Sources) -> Result<Config, ConfigError> {
    let storage = validate_storage(raw.storage, sources)?;
    let encryption = validate_encryption(raw.encryption)?;
    let base_prefix = storage.base_prefix();
    let copies = validate_copies(raw.copies.clone(), &storage, sources)?;
    let delivery = validate_delivery(raw.destinations.clone())?;
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
        let sub = sub.trim_matches('/').to_string();
        let prefix = crate::keys::join_prefix(&base_prefix, &sub);
        let job_copies = copies
            .iter()
            .map(|c| crate::pipeline::destinations::Placement {
                destination: c.name.clone(),
                prefix: crate::keys::join_prefix(&c.storage.base_prefix(), &sub),
                retention: c.retention.clone().or_else(|| retention.clone()),
            })
            .collect();
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
            sub_prefix: sub,
            copies: job_copies,
            delivery,
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
    let http_listen = match raw.http.listen.clone() {
        None => None,
        Some(l) if l.is_empty() => None,
        Some(l) => Some(l.parse().map_err(|_| {
            ConfigError::invalid(
                "http.listen",
                format!("`{l}` is not an address such as 0.0.0.0:9187"),
            )
        })?),
    };
    let http_auth = validate_http_auth(raw.http)?;
    let pitr = validate_pitr(raw.pitr, &raw.database, &base_prefix, &default_tz, sources)?;
    Ok(Config {
        pitr,
        copies,
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
        http_auth,
        shutdown_grace: raw.shutdown_grace.unwrap_or(Duration::from_secs(30)),
        tools: ToolsConfig {
            bin_dirs: raw.tools.bin_dirs.unwrap_or_default(),
        },
        log: validate_log(raw.log)?,
        drill_schedule,
        encryption,
    })
}

/// `[pitr]`: the replication role's connection is the database's, with `pitr.user` and its
/// password when set.
fn validate_pitr(
    raw: RawPitr,
    database: &RawDatabase,
    base_prefix: &str,
    default_tz: &str,
    sources: &Sources,
) -> Result<crate::pitr::PitrConfig, ConfigError> {
    use crate::pitr::settings::*;
    let slot = raw.slot.unwrap_or_else(|| DEFAULT_SLOT.to_string());
    if !valid_slot_name(&slot) {
        return Err(ConfigError::invalid(
            "pitr.slot",
            format!("`{slot}` is not a replication slot name (lower-case letters, digits and `_`, at most 63)"),
        ));
    }
    let partial_interval = raw.partial_interval.unwrap_or(DEFAULT_PARTIAL_INTERVAL);
    if partial_interval < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "pitr.partial_interval",
            "must be at least 1s",
        ));
    }
    let tz_name = raw.timezone.unwrap_or_else(|| default_tz.to_string());
    let tz = crate::schedule::parse_tz(&tz_name)
        .map_err(|e| ConfigError::invalid("pitr.timezone", e.to_string()))?;
    let expr = raw
        .base_backup_schedule
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_BASE_BACKUP_SCHEDULE.to_string());
    let base_backup_schedule = crate::schedule::Schedule::parse(expr.trim(), tz)
        .map_err(|e| ConfigError::invalid("pitr.base_backup_schedule", e.to_string()))?;
    let password = optional_secret("pitr.password", raw.password, raw.password_file.as_deref())?;
    let mut role = database.clone();
    let own_user = raw.user.filter(|u| !u.is_empty());
    if let Some(user) = &own_user {
        role.user = Some(user.clone());
    }
    let mut database = validate_database(role, sources)?;
    if own_user.is_some() {
        // Another role never inherits the database user's password (from `database.*`, its
        // URL or PGPASSWORD): it has its own, or none.
        database.password = password;
    } else if password.is_some() {
        database.password = password;
    }
    let prefix = if base_prefix.is_empty() {
        "~pitr".to_string()
    } else {
        format!("{base_prefix}/~pitr")
    };
    let retention = validate_retention(raw.retention).map_err(|e| match e {
        ConfigError::Invalid {
            key,
            source_name,
            message,
        } => ConfigError::Invalid {
            key: format!("pitr.{key}"),
            source_name,
            message,
        },
        other => other,
    })?;
    let max_lag = raw.max_lag.unwrap_or(DEFAULT_MAX_LAG);
    if max_lag < partial_interval {
        return Err(ConfigError::invalid(
            "pitr.max_lag",
            format!(
                "must be at least pitr.partial_interval ({}): the archive is that far behind between partial uploads",
                humantime::format_duration(partial_interval)
            ),
        ));
    }
    let drill = validate_pitr_drill(raw.drill, tz)?;
    let check_interval = raw.check_interval.unwrap_or(DEFAULT_CHECK_INTERVAL);
    if check_interval < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "pitr.check_interval",
            "must be at least 1s",
        ));
    }
    Ok(crate::pitr::PitrConfig {
        check_interval,
        drill,
        max_lag,
        retention,
        timezone: tz,
        enabled: raw.enabled.unwrap_or(false),
        slot,
        partial_interval,
        heartbeat: raw.heartbeat.filter(|d| !d.is_zero()),
        base_backup_schedule,
        database,
        spool: raw
            .spool
            .unwrap_or_else(|| std::env::temp_dir().join("pgsidecar-wal-spool")),
        allow_unbounded_wal: raw.allow_unbounded_wal.unwrap_or(false),
        prefix,
    })
}

/// `[pitr.drill]`; its schedule runs in `pitr.timezone`.
fn validate_pitr_drill(
    raw: crate::config::raw::RawPitrDrill,
    tz: chrono_tz::Tz,
) -> Result<crate::pitr::settings::DrillConfig, ConfigError> {
    use crate::pitr::settings::{DrillChoice, DrillConfig, DEFAULT_DRILL_TIMEOUT};
    let schedule = match raw.schedule.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(expr) => Some(
            crate::schedule::Schedule::parse(expr, tz)
                .map_err(|e| ConfigError::invalid("pitr.drill.schedule", e.to_string()))?,
        ),
    };
    let target = match raw.target.as_deref().map(str::trim) {
        None | Some("") | Some("newest") => DrillChoice::Newest,
        Some("random") => DrillChoice::Random,
        Some(other) => {
            return Err(ConfigError::invalid(
                "pitr.drill.target",
                format!("`{other}` is neither `newest` nor `random`"),
            ))
        }
    };
    let timeout = raw.timeout.unwrap_or(DEFAULT_DRILL_TIMEOUT);
    if timeout < Duration::from_secs(10) {
        return Err(ConfigError::invalid(
            "pitr.drill.timeout",
            "must be at least 10s",
        ));
    }
    Ok(DrillConfig {
        schedule,
        target,
        dir: raw
            .dir
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| std::env::temp_dir().join("pgsidecar-pitr-drill")),
        query: raw.query.filter(|q| !q.trim().is_empty()),
        timeout,
    })
}

/// Checks that every configured key parses. Errors name the key and, for files, the line;
/// none quotes a key or the passphrase. An empty value (a compose file's `${VAR:-}`) means
/// unset.
pub(super) fn validate_encryption(
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
pub(super) fn prefix_key(e: ConfigError, jobs_given: bool, i: usize) -> ConfigError {
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

pub(super) fn merge_database(base: RawDatabase, over: RawDatabase) -> RawDatabase {
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

pub(super) fn merge_compression(base: RawCompression, over: RawCompression) -> RawCompression {
    merge_fields!(base, over, algorithm, level)
}

pub(super) fn merge_retry(base: RawRetry, over: RawRetry) -> RawRetry {
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

pub(super) fn merge_retention(base: RawRetention, over: RawRetention) -> RawRetention {
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

pub(super) fn validate_retention(
    raw: RawRetention,
) -> Result<Option<crate::retention::Policy>, ConfigError> {
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

pub(super) fn validate_retry(raw: RawRetry) -> Result<RetryPolicy, ConfigError> {
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

pub(super) fn validate_url_secret(
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

pub(super) fn validate_notify(raw: RawNotify) -> Result<NotifyConfig, ConfigError> {
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

pub(super) fn validate_compression(raw: RawCompression) -> Result<Compression, ConfigError> {
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

pub(super) fn validate_log(raw: RawLog) -> Result<LogConfig, ConfigError> {
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

/// `http.bearer_token` or `http.basic_auth_*`: at most one of the two.
pub(super) fn validate_http_auth(
    raw: RawHttp,
) -> Result<Option<crate::health::http::HttpAuth>, ConfigError> {
    use crate::health::http::HttpAuth;
    let token = optional_secret(
        "http.bearer_token",
        raw.bearer_token,
        raw.bearer_token_file.as_deref(),
    )?;
    let password = optional_secret(
        "http.basic_auth_password",
        raw.basic_auth_password,
        raw.basic_auth_password_file.as_deref(),
    )?;
    let user = raw.basic_auth_user.filter(|u| !u.trim().is_empty());
    match (token, user, password) {
        (None, None, None) => Ok(None),
        (Some(t), None, None) => Ok(Some(HttpAuth::Bearer(t))),
        (None, Some(user), Some(password)) => {
            if user.contains(':') {
                return Err(ConfigError::invalid(
                    "http.basic_auth_user",
                    "cannot contain `:` (basic auth separates user and password with it)",
                ));
            }
            Ok(Some(HttpAuth::Basic { user, password }))
        }
        (Some(_), _, _) => Err(ConfigError::invalid(
            "http.bearer_token",
            "set either http.bearer_token or http.basic_auth_user and _password, not both",
        )),
        (None, Some(_), None) => Err(ConfigError::invalid(
            "http.basic_auth_password",
            "is required with http.basic_auth_user (or its _file)",
        )),
        (None, None, Some(_)) => Err(ConfigError::invalid(
            "http.basic_auth_user",
            "is required with http.basic_auth_password",
        )),
    }
}

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

#[test]
fn root_certificate_is_read_when_the_config_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("root.crt");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let err = load(&env(&[
        URL,
        ("PGSIDECAR_DATABASE__SSLMODE", "verify-full"),
        ("PGSIDECAR_DATABASE__SSLROOTCERT", not_pem.to_str().unwrap()),
    ]))
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("`database.sslrootcert`"), "{text}");
    assert!(text.contains("holds no certificate"), "{text}");
}

#[test]
fn pitr_defaults_and_its_own_role() {
    let c = load(&env(&[URL, ("PGPASSWORD", "dbpw"), ("PGUSER", "app")])).unwrap();
    assert!(!c.pitr.enabled);
    assert_eq!(c.pitr.slot, "pgsidecar");
    assert_eq!(c.pitr.partial_interval, Duration::from_secs(30));
    assert_eq!(c.pitr.heartbeat, None);
    assert_eq!(c.pitr.base_backup_schedule.expr(), "0 3 * * 0");
    assert_eq!(c.pitr.prefix, "prod/~pitr");
    // Without a user of its own, the database connection's role and password.
    assert_eq!(c.pitr.database.user, "app");
    assert_eq!(c.pitr.database.password.as_ref().unwrap().expose(), "dbpw");
    // Another role never inherits that password.
    let c = load(&env(&[
        URL,
        ("PGPASSWORD", "dbpw"),
        ("PGSIDECAR_PITR__USER", "wal"),
    ]))
    .unwrap();
    assert_eq!(c.pitr.database.user, "wal");
    assert!(c.pitr.database.password.is_none());
    let c = load(&env(&[
        URL,
        ("PGSIDECAR_PITR__USER", "wal"),
        ("PGSIDECAR_PITR__PASSWORD", "walpw"),
        ("PGSIDECAR_PITR__HEARTBEAT", "1m"),
    ]))
    .unwrap();
    assert_eq!(c.pitr.database.password.as_ref().unwrap().expose(), "walpw");
    assert_eq!(c.pitr.heartbeat, Some(Duration::from_secs(60)));
    assert!(!c.to_redacted_toml().contains("walpw"));
}

#[test]
fn bad_pitr_values_name_their_key() {
    for (key, value, named) in [
        ("PGSIDECAR_PITR__SLOT", "Bad-Slot", "`pitr.slot`"),
        (
            "PGSIDECAR_PITR__PARTIAL_INTERVAL",
            "100ms",
            "`pitr.partial_interval`",
        ),
        (
            "PGSIDECAR_PITR__BASE_BACKUP_SCHEDULE",
            "0 25 * * *",
            "`pitr.base_backup_schedule`",
        ),
        ("PGSIDECAR_PITR__ENABLED", "perhaps", "pitr.enabled"),
    ] {
        let err = load(&env(&[URL, (key, value)])).unwrap_err().to_string();
        assert!(err.contains(named), "{key}={value}: {err}");
    }
}

fn with_file(toml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let mut sources = env(pairs);
    sources.file = Some(path);
    load(&sources)
}

/// `[[copies]]` in the file and `PGSIDECAR_COPIES__NAME__KEY` in the environment merge key
/// by key; each copy's prefix carries the job's sub-prefix, and its retention is its own or
/// the job's.
#[test]
fn copies_from_file_array_and_environment_merge_by_name() {
    let c = with_file(
        r#"
[storage]
url = "s3://bucket-a/prod"
[retention]
keep_last = 5
[[jobs]]
name = "nightly"
[[copies]]
name = "offsite"
url = "s3://bucket-b/far"
region = "eu-west-1"
[copies.retention]
keep_last = 2
[[copies]]
name = "nas"
url = "file:///mnt/nas"
"#,
        &[
            (
                "PGSIDECAR_COPIES__OFFSITE__ENDPOINT",
                "https://s3.example.net",
            ),
            (
                "PGSIDECAR_COPIES__OFFSITE__SECRET_ACCESS_KEY",
                "s3cr3t-copy",
            ),
            ("PGSIDECAR_COPIES__OFFSITE__ACCESS_KEY_ID", "AKIACOPY"),
            ("PGSIDECAR_DESTINATIONS__POLICY", "any"),
        ],
    )
    .unwrap();
    let names: Vec<&str> = c.copies.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["nas", "offsite"]);
    let offsite = &c.copies[1];
    assert_eq!(
        offsite.storage.endpoint.as_deref(),
        Some("https://s3.example.net")
    );
    assert_eq!(offsite.storage.region.as_deref(), Some("eu-west-1"));
    assert_eq!(offsite.retention.as_ref().unwrap().keep_last, Some(2));
    let job = &c.jobs[0];
    assert_eq!(job.prefix, "prod/nightly");
    assert_eq!(job.delivery, crate::pipeline::destinations::Delivery::Any);
    let placements = job.placements();
    let places: Vec<(&str, &str, Option<u32>)> = placements
        .iter()
        .map(|p| {
            (
                p.destination.as_str(),
                p.prefix.as_str(),
                p.retention.as_ref().and_then(|r| r.keep_last),
            )
        })
        .collect();
    assert_eq!(
        places,
        [
            ("primary", "prod/nightly", Some(5)),
            ("nas", "nightly", Some(5)),
            ("offsite", "far/nightly", Some(2)),
        ]
    );
    let shown = c.to_redacted_toml();
    assert!(!shown.contains("s3cr3t-copy"), "{shown}");
}

/// The table form, environment alone, and every error names `copies.NAME.KEY`.
#[test]
fn bad_copies_name_their_key() {
    let only_env = load(&env(&[
        URL,
        ("PGSIDECAR_COPIES__NAS__URL", "file:///mnt/nas"),
    ]))
    .unwrap();
    assert_eq!(only_env.copies[0].name, "nas");
    let table = with_file(
        "[storage]\nurl = \"s3://bucket-a/x\"\n[copies.far]\nurl = \"s3://bucket-b/x\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(table.copies[0].name, "far");
    for (pairs, key, says) in [
        (
            vec![("PGSIDECAR_COPIES__PRIMARY__URL", "s3://bucket-b/x")],
            "copies.primary",
            "name of [storage]",
        ),
        (
            vec![("PGSIDECAR_COPIES__FAR__REGION", "eu-west-1")],
            "copies.far.url",
            "PGSIDECAR_COPIES__FAR__URL",
        ),
        (
            vec![("PGSIDECAR_COPIES__FAR__URL", "ftp://x/y")],
            "copies.far.url",
            "scheme `ftp`",
        ),
        (
            vec![("PGSIDECAR_COPIES__FAR__URL", "s3://bucket-a/prod")],
            "copies.far.url",
            "where [storage] writes",
        ),
        (
            vec![
                ("PGSIDECAR_COPIES__FAR__URL", "s3://bucket-b/x"),
                ("PGSIDECAR_COPIES__FAR__PARTS_IN_FLIGHT", "0"),
            ],
            "copies.far.parts_in_flight",
            "outside 1 to 64",
        ),
        (
            vec![
                ("PGSIDECAR_COPIES__FAR__URL", "s3://bucket-b/x"),
                ("PGSIDECAR_COPIES__FAR__RETENTION__KEEP_LAST", "0"),
            ],
            "copies.far.retention.keep_last",
            "at least 1",
        ),
        (
            vec![("PGSIDECAR_DESTINATIONS__POLICY", "most")],
            "destinations.policy",
            "`most`",
        ),
    ] {
        let mut all = vec![URL];
        all.extend(pairs.iter().copied());
        let err = load(&env(&all)).unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        assert!(err.contains(says), "{key}: {err}");
    }
    let unnamed = with_file(
        "[storage]\nurl = \"s3://bucket-a/x\"\n[[copies]]\nurl = \"s3://bucket-b/x\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(unnamed.contains("copies[0] needs a `name`"), "{unnamed}");
    let twins = with_file(
        "[storage]\nurl = \"s3://bucket-a/x\"\n[[copies]]\nname = \"a\"\nurl = \"s3://bucket-b/x\"\n[[copies]]\nname = \"b\"\nurl = \"s3://bucket-b/x\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(twins.contains("copy `a` writes already"), "{twins}");
    let bogus = load(&env(&[
        URL,
        ("PGSIDECAR_COPIES__FAR__URL", "s3://bucket-b/x"),
        ("PGSIDECAR_COPIES__FAR__BOGUS", "1"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(bogus.contains("bogus"), "{bogus}");
}

/// Another bucket at the primary's endpoint is reached with the primary's keys and region; a
/// copy at another endpoint never gets them.
#[test]
fn a_copy_at_the_same_endpoint_uses_the_primarys_keys_and_no_other_does() {
    let c = load(&env(&[
        URL,
        ("PGSIDECAR_STORAGE__ENDPOINT", "http://s3:9000"),
        ("PGSIDECAR_STORAGE__REGION", "eu-central-1"),
        ("PGSIDECAR_STORAGE__ACCESS_KEY_ID", "AKIAPRIMARY"),
        ("PGSIDECAR_STORAGE__SECRET_ACCESS_KEY", "primary-secret"),
        ("PGSIDECAR_COPIES__SAME__URL", "s3://bucket-b/x"),
        ("PGSIDECAR_COPIES__SAME__ENDPOINT", "http://s3:9000"),
        ("PGSIDECAR_COPIES__ELSEWHERE__URL", "s3://bucket-c/x"),
        (
            "PGSIDECAR_COPIES__ELSEWHERE__ENDPOINT",
            "https://s3.example.net",
        ),
        ("PGSIDECAR_COPIES__OFF__URL", ""),
    ]))
    .unwrap();
    let names: Vec<&str> = c.copies.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["elsewhere", "same"],
        "a blank url leaves a copy off"
    );
    let same = &c.copies[1].storage;
    assert_eq!(same.access_key_id.as_ref().unwrap().expose(), "AKIAPRIMARY");
    assert_eq!(same.region.as_deref(), Some("eu-central-1"));
    let elsewhere = &c.copies[0].storage;
    assert!(elsewhere.access_key_id.is_none() && elsewhere.secret_access_key.is_none());
    assert!(elsewhere.region.is_none());
}

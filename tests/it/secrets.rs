use crate::harness::{pg, s3, Answer, Daemon, FakeHttp, Sidecar};

/// Every secret carries this marker, so one search finds any of them.
const MARK: &str = "LEAKMARK";

#[test]
fn no_secret_reaches_output_notifications_manifests_or_metadata() {
    let pg = pg(15);
    let role = crate::harness::unique("leaky");
    let db_pw = format!("pw-{MARK}-db:@/?#%'\"");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{}'",
            db_pw.replace('\'', "''")
        ),
    );
    let db = pg.create_db("leak");
    pg.psql(&db, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let bucket = s3().bucket("leak");
    let slack = FakeHttp::start(Answer::Status(200));
    let hook = format!("{}/{MARK}-slack-token", slack.url());
    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("status.json");
    let sidecar = |password: &str| {
        Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "prod")
            .env("PGUSER", &role)
            .env("PGPASSWORD", password)
            .env("PGSIDECAR_STORAGE__ACCESS_KEY_ID", format!("AKIA{MARK}"))
            .env(
                "PGSIDECAR_STORAGE__SECRET_ACCESS_KEY",
                format!("s3-{MARK}-secret"),
            )
            .env("PGSIDECAR_NOTIFY__SLACK__WEBHOOK_URL", &hook)
            .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", &hook)
            .env(
                "PGSIDECAR_ENCRYPTION__PASSPHRASE",
                format!("age-{MARK}-pass"),
            )
            .env("PGSIDECAR_RETENTION__KEEP_LAST", "3")
            .env("PGSIDECAR_GLOBALS", "true")
            .env("PGSIDECAR_HEALTH__STATUS_FILE", &status_file)
    };
    let mut seen = Vec::new();
    let mut record = |what: &str, run: crate::harness::Run| {
        seen.push(format!("--- {what}\n{}\n{}", run.stdout, run.stderr));
    };

    // Every command, the successful paths.
    record(
        "config",
        sidecar(&db_pw).args(&["config"]).run().expect_code(0),
    );
    record(
        "backup",
        sidecar(&db_pw).args(&["backup"]).run().expect_code(0),
    );
    record("list", sidecar(&db_pw).args(&["list"]).run().expect_code(0));
    record(
        "list --json",
        sidecar(&db_pw)
            .args(&["list", "--json"])
            .run()
            .expect_code(0),
    );
    record(
        "verify",
        sidecar(&db_pw).args(&["verify"]).run().expect_code(0),
    );
    let copy = crate::harness::unique("leak_copy");
    record(
        "restore",
        sidecar(&db_pw)
            .args(&["restore", "--target-db", &copy, "--yes"])
            .run()
            .expect_code(0),
    );
    record(
        "drill",
        sidecar(&db_pw).args(&["drill"]).run().expect_code(0),
    );
    record(
        "prune",
        sidecar(&db_pw)
            .args(&["prune", "--dry-run"])
            .run()
            .expect_code(0),
    );
    record("health", sidecar(&db_pw).args(&["health"]).run());

    // Failure paths: a wrong password (its value is a secret too), a missing bucket, a
    // damaged backup.
    let wrong = format!("wrong-{MARK}-pw");
    record(
        "backup, wrong password",
        sidecar(&wrong).args(&["backup"]).run().expect_code(1),
    );
    record(
        "backup, missing bucket",
        sidecar(&db_pw)
            .env("PGSIDECAR_STORAGE__URL", "s3://no-such-bucket-leak/x")
            .args(&["backup"])
            .run()
            .expect_code(1),
    );
    record(
        "restore, bad passphrase",
        sidecar(&db_pw)
            .env("PGSIDECAR_ENCRYPTION__PASSPHRASE", format!("other-{MARK}"))
            .args(&["restore", "--target-db", "never", "--yes"])
            .run(),
    );
    record(
        "config, malformed URL with a password",
        sidecar(&db_pw)
            .env(
                "PGSIDECAR_DATABASE__URL",
                format!("postgres://u:{MARK}@h:notaport/d"),
            )
            .args(&["config"])
            .run()
            .expect_code(2),
    );

    // The daemon: a success and a failure, both notified.
    let d = Daemon::start(
        sidecar(&wrong)
            .env("PGSIDECAR_RETRY__ATTEMPTS", "1")
            // Keys the AWS SDK reads itself, never held by the configuration.
            .env("AWS_SECRET_ACCESS_KEY", format!("aws-env-{MARK}"))
            .env("AWS_SESSION_TOKEN", format!("aws-token-{MARK}")),
    );
    assert!(
        crate::harness::wait_until(30, || !slack.messages().is_empty()),
        "{}",
        d.stderr()
    );
    // The failure as `health` and the status file show it, while it is the newest attempt.
    record(
        "health, after a failure",
        sidecar(&wrong).args(&["health"]).run(),
    );
    seen.push(read_status(&status_file));
    seen.push(d.stderr());
    drop(d);
    let d = Daemon::start(sidecar(&db_pw));
    assert!(
        crate::harness::wait_until(30, || slack.messages().len() >= 4),
        "{}",
        d.stderr()
    );
    seen.push(d.stderr());
    drop(d);
    // Every body as received: `messages()` would leave out any that is not JSON.
    let bodies: Vec<String> = slack.bodies.lock().unwrap().clone();
    assert!(bodies.iter().any(|b| b.contains("FAILED")), "{bodies:?}");
    assert!(bodies.iter().any(|b| b.contains("succeeded")), "{bodies:?}");
    seen.extend(bodies);

    // What is stored: manifests, globals (encrypted) and every object's metadata.
    let keys = s3().keys(&bucket, "");
    assert!(
        keys.iter().any(|k| k.ends_with(".json")),
        "no manifest stored to search for secrets: {keys:?}"
    );
    for key in keys {
        seen.push(s3().metadata(&bucket, &key));
        if key.ends_with(".json") {
            seen.push(String::from_utf8_lossy(&s3().get(&bucket, &key)).into_owned());
        }
    }
    seen.push(read_status(&status_file));

    let leaks: Vec<&String> = seen.iter().filter(|s| s.contains(MARK)).collect();
    assert!(
        leaks.is_empty(),
        "secrets leaked:\n{}",
        leaks
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The daemon's status file. A missing or unreadable one fails the test: read as empty, it
/// would pass the search for secrets without anything having been searched.
fn read_status(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "the status file {} could not be read to search it for secrets: {e}",
            path.display()
        )
    })
}

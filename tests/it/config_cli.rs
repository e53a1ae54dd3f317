use crate::harness::{pg, s3, Sidecar};

#[test]
fn bad_value_exits_2_naming_key_and_variable() {
    let run = Sidecar::bare()
        .env("PGSIDECAR_STORAGE__URL", "s3://bucket-x/p")
        .env("PGSIDECAR_STORAGE__PARTS_IN_FLIGHT", "many")
        .args(&["backup"])
        .run()
        .expect_code(2);
    assert!(
        run.stderr.contains("`storage.parts_in_flight`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("PGSIDECAR_STORAGE__PARTS_IN_FLIGHT"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_key_in_file_exits_2_naming_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(
        &path,
        "[storage]\nurl = \"s3://bucket-x/p\"\n[databse]\nhost = \"db\"\n",
    )
    .unwrap();
    let run = Sidecar::bare()
        .args(&["--config", path.to_str().unwrap(), "config"])
        .run()
        .expect_code(2);
    assert!(run.stderr.contains("`databse`"), "{}", run.stderr);
    assert!(run.stderr.contains("pgsidecar.toml"), "{}", run.stderr);
}

#[test]
fn missing_config_file_and_bad_arguments_exit_2() {
    let run = Sidecar::bare()
        .args(&["--config", "/nope.toml", "config"])
        .run()
        .expect_code(2);
    assert!(run.stderr.contains("/nope.toml"), "{}", run.stderr);
    let run = Sidecar::bare().args(&["bakcup"]).run().expect_code(2);
    assert!(run.stderr.contains("bakcup"), "{}", run.stderr);
}

#[test]
fn config_output_redacts_every_secret() {
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, "File-Secret-1\n").unwrap();
    for (k, v) in [
        ("PGSIDECAR_DATABASE__PASSWORD", "Env-Secret-2".to_string()),
        (
            "PGSIDECAR_DATABASE__PASSWORD_FILE",
            pwfile.display().to_string(),
        ),
        (
            "PGSIDECAR_DATABASE__URL",
            "postgres://u:Url-Secret-3@db:5432/app".to_string(),
        ),
        ("PGPASSWORD", "Libpq-Secret-4".to_string()),
    ] {
        let run = Sidecar::bare()
            .env("PGSIDECAR_STORAGE__URL", "s3://bucket-x/p")
            .env(k, &v)
            .args(&["config"])
            .run()
            .expect_code(0);
        for secret in [
            "File-Secret-1",
            "Env-Secret-2",
            "Url-Secret-3",
            "Libpq-Secret-4",
        ] {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "{k}: {}",
                run.stdout
            );
        }
        assert!(
            run.stdout.contains("password = \"********\""),
            "{k}: {}",
            run.stdout
        );
    }
}

#[test]
fn special_characters_in_password_and_database_name() {
    let pg = pg(17);
    let password = r#"p:@/?#%'" w"#;
    let role = crate::harness::unique("odd_role");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{}'",
            password.replace('\'', "''")
        ),
    );
    let db = format!("{} spaces 'quotes' ünï", crate::harness::unique("db"));
    pg.psql(
        "postgres",
        &format!("CREATE DATABASE \"{db}\" OWNER {role}"),
    );
    pg.psql(&db, "CREATE TABLE t(x int); INSERT INTO t VALUES (42)");
    let bucket = s3().bucket("odd");
    let encoded: String = password.bytes().map(|b| format!("%{b:02X}")).collect();
    let run = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .env_remove("PGPASSWORD")
        .env("PGUSER", &role)
        .env(
            "PGSIDECAR_DATABASE__URL",
            format!("postgres://{role}:{encoded}@127.0.0.1:{}/x", pg.port),
        )
        .env("PGSIDECAR_DATABASE__DBNAME", &db)
        .args(&["backup"])
        .run()
        .expect_code(0);
    assert!(!run.stderr.contains(password));
    let list = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .args(&["list", "--json"])
        .run()
        .expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v[0]["database"], db.as_str());
    assert_eq!(v[0]["key"], run.stdout.trim());
}

/// Every example configuration in the repository loads (its secret files supplied).
#[test]
fn example_configs_load() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/pgsidecar.toml"
    ))
    .unwrap();
    let mut text = example.clone();
    for secret in ["db_password", "slack_webhook"] {
        let path = dir.path().join(secret);
        std::fs::write(&path, "https://hooks.example.com/x\n").unwrap();
        text = text.replace(&format!("/run/secrets/{secret}"), path.to_str().unwrap());
    }
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(&path, text).unwrap();
    let run = Sidecar::bare()
        .args(&["--config", path.to_str().unwrap(), "config"])
        .run()
        .expect_code(0);
    assert!(run.stdout.contains("name = \"staging\""), "{}", run.stdout);
    assert!(
        run.stdout.contains("schedule = \"0 2 * * 0\""),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("hooks.example.com"), "{}", run.stdout);
    // The README shows the same file.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let body: String = example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        readme.contains(body.trim()),
        "README example differs from examples/pgsidecar.toml"
    );
}

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::harness::{self, pg, s3, Pg, Sidecar};

fn sidecar(pg: &Pg, db: &str, bucket: &str) -> Sidecar {
    Sidecar::new(pg, db, &s3().endpoint(), bucket, "prod")
}

const STAMP: &str = "%Y-%m-%dT%H%M%SZ";

/// Copies the backup whose manifest is `manifest_key` to one started at `at`, as if it had
/// been taken then. Returns the new manifest key.
fn forge(bucket: &str, manifest_key: &str, at: DateTime<Utc>) -> String {
    let mut m: Value = serde_json::from_slice(&s3().get(bucket, manifest_key)).unwrap();
    let old: DateTime<Utc> = m["started_at"].as_str().unwrap().parse().unwrap();
    let rename = |k: &str| {
        k.replace(
            &old.format(STAMP).to_string(),
            &at.format(STAMP).to_string(),
        )
    };
    for piece in m["objects"].as_array_mut().unwrap() {
        let key = piece["key"].as_str().unwrap().to_string();
        s3().put(bucket, &rename(&key), &s3().get(bucket, &key));
        piece["key"] = rename(&key).into();
    }
    m["key"] = rename(m["key"].as_str().unwrap()).into();
    m["started_at"] = at.to_rfc3339().into();
    m["finished_at"] = (at + Duration::seconds(1)).to_rfc3339().into();
    let new_key = rename(manifest_key);
    s3().put(bucket, &new_key, m.to_string().as_bytes());
    new_key
}

fn manifests(bucket: &str) -> Vec<String> {
    let mut keys: Vec<String> = s3()
        .keys(bucket, "prod/")
        .into_iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .collect();
    keys.sort();
    keys
}

/// A database with one real backup and forged ones, one per day for `days` days before it,
/// plus a second one on each of those days, earlier. Returns (db, bucket, newest manifest).
fn history(pg: &Pg, hint: &str, days: i64) -> (String, String, String) {
    let db = pg.create_db(hint);
    pg.psql(&db, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let bucket = s3().bucket(hint);
    let key = sidecar(pg, &db, &bucket)
        .args(&["backup"])
        .run()
        .expect_code(0)
        .stdout;
    let newest = key.trim().replace(".dump.zst", ".manifest.json");
    let now = Utc::now();
    for d in 1..=days {
        let day = now - Duration::days(d);
        forge(&bucket, &newest, day);
        forge(&bucket, &newest, day - Duration::hours(3));
    }
    (db, bucket, newest)
}

#[test]
fn prune_keeps_what_the_policy_keeps_and_touches_nothing_else() {
    let pg = pg(15);
    let (db, bucket, newest) = history(pg, "prune", 6);
    assert_eq!(manifests(&bucket).len(), 13);
    // Things that are not (complete) backups of pgsidecar must survive any prune.
    let foreign = [
        format!("prod/{db}/notes.txt"),
        format!("prod/{db}/2001-01-01T000000Z.dump.zst"),
        "prod/other-tool/backup.sql".to_string(),
    ];
    for k in &foreign {
        s3().put(&bucket, k, b"not ours");
    }
    // An old manifest edited to name another tool's object as its globals: not a backup of
    // pgsidecar's, so prune must delete neither it nor that object.
    let edited = forge(&bucket, &newest, Utc::now() - Duration::days(40));
    let mut m: Value = serde_json::from_slice(&s3().get(&bucket, &edited)).unwrap();
    m["globals"] = serde_json::json!({
        "key": "prod/other-tool/backup.sql", "raw_bytes": 8, "stored_bytes": 8,
        "sha256": "00", "role_passwords": false,
    });
    s3().put(&bucket, &edited, m.to_string().as_bytes());
    let before = s3().keys(&bucket, "");
    // The keys a prune's output lists as deleted ("would delete" in a dry run).
    let deleted = |stdout: &str, word: &str| -> Vec<String> {
        let mut keys: Vec<String> = stdout
            .lines()
            .filter(|l| l.trim_start().starts_with(word) && !l.contains("leftover"))
            .map(|l| l.split_whitespace().last().unwrap().to_string())
            .collect();
        keys.sort();
        keys
    };

    let plan = sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_RETENTION__KEEP_DAILY", "3")
        .args(&["prune", "--dry-run"])
        .run()
        .expect_code(0);
    assert!(
        plan.stdout.contains(&format!(
            "{db} (job default): 13 backup(s), keep 3, would delete 10"
        )),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("newest, daily"), "{}", plan.stdout);
    assert_eq!(s3().keys(&bucket, ""), before, "a dry run deletes nothing");
    let planned = deleted(&plan.stdout, "would delete");
    assert_eq!(planned.len(), 10, "{}", plan.stdout);

    let run = sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_RETENTION__KEEP_DAILY", "3")
        .args(&["prune"])
        .run()
        .expect_code(0);
    assert!(run.stdout.contains("kept 3, deleted 10"), "{}", run.stdout);
    assert_eq!(deleted(&run.stdout, "deleted"), planned, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("not its own: prod/other-tool/backup.sql"),
        "the edited manifest is reported: {}",
        run.stderr
    );
    let left = manifests(&bucket);
    assert!(left.contains(&edited), "{left:?}");
    let left: Vec<_> = left.into_iter().filter(|k| *k != edited).collect();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.contains(&newest), "{left:?}");
    // Every remaining manifest still has its dump; every deleted backup lost its dump too.
    let keys = s3().keys(&bucket, "");
    let dumps = keys.iter().filter(|k| k.ends_with(".dump.zst")).count();
    assert_eq!(
        dumps,
        3 + 1 + 1,
        "three backups, the edited one and the foreign `.dump.zst`: {keys:?}"
    );
    for k in &planned {
        assert!(
            !keys.contains(k),
            "{k} was listed as deleted but is still there"
        );
    }
    for k in &foreign {
        assert!(keys.contains(k), "{k} was deleted");
    }
}

#[test]
fn prune_holds_when_the_newest_attempt_failed_or_backups_are_too_few() {
    let pg = pg(15);
    let (db, bucket, _) = history(pg, "hold", 3);
    let count = manifests(&bucket).len();

    let run = sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_RETENTION__KEEP_LAST", "30")
        .args(&["prune"])
        .run()
        .expect_code(0);
    assert!(
        run.stdout
            .contains("only 7 complete backup(s), fewer than the policy keeps (30)"),
        "{}",
        run.stdout
    );
    assert_eq!(manifests(&bucket).len(), count);

    // The daemon's status says the newest attempt failed.
    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("status.json");
    let now = Utc::now();
    let status = pgsidecar::health::status::Status {
        pitr: None,
        pid: 1,
        started_at: now,
        heartbeat_at: now,
        jobs: vec![pgsidecar::health::status::JobStatus {
            name: "default".into(),
            schedule: None,
            max_age_secs: None,
            next_run: None,
            databases: vec![pgsidecar::health::status::DbStatus {
                database: db.clone(),
                last_attempt_at: Some(now),
                last_success_at: Some(now - Duration::hours(1)),
                last_error: Some("pg_dump exited with status 1".into()),
                ..Default::default()
            }],
        }],
    };
    status.write(&status_file).unwrap();
    let run = sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_RETENTION__KEEP_LAST", "1")
        .env("PGSIDECAR_HEALTH__STATUS_FILE", &status_file)
        .args(&["prune"])
        .run()
        .expect_code(0);
    assert!(
        run.stdout.contains("its newest backup attempt failed"),
        "{}",
        run.stdout
    );
    assert_eq!(manifests(&bucket).len(), count);
}

#[test]
fn backup_prunes_after_success() {
    let pg = pg(17);
    let (db, bucket, _) = history(pg, "after", 2);
    assert_eq!(manifests(&bucket).len(), 5);
    harness::next_key_second();
    sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_RETENTION__KEEP_LAST", "2")
        .args(&["backup"])
        .run()
        .expect_code(0);
    assert_eq!(manifests(&bucket).len(), 2);
}

#[test]
fn every_database_is_found_and_one_failure_does_not_stop_the_others() {
    let pg = Pg::own(15);
    pg.psql(
        "postgres",
        "CREATE ROLE backup_role LOGIN PASSWORD 'backup-pw'",
    );
    for db in ["app1", "app2", "broken", "skipme"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        pg.psql(db, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
        if db != "broken" {
            // The backup role may read every table except in `broken`.
            pg.psql(db, "GRANT SELECT ON t TO backup_role");
        }
    }
    // What a `--full` restore keeps is not a database to back up.
    pg.psql(
        "postgres",
        "CREATE DATABASE app1__pre_restore_20260101000000",
    );
    let bucket = s3().bucket("star");
    let star = || {
        sidecar(&pg, "postgres", &bucket)
            .env("PGUSER", "backup_role")
            .env("PGPASSWORD", "backup-pw")
            .env("PGSIDECAR_DATABASES", "*")
            .env("PGSIDECAR_EXCLUDE", "skipme, postgres")
            .env("PGSIDECAR_MAX_PARALLEL", "2")
    };
    let run = star().args(&["backup"]).run().expect_code(1);
    assert!(
        run.stderr.contains("backup of database `broken` failed")
            && run.stderr.contains("permission denied"),
        "{}",
        run.stderr
    );
    let backed_up = |bucket: &str| -> Vec<String> {
        let mut dbs: Vec<String> = manifests(bucket)
            .iter()
            .map(|k| k.split('/').nth(1).unwrap().to_string())
            .collect();
        dbs.dedup();
        dbs
    };
    assert_eq!(backed_up(&bucket), ["app1", "app2"]);

    // With `broken` still failing, the databases that succeeded are still pruned.
    harness::next_key_second();
    star()
        .env("PGSIDECAR_RETENTION__KEEP_LAST", "1")
        .args(&["backup"])
        .run()
        .expect_code(1);
    assert_eq!(
        manifests(&bucket).len(),
        2,
        "one backup each of app1 and app2"
    );

    // A database created later is picked up by the next run.
    pg.psql("postgres", "CREATE DATABASE app3");
    pg.psql(
        "app3",
        "CREATE TABLE t(x int); GRANT SELECT ON t TO backup_role",
    );
    pg.psql("postgres", "DROP DATABASE broken");
    harness::next_key_second();
    star().args(&["backup"]).run().expect_code(0);
    assert_eq!(backed_up(&bucket), ["app1", "app2", "app3"]);

    // `drill` finds the same databases (as a user allowed to create its scratch databases).
    let drill = sidecar(&pg, "postgres", &bucket)
        .env("PGSIDECAR_DATABASES", "*")
        .env("PGSIDECAR_EXCLUDE", "skipme, postgres")
        .args(&["drill"])
        .run()
        .expect_code(0);
    let drilled: Vec<&str> = drill
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok: ")?.split('/').nth(1))
        .collect();
    assert_eq!(drilled, ["app1", "app2", "app3"], "{}", drill.stdout);
}

#[test]
fn prune_skips_locked_backups_and_reports_them() {
    let pg = pg(15);
    let db = pg.create_db("locked");
    let bucket = s3().bucket_with_lock("locked");
    let locked = || {
        sidecar(pg, &db, &bucket)
            .env("PGSIDECAR_STORAGE__OBJECT_LOCK_MODE", "GOVERNANCE")
            .env("PGSIDECAR_STORAGE__OBJECT_LOCK_RETAIN", "1d")
            .env("PGSIDECAR_RETENTION__KEEP_LAST", "1")
    };
    locked().args(&["backup"]).run().expect_code(0);
    harness::next_key_second();
    locked().args(&["backup"]).run().expect_code(0);
    // The backup pruned after the second one is locked: kept, and said so.
    assert_eq!(manifests(&bucket).len(), 2);
    let run = locked().args(&["prune"]).run().expect_code(0);
    assert!(
        run.stdout.contains("kept 1, deleted 0, 1 locked")
            && run.stdout.contains("object lock until"),
        "{}",
        run.stdout
    );
    assert_eq!(manifests(&bucket).len(), 2);
}

#[test]
fn backup_puts_the_lifecycle_rules_on_the_bucket() {
    let pg = pg(15);
    let db = pg.create_db("lc");
    let bucket = s3().bucket("lc");
    sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_STORAGE__LIFECYCLE__EXPIRE_AFTER_DAYS", "400")
        .args(&["backup"])
        .run()
        .expect_code(0);
    let mut ids = s3().lifecycle_rule_ids(&bucket);
    ids.sort();
    assert_eq!(ids, ["pgsidecar-abort-incomplete", "pgsidecar-expire"]);
}

#[test]
fn a_shrunken_backup_warns_and_keeps_the_one_before_it_until_acknowledged() {
    use crate::harness::{Answer, Daemon, FakeHttp};
    let pg = pg(15);
    let db = pg.create_db("shrink");
    pg.psql(
        &db,
        "CREATE TABLE orders(id int, note text); \
         INSERT INTO orders SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g",
    );
    let bucket = s3().bucket("shrink");
    let with_policy = || sidecar(pg, &db, &bucket).env("PGSIDECAR_RETENTION__KEEP_LAST", "1");
    let first = with_policy().args(&["backup"]).run().expect_code(0).stdout;
    let first = first.trim().replace(".dump.zst", ".manifest.json");
    pg.psql(&db, "DELETE FROM orders WHERE id > 10");

    // The daemon takes the next backups: the first one's notification is a warning naming
    // what shrank.
    let slack = FakeHttp::start(Answer::Status(200));
    let d = Daemon::start(
        with_policy()
            .env("PGSIDECAR_SCHEDULE", "*/2 * * * * *")
            .env("PGSIDECAR_NOTIFY__SLACK__WEBHOOK_URL", slack.url()),
    );
    assert!(
        crate::harness::wait_until(60, || slack.messages().len() >= 2),
        "{}",
        d.stderr()
    );
    drop(d);
    let message = slack.messages()[0].to_string();
    assert!(
        message.contains("\"warning\"")
            && message.contains("WARNING")
            && message.contains("table public.orders fell from 2000 to 10 rows"),
        "{message}"
    );

    // Retention keeps one backup, but the anomalous one and the one before it stay (the
    // daemon pruned after each backup too) until the anomaly is acknowledged.
    let list = || -> Vec<Value> {
        let run = sidecar(pg, &db, &bucket)
            .args(&["list", "--json"])
            .run()
            .expect_code(0);
        serde_json::from_str::<Value>(&run.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    with_policy().args(&["prune"]).run().expect_code(0);
    let plan = with_policy()
        .args(&["prune", "--dry-run"])
        .run()
        .expect_code(0);
    assert!(
        plan.stdout.contains("before an unacknowledged anomaly")
            && plan.stdout.contains("unacknowledged anomaly"),
        "{}",
        plan.stdout
    );
    assert!(
        manifests(&bucket).contains(&first),
        "{:?}",
        manifests(&bucket)
    );
    let anomalous: Vec<String> = list()
        .iter()
        .filter(|m| m.get("anomalies").is_some())
        .map(|m| m["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(anomalous.len(), 1, "{anomalous:?}");
    assert_eq!(
        list().len(),
        3,
        "newest, the anomalous one, the one before it"
    );

    let run = sidecar(pg, &db, &bucket)
        .args(&["ack", &anomalous[0]])
        .run()
        .expect_code(0);
    assert!(run.stdout.contains("acknowledged"), "{}", run.stdout);
    with_policy().args(&["prune"]).run().expect_code(0);
    assert_eq!(manifests(&bucket).len(), 1);
    assert!(!manifests(&bucket).contains(&first));
}

/// Regression: with daily partition rotation (drop the oldest partition, create the next,
/// same total rows) every backup warned "table … is gone", and prune, holding every
/// unacknowledged anomaly, kept all backups for ever.
#[test]
fn partition_rotation_is_no_anomaly_and_held_anomalies_are_bounded() {
    let pg = pg(15);
    let db = pg.create_db("rotate");
    pg.psql(
        &db,
        "CREATE TABLE events(day int, body text) PARTITION BY LIST (day); \
         CREATE TABLE events_1 PARTITION OF events FOR VALUES IN (1); \
         CREATE TABLE events_2 PARTITION OF events FOR VALUES IN (2); \
         INSERT INTO events SELECT 1 + g % 2, 'e' || g FROM generate_series(1, 1000) g",
    );
    let bucket = s3().bucket("rotate");
    let with_policy = || sidecar(pg, &db, &bucket).env("PGSIDECAR_RETENTION__KEEP_LAST", "2");
    for day in 3..=6 {
        let run = with_policy().args(&["backup"]).run().expect_code(0);
        assert!(!run.stderr.contains("size anomaly"), "{}", run.stderr);
        pg.psql(
            &db,
            &format!(
                "DROP TABLE events_{old}; \
                 CREATE TABLE events_{day} PARTITION OF events FOR VALUES IN ({day}); \
                 INSERT INTO events SELECT {day}, 'e' || g FROM generate_series(1, 500) g",
                old = day - 2
            ),
        );
    }
    assert_eq!(manifests(&bucket).len(), 2, "{:?}", manifests(&bucket));

    // Every other backup shrinking, none acknowledged: the newest three anomalies are held
    // with the backup before each, and the policy prunes the rest.
    pg.psql(
        &db,
        "CREATE TABLE orders(id int); INSERT INTO orders SELECT generate_series(1, 1000)",
    );
    for _ in 0..6 {
        with_policy().args(&["backup"]).run().expect_code(0);
        pg.psql(&db, "DELETE FROM orders WHERE id > 10");
        let run = with_policy().args(&["backup"]).run().expect_code(0);
        assert!(
            run.stderr
                .contains("table public.orders fell from 1000 to 10 rows"),
            "{}",
            run.stderr
        );
        pg.psql(&db, "INSERT INTO orders SELECT generate_series(11, 1000)");
    }
    with_policy().args(&["prune"]).run().expect_code(0);
    // Six anomalies: three held, each with the backup before it (the newest two among them).
    assert_eq!(manifests(&bucket).len(), 6, "{:?}", manifests(&bucket));
}

//! Restores and drills that must fail safely: damage, kills, refusals, connection regressions.

use std::time::Duration;

use crate::harness::{self, pg, pg18_bin, s3, Answer, Daemon, FakeHttp, Pg, Proxy};
use crate::restore::{backed_up, databases_like, sidecar, DAMAGE};

/// Replaces the stored object with `damage(bytes)`.
fn tamper(bucket: &str, key: &str, damage: impl Fn(&mut Vec<u8>)) {
    let mut bytes = s3().get(bucket, key);
    damage(&mut bytes);
    s3().put(bucket, key, &bytes);
}

#[test]
fn damaged_or_truncated_objects_are_refused_and_change_nothing() {
    let pg = pg(15);
    let (db, bucket, key) = backed_up(pg, "bad");
    pg.psql(&db, DAMAGE);
    let before = pg.dump_sql(&db);
    let original = s3().get(&bucket, &key);
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let damages: [(&str, Damage); 2] = [
        (
            "one byte flipped",
            Box::new(|b: &mut Vec<u8>| {
                let mid = b.len() / 2;
                b[mid] ^= 0x01;
            }),
        ),
        (
            "truncated",
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len() / 2)),
        ),
    ];
    for (what, damage) in damages {
        s3().put(&bucket, &key, &original);
        tamper(&bucket, &key, damage);
        let run = sidecar(pg, &db, &bucket)
            .args(&["restore", "latest", "--yes"])
            .run()
            .expect_code(1);
        assert!(
            run.stderr.contains(&format!("`{key}` is damaged"))
                && run
                    .stderr
                    .contains(&format!("database `{db}` is unchanged")),
            "{what}: {}",
            run.stderr
        );
        assert_eq!(pg.dump_sql(&db), before, "{what}");

        let copy = harness::unique("bad_copy");
        sidecar(pg, &db, &bucket)
            .args(&["restore", "latest", "--target-db", &copy, "--yes"])
            .run()
            .expect_code(1);
        assert!(databases_like(pg, &format!("{copy}%")).is_empty(), "{what}");

        let run = sidecar(pg, &db, &bucket)
            .args(&["verify", "latest"])
            .run()
            .expect_code(1);
        assert!(run.stderr.contains(&key), "{what}: {}", run.stderr);
    }

    // An object that decompresses cleanly but is not the one the manifest describes: pg_restore
    // gets everything but the last chunk, so only the hold-back keeps it from committing.
    s3().put(&bucket, &key, &original);
    let manifest_key = key.replace(".dump.zst", ".manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&s3().get(&bucket, &manifest_key)).unwrap();
    manifest["sha256"] = "0".repeat(64).into();
    s3().put(&bucket, &manifest_key, manifest.to_string().as_bytes());
    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--yes"])
        .run()
        .expect_code(1);
    assert!(
        run.stderr.contains("does not match the manifest")
            && run
                .stderr
                .contains(&format!("database `{db}` is unchanged")),
        "{}",
        run.stderr
    );
    assert_eq!(pg.dump_sql(&db), before);
}

/// A database of a few MB restored through a throttled proxy in front of PostgreSQL, killed
/// mid-restore with SIGKILL.
fn kill_mid_restore(extra: &[&str]) -> (String, String, String) {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, "kill", 6);
    let bucket = s3().bucket("kill");
    sidecar(pg, &db, &bucket)
        .args(&["backup"])
        .run()
        .expect_code(0);
    pg.psql(
        &db,
        "DELETE FROM r WHERE random() < 0.5; CREATE TABLE marker(x int)",
    );
    let state = |pg: &Pg| {
        pg.psql(
            &db,
            "SELECT count(*) || ':' || md5(string_agg(md5(b), '' ORDER BY b)) FROM r",
        )
    };
    let before = state(pg);
    let proxy = Proxy::start(pg.port);
    proxy.throttle(512 * 1024);
    let mut args = vec!["restore", "latest", "--yes"];
    args.extend_from_slice(extra);
    let mut child = sidecar(pg, &db, &bucket)
        .env("PGPORT", proxy.port.to_string())
        .args(&args)
        .spawn();
    let sidecar_pid = child.id();
    let mut restorer = Vec::new();
    assert!(
        harness::wait_until(30, || {
            restorer = harness::children_named(sidecar_pid, "pg_restore");
            !restorer.is_empty()
        }),
        "pg_restore did not start"
    );
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap();
    let _ = child.wait();
    // pg_restore sees the archive end early and exits; the server rolls its work back.
    assert!(harness::wait_until(30, || restorer.iter().all(|pid| {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })));
    let after = state(pg);
    (db, before, after)
}

#[test]
fn killing_an_in_place_restore_leaves_the_database_unchanged() {
    let (db, before, after) = kill_mid_restore(&[]);
    assert_eq!(after, before, "{db} changed");
    assert_eq!(pg(15).psql(&db, "SELECT count(*) FROM marker"), "0");
}

#[test]
fn killing_a_full_restore_leaves_the_original_in_place() {
    let (db, before, after) = kill_mid_restore(&["--full"]);
    assert_eq!(after, before, "{db} changed");
    assert!(databases_like(pg(15), &format!("{db}\\_\\_pre\\_restore%")).is_empty());
}

#[test]
fn refusals_change_nothing_and_say_why() {
    let pg = pg(15);
    let (db, bucket, _) = backed_up(pg, "no");
    pg.psql(&db, DAMAGE);
    let before = pg.dump_sql(&db);

    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest"])
        .run()
        .expect_code(2);
    assert!(run.stderr.contains("add --yes"), "{}", run.stderr);

    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--target-db", &db, "--yes"])
        .run()
        .expect_code(2);
    assert!(
        run.stderr
            .contains(&format!("database `{db}` already exists")),
        "{}",
        run.stderr
    );

    let run = sidecar(pg, &db, &bucket)
        .args(&[
            "restore",
            "latest",
            "--target-db",
            "postgres",
            "--replace-target",
            "--yes",
        ])
        .run()
        .expect_code(2);
    assert!(
        run.stderr.contains("`postgres` is a system database"),
        "{}",
        run.stderr
    );

    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--jobs", "2", "--yes"])
        .run()
        .expect_code(2);
    assert!(run.stderr.contains("--jobs cannot"), "{}", run.stderr);

    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "2001-01-01T00:00:00Z", "--yes"])
        .run()
        .expect_code(1);
    assert!(
        run.stderr
            .contains("no backup matches `2001-01-01T00:00:00Z`"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.dump_sql(&db), before);

    // A backup of PostgreSQL 18 cannot go into 15.
    let (db18, bucket18, key18) = backed_up(crate::harness::pg(18), "newer");
    let target = harness::unique("newer_copy");
    let run = sidecar(pg, &db18, &bucket18)
        .env("PGSIDECAR_TOOLS__BIN_DIRS", pg18_bin())
        .args(&["restore", "latest", "--target-db", &target, "--yes"])
        .run()
        .expect_code(2);
    assert!(
        run.stderr
            .contains(&format!("`{key18}` is a backup of PostgreSQL 18")),
        "{}",
        run.stderr
    );
    assert!(databases_like(pg, &target).is_empty());
}

#[test]
fn drills_pass_and_fail_loudly() {
    let pg = pg(17);
    let (db, bucket, key) = backed_up(pg, "drill");
    // What a killed drill leaves, long ago; and one stamped later than any drill could end.
    let (killed, future) = (
        format!("{db}__drill_20200101000000"),
        format!("{db}__drill_29990101000000"),
    );
    for name in [&killed, &future] {
        pg.psql("postgres", &format!("CREATE DATABASE {name}"));
    }
    let run = sidecar(pg, &db, &bucket)
        .args(&["drill"])
        .run()
        .expect_code(0);
    assert!(
        run.stdout
            .contains("2 tables, 600 rows, every table and row count matches the manifest"),
        "{}",
        run.stdout
    );
    let left = pg.psql(
        "postgres",
        &format!(
            "SELECT string_agg(datname, ' ') FROM pg_database WHERE datname LIKE '{db}\\_\\_%'"
        ),
    );
    assert_eq!(left, future, "{}", run.stderr);
    assert!(
        run.stderr.contains("left by an interrupted drill"),
        "{}",
        run.stderr
    );
    pg.psql("postgres", &format!("DROP DATABASE {future}"));

    let daemon = |slack: &FakeHttp| {
        Daemon::start(
            sidecar(pg, &db, &bucket)
                .env("PGSIDECAR_SCHEDULE", "0 0 1 1 *")
                .env("PGSIDECAR_CATCH_UP", "false")
                .env("PGSIDECAR_DRILL__SCHEDULE", "* * * * * *")
                .env("PGSIDECAR_NOTIFY__SLACK__WEBHOOK_URL", slack.url()),
        )
    };
    let slack = FakeHttp::start(Answer::Status(200));
    let d = daemon(&slack);
    assert!(
        harness::wait_until(60, || !slack.messages().is_empty()),
        "{}",
        d.stderr()
    );
    drop(d);
    let passed = slack.messages()[0].to_string();
    assert!(
        passed.contains(&format!("Restore drill of `{db}` (default) passed"))
            && passed.contains("600 rows")
            && passed.contains("\"good\""),
        "{passed}"
    );

    tamper(&bucket, &key, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
    });
    let run = sidecar(pg, &db, &bucket)
        .args(&["drill"])
        .run()
        .expect_code(1);
    assert!(
        run.stderr.contains(&format!("`{key}` is damaged")),
        "{}",
        run.stderr
    );
    let slack = FakeHttp::start(Answer::Status(200));
    let d = daemon(&slack);
    assert!(
        harness::wait_until(60, || !slack.messages().is_empty()),
        "{}",
        d.stderr()
    );
    drop(d);
    let failed = slack.messages()[0].to_string();
    assert!(
        failed.contains(&format!("Restore drill of `{db}` (default) FAILED"))
            && failed.contains(&key)
            && failed.contains("\"danger\""),
        "{failed}"
    );
    assert!(databases_like(pg, &format!("{db}\\_\\_drill%")).is_empty());
}

/// Regression: a role's `statement_timeout` and a database's `transaction_timeout` applied to
/// the sidecar's own connections. The backup "succeeded" without row counts, and drills and
/// `--full` failed while counting after the whole restore, leaving scratch databases behind.
#[test]
fn role_and_database_timeouts_never_break_the_sidecars_connections() {
    let pg = pg(17);
    let db = pg.create_db("timeouts");
    pg.psql(
        &db,
        "CREATE TABLE events(id int, body text); \
         INSERT INTO events SELECT i, md5(i::text) FROM generate_series(1, 1000000) i",
    );
    let svc = harness::unique("backup_svc");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE {svc} SUPERUSER LOGIN PASSWORD '{pw}'; \
             ALTER ROLE {svc} SET statement_timeout = '1ms'; \
             ALTER DATABASE {db} SET transaction_timeout = '5ms'",
            pw = harness::PG_PASSWORD
        ),
    );
    // The settings bite: an ordinary session as that role cannot count the rows.
    let probe = std::process::Command::new(pg.client_bin.join("psql"))
        .env("PGPASSWORD", harness::PG_PASSWORD)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            &svc,
            "-d",
            &db,
        ])
        .args(["-Atc", "SELECT count(*) FROM events"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&probe.stderr).contains("timeout"),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let bucket = s3().bucket("timeouts");
    let as_svc = || sidecar(pg, &db, &bucket).env("PGUSER", &svc);
    let key = as_svc().backup_key();
    let manifest: serde_json::Value =
        serde_json::from_slice(&s3().get(&bucket, &key.replace(".dump.zst", ".manifest.json")))
            .unwrap();
    assert_eq!(manifest["tables"][0]["rows"], 1_000_000, "{manifest}");
    assert!(manifest.get("anomalies").is_none(), "{manifest}");

    let run = as_svc().args(&["drill"]).run().expect_code(0);
    assert!(run.stdout.contains("1000000 rows"), "{}", run.stdout);
    let run = as_svc()
        .args(&["restore", "latest", "--full", "--drop-old", "--yes"])
        .run()
        .expect_code(0);
    assert!(run.stdout.contains("1000000 rows"), "{}", run.stdout);
    assert_eq!(
        databases_like(pg, &format!("{db}\\_\\_%")),
        Vec::<String>::new(),
        "scratch databases left behind"
    );
    pg.psql("postgres", &format!("DROP ROLE {svc}"));
}

/// Regression: an in-place restore blocked by a view created after the backup left the
/// database unchanged, as it should, but did not say how to restore anyway.
#[test]
fn in_place_restore_blocked_by_a_newer_view_names_the_way_out() {
    let pg = pg(15);
    let (db, bucket, _) = backed_up(pg, "newerview");
    pg.psql(
        &db,
        "CREATE VIEW public.newer AS SELECT count(*) FROM billing.invoices",
    );
    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--yes"])
        .run()
        .expect_code(1);
    assert!(
        run.stderr.contains("restore with --full (a new database"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.psql(&db, "SELECT * FROM public.newer"), "100");
}

/// Regression: a database with a logical-replication subscription left a full
/// `…__drill_<time>` copy behind after every "passed" drill (the restored subscription blocks
/// `DROP DATABASE`), and `restore --full --drop-old` exited 1 after the swap had happened
/// without saying that the restore had succeeded.
#[test]
fn subscriptions_never_leave_scratch_copies_or_hide_a_successful_swap() {
    let pg = pg(15);
    let db = pg.create_db("subs");
    let sub = harness::unique("sub");
    pg.psql(
        &db,
        &format!(
            "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 10); \
             CREATE SUBSCRIPTION {sub} CONNECTION 'host=127.0.0.1 port=1 dbname=nowhere' \
               PUBLICATION p WITH (connect = false)"
        ),
    );
    let bucket = s3().bucket("subs");
    sidecar(pg, &db, &bucket).backup_key();

    let run = sidecar(pg, &db, &bucket)
        .args(&["drill"])
        .run()
        .expect_code(0);
    assert!(run.stdout.contains("10 rows"), "{}", run.stdout);
    assert_eq!(
        databases_like(pg, &format!("{db}\\_\\_%")),
        Vec::<String>::new(),
        "{}",
        run.stderr
    );

    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--full", "--drop-old", "--yes"])
        .run()
        .expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "the restore succeeded: `{db}` is the restored database"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM t"), "10");
    let old = databases_like(pg, &format!("{db}\\_\\_pre\\_restore\\_%"));
    assert_eq!(old.len(), 1, "the replaced database is kept: {old:?}");
    // Both subscriptions stay disabled: nothing reached for the publisher.
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_subscription WHERE subname = '{sub}' AND subenabled")
        ),
        "0"
    );
}

/// Event triggers restored into the copies a restore or drill makes never fire on the
/// sidecar's own statements: one that refuses every DDL statement lets the drill, `--full`
/// and `--target-db` pass.
#[test]
fn event_triggers_in_restored_copies_never_fire_on_the_sidecars_statements() {
    let pg = pg(15);
    let db = pg.create_db("evtrig");
    pg.psql(
        &db,
        "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 5); \
         CREATE FUNCTION refuse_ddl() RETURNS event_trigger LANGUAGE plpgsql \
           AS $$ BEGIN RAISE EXCEPTION 'no DDL in this database'; END $$; \
         CREATE EVENT TRIGGER refuse_ddl ON ddl_command_start EXECUTE FUNCTION refuse_ddl()",
    );
    let bucket = s3().bucket("evtrig");
    sidecar(pg, &db, &bucket).backup_key();
    let run = sidecar(pg, &db, &bucket)
        .args(&["drill"])
        .run()
        .expect_code(0);
    assert!(run.stdout.contains("5 rows"), "{}", run.stdout);
    let copy = harness::unique("evtrig_copy");
    sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--target-db", &copy, "--yes"])
        .run()
        .expect_code(0);
    sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--full", "--drop-old", "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM t"), "5");
    assert_eq!(
        databases_like(pg, &format!("{db}\\_\\_%")),
        Vec::<String>::new()
    );
}

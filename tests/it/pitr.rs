//! Point-in-time recovery: WAL archived by the daemon over the replication protocol, base
//! backups, and restores to a moment that a real server replays.

use std::path::Path;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{self, s3, wait_until, Answer, Daemon, FakeHttp, Pg, Proxy, Sidecar};

/// The sidecar of `pg` archiving into `bucket`, its spool in `spool`.
fn sidecar(pg: &Pg, bucket: &str, spool: &Path) -> Sidecar {
    Sidecar::new(pg, "postgres", &s3().endpoint(), bucket, "p")
        .env("PGSIDECAR_PITR__ENABLED", "true")
        .env("PGSIDECAR_PITR__SPOOL", spool)
        .env("PGSIDECAR_PITR__PARTIAL_INTERVAL", "1s")
        .env("RUST_LOG", "info,wal=debug,pgsidecar::pitr=debug")
}

/// A cluster of the test's own whose slot WAL is bounded, as `pitr check` asks.
fn cluster(major: u32) -> Pg {
    cluster_keeping(major, "1GB")
}

/// A cluster of the test's own with `max_slot_wal_keep_size = keep`.
fn cluster_keeping(major: u32, keep: &str) -> Pg {
    let pg = Pg::own(major);
    pg.psql(
        "postgres",
        &format!("ALTER SYSTEM SET max_slot_wal_keep_size = '{keep}'"),
    );
    pg.psql("postgres", "SELECT pg_reload_conf()");
    pg
}

/// A sidecar that reaches S3 through a proxy the test can cut.
trait Through {
    fn through(self, proxy: &Proxy) -> Sidecar;
}

impl Through for Sidecar {
    /// Through `proxy`, giving up on a part within 2 s, so a cut shows at once.
    fn through(self, proxy: &Proxy) -> Sidecar {
        self.env("AWS_ENDPOINT_URL", proxy.endpoint())
            .env("PGSIDECAR_STORAGE__PART_TIMEOUT", "2s")
            .env("PGSIDECAR_STORAGE__PART_ATTEMPTS", "1")
    }
}

/// Complete WAL segments stored in `bucket` (their 24-hex names), sorted.
fn stored_segments(bucket: &str) -> Vec<String> {
    let mut names: Vec<String> = s3()
        .keys(bucket, "p/~pitr/")
        .iter()
        .filter(|k| k.contains("/wal/"))
        .filter_map(|k| {
            let name = k.rsplit('/').next()?;
            let (seg, rest) = name.split_once('.')?;
            (seg.len() == 24 && !rest.starts_with("partial")).then(|| seg.to_string())
        })
        .collect();
    names.sort();
    names
}

/// Writes a batch of rows into `marker` and ends the WAL segment, so it can be archived;
/// returns that segment's name.
fn write_segment(pg: &Pg, batch: u32) -> String {
    pg.psql(
        "postgres",
        &format!("INSERT INTO marker(batch) SELECT {batch} FROM generate_series(1, 50)"),
    );
    pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
}

/// [`write_segment`] for each batch in `batches`; returns the last segment's name.
fn write_segments(pg: &Pg, batches: std::ops::RangeInclusive<u32>) -> String {
    let mut last = String::new();
    for batch in batches {
        last = write_segment(pg, batch);
    }
    last
}

/// Waits until the segment `name` is stored.
fn wait_stored(bucket: &str, name: &str, secs: u64) -> bool {
    wait_until(secs, || stored_segments(bucket).iter().any(|s| s == name))
}

/// A daemon archiving `pg` into `bucket` through a proxy the test can cut, notifying a fake
/// webhook, once its first segment (with a batch of `marker` rows) is stored.
fn archiving_behind_a_proxy(pg: &Pg, bucket: &str) -> (tempfile::TempDir, Proxy, FakeHttp, Daemon) {
    archiving_behind_a_proxy_with(pg, bucket, &[])
}

/// [`archiving_behind_a_proxy`] with more environment for the daemon.
fn archiving_behind_a_proxy_with(
    pg: &Pg,
    bucket: &str,
    env: &[(&str, String)],
) -> (tempfile::TempDir, Proxy, FakeHttp, Daemon) {
    let spool = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(s3().port);
    let hook = FakeHttp::start(Answer::Status(200));
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let daemon = start_archiving(
        env.iter().fold(
            sidecar(pg, bucket, spool.path())
                .through(&proxy)
                .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url()),
            |s, (k, v)| s.env(k, v),
        ),
    );
    let first = write_segment(pg, 1);
    assert!(wait_stored(bucket, &first, 60), "{}", daemon.stderr());
    (spool, proxy, hook, daemon)
}

/// Base backups the daemon has completed so far.
fn base_backups_done(daemon: &Daemon) -> usize {
    daemon
        .stderr()
        .matches("pitr::base: base backup complete")
        .count()
}

/// Whether `hook` received an archiving alert whose error contains `text`.
fn alerted(hook: &FakeHttp, text: &str) -> bool {
    hook.messages().iter().any(|m| {
        m["kind"] == "archive_alert" && m["error"].as_str().unwrap_or_default().contains(text)
    })
}

/// Starts the daemon and waits for its first base backup.
fn start_archiving(sidecar: Sidecar) -> Daemon {
    let daemon = Daemon::start(sidecar);
    assert!(
        daemon.wait_for("pitr::base: base backup complete", 120),
        "{}",
        daemon.stderr()
    );
    daemon
}

fn stop(mut daemon: Daemon) -> String {
    daemon.signal("TERM");
    daemon.wait_exit(30);
    daemon.stderr()
}

/// Restores `bucket`'s archive to `time` into a fresh directory and starts `major` on it;
/// returns the running server once it left recovery.
fn restore_and_start(pg: &Pg, bucket: &str, time: &str) -> (Pg, harness::Run) {
    restore_and_start_with(pg, bucket, time, &[])
}

/// [`restore_and_start`] with more environment for the sidecar (keys, …).
fn restore_and_start_with(
    pg: &Pg,
    bucket: &str,
    time: &str,
    env: &[(&str, &str)],
) -> (Pg, harness::Run) {
    let root = tempfile::Builder::new()
        .prefix("pgsc-pitr-")
        .tempdir()
        .unwrap()
        .keep();
    let data = root.join("data");
    let mut args = vec![
        "pitr".to_string(),
        "restore".into(),
        "--time".into(),
        time.into(),
        "--to".into(),
        data.display().to_string(),
    ];
    if let Some((uid, gid)) = harness::postgres_ids() {
        args.push("--owner".into());
        args.push(format!("{uid}:{gid}"));
    }
    let spool = root.join("unused-spool");
    let run = env
        .iter()
        .fold(sidecar(pg, bucket, &spool), |s, (k, v)| s.env(k, v))
        .args(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .run()
        .expect_code(0);
    let restored = Pg::start_on(pg.major, &root);
    assert!(
        wait_until(60, || restored
            .psql("postgres", "SELECT pg_is_in_recovery()")
            == "f"),
        "the restored server did not promote: {}",
        restored.log()
    );
    (restored, run)
}

fn timeline(pg: &Pg) -> u32 {
    let name = pg.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    u32::from_str_radix(&name[..8], 16).unwrap()
}

fn time_target(major: u32) {
    time_target_with(major, &[]);
}

/// Returns the bucket.
fn time_target_with(major: u32, env: &[(&str, &str)]) -> String {
    let pg = cluster(major);
    let bucket = s3().bucket(&format!("pitr-time-{major}"));
    let spool = tempfile::tempdir().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE marker(batch int, at timestamptz DEFAULT clock_timestamp())",
    );
    let daemon = Daemon::start(
        env.iter()
            .fold(sidecar(&pg, &bucket, spool.path()), |s, (k, v)| s.env(k, v)),
    );
    assert!(
        daemon.wait_for("pitr::base: base backup complete", 120),
        "{}",
        daemon.stderr()
    );
    pg.psql(
        "postgres",
        "INSERT INTO marker(batch) SELECT 1 FROM generate_series(1, 100)",
    );
    pg.psql(
        "postgres",
        "INSERT INTO marker(batch) SELECT 2 FROM generate_series(1, 100)",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let target = pg.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    pg.psql(
        "postgres",
        "INSERT INTO marker(batch) SELECT 3 FROM generate_series(1, 100)",
    );
    // Recovery stops at the target only on a commit after it: batch 3's segment, ended and
    // stored. (Waiting a few seconds for its partial upload was not enough on a loaded machine.)
    let batch_3 = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(wait_stored(&bucket, &batch_3, 60), "{}", daemon.stderr());
    pg.crash();
    let mut daemon = daemon;
    daemon.signal("TERM");
    daemon.wait_exit(30);

    let (restored, run) = restore_and_start_with(&pg, &bucket, &target, env);
    let batches = restored.psql(
        "postgres",
        "SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) FROM marker",
    );
    assert_eq!(batches, "1,2", "restore to {target}: {}", run.stdout);
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM marker"),
        "200"
    );
    assert!(
        timeline(&restored) > 1,
        "the restored server is on a new timeline"
    );
    let verify = |query: &str| {
        let spool = tempfile::tempdir().unwrap();
        env.iter()
            .fold(sidecar(&pg, &bucket, spool.path()), |s, (k, v)| s.env(k, v))
            .args(&["pitr", "verify", "--host", "127.0.0.1", "--port"])
            .args(&[
                &restored.port.to_string(),
                "--time",
                &target,
                "--query",
                query,
            ])
            .run()
    };
    let passed = verify("SELECT count(*) = 200 FROM marker").expect_code(0);
    for line in [
        "ok   the server left recovery (promoted)",
        "is the archive's",
        "ok   new timeline 2, restored from timeline 1",
        "is at or before the target",
        "ok   the query returned t",
    ] {
        assert!(passed.stdout.contains(line), "{line}: {}", passed.stdout);
    }
    let failed = verify("SELECT count(*) = 300 FROM marker").expect_code(1);
    assert!(
        failed.stdout.contains("FAIL the query returned f"),
        "{}",
        failed.stdout
    );
    bucket
}

/// WAL and base backups encrypted with age (a passphrase here) restore the same way; no
/// object is stored in the clear.
#[test]
fn an_encrypted_archive_restores_to_a_time() {
    const PASS: (&str, &str) = ("PGSIDECAR_ENCRYPTION__PASSPHRASE", "correct horse battery");
    let bucket = time_target_with(15, &[PASS]);
    let keys = s3().keys(&bucket, "p/~pitr/");
    let data: Vec<&String> = keys.iter().filter(|k| !k.ends_with(".base.json")).collect();
    assert!(data.len() > 3, "{keys:?}");
    assert!(data.iter().all(|k| k.ends_with(".zst.age")), "{keys:?}");
}

#[test]
fn time_target_restores_exactly_the_batches_before_it_13() {
    time_target(13);
}

#[test]
fn time_target_restores_exactly_the_batches_before_it_15() {
    time_target(15);
}

#[test]
fn time_target_restores_exactly_the_batches_before_it_17() {
    time_target(17);
}

#[test]
fn time_target_restores_exactly_the_batches_before_it_18() {
    time_target(18);
}

#[test]
fn a_missing_wal_object_is_named_and_the_restore_writes_nothing() {
    let pg = cluster(17);
    let bucket = s3().bucket("pitr-gap");
    let spool = tempfile::tempdir().unwrap();
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let daemon = start_archiving(sidecar(&pg, &bucket, spool.path()));
    let last = write_segments(&pg, 1..=4);
    assert!(wait_stored(&bucket, &last, 60), "{}", daemon.stderr());
    stop(daemon);
    let segments = stored_segments(&bucket);
    let victim = &segments[segments.len() - 2];
    let key = s3()
        .keys(&bucket, "p/~pitr/")
        .into_iter()
        .find(|k| k.contains(&format!("/wal/{victim}.")))
        .unwrap();
    s3().delete(&bucket, &key);

    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("data");
    let run = sidecar(&pg, &bucket, spool.path())
        .args(&[
            "pitr",
            "restore",
            "--time",
            "latest",
            "--to",
            to.to_str().unwrap(),
        ])
        .run();
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains(&format!("WAL segment {victim} is missing")),
        "{}",
        run.stderr
    );
    assert!(!to.exists(), "the refused restore created {}", to.display());
    assert!(!dir.path().join("data.wal").exists());
}

#[test]
fn a_lost_spool_and_a_killed_sidecar_open_no_gap() {
    let pg = cluster(15);
    let bucket = s3().bucket("pitr-spool");
    let spool = tempfile::tempdir().unwrap();
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let mut daemon = start_archiving(sidecar(&pg, &bucket, spool.path()));
    let first = write_segment(&pg, 1);
    assert!(wait_stored(&bucket, &first, 60), "{}", daemon.stderr());
    daemon.signal("KILL");
    daemon.wait_exit(10);
    // Written while no sidecar runs, its spool gone.
    std::fs::remove_dir_all(spool.path()).unwrap();
    let last = write_segments(&pg, 2..=4);
    // An idle server: the receiver starts again at the slot, below the server's position.
    let daemon = Daemon::start(sidecar(&pg, &bucket, spool.path()));
    assert!(wait_stored(&bucket, &last, 60), "{}", daemon.stderr());
    pg.psql(
        "postgres",
        "INSERT INTO marker(batch) SELECT 5 FROM generate_series(1, 50)",
    );
    std::thread::sleep(Duration::from_secs(3));
    let log = stop(daemon);
    assert!(
        !log.contains("expected"),
        "the receiver restarted out of order: {log}"
    );
    assert!(!log.contains("other contents"), "{log}");
    let segments = stored_segments(&bucket);
    let first = u64::from_str_radix(&segments[0][16..], 16).unwrap();
    for (i, name) in segments.iter().enumerate() {
        assert_eq!(
            u64::from_str_radix(&name[16..], 16).unwrap(),
            first + i as u64,
            "a gap in {segments:?}"
        );
    }
    pg.crash();
    let (restored, _) = restore_and_start(&pg, &bucket, "latest");
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) FROM marker"
        ),
        "1,2,3,4,5"
    );
}

#[test]
fn storage_down_holds_wal_on_the_server_then_the_archive_catches_up() {
    let pg = cluster(16);
    let bucket = s3().bucket("pitr-s3down");
    let spool = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(s3().port);
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let through_proxy = || sidecar(&pg, &bucket, spool.path()).through(&proxy);
    let daemon = start_archiving(through_proxy());
    let first = write_segment(&pg, 1);
    assert!(wait_stored(&bucket, &first, 60), "{}", daemon.stderr());
    let retained = || -> u64 {
        pg.psql(
            "postgres",
            "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = 'pgsidecar'",
        )
        .parse()
        .unwrap()
    };
    proxy.cut();
    let before = retained();
    let last = write_segments(&pg, 2..=4);
    // 8 s in CI; `PGSC_TEST_PITR_OUTAGE_SECS=180` for the minutes of a real outage, by hand.
    let outage: u64 = std::env::var("PGSC_TEST_PITR_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    std::thread::sleep(Duration::from_secs(outage));
    let during = retained();
    assert!(
        during >= before + 3 * (16 << 20) - (16 << 20),
        "the slot released WAL that was not stored: {before} -> {during} bytes"
    );
    proxy.restore();
    let back = Instant::now();
    assert!(wait_stored(&bucket, &last, 120), "{}", daemon.stderr());
    println!(
        "archive caught up {:.1} s after storage came back",
        back.elapsed().as_secs_f64()
    );
    assert!(
        wait_until(30, || retained() < during),
        "the slot did not move after the archive caught up"
    );
    stop(daemon);
    pg.crash();
    let (restored, _) = restore_and_start(&pg, &bucket, "latest");
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) FROM marker"
        ),
        "1,2,3,4"
    );
}

#[test]
fn a_lost_slot_is_reported_recreated_and_a_base_backup_taken_at_once() {
    let pg = cluster_keeping(15, "32MB");
    let bucket = s3().bucket("pitr-lost");
    let (spool, proxy, hook, daemon) = archiving_behind_a_proxy(&pg, &bucket);
    proxy.cut();
    for batch in 2..=6 {
        write_segment(&pg, batch);
    }
    pg.psql("postgres", "CHECKPOINT");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgsidecar'"
        ),
        "lost"
    );
    proxy.restore();
    assert!(
        wait_until(120, || hook
            .messages()
            .iter()
            .any(|m| m["kind"] == "archive_alert")),
        "no alert: {}",
        daemon.stderr()
    );
    let alert = hook
        .messages()
        .into_iter()
        .find(|m| m["kind"] == "archive_alert")
        .unwrap();
    assert!(
        alert["error"].as_str().unwrap().contains("lost WAL"),
        "{alert}"
    );
    // A second base backup, of the new slot's start.
    assert!(
        wait_until(120, || base_backups_done(&daemon) >= 2),
        "{}",
        daemon.stderr()
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgsidecar'"
        ),
        "reserved"
    );
    let last = write_segment(&pg, 7);
    assert!(wait_stored(&bucket, &last, 60), "{}", daemon.stderr());
    stop(daemon);
    let listed = sidecar(&pg, &bucket, spool.path())
        .args(&["list", "--pitr", "--json"])
        .run()
        .expect_code(0);
    let rows: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{}", listed.stdout);
    assert!(
        rows.iter().all(|r| r["restorable"] == true),
        "{}",
        listed.stdout
    );
    assert!(
        rows[1]["window"].as_str().unwrap().contains("missing"),
        "the older backup's window ends at the hole: {}",
        listed.stdout
    );
    pg.crash();
    let (restored, _) = restore_and_start(&pg, &bucket, "latest");
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM marker WHERE batch = 7"),
        "50"
    );
}

#[test]
fn a_cluster_with_another_tablespace_is_refused_and_nothing_is_stored() {
    let pg = cluster(15);
    let bucket = s3().bucket("pitr-tblspc");
    let spool = tempfile::tempdir().unwrap();
    let location = tempfile::Builder::new()
        .prefix("pgsc-tblspc-")
        .tempdir()
        .unwrap();
    if harness::postgres_ids().is_some() {
        std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(location.path())
            .status()
            .unwrap();
    }
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLESPACE elsewhere LOCATION '{}'",
            location.path().display()
        ),
    );
    let run = sidecar(&pg, &bucket, spool.path())
        .args(&["pitr", "base-backup"])
        .run();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("tablespaces outside its data directory (elsewhere)"),
        "{}",
        run.stderr
    );
    assert!(
        s3().keys(&bucket, "").is_empty(),
        "{:?}",
        s3().keys(&bucket, "")
    );
    let listed = sidecar(&pg, &bucket, spool.path())
        .args(&["list", "--pitr"])
        .run()
        .expect_code(0);
    assert!(
        listed.stdout.contains("no point-in-time recovery archive"),
        "{}",
        listed.stdout
    );
}

#[test]
fn check_names_what_the_server_lacks_with_the_fix() {
    let pg = cluster(15);
    pg.psql(
        "postgres",
        "CREATE ROLE plain LOGIN PASSWORD 'plainpw'; GRANT pg_read_all_settings TO plain",
    );
    pg.psql("postgres", "ALTER SYSTEM SET max_slot_wal_keep_size = -1");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let spool = tempfile::tempdir().unwrap();
    let check = || {
        sidecar(&pg, "unused", spool.path())
            .env("PGSIDECAR_PITR__USER", "plain")
            .env("PGSIDECAR_PITR__PASSWORD", "plainpw")
            .args(&["pitr", "check"])
            .run()
    };
    let run = check();
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(
        out.contains("FAIL role `plain` lacks the REPLICATION attribute"),
        "{out}"
    );
    assert!(out.contains("ALTER ROLE \"plain\" REPLICATION;"), "{out}");
    assert!(out.contains("FAIL max_slot_wal_keep_size is -1"), "{out}");
    assert!(!out.contains("plainpw") && !run.stderr.contains("plainpw"));

    // With the attribute but without a replication line in pg_hba.conf.
    pg.psql("postgres", "ALTER ROLE plain REPLICATION");
    let hba = pg.psql("postgres", "SHOW hba_file");
    let kept: Vec<String> = std::fs::read_to_string(&hba)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("replication"))
        .map(String::from)
        .collect();
    std::fs::write(&hba, kept.join("\n") + "\n").unwrap();
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let run = check();
    let out = &run.stdout;
    assert_eq!(run.code, 1, "{out}");
    assert!(out.contains("ok   role `plain` may replicate"), "{out}");
    assert!(
        out.contains("FAIL a replication connection is refused"),
        "{out}"
    );
    assert!(
        out.contains("host replication plain 127.0.0.1/32 scram-sha-256"),
        "{out}"
    );

    // The superuser passes every check on a bounded server with the line back.
    std::fs::write(
        &hba,
        kept.join("\n") + "\nhost replication all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'",
    );
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let run = sidecar(&pg, "unused", spool.path())
        .args(&["pitr", "check"])
        .run();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("FAIL"), "{}", run.stdout);
}

#[test]
fn disable_drops_the_slot() {
    let pg = cluster(15);
    let spool = tempfile::tempdir().unwrap();
    pg.psql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('pgsidecar', true)",
    );
    let run = sidecar(&pg, "unused", spool.path())
        .args(&["pitr", "disable"])
        .run()
        .expect_code(0);
    assert!(
        run.stdout
            .contains("dropped the replication slot `pgsidecar`"),
        "{}",
        run.stdout
    );
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    let again = sidecar(&pg, "unused", spool.path())
        .args(&["pitr", "disable"])
        .run()
        .expect_code(0);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
}

/// The RPO with the default `partial_interval` (30 s) when the server and the sidecar die
/// together (kill -9 of both: nothing gets a last upload). A writer commits a row every
/// 100 ms; the figure is the age, at the kill, of the newest acknowledged row the restore
/// lacks. Printed for docs/PERFORMANCE.md; asserted loosely (the bound, 40 s).
#[test]
fn rpo_when_server_and_sidecar_die_together() {
    let pg = cluster(17);
    let bucket = s3().bucket("pitr-rpo");
    let spool = tempfile::tempdir().unwrap();
    pg.psql("postgres", "CREATE TABLE acks(id int PRIMARY KEY)");
    let mut daemon = start_archiving(
        sidecar(&pg, &bucket, spool.path()).env("PGSIDECAR_PITR__PARTIAL_INTERVAL", "30s"),
    );
    let mut acked: Vec<(i32, Instant)> = Vec::new();
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < Duration::from_secs(75) {
        id += 1;
        pg.psql("postgres", &format!("INSERT INTO acks VALUES ({id})"));
        acked.push((id, Instant::now()));
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.signal("KILL");
    pg.crash();
    let killed = Instant::now();
    daemon.wait_exit(10);
    let (restored, _) = restore_and_start(&pg, &bucket, "latest");
    let present: i32 = restored
        .psql("postgres", "SELECT coalesce(max(id), 0) FROM acks")
        .parse()
        .unwrap();
    let count: i32 = restored
        .psql("postgres", "SELECT count(*) FROM acks")
        .parse()
        .unwrap();
    assert_eq!(
        count, present,
        "rows are missing below the newest restored one"
    );
    let lost = acked.iter().find(|(i, _)| *i == present + 1);
    let rpo = lost.map_or(Duration::ZERO, |(_, at)| killed - *at);
    println!(
        "RPO (server and sidecar killed together, partial_interval 30s): {:.1} s; {} of {} acknowledged rows restored",
        rpo.as_secs_f64(),
        present,
        acked.len()
    );
    assert!(rpo < Duration::from_secs(40), "RPO {rpo:?}");
}

/// The same, when only the server dies: the sidecar stores what it received at once.
#[test]
fn rpo_when_only_the_server_dies() {
    let pg = cluster(15);
    let bucket = s3().bucket("pitr-rpo-db");
    let spool = tempfile::tempdir().unwrap();
    pg.psql("postgres", "CREATE TABLE acks(id int PRIMARY KEY)");
    let daemon = start_archiving(
        sidecar(&pg, &bucket, spool.path()).env("PGSIDECAR_PITR__PARTIAL_INTERVAL", "30s"),
    );
    let mut acked: Vec<(i32, Instant)> = Vec::new();
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < Duration::from_secs(10) {
        id += 1;
        pg.psql("postgres", &format!("INSERT INTO acks VALUES ({id})"));
        acked.push((id, Instant::now()));
        std::thread::sleep(Duration::from_millis(100));
    }
    pg.crash();
    let killed = Instant::now();
    assert!(
        daemon.wait_for("stored the partial segment", 30),
        "{}",
        daemon.stderr()
    );
    stop(daemon);
    let (restored, _) = restore_and_start(&pg, &bucket, "latest");
    let present: i32 = restored
        .psql("postgres", "SELECT coalesce(max(id), 0) FROM acks")
        .parse()
        .unwrap();
    let lost = acked.iter().find(|(i, _)| *i == present + 1);
    let rpo = lost.map_or(Duration::ZERO, |(_, at)| killed - *at);
    println!(
        "RPO (server killed, sidecar alive): {:.1} s; {present} of {} acknowledged rows restored",
        rpo.as_secs_f64(),
        acked.len()
    );
    assert_eq!(present as usize, acked.len(), "acknowledged rows were lost");
}

/// pgbench writes while a base backup runs; the restore to `latest` dumps exactly as the
/// server did before it was killed.
#[test]
fn heavy_writes_during_a_base_backup_restore_dump_equal() {
    let pg = cluster(17);
    let bucket = s3().bucket("pitr-bench");
    let spool = tempfile::tempdir().unwrap();
    let bench = |args: &[&str]| {
        let out = pg
            .client("pgbench")
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    bench(&["-i", "-q", "-s", "5"]);
    let daemon = start_archiving(sidecar(&pg, &bucket, spool.path()));
    let load = std::thread::scope(|scope| {
        let load = scope.spawn(|| bench(&["-c", "4", "-T", "20", "-n"]));
        std::thread::sleep(Duration::from_secs(3));
        let run = sidecar(&pg, &bucket, spool.path())
            .args(&["pitr", "base-backup"])
            .run()
            .expect_code(0);
        load.join().unwrap();
        run
    });
    assert!(load.stdout.contains("/base/"), "{}", load.stdout);
    let before = pg.dumpall();
    let last = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(wait_stored(&bucket, &last, 120), "{}", daemon.stderr());
    stop(daemon);
    pg.crash();
    let listed = sidecar(&pg, &bucket, spool.path())
        .args(&["list", "--pitr", "--json"])
        .run()
        .expect_code(0);
    let rows: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{}", listed.stdout);
    let (restored, run) = restore_and_start(&pg, &bucket, "latest");
    // The base backup taken under load is the one restored.
    assert!(
        run.stdout.contains(
            rows[0]["started_at"]
                .as_str()
                .unwrap()
                .get(..19)
                .unwrap()
                .replace('T', " ")
                .as_str()
        ),
        "{}\n{}",
        run.stdout,
        listed.stdout
    );
    assert!(
        restored.dumpall() == before,
        "the restored cluster dumps differently"
    );
}

/// Every archived segment, decompressed, equals what a plain pg_receivewal beside the
/// sidecar wrote.
#[test]
fn archived_segments_equal_a_plain_pg_receivewal() {
    let pg = cluster(16);
    let bucket = s3().bucket("pitr-bytes");
    let spool = tempfile::tempdir().unwrap();
    let plain = tempfile::tempdir().unwrap();
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let daemon = start_archiving(sidecar(&pg, &bucket, spool.path()));
    let mut receiver = pg
        .client("pg_receivewal")
        .args(["-D", plain.path().to_str().unwrap(), "--no-loop"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let last = write_segments(&pg, 1..=3);
    assert!(wait_stored(&bucket, &last, 60), "{}", daemon.stderr());
    let _ = receiver.kill();
    let _ = receiver.wait();
    stop(daemon);
    let keys = s3().keys(&bucket, "p/~pitr/");
    let mut compared = 0;
    for entry in std::fs::read_dir(plain.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.len() != 24 {
            continue;
        }
        let key = keys
            .iter()
            .find(|k| k.contains(&format!("/wal/{name}.")) && !k.contains(".partial."))
            .unwrap_or_else(|| panic!("{name} was received but not archived: {keys:?}"));
        let stored = harness::unzstd(&s3().get(&bucket, key));
        assert!(
            stored == std::fs::read(plain.path().join(&name)).unwrap(),
            "{name} differs from pg_receivewal's"
        );
        compared += 1;
    }
    assert!(compared >= 3, "only {compared} segments compared");
}

/// An idle server for a while (90 s here; `PGSC_TEST_PITR_IDLE_SECS=600` for the ten minutes
/// of the issue, run by hand), the receiver killed in the middle of it: the archiver starts
/// again at the slot, below the server's position, reports nothing as broken, and what is
/// written afterwards is archived with no gap.
#[test]
fn an_idle_server_with_a_restarted_receiver_reports_nothing_broken() {
    let idle: u64 = std::env::var("PGSC_TEST_PITR_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90);
    let pg = cluster(17);
    let bucket = s3().bucket("pitr-idle");
    let spool = tempfile::tempdir().unwrap();
    let hook = FakeHttp::start(Answer::Status(200));
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let daemon = start_archiving(
        sidecar(&pg, &bucket, spool.path()).env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url()),
    );
    let first = write_segment(&pg, 1);
    assert!(wait_stored(&bucket, &first, 60), "{}", daemon.stderr());
    std::thread::sleep(Duration::from_secs(idle / 2));
    let receivers = harness::children_named(daemon.child.id(), "pg_receivewal");
    assert_eq!(receivers.len(), 1, "{receivers:?}");
    std::process::Command::new("kill")
        .args(["-9", &receivers[0].to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_secs(idle - idle / 2));
    let last = write_segment(&pg, 2);
    assert!(wait_stored(&bucket, &last, 60), "{}", daemon.stderr());
    let log = stop(daemon);
    assert!(
        log.contains("WAL archiving stopped, restarting"),
        "the receiver was not restarted: {log}"
    );
    for bad in ["expected", "other contents", "lost WAL", "is missing"] {
        assert!(!log.contains(bad), "`{bad}` in {log}");
    }
    assert!(hook.messages().is_empty(), "{:?}", hook.messages());
    let segments = stored_segments(&bucket);
    let first_no = u64::from_str_radix(&segments[0][16..], 16).unwrap();
    for (i, name) in segments.iter().enumerate() {
        assert_eq!(
            u64::from_str_radix(&name[16..], 16).unwrap(),
            first_no + i as u64,
            "{segments:?}"
        );
    }
}

#[test]
fn a_slot_dropped_under_a_running_archiver_is_alerted_and_recreated() {
    let pg = cluster(16);
    let bucket = s3().bucket("pitr-dropped");
    let spool = tempfile::tempdir().unwrap();
    let hook = FakeHttp::start(Answer::Status(200));
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let daemon = start_archiving(
        sidecar(&pg, &bucket, spool.path()).env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url()),
    );
    let first = write_segment(&pg, 1);
    assert!(wait_stored(&bucket, &first, 60), "{}", daemon.stderr());
    sidecar(&pg, &bucket, spool.path())
        .args(&["pitr", "disable"])
        .run()
        .expect_code(0);
    assert!(
        wait_until(60, || hook.messages().iter().any(|m| m["kind"]
            == "archive_alert"
            && m["error"]
                .as_str()
                .unwrap_or_default()
                .contains("is missing"))),
        "{:?}\n{}",
        hook.messages(),
        daemon.stderr()
    );
    assert!(
        wait_until(60, || base_backups_done(&daemon) >= 2),
        "{}",
        daemon.stderr()
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgsidecar'"
        ),
        "1"
    );
    stop(daemon);
}

/// A restore while the daemon archives a busy server: the partial segment it staged may be
/// replaced (and deleted) meanwhile; the restore reads the archive again and succeeds.
#[test]
fn a_restore_while_archiving_goes_on_succeeds() {
    let pg = cluster(15);
    let bucket = s3().bucket("pitr-live");
    let spool = tempfile::tempdir().unwrap();
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let daemon = start_archiving(sidecar(&pg, &bucket, spool.path()));
    let stop_writing = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut batch = 0;
            while !stop_writing.load(std::sync::atomic::Ordering::Relaxed) {
                batch += 1;
                pg.psql(
                    "postgres",
                    &format!("INSERT INTO marker SELECT {batch} FROM generate_series(1, 2000)"),
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        std::thread::sleep(Duration::from_secs(4));
        for _ in 0..3 {
            let (restored, run) = restore_and_start(&pg, &bucket, "latest");
            assert!(run.stdout.contains("(partial)"), "{}", run.stdout);
            let rows: u64 = restored
                .psql("postgres", "SELECT count(*) FROM marker")
                .parse()
                .unwrap();
            assert!(rows > 0 && rows.is_multiple_of(2000), "{rows} rows");
            restored.crash();
        }
        stop_writing.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    stop(daemon);
}

/// `pitr prune` by `keep_last = 2`: the oldest base backup and the WAL only it needed go;
/// both kept backups restore to times inside their windows and to the end.
#[test]
fn pruning_keeps_every_retained_backup_restorable() {
    let pg = cluster(17);
    let bucket = s3().bucket("pitr-prune");
    let spool = tempfile::tempdir().unwrap();
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let daemon = start_archiving(sidecar(&pg, &bucket, spool.path()));
    let now_text = |pg: &Pg| {
        pg.psql(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
    };
    let base_backup = || {
        std::thread::sleep(Duration::from_millis(1100));
        sidecar(&pg, &bucket, spool.path())
            .args(&["pitr", "base-backup"])
            .run()
            .expect_code(0);
        std::thread::sleep(Duration::from_millis(1100));
    };
    write_segments(&pg, 1..=2);
    base_backup();
    write_segments(&pg, 3..=4);
    std::thread::sleep(Duration::from_millis(1100));
    let inside_second = now_text(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    write_segments(&pg, 5..=6);
    base_backup();
    write_segment(&pg, 7);
    std::thread::sleep(Duration::from_millis(1100));
    let inside_third = now_text(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    let last = write_segment(&pg, 8);
    assert!(wait_stored(&bucket, &last, 60), "{}", daemon.stderr());
    stop(daemon);
    let pruner =
        || sidecar(&pg, &bucket, spool.path()).env("PGSIDECAR_PITR__RETENTION__KEEP_LAST", "2");
    let before = s3().keys(&bucket, "p/~pitr/");
    let dry = pruner()
        .args(&["pitr", "prune", "--dry-run"])
        .run()
        .expect_code(0);
    assert!(
        dry.stdout.contains("would delete base backup"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("would delete") && dry.stdout.contains("WAL object(s) before"),
        "{}",
        dry.stdout
    );
    assert_eq!(
        s3().keys(&bucket, "p/~pitr/"),
        before,
        "--dry-run deleted something"
    );
    let run = pruner().args(&["pitr", "prune"]).run().expect_code(0);
    assert!(
        run.stdout.contains("keep base backup") && run.stdout.contains("WAL from"),
        "{}",
        run.stdout
    );
    let listed = sidecar(&pg, &bucket, spool.path())
        .args(&["list", "--pitr", "--json"])
        .run()
        .expect_code(0);
    let rows: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{}", listed.stdout);
    assert!(
        rows.iter().all(|r| r["restorable"] == true),
        "{}",
        listed.stdout
    );
    assert!(s3().keys(&bucket, "p/~pitr/").len() < before.len());
    // A second prune finds nothing more to do.
    let again = pruner().args(&["pitr", "prune"]).run().expect_code(0);
    assert!(!again.stdout.contains("deleted"), "{}", again.stdout);

    pg.crash();
    let batches = |time: &str| {
        let (restored, _) = restore_and_start(&pg, &bucket, time);
        let b = restored.psql(
            "postgres",
            "SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) FROM marker",
        );
        restored.crash();
        b
    };
    assert_eq!(batches(&inside_second), "1,2,3,4");
    assert_eq!(batches(&inside_third), "1,2,3,4,5,6,7");
    assert_eq!(batches("latest"), "1,2,3,4,5,6,7,8");
}

/// The value of the unlabelled metric `name` in a `/metrics` answer.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Storage down long enough: the archive lag passes `pitr.max_lag`, `/healthz` and `health`
/// fail saying so, one alert is sent, `/metrics` shows the lag and the slot; once storage is
/// back the lag returns to 0 and health passes.
#[test]
fn archive_lag_is_alerted_and_shown_in_health_and_metrics() {
    let pg = cluster(15);
    let bucket = s3().bucket("pitr-lag");
    let spool = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(s3().port);
    let hook = FakeHttp::start(Answer::Status(200));
    let port = harness::free_port();
    let status = spool.path().join("status.json");
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let configured = || {
        sidecar(&pg, &bucket, spool.path())
            .through(&proxy)
            .env("PGSIDECAR_PITR__MAX_LAG", "5s")
            .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url())
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("PGSIDECAR_HEALTH__STATUS_FILE", &status)
    };
    let daemon = start_archiving(configured());
    let first = write_segment(&pg, 1);
    assert!(wait_stored(&bucket, &first, 60), "{}", daemon.stderr());
    assert!(
        wait_until(30, || {
            let m = harness::http_get(port, "/metrics");
            metric(&m, "pgsidecar_pitr_archive_lag_seconds") == Some(0.0)
                && metric(&m, "pgsidecar_pitr_slot_retained_bytes").is_some()
        }),
        "{}",
        harness::http_get(port, "/metrics")
    );
    assert!(
        harness::http_get(port, "/healthz").starts_with("HTTP/1.1 200"),
        "{}",
        harness::http_get(port, "/healthz")
    );

    proxy.cut();
    let last = write_segments(&pg, 2..=3);
    assert!(
        wait_until(90, || hook.messages().iter().any(|m| m["kind"]
            == "archive_alert"
            && m["error"]
                .as_str()
                .unwrap_or_default()
                .contains("behind the server"))),
        "{:?}\n{}",
        hook.messages(),
        daemon.stderr()
    );
    let health = harness::http_get(port, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 503") && health.contains("WAL archiving is"),
        "{health}"
    );
    let lag = metric(
        &harness::http_get(port, "/metrics"),
        "pgsidecar_pitr_archive_lag_seconds",
    )
    .unwrap();
    assert!(lag > 5.0, "lag {lag}");
    assert!(
        wait_until(30, || {
            let run = configured().args(&["health"]).run();
            run.code == 1 && run.stdout.contains("WAL archiving is")
        }),
        "{:?}",
        configured().args(&["health"]).run().stdout
    );

    proxy.restore();
    assert!(wait_stored(&bucket, &last, 120), "{}", daemon.stderr());
    assert!(
        wait_until(60, || metric(
            &harness::http_get(port, "/metrics"),
            "pgsidecar_pitr_archive_lag_seconds"
        ) == Some(0.0)),
        "{}",
        harness::http_get(port, "/metrics")
    );
    assert!(wait_until(30, || harness::http_get(port, "/healthz")
        .starts_with("HTTP/1.1 200")));
    let alerts = hook
        .messages()
        .iter()
        .filter(|m| {
            m["error"]
                .as_str()
                .unwrap_or_default()
                .contains("behind the server")
        })
        .count();
    assert_eq!(alerts, 1, "one alert per episode: {:?}", hook.messages());
    stop(daemon);
}

/// Storage down while the server writes: once the slot holds more than 80% of
/// `max_slot_wal_keep_size`, one alert says so (before the server drops any WAL).
#[test]
fn a_slot_nearly_full_is_alerted_before_wal_is_lost() {
    let pg = cluster_keeping(15, "64MB");
    let bucket = s3().bucket("pitr-full");
    let (_spool, proxy, hook, daemon) = archiving_behind_a_proxy(&pg, &bucket);
    assert!(hook.messages().is_empty(), "{:?}", hook.messages());
    proxy.cut();
    // 4 segments: 64 MB retained, above 80% of 64 MB; no checkpoint, so nothing is dropped.
    write_segments(&pg, 2..=5);
    assert!(
        wait_until(90, || hook.messages().iter().any(|m| m["error"]
            .as_str()
            .unwrap_or_default()
            .contains("more than 80% of max_slot_wal_keep_size"))),
        "{:?}\n{}",
        hook.messages(),
        daemon.stderr()
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT wal_status <> 'lost' FROM pg_replication_slots WHERE slot_name = 'pgsidecar'"
        ),
        "t"
    );
    proxy.restore();
    stop(daemon);
}

/// A cluster restored to a time and put back in service runs on a new timeline without the
/// sidecar's slot: the sidecar archives it from there without an alarm (nothing was lost),
/// stores its history file, takes a base backup of the new timeline at once, and a later
/// restore replays the new history, never the writes the restore left behind.
#[test]
fn a_restored_cluster_is_archived_on_its_new_timeline_without_mixing_histories() {
    let pg = cluster(17);
    let bucket = s3().bucket("pitr-timeline");
    let spool = tempfile::tempdir().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE marker(batch int, at timestamptz DEFAULT clock_timestamp())",
    );
    let daemon = start_archiving(sidecar(&pg, &bucket, spool.path()));
    pg.psql(
        "postgres",
        "INSERT INTO marker(batch) SELECT 1 FROM generate_series(1, 10)",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let target = pg.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    // The writes the restore leaves behind.
    let abandoned = write_segment(&pg, 2);
    assert!(wait_stored(&bucket, &abandoned, 60), "{}", daemon.stderr());
    stop(daemon);
    pg.crash();
    let first_base = s3()
        .keys(&bucket, "p/~pitr/")
        .into_iter()
        .find(|k| k.ends_with(".base.json"))
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".base.json")
        .to_string();

    let (restored, _) = restore_and_start(&pg, &bucket, &target);
    assert_eq!(timeline(&restored), 2);
    let hook = FakeHttp::start(Answer::Status(200));
    let spool2 = tempfile::tempdir().unwrap();
    let daemon = start_archiving(
        sidecar(&restored, &bucket, spool2.path())
            .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url()),
    );
    let after = write_segment(&restored, 3);
    assert!(wait_stored(&bucket, &after, 60), "{}", daemon.stderr());
    assert!(after.starts_with("00000002"), "{after}");
    assert!(
        wait_until(30, || s3()
            .keys(&bucket, "p/~pitr/")
            .iter()
            .any(|k| k.contains("/wal/00000002.history."))),
        "the new timeline's history is archived: {}",
        daemon.stderr()
    );
    assert!(
        restored.psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgsidecar'"
        ) == "1",
        "the slot was created on the restored cluster"
    );
    let log = stop(daemon);
    assert!(log.contains("a timeline new to the archive"), "{log}");
    assert!(
        hook.messages().iter().all(|m| m["kind"] != "archive_alert"),
        "a restored cluster is not an alarm: {:?}",
        hook.messages()
    );
    let listed = sidecar(&restored, &bucket, spool2.path())
        .args(&["list", "--pitr", "--json"])
        .run()
        .expect_code(0);
    let rows: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert!(
        rows.iter()
            .any(|r| r["timeline"] == 2 && r["restorable"] == true),
        "{}",
        listed.stdout
    );

    // The new history, and not batch 2, which only the old timeline holds.
    restored.crash();
    let (again, _) = restore_and_start(&restored, &bucket, "latest");
    assert_eq!(
        again.psql(
            "postgres",
            "SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) FROM marker"
        ),
        "1,3"
    );
    assert!(timeline(&again) >= 3, "a timeline no history names yet");

    // Without the new timeline's base backup, `latest` restores timeline 1's: its replay ends
    // where timeline 2 left it, so batch 2 (written on timeline 1 after that) stays out.
    for key in s3().keys(&bucket, "p/~pitr/") {
        if key.contains("/base/") && !key.contains(&first_base) {
            s3().delete(&bucket, &key);
        }
    }
    again.crash();
    let (old_base, run) = restore_and_start(&again, &bucket, "latest");
    assert!(
        run.stderr.contains("when timeline 2 began"),
        "{}",
        run.stderr
    );
    assert_eq!(
        old_base.psql(
            "postgres",
            "SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) FROM marker"
        ),
        "1"
    );
}

/// A directory the scratch server may run in: PostgreSQL refuses root, so as root the drill
/// runs it as the directory's owner.
fn drill_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgsc-drill-")
        .tempdir()
        .unwrap();
    if harness::postgres_ids().is_some() {
        std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
    }
    dir
}

/// Point-in-time drills on their own schedule: each restores the newest archived WAL into a
/// scratch directory, starts PostgreSQL on it, checks it, records its RTO and RPO for
/// `/metrics`, notifies, and leaves nothing behind.
#[test]
fn a_pitr_drill_runs_on_schedule_and_its_metrics_appear() {
    let pg = cluster(18);
    let bucket = s3().bucket("pitr-drill");
    let spool = tempfile::tempdir().unwrap();
    let drills = drill_dir();
    let hook = FakeHttp::start(Answer::Status(200));
    let port = harness::free_port();
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let daemon = start_archiving(
        sidecar(&pg, &bucket, spool.path())
            .env("PGSIDECAR_PITR__HEARTBEAT", "1s")
            .env("PGSIDECAR_PITR__DRILL__SCHEDULE", "*/20 * * * * *")
            .env("PGSIDECAR_PITR__DRILL__TIMEOUT", "60s")
            .env("PGSIDECAR_PITR__DRILL__DIR", drills.path())
            .env(
                "PGSIDECAR_PITR__DRILL__QUERY",
                "SELECT count(*) = 50 FROM marker",
            )
            .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url())
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "PGSIDECAR_HEALTH__STATUS_FILE",
                spool.path().join("status.json"),
            ),
    );
    write_segment(&pg, 1);
    assert!(
        wait_until(90, || hook
            .messages()
            .iter()
            .any(|m| m["kind"] == "drill_passed" && m["job"] == "pitr")),
        "{:?}\n{}",
        hook.messages(),
        daemon.stderr()
    );
    let passed = hook
        .messages()
        .into_iter()
        .find(|m| m["kind"] == "drill_passed")
        .unwrap();
    let summary = passed["summary"].as_str().unwrap_or_default().to_string();
    assert!(summary.contains("promoted and checked in"), "{passed}");
    let metrics = harness::http_get(port, "/metrics");
    assert_eq!(
        metric(&metrics, "pgsidecar_pitr_drill_last_passed"),
        Some(1.0),
        "{metrics}"
    );
    let rto = metric(&metrics, "pgsidecar_pitr_drill_rto_seconds").unwrap();
    let rpo = metric(&metrics, "pgsidecar_pitr_drill_rpo_seconds").unwrap();
    assert!(rto > 0.0 && rto < 90.0, "rto {rto}");
    // With a heartbeat every second and partials every second, the newest restore loses a
    // few seconds at most.
    assert!(rpo < 15.0, "rpo {rpo}\n{summary}");
    assert!(metric(&metrics, "pgsidecar_pitr_drill_age_seconds").is_some());
    println!("drill: RTO {rto:.1} s, RPO {rpo:.1} s ({summary})");
    stop(daemon);
    assert_eq!(
        std::fs::read_dir(drills.path()).unwrap().count(),
        0,
        "the drill left files"
    );

    // Restarted without drills, the daemon still reports the last one (from its status
    // file), so an alert on an overdue drill does not wait for the next. That is the one the
    // stopped daemon recorded: another may have run after `rto` was read.
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spool.path().join("status.json")).unwrap()).unwrap();
    let recorded = recorded["pitr"]["last_drill_rto_secs"].as_f64();
    assert!(
        recorded.is_some_and(|r| r > 0.0),
        "no drill in the status file"
    );
    let port = harness::free_port();
    let restarted = Daemon::start(
        sidecar(&pg, &bucket, spool.path())
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "PGSIDECAR_HEALTH__STATUS_FILE",
                spool.path().join("status.json"),
            ),
    );
    let carried = || {
        metric(
            &harness::http_get(port, "/metrics"),
            "pgsidecar_pitr_drill_rto_seconds",
        )
    };
    assert!(
        wait_until(60, || carried().is_some()),
        "{}",
        restarted.stderr()
    );
    assert_eq!(carried(), recorded);
    let metrics = harness::http_get(port, "/metrics");
    assert_eq!(
        metric(&metrics, "pgsidecar_pitr_drill_last_passed"),
        Some(1.0),
        "{metrics}"
    );
    stop(restarted);
}

/// A drill by hand: a random time in the window passes; a check that fails makes it fail
/// (exit 1) with the check named, and neither leaves a directory or a server behind.
#[test]
fn a_pitr_drill_by_hand_fails_when_a_check_fails_and_leaves_nothing() {
    let pg = cluster(15);
    let bucket = s3().bucket("pitr-drill-hand");
    let spool = tempfile::tempdir().unwrap();
    let drills = drill_dir();
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let daemon =
        start_archiving(sidecar(&pg, &bucket, spool.path()).env("PGSIDECAR_PITR__HEARTBEAT", "1s"));
    let last = write_segments(&pg, 1..=2);
    assert!(wait_stored(&bucket, &last, 60), "{}", daemon.stderr());
    std::thread::sleep(Duration::from_secs(6));
    let drill = |query: &str, time: &str| {
        sidecar(&pg, &bucket, spool.path())
            .env("PGSIDECAR_PITR__HEARTBEAT", "1s")
            .env("PGSIDECAR_PITR__DRILL__DIR", drills.path())
            .env("PGSIDECAR_PITR__DRILL__TIMEOUT", "60s")
            .env("PGSIDECAR_PITR__DRILL__QUERY", query)
            .args(&["pitr", "drill", "--time", time])
            .run()
    };
    let ok = drill("SELECT count(*) >= 0 FROM marker", "random");
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("drill passed: restored 20"),
        "{}",
        ok.stdout
    );
    let bad = drill("SELECT count(*) = 1 FROM marker", "newest");
    assert_eq!(bad.code, 1, "{}\n{}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout.contains("drill failed") && bad.stdout.contains("the query returned f"),
        "{}",
        bad.stdout
    );
    stop(daemon);
    assert_eq!(std::fs::read_dir(drills.path()).unwrap().count(), 0);
    let servers = std::process::Command::new("pgrep")
        .args(["-f", &drills.path().display().to_string()])
        .output()
        .unwrap();
    assert!(
        servers.stdout.is_empty(),
        "a scratch server is left running"
    );
}

/// The periodic WAL check finds a hole (an object deleted under the archive), alerts once,
/// fails health, exports it, and takes a base backup that starts a restorable chain.
#[test]
fn a_gap_found_by_the_periodic_wal_check_is_alerted_and_a_base_backup_taken() {
    let pg = cluster(15);
    let bucket = s3().bucket("pitr-gap-check");
    let spool = tempfile::tempdir().unwrap();
    let hook = FakeHttp::start(Answer::Status(200));
    let port = harness::free_port();
    pg.psql("postgres", "CREATE TABLE marker(batch int)");
    let daemon = start_archiving(
        sidecar(&pg, &bucket, spool.path())
            .env("PGSIDECAR_PITR__CHECK_INTERVAL", "1s")
            .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url())
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "PGSIDECAR_HEALTH__STATUS_FILE",
                spool.path().join("status.json"),
            ),
    );
    let middle = write_segment(&pg, 1);
    let last = write_segments(&pg, 2..=3);
    assert!(wait_stored(&bucket, &last, 60), "{}", daemon.stderr());
    let key = s3()
        .keys(&bucket, "p/~pitr/")
        .into_iter()
        .find(|k| k.contains(&format!("/wal/{middle}.")))
        .unwrap();
    s3().delete(&bucket, &key);
    assert!(
        wait_until(30, || alerted(
            &hook,
            &format!("found segment {middle} missing")
        )),
        "{:?}\n{}",
        hook.messages(),
        daemon.stderr()
    );
    // A second base backup, which starts a chain after the hole.
    assert!(
        wait_until(60, || base_backups_done(&daemon) >= 2),
        "{}",
        daemon.stderr()
    );
    assert!(
        wait_until(30, || metric(
            &harness::http_get(port, "/metrics"),
            "pgsidecar_pitr_wal_gaps"
        ) == Some(0.0)),
        "the new chain has no hole: {}",
        harness::http_get(port, "/metrics")
    );
    let alerts = hook
        .messages()
        .iter()
        .filter(|m| m["kind"] == "archive_alert")
        .count();
    assert_eq!(alerts, 1, "one alert per episode: {:?}", hook.messages());
    stop(daemon);
}

/// Base backups that keep failing (a tablespace outside the data directory here) make the
/// newest one older than its schedule allows: alerted once, with what to do.
#[test]
fn an_overdue_base_backup_is_alerted() {
    let pg = cluster(15);
    let bucket = s3().bucket("pitr-overdue");
    let spool = tempfile::tempdir().unwrap();
    let location = drill_dir();
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLESPACE elsewhere LOCATION '{}'",
            location.path().display()
        ),
    );
    let hook = FakeHttp::start(Answer::Status(200));
    let daemon = Daemon::start(
        sidecar(&pg, &bucket, spool.path())
            .env("PGSIDECAR_PITR__CHECK_INTERVAL", "1s")
            .env("PGSIDECAR_PITR__BASE_BACKUP_SCHEDULE", "*/5 * * * * *")
            .env("PGSIDECAR_HEALTH__GRACE", "1s")
            .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url()),
    );
    let overdue = |m: &Value| {
        m["kind"] == "archive_alert"
            && m["error"]
                .as_str()
                .unwrap_or_default()
                .contains("the newest base backup is")
    };
    assert!(
        wait_until(60, || hook.messages().iter().any(overdue)),
        "{:?}\n{}",
        hook.messages(),
        daemon.stderr()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hook.messages().iter().filter(|m| overdue(m)).count(), 1);
    let text = hook.messages().into_iter().find(overdue).unwrap();
    assert!(
        text["error"].as_str().unwrap().contains("pitr base-backup"),
        "{text}"
    );
    stop(daemon);
}

/// Archiving sessions that keep failing (storage refusing every upload) restart with a
/// growing pause, are counted in `/metrics`, and the fifth failure in a row is alerted once.
#[test]
fn receiver_restarts_in_a_loop_are_counted_and_alerted() {
    let pg = cluster(15);
    let bucket = s3().bucket("pitr-restarts");
    let port = harness::free_port();
    let (spool, proxy, hook, daemon) = archiving_behind_a_proxy_with(
        &pg,
        &bucket,
        &[("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}"))],
    );
    proxy.cut();
    pg.psql("postgres", "INSERT INTO marker SELECT 2");
    assert!(
        wait_until(120, || hook
            .messages()
            .iter()
            .any(|m| m["kind"] == "archive_alert")),
        "{}",
        daemon.stderr()
    );
    let restarts = metric(
        &harness::http_get(port, "/metrics"),
        "pgsidecar_pitr_receiver_restarts_total",
    )
    .unwrap_or_default();
    assert!(restarts >= 5.0, "restarts {restarts}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        hook.messages()
            .iter()
            .filter(|m| m["kind"] == "archive_alert")
            .count(),
        1,
        "{:?}",
        hook.messages()
    );
    proxy.restore();
    drop(spool);
    stop(daemon);
}

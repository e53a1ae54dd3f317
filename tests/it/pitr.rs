//! Point-in-time recovery: WAL archived by the daemon over the replication protocol, base
//! backups, and restores to a moment that a real server replays.

use std::path::Path;

use crate::harness::{self, s3, wait_until, Daemon, Pg, Sidecar};

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
    let pg = Pg::own(major);
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'",
    );
    pg.psql("postgres", "SELECT pg_reload_conf()");
    pg
}

/// Restores `bucket`'s archive to `time` into a fresh directory and starts `major` on it;
/// returns the running server once it left recovery.
fn restore_and_start(pg: &Pg, bucket: &str, time: &str) -> (Pg, harness::Run) {
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
    let run = sidecar(pg, bucket, &spool)
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
    let pg = cluster(major);
    let bucket = s3().bucket(&format!("pitr-time-{major}"));
    let spool = tempfile::tempdir().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE marker(batch int, at timestamptz DEFAULT clock_timestamp())",
    );
    let daemon = Daemon::start(sidecar(&pg, &bucket, spool.path()));
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
    // The partial segment holding batch 3 is stored within a second or two.
    std::thread::sleep(std::time::Duration::from_secs(4));
    pg.crash();
    let mut daemon = daemon;
    daemon.signal("TERM");
    daemon.wait_exit(30);

    let (restored, run) = restore_and_start(&pg, &bucket, &target);
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

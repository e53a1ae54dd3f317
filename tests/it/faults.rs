//! Faults in the middle of a backup or restore. Each test checks that no backup is falsely
//! reported, that no partial object is listed as a backup or left as an open multipart upload,
//! and that the next run succeeds. Scenario numbers refer to docs/RELIABILITY.md.

use std::time::Instant;

use crate::harness::{self, pg, s3, Daemon, Pg, Proxy, Sidecar, S3};

/// Keys that `list --json` reports for `db` under prefix `p`.
fn listed(pg: &Pg, db: &str, bucket: &str) -> Vec<String> {
    listed_at(&s3().endpoint(), pg, db, bucket)
}

fn listed_at(endpoint: &str, pg: &Pg, db: &str, bucket: &str) -> Vec<String> {
    let run = Sidecar::new(pg, db, endpoint, bucket, "p")
        .args(&["list", "--json"])
        .run()
        .expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("list --json: {e}: {}", run.stdout));
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap().to_string())
        .collect()
}

fn manifests(bucket: &str) -> Vec<String> {
    s3().keys(bucket, "")
        .into_iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .collect()
}

/// After a failed attempt: nothing listed, no manifest, no object, no open upload.
fn assert_nothing_stored(pg: &Pg, db: &str, bucket: &str) {
    assert_eq!(
        listed(pg, db, bucket),
        Vec::<String>::new(),
        "partial backup listed"
    );
    assert_eq!(
        s3().keys(bucket, ""),
        Vec::<String>::new(),
        "objects left behind"
    );
    assert_eq!(
        s3().open_uploads(bucket),
        Vec::<String>::new(),
        "multipart uploads left open"
    );
}

/// After a successful run that printed `key`: it is the only backup listed, with its manifest,
/// and no upload is left open.
fn assert_only_backup(pg: &Pg, db: &str, bucket: &str, key: &str) {
    assert_eq!(listed(pg, db, bucket), vec![key.to_string()]);
    assert_eq!(manifests(bucket).len(), 1, "{:?}", s3().keys(bucket, ""));
    assert!(s3().keys(bucket, "").contains(&key.to_string()));
    assert_eq!(s3().open_uploads(bucket), Vec::<String>::new());
}

/// Scenario 4: PostgreSQL restarts (fast shutdown) while pg_dump streams a 30 MB database
/// through a throttled upload. Expected: exit 1 naming pg_dump's failure, nothing stored or
/// listed, no open upload; the next `backup` succeeds and is the only one listed.
#[test]
fn postgres_restart_mid_dump_fails_cleanly_then_next_backup_succeeds() {
    let pg = Pg::own(15);
    let db = harness::incompressible_db(&pg, "pgrestart", 30);
    let bucket = s3().bucket("pgrestart");
    let proxy = Proxy::start(s3().port);
    proxy.throttle(2 * 1024 * 1024);
    let child = Sidecar::new(&pg, &db, &proxy.endpoint(), &bucket, "p")
        .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB")
        .env("PGSIDECAR_STORAGE__PARTS_IN_FLIGHT", "1")
        .args(&["backup"])
        .spawn();
    assert!(
        harness::wait_until(60, || {
            !harness::children_named(child.id(), "pg_dump").is_empty()
                && !s3().open_uploads(&bucket).is_empty()
        }),
        "the upload never started"
    );
    assert!(
        !harness::children_named(child.id(), "pg_dump").is_empty(),
        "pg_dump finished before the fault; the database is too small"
    );
    pg.restart();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pg_dump"), "{stderr}");
    assert!(
        stderr.contains("terminating connection")
            || stderr.contains("server closed the connection")
            || stderr.contains("connection to server"),
        "pg_dump's own message expected: {stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    proxy.throttle(0);
    assert_nothing_stored(&pg, &db, &bucket);

    let run = Sidecar::new(&pg, &db, &s3().endpoint(), &bucket, "p")
        .args(&["backup"])
        .run()
        .expect_code(0);
    assert_only_backup(&pg, &db, &bucket, run.stdout.trim());
}

/// Scenario 6: the sidecar is SIGKILLed mid-upload (no chance to abort), then started as a
/// daemon whose yearly schedule's last firing was missed. Expected: the leftover multipart
/// upload is aborted and the catch-up run stores one complete backup, the only one listed.
#[test]
fn sigkill_mid_upload_then_daemon_catch_up_cleans_up_and_backs_up() {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, "sigkill", 12);
    let bucket = s3().bucket("sigkill");
    let proxy = Proxy::start(s3().port);
    proxy.throttle(2 * 1024 * 1024);
    let mut child = Sidecar::new(pg, &db, &proxy.endpoint(), &bucket, "p")
        .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB")
        .args(&["backup"])
        .spawn();
    assert!(
        harness::wait_until(60, || !s3().open_uploads(&bucket).is_empty()),
        "the upload never started"
    );
    let dumps = harness::children_named(child.id(), "pg_dump");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    // The orphaned pg_dump dies on its broken pipe; do not wait on the throttled proxy for it.
    proxy.throttle(0);
    for pid in dumps {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    assert!(manifests(&bucket).is_empty(), "no manifest after a kill");
    assert_eq!(listed(pg, &db, &bucket), Vec::<String>::new());
    assert!(
        !s3().open_uploads(&bucket).is_empty(),
        "SIGKILL leaves the upload open (the point of this test)"
    );

    let mut d = Daemon::start(
        Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "0 0 1 1 *")
            .env("PGSIDECAR_CATCH_UP", "true"),
    );
    assert!(
        harness::wait_until(90, || manifests(&bucket).len() == 1),
        "catch-up backup not stored: {}",
        d.stderr()
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(30), Some(0), "{}", d.stderr());
    assert!(!d.stderr().contains("backup failed"), "{}", d.stderr());
    let keys = listed(pg, &db, &bucket);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_only_backup(pg, &db, &bucket, &keys[0]);
}

/// Scenario 8: `restore --jobs 2` needs a temp file; with TMPDIR pointing at a path that does
/// not exist, at a regular file (both fail even for root), or at a 1 MiB file system too small
/// for the 3 MB dump (disk full), the restore fails before touching the server. Expected:
/// non-zero exit, the error names the path, the target database does not exist, no temp file
/// is left, the source database and the bucket are unchanged.
#[test]
fn parallel_restore_with_unusable_tmpdir_fails_and_changes_nothing() {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, "badtmp", 3);
    let bucket = s3().bucket("badtmp");
    let sidecar = || Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p");
    let key = sidecar().backup_key();
    let before_sql = pg.dump_sql(&db);
    let before_keys = s3().keys(&bucket, "");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-regular-file");
    std::fs::write(&file, b"x").unwrap();
    let missing = dir.path().join("no-such-dir");
    let full = harness::SmallFs::mount(1);
    let cases = [
        (missing, "No such file"),
        (file, "Not a directory"),
        (full.path().to_path_buf(), "No space left"),
    ];
    for (tmp, cause) in cases {
        let target = harness::unique("badtmp_copy");
        let run = sidecar()
            .env("TMPDIR", &tmp)
            .args(&["restore", "--target-db", &target, "--jobs", "2", "--yes"])
            .run();
        assert_ne!(run.code, 0, "{tmp:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains(tmp.to_str().unwrap()) && run.stderr.contains(cause),
            "error does not name {tmp:?} and `{cause}`: {}",
            run.stderr
        );
        let exists = pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'"),
        );
        assert_eq!(exists, "0", "{tmp:?}: target database was created");
    }
    assert_eq!(
        std::fs::read_dir(full.path()).unwrap().count(),
        0,
        "temp file left on the full file system"
    );
    assert_eq!(pg.dump_sql(&db), before_sql, "source database changed");
    assert_eq!(s3().keys(&bucket, ""), before_keys, "bucket changed");
    assert_eq!(listed(pg, &db, &bucket), vec![key]);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "files left in the test directory"
    );

    // With a usable TMPDIR the same restore succeeds.
    let target = harness::unique("badtmp_ok");
    sidecar()
        .env("TMPDIR", dir.path())
        .args(&["restore", "--target-db", &target, "--jobs", "2", "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(pg.dump_sql(&target), before_sql);
}

/// Backs up a 30 MB database through a proxy to PostgreSQL and applies `fault` to it once the
/// upload runs. Expected: the run returns within a bounded time (a hang guard, not a speed
/// target) with exit 1, nothing stored or listed; after `heal` the next backup succeeds.
/// Returns the failed run's stderr.
fn postgres_link_fails_mid_dump(
    hint: &str,
    env: &[(&str, &str)],
    fault: fn(&Proxy),
    heal: fn(&Proxy),
) -> String {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, hint, 30);
    let bucket = s3().bucket(hint);
    let pg_proxy = Proxy::start(pg.port);
    let s3_proxy = Proxy::start(s3().port);
    s3_proxy.throttle(2 * 1024 * 1024);
    let sidecar = |s3_endpoint: &str| {
        let mut s = Sidecar::new(pg, &db, s3_endpoint, &bucket, "p")
            .env("PGPORT", pg_proxy.port.to_string())
            .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB")
            .env("PGSIDECAR_STORAGE__PARTS_IN_FLIGHT", "1");
        for (k, v) in env {
            s = s.env(k, v);
        }
        s.args(&["backup"])
    };
    let mut child = sidecar(&s3_proxy.endpoint()).spawn();
    assert!(
        harness::wait_until(60, || !s3().open_uploads(&bucket).is_empty()),
        "the upload never started"
    );
    assert!(
        !harness::children_named(child.id(), "pg_dump").is_empty(),
        "pg_dump finished before the fault; the database is too small"
    );
    let fault_at = Instant::now();
    fault(&pg_proxy);
    let mut code = None;
    let returned = harness::wait_until(120, || match child.try_wait().unwrap() {
        Some(status) => {
            code = Some(status.code());
            true
        }
        None => false,
    });
    if !returned {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        returned,
        "still running {:?} after the fault: {stderr}",
        fault_at.elapsed()
    );
    assert_eq!(code, Some(Some(1)), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    s3_proxy.throttle(0);
    assert_nothing_stored(pg, &db, &bucket);

    heal(&pg_proxy);
    let run = sidecar(&s3().endpoint()).run().expect_code(0);
    assert_only_backup(pg, &db, &bucket, run.stdout.trim());
    stderr
}

/// Scenario 3 (PostgreSQL side, connection closed): the proxy drops the connections while
/// pg_dump streams and refuses new ones.
#[test]
fn network_to_postgres_cut_mid_dump_fails_in_bounded_time_then_recovers() {
    postgres_link_fails_mid_dump("pgcut", &[], Proxy::cut, Proxy::restore);
}

/// Scenario 3 (PostgreSQL side, black hole): the proxy stops forwarding but closes nothing,
/// so neither side ever sees a FIN or RST. Expected: `retry.attempt_timeout` ends the attempt
/// (pg_dump killed, upload aborted) and the error names the setting.
#[test]
fn black_holed_postgres_connection_ends_at_the_attempt_timeout() {
    let stderr = postgres_link_fails_mid_dump(
        "pghole",
        &[("PGSIDECAR_RETRY__ATTEMPT_TIMEOUT", "25s")],
        Proxy::freeze,
        Proxy::thaw,
    );
    assert!(stderr.contains("retry.attempt_timeout"), "{stderr}");
}

/// Scenario 3 for restore drills: the server a drill restores into stops answering while
/// pg_restore runs. A scheduled drill holds its database's turn, so it must not hang there.
/// Expected: the drill ends at `retry.attempt_timeout` naming the setting, pg_restore is
/// stopped, the scratch database is dropped once the server answers, and the next drill passes.
#[test]
fn black_holed_drill_server_ends_at_the_attempt_timeout_and_drops_its_scratch() {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, "drillhole", 30);
    let bucket = s3().bucket("drillhole");
    let pg_proxy = Proxy::start(pg.port);
    let sidecar = || Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p");
    sidecar().backup_key();
    let drill = || {
        sidecar()
            .env("PGSIDECAR_DRILL__DATABASE__PORT", pg_proxy.port.to_string())
            .env("PGSIDECAR_RETRY__ATTEMPT_TIMEOUT", "15s")
            .args(&["drill"])
    };
    pg_proxy.throttle(2 * 1024 * 1024);
    let child = drill().spawn();
    // Frozen while pg_restore is still connecting, it would fail on its own connect_timeout.
    let copying = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '{db}\\_\\_drill\\_%' AND query LIKE 'COPY%'"
    );
    assert!(
        harness::wait_until(60, || pg.psql("postgres", &copying) != "0"),
        "pg_restore never started copying"
    );
    pg_proxy.freeze();
    let frozen_at = Instant::now();
    assert!(
        harness::wait_until(60, || harness::children_named(child.id(), "pg_restore")
            .is_empty()),
        "pg_restore still runs {:?} after the freeze",
        frozen_at.elapsed()
    );
    // Dropping the scratch database needs the server: it answers again after the limit.
    pg_proxy.thaw();
    pg_proxy.throttle(0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("retry.attempt_timeout"), "{stderr}");
    assert!(
        stderr.contains("its scratch database was dropped"),
        "{stderr}"
    );
    let scratch = pg.psql(
        "postgres",
        &format!("SELECT string_agg(datname, ' ') FROM pg_database WHERE datname LIKE '{db}\\_\\_drill\\_%'"),
    );
    assert_eq!(scratch, "", "a scratch database was left");

    let again = drill().run().expect_code(0);
    assert!(again.stdout.starts_with("ok: "), "{}", again.stdout);
}

/// Scenario 9 (manifest pointing at a missing object): the dump object of a listed backup is
/// deleted behind the sidecar's back. Expected: `verify` and `restore` of it fail non-zero
/// naming the key, the restore creates no database, and the next `backup` succeeds.
#[test]
fn manifest_pointing_at_a_missing_object_is_refused_then_next_backup_succeeds() {
    let pg = pg(15);
    let db = pg.create_db("lostobj");
    pg.psql(&db, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let bucket = s3().bucket("lostobj");
    let sidecar = || Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p");
    let key = sidecar().backup_key();
    s3().delete(&bucket, &key);

    let verify = sidecar().args(&["verify", "latest"]).run();
    assert_ne!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(verify.stderr.contains(&key), "{}", verify.stderr);
    assert!(!verify.stdout.starts_with("ok"), "{}", verify.stdout);

    let target = harness::unique("lostobj_copy");
    let restore = sidecar()
        .args(&["restore", "latest", "--target-db", &target, "--yes"])
        .run();
    assert_ne!(restore.code, 0, "{}{}", restore.stdout, restore.stderr);
    assert!(restore.stderr.contains(&key), "{}", restore.stderr);
    let exists = pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'"),
    );
    assert_eq!(exists, "0", "target database was created");

    harness::next_key_second();
    let run = sidecar().args(&["backup"]).run().expect_code(0);
    assert!(listed(pg, &db, &bucket).contains(&run.stdout.trim().to_string()));
    assert_eq!(s3().open_uploads(&bucket), Vec::<String>::new());
}

/// Backs up a few MB through a proxy that answers the first `count` UploadParts with
/// `status`/`code`. Expected: the parts are resent, the backup exits 0, is the only one listed,
/// verifies, and no upload is left open.
fn failed_parts_are_retried(hint: &str, count: u64, status: u16, code: &'static str) {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, hint, 6);
    let bucket = s3().bucket(hint);
    let fault = harness::Fault::Parts {
        count,
        status,
        code,
    };
    let proxy = harness::HttpFaultProxy::with_fault(s3().port, fault);
    let run = Sidecar::new(pg, &db, &proxy.endpoint(), &bucket, "p")
        .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB")
        .args(&["backup"])
        .run()
        .expect_code(0);
    assert!(
        proxy.injected.load(std::sync::atomic::Ordering::SeqCst) >= count,
        "fewer UploadParts than injected faults went through the proxy: {}",
        run.stderr
    );
    assert_only_backup(pg, &db, &bucket, run.stdout.trim());
    Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .args(&["verify", "latest"])
        .run()
        .expect_code(0);
}

/// Scenario 10 (UploadPart 500): the first UploadPart is answered 500 InternalError.
#[test]
fn upload_part_answered_with_500_is_retried_and_the_backup_succeeds() {
    failed_parts_are_retried("part500", 1, 500, "InternalError");
}

/// Scenario 2 (S3 throttles): the first two UploadParts are answered 503 SlowDown; they are
/// retried with backoff.
#[test]
fn slow_down_503_is_retried_with_backoff_and_the_backup_succeeds() {
    failed_parts_are_retried("slowdown", 2, 503, "SlowDown");
}

/// Scenario 10 (CompleteMultipartUpload answered 200 with an error body): S3 reports the
/// failure inside a 200 response. Expected: the attempt fails and is never reported complete
/// (exit 1, no manifest, nothing listed, no open upload); the next backup succeeds.
#[test]
fn completion_answered_200_with_an_error_body_is_a_failure() {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, "complete200", 6);
    let bucket = s3().bucket("complete200");
    let proxy = harness::HttpFaultProxy::with_fault(s3().port, harness::Fault::CompleteErrorBody);
    let run = Sidecar::new(pg, &db, &proxy.endpoint(), &bucket, "p")
        .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB")
        .env("PGSIDECAR_STORAGE__PART_ATTEMPTS", "1")
        .args(&["backup"])
        .run()
        .expect_code(1);
    assert!(
        proxy.injected.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "{}",
        run.stderr
    );
    assert_nothing_stored(pg, &db, &bucket);
    let run = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .args(&["backup"])
        .run()
        .expect_code(0);
    assert_only_backup(pg, &db, &bucket, run.stdout.trim());
}

/// Resident memory of `pid` in KiB, from /proc. Panics when it cannot be read: a sample of 0
/// would make the memory look flat, and the check pass without measuring anything.
fn rss_kib(pid: u32) -> u64 {
    let file = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read the memory of pid {pid} from {file}: {e}"));
    vm_rss_kib(&file, &status)
}

/// The `VmRSS:` value of a /proc/<pid>/status text (`file`, for the message).
fn vm_rss_kib(file: &str, status: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap_or_else(|| panic!("{file} has no VmRSS line (the process has exited?):\n{status}"));
    line.trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{file}: VmRSS `{}` is not a number of kB: {e}", line.trim()))
}

/// The flat-memory check below fails, not passes, when memory cannot be measured.
#[test]
#[should_panic(expected = "cannot read the memory of pid 4294967295 from /proc/4294967295/status")]
fn memory_of_a_process_that_does_not_exist_is_an_error() {
    // Above any pid_max (at most 2^22), so no process has it.
    rss_kib(u32::MAX);
}

#[test]
#[should_panic(expected = "/proc/7/status has no VmRSS line")]
fn memory_without_a_vm_rss_line_is_an_error() {
    // What a zombie or a kernel thread shows: no resident memory at all.
    vm_rss_kib("/proc/7/status", "Name:\tpgsidecar\nState:\tZ (zombie)\n");
}

#[test]
fn memory_is_read_from_vm_rss() {
    let status = "Name:\tpgsidecar\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\n";
    assert_eq!(vm_rss_kib("/proc/7/status", status), 12345);
    assert!(rss_kib(std::process::id()) > 0);
}

/// Scenario 11: 200 consecutive backups at a per-second schedule of a small database.
/// Expected: every one complete and listed; memory flat (the mean RSS over the last 50 within
/// 10% of the mean over the first 50).
#[test]
fn two_hundred_per_second_backups_are_all_complete_with_flat_memory() {
    const RUNS: usize = 200;
    let pg = pg(17);
    let db = pg.create_db("many");
    pg.psql(
        &db,
        "CREATE TABLE t(x int, s text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g",
    );
    let bucket = s3().bucket("many");
    let d = Daemon::start(
        Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "* * * * * *")
            .env("PGSIDECAR_CATCH_UP", "false"),
    );
    let pid = d.child.id();
    let mut samples: Vec<u64> = Vec::new();
    let done = |d: &Daemon| {
        d.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("backup complete"))
            .count()
    };
    assert!(
        harness::wait_until(RUNS as u64 * 3, || {
            let n = done(&d);
            while samples.len() < n.min(RUNS) {
                samples.push(rss_kib(pid));
            }
            n >= RUNS
        }),
        "only {} backups completed:\n{}",
        done(&d),
        d.stderr()
    );
    drop(d);
    let listed = listed(pg, &db, &bucket);
    assert!(listed.len() >= RUNS, "{} listed", listed.len());
    assert_eq!(manifests(&bucket).len(), listed.len());
    assert_eq!(s3().open_uploads(&bucket), Vec::<String>::new());
    let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len() as f64;
    let (first, last) = (mean(&samples[..50]), mean(&samples[RUNS - 50..RUNS]));
    println!("RSS: first 50 backups {first:.0} KiB, last 50 {last:.0} KiB");
    assert!(
        last <= first * 1.10,
        "memory grew: first 50 backups {first:.0} KiB, last 50 {last:.0} KiB"
    );
}

/// Scenario 12: the whole round trip against s3s-fs, a second S3 implementation (Rust, one
/// file per object), so that no result rests on moto's leniency. Expected: a multipart backup
/// with globals is listed and verifies; it restores into a new database and in place with
/// every row; prune deletes the older of two backups and leaves no open upload.
#[test]
fn a_second_s3_implementation_passes_the_round_trip() {
    let store = S3::start_s3s_fs();
    let pg = pg(17);
    let db = harness::incompressible_db(pg, "s3sfs", 12);
    pg.psql(
        &db,
        "CREATE TABLE t(id int PRIMARY KEY, name text); \
         INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g",
    );
    let blobs = pg.psql(&db, "SELECT count(*) FROM r");
    let bucket = store.bucket("s3sfs");
    let sidecar = || {
        Sidecar::new(pg, &db, &store.endpoint(), &bucket, "p")
            .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB")
            .env("PGSIDECAR_GLOBALS", "true")
    };
    let first = sidecar().args(&["backup"]).run().expect_code(0);
    assert!(
        first.stderr.contains("cannot look for unfinished uploads"),
        "{}",
        first.stderr
    );
    let first = first.stdout.trim().to_string();
    assert_eq!(
        listed_at(&store.endpoint(), pg, &db, &bucket),
        vec![first.clone()]
    );
    let keys = store.keys(&bucket, "");
    assert!(keys.iter().any(|k| k.contains(".globals.")), "{keys:?}");
    let verify = sidecar().args(&["verify", "latest"]).run().expect_code(0);
    assert!(verify.stdout.starts_with("ok"), "{}", verify.stdout);

    let target = harness::unique("s3sfs_copy");
    sidecar()
        .args(&["restore", "latest", "--target-db", &target, "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(pg.psql(&target, "SELECT count(*) FROM t"), "1000");
    assert_eq!(pg.psql(&target, "SELECT count(*) FROM r"), blobs);

    pg.psql(&db, "DELETE FROM t WHERE id > 10");
    sidecar()
        .args(&["restore", "latest", "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM t"), "1000");

    harness::next_key_second();
    let second = sidecar().args(&["backup"]).run().expect_code(0);
    let second = second.stdout.trim().to_string();
    sidecar()
        .env("PGSIDECAR_RETENTION__KEEP_LAST", "1")
        .args(&["prune"])
        .run()
        .expect_code(0);
    assert_eq!(
        listed_at(&store.endpoint(), pg, &db, &bucket),
        vec![second.clone()]
    );
    // Dump, manifest and globals of the second backup, nothing else. (s3s-fs cannot list
    // multipart uploads: the sidecar warns and carries on, and so cannot this test.)
    let stem = second.trim_end_matches(".dump.zst");
    let keys = store.keys(&bucket, "");
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with(stem)), "{keys:?}");
}

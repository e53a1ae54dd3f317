use crate::harness::{self, pg, s3, Proxy, Sidecar, S3};

/// Nothing under the bucket: no object, no manifest, no open multipart upload.
fn assert_nothing_stored(s3: &S3, bucket: &str) {
    assert_eq!(
        s3.keys(bucket, ""),
        Vec::<String>::new(),
        "objects left behind"
    );
    assert_eq!(
        s3.open_uploads(bucket),
        Vec::<String>::new(),
        "multipart uploads left open"
    );
}

#[test]
fn wrong_password_fails_cleanly_without_echoing_it() {
    let pg = pg(15);
    let db = pg.create_db("badpw");
    let bucket = s3().bucket("badpw");
    let run = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .env("PGPASSWORD", "Wrong-Secret-4711")
        .args(&["backup"])
        .run()
        .expect_code(1);
    assert!(
        run.stderr.contains("password authentication failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("database `{db}`")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Wrong-Secret-4711") && !run.stdout.contains("Wrong-Secret-4711"));
    assert_nothing_stored(s3(), &bucket);
}

#[test]
fn missing_database_is_named() {
    let pg = pg(15);
    let bucket = s3().bucket("nodb");
    let run = Sidecar::new(pg, "no_such_db", &s3().endpoint(), &bucket, "p")
        .args(&["backup"])
        .run()
        .expect_code(1);
    assert!(
        run.stderr.contains("\"no_such_db\" does not exist"),
        "{}",
        run.stderr
    );
    assert_nothing_stored(s3(), &bucket);
}

#[test]
fn missing_bucket_is_named() {
    let pg = pg(15);
    let db = pg.create_db("nobucket");
    let run = Sidecar::new(pg, &db, &s3().endpoint(), "no-such-bucket-here", "p")
        .args(&["backup"])
        .run()
        .expect_code(1);
    assert!(
        run.stderr
            .contains("bucket `no-such-bucket-here` does not exist"),
        "{}",
        run.stderr
    );
}

#[test]
fn older_pg_dump_than_server_fails_before_dumping() {
    let pg = pg(18);
    let db = pg.create_db("oldtools");
    let bucket = s3().bucket("oldtools");
    let run = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .env("PGSIDECAR_TOOLS__BIN_DIRS", harness::pg15_bin())
        .args(&["backup"])
        .run()
        .expect_code(1);
    assert!(
        run.stderr.contains("older than the server (PostgreSQL 18)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("install the PostgreSQL 18 client tools"),
        "{}",
        run.stderr
    );
    assert_nothing_stored(s3(), &bucket);
}

/// A `backup` of a 12 MB incompressible database through a proxy slowed to 2 MB/s, so the
/// test can interrupt it mid-upload. Returns the bucket, the proxy and the running sidecar.
fn slow_backup(hint: &str) -> (String, Proxy, std::process::Child) {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, hint, 12);
    let bucket = s3().bucket(hint);
    let proxy = Proxy::start(s3().port);
    proxy.throttle(2 * 1024 * 1024);
    let child = Sidecar::new(pg, &db, &proxy.endpoint(), &bucket, "p")
        .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB")
        .args(&["backup"])
        .spawn();
    (bucket, proxy, child)
}

#[test]
fn pg_dump_killed_mid_stream_leaves_nothing_and_never_saw_the_password() {
    let (bucket, proxy, child) = slow_backup("killed");
    let mut dump_pid = None;
    assert!(
        harness::wait_until(60, || {
            dump_pid = harness::children_named(child.id(), "pg_dump")
                .first()
                .copied();
            dump_pid.is_some() && !s3().open_uploads(&bucket).is_empty()
        }),
        "the upload never started"
    );
    let dump_pid = dump_pid.unwrap();
    let cmdline = std::fs::read(format!("/proc/{dump_pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        !cmdline.contains(harness::PG_PASSWORD),
        "password in argv: {cmdline}"
    );
    std::process::Command::new("kill")
        .args(["-9", &dump_pid.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pg_dump was killed by signal 9"),
        "{stderr}"
    );
    assert!(!stderr.contains(harness::PG_PASSWORD));
    proxy.throttle(0);
    assert_nothing_stored(s3(), &bucket);
    // The exit message above came from waiting on pg_dump, so it was reaped; its pid must
    // be gone (other tests run pg_dump from this process, so its children prove nothing).
    let stat = format!("/proc/{dump_pid}/stat");
    assert!(
        harness::wait_until(10, || std::fs::read_to_string(&stat)
            .map_or(true, |s| !s.contains("(pg_dump)"))),
        "pg_dump {dump_pid} is still there"
    );
}

#[test]
fn s3_gone_mid_upload_fails_then_next_backup_cleans_up_and_succeeds() {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, "s3gone", 12);
    let s3 = S3::start();
    let bucket = s3.bucket("s3gone");
    let proxy = Proxy::start(s3.port);
    proxy.throttle(2 * 1024 * 1024);
    let sidecar = || {
        Sidecar::new(pg, &db, &proxy.endpoint(), &bucket, "p")
            .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB")
            .env("PGSIDECAR_STORAGE__PART_ATTEMPTS", "2")
            .args(&["backup"])
    };
    let child = sidecar().spawn();
    assert!(
        harness::wait_until(60, || !s3.open_uploads(&bucket).is_empty()),
        "the upload never started"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    proxy.cut();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("backup of database"), "{stderr}");
    assert!(s3.keys(&bucket, "").is_empty(), "no object may be visible");

    proxy.restore();
    proxy.throttle(0);
    let run = sidecar().run().expect_code(0);
    assert!(
        s3.open_uploads(&bucket).is_empty(),
        "stale upload not aborted"
    );
    let keys = s3.keys(&bucket, "");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&run.stdout.trim().to_string()));
    s3.stop();
}

#[test]
fn sigterm_mid_upload_aborts_and_leaves_nothing() {
    let (bucket, proxy, child) = slow_backup("sigterm");
    assert!(
        harness::wait_until(60, || !s3().open_uploads(&bucket).is_empty()),
        "the upload never started"
    );
    let pid = child.id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was cancelled; nothing was stored"),
        "{stderr}"
    );
    proxy.throttle(0);
    assert_nothing_stored(s3(), &bucket);
    assert!(
        harness::children_named(pid, "pg_dump").is_empty(),
        "pg_dump left running"
    );
}

/// Regression: a dump object whose manifest was never written (a crash between upload and
/// manifest) stayed forever. The next backup of the database removes it, and nothing else.
#[test]
fn next_backup_removes_dump_objects_without_manifest_only() {
    let pg = pg(15);
    let db = pg.create_db("orphans");
    let bucket = s3().bucket("orphans");
    let orphan = format!("p/{db}/2026-01-01T020000Z.dump.zst");
    let foreign = [format!("p/{db}/notes.txt"), format!("p/{db}/mine.dump.zst")];
    s3().put(&bucket, &orphan, b"partial");
    for k in &foreign {
        s3().put(&bucket, k, b"not ours");
    }
    let run = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .args(&["backup"])
        .run()
        .expect_code(0);
    let keys = s3().keys(&bucket, "");
    assert!(!keys.contains(&orphan), "{keys:?}");
    for k in &foreign {
        assert!(keys.contains(k), "foreign object {k} removed: {keys:?}");
    }
    assert!(keys.contains(&run.stdout.trim().to_string()));
    assert!(run.stderr.contains("without manifest"), "{}", run.stderr);
}

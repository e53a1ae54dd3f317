use std::time::{Duration, Instant};

use crate::harness::{self, pg, s3, Answer, Daemon, FakeHttp, Proxy, Sidecar};

fn manifests(bucket: &str) -> Vec<String> {
    s3().keys(bucket, "")
        .into_iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .collect()
}

fn small_db(hint: &str) -> String {
    let pg = pg(15);
    let db = pg.create_db(hint);
    pg.psql(
        &db,
        "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 100)",
    );
    db
}

#[test]
fn per_second_schedule_backs_up_notifies_and_stops_on_sigterm() {
    let db = small_db("sched");
    let bucket = s3().bucket("sched");
    let slack = FakeHttp::start(Answer::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        Sidecar::new(pg(15), &db, &s3().endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "*/2 * * * * *")
            .env("PGSIDECAR_NOTIFY__SLACK__WEBHOOK_URL", slack.url())
            .env(
                "PGSIDECAR_HEALTH__STATUS_FILE",
                dir.path().join("status.json"),
            ),
    );
    assert!(
        harness::wait_until(30, || manifests(&bucket).len() >= 3),
        "{}",
        d.stderr()
    );
    assert!(harness::wait_until(10, || slack.messages().len() >= 3));
    d.signal("TERM");
    assert_eq!(d.wait_exit(30), Some(0), "{}", d.stderr());
    let msgs = slack.messages();
    let text = msgs[0].to_string();
    assert!(
        text.contains("succeeded") && text.contains("1 of 10") && text.contains(&db),
        "{text}"
    );
    assert_eq!(msgs[0]["attachments"][0]["color"], "good");
    assert!(!text.contains("T000-secret-path") && !text.contains(harness::PG_PASSWORD));
    // Each Slack message names a key that exists.
    let keys = s3().keys(&bucket, "");
    for m in &msgs {
        let key = m.to_string();
        assert!(
            keys.iter()
                .any(|k| key.contains(k.as_str()) && k.ends_with(".zst")),
            "{m}"
        );
    }
}

#[test]
fn s3_down_for_the_first_attempt_gives_one_success_message_saying_attempt_2() {
    let db = small_db("retry");
    let bucket = s3().bucket("retry");
    let slack = FakeHttp::start(Answer::Status(200));
    let proxy = Proxy::start(s3().port);
    proxy.cut();
    let mut d = Daemon::start(
        Sidecar::new(pg(15), &db, &proxy.endpoint(), &bucket, "p")
            .env("PGSIDECAR_RETRY__ATTEMPTS", "5")
            .env("PGSIDECAR_RETRY__INTERVAL", "2s")
            .env("PGSIDECAR_NOTIFY__SLACK__WEBHOOK_URL", slack.url()),
    );
    assert!(d.wait_for("attempt failed, retrying", 60), "{}", d.stderr());
    proxy.restore();
    assert_eq!(d.wait_exit(60), Some(0), "{}", d.stderr());
    assert_eq!(manifests(&bucket).len(), 1);
    let msgs = slack.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let text = msgs[0].to_string();
    assert!(
        text.contains("2 of 5") && text.contains("succeeded after 1 failed attempt"),
        "{text}"
    );
    assert_eq!(msgs[0]["attachments"][0]["color"], "warning");
}

#[test]
fn all_attempts_failing_sends_one_failure_message_with_the_cause() {
    let db = small_db("allfail");
    let slack = FakeHttp::start(Answer::Status(200));
    let dead = harness::free_port();
    let mut d = Daemon::start(
        Sidecar::new(
            pg(15),
            &db,
            &format!("http://127.0.0.1:{dead}"),
            "nobucket",
            "p",
        )
        .env("PGSIDECAR_RETRY__ATTEMPTS", "3")
        .env("PGSIDECAR_RETRY__INTERVAL", "200ms")
        .env("PGSIDECAR_NOTIFY__SLACK__WEBHOOK_URL", slack.url()),
    );
    assert_eq!(d.wait_exit(120), Some(1), "{}", d.stderr());
    assert_eq!(
        d.stderr().matches("attempt failed, retrying").count(),
        2,
        "{}",
        d.stderr()
    );
    let msgs = slack.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let text = msgs[0].to_string();
    assert!(text.contains("FAILED") && text.contains("3 of 3"), "{text}");
    assert!(text.contains("cannot reach the S3 endpoint"), "{text}");
    // One readable cause, not the SDK's debug structure.
    assert!(
        !text.contains("DispatchFailure {") && !d.stderr().contains("DispatchFailure {"),
        "{text}\n{}",
        d.stderr()
    );
    assert_eq!(msgs[0]["attachments"][0]["color"], "danger");
}

/// Scenario 7: Slack, the webhook and the ping URLs all answer 500, all hang, or are all
/// down (nothing listens). Expected: the backup is stored and the daemon exits 0 within
/// bounded time, each failed delivery is logged, and no URL is.
#[test]
fn failing_hanging_or_down_notification_endpoints_never_fail_the_backup() {
    for answer in [Answer::Status(500), Answer::Hang, Answer::Down] {
        let db = small_db("notifydown");
        let bucket = s3().bucket("notifydown");
        let endpoint = FakeHttp::start(answer);
        let started = Instant::now();
        let mut d = Daemon::start(
            Sidecar::new(pg(15), &db, &s3().endpoint(), &bucket, "p")
                .env("PGSIDECAR_NOTIFY__TIMEOUT", "1s")
                .env("PGSIDECAR_NOTIFY__SLACK__WEBHOOK_URL", endpoint.url())
                .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", endpoint.url())
                .env("PGSIDECAR_NOTIFY__PING__START_URL", endpoint.url())
                .env("PGSIDECAR_NOTIFY__PING__SUCCESS_URL", endpoint.url()),
        );
        assert_eq!(d.wait_exit(60), Some(0), "{answer:?}: {}", d.stderr());
        assert_eq!(manifests(&bucket).len(), 1, "{answer:?}");
        if answer != Answer::Down {
            // Slack, the webhook, and the start and success pings.
            let called = endpoint.bodies.lock().unwrap().len();
            assert!(called >= 4, "{answer:?}: {called} of 4 endpoints called");
        }
        let undelivered = d.stderr().matches("not delivered").count();
        assert!(undelivered >= 4, "{answer:?}: {}", d.stderr());
        assert!(
            !d.stderr().contains("T000-secret-path"),
            "notification URL leaked"
        );
        assert!(started.elapsed() < Duration::from_secs(45), "{answer:?}");
    }
}

#[test]
fn two_daemons_on_one_database_dump_once_per_firing() {
    let db = small_db("twins");
    let bucket = s3().bucket("twins");
    let start = || {
        Daemon::start(
            Sidecar::new(pg(15), &db, &s3().endpoint(), &bucket, "p")
                .env("PGSIDECAR_SCHEDULE", "*/3 * * * * *")
                // Catch-up runs answer an earlier firing at start; only scheduled firings here.
                .env("PGSIDECAR_CATCH_UP", "false")
                .env("PGSIDECAR_RETRY__ATTEMPTS", "1"),
        )
    };
    let (mut a, mut b) = (start(), start());
    std::thread::sleep(Duration::from_secs(10));
    a.signal("TERM");
    b.signal("TERM");
    assert_eq!(a.wait_exit(30), Some(0), "{}", a.stderr());
    assert_eq!(b.wait_exit(30), Some(0), "{}", b.stderr());
    let mut times: Vec<i64> = manifests(&bucket)
        .iter()
        .map(|k| {
            let v: serde_json::Value = serde_json::from_slice(&s3().get(&bucket, k)).unwrap();
            chrono::DateTime::parse_from_rfc3339(v["started_at"].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    times.sort();
    assert!(times.len() >= 2, "{times:?}");
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= 2000, "two dumps for one firing: {times:?}");
    }
    assert!(!a.stderr().contains("backup failed") && !b.stderr().contains("backup failed"));
}

#[test]
fn sigterm_mid_backup_exits_within_grace_and_leaves_nothing() {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, "dterm", 12);
    let bucket = s3().bucket("dterm");
    let proxy = Proxy::start(s3().port);
    proxy.throttle(1024 * 1024);
    let mut d = Daemon::start(
        Sidecar::new(pg, &db, &proxy.endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "0 3 * * *")
            .env("PGSIDECAR_SHUTDOWN_GRACE", "1s")
            .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB"),
    );
    assert!(
        harness::wait_until(60, || !s3().open_uploads(&bucket).is_empty()),
        "catch-up backup never started: {}",
        d.stderr()
    );
    let pid = d.child.id();
    let t = Instant::now();
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0), "{}", d.stderr());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    proxy.throttle(0);
    assert!(manifests(&bucket).is_empty());
    assert!(s3().keys(&bucket, "").is_empty());
    assert!(s3().open_uploads(&bucket).is_empty(), "upload left open");
    assert!(harness::children_named(pid, "pg_dump").is_empty());
    assert!(
        d.stderr().contains("cancelling the running backup"),
        "{}",
        d.stderr()
    );
}

#[test]
fn catch_up_runs_once_at_start_when_the_last_firing_was_missed() {
    let db = small_db("catchup");
    let bucket = s3().bucket("catchup");
    // Fires once a year: the last firing is months ago and there is no backup.
    let mut d = Daemon::start(
        Sidecar::new(pg(15), &db, &s3().endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "0 0 1 1 *"),
    );
    assert!(
        harness::wait_until(30, || manifests(&bucket).len() == 1),
        "{}",
        d.stderr()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(manifests(&bucket).len(), 1, "caught up more than once");
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0));

    // With a backup newer than the last firing, or with catch-up off, nothing runs at start.
    let mut again = Daemon::start(
        Sidecar::new(pg(15), &db, &s3().endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "0 0 1 1 *"),
    );
    let db2 = small_db("nocatchup");
    let bucket2 = s3().bucket("nocatchup");
    let mut off = Daemon::start(
        Sidecar::new(pg(15), &db2, &s3().endpoint(), &bucket2, "p")
            .env("PGSIDECAR_SCHEDULE", "0 0 1 1 *")
            .env("PGSIDECAR_CATCH_UP", "false"),
    );
    assert!(again.wait_for("scheduled", 20) && off.wait_for("scheduled", 20));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(manifests(&bucket).len(), 1);
    assert!(manifests(&bucket2).is_empty());
    again.signal("TERM");
    off.signal("TERM");
    assert_eq!(again.wait_exit(20), Some(0));
    assert_eq!(off.wait_exit(20), Some(0));
}

/// Regression: in a Swarm stack the sidecar starts together with its database (Swarm has no
/// `depends_on`); the catch-up met a server still starting, failed, and its next attempt came
/// `retry.interval` (10 minutes) later.
#[test]
fn catch_up_waits_for_a_database_server_that_is_still_starting() {
    let db = small_db("waitserver");
    let bucket = s3().bucket("waitserver");
    let proxy = Proxy::start(pg(15).port);
    proxy.cut();
    let mut d = Daemon::start(
        Sidecar::new(pg(15), &db, &s3().endpoint(), &bucket, "p")
            .env("PGPORT", proxy.port.to_string())
            .env("PGSIDECAR_SCHEDULE", "0 0 1 1 *"),
    );
    assert!(
        d.wait_for("waiting up to 5m for the database server", 30),
        "{}",
        d.stderr()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(manifests(&bucket).is_empty());
    proxy.restore();
    assert!(
        harness::wait_until(30, || manifests(&bucket).len() == 1),
        "{}",
        d.stderr()
    );
    assert!(!d.stderr().contains("attempt failed"), "{}", d.stderr());
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0));
}

#[test]
fn health_flips_when_the_newest_success_is_too_old() {
    let db = small_db("health");
    let bucket = s3().bucket("health");
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let proxy = Proxy::start(s3().port);
    let sidecar = || {
        Sidecar::new(pg(15), &db, &proxy.endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "*/2 * * * * *")
            .env("PGSIDECAR_RETRY__ATTEMPTS", "1")
            .env("PGSIDECAR_HEALTH__GRACE", "2s")
            .env("PGSIDECAR_HEALTH__STATUS_FILE", &status)
    };
    let before = sidecar().args(&["health"]).run();
    assert_eq!(
        before.code, 1,
        "no daemon yet: {}{}",
        before.stdout, before.stderr
    );
    assert!(
        before.stderr.contains("no status file"),
        "{}",
        before.stderr
    );

    let mut d = Daemon::start(sidecar());
    assert!(
        harness::wait_until(30, || sidecar().args(&["health"]).run().code == 0),
        "never healthy: {}",
        d.stderr()
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&status).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the status file is the owner's only");
    }
    proxy.cut();
    assert!(
        harness::wait_until(30, || sidecar().args(&["health"]).run().code == 1),
        "never unhealthy: {}",
        d.stderr()
    );
    let why = sidecar().args(&["health"]).run();
    assert!(
        why.stdout.contains("newest successful backup is"),
        "{}",
        why.stdout
    );
    // A stale backup is no reason for an orchestrator to restart a running daemon.
    let live = sidecar().args(&["health", "--live"]).run();
    assert_eq!(live.code, 0, "{}{}", live.stdout, live.stderr);
    d.signal("TERM");
    assert_eq!(d.wait_exit(30), Some(0), "{}", d.stderr());
    let gone = sidecar().args(&["health", "--live"]).run();
    assert_eq!(gone.code, 1, "{}{}", gone.stdout, gone.stderr);
    assert!(gone.stdout.contains("is not running"), "{}", gone.stdout);
}

#[test]
fn webhook_and_ping_urls_receive_the_outcome() {
    let db = small_db("pings");
    let bucket = s3().bucket("pings");
    let hook = FakeHttp::start(Answer::Status(200));
    let ping = FakeHttp::start(Answer::Status(200));
    let mut d = Daemon::start(
        Sidecar::new(pg(15), &db, &s3().endpoint(), &bucket, "p")
            .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url())
            .env(
                "PGSIDECAR_NOTIFY__PING__START_URL",
                format!("{}/start", ping.url()),
            )
            .env("PGSIDECAR_NOTIFY__PING__SUCCESS_URL", ping.url()),
    );
    assert_eq!(d.wait_exit(60), Some(0), "{}", d.stderr());
    let events = hook.messages();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["kind"], "succeeded");
    assert_eq!(events[0]["database"], db.as_str());
    assert!(events[0]["stored_bytes"].as_u64().unwrap() > 0);
    let key = events[0]["key"].as_str().unwrap();
    assert!(s3().keys(&bucket, "").iter().any(|k| k == key));
    let pings = ping.bodies.lock().unwrap().clone();
    assert_eq!(pings.len(), 2, "start and success: {pings:?}");
}

#[test]
fn metrics_and_healthz_over_http_and_json_logs() {
    let db = small_db("metrics");
    let bucket = s3().bucket("metrics");
    let port = harness::free_port();
    let mut d = Daemon::start(
        Sidecar::new(pg(15), &db, &s3().endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "0 3 * * *")
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("PGSIDECAR_LOG__FORMAT", "json"),
    );
    let get = |path: &str| harness::http_get(port, path);
    assert!(
        harness::wait_until(30, || get("/healthz").starts_with("HTTP/1.1 200")),
        "{}\n{}",
        get("/healthz"),
        d.stderr()
    );
    let metrics = get("/metrics");
    let label = format!("{{job=\"default\",database=\"{db}\"}}");
    for name in [
        "pgsidecar_last_success_timestamp_seconds",
        "pgsidecar_last_success_age_seconds",
        "pgsidecar_backups_total",
        "pgsidecar_last_stored_bytes",
    ] {
        assert!(
            metrics.contains(&format!("{name}{label}")),
            "{name} missing:\n{metrics}"
        );
    }
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0));
    let lines = d.lines.lock().unwrap().clone();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("backup complete")));
}

#[test]
fn manual_backup_waits_for_the_running_scheduled_one() {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, "manual", 8);
    let bucket = s3().bucket("manual");
    let proxy = Proxy::start(s3().port);
    proxy.throttle(2 * 1024 * 1024);
    // The daemon's catch-up backup goes through a slow link and holds the lock meanwhile.
    let mut d = Daemon::start(
        Sidecar::new(pg, &db, &proxy.endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "0 3 * * *")
            .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB"),
    );
    assert!(
        harness::wait_until(60, || !s3().open_uploads(&bucket).is_empty()),
        "{}",
        d.stderr()
    );
    let manual = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .args(&["backup"])
        .run()
        .expect_code(0);
    assert!(
        manual.stderr.contains("waiting for it to finish"),
        "{}",
        manual.stderr
    );
    let keys = manifests(&bucket);
    assert_eq!(keys.len(), 2, "{keys:?}");
    let times: Vec<(String, String)> = keys
        .iter()
        .map(|k| {
            let v: serde_json::Value = serde_json::from_slice(&s3().get(&bucket, k)).unwrap();
            (
                v["started_at"].as_str().unwrap().to_string(),
                v["finished_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (first, second) = if times[0].0 < times[1].0 {
        (&times[0], &times[1])
    } else {
        (&times[1], &times[0])
    };
    assert!(second.0 >= first.1, "the dumps overlapped: {times:?}");
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0));
}

/// Regression: for up to a heartbeat (15 s) after start, `health` said "no successful backup
/// yet" while /healthz already answered from the backups read from storage.
#[test]
fn health_and_healthz_agree_from_the_first_answer() {
    use std::io::{Read, Write};
    let db = small_db("agree");
    let bucket = s3().bucket("agree");
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let sidecar = || Sidecar::new(pg(15), &db, &s3().endpoint(), &bucket, "p");
    sidecar().backup_key();
    let port = harness::free_port();
    let d = Daemon::start(
        sidecar()
            .env("PGSIDECAR_SCHEDULE", "0 0 1 1 *")
            .env("PGSIDECAR_CATCH_UP", "false")
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("PGSIDECAR_HEALTH__STATUS_FILE", &status),
    );
    let healthz = || -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = write!(
            s,
            "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    };
    assert!(harness::wait_until(30, healthz), "{}", d.stderr());
    let run = sidecar()
        .env("PGSIDECAR_HEALTH__STATUS_FILE", &status)
        .args(&["health"])
        .run();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
}

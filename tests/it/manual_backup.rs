//! `pgsidecar backup` runs the scheduled pipeline's tail: status file, retention, notifications.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::harness::{self, pg, s3, Answer, FakeHttp, Run, Sidecar};

fn small_db(hint: &str) -> String {
    let pg = pg(15);
    let db = pg.create_db(hint);
    pg.psql(
        &db,
        "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 100)",
    );
    db
}

/// A manual backup of `db` into `bucket` (or at `endpoint`), recording into `status` and
/// notifying `hook`.
fn sidecar(db: &str, endpoint: &str, bucket: &str, status: &Path, hook: &FakeHttp) -> Sidecar {
    Sidecar::new(pg(15), db, endpoint, bucket, "p")
        .env("PGSIDECAR_HEALTH__STATUS_FILE", status)
        .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url())
}

/// The status file's entry for `db` (in any job).
fn status_of(status: &Path, db: &str) -> Value {
    let text = std::fs::read_to_string(status)
        .unwrap_or_else(|e| panic!("no status file at {}: {e}", status.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|j| j["databases"].as_array().unwrap())
        .find(|d| d["database"] == db)
        .unwrap_or_else(|| panic!("{db} is not in the status file: {text}"))
        .clone()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

/// Keys of the complete backups `list --json` shows, newest first.
fn listed(sidecar: Sidecar) -> Vec<String> {
    let run = sidecar.args(&["list", "--json"]).run().expect_code(0);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap().to_string())
        .collect()
}

/// The webhook's events of `kind`.
fn events(hook: &FakeHttp, kind: &str) -> Vec<Value> {
    hook.messages()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

#[test]
fn manual_backup_notifies_start_and_success_and_records_it_in_the_status_file() {
    let db = small_db("mb_ok");
    let bucket = s3().bucket("mb-ok");
    let hook = FakeHttp::start(Answer::Status(200));
    let ping = FakeHttp::start(Answer::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let before = Utc::now() - chrono::Duration::seconds(1);
    let run = sidecar(&db, &s3().endpoint(), &bucket, &status, &hook)
        .env(
            "PGSIDECAR_NOTIFY__PING__START_URL",
            format!("{}/start", ping.url()),
        )
        .args(&["backup"])
        .run()
        .expect_code(0);
    let key = run.stdout.trim().to_string();
    assert!(key.starts_with(&format!("p/{db}/")), "{key}");

    // The start goes to the ping URL (the webhook takes outcomes only), the outcome to the
    // webhook, both delivered before the command exits.
    let pings = ping.bodies.lock().unwrap().clone();
    assert_eq!(pings.len(), 1, "one start ping: {pings:?}");
    assert!(
        pings[0].contains(&db) && pings[0].contains("Started"),
        "{pings:?}"
    );
    let all = hook.messages();
    assert_eq!(all.len(), 1, "{all:?}");
    let success = &all[0];
    assert_eq!(success["kind"], "succeeded", "{success}");
    assert_eq!(success["database"], db.as_str(), "{success}");
    assert_eq!(success["key"], key.as_str(), "{success}");
    assert_eq!(success["attempt"], 1, "{success}");
    assert!(success["stored_bytes"].as_u64().unwrap() > 0, "{success}");

    let entry = status_of(&status, &db);
    assert_eq!(entry["last_key"], key.as_str(), "{entry}");
    let at = time(&entry["last_success_at"]);
    assert!(at >= before && at <= Utc::now(), "{at} {entry}");
    assert!(entry["last_error"].is_null(), "{entry}");
    assert_eq!(entry["attempts_total"], 1, "{entry}");
    assert_eq!(entry["backups_total"], 1, "{entry}");

    // A status file written by commands alone has no daemon behind it, and `health` says so.
    let health = sidecar(&db, &s3().endpoint(), &bucket, &status, &hook)
        .args(&["health"])
        .run()
        .expect_code(1);
    assert!(
        health.stdout.contains("no daemon has run"),
        "{}",
        health.stdout
    );
}

#[test]
fn manual_backup_prunes_by_the_jobs_retention_after_success() {
    let db = small_db("mb_prune");
    let bucket = s3().bucket("mb-prune");
    let hook = FakeHttp::start(Answer::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let keep_one = || {
        sidecar(&db, &s3().endpoint(), &bucket, &status, &hook)
            .env("PGSIDECAR_RETENTION__KEEP_LAST", "1")
    };
    let first = keep_one().backup_key();
    harness::next_key_second();
    let second = keep_one().backup_key();
    assert_ne!(first, second);

    assert_eq!(listed(keep_one()), vec![second.clone()]);
    assert!(
        !s3().keys(&bucket, "").iter().any(|k| k == &first),
        "the first backup's object is still stored"
    );
    let successes = events(&hook, "succeeded");
    assert_eq!(successes.len(), 2, "{successes:?}");
    let pruned: Vec<u64> = successes
        .iter()
        .map(|e| e["pruned"].as_u64().unwrap())
        .collect();
    assert_eq!(pruned, vec![0, 1], "{successes:?}");
    // A second command run updates the status file the first one wrote.
    assert_eq!(status_of(&status, &db)["last_key"], second.as_str());
}

#[test]
fn manual_backup_whose_prune_is_refused_keeps_the_backup_and_exits_1() {
    let db = small_db("mb_prune_refused");
    let bucket = s3().bucket("mb-prune-refused");
    let hook = FakeHttp::start(Answer::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let keep_one = |endpoint: &str| {
        sidecar(&db, endpoint, &bucket, &status, &hook).env("PGSIDECAR_RETENTION__KEEP_LAST", "1")
    };
    let first = keep_one(&s3().endpoint()).backup_key();
    harness::next_key_second();

    let denied = harness::HttpFaultProxy::with_fault(s3().port, harness::Fault::Deletes);
    let run = keep_one(&denied.endpoint())
        .args(&["backup"])
        .run()
        .expect_code(1);
    let second = run.stdout.trim();
    assert!(!second.is_empty() && second != first, "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!("error: {db}: prune: "))
            && run.stderr.contains("AccessDenied"),
        "{}",
        run.stderr
    );
    assert!(denied.injected.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // Both backups are still stored: the refused prune lost nothing, the new one counts.
    assert_eq!(
        listed(keep_one(&s3().endpoint())),
        vec![second.to_string(), first]
    );
    let successes = events(&hook, "succeeded");
    assert_eq!(successes.len(), 2, "{successes:?}");
    let warned = successes[1]["warnings"].to_string();
    assert!(
        warned.contains("prune: ") && warned.contains("AccessDenied"),
        "{warned}"
    );
}

#[test]
fn manual_backup_prunes_nothing_below_the_safety_floor() {
    let db = small_db("mb_floor");
    let bucket = s3().bucket("mb-floor");
    let hook = FakeHttp::start(Answer::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    // One backup a day for 3 days: two backups of one day are fewer than the 3 the policy
    // keeps, so the older one stays although no daily bucket wants it.
    let daily = || {
        sidecar(&db, &s3().endpoint(), &bucket, &status, &hook)
            .env("PGSIDECAR_RETENTION__KEEP_DAILY", "3")
    };
    let first = daily().backup_key();
    harness::next_key_second();
    let run = daily().args(&["backup"]).run().expect_code(0);
    let second = run.stdout.trim().to_string();
    assert!(
        run.stderr.contains("fewer than the policy keeps"),
        "{}",
        run.stderr
    );
    assert_eq!(listed(daily()), vec![second, first]);
    let pruned: Vec<u64> = events(&hook, "succeeded")
        .iter()
        .map(|e| e["pruned"].as_u64().unwrap())
        .collect();
    assert_eq!(pruned, vec![0, 0]);
}

/// A backup of `db` towards an S3 endpoint nobody listens on, with a retry policy of 2
/// attempts 1s apart; `--retry` when `retry`.
fn failing_backup(db: &str, retry: bool) -> (Run, Vec<Value>, Value) {
    let hook = FakeHttp::start(Answer::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let dead = format!("http://127.0.0.1:{}", harness::free_port());
    let mut args = vec!["backup"];
    if retry {
        args.push("--retry");
    }
    let run = sidecar(db, &dead, "nobucket", &status, &hook)
        .env("PGSIDECAR_RETRY__ATTEMPTS", "2")
        .env("PGSIDECAR_RETRY__INTERVAL", "1s")
        .args(&args)
        .run()
        .expect_code(1);
    assert!(
        run.stdout.trim().is_empty(),
        "no key printed: {}",
        run.stdout
    );
    let entry = status_of(&status, db);
    (run, hook.messages(), entry)
}

#[test]
fn failed_manual_backup_tries_once_records_the_error_and_notifies_the_failure() {
    let db = small_db("mb_fail");
    let (run, messages, entry) = failing_backup(&db, false);
    assert!(
        !run.stderr.contains("attempt failed, retrying"),
        "{}",
        run.stderr
    );
    assert_eq!(messages.len(), 1, "{messages:?}");
    let failure = &messages[0];
    assert_eq!(failure["kind"], "failed", "{failure}");
    assert_eq!(failure["database"], db.as_str(), "{failure}");
    assert_eq!(failure["attempt"], 1, "{failure}");
    // The message tells the attempts this run made room for, not the job's policy (2).
    assert_eq!(failure["attempts"], 1, "{failure}");
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach the S3 endpoint"),
        "{failure}"
    );

    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach the S3 endpoint")),
        "{entry}"
    );
    assert!(entry["last_success_at"].is_null(), "{entry}");
    assert!(entry["last_attempt_at"].is_string(), "{entry}");
    assert_eq!(entry["attempts_total"], 1, "{entry}");
    assert_eq!(entry["failures_total"], 1, "{entry}");
}

#[test]
fn failed_manual_backup_with_retry_follows_the_jobs_retry_policy() {
    let db = small_db("mb_retry");
    let (run, messages, entry) = failing_backup(&db, true);
    assert_eq!(
        run.stderr.matches("attempt failed, retrying").count(),
        1,
        "{}",
        run.stderr
    );
    // Attempts in between are not notified by default: one failure, after the last attempt.
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["kind"], "failed", "{}", messages[0]);
    assert_eq!(messages[0]["attempt"], 2, "{}", messages[0]);
    assert_eq!(messages[0]["attempts"], 2, "{}", messages[0]);
    assert!(entry["last_error"].is_string(), "{entry}");
    assert_eq!(entry["attempts_total"], 2, "{entry}");
    assert_eq!(entry["failures_total"], 1, "{entry}");
}

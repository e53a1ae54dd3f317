//! Several destinations from one dump: the primary storage and its copies (`[copies.<name>]`,
//! `PGSIDECAR_COPIES__<NAME>__*`). Each test checks what each store holds afterwards
//! (objects, manifests, open uploads), what the commands print and exit with, and what the
//! notifications and metrics say about each destination.
//!
//! Layout used throughout: the primary is `s3://<bucket>/p` (keys `p/<db>/<stamp>...`), an S3
//! copy is `s3://<bucket>/off` (keys `off/<db>/<stamp>...`), a local copy is `file://<dir>`
//! (files `<dir>/<db>/<stamp>...`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{self, pg, s3, Answer, Daemon, FakeHttp, Pg, Proxy, Sidecar, S3};

/// A fresh database with a table `t` of 100 rows.
fn small_db(pg: &Pg, hint: &str) -> String {
    let db = pg.create_db(hint);
    pg.psql(
        &db,
        "CREATE TABLE t(id int PRIMARY KEY, note text); \
         INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g",
    );
    db
}

/// Adds the S3 copy `name` at `s3://<bucket>/off` on the server at `endpoint`.
fn with_s3_copy(sidecar: Sidecar, name: &str, bucket: &str, endpoint: &str) -> Sidecar {
    let var = |key: &str| format!("PGSIDECAR_COPIES__{}__{key}", name.to_uppercase());
    sidecar
        .env(&var("URL"), format!("s3://{bucket}/off"))
        .env(&var("ENDPOINT"), endpoint)
}

/// The sidecar backing up `db` to `s3://<primary>/p` on the shared S3 server and to the copy
/// `offsite` at `s3://<copy>/off` on the server at `copy_endpoint`.
fn to_primary_and_offsite(
    pg: &Pg,
    db: &str,
    primary: &str,
    copy: &str,
    copy_endpoint: &str,
) -> Sidecar {
    with_s3_copy(
        Sidecar::new(pg, db, &s3().endpoint(), primary, "p"),
        "offsite",
        copy,
        copy_endpoint,
    )
}

/// Manifest keys under `prefix` in `bucket`, sorted.
fn manifests_in(store: &S3, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = store
        .keys(bucket, prefix)
        .into_iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .collect();
    keys.sort();
    keys
}

/// The key of a backup relative to its destination's prefix: `<db>/<stamp>.dump.zst`.
fn rel<'a>(key: &'a str, prefix: &str) -> &'a str {
    key.strip_prefix(&format!("{prefix}/"))
        .unwrap_or_else(|| panic!("{key} is not under {prefix}/"))
}

/// The manifest key that goes with a dump key.
fn manifest_of(dump_key: &str) -> String {
    dump_key.replace(".dump.zst", ".manifest.json")
}

fn manifest(store: &S3, bucket: &str, key: &str) -> Value {
    serde_json::from_slice(&store.get(bucket, key))
        .unwrap_or_else(|e| panic!("manifest {key} in {bucket}: {e}"))
}

/// Rows of `t` in `db`.
fn rows(pg: &Pg, db: &str) -> String {
    pg.psql(db, "SELECT count(*) FROM t")
}

fn database_exists(pg: &Pg, db: &str) -> bool {
    pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    ) == "1"
}

/// The webhook's events of `kind` (`succeeded`, `failed`).
fn events(hook: &FakeHttp, kind: &str) -> Vec<Value> {
    hook.messages()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// The destination names in the `IN` column of the `list` table's row for `key`.
fn in_column(table: &str, key: &str) -> BTreeSet<String> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    // The header's words and where each starts; `STARTED (UTC)` splits in two, harmlessly.
    let words: Vec<(usize, &str)> = header
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - header.as_ptr() as usize, w))
        .collect();
    let at = words
        .iter()
        .position(|(_, w)| *w == "IN")
        .unwrap_or_else(|| panic!("no IN column in the list header:\n{table}"));
    let start = words[at].0;
    let end = words.get(at + 1).map_or(usize::MAX, |(i, _)| *i);
    let line = lines
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("{key} is not listed:\n{table}"));
    // The cell is the word of the row that overlaps the header's IN column.
    let cell = line
        .split_whitespace()
        .find(|w| {
            let from = w.as_ptr() as usize - line.as_ptr() as usize;
            let to = from + w.len();
            from < end && to > start
        })
        .unwrap_or_else(|| panic!("no IN cell in the row of {key}:\n{table}"));
    cell.split(',').map(str::to_string).collect()
}

/// `list --json`: each entry's key and destination names.
fn listed_destinations(sidecar: Sidecar) -> Vec<(String, BTreeSet<String>)> {
    let run = sidecar.args(&["list", "--json"]).run().expect_code(0);
    let v: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("list --json: {e}: {}", run.stdout));
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let names = m["destinations"]
                .as_array()
                .unwrap_or_else(|| panic!("no `destinations` array in {m}"))
                .iter()
                .map(|d| d.as_str().unwrap().to_string())
                .collect();
            (m["key"].as_str().unwrap().to_string(), names)
        })
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The values of `name` in a `/metrics` answer whose labels include every one of `labels`.
fn metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            let (set, _) = l.split_once('}').unwrap_or((l, ""));
            labels
                .iter()
                .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// One backup lands in the primary (moto), an S3 copy on a second server (s3s-fs) and a
/// local directory, each with its own manifest and the same bytes; `list` names all three;
/// restores read from either copy, with the primary's objects gone.
#[test]
fn one_backup_lands_in_the_primary_an_s3_copy_and_a_local_copy() {
    let pg = pg(15);
    let db = small_db(pg, "dest_three");
    let primary = s3().bucket("dest-three");
    let other = S3::start_s3s_fs();
    let offsite = other.bucket("dest-three-off");
    let dir = tempfile::tempdir().unwrap();
    let sidecar = || {
        with_s3_copy(
            Sidecar::new(pg, &db, &s3().endpoint(), &primary, "p"),
            "offsite",
            &offsite,
            &other.endpoint(),
        )
        .env(
            "PGSIDECAR_COPIES__LOCAL__URL",
            format!("file://{}", dir.path().display()),
        )
    };
    let run = sidecar().args(&["backup"]).run().expect_code(0);
    // Stdout: the primary's key, as with one destination.
    let key = run.stdout.trim().to_string();
    assert!(key.starts_with(&format!("p/{db}/")), "{}", run.stdout);
    let rel_key = rel(&key, "p").to_string();
    let off_key = format!("off/{rel_key}");
    assert!(
        run.stderr
            .contains(&format!("stored in offsite: {off_key}")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("stored in local: ") && l.contains(&rel_key)),
        "{}",
        run.stderr
    );

    // Each destination holds the dump and its own manifest, with the same bytes and sha256.
    assert_eq!(
        manifests_in(s3(), &primary, ""),
        vec![manifest_of(&key)],
        "{:?}",
        s3().keys(&primary, "")
    );
    assert_eq!(
        manifests_in(&other, &offsite, ""),
        vec![manifest_of(&off_key)],
        "{:?}",
        other.keys(&offsite, "")
    );
    let local_dump = dir.path().join(&rel_key);
    let local_manifest = dir.path().join(manifest_of(&rel_key));
    assert!(local_manifest.is_file(), "{local_manifest:?} missing");
    let bytes = s3().get(&primary, &key);
    assert_eq!(other.get(&offsite, &off_key), bytes, "offsite dump differs");
    assert_eq!(
        std::fs::read(&local_dump).unwrap(),
        bytes,
        "local dump differs"
    );
    let m_primary = manifest(s3(), &primary, &manifest_of(&key));
    let m_offsite = manifest(&other, &offsite, &manifest_of(&off_key));
    let m_local: Value = serde_json::from_slice(&std::fs::read(&local_manifest).unwrap()).unwrap();
    for m in [&m_offsite, &m_local] {
        assert_eq!(m["sha256"], m_primary["sha256"], "{m}");
        assert_eq!(m["stored_bytes"], bytes.len() as u64, "{m}");
    }

    let table = sidecar().args(&["list"]).run().expect_code(0);
    assert_eq!(
        in_column(&table.stdout, &rel_key),
        names(&["primary", "offsite", "local"]),
        "{}",
        table.stdout
    );
    let listed = listed_destinations(sidecar());
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].1, names(&["primary", "offsite", "local"]));

    // With the primary's objects gone, each copy still restores every row.
    s3().delete(&primary, &key);
    s3().delete(&primary, &manifest_of(&key));
    for from in ["offsite", "local"] {
        let target = harness::unique(&format!("dest_three_{from}"));
        sidecar()
            .args(&[
                "restore",
                "latest",
                "--from",
                from,
                "--target-db",
                &target,
                "--yes",
            ])
            .run()
            .expect_code(0);
        assert_eq!(rows(pg, &target), "100", "restored from {from}");
    }
}

/// A backup of `db` with the copy `offsite` (bucket `copy` on the shared moto) unreachable for
/// the whole run (its proxy cut), the webhook `hook` notified, under `policy`.
fn backup_with_copy_down(
    pg: &Pg,
    db: &str,
    primary: &str,
    copy: &str,
    hook: &FakeHttp,
    policy: &str,
) -> harness::Run {
    let proxy = Proxy::start(s3().port);
    proxy.cut();
    let run = with_s3_copy(
        Sidecar::new(pg, db, &s3().endpoint(), primary, "p"),
        "offsite",
        copy,
        &proxy.endpoint(),
    )
    .env("PGSIDECAR_DESTINATIONS__POLICY", policy)
    .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url())
    .args(&["backup"])
    .run();
    // Once the copy's store is back, nothing of the failed run is in it.
    proxy.restore();
    assert_eq!(
        s3().keys(copy, ""),
        Vec::<String>::new(),
        "objects in the copy"
    );
    assert_eq!(
        s3().open_uploads(copy),
        Vec::<String>::new(),
        "uploads left open in the copy"
    );
    run
}

/// Policy `all`, a copy down for the whole backup: exit 1, the primary holds a complete
/// backup, the failure notification names `offsite` and says where the backup went.
#[test]
fn copy_down_with_policy_all_fails_the_run_but_the_primary_is_complete() {
    let pg = pg(15);
    let db = small_db(pg, "dest_down_all");
    let primary = s3().bucket("dest-down-all");
    let copy = s3().bucket("dest-down-all-off");
    let hook = FakeHttp::start(Answer::Status(200));
    let run = backup_with_copy_down(pg, &db, &primary, &copy, &hook, "all").expect_code(1);
    assert!(run.stderr.contains("offsite"), "{}", run.stderr);

    let stored = manifests_in(s3(), &primary, "");
    assert_eq!(stored.len(), 1, "{:?}", s3().keys(&primary, ""));
    let m = manifest(s3(), &primary, &stored[0]);
    let key = m["key"].as_str().unwrap();
    assert_eq!(
        m["stored_bytes"],
        s3().get(&primary, key).len() as u64,
        "{m}"
    );
    assert_eq!(s3().open_uploads(&primary), Vec::<String>::new());

    let failed = events(&hook, "failed");
    assert_eq!(failed.len(), 1, "{:?}", hook.messages());
    assert!(
        events(&hook, "succeeded").is_empty(),
        "{:?}",
        hook.messages()
    );
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("offsite"), "{}", failed[0]);
    assert!(
        error.contains("primary") || error.contains(key),
        "the failure does not say where the backup was stored: {}",
        failed[0]
    );
}

/// Policy `any`, a copy down for the whole backup: exit 0 with a warning naming `offsite`,
/// and the success notification carries that warning.
#[test]
fn copy_down_with_policy_any_succeeds_with_a_warning() {
    let pg = pg(15);
    let db = small_db(pg, "dest_down_any");
    let primary = s3().bucket("dest-down-any");
    let copy = s3().bucket("dest-down-any-off");
    let hook = FakeHttp::start(Answer::Status(200));
    let run = backup_with_copy_down(pg, &db, &primary, &copy, &hook, "any").expect_code(0);
    let key = run.stdout.trim().to_string();
    assert!(key.starts_with(&format!("p/{db}/")), "{}", run.stdout);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.to_lowercase().contains("warn") && l.contains("not stored in `offsite`")),
        "{}",
        run.stderr
    );
    assert_eq!(manifests_in(s3(), &primary, ""), vec![manifest_of(&key)]);

    let succeeded = events(&hook, "succeeded");
    assert_eq!(succeeded.len(), 1, "{:?}", hook.messages());
    assert!(events(&hook, "failed").is_empty(), "{:?}", hook.messages());
    assert_eq!(succeeded[0]["key"], key.as_str(), "{}", succeeded[0]);
    let warnings = succeeded[0]["warnings"].to_string();
    assert!(warnings.contains("offsite"), "{}", succeeded[0]);
}

/// The copy's store goes away in the middle of its upload (12 MB through a 2 MB/s proxy, cut
/// once its multipart upload is open, back shortly after): the primary completes; the copy
/// holds no manifest, no object and no open upload.
#[test]
fn copy_failing_mid_upload_leaves_the_primary_complete_and_the_copy_clean() {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, "dest_midcut", 12);
    let primary = s3().bucket("dest-midcut");
    let copy = s3().bucket("dest-midcut-off");
    let proxy = Proxy::start(s3().port);
    proxy.throttle(2 * 1024 * 1024);
    let child = to_primary_and_offsite(pg, &db, &primary, &copy, &proxy.endpoint())
        .env("PGSIDECAR_COPIES__OFFSITE__PART_SIZE", "5MiB")
        .env("PGSIDECAR_COPIES__OFFSITE__PARTS_IN_FLIGHT", "1")
        .env("PGSIDECAR_COPIES__OFFSITE__PART_ATTEMPTS", "1")
        .args(&["backup"])
        .spawn();
    assert!(
        harness::wait_until(60, || !s3().open_uploads(&copy).is_empty()),
        "the copy's upload never started"
    );
    std::thread::sleep(Duration::from_millis(500));
    // Long enough to break the part in flight (one attempt only), short enough that the
    // abort that follows finds the store back.
    proxy.cut();
    std::thread::sleep(Duration::from_millis(300));
    proxy.restore();
    proxy.throttle(0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "policy `all`: {stderr}");
    assert!(stderr.contains("offsite"), "{stderr}");

    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stored = manifests_in(s3(), &primary, "");
    assert_eq!(stored.len(), 1, "{:?}", s3().keys(&primary, ""));
    let m = manifest(s3(), &primary, &stored[0]);
    if !key.is_empty() {
        assert_eq!(m["key"], key.as_str(), "{m}");
    }
    let dump = m["key"].as_str().unwrap();
    assert_eq!(m["stored_bytes"], s3().get(&primary, dump).len() as u64);
    assert_eq!(s3().open_uploads(&primary), Vec::<String>::new());

    assert_eq!(manifests_in(s3(), &copy, ""), Vec::<String>::new());
    assert_eq!(
        s3().keys(&copy, ""),
        Vec::<String>::new(),
        "objects in the copy"
    );
    assert_eq!(
        s3().open_uploads(&copy),
        Vec::<String>::new(),
        "the copy's upload was left open"
    );
}

/// A copy that takes 2 MB/s slows the backup but does not break it: both destinations hold
/// the backup, their manifests agree on sha256, and `verify --from offsite` passes.
#[test]
fn slow_copy_completes_with_the_same_bytes_as_the_primary() {
    let pg = pg(15);
    let db = harness::incompressible_db(pg, "dest_slow", 6);
    let primary = s3().bucket("dest-slow");
    let copy = s3().bucket("dest-slow-off");
    let proxy = Proxy::start(s3().port);
    proxy.throttle(2 * 1024 * 1024);
    let sidecar = || {
        to_primary_and_offsite(pg, &db, &primary, &copy, &proxy.endpoint())
            .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB")
            .env("PGSIDECAR_COPIES__OFFSITE__PART_SIZE", "5MiB")
    };
    let run = sidecar().args(&["backup"]).run().expect_code(0);
    let key = run.stdout.trim().to_string();
    let off_key = format!("off/{}", rel(&key, "p"));
    assert_eq!(manifests_in(s3(), &primary, ""), vec![manifest_of(&key)]);
    assert_eq!(manifests_in(s3(), &copy, ""), vec![manifest_of(&off_key)]);
    let a = manifest(s3(), &primary, &manifest_of(&key));
    let b = manifest(s3(), &copy, &manifest_of(&off_key));
    assert!(a["sha256"].is_string(), "{a}");
    assert_eq!(a["sha256"], b["sha256"]);
    assert_eq!(a["stored_bytes"], b["stored_bytes"]);
    assert_eq!(s3().open_uploads(&copy), Vec::<String>::new());

    proxy.throttle(0);
    let verify = sidecar()
        .args(&["verify", "latest", "--from", "offsite"])
        .run()
        .expect_code(0);
    assert!(verify.stdout.starts_with("ok"), "{}", verify.stdout);
}

/// The copy is down for the first attempt of a daemon's run (policy `all`, retries 2 s
/// apart), then back: the retry goes to the copy only, so each destination ends with one
/// backup.
#[test]
fn retry_sends_only_to_the_destination_that_lacks_the_backup() {
    let pg = pg(15);
    let db = small_db(pg, "dest_retry");
    let primary = s3().bucket("dest-retry");
    let copy = s3().bucket("dest-retry-off");
    let hook = FakeHttp::start(Answer::Status(200));
    let proxy = Proxy::start(s3().port);
    proxy.cut();
    // No schedule: the daemon backs up once (with its retries) and exits.
    let mut d = Daemon::start(
        to_primary_and_offsite(pg, &db, &primary, &copy, &proxy.endpoint())
            .env("PGSIDECAR_RETRY__ATTEMPTS", "5")
            .env("PGSIDECAR_RETRY__INTERVAL", "2s")
            .env("PGSIDECAR_NOTIFY__WEBHOOK__URL", hook.url()),
    );
    let retrying = "attempt failed, retrying";
    harness::wait_until(90, || {
        d.stderr().contains(retrying) || matches!(d.child.try_wait(), Ok(Some(_)))
    });
    assert!(d.stderr().contains(retrying), "{}", d.stderr());
    assert_eq!(
        manifests_in(s3(), &primary, "").len(),
        1,
        "the first attempt stored in the primary: {}",
        d.stderr()
    );
    proxy.restore();
    assert_eq!(d.wait_exit(90), Some(0), "{}", d.stderr());
    assert_eq!(
        manifests_in(s3(), &primary, "").len(),
        1,
        "the retry stored in the primary again: {:?}",
        s3().keys(&primary, "")
    );
    assert_eq!(
        manifests_in(s3(), &copy, "").len(),
        1,
        "{:?}\n{}",
        s3().keys(&copy, ""),
        d.stderr()
    );
    assert_eq!(s3().open_uploads(&copy), Vec::<String>::new());
    // One notification, a success after the failed first attempt.
    let all = hook.messages();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["kind"], "succeeded_after_retries", "{}", all[0]);
    assert_eq!(all[0]["attempt"], 2, "{}", all[0]);
}

/// Each destination prunes by its own retention: the primary keeps 3 (the job's), the copy
/// keeps 1 (its own); `prune --dry-run` names the destination and deletes nothing.
#[test]
fn each_destination_keeps_backups_by_its_own_retention() {
    let pg = pg(15);
    let db = small_db(pg, "dest_keep");
    let primary = s3().bucket("dest-keep");
    let copy = s3().bucket("dest-keep-off");
    let sidecar = || {
        to_primary_and_offsite(pg, &db, &primary, &copy, &s3().endpoint())
            .env("PGSIDECAR_RETENTION__KEEP_LAST", "3")
            .env("PGSIDECAR_COPIES__OFFSITE__RETENTION__KEEP_LAST", "1")
    };
    let mut keys = Vec::new();
    for i in 0..3 {
        if i > 0 {
            harness::next_key_second();
        }
        keys.push(sidecar().backup_key());
    }
    let primary_manifests = manifests_in(s3(), &primary, "");
    assert_eq!(
        primary_manifests,
        keys.iter().map(|k| manifest_of(k)).collect::<Vec<_>>()
    );
    let newest_copy = format!("off/{}", rel(&keys[2], "p"));
    assert_eq!(
        manifests_in(s3(), &copy, ""),
        vec![manifest_of(&newest_copy)],
        "{:?}",
        s3().keys(&copy, "")
    );
    assert!(s3().keys(&copy, "").contains(&newest_copy));

    let plan = sidecar().args(&["prune", "--dry-run"]).run().expect_code(0);
    assert!(plan.stdout.contains("offsite"), "{}", plan.stdout);

    // With the primary down to 1 as well, the plan deletes its two older backups and nothing
    // of the copy's; a dry run deletes nothing.
    let plan = sidecar()
        .env("PGSIDECAR_RETENTION__KEEP_LAST", "1")
        .args(&["prune", "--dry-run"])
        .run()
        .expect_code(0);
    let doomed: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.contains("would delete") && l.contains(".dump"))
        .collect();
    for old in &keys[..2] {
        assert!(
            doomed.iter().any(|l| l.contains(old.as_str())),
            "{old} not planned for deletion:\n{}",
            plan.stdout
        );
    }
    assert!(
        !doomed
            .iter()
            .any(|l| l.contains(keys[2].as_str()) || l.contains(&newest_copy)),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("offsite"), "{}", plan.stdout);
    assert_eq!(manifests_in(s3(), &primary, ""), primary_manifests);
    assert_eq!(manifests_in(s3(), &copy, "").len(), 1);
}

/// With the primary unreachable, a restore without `--from` reads from the copy and says so;
/// `--from primary` fails and creates nothing.
#[test]
fn restore_reads_from_the_copy_when_the_primary_is_down() {
    let pg = pg(15);
    let db = small_db(pg, "dest_failover");
    let primary = s3().bucket("dest-failover");
    let copy = s3().bucket("dest-failover-off");
    let proxy = Proxy::start(s3().port);
    let sidecar = || {
        with_s3_copy(
            Sidecar::new(pg, &db, &proxy.endpoint(), &primary, "p"),
            "offsite",
            &copy,
            &s3().endpoint(),
        )
    };
    sidecar().backup_key();
    assert_eq!(manifests_in(s3(), &copy, "").len(), 1);
    proxy.cut();

    let target = harness::unique("dest_failover_copy");
    let run = sidecar()
        .args(&["restore", "latest", "--target-db", &target, "--yes"])
        .run()
        .expect_code(0);
    assert!(
        run.stderr.contains("primary storage cannot be reached")
            && run.stderr.contains("reading from copy `offsite`"),
        "{}",
        run.stderr
    );
    assert_eq!(rows(pg, &target), "100");

    let refused = harness::unique("dest_failover_primary");
    let run = sidecar()
        .args(&[
            "restore",
            "latest",
            "--from",
            "primary",
            "--target-db",
            &refused,
            "--yes",
        ])
        .run();
    assert_ne!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(!database_exists(pg, &refused), "{refused} was created");
}

/// `copy --to offsite` after the fact copies what the copy lacks, once; a dump whose bytes no
/// longer match its manifest is refused by name, and gets no manifest in the target.
#[test]
fn copy_command_fills_a_new_copy_once_and_refuses_a_tampered_dump() {
    let pg = pg(15);
    let db = small_db(pg, "dest_copycmd");
    let primary = s3().bucket("dest-copycmd");
    let copy = s3().bucket("dest-copycmd-off");
    let only_primary = || Sidecar::new(pg, &db, &s3().endpoint(), &primary, "p");
    let first = only_primary().backup_key();
    harness::next_key_second();
    let second = only_primary().backup_key();
    assert!(s3().keys(&copy, "").is_empty());

    let sidecar = || with_s3_copy(only_primary(), "offsite", &copy, &s3().endpoint());
    let run = sidecar()
        .args(&["copy", "--to", "offsite"])
        .run()
        .expect_code(0);
    // One line per backup: `copied <key> (<stored bytes> bytes)`, the key naming the backup
    // (`<db>/<stamp>`, whichever of its keys).
    for key in [&first, &second] {
        let stem = rel(key, "p").trim_end_matches(".dump.zst");
        let bytes = manifest(s3(), &primary, &manifest_of(key))["stored_bytes"].clone();
        assert!(
            run.stdout.lines().any(|l| l.starts_with("copied ")
                && l.contains(stem)
                && l.ends_with(&format!("({bytes} bytes)"))),
            "{key} not reported as copied with {bytes} bytes:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("2 copied, 0 already there"),
        "{}",
        run.stdout
    );
    let copied = manifests_in(s3(), &copy, "");
    assert_eq!(
        copied,
        [&first, &second]
            .iter()
            .map(|k| manifest_of(&format!("off/{}", rel(k, "p"))))
            .collect::<Vec<_>>()
    );
    for key in [&first, &second] {
        let off = format!("off/{}", rel(key, "p"));
        assert_eq!(s3().get(&copy, &off), s3().get(&primary, key), "{off}");
    }

    let table = sidecar().args(&["list"]).run().expect_code(0);
    for key in [&first, &second] {
        assert_eq!(
            in_column(&table.stdout, rel(key, "p")),
            names(&["primary", "offsite"]),
            "{}",
            table.stdout
        );
    }
    let target = harness::unique("dest_copycmd_restored");
    sidecar()
        .args(&[
            "restore",
            "latest",
            "--from",
            "offsite",
            "--target-db",
            &target,
            "--yes",
        ])
        .run()
        .expect_code(0);
    assert_eq!(rows(pg, &target), "100");

    let again = sidecar()
        .args(&["copy", "--to", "offsite"])
        .run()
        .expect_code(0);
    assert!(
        again.stdout.contains("0 copied, 2 already there"),
        "{}",
        again.stdout
    );
    assert!(
        !again.stdout.lines().any(|l| l.starts_with("copied ")),
        "{}",
        again.stdout
    );
    assert_eq!(manifests_in(s3(), &copy, ""), copied);

    // The newest dump in the primary now holds other bytes of the same length.
    let mut bytes = s3().get(&primary, &second);
    for b in bytes.iter_mut() {
        *b ^= 0x5a;
    }
    s3().put(&primary, &second, &bytes);
    let vault = s3().bucket("dest-copycmd-vault");
    let run = with_s3_copy(sidecar(), "vault", &vault, &s3().endpoint())
        .args(&["copy", "--to", "vault"])
        .run()
        .expect_code(1);
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(output.contains(rel(&second, "p")), "{output}");
    let tampered = manifest_of(&format!("off/{}", rel(&second, "p")));
    assert!(
        !manifests_in(s3(), &vault, "").contains(&tampered),
        "{:?}",
        s3().keys(&vault, "")
    );
    assert_eq!(s3().open_uploads(&vault), Vec::<String>::new());
}

/// Bad destination settings are configuration errors (exit 2) naming the key; an unknown
/// `--from` names the destination and the configured ones.
#[test]
fn bad_destination_settings_exit_2_naming_the_key() {
    let pg = pg(15);
    let db = small_db(pg, "dest_config");
    let bucket = s3().bucket("dest-config");
    let sidecar = || Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p");
    // (variables, the keys of which the error must name one)
    type Case<'a> = (&'a [(&'a str, String)], &'a [&'a str]);
    let cases: [Case; 5] = [
        (
            &[(
                "PGSIDECAR_COPIES__PRIMARY__URL",
                "s3://elsewhere/off".into(),
            )],
            &["copies.primary"],
        ),
        (
            &[("PGSIDECAR_COPIES__X__REGION", "eu-west-1".into())],
            &["copies.x.url"],
        ),
        (
            &[("PGSIDECAR_COPIES__TWIN__URL", format!("s3://{bucket}/p"))],
            &["copies.twin.url"],
        ),
        (
            &[
                ("PGSIDECAR_COPIES__A__URL", "s3://same-place/q".into()),
                ("PGSIDECAR_COPIES__B__URL", "s3://same-place/q".into()),
            ],
            &["copies.a.url", "copies.b.url"],
        ),
        (
            &[("PGSIDECAR_DESTINATIONS__POLICY", "most".into())],
            &["destinations.policy"],
        ),
    ];
    for (vars, keys) in cases {
        let mut cmd = sidecar();
        for (k, v) in vars {
            cmd = cmd.env(k, v);
        }
        let run = cmd.args(&["backup"]).run();
        assert_eq!(run.code, 2, "{vars:?}: {}{}", run.stdout, run.stderr);
        assert!(
            keys.iter().any(|k| run.stderr.contains(k)),
            "{vars:?}: the error names none of {keys:?}: {}",
            run.stderr
        );
    }
    assert!(
        manifests_in(s3(), &bucket, "").is_empty(),
        "a misconfigured run backed up"
    );

    let copy = s3().bucket("dest-config-off");
    let run = with_s3_copy(sidecar(), "offsite", &copy, &s3().endpoint())
        .args(&[
            "restore",
            "latest",
            "--from",
            "nosuch",
            "--target-db",
            "never_created",
            "--yes",
        ])
        .run()
        .expect_code(2);
    for name in ["nosuch", "primary", "offsite"] {
        assert!(run.stderr.contains(name), "{name}: {}", run.stderr);
    }
}

/// Copies from a configuration file, as a TOML array (`[[copies]]` with `name`) and as a
/// table (`[copies.offsite]`), merged key by key with the environment (the endpoint and the
/// retention come from variables).
#[test]
fn copies_from_a_file_in_either_form_merge_with_the_environment() {
    let pg = pg(15);
    let db = small_db(pg, "dest_file");
    let dir = tempfile::tempdir().unwrap();
    let forms = [
        (
            "array",
            "[[copies]]\nname = \"offsite\"\nurl = \"s3://{copy}/off\"\n",
        ),
        ("table", "[copies.offsite]\nurl = \"s3://{copy}/off\"\n"),
    ];
    for (form, text) in forms {
        let primary = s3().bucket(&format!("dest-file-{form}"));
        let copy = s3().bucket(&format!("dest-file-{form}-off"));
        let path = dir.path().join(format!("{form}.toml"));
        std::fs::write(&path, text.replace("{copy}", &copy)).unwrap();
        let sidecar = || {
            Sidecar::new(pg, &db, &s3().endpoint(), &primary, "p")
                .env("PGSIDECAR_COPIES__OFFSITE__ENDPOINT", s3().endpoint())
                .env("PGSIDECAR_COPIES__OFFSITE__RETENTION__KEEP_LAST", "1")
                .args(&["--config", path.to_str().unwrap()])
        };
        let first = sidecar().backup_key();
        harness::next_key_second();
        let second = sidecar().backup_key();
        assert_eq!(manifests_in(s3(), &primary, "").len(), 2, "{form}");
        assert_eq!(
            manifests_in(s3(), &copy, ""),
            vec![manifest_of(&format!("off/{}", rel(&second, "p")))],
            "{form}: {first} should be pruned from the copy"
        );
    }
}

/// Policy `all`: `health` fails once a copy's newest backup is older than the schedule and
/// grace allow, although the primary keeps getting new ones.
#[test]
fn health_fails_when_a_copys_newest_backup_is_too_old() {
    let pg = pg(15);
    let db = small_db(pg, "dest_health");
    let primary = s3().bucket("dest-health");
    let copy = s3().bucket("dest-health-off");
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let proxy = Proxy::start(s3().port);
    let sidecar = || {
        to_primary_and_offsite(pg, &db, &primary, &copy, &proxy.endpoint())
            .env("PGSIDECAR_SCHEDULE", "*/2 * * * * *")
            .env("PGSIDECAR_RETRY__ATTEMPTS", "1")
            .env("PGSIDECAR_HEALTH__GRACE", "2s")
            .env("PGSIDECAR_HEALTH__STATUS_FILE", &status)
    };
    let mut d = Daemon::start(sidecar());
    assert!(
        harness::wait_until(30, || sidecar().args(&["health"]).run().code == 0),
        "never healthy: {}",
        d.stderr()
    );
    proxy.cut();
    let stored = manifests_in(s3(), &primary, "").len();
    // Unhealthy at first only for the age (the attempt that will miss the copy is still
    // running on a loaded machine); the copy is named once that attempt has failed.
    let mut why = None;
    assert!(
        harness::wait_until(60, || {
            let run = sidecar().args(&["health"]).run();
            let named = run.code == 1 && run.stdout.contains("offsite");
            why = Some(run);
            named
        }),
        "never unhealthy naming the stale destination: {:?}\n{}",
        why.map(|r| (r.code, r.stdout, r.stderr)),
        d.stderr()
    );
    assert!(
        manifests_in(s3(), &primary, "").len() > stored,
        "the primary got no new backup meanwhile: {}",
        d.stderr()
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(30), Some(0), "{}", d.stderr());
}

/// `/metrics` of a daemon has each destination's last success and failure count: one copy
/// up (`offsite`), one down (`dead`, nothing listens), policy `any`.
#[test]
fn metrics_show_each_destinations_last_success_and_failures() {
    let pg = pg(15);
    let db = small_db(pg, "dest_metrics");
    let primary = s3().bucket("dest-metrics");
    let copy = s3().bucket("dest-metrics-off");
    let port = harness::free_port();
    let dead = format!("http://127.0.0.1:{}", harness::free_port());
    let mut d = Daemon::start(
        to_primary_and_offsite(pg, &db, &primary, &copy, &s3().endpoint())
            .env("PGSIDECAR_COPIES__DEAD__URL", "s3://nobucket/off")
            .env("PGSIDECAR_COPIES__DEAD__ENDPOINT", &dead)
            .env("PGSIDECAR_DESTINATIONS__POLICY", "any")
            // Daily: the catch-up at start is the one run.
            .env("PGSIDECAR_SCHEDULE", "0 3 * * *")
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}")),
    );
    let last_success = "pgsidecar_destination_last_success_timestamp_seconds";
    let failures = "pgsidecar_destination_failures_total";
    let of = |dest: &'static str| {
        [
            ("job", "default"),
            ("database", db.as_str()),
            ("destination", dest),
        ]
    };
    assert!(
        harness::wait_until(90, || {
            let m = harness::http_get(port, "/metrics");
            (!metric(&m, last_success, &of("offsite")).is_empty()
                && metric(&m, failures, &of("dead")).iter().any(|v| *v >= 1.0))
                || matches!(d.child.try_wait(), Ok(Some(_)))
        }) && matches!(d.child.try_wait(), Ok(None)),
        "{}\n{}",
        harness::http_get(port, "/metrics"),
        d.stderr()
    );
    let m = harness::http_get(port, "/metrics");
    let now = chrono::Utc::now().timestamp() as f64;
    for dest in ["primary", "offsite"] {
        let at = metric(&m, last_success, &of(dest));
        assert_eq!(at.len(), 1, "{dest}:\n{m}");
        assert!((now - at[0]).abs() < 120.0, "{dest}: {at:?}\n{m}");
        assert!(
            metric(&m, failures, &of(dest)).iter().all(|v| *v == 0.0),
            "{dest}:\n{m}"
        );
    }
    assert!(
        metric(&m, last_success, &of("dead"))
            .iter()
            .all(|v| *v == 0.0),
        "{m}"
    );
    assert_eq!(manifests_in(s3(), &copy, "").len(), 1);
    d.signal("TERM");
    assert_eq!(d.wait_exit(30), Some(0), "{}", d.stderr());
}

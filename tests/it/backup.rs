use crate::harness::{self, pg, s3, Pg, Sidecar};
use serde_json::Value;

/// A schema touching the types and objects a dump must carry.
pub(crate) const SCHEMA: &str = r#"
CREATE SCHEMA billing;
CREATE TYPE mood AS ENUM ('ok', 'happy');
CREATE TABLE public."MixedCase Table" (
  id bigserial PRIMARY KEY,
  "Label" text NOT NULL,
  note text,
  blob bytea,
  doc jsonb,
  amount numeric(20,6),
  tags text[],
  seen timestamptz,
  m mood
);
INSERT INTO public."MixedCase Table" ("Label", note, blob, doc, amount, tags, seen, m)
SELECT 'row ' || g, 'ünïcødé ✓ 日本語 ' || g, decode(md5(g::text), 'hex'),
       jsonb_build_object('n', g, 'nested', jsonb_build_array(g, 'x')),
       g * 1.234567, ARRAY['a' || g, 'b'], '2026-03-29 01:30:00+01'::timestamptz + g * interval '1 hour',
       (CASE WHEN g % 2 = 0 THEN 'ok' ELSE 'happy' END)::mood
FROM generate_series(1, 500) g;
CREATE TABLE billing.invoices (id int PRIMARY KEY, total numeric, customer text);
INSERT INTO billing.invoices SELECT g, g * 10, 'c' || g FROM generate_series(1, 100) g;
CREATE SEQUENCE billing.invoice_no START 1000;
SELECT setval('billing.invoice_no', 1234);
CREATE VIEW billing.big_invoices AS SELECT * FROM billing.invoices WHERE total > 500;
CREATE FUNCTION billing.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.customer := upper(NEW.customer); RETURN NEW; END $$;
CREATE TRIGGER invoices_touch BEFORE INSERT ON billing.invoices
  FOR EACH ROW EXECUTE FUNCTION billing.touch();
COMMENT ON TABLE billing.invoices IS 'Invoices — commented';
COMMENT ON COLUMN public."MixedCase Table"."Label" IS 'a label';
SELECT lo_from_bytea(0, convert_to('large object payload', 'UTF8'));
"#;

/// The large object of [`SCHEMA`] came back in `db` (`pg_dump`'s text output leaves it out).
pub(crate) fn assert_large_object_restored(pg: &Pg, db: &str) {
    assert_eq!(
        pg.psql(
            db,
            "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata"
        ),
        "large object payload"
    );
}

fn manifests(bucket: &str, prefix: &str) -> Vec<String> {
    s3().keys(bucket, prefix)
        .into_iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .collect()
}

/// Backs up a loaded database on `pg`, downloads and restores the object by hand, and checks
/// that `pg_dump` of the original and the restored copy are identical.
fn round_trip(pg: &Pg) {
    let db = pg.create_db("rt");
    pg.psql(&db, SCHEMA);
    let bucket = s3().bucket("rt");
    let run = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "prod")
        .args(&["backup"])
        .run()
        .expect_code(0);
    let key = run.stdout.trim().to_string();
    assert!(
        key.starts_with(&format!("prod/{db}/")) && key.ends_with(".dump.zst"),
        "{key}"
    );
    // Not a terminal: plain log lines, no colour codes.
    assert!(run.stderr.contains("backup complete"), "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "{:?}", run.stderr);

    let manifest_keys = manifests(&bucket, "prod/");
    assert_eq!(manifest_keys.len(), 1, "{manifest_keys:?}");
    let manifest: Value = serde_json::from_slice(&s3().get(&bucket, &manifest_keys[0])).unwrap();
    let stored = s3().get(&bucket, &key);
    assert_eq!(manifest["key"], key.as_str());
    assert_eq!(manifest["database"], db.as_str());
    assert_eq!(manifest["server_major"], pg.major);
    assert_eq!(manifest["stored_bytes"], stored.len() as u64);
    assert_eq!(manifest["compression"]["algorithm"], "zstd");
    use sha2::Digest;
    assert_eq!(
        manifest["sha256"],
        hex::encode(sha2::Sha256::digest(&stored)).as_str()
    );
    let raw = harness::unzstd(&stored);
    assert_eq!(manifest["raw_bytes"], raw.len() as u64);
    assert!(raw.starts_with(b"PGDMP"));

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.dump");
    std::fs::write(&archive, &raw).unwrap();
    let copy = pg.create_db("rt_copy");
    harness::pg_restore(pg, &archive, &copy);
    assert_eq!(pg.dump_sql(&db), pg.dump_sql(&copy));
    assert_large_object_restored(pg, &copy);
}

#[test]
fn round_trip_postgres_15() {
    round_trip(pg(15));
}

#[test]
fn round_trip_postgres_17() {
    round_trip(pg(17));
}

#[test]
fn round_trip_postgres_18() {
    round_trip(pg(18));
}

#[test]
fn list_shows_backups_newest_first_and_skips_foreign_objects() {
    let pg = pg(15);
    let db = pg.create_db("list");
    pg.psql(&db, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let bucket = s3().bucket("list");
    let sidecar = || Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p");
    let first = sidecar().args(&["backup"]).run().expect_code(0).stdout;
    harness::next_key_second();
    let second = sidecar().args(&["backup"]).run().expect_code(0).stdout;
    // Things in the prefix that are not backups must not be listed or break the listing.
    s3().put(&bucket, &format!("p/{db}/notes.txt"), b"hello");
    s3().put(
        &bucket,
        &format!("p/{db}/broken.manifest.json"),
        b"{not json",
    );
    s3().put(&bucket, &format!("p/{db}/orphan.dump.zst"), b"partial");

    let table = sidecar().args(&["list"]).run().expect_code(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("STARTED (UTC)"), "{}", table.stdout);
    assert_eq!(lines.len(), 3, "{}", table.stdout);
    assert!(lines[1].ends_with(second.trim()), "{}", table.stdout);
    assert!(lines[2].ends_with(first.trim()), "{}", table.stdout);
    assert!(
        table.stderr.contains("broken.manifest.json"),
        "{}",
        table.stderr
    );

    let json = sidecar().args(&["list", "--json"]).run().expect_code(0);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec![second.trim(), first.trim()]);
}

#[test]
fn local_directory_storage_round_trip() {
    let pg = pg(15);
    let db = pg.create_db("local");
    pg.psql(
        &db,
        "CREATE TABLE t(x text); INSERT INTO t SELECT md5(g::text) FROM generate_series(1,1000) g",
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let run = Sidecar::new(pg, &db, &s3().endpoint(), "unused", "x")
        .env("PGSIDECAR_STORAGE__URL", &url)
        .env("PGSIDECAR_COMPRESSION__ALGORITHM", "gzip")
        .args(&["backup"])
        .run()
        .expect_code(0);
    let key = run.stdout.trim();
    assert!(key.ends_with(".dump.gz"), "{key}");
    let stored = std::fs::read(dir.path().join(key)).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&stored[..]), &mut raw).unwrap();
    assert!(raw.starts_with(b"PGDMP"));
    let listed = Sidecar::new(pg, &db, &s3().endpoint(), "unused", "x")
        .env("PGSIDECAR_STORAGE__URL", &url)
        .args(&["list", "--json"])
        .run()
        .expect_code(0);
    assert!(listed.stdout.contains(key), "{}", listed.stdout);
    // No temp files left beside the backup, and what is stored is readable by its owner only.
    let files: Vec<std::fs::DirEntry> = std::fs::read_dir(dir.path().join(&db))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = f.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", f.path());
    }
}

/// A dump larger than `max_parts` parts continues in further objects, listed in order.
#[test]
fn dump_outgrowing_one_upload_continues_in_pieces() {
    let pg = pg(18);
    // ~14 MB of incompressible data: three 5 MiB parts.
    let db = harness::incompressible_db(pg, "pieces", 14);
    let bucket = s3().bucket("pieces");
    let run = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .env("PGSIDECAR_STORAGE__PART_SIZE", "5MiB")
        .env("PGSIDECAR_STORAGE__MAX_PARTS", "1")
        .args(&["backup"])
        .run()
        .expect_code(0);
    let key = run.stdout.trim().to_string();
    let mkey = manifests(&bucket, "p/")[0].clone();
    let manifest: Value = serde_json::from_slice(&s3().get(&bucket, &mkey)).unwrap();
    let objects = manifest["objects"].as_array().unwrap();
    assert!(objects.len() >= 3, "{manifest}");
    assert_eq!(objects[0]["key"], key.as_str());
    assert_eq!(objects[1]["key"], format!("{key}.002").as_str());
    let mut all = Vec::new();
    for o in objects {
        all.extend(s3().get(&bucket, o["key"].as_str().unwrap()));
    }
    assert_eq!(manifest["stored_bytes"], all.len() as u64);
    let raw = harness::unzstd(&all);
    assert_eq!(manifest["raw_bytes"], raw.len() as u64);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), &raw).unwrap();
    let copy = pg.create_db("pieces_copy");
    harness::pg_restore(pg, &dir.path().join("a"), &copy);
    assert_eq!(pg.dump_sql(&db), pg.dump_sql(&copy));
    assert!(s3().open_uploads(&bucket).is_empty());
}

#[test]
fn verify_accepts_a_good_backup_and_names_a_damaged_one() {
    let pg = pg(17);
    let db = pg.create_db("verify");
    pg.psql(&db, SCHEMA);
    let bucket = s3().bucket("verify");
    let sidecar = || Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p");
    let key = sidecar().backup_key();

    let ok = sidecar().args(&["verify", "latest"]).run().expect_code(0);
    assert!(
        ok.stdout.starts_with(&format!("ok: {key}")),
        "{}",
        ok.stdout
    );
    let by_time = sidecar()
        .args(&["verify", "2999-01-01T00:00:00Z"])
        .run()
        .expect_code(0);
    assert!(by_time.stdout.contains(&key), "{}", by_time.stdout);
    let none = sidecar()
        .args(&["verify", "2000-01-01T00:00:00Z"])
        .run()
        .expect_code(1);
    assert!(none.stderr.contains("no backup matches"), "{}", none.stderr);

    // One flipped byte, then a truncated object: both refused, naming the object.
    let good = s3().get(&bucket, &key);
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    s3().put(&bucket, &key, &flipped);
    let bad = sidecar().args(&["verify", &key]).run().expect_code(1);
    assert!(
        bad.stderr.contains(&format!("`{key}` is damaged")) && bad.stderr.contains("sha256"),
        "{}",
        bad.stderr
    );
    s3().put(&bucket, &key, &good[..good.len() / 3]);
    let short = sidecar().args(&["verify"]).run().expect_code(1);
    assert!(short.stderr.contains("is damaged"), "{}", short.stderr);
}

/// Backs up a database of known row counts on `pg` and reads them back from the manifest.
fn manifest_records_row_counts(pg: &Pg) {
    let db = pg.create_db("counts");
    pg.psql(
        &db,
        r#"
CREATE SCHEMA "Sales";
CREATE TABLE "Sales"."Orders Table" (id int);
INSERT INTO "Sales"."Orders Table" SELECT generate_series(1, 3);
CREATE TABLE public.events (id bigint, payload text);
INSERT INTO public.events SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
CREATE TABLE public.empty (id int);
CREATE VIEW public.recent AS SELECT * FROM public.events WHERE id > 990;
CREATE SEQUENCE public.counter;
"#,
    );
    let bucket = s3().bucket("counts");
    let run = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .args(&["backup"])
        .run()
        .expect_code(0);
    assert!(
        !run.stderr.contains("snapshot") && !run.stderr.contains("row counts"),
        "{}",
        run.stderr
    );
    let mkey = manifests(&bucket, "p/")[0].clone();
    let manifest: Value = serde_json::from_slice(&s3().get(&bucket, &mkey)).unwrap();
    assert_eq!(
        manifest["tables"],
        serde_json::json!([
            { "schema": "Sales", "name": "Orders Table", "rows": 3 },
            { "schema": "public", "name": "empty", "rows": 0 },
            { "schema": "public", "name": "events", "rows": 1000 },
        ]),
        "{manifest}"
    );
}

#[test]
fn manifest_records_row_counts_postgres_17() {
    manifest_records_row_counts(pg(17));
}

/// The harness's PostgreSQL 18 is built without libxml: counting must not depend on it.
#[test]
fn manifest_records_row_counts_postgres_18() {
    manifest_records_row_counts(pg(18));
}

/// The minimal backup role of docs/THREAT-MODEL.md, no superuser: `pg_read_all_data` from 14
/// on, and before 14 the grants that page lists.
fn backup_role_can_back_up(pg: &Pg) {
    let role = harness::unique("reader");
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'reader-pw'"),
    );
    if pg.major >= 14 {
        pg.psql("postgres", &format!("GRANT pg_read_all_data TO {role}"));
    }
    let db = pg.create_db("ro");
    pg.psql(
        &db,
        "CREATE SCHEMA s; CREATE TABLE s.t(id serial PRIMARY KEY, v text); \
         INSERT INTO s.t(v) SELECT 'v' || g FROM generate_series(1, 50) g",
    );
    if pg.major < 14 {
        pg.psql(
            &db,
            &format!(
                "GRANT CONNECT ON DATABASE {db} TO {role}; GRANT USAGE ON SCHEMA s TO {role}; \
                 GRANT SELECT ON ALL TABLES IN SCHEMA s TO {role}; \
                 GRANT SELECT ON ALL SEQUENCES IN SCHEMA s TO {role}"
            ),
        );
    }
    let bucket = s3().bucket("ro");
    let key = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .env("PGUSER", &role)
        .env("PGPASSWORD", "reader-pw")
        .env("PGSIDECAR_GLOBALS", "true")
        .args(&["backup"])
        .run()
        .expect_code(0)
        .stdout;
    let manifest: Value = serde_json::from_slice(
        &s3().get(&bucket, &key.trim().replace(".dump.zst", ".manifest.json")),
    )
    .unwrap();
    // pg_read_all_data reads every table, pg_authid included: the password hashes come along.
    // The grants before 14 do not reach pg_authid: roles come without passwords.
    assert_eq!(
        manifest["globals"]["role_passwords"],
        pg.major >= 14,
        "{manifest}"
    );
    assert_eq!(manifest["tables"][0]["rows"], 50, "{manifest}");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.dump");
    std::fs::write(&archive, harness::unzstd(&s3().get(&bucket, key.trim()))).unwrap();
    let copy = pg.create_db("ro_copy");
    harness::pg_restore(pg, &archive, &copy);
    assert_eq!(pg.dump_sql(&db), pg.dump_sql(&copy));
}

#[test]
fn backup_role_with_grants_postgres_13() {
    backup_role_can_back_up(pg(13));
}

#[test]
fn backup_role_with_pg_read_all_data_postgres_15() {
    backup_role_can_back_up(pg(15));
}

#[test]
fn backup_role_with_pg_read_all_data_postgres_17() {
    backup_role_can_back_up(pg(17));
}

#[test]
fn backup_role_with_pg_read_all_data_postgres_18() {
    backup_role_can_back_up(pg(18));
}

/// Regression: keys have one-second resolution, and a second backup of a database started
/// within the same second as another failed with "manifest already exists".
#[test]
fn backups_started_in_the_same_second_get_distinct_keys() {
    let pg = pg(15);
    let db = pg.create_db("samesec");
    pg.psql(&db, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let bucket = s3().bucket("samesec");
    // Three at once: the database's lock runs them one after the other, well within a second
    // or two, so at least two start in the same second.
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let backup = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p").args(&["backup"]);
            std::thread::spawn(move || backup.run())
        })
        .collect();
    let mut keys: Vec<String> = runs
        .into_iter()
        .map(|r| r.join().unwrap().expect_code(0).stdout.trim().to_string())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(manifests(&bucket, "p/").len(), 3);
    // Key order is start order: list, prune and the anomaly check rely on it. (A backup that
    // took a later second once sorted before an older one that had been moved on a second.)
    let mut started: Vec<(String, String)> = keys
        .iter()
        .map(|k| {
            let m: Value = serde_json::from_slice(
                &s3().get(&bucket, &k.replace(".dump.zst", ".manifest.json")),
            )
            .unwrap();
            (m["started_at"].as_str().unwrap().to_string(), k.clone())
        })
        .collect();
    started.sort();
    let by_start: Vec<&String> = started.iter().map(|(_, k)| k).collect();
    assert_eq!(by_start, keys.iter().collect::<Vec<_>>());
}

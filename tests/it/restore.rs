//! Restores that succeed: every mode and server major, across majors, database properties.

use crate::backup::SCHEMA;
use crate::harness::{self, pg, pg18_bin, s3, Pg, Sidecar};

/// Changes made after the backup that a restore must undo (objects in the backup only, so
/// that the default mode's result equals the backup exactly).
pub(crate) const DAMAGE: &str = "DELETE FROM billing.invoices WHERE id > 10; \
    UPDATE public.\"MixedCase Table\" SET note = 'overwritten'; \
    DROP VIEW billing.big_invoices;";

pub(crate) fn sidecar(pg: &Pg, db: &str, bucket: &str) -> Sidecar {
    Sidecar::new(pg, db, &s3().endpoint(), bucket, "prod")
}

/// A database loaded with [`SCHEMA`], backed up once: (database, bucket, dump key).
pub(crate) fn backed_up(pg: &Pg, hint: &str) -> (String, String, String) {
    let db = pg.create_db(hint);
    pg.psql(&db, SCHEMA);
    let bucket = s3().bucket(hint);
    let key = sidecar(pg, &db, &bucket).backup_key();
    (db, bucket, key)
}

pub(crate) fn databases_like(pg: &Pg, pattern: &str) -> Vec<String> {
    let out = pg.psql(
        "postgres",
        &format!("SELECT datname FROM pg_database WHERE datname LIKE '{pattern}' ORDER BY 1"),
    );
    out.lines().map(str::to_string).collect()
}

fn in_place_and_into_a_new_database(pg: &Pg) {
    let (db, bucket, key) = backed_up(pg, "rs");
    let original = pg.dump_sql(&db);
    pg.psql(&db, DAMAGE);
    assert_ne!(pg.dump_sql(&db), original);

    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--yes"])
        .run()
        .expect_code(0);
    assert!(
        run.stdout.contains(&format!("restored {key} into `{db}`"))
            && run.stdout.contains("2 tables, 600 rows"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("in ONE transaction"), "{}", run.stderr);
    assert_eq!(pg.dump_sql(&db), original);

    let copy = harness::unique("rs_copy");
    sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--target-db", &copy, "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(pg.dump_sql(&copy), original);
    crate::backup::assert_large_object_restored(pg, &copy);
}

/// Servers older than the newest client tools (13, 14 and 16 have none of their own here,
/// as in the image): pg_dump 18 writes the archive, and pg_restore 18 must restore it in
/// place and into a new database despite `SET transaction_timeout`, which they reject.
#[test]
fn restore_in_place_and_into_a_new_database_postgres_13() {
    in_place_and_into_a_new_database(pg(13));
}

#[test]
fn restore_in_place_and_into_a_new_database_postgres_14() {
    in_place_and_into_a_new_database(pg(14));
}

#[test]
fn restore_in_place_and_into_a_new_database_postgres_16() {
    in_place_and_into_a_new_database(pg(16));
}

#[test]
fn restore_in_place_and_into_a_new_database_postgres_15() {
    in_place_and_into_a_new_database(pg(15));
}

#[test]
fn restore_in_place_and_into_a_new_database_postgres_17() {
    in_place_and_into_a_new_database(pg(17));
}

#[test]
fn restore_in_place_and_into_a_new_database_postgres_18() {
    in_place_and_into_a_new_database(pg(18));
}

#[test]
fn a_postgres_15_backup_restores_into_18() {
    let (db, bucket, _) = backed_up(pg(15), "up");
    let copy = harness::unique("up_copy");
    sidecar(pg(18), "postgres", &bucket)
        .args(&[
            "restore",
            "latest",
            "--db",
            &db,
            "--target-db",
            &copy,
            "--yes",
        ])
        .run()
        .expect_code(0);
    let new = pg(18);
    assert_eq!(
        new.psql(&copy, "SELECT count(*), sum(total) FROM billing.invoices"),
        "100|50500"
    );
    assert_eq!(
        new.psql(&copy, "SELECT count(*) FROM public.\"MixedCase Table\""),
        "500"
    );
    assert_eq!(
        new.psql(&copy, "SELECT last_value FROM billing.invoice_no"),
        "1234"
    );
}

#[test]
fn a_newer_client_restores_into_postgres_15_without_transaction_timeout() {
    // pg_dump and pg_restore 18 only: pg_restore 18 sends `SET transaction_timeout`, which 15
    // rejects; the restore must leave out exactly that statement.
    let pg = pg(15);
    let (db, bucket, _) = {
        let db = pg.create_db("tt");
        pg.psql(&db, SCHEMA);
        let bucket = s3().bucket("tt");
        let key = sidecar(pg, &db, &bucket)
            .env("PGSIDECAR_TOOLS__BIN_DIRS", pg18_bin())
            .args(&["backup"])
            .run()
            .expect_code(0)
            .stdout;
        (db, bucket, key)
    };
    let copy = harness::unique("tt_copy");
    let run = sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_TOOLS__BIN_DIRS", pg18_bin())
        .args(&["restore", "--target-db", &copy, "--yes"])
        .run()
        .expect_code(0);
    assert!(run.stderr.contains("through psql"), "{}", run.stderr);
    assert_eq!(pg.dump_sql(&copy), pg.dump_sql(&db));
}

#[test]
fn full_restore_swaps_terminates_clients_and_keeps_the_old_database() {
    let pg = pg(17);
    let (db, bucket, _) = backed_up(pg, "full");
    let original = pg.dump_sql(&db);
    pg.psql(&db, &format!("{DAMAGE} CREATE TABLE after_backup(x int);"));
    let mut client = pg
        .client("psql")
        .args(["-X", "-d", &db, "-c", "SELECT pg_sleep(300)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(harness::wait_until(10, || {
        pg.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND backend_type = 'client backend'"
            ),
        ) == "1"
    }));

    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--full", "--yes"])
        .run()
        .expect_code(0);
    assert!(run.stderr.contains("1 open connection"), "{}", run.stderr);
    assert!(run.stdout.contains("is kept as"), "{}", run.stdout);
    assert!(
        harness::wait_until(10, || client.try_wait().unwrap().is_some()),
        "the client's connection was not terminated"
    );
    assert_eq!(pg.dump_sql(&db), original);
    let old = databases_like(pg, &format!("{db}\\_\\_pre\\_restore\\_%"));
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(
        pg.psql(&old[0], "SELECT count(*) FROM after_backup"),
        "0",
        "the old database keeps what was written after the backup"
    );
    assert!(databases_like(pg, &format!("{db}\\_\\_restoring%")).is_empty());
}

#[test]
fn missing_roles_get_a_hint_and_are_created_with_globals() {
    let old = pg(15);
    let role = harness::unique("app_owner");
    old.psql(
        "postgres",
        // A comment spanning lines, with a `;` in it: the restore once split it at the newline.
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'role-pw'; COMMENT ON ROLE {role} IS E'read-only role\\nfor the reporting team; see ''docs'''"),
    );
    let db = old.create_db("roles");
    old.psql(
        &db,
        &format!("CREATE TABLE t(x int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO {role}"),
    );
    let bucket = s3().bucket("roles");
    let key = sidecar(old, &db, &bucket)
        .env("PGSIDECAR_GLOBALS", "true")
        .args(&["backup"])
        .run()
        .expect_code(0)
        .stdout;
    let manifest: serde_json::Value = serde_json::from_slice(
        &s3().get(&bucket, &key.trim().replace(".dump.zst", ".manifest.json")),
    )
    .unwrap();
    assert_eq!(manifest["globals"]["role_passwords"], true, "{manifest}");
    let globals = harness::unzstd(&s3().get(&bucket, manifest["globals"]["key"].as_str().unwrap()));
    assert!(String::from_utf8_lossy(&globals).contains(&format!("CREATE ROLE {role};")));

    let new = pg(18);
    let restore = |copy: &str, extra: &[&str]| {
        let mut args = vec!["restore", "--db", &db, "--target-db", copy, "--yes"];
        args.extend_from_slice(extra);
        sidecar(new, "postgres", &bucket).args(&args).run()
    };
    let copy = harness::unique("roles_copy");
    let run = restore(&copy, &[]).expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "hint: the role(s) {role} do not exist on the target server: restore with --with-globals"
        )),
        "{}",
        run.stderr
    );
    assert!(databases_like(new, &format!("{copy}%")).is_empty());

    let run = restore(&copy, &["--no-owner"]).expect_code(0);
    assert!(run.stdout.contains("1 tables, 1 rows"), "{}", run.stdout);
    assert_eq!(new.psql(&copy, "SELECT x FROM t"), "1");

    let copy = harness::unique("roles_copy");
    let run = restore(&copy, &["--with-globals"]).expect_code(0);
    // Other tests create roles on the same server, so the list may hold more than this one.
    let roles_line = run
        .stderr
        .lines()
        .find(|l| l.contains("creates the missing role(s)"))
        .unwrap_or_default();
    assert!(roles_line.contains(&role), "{}", run.stderr);
    assert_eq!(
        new.psql(
            &copy,
            "SELECT tableowner FROM pg_tables WHERE tablename = 't'"
        ),
        role
    );
    assert_eq!(
        new.psql(
            "postgres",
            &format!("SELECT rolcanlogin, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = '{role}'")
        ),
        "t|read-only role\nfor the reporting team; see 'docs'"
    );
}

#[test]
fn parallel_restore_uses_a_temp_file_and_removes_it() {
    let pg = pg(17);
    let (db, bucket, _) = backed_up(pg, "par");
    let tmp = tempfile::tempdir().unwrap();
    let copy = harness::unique("par_copy");
    let run = sidecar(pg, &db, &bucket)
        .env("TMPDIR", tmp.path())
        .args(&["restore", "--target-db", &copy, "--jobs", "2", "--yes"])
        .run()
        .expect_code(0);
    assert!(
        run.stderr.contains("needs the archive as a local file"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.dump_sql(&copy), pg.dump_sql(&db));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn commands_answer_to_their_own_names() {
    let pg = pg(15);
    let (db, bucket, key) = backed_up(pg, "mc");
    let dir = tempfile::tempdir().unwrap();
    for name in ["list", "verify", "restore", "backup"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pgsidecar"), dir.path().join(name)).unwrap();
    }
    let run = sidecar(pg, &db, &bucket)
        .invoked_as(&dir.path().join("list"))
        .run()
        .expect_code(0);
    assert!(run.stdout.contains(&key), "{}", run.stdout);
    let run = sidecar(pg, &db, &bucket)
        .args(&["latest"])
        .invoked_as(&dir.path().join("verify"))
        .run()
        .expect_code(0);
    assert!(
        run.stdout.starts_with(&format!("ok: {key}")),
        "{}",
        run.stdout
    );
    let copy = harness::unique("mc_copy");
    sidecar(pg, &db, &bucket)
        .args(&["latest", "--target-db", &copy, "--yes"])
        .invoked_as(&dir.path().join("restore"))
        .run()
        .expect_code(0);
    assert_eq!(pg.dump_sql(&copy), pg.dump_sql(&db));
}

/// What `pgsidecar` reads of a database's properties on `pg`, as one line.
fn properties(pg: &Pg, db: &str) -> String {
    pg.psql(
        "postgres",
        &format!(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype, \
                    coalesce(datacl::text, 'default'), datconnlimit, \
                    coalesce(shobj_description(oid, 'pg_database'), ''), \
                    coalesce((SELECT string_agg(coalesce(pg_get_userbyid(nullif(setrole, 0)), '*') || ':' || array_to_string(setconfig, ','), ' ' ORDER BY setrole) \
                                FROM pg_db_role_setting WHERE setdatabase = d.oid), '') \
               FROM pg_database d WHERE datname = '{db}'"
        ),
    )
    .replace(&format!("={db}"), "=<db>")
}

/// Regression: databases a restore created got the server's defaults. A SQL_ASCII database
/// came back as UTF8 (`upper()` then failed on its bytes); owner, privileges (PUBLIC could
/// CONNECT again), settings and comment were lost after `--full`; a `--target-db` copy was
/// owned by the connecting user.
#[test]
fn a_restored_database_keeps_encoding_owner_privileges_settings_and_comment() {
    let pg = pg(15);
    let db = harness::unique("crm");
    let (owner, reporter) = (harness::unique("crm_owner"), harness::unique("reporter"));
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {owner}; CREATE ROLE {reporter} LOGIN"),
    );
    pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE {db} TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C' \
             OWNER {owner} CONNECTION LIMIT 50"
        ),
    );
    pg.psql(
        "postgres",
        &format!(
            "ALTER DATABASE {db} SET search_path = app, public; \
             ALTER DATABASE {db} SET work_mem = '12MB'; \
             REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC; \
             GRANT CONNECT ON DATABASE {db} TO {reporter}; \
             COMMENT ON DATABASE {db} IS 'customer data; see ''docs'''; \
             ALTER ROLE {reporter} IN DATABASE {db} SET statement_timeout = '5s'"
        ),
    );
    pg.psql(
        &db,
        "CREATE SCHEMA app; CREATE TABLE app.notes(body text); \
         INSERT INTO app.notes VALUES (E'c\\xafte')",
    );
    let upper = |name: &str| {
        pg.psql(
            name,
            "SELECT encode(convert_to(upper(body), 'SQL_ASCII'), 'hex') FROM app.notes",
        )
    };
    assert_eq!(upper(&db), "43af5445");
    let before = properties(pg, &db);
    let bucket = s3().bucket("crm");
    let key = sidecar(pg, &db, &bucket).backup_key();
    let manifest: serde_json::Value =
        serde_json::from_slice(&s3().get(&bucket, &key.replace(".dump.zst", ".manifest.json")))
            .unwrap();
    assert_eq!(
        manifest["database_properties"]["encoding"], "SQL_ASCII",
        "{manifest}"
    );

    let copy = harness::unique("crm_copy");
    sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--target-db", &copy, "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(properties(pg, &copy).replace(&copy, &db), before);
    assert_eq!(upper(&copy), "43af5445");

    // --full: the swapped-in database is the one backed up; drills compare the same.
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {db} RESET ALL; GRANT CONNECT ON DATABASE {db} TO PUBLIC"),
    );
    assert_ne!(properties(pg, &db), before);
    sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--full", "--drop-old", "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(properties(pg, &db), before);
    let run = sidecar(pg, &db, &bucket)
        .args(&["drill"])
        .run()
        .expect_code(0);
    assert!(run.stdout.contains("1 rows"), "{}", run.stdout);
}

/// The locale provider and its locale come back (PostgreSQL 18: builtin; ICU is tested on 15
/// below): `upper('straße')` is `STRASSE` only with PG_UNICODE_FAST.
#[test]
fn a_restored_database_keeps_its_locale_provider() {
    let pg = pg(18);
    let db = harness::unique("shop");
    pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE {db} TEMPLATE template0 LOCALE_PROVIDER builtin \
             BUILTIN_LOCALE 'PG_UNICODE_FAST' LOCALE 'C.UTF-8'"
        ),
    );
    pg.psql(&db, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    assert_eq!(pg.psql(&db, "SELECT upper('straße')"), "STRASSE");
    let bucket = s3().bucket("shop");
    sidecar(pg, &db, &bucket).backup_key();
    let copy = harness::unique("shop_copy");
    sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--target-db", &copy, "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(pg.psql(&copy, "SELECT upper('straße')"), "STRASSE");
    sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--full", "--drop-old", "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("SELECT datlocprovider, datlocale FROM pg_database WHERE datname = '{db}'")
        ),
        "b|PG_UNICODE_FAST"
    );

    let icu = pg15_icu();
    let bucket = s3().bucket("icu");
    sidecar(icu.0, &icu.1, &bucket).backup_key();
    let copy = harness::unique("icu_copy");
    sidecar(icu.0, &icu.1, &bucket)
        .args(&["restore", "latest", "--target-db", &copy, "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(
        icu.0.psql(
            "postgres",
            &format!(
                "SELECT datlocprovider, daticulocale FROM pg_database WHERE datname = '{copy}'"
            )
        ),
        "i|de-DE"
    );
}

/// A PostgreSQL 15 database using ICU (Debian's build has it).
fn pg15_icu() -> (&'static Pg, String) {
    let pg = pg(15);
    let db = harness::unique("icu");
    pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE {db} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LOCALE 'C.UTF-8'"
        ),
    );
    pg.psql(&db, "CREATE TABLE t(x text); INSERT INTO t VALUES ('a')");
    (pg, db)
}

/// A backup written before properties were recorded still restores, and says what it could
/// not carry over.
#[test]
fn a_backup_without_recorded_properties_restores_with_a_note() {
    let pg = pg(15);
    let (db, bucket, key) = backed_up(pg, "oldprops");
    let manifest_key = key.replace(".dump.zst", ".manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&s3().get(&bucket, &manifest_key)).unwrap();
    manifest
        .as_object_mut()
        .unwrap()
        .remove("database_properties")
        .expect("recorded");
    s3().put(&bucket, &manifest_key, manifest.to_string().as_bytes());
    let copy = harness::unique("oldprops_copy");
    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--target-db", &copy, "--yes"])
        .run()
        .expect_code(0);
    assert!(
        run.stderr
            .contains("this backup predates recorded database properties"),
        "{}",
        run.stderr
    );
}

//! Client-side encryption with age: round trips on each server major, missing and wrong keys
//! refused before anything changes, tampered objects never committed, passphrase mode, and
//! manifests and `config` output that carry no key.

use std::path::PathBuf;

use age::secrecy::ExposeSecret;
use serde_json::Value;
use sha2::Digest;

use crate::backup::SCHEMA;
use crate::harness::{self, pg, s3, Pg, Sidecar};

/// What every age file starts with.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Changes after the backup that an in-place restore must undo (objects of the backup only).
const DAMAGE: &str = "DELETE FROM billing.invoices WHERE id > 10; \
    UPDATE public.\"MixedCase Table\" SET note = 'overwritten';";

/// An age key pair, the identity written as `age-keygen` writes it.
struct Keys {
    _dir: tempfile::TempDir,
    identity_file: PathBuf,
    identity: String,
    recipient: String,
}

impl Keys {
    fn new() -> Keys {
        let id = age::x25519::Identity::generate();
        let identity = id.to_string().expose_secret().to_string();
        let recipient = id.to_public().to_string();
        let dir = tempfile::tempdir().unwrap();
        let identity_file = dir.path().join("identity.txt");
        std::fs::write(
            &identity_file,
            format!("# created: by the test\n# public key: {recipient}\n{identity}\n"),
        )
        .unwrap();
        Keys {
            _dir: dir,
            identity_file,
            identity,
            recipient,
        }
    }

    fn path(&self) -> &str {
        self.identity_file.to_str().unwrap()
    }
}

/// How the manifest names a recipient.
fn fingerprint(recipient: &str) -> String {
    hex::encode(&sha2::Sha256::digest(recipient.as_bytes())[..8])
}

fn sidecar(pg: &Pg, db: &str, bucket: &str) -> Sidecar {
    Sidecar::new(pg, db, &s3().endpoint(), bucket, "prod")
}

/// The manifest stored beside the encrypted dump `key`: its text and its JSON.
fn manifest_of(bucket: &str, key: &str) -> (String, Value) {
    let manifest_key = key.replace(".dump.zst.age", ".manifest.json");
    let text = String::from_utf8(s3().get(bucket, &manifest_key)).unwrap();
    let json = serde_json::from_str(&text).unwrap();
    (text, json)
}

fn databases_like(pg: &Pg, pattern: &str) -> Vec<String> {
    pg.psql(
        "postgres",
        &format!("SELECT datname FROM pg_database WHERE datname LIKE '{pattern}' ORDER BY 1"),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// A database loaded with [`SCHEMA`], backed up encrypted to `keys` (and a second recipient,
/// whose key the test throws away), with its roles: (database, bucket, dump key).
fn backed_up(pg: &Pg, hint: &str, keys: &Keys) -> (String, String, String) {
    let db = pg.create_db(hint);
    pg.psql(&db, SCHEMA);
    let bucket = s3().bucket(hint);
    let other = Keys::new();
    let key = sidecar(pg, &db, &bucket)
        .env(
            "PGSIDECAR_ENCRYPTION__RECIPIENTS",
            format!("{},{}", keys.recipient, other.recipient),
        )
        .env("PGSIDECAR_GLOBALS", "true")
        .backup_key();
    (db, bucket, key)
}

/// Backs up encrypted, checks what is stored, then verifies, restores into a new database and
/// in place (the identity given as `--identity`, or through the environment with `via_env`),
/// each time with a `pg_dump` identical to the original.
fn round_trip(pg: &Pg, via_env: bool) {
    let keys = Keys::new();
    let (db, bucket, key) = backed_up(pg, "enc", &keys);
    assert!(key.ends_with(".dump.zst.age"), "{key}");
    let stored = s3().get(&bucket, &key);
    assert!(
        stored.starts_with(AGE_MAGIC) && !stored.starts_with(ZSTD_MAGIC),
        "{:?}",
        &stored[..32.min(stored.len())]
    );

    let (text, manifest) = manifest_of(&bucket, &key);
    assert_eq!(manifest["encryption"]["scheme"], "age-x25519", "{text}");
    let fingerprints = manifest["encryption"]["recipients"].as_array().unwrap();
    assert_eq!(fingerprints.len(), 2, "{text}");
    assert_eq!(fingerprints[0], fingerprint(&keys.recipient).as_str());
    assert!(
        !text.contains(&keys.recipient) && !text.contains("age1") && !text.contains(&keys.identity),
        "{text}"
    );
    assert_eq!(manifest["format_version"], 2);
    assert_eq!(
        manifest["sha256"],
        hex::encode(sha2::Sha256::digest(&stored)).as_str(),
        "the sha256 is over the stored, encrypted bytes"
    );
    let globals_key = manifest["globals"]["key"].as_str().unwrap();
    assert!(
        globals_key.ends_with(".globals.sql.zst.age"),
        "{globals_key}"
    );
    assert!(s3().get(&bucket, globals_key).starts_with(AGE_MAGIC));

    let with_identity = |s: Sidecar, args: &[&str]| {
        if via_env {
            s.env("PGSIDECAR_ENCRYPTION__IDENTITY_FILE", &keys.identity_file)
                .args(args)
        } else {
            s.args(args).args(&["--identity", keys.path()])
        }
    };
    let original = pg.dump_sql(&db);
    let run = with_identity(sidecar(pg, &db, &bucket), &["verify", "latest"])
        .run()
        .expect_code(0);
    assert!(
        run.stdout.starts_with(&format!("ok: {key}")),
        "{}",
        run.stdout
    );

    let copy = harness::unique("enc_copy");
    let run = with_identity(
        sidecar(pg, &db, &bucket),
        &["restore", "latest", "--target-db", &copy, "--yes"],
    )
    .run()
    .expect_code(0);
    assert!(
        run.stderr.contains("encrypted (age-x25519"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.dump_sql(&copy), original);

    pg.psql(&db, DAMAGE);
    assert_ne!(pg.dump_sql(&db), original);
    with_identity(sidecar(pg, &db, &bucket), &["restore", "latest", "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(pg.dump_sql(&db), original);
}

#[test]
fn encrypted_round_trip_postgres_15() {
    round_trip(pg(15), false);
}

#[test]
fn encrypted_round_trip_postgres_17() {
    round_trip(pg(17), true);
}

#[test]
fn encrypted_round_trip_postgres_18() {
    round_trip(pg(18), false);
}

#[test]
fn a_missing_or_wrong_identity_is_refused_before_anything_changes() {
    let pg = pg(15);
    let keys = Keys::new();
    let (db, bucket, key) = backed_up(pg, "nokey", &keys);
    pg.psql(&db, DAMAGE);
    let before = pg.dump_sql(&db);
    let wrong = Keys::new();
    let fp = fingerprint(&keys.recipient);

    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--yes"])
        .run()
        .expect_code(2);
    for needle in [
        &format!("cannot decrypt `{key}`"),
        &fp,
        "--identity FILE",
        "encryption.identity_file",
        "PGSIDECAR_ENCRYPTION__IDENTITY_FILE",
        "nothing was changed",
    ] {
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
    }
    assert!(
        !run.stderr.contains("Target:"),
        "planned anyway: {}",
        run.stderr
    );

    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "latest", "--yes", "--identity", wrong.path()])
        .run()
        .expect_code(2);
    assert!(
        run.stderr.contains("does not decrypt it")
            && run.stderr.contains(&fp)
            && run.stderr.contains(&fingerprint(&wrong.recipient))
            && run.stderr.contains("--identity")
            && !run.stderr.contains(&wrong.identity),
        "{}",
        run.stderr
    );
    assert_eq!(pg.dump_sql(&db), before);

    // Into a new database: it is never created.
    let copy = harness::unique("nokey_copy");
    for extra in [vec![], vec!["--identity", wrong.path()]] {
        let mut args = vec!["restore", "latest", "--target-db", &copy, "--yes"];
        args.extend(extra);
        sidecar(pg, &db, &bucket).args(&args).run().expect_code(2);
        assert!(databases_like(pg, &format!("{copy}%")).is_empty());
    }
    // The identity from the configuration is wrong too, and the flag wins over it.
    let run = sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_ENCRYPTION__IDENTITY_FILE", &wrong.identity_file)
        .args(&["restore", "latest", "--target-db", &copy, "--yes"])
        .run()
        .expect_code(2);
    assert!(
        run.stderr.contains("encryption.identity_file"),
        "{}",
        run.stderr
    );
    sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_ENCRYPTION__IDENTITY_FILE", &wrong.identity_file)
        .args(&[
            "restore",
            "latest",
            "--target-db",
            &copy,
            "--yes",
            "--identity",
            keys.path(),
        ])
        .run()
        .expect_code(0);
    assert_eq!(
        pg.psql(&copy, "SELECT count(*) FROM billing.invoices"),
        "100"
    );

    let run = sidecar(pg, &db, &bucket)
        .args(&["verify", "latest"])
        .run()
        .expect_code(2);
    assert!(run.stderr.contains("--identity FILE"), "{}", run.stderr);
    let run = sidecar(pg, &db, &bucket)
        .args(&["drill", "--identity", wrong.path()])
        .run()
        .expect_code(1);
    assert!(run.stderr.contains("does not decrypt it"), "{}", run.stderr);
    assert!(databases_like(pg, &format!("{db}\\_\\_drill%")).is_empty());
    let run = sidecar(pg, &db, &bucket)
        .args(&["drill", "--identity", keys.path()])
        .run()
        .expect_code(0);
    assert!(
        run.stdout
            .contains("every table and row count matches the manifest"),
        "{}",
        run.stdout
    );
    assert_eq!(pg.dump_sql(&db), before);

    let run = sidecar(pg, &db, &bucket)
        .args(&["restore", "--identity", "/nonexistent/key.txt", "--yes"])
        .run()
        .expect_code(2);
    assert!(
        run.stderr.contains("`--identity`") && run.stderr.contains("/nonexistent/key.txt"),
        "{}",
        run.stderr
    );
}

/// Replaces the stored object with `damage(bytes)`.
fn tamper(bucket: &str, key: &str, damage: impl Fn(&mut Vec<u8>)) {
    let mut bytes = s3().get(bucket, key);
    damage(&mut bytes);
    s3().put(bucket, key, &bytes);
}

#[test]
fn a_tampered_encrypted_object_is_never_committed() {
    // Large enough for many age chunks: pg_restore receives the ones before the damage.
    let pg = pg(15);
    let keys = Keys::new();
    let db = harness::incompressible_db(pg, "tamper", 2);
    let bucket = s3().bucket("tamper");
    let key = sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_ENCRYPTION__RECIPIENTS", &keys.recipient)
        .backup_key();
    pg.psql(
        &db,
        "DELETE FROM r WHERE random() < 0.5; CREATE TABLE marker(x int)",
    );
    let before = pg.dump_sql(&db);
    let original = s3().get(&bucket, &key);
    assert!(original.len() > 1 << 20, "{}", original.len());
    let flip = |b: &mut Vec<u8>| {
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
    };
    let (_, manifest) = manifest_of(&bucket, &key);
    let manifest_key = key.replace(".dump.zst.age", ".manifest.json");

    // First as stored (the sha256 catches it), then with a manifest rewritten to match the
    // tampered bytes, so that only age's authentication stands between it and pg_restore.
    for rewrite_manifest in [false, true] {
        s3().put(&bucket, &key, &original);
        tamper(&bucket, &key, flip);
        if rewrite_manifest {
            let tampered = s3().get(&bucket, &key);
            let mut m = manifest.clone();
            m["sha256"] = hex::encode(sha2::Sha256::digest(&tampered)).into();
            s3().put(&bucket, &manifest_key, m.to_string().as_bytes());
        }
        let run = sidecar(pg, &db, &bucket)
            .args(&["restore", "latest", "--yes", "--identity", keys.path()])
            .run()
            .expect_code(1);
        assert!(
            run.stderr.contains(&format!("`{key}` is damaged"))
                && run
                    .stderr
                    .contains(&format!("database `{db}` is unchanged")),
            "{rewrite_manifest}: {}",
            run.stderr
        );
        if rewrite_manifest {
            assert!(
                run.stderr.contains("fail age's authentication"),
                "{}",
                run.stderr
            );
        }
        assert_eq!(pg.dump_sql(&db), before, "{rewrite_manifest}");

        let copy = harness::unique("tamper_copy");
        sidecar(pg, &db, &bucket)
            .args(&[
                "restore",
                "latest",
                "--target-db",
                &copy,
                "--yes",
                "--identity",
                keys.path(),
            ])
            .run()
            .expect_code(1);
        assert!(databases_like(pg, &format!("{copy}%")).is_empty());

        let run = sidecar(pg, &db, &bucket)
            .args(&["verify", "latest", "--identity", keys.path()])
            .run()
            .expect_code(1);
        assert!(
            run.stderr.contains(&format!("`{key}` is damaged")),
            "{rewrite_manifest}: {}",
            run.stderr
        );
    }
}

#[test]
fn passphrase_mode_round_trips_and_never_shows_the_passphrase() {
    let pg = pg(17);
    let passphrase = "correct horse battery staple";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passphrase");
    std::fs::write(&file, format!("{passphrase}\n")).unwrap();
    let db = pg.create_db("pass");
    pg.psql(&db, SCHEMA);
    let bucket = s3().bucket("pass");
    let with_passphrase = |s: Sidecar| s.env("PGSIDECAR_ENCRYPTION__PASSPHRASE_FILE", &file);

    let run = with_passphrase(sidecar(pg, &db, &bucket))
        .args(&["config"])
        .run()
        .expect_code(0);
    assert!(
        !run.stdout.contains(passphrase) && run.stdout.contains("[encryption]"),
        "{}",
        run.stdout
    );
    let run = sidecar(pg, &db, &bucket)
        .env("PGSIDECAR_ENCRYPTION__PASSPHRASE", passphrase)
        .args(&["config"])
        .run()
        .expect_code(0);
    assert!(!run.stdout.contains(passphrase), "{}", run.stdout);

    let key = with_passphrase(sidecar(pg, &db, &bucket)).backup_key();
    assert!(key.ends_with(".dump.zst.age"), "{key}");
    assert!(s3().get(&bucket, &key).starts_with(AGE_MAGIC));
    let (text, manifest) = manifest_of(&bucket, &key);
    assert_eq!(manifest["encryption"]["scheme"], "age-scrypt", "{text}");
    assert_eq!(manifest["encryption"]["recipients"], serde_json::json!([]));
    assert!(!text.contains(passphrase));

    let copy = harness::unique("pass_copy");
    let restore = |s: Sidecar| {
        s.args(&["restore", "latest", "--target-db", &copy, "--yes"])
            .run()
    };
    let run = restore(sidecar(pg, &db, &bucket)).expect_code(2);
    assert!(
        run.stderr.contains("encrypted with a passphrase")
            && run.stderr.contains("PGSIDECAR_ENCRYPTION__PASSPHRASE_FILE"),
        "{}",
        run.stderr
    );
    let run = restore(
        sidecar(pg, &db, &bucket).env("PGSIDECAR_ENCRYPTION__PASSPHRASE", "not the passphrase"),
    )
    .expect_code(2);
    assert!(
        run.stderr.contains("passphrase") && run.stderr.contains("does not decrypt it"),
        "{}",
        run.stderr
    );
    assert!(databases_like(pg, &format!("{copy}%")).is_empty());
    restore(with_passphrase(sidecar(pg, &db, &bucket))).expect_code(0);
    assert_eq!(pg.dump_sql(&copy), pg.dump_sql(&db));
}

#[test]
fn recipients_and_a_passphrase_together_are_a_configuration_error() {
    let keys = Keys::new();
    let run = Sidecar::bare()
        .env("PGSIDECAR_STORAGE__URL", "s3://bucket-a/x")
        .env("PGSIDECAR_ENCRYPTION__RECIPIENTS", &keys.recipient)
        .env("PGSIDECAR_ENCRYPTION__PASSPHRASE", "hunter2")
        .args(&["config"])
        .run()
        .expect_code(2);
    assert!(
        run.stderr.contains("`encryption.passphrase`") && !run.stderr.contains("hunter2"),
        "{}",
        run.stderr
    );
    let run = Sidecar::bare()
        .env("PGSIDECAR_STORAGE__URL", "s3://bucket-a/x")
        .env("PGSIDECAR_ENCRYPTION__RECIPIENTS", &keys.identity)
        .args(&["config"])
        .run()
        .expect_code(2);
    assert!(
        run.stderr.contains("`encryption.recipients`") && !run.stderr.contains(&keys.identity),
        "{}",
        run.stderr
    );
}

use std::path::Path;
use std::process::Command;

use crate::harness::{self, s3, Pg, Sidecar};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` in `dir`: `<name>.crt` and `<name>.key`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A PostgreSQL 15 cluster that accepts TCP connections over TLS only, with a certificate for
/// `localhost` signed by the CA `ca` in `dir`.
fn tls_only_server(dir: &Path) -> Pg {
    ca(dir, "ca");
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .unwrap();
    std::fs::set_permissions(
        dir.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let pg = Pg::own(15);
    for setting in [
        "ssl = on".to_string(),
        format!("ssl_cert_file = '{}'", dir.join("server.crt").display()),
        format!("ssl_key_file = '{}'", dir.join("server.key").display()),
    ] {
        pg.psql("postgres", &format!("ALTER SYSTEM SET {setting}"));
    }
    // Plain TCP is refused from now on: pg_dump can only succeed over TLS.
    let hba = pg.psql("postgres", "SHOW hba_file");
    std::fs::write(
        &hba,
        "local all all trust\n\
         hostnossl all all 0.0.0.0/0 reject\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostssl all all ::1/128 scram-sha-256\n",
    )
    .unwrap();
    reload(&pg);
    pg
}

fn reload(pg: &Pg) {
    // The harness's psql connects over TCP without TLS settings; libpq's default `prefer`
    // upgrades to TLS once it is on.
    pg.psql("postgres", "SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(300));
}

#[test]
fn verify_full_checks_the_server_for_the_sidecar_and_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let pg = tls_only_server(dir.path());
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let bucket = s3().bucket("tls");
    let sidecar = |host: &str, mode: &str, root: &Path| {
        Sidecar::new(&pg, "app", &s3().endpoint(), &bucket, "p")
            .env("PGHOST", host)
            .env("PGSIDECAR_DATABASE__SSLMODE", mode)
            .env("PGSIDECAR_DATABASE__SSLROOTCERT", root)
            .args(&["backup"])
            .run()
    };
    let ca_crt = dir.path().join("ca.crt");

    let ok = sidecar("localhost", "verify-full", &ca_crt).expect_code(0);
    assert!(ok.stdout.contains("p/app/"), "{}", ok.stdout);

    // The certificate names `localhost`, not `127.0.0.1`: verify-full refuses, verify-ca
    // (chain only) accepts.
    harness::next_key_second();
    let run = sidecar("127.0.0.1", "verify-full", &ca_crt).expect_code(1);
    assert!(run.stderr.contains("certificate"), "{}", run.stderr);
    sidecar("127.0.0.1", "verify-ca", &ca_crt).expect_code(0);

    // A server whose certificate another CA signed is refused.
    ca(dir.path(), "other");
    let run = sidecar("localhost", "verify-full", &dir.path().join("other.crt")).expect_code(1);
    assert!(run.stderr.contains("certificate"), "{}", run.stderr);

    // `require` encrypts without checking, as in libpq.
    harness::next_key_second();
    sidecar("127.0.0.1", "require", &ca_crt).expect_code(0);
}

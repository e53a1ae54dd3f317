//! The status page at `/`, as a person sees it: rendered by headless Chromium at a desktop and
//! a phone width (screenshots kept in `target/test-artifacts/`), and its access control.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{self, pg, s3, Daemon, Sidecar};

/// The raw answer of `GET path` with extra request header lines.
fn get_with(port: u16, path: &str, headers: &[&str]) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Where the screenshots go: kept after the run for a person (and the README) to look at.
fn artefacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts")
}

/// What `tests/it/browser/look.py` saw of `url`, per width.
fn look(url: &str) -> serde_json::Value {
    let venv = std::env::var("PGSC_TEST_VENV")
        .expect("PGSC_TEST_VENV is not set: run the tests through scripts/test.sh (see README)");
    let out = Command::new(PathBuf::from(venv).join("bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/browser/look.py"
        ))
        .arg(url)
        .arg(artefacts())
        .output()
        .expect("run look.py");
    assert!(
        out.status.success(),
        "look.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("look.py prints JSON")
}

/// Four backups of one database (the third much smaller: a size anomaly), one database that
/// does not exist, and a drill: the page says OK, FAILING with the error, and the drill's RTO
/// in words, draws the sizes with the anomaly marked, runs no script, and fits a phone.
#[test]
fn the_status_page_shows_each_database_as_a_person_sees_it() {
    let pg = pg(15);
    let db = pg.create_db("page");
    let gone = format!("{db}_gone");
    let bucket = s3().bucket("page");
    let sidecar = || {
        Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
            .env("PGSIDECAR_DATABASES", format!("{db},{gone}"))
            .env("PGSIDECAR_RETRY__ATTEMPTS", "1")
    };
    for rows in [20_000, 40_000, 100, 60_000] {
        pg.psql(
            &db,
            &format!(
                "DROP TABLE IF EXISTS t; CREATE TABLE t AS SELECT i, md5(i::text) AS h FROM generate_series(1, {rows}) i"
            ),
        );
        // The missing database fails every time; the other is stored.
        let run = sidecar().args(&["backup"]).run();
        assert!(run.stdout.contains(&format!("p/{db}/")), "{}", run.stderr);
        harness::next_key_second();
    }
    let port = harness::free_port();
    let mut d = Daemon::start(
        sidecar()
            .env("PGSIDECAR_SCHEDULE", "0 3 * * *")
            .env("PGSIDECAR_CATCH_UP", "false")
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}")),
    );
    let page = || get_with(port, "/", &[]);
    assert!(
        harness::wait_until(30, || page().starts_with("HTTP/1.1 200")),
        "{}",
        d.stderr()
    );
    // What a run by hand records reaches the daemon's page: a failing backup and a drill.
    let failed = sidecar().args(&["backup"]).run();
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    let drill = sidecar().args(&["drill", "--db", &db]).run();
    assert_eq!(drill.code, 0, "{}\n{}", drill.stdout, drill.stderr);
    assert!(
        harness::wait_until(60, || page().contains("✔ passed")
            && page().contains("FAILING")),
        "{}",
        page()
    );

    let seen = look(&format!("http://127.0.0.1:{port}/"));
    for width in ["desktop", "phone"] {
        let s = &seen[width];
        let text = s["text"].as_str().unwrap();
        assert_eq!(s["title"], "pgsidecar status", "{width}");
        assert_eq!(s["scripts"], 0, "{width}: the page runs no script");
        for expected in [
            "✔ OK".to_string(),
            "✖ FAILING".to_string(),
            db.clone(),
            format!("database \"{gone}\" does not exist"),
            // Four by hand before the daemon, one by hand beside it.
            "Stored size, last 5 backups".to_string(),
            "1 marked ! (size anomaly)".to_string(),
            "✔ passed".to_string(),
            "(RTO)".to_string(),
            "schedule 0 3 * * *".to_string(),
            "unhealthy".to_string(),
        ] {
            assert!(
                text.contains(&expected),
                "{width}: no `{expected}` in:\n{text}"
            );
        }
        assert!(
            s["svg_charts"].as_u64().unwrap() >= 2,
            "{width}: {}",
            s["svg_charts"]
        );
        assert!(
            s["scroll_width"].as_u64() <= s["inner_width"].as_u64(),
            "{width}: the page is wider ({}) than the window ({})",
            s["scroll_width"],
            s["inner_width"]
        );
        let shot = PathBuf::from(s["screenshot"].as_str().unwrap());
        assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "{shot:?}");
    }
    let html = page();
    for (state, name) in [("✔ OK", &db), ("✖ FAILING", &gone)] {
        assert!(
            html.contains(&format!("{state}</span><span class=\"name\">{name}</span>")),
            "{state} {name}:\n{html}"
        );
    }
    for secret in [harness::PG_PASSWORD, "AWS_SECRET_ACCESS_KEY"] {
        assert!(!html.contains(secret), "{secret} on the page");
    }
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0));
}

/// With `http.basic_auth_*` (the password from a file), `/` and `/metrics` answer 401 with a
/// Basic challenge unless the right credentials come; `/healthz` stays open for probes but
/// says why it fails only with them. A bearer token works the same way.
#[test]
fn the_status_page_and_metrics_require_the_configured_credentials() {
    use base64::Engine;
    let pg = pg(15);
    let db = pg.create_db("pageauth");
    let bucket = s3().bucket("pageauth");
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("page_password");
    std::fs::write(&password_file, "s3cret-page-pw\n").unwrap();
    let port = harness::free_port();
    let mut d = Daemon::start(
        Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "0 3 * * *")
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("PGSIDECAR_CATCH_UP", "false")
            .env("PGSIDECAR_HTTP__BASIC_AUTH_USER", "ops")
            .env("PGSIDECAR_HTTP__BASIC_AUTH_PASSWORD_FILE", &password_file),
    );
    assert!(
        harness::wait_until(30, || !get_with(port, "/healthz", &[]).is_empty()),
        "{}",
        d.stderr()
    );
    let basic = |cred: &str| {
        format!(
            "authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(cred)
        )
    };
    for path in ["/", "/metrics"] {
        let none = get_with(port, path, &[]);
        assert!(none.starts_with("HTTP/1.1 401"), "{path}: {none}");
        assert!(
            none.to_lowercase()
                .contains("www-authenticate: basic realm=\"pgsidecar\""),
            "{none}"
        );
        let wrong = get_with(port, path, &[&basic("ops:guess")]);
        assert!(wrong.starts_with("HTTP/1.1 401"), "{path}: {wrong}");
        let right = get_with(port, path, &[&basic("ops:s3cret-page-pw")]);
        assert!(right.starts_with("HTTP/1.1 200"), "{path}: {right}");
    }
    assert!(!get_with(port, "/healthz", &[]).starts_with("HTTP/1.1 401"));
    // Unhealthy (no backup yet): the reason only with the credentials.
    let anonymous = get_with(port, "/healthz", &[]);
    assert!(anonymous.starts_with("HTTP/1.1 503"), "{anonymous}");
    assert!(!anonymous.contains(&db), "{anonymous}");
    let told = get_with(port, "/healthz", &[&basic("ops:s3cret-page-pw")]);
    assert!(told.contains(&db), "{told}");
    let shown = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .env("PGSIDECAR_HTTP__BASIC_AUTH_USER", "ops")
        .env("PGSIDECAR_HTTP__BASIC_AUTH_PASSWORD_FILE", &password_file)
        .args(&["config"])
        .run();
    assert!(!shown.stdout.contains("s3cret-page-pw"), "{}", shown.stdout);
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0));

    let port = harness::free_port();
    let mut d = Daemon::start(
        Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
            .env("PGSIDECAR_SCHEDULE", "0 3 * * *")
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("PGSIDECAR_HTTP__BEARER_TOKEN", "tok-123"),
    );
    assert!(
        harness::wait_until(30, || !get_with(port, "/healthz", &[]).is_empty()),
        "{}",
        d.stderr()
    );
    let none = get_with(port, "/metrics", &[]);
    assert!(none.starts_with("HTTP/1.1 401"), "{none}");
    assert!(
        none.to_lowercase().contains("www-authenticate: bearer"),
        "{none}"
    );
    let right = get_with(port, "/metrics", &["authorization: Bearer tok-123"]);
    assert!(right.starts_with("HTTP/1.1 200"), "{right}");
    let both = Sidecar::new(pg, &db, &s3().endpoint(), &bucket, "p")
        .env("PGSIDECAR_HTTP__BEARER_TOKEN", "tok-123")
        .env("PGSIDECAR_HTTP__BASIC_AUTH_USER", "ops")
        .args(&["config"])
        .run();
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(both.stderr.contains("http.bearer_token"), "{}", both.stderr);
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0));
}

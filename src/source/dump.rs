//! Dump source: checks the server over TCP, then runs `pg_dump --format=custom` against it and
//! exposes its stdout as a stream.
//!
//! Invariant: reaching the end of the stream is not success. [`DumpReader`] awaits pg_dump at
//! EOF and turns a non-zero exit or a signal into a read error carrying pg_dump's last stderr
//! lines, so no sink can ever complete a failed dump. The password reaches pg_dump through its
//! environment, never its command line.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::process::{ChildStdout, Command};

use crate::source::process::{stderr_suffix, Child, Exit, Failure, LogAs};
use crate::source::tools::ClientTool;
use crate::source::DatabaseConfig;
use crate::source::SslMode;

/// Errors from the database side of a backup.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(
        "cannot connect to PostgreSQL at `{endpoint}` as `{user}` (database `{dbname}`): {cause}"
    )]
    Connect {
        endpoint: String,
        user: String,
        dbname: String,
        cause: String,
        permanent: bool,
    },
    #[error("cannot query PostgreSQL at `{endpoint}`: {cause}")]
    Query { endpoint: String, cause: String },
    #[error("cannot start `{}`: {source}", .path.display())]
    Spawn {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("pg_dump {status}{}", stderr_suffix(.stderr))]
    Failed { status: String, stderr: Vec<String> },
    #[error("pg_dumpall --globals-only {status}{}", stderr_suffix(.stderr))]
    Globals { status: String, stderr: Vec<String> },
    #[error("pg_dump produced no output{}", stderr_suffix(.stderr))]
    Empty { stderr: Vec<String> },
    #[error("pg_dump output does not start with the custom-format signature `PGDMP`")]
    NotAnArchive,
    #[error("cannot wait for pg_dump: {0}")]
    Wait(io::Error),
}

impl DumpError {
    /// Whether retrying the same backup cannot help (bad password, missing database).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DumpError::Connect {
                permanent: true,
                ..
            } | DumpError::Spawn { .. }
        )
    }

    /// pg_dump's last stderr lines, when it failed.
    pub fn stderr_tail(&self) -> &[String] {
        match self {
            DumpError::Failed { stderr, .. }
            | DumpError::Empty { stderr }
            | DumpError::Globals { stderr, .. } => stderr,
            _ => &[],
        }
    }
}

/// What the preflight learned about the server and database.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `server_version`, e.g. `17.2 (Debian 17.2-1.pgdg120+1)` trimmed to `17.2`.
    pub version: String,
    pub major: u32,
    /// `pg_database_size` of the database to dump, in bytes.
    pub database_size: u64,
}

fn endpoint(db: &DatabaseConfig) -> String {
    format!("{}:{}", db.host, db.port)
}

/// A tokio-postgres configuration for `db`, connecting to `dbname`.
pub fn pg_config(db: &DatabaseConfig, dbname: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&db.host)
        .port(db.port)
        .user(&db.user)
        .dbname(dbname)
        .application_name("pgsidecar")
        .connect_timeout(db.connect_timeout)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_COUNT)
        .ssl_mode(match db.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    if let Some(pw) = &db.password {
        cfg.password(pw.expose());
    }
    cfg.options(STARTUP_OPTIONS);
    cfg
}

/// Turns off, from the first statement on, the timeouts pg_dump and pg_restore turn off for
/// themselves (pg_dump.c `setup_connection`, pg_backup_archiver.c `_doSetFixedOutputState`)
/// and a read-only default: what `ALTER ROLE … SET` or `ALTER DATABASE … SET`
/// could impose on the sidecar's own sessions. Options in the startup packet are applied with
/// the source `PGC_S_CLIENT`, which outranks the role's and database's settings
/// (`PGC_S_DATABASE_USER` and below, guc.h), so even a 5 ms `statement_timeout` cannot cancel
/// the session's first query. Only settings every supported major (13+) knows: an unknown one
/// refuses the connection. The client tools get the same through `PGOPTIONS`: psql, which
/// replays pre-17 restores and globals, sets none of them.
const STARTUP_OPTIONS: &str = "-c statement_timeout=0 -c lock_timeout=0 \
     -c idle_in_transaction_session_timeout=0 -c default_transaction_read_only=off";

/// PostgreSQL 17's `transaction_timeout`, asked for at startup first; a server that does not
/// know it refuses the connection, which is then made again without it.
const TRANSACTION_TIMEOUT_OFF: &str = " -c transaction_timeout=0";

/// Connects to `dbname`; the connection task ends when the client is dropped.
pub async fn connect(
    db: &DatabaseConfig,
    dbname: &str,
) -> Result<tokio_postgres::Client, DumpError> {
    let mut config = pg_config(db, dbname);
    config.options(format!("{STARTUP_OPTIONS}{TRANSACTION_TIMEOUT_OFF}"));
    let client = match open(&config, db).await {
        Err(e) if unknown_setting(&e, "transaction_timeout") => {
            open(&pg_config(db, dbname), db).await
        }
        other => {
            if other.is_ok() {
                knows_transaction_timeout(db, true);
            }
            other
        }
    };
    let client = client.map_err(|e| {
        let permanent = e.as_db_error().is_some_and(|d| {
            use tokio_postgres::error::SqlState;
            let c = d.code();
            *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *c == SqlState::INVALID_CATALOG_NAME
        });
        DumpError::Connect {
            endpoint: endpoint(db),
            user: db.user.clone(),
            dbname: dbname.to_string(),
            cause: pg_error_text(&e),
            permanent,
        }
    })?;
    client
        .simple_query(NEUTRAL_SESSION)
        .await
        .map_err(|e| DumpError::Connect {
            endpoint: endpoint(db),
            user: db.user.clone(),
            dbname: dbname.to_string(),
            cause: format!("cannot reset the session's timeouts: {}", pg_error_text(&e)),
            permanent: false,
        })?;
    Ok(client)
}

/// Whether the server at `db`'s endpoint took `transaction_timeout=0` at startup, as this
/// process last learned by connecting there; `learned` records that it did. The client tools
/// get it in `PGOPTIONS` only then, since an older server refuses the name: pg_dump and
/// pg_restore turn it off themselves, but only after their first query, which a database's
/// tiny `transaction_timeout` can already end.
fn knows_transaction_timeout(db: &DatabaseConfig, learned: bool) -> bool {
    static KNOWN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    let here = endpoint(db);
    if learned && !known.contains(&here) {
        known.push(here.clone());
    }
    known.contains(&here)
}

/// Whether the server refused the connection for not knowing the setting `name`.
fn unknown_setting(e: &tokio_postgres::Error, name: &str) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::UNDEFINED_OBJECT && d.message().contains(name)
    })
}

/// Opens one connection with `config`; its task ends when the client is dropped.
async fn open(
    config: &tokio_postgres::Config,
    db: &DatabaseConfig,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    // A Unix socket (a drill's scratch server) has no TLS, and the TLS connector refuses a
    // path as a server name before the connection starts.
    let connected = if db.host.starts_with('/') {
        config
            .connect(tokio_postgres::NoTls)
            .await
            .map(|(c, conn)| (c, futures::future::Either::Left(conn)))
    } else {
        config
            .connect(db.tls.make())
            .await
            .map(|(c, conn)| (c, futures::future::Either::Right(conn)))
    };
    let (client, connection) = connected?;
    tokio::spawn(async move {
        // Errors surface on the client's next query; nothing to do with them here.
        let _ = connection.await;
    });
    Ok(client)
}

/// `idle_session_timeout` (PostgreSQL 14+) cannot go in the startup options, which every
/// supported major must know; it only matters between statements, so setting it after
/// connecting is early enough.
const NEUTRAL_SESSION: &str = "SELECT pg_catalog.set_config(name, '0', false) \
  FROM pg_catalog.pg_settings WHERE name = 'idle_session_timeout'";

/// tokio-postgres prints server errors as "db error"; the server's own message is the useful part.
pub fn pg_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// Connects, reads the server version and database size.
pub async fn preflight(db: &DatabaseConfig) -> Result<ServerInfo, DumpError> {
    let client = connect(db, &db.dbname).await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), \
                    current_setting('server_version_num')::int, \
                    pg_database_size(current_database())",
            &[],
        )
        .await
        .map_err(|e| DumpError::Query {
            endpoint: endpoint(db),
            cause: pg_error_text(&e),
        })?;
    let version: String = row.get(0);
    let num: i32 = row.get(1);
    let size: i64 = row.get(2);
    Ok(ServerInfo {
        version: version
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
        major: (num / 10000) as u32,
        database_size: size.max(0) as u64,
    })
}

/// Every database `db`'s user can connect to, templates excepted, by name.
pub async fn list_databases(db: &DatabaseConfig) -> Result<Vec<String>, DumpError> {
    let client = connect(db, &db.dbname).await?;
    let rows = client
        .query(
            "SELECT datname::text FROM pg_database \
             WHERE datallowconn AND NOT datistemplate \
               AND has_database_privilege(datname, 'CONNECT') ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| DumpError::Query {
            endpoint: endpoint(db),
            cause: pg_error_text(&e),
        })?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Advisory lock key of pgsidecar backups ("pgsc" in ASCII). Advisory locks are scoped to the
/// database they are taken in, so one key serves every database.
const LOCK_KEY: i64 = 0x7067_7363;

/// A session holding the backup lock of one database; dropping it releases the lock.
pub struct BackupLock {
    _client: tokio_postgres::Client,
}

/// Takes the backup lock of `db.dbname`. Without `wait`, returns `None` when another session
/// holds it; with `wait`, blocks until it is free.
pub async fn lock(db: &DatabaseConfig, wait: bool) -> Result<Option<BackupLock>, DumpError> {
    let client = connect(db, &db.dbname).await?;
    // The lock lives as long as this idle session: a server-side idle timeout must not end it
    // mid-dump. (Servers before 14 do not know the setting; nothing to do there.)
    let _ = client.batch_execute("SET idle_session_timeout = 0").await;
    let query_err = |e: tokio_postgres::Error| DumpError::Query {
        endpoint: endpoint(db),
        cause: pg_error_text(&e),
    };
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(query_err)?
        .get(0);
    if got {
        return Ok(Some(BackupLock { _client: client }));
    }
    if !wait {
        return Ok(None);
    }
    tracing::info!("another backup of this database is running; waiting for it to finish");
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(query_err)?;
    Ok(Some(BackupLock { _client: client }))
}

/// A session whose open transaction holds the snapshot pg_dump dumps; dropping it ends the
/// transaction (and cancels a row count still running in it).
pub struct Snapshot {
    client: tokio_postgres::Client,
    id: String,
    counting: std::sync::atomic::AtomicBool,
}

/// Opens a session in `db.dbname`, starts a repeatable-read transaction and exports its
/// snapshot for `pg_dump --snapshot`. Fails where snapshots cannot be exported (some standbys
/// and poolers); the dump can then go on without one.
pub async fn export_snapshot(db: &DatabaseConfig) -> Result<Snapshot, DumpError> {
    let client = connect(db, &db.dbname).await?;
    let query_err = |e: tokio_postgres::Error| DumpError::Query {
        endpoint: endpoint(db),
        cause: pg_error_text(&e),
    };
    // The transaction idles while pg_dump runs, and pg_dump can import the snapshot only while
    // it is open: a server-side idle timeout must not end it. The count reads what pg_dump
    // reads, so it runs as pg_dump does: no statement timeout, no row security (where that
    // would hide rows, pg_dump fails rather than dump fewer).
    client
        .batch_execute(
            "SET idle_in_transaction_session_timeout = 0; \
             SET statement_timeout = 0; \
             SET row_security = off; \
             BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        )
        .await
        .map_err(query_err)?;
    let id: String = client
        .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
        .await
        .map_err(query_err)?
        .get(0);
    Ok(Snapshot {
        client,
        id,
        counting: std::sync::atomic::AtomicBool::new(false),
    })
}

impl Snapshot {
    /// The id to pass as `pg_dump --snapshot`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Row counts of every table, in the exported snapshot (see
    /// [`crate::source::tables::count_in_transaction`]).
    pub async fn count_tables(
        &self,
    ) -> Result<Vec<crate::source::tables::TableRows>, tokio_postgres::Error> {
        use std::sync::atomic::Ordering;
        self.counting.store(true, Ordering::SeqCst);
        let result = crate::source::tables::count_in_transaction(&self.client).await;
        self.counting.store(false, Ordering::SeqCst);
        result
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // Closing the connection does not stop a query the server is running: a count over a
        // large database would go on scanning it after the backup failed or was cancelled.
        if self.counting.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let token = self.client.cancel_token();
                rt.spawn(async move {
                    let _ = token.cancel_query(tokio_postgres::NoTls).await;
                });
            }
        }
    }
}

/// Variables passed through to client tools; everything else (including the sidecar's own
/// secrets in `PGSIDECAR_*` and `AWS_*`) is withheld from the child.
const PASSTHROUGH_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "LD_LIBRARY_PATH",
    "HOME",
];

/// A command for a PostgreSQL client tool connected to `dbname` through libpq's variables.
pub fn client_command(tool: &ClientTool, db: &DatabaseConfig, dbname: &str) -> Command {
    let mut cmd = Command::new(&tool.path);
    cmd.env_clear();
    for name in PASSTHROUGH_ENV {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.env("PGHOST", &db.host)
        .env("PGPORT", db.port.to_string())
        .env("PGUSER", &db.user)
        .env("PGDATABASE", dbname)
        .env("PGSSLMODE", db.sslmode.as_libpq())
        .env("PGAPPNAME", "pgsidecar")
        .env(
            "PGOPTIONS",
            if knows_transaction_timeout(db, false) {
                format!("{STARTUP_OPTIONS}{TRANSACTION_TIMEOUT_OFF}")
            } else {
                STARTUP_OPTIONS.to_string()
            },
        )
        .env(
            "PGCONNECT_TIMEOUT",
            db.connect_timeout.as_secs().max(1).to_string(),
        );
    if let Some(pw) = &db.password {
        cmd.env("PGPASSWORD", pw.expose());
    }
    if let Some(root) = &db.sslrootcert {
        cmd.env("PGSSLROOTCERT", root);
    }
    cmd
}

/// A libpq connection string for `dbname`, for the tools' database argument: a name
/// containing `=` would otherwise be read as a connection string itself. Host, user and
/// password come from the environment; TCP keepalives are only settable here, and without
/// them a peer that vanishes without a FIN or RST leaves the tool waiting for hours.
pub fn conninfo(dbname: &str) -> String {
    format!(
        "dbname='{}' keepalives=1 keepalives_idle={} keepalives_interval={} keepalives_count={}",
        dbname.replace('\\', "\\\\").replace('\'', "\\'"),
        KEEPALIVE_IDLE.as_secs(),
        KEEPALIVE_INTERVAL.as_secs(),
        KEEPALIVE_COUNT
    )
}

/// A dead peer is noticed about two minutes after it went silent (60 s + 6 × 10 s).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_COUNT: u32 = 6;

/// Runs `pg_dumpall --globals-only` (roles, memberships, tablespaces) through `db.dbname`.
/// Role passwords are included only when the user may read them (a superuser, or a member of `pg_read_all_data`); otherwise the
/// dump is taken with `--no-role-passwords` instead of failing. Returns the SQL and whether
/// it has the passwords.
pub async fn dump_globals(
    tool: &ClientTool,
    db: &DatabaseConfig,
) -> Result<(Vec<u8>, bool), DumpError> {
    let client = connect(db, &db.dbname).await?;
    let role_passwords: bool = client
        .query_one(
            "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')",
            &[],
        )
        .await
        .map_err(|e| DumpError::Query {
            endpoint: endpoint(db),
            cause: pg_error_text(&e),
        })?
        .get(0);
    let mut cmd = client_command(tool, db, &db.dbname);
    cmd.args(["--globals-only", "--no-password"])
        .arg(format!("--database={}", conninfo(&db.dbname)));
    if !role_passwords {
        cmd.arg("--no-role-passwords");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    // As `Command::output` did: any I/O failure running the tool counts as not starting it.
    let spawn_err = |source| DumpError::Spawn {
        path: tool.path.clone(),
        source,
    };
    let mut child = Child::spawn(&mut cmd, LogAs::PgDump).map_err(spawn_err)?;
    let mut sql = Vec::new();
    // On a read error the child is dropped, which kills it.
    child
        .take_stdout()
        .expect("stdout is piped")
        .read_to_end(&mut sql)
        .await
        .map_err(spawn_err)?;
    match child.wait().await {
        Ok(_) => Ok((sql, role_passwords)),
        Err(Failure {
            exit: Exit::Unwaited(e),
            ..
        }) => Err(spawn_err(e)),
        Err(Failure { exit, stderr }) => Err(DumpError::Globals {
            status: exit.sentence(),
            stderr,
        }),
    }
}

/// Starts `pg_dump --format=custom --compress=0` (the sidecar compresses) for `db.dbname`,
/// dumping in `snapshot` (an id from [`export_snapshot`]) when given.
pub fn spawn(
    tool: &ClientTool,
    db: &DatabaseConfig,
    snapshot: Option<&str>,
) -> Result<DumpReader, DumpError> {
    let mut cmd = client_command(tool, db, &db.dbname);
    cmd.args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--dbname={}", conninfo(&db.dbname)));
    if let Some(id) = snapshot {
        cmd.arg(format!("--snapshot={id}"));
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = Child::spawn(&mut cmd, LogAs::PgDump).map_err(|source| DumpError::Spawn {
        path: tool.path.clone(),
        source,
    })?;
    let stdout = child.take_stdout().expect("stdout is piped");
    let exit = async move {
        child.wait().await.map_err(|f| match f {
            Failure {
                exit: Exit::Unwaited(e),
                ..
            } => DumpError::Wait(e),
            Failure { exit, stderr } => DumpError::Failed {
                status: exit.sentence(),
                stderr,
            },
        })
    };
    Ok(DumpReader {
        stdout,
        exit: Some(Box::pin(exit)),
        state: State::Streaming,
        total: 0,
    })
}

type ExitFuture = Pin<Box<dyn Future<Output = Result<Vec<String>, DumpError>> + Send>>;

enum State {
    Streaming,
    Done,
    Failed,
}

/// pg_dump's stdout. Its EOF is reported only after pg_dump exited 0 with output that starts
/// with `PGDMP`; otherwise the final read fails with the [`DumpError`].
pub struct DumpReader {
    stdout: ChildStdout,
    exit: Option<ExitFuture>,
    state: State,
    total: u64,
}

impl DumpReader {
    fn fail(&mut self, e: DumpError) -> Poll<io::Result<()>> {
        self.state = State::Failed;
        Poll::Ready(Err(io::Error::other(e)))
    }
}

impl AsyncRead for DumpReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            State::Done => return Poll::Ready(Ok(())),
            State::Failed => return Poll::Ready(Err(io::Error::other("pg_dump failed"))),
            State::Streaming => {}
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stdout).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            // The signature is checked on the first bytes; pg_dump writes it in one piece.
            if this.total == 0 && !buf.filled()[before..].starts_with(&b"PGDMP"[..n.min(5)]) {
                buf.set_filled(before);
                return this.fail(DumpError::NotAnArchive);
            }
            this.total += n as u64;
            return Poll::Ready(Ok(()));
        }
        let exit = this
            .exit
            .as_mut()
            .expect("exit future is present while streaming");
        let result = ready!(exit.as_mut().poll(cx));
        this.exit = None;
        match result {
            Ok(stderr) if this.total == 0 => this.fail(DumpError::Empty { stderr }),
            Ok(_) => {
                this.state = State::Done;
                Poll::Ready(Ok(()))
            }
            Err(e) => this.fail(e),
        }
    }
}

/// Finds the [`DumpError`] inside an I/O error raised by a [`DumpReader`], through any
/// transforms that wrapped it.
pub fn as_dump_error(e: &io::Error) -> Option<&DumpError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<DumpError>())
}

#[cfg(test)]
mod tests {
    //! The reader's verdicts on what a child process did, using small shell scripts in place
    //! of pg_dump (the integration tests run the real one).
    use super::*;
    use crate::source::SslMode;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn script(dir: &std::path::Path, body: &str) -> ClientTool {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake_dump");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        ClientTool {
            path,
            version: "17.0".into(),
            major: 17,
        }
    }

    fn db() -> DatabaseConfig {
        DatabaseConfig {
            host: "127.0.0.1".into(),
            port: 1,
            user: "u".into(),
            password: None,
            dbname: "d".into(),
            sslmode: SslMode::Disable,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(1),
            tls: crate::source::tls::Connector::unverified(),
        }
    }

    /// Spawns, retrying "text file busy": a test on another thread may fork while this one's
    /// freshly written script is still open for writing.
    fn spawn_script(tool: &ClientTool, cfg: &DatabaseConfig, snapshot: Option<&str>) -> DumpReader {
        for _ in 0..50 {
            match spawn(tool, cfg, snapshot) {
                Err(DumpError::Spawn { source, .. })
                    if source.kind() == std::io::ErrorKind::ExecutableFileBusy =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other.unwrap(),
            }
        }
        panic!("script stayed busy");
    }

    async fn drain(tool: &ClientTool) -> Result<Vec<u8>, DumpError> {
        let mut reader = spawn_script(tool, &db(), None);
        let mut out = Vec::new();
        match reader.read_to_end(&mut out).await {
            Ok(_) => Ok(out),
            Err(e) => Err(*e.into_inner().unwrap().downcast::<DumpError>().unwrap()),
        }
    }

    #[tokio::test]
    async fn clean_exit_with_archive_is_eof() {
        let dir = tempfile::tempdir().unwrap();
        let out = drain(&script(dir.path(), "printf 'PGDMPdata'"))
            .await
            .unwrap();
        assert_eq!(out, b"PGDMPdata");
    }

    #[tokio::test]
    async fn failing_exit_after_output_is_an_error_with_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let tool = script(
            dir.path(),
            "printf 'PGDMPpartial'; echo 'pg_dump: error: boom' >&2; exit 1",
        );
        let err = drain(&tool).await.unwrap_err();
        assert!(matches!(err, DumpError::Failed { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("exited with status 1: pg_dump: error: boom"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn empty_or_foreign_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = drain(&script(dir.path(), "exit 0")).await.unwrap_err();
        assert!(matches!(err, DumpError::Empty { .. }), "{err}");
        let err = drain(&script(dir.path(), "printf 'garbage'"))
            .await
            .unwrap_err();
        assert!(matches!(err, DumpError::NotAnArchive), "{err}");
    }

    #[tokio::test]
    async fn child_sees_password_only_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let tool = script(dir.path(), "printf 'PGDMP'; printf '%s|%s|%s' \"$PGPASSWORD\" \"$*\" \"${PGSIDECAR_LEAK_PROBE:-unset}\"");
        // Variables of the sidecar's own (which may hold secrets) must not reach the child.
        std::env::set_var("PGSIDECAR_LEAK_PROBE", "leaked");
        let mut cfg = db();
        cfg.password = Some(crate::secret::Secret::new("pw-in-env"));
        let mut reader = spawn_script(&tool, &cfg, None);
        let mut out = String::new();
        reader.read_to_string(&mut out).await.unwrap();
        assert_eq!(
            out,
            format!(
                "PGDMPpw-in-env|--format=custom --compress=0 --no-password --dbname={}|unset",
                conninfo(&cfg.dbname)
            )
        );
    }

    #[tokio::test]
    async fn snapshot_reaches_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let tool = script(dir.path(), "printf 'PGDMP%s' \"$*\"");
        let mut reader = spawn_script(&tool, &db(), Some("00000003-0000001B-1"));
        let mut out = String::new();
        reader.read_to_string(&mut out).await.unwrap();
        assert!(out.ends_with(" --snapshot=00000003-0000001B-1"), "{out}");
    }
}

//! Restore: brings a stored backup back into a PostgreSQL server.
//!
//! Invariant: nothing existing is dropped or overwritten before the replacement has been fully
//! restored and checked. The default mode restores into the existing database inside one
//! transaction, and pg_restore cannot reach its COMMIT before the stored object has proved
//! intact (see [`crate::verify::Feed::hold_back`]). The other modes restore into a new scratch
//! database, check it, and only then rename databases; any failure before that drops the
//! scratch database and leaves everything else as it was. An encrypted backup is only
//! planned once the configured key has opened its age header: a missing or wrong key is
//! refused before anything is touched.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::catalog::Entry;
use crate::source::dump::{self, DumpError};
use crate::source::properties::{self, DatabaseProperties};
use crate::source::tables::{self, TableRows};
use crate::source::tools::{self, ClientTool, ToolError};
use crate::source::DatabaseConfig;
use crate::source::ToolsConfig;
use crate::storage::Storage;
use crate::verify::{self, Feed, VerifyError};

/// How many of pg_restore's last stderr lines an error carries.
const STDERR_TAIL_LINES: usize = 12;
/// PostgreSQL truncates longer identifiers, which would make scratch names collide.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Why a restore did not happen or failed. Each message says what was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Found while planning: the backup cannot be decrypted (a missing or wrong key, or a
    /// damaged age header).
    #[error("{0}; nothing was changed")]
    Undecryptable(VerifyError),
    #[error("{source}; {left}")]
    Aborted {
        #[source]
        source: Box<VerifyError>,
        left: String,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{0}")]
    Database(#[from] DumpError),
    #[error(transparent)]
    Globals(#[from] crate::source::globals::GlobalsError),
    #[error("query on the target server failed ({what}): {cause}")]
    Query { what: String, cause: String },
    #[error("refusing to restore: {0}")]
    Refused(String),
    #[error("restore not confirmed; nothing was changed")]
    Declined,
    #[error("the restore was cancelled; {left}")]
    Cancelled { left: String },
    #[error("pg_restore into `{database}` failed ({status}); {left}{}{hint}", tail(.stderr))]
    Restore {
        database: String,
        status: String,
        stderr: Vec<String>,
        hint: String,
        left: String,
    },
    #[error("the restored database `{database}` does not match the backup ({}); {left}", .problems.join("; "))]
    Check {
        database: String,
        problems: Vec<String>,
        left: String,
    },
    #[error("cannot use a local copy of the archive at `{}`: {cause}; nothing was changed", .path.display())]
    TempFile { path: PathBuf, cause: String },
    /// A database the sidecar made for a moment (a drill's copy) is still there.
    #[error("the scratch database `{database}` could not be dropped ({cause}): drop it by hand")]
    ScratchLeft { database: String, cause: String },
    /// `--drop-old` after a successful swap: the restore itself is done.
    #[error("the restore succeeded: `{database}` is the restored database; but the replaced database `{old}` could not be dropped ({cause}): it is kept; drop it by hand once its subscriptions are dealt with")]
    OldNotDropped {
        database: String,
        old: String,
        cause: String,
    },
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("\npg_restore said:\n  {}", lines.join("\n  "))
    }
}

impl RestoreError {
    /// Refusals caused by how the command was called (exit status 2: nothing was attempted).
    pub fn is_usage(&self) -> bool {
        match self {
            RestoreError::Refused(_) | RestoreError::Declined => true,
            RestoreError::Undecryptable(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// Where the backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Into the database the backup was taken from, in one transaction.
    InPlace,
    /// Into a new database named `name`, then swapped with an existing one of that name if
    /// `replace`; the one replaced is kept as `<name>__pre_restore_<time>` unless `drop_old`.
    NewDatabase {
        name: String,
        replace: bool,
        drop_old: bool,
    },
}

/// Options that change how pg_restore runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Skip ownership and privileges (`--no-owner --no-privileges`).
    pub no_owner: bool,
    /// Parallel pg_restore jobs (needs a local copy of the archive).
    pub jobs: Option<u32>,
    /// Show a progress bar (on a terminal) or log progress every few seconds.
    pub progress: bool,
    /// Create the roles the backup's globals have and the server lacks, before restoring.
    pub with_globals: bool,
    /// What decrypts an encrypted backup.
    pub encryption: crate::codec::encryption::Encryption,
    /// Allow `postgres`, `template0` or `template1` as the target.
    pub allow_system_database: bool,
    /// A throwaway copy (a drill's): subscriptions are not restored, so nothing in it can
    /// ever reach a publisher or keep the copy from being dropped.
    pub scratch: bool,
}

/// The target server and database as found before anything changes.
#[derive(Debug, Clone)]
pub struct Target {
    pub server_version: String,
    pub server_major: u32,
    /// The database restored into in the end.
    pub name: String,
    /// Facts about the existing database of that name, if there is one.
    pub existing: Option<ExistingDb>,
}

/// An existing database.
#[derive(Debug, Clone)]
pub struct ExistingDb {
    pub size: u64,
    /// Clients connected to it; autovacuum and other server processes are not counted.
    pub connections: i64,
    pub owner: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
}

/// Everything decided before the restore starts; [`Plan::describe`] shows it to the operator.
#[derive(Debug, Clone)]
pub struct Plan {
    pub entry: Entry,
    pub server: DatabaseConfig,
    pub target: Target,
    pub mode: Mode,
    pub pg_restore: ClientTool,
    /// pg_restore writes SQL that psql runs, with the one statement older servers reject
    /// removed (pg_restore 17+ into a server before 17).
    pub via_psql: Option<ClientTool>,
    pub options: Options,
    /// With `--with-globals`: the roles to create first.
    pub roles: Option<crate::source::globals::RolePlan>,
}

/// What a finished restore did.
#[derive(Debug)]
pub struct Restored {
    pub database: String,
    /// Where the replaced database was kept, if one was.
    pub kept_old: Option<String>,
    pub duration: Duration,
    pub tables: Vec<TableRows>,
    pub stored_bytes: u64,
}

impl Restored {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Quotes an identifier for SQL.
fn ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// The time in scratch names, and its length.
const STAMP: &str = "%Y%m%d%H%M%S";
const STAMP_LEN: usize = 14;

/// `<base>__<tag>_<time>`, cut so that it fits PostgreSQL's identifier length.
pub fn scratch_name(base: &str, tag: &str, at: chrono::DateTime<Utc>) -> String {
    let suffix = format!("__{tag}_{}", at.format(STAMP));
    let mut cut = MAX_IDENTIFIER_BYTES
        .saturating_sub(suffix.len())
        .min(base.len());
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &base[..cut])
}

fn query_err(what: &str) -> impl Fn(tokio_postgres::Error) -> RestoreError + '_ {
    move |e| RestoreError::Query {
        what: what.to_string(),
        cause: dump::pg_error_text(&e),
    }
}

/// A session on the server outside the databases being changed (they cannot be created,
/// renamed or dropped from inside).
async fn maintenance(server: &DatabaseConfig) -> Result<tokio_postgres::Client, RestoreError> {
    match dump::connect(server, "postgres").await {
        Ok(c) => Ok(c),
        Err(first) => dump::connect(server, "template1")
            .await
            .map_err(|_| first.into()),
    }
}

async fn existing_db(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<ExistingDb>, RestoreError> {
    let row = client
        .query_opt(
            "SELECT pg_database_size(d.oid), \
                    (SELECT count(*) FROM pg_stat_activity a \
                      WHERE a.datname = d.datname AND a.pid <> pg_backend_pid() \
                        AND a.backend_type = 'client backend'), \
                    pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), \
                    d.datcollate::text, d.datctype::text \
               FROM pg_database d WHERE d.datname = $1",
            &[&name],
        )
        .await
        .map_err(query_err("reading the target database"))?;
    Ok(row.map(|r| ExistingDb {
        size: r.get::<_, i64>(0).max(0) as u64,
        connections: r.get(1),
        owner: r.get(2),
        encoding: r.get(3),
        collate: r.get(4),
        ctype: r.get(5),
    }))
}

/// Decides how `entry` will be restored on `server` without changing anything, and refuses
/// what cannot work: an encrypted backup the configured key does not open, a newer server's
/// backup, a missing or existing target, a pg_restore that cannot read the archive.
pub async fn plan(
    entry: &Entry,
    storage: &Storage,
    server: &DatabaseConfig,
    tools: &ToolsConfig,
    mode: Mode,
    options: Options,
) -> Result<Plan, RestoreError> {
    let m = &entry.manifest;
    verify::check_decryptable(storage, entry, &options.encryption)
        .await
        .map_err(RestoreError::Undecryptable)?;
    let admin = maintenance(server).await?;
    let row = admin
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(query_err("reading the server version"))?;
    let server_version: String = row.get(0);
    let server_major = (row.get::<_, i32>(1) / 10000) as u32;
    if m.server_major > server_major {
        return Err(RestoreError::Refused(format!(
            "`{}` is a backup of PostgreSQL {} and the target server runs PostgreSQL {server_major}; \
             a dump can only be restored into the same or a newer major: restore into a PostgreSQL {} (or newer) server",
            m.key, m.server_major, m.server_major
        )));
    }
    let name = match &mode {
        Mode::InPlace => m.database.clone(),
        Mode::NewDatabase { name, .. } => name.clone(),
    };
    // Restoring over a system database is almost always a typo with wide consequences (every
    // tool connects to `postgres`; `template1` seeds every new database).
    if ["postgres", "template0", "template1"].contains(&name.as_str())
        && !options.allow_system_database
    {
        return Err(RestoreError::Refused(format!(
            "`{name}` is a system database; restore into another one with --target-db NAME, or add --allow-system-database if this is really meant"
        )));
    }
    let existing = existing_db(&admin, &name).await?;
    match (&mode, &existing) {
        (Mode::InPlace, None) => {
            return Err(RestoreError::Refused(format!(
                "database `{name}` does not exist on the target server; restore into a new database with --target-db {name}"
            )))
        }
        (Mode::InPlace, Some(_)) if options.jobs.is_some() => {
            return Err(RestoreError::Refused(
                "--jobs cannot restore inside one transaction; use it with --full or --target-db".into(),
            ))
        }
        (Mode::NewDatabase { replace: false, .. }, Some(_)) => {
            return Err(RestoreError::Refused(format!(
                "database `{name}` already exists; choose another --target-db, or add --replace-target to replace it (it is kept as `{name}__pre_restore_<time>`)"
            )))
        }
        _ => {}
    }
    let found = tools::discover("pg_restore", &tools.bin_dirs).await?;
    let pg_restore = tools::choose_for_restore(&found, m.pg_dump_major, server_major)?;
    let via_psql = if pg_restore.major >= 17 && server_major < 17 {
        if options.jobs.is_some() {
            return Err(RestoreError::Refused(format!(
                "--jobs needs pg_restore to connect directly, but pg_restore {} sends `SET transaction_timeout`, which PostgreSQL {server_major} rejects; install the PostgreSQL {server_major} client tools or restore without --jobs",
                pg_restore.version
            )));
        }
        let dir = pg_restore.path.parent().map(|d| d.to_path_buf());
        let psql = tools::discover("psql", &dir.into_iter().collect::<Vec<_>>())
            .await?
            .remove(0);
        Some(psql)
    } else {
        None
    };
    let roles = match (&m.globals, options.with_globals) {
        (_, false) => None,
        (None, true) => {
            return Err(RestoreError::Refused(format!(
                "`{}` has no roles stored with it (set `globals = true`, PGSIDECAR_GLOBALS=true, for future backups); create the roles by hand or restore with --no-owner",
                m.key
            )))
        }
        (Some(g), true) => {
            let sql =
                crate::source::globals::fetch(storage, g, m.encryption.as_ref(), &options.encryption)
                    .await?;
            let existing = admin
                .query("SELECT rolname::text FROM pg_roles", &[])
                .await
                .map_err(query_err("listing roles"))?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect();
            Some(crate::source::globals::plan_roles(&sql, &existing))
        }
    };
    Ok(Plan {
        roles,
        entry: entry.clone(),
        server: server.clone(),
        target: Target {
            server_version,
            server_major,
            name,
            existing,
        },
        mode,
        pg_restore,
        via_psql,
        options,
    })
}

impl Plan {
    /// What will happen, for the operator to confirm.
    pub fn describe(&self, now: chrono::DateTime<Utc>) -> String {
        let m = &self.entry.manifest;
        let t = &self.target;
        let hb = crate::notify::human_bytes;
        let age = crate::catalog::human_age(now - m.started_at);
        let mut out = format!(
            "Backup:  {} (taken {} UTC, {age} ago)\n         database `{}` on PostgreSQL {}, {} stored, {} uncompressed{}\n",
            m.key,
            m.started_at.format("%Y-%m-%d %H:%M:%S"),
            m.database,
            m.server_version,
            hb(m.stored_bytes),
            hb(m.raw_bytes),
            match &m.encryption {
                Some(e) => format!(", encrypted ({}; the configured key opens it)", e.scheme),
                None => String::new(),
            },
        );
        out.push_str(&format!(
            "Target:  database `{}` on {}:{} (PostgreSQL {})",
            t.name, self.server.host, self.server.port, t.server_version
        ));
        match &t.existing {
            Some(e) => out.push_str(&format!(
                ", exists: {}, {} open connection(s)\n",
                hb(e.size),
                e.connections
            )),
            None => out.push_str(", does not exist yet\n"),
        }
        let action = match &self.mode {
            Mode::InPlace => format!(
                "restore into `{}` in ONE transaction: objects in the backup are dropped and recreated; \
                 on any error nothing changes. Open connections may make it wait for their locks.",
                t.name
            ),
            Mode::NewDatabase { name, .. } if t.existing.is_none() => format!(
                "restore into a new database, check it, then name it `{name}`."
            ),
            Mode::NewDatabase { name, drop_old, .. } => format!(
                "restore into a new database and check it; then terminate the connections to `{name}`, \
                 rename it to `{name}__pre_restore_<time>`{} and give the restored one its name.",
                if *drop_old { " and DROP it" } else { " (kept until you drop it)" }
            ),
        };
        out.push_str(&format!("Action:  {action}\n"));
        out.push_str(&format!(
            "Client:  pg_restore {}{}\n",
            self.pg_restore.version,
            match &self.via_psql {
                Some(_) => format!(
                    " through psql (it sends `SET transaction_timeout`, which PostgreSQL {} rejects; that one statement is left out)",
                    t.server_major
                ),
                None => String::new(),
            }
        ));
        match &self.roles {
            Some(r) if r.missing.is_empty() => {
                out.push_str("Roles:   every role of the backup exists on the target server\n")
            }
            Some(r) => out.push_str(&format!(
                "Roles:   creates the missing role(s) {} first{}\n",
                r.missing.join(", "),
                if m.globals.as_ref().is_some_and(|g| !g.role_passwords) {
                    " (stored without passwords: set them afterwards)"
                } else {
                    ""
                }
            )),
            None => {}
        }
        if let Some(n) = self.options.jobs {
            out.push_str(&format!(
                "Jobs:    {n} parallel; this needs the archive as a local file ({} in {}), removed afterwards\n",
                hb(m.raw_bytes),
                std::env::temp_dir().display()
            ));
        }
        out
    }

    /// Shows the plan and asks for confirmation on a terminal; without one, `yes` must be given.
    pub fn confirm(&self, yes: bool) -> Result<(), RestoreError> {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{}", self.describe(Utc::now()));
        if yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(RestoreError::Refused(
                "no terminal to confirm on: add --yes to restore without confirmation".into(),
            ));
        }
        let _ = write!(
            err,
            "Type the database name `{}` to go ahead: ",
            self.target.name
        );
        let _ = err.flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|_| RestoreError::Declined)?;
        if answer.trim() == self.target.name {
            Ok(())
        } else {
            Err(RestoreError::Declined)
        }
    }
}

/// Reports streaming progress until dropped: a bar on a terminal, else a log line every 5 s.
struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(enabled: bool, total: u64, done: Arc<AtomicU64>) -> Option<Progress> {
        if !enabled {
            return None;
        }
        let task = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            tokio::spawn(async move {
                loop {
                    bar.set_position(done.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        } else {
            tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let n = done.load(Ordering::Relaxed);
                    let rate = n as f64 / started.elapsed().as_secs_f64().max(0.001);
                    tracing::info!(
                        "restoring: {} of {} read ({:.0}%), {}/s",
                        crate::notify::human_bytes(n),
                        crate::notify::human_bytes(total),
                        100.0 * n as f64 / total.max(1) as f64,
                        crate::notify::human_bytes(rate as u64)
                    );
                }
            })
        };
        Some(Progress { task })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The running restore processes: pg_restore alone, or pg_restore feeding psql through the
/// filter. Dropping it kills them, which rolls back whatever they had not committed.
struct Restorer {
    children: Vec<Child>,
    stderr: Vec<tokio::task::JoinHandle<Vec<String>>>,
    filter: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

fn stderr_tail(pipe: Option<tokio::process::ChildStderr>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut tail = std::collections::VecDeque::new();
        if let Some(p) = pipe {
            let mut lines = BufReader::new(p).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "pg_restore", "{line}");
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
        Vec::from(tail)
    })
}

/// The statement pg_restore 17+ writes into every script and servers before 17 reject.
const TRANSACTION_TIMEOUT: &[u8] = b"SET transaction_timeout = 0;\n";

/// Copies pg_restore's script to psql, leaving out [`TRANSACTION_TIMEOUT`] in the script's
/// preamble only: the same text later could be table data and is passed on untouched.
async fn filter_script(
    from: tokio::process::ChildStdout,
    mut to: tokio::process::ChildStdin,
) -> std::io::Result<()> {
    let mut from = BufReader::with_capacity(1 << 20, from);
    let mut preamble = true;
    let mut line = Vec::new();
    loop {
        line.clear();
        if from.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        if preamble {
            if line == TRANSACTION_TIMEOUT {
                continue;
            }
            let preamble_line = line.starts_with(b"SET ")
                || line.starts_with(b"SELECT pg_catalog.set_config")
                || line.starts_with(b"--")
                || line.starts_with(b"\\restrict")
                || line.starts_with(b"BEGIN;")
                || line.trim_ascii().is_empty();
            preamble = preamble_line;
        }
        to.write_all(&line).await?;
    }
    to.shutdown().await
}

impl Restorer {
    /// Starts restoring into `database`, reading the archive from stdin or from `file`.
    fn start(
        plan: &Plan,
        database: &str,
        single_transaction: bool,
        file: Option<&std::path::Path>,
    ) -> Result<(Restorer, Option<tokio::process::ChildStdin>), RestoreError> {
        let spawn_err = |tool: &ClientTool| {
            let path = tool.path.clone();
            move |e: std::io::Error| RestoreError::Database(DumpError::Spawn { path, source: e })
        };
        let mut cmd = dump::client_command(&plan.pg_restore, &plan.server, database);
        cmd.args(["--no-password", "--exit-on-error"]);
        if single_transaction {
            cmd.args(["--single-transaction", "--clean", "--if-exists"]);
        }
        if plan.options.no_owner {
            cmd.args(["--no-owner", "--no-privileges"]);
        }
        if plan.options.scratch {
            cmd.arg("--no-subscriptions");
        }
        if let Some(n) = plan.options.jobs {
            cmd.arg(format!("--jobs={n}"));
        }
        match &plan.via_psql {
            None => {
                cmd.arg(format!("--dbname={}", dump::conninfo(database)));
            }
            Some(_) => {
                cmd.arg("--file=-");
            }
        }
        if let Some(f) = file {
            cmd.arg(f);
        }
        cmd.stdin(if file.is_some() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(if plan.via_psql.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut pg_restore = cmd.spawn().map_err(spawn_err(&plan.pg_restore))?;
        let stdin = pg_restore.stdin.take();
        let mut stderr = vec![stderr_tail(pg_restore.stderr.take())];
        let mut children = vec![];
        let mut filter = None;
        if let Some(psql) = &plan.via_psql {
            let mut cmd = dump::client_command(psql, &plan.server, database);
            cmd.args(["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1"])
                .arg(format!("--dbname={}", dump::conninfo(database)))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut psql_child = cmd.spawn().map_err(spawn_err(psql))?;
            stderr.push(stderr_tail(psql_child.stderr.take()));
            filter = Some(tokio::spawn(filter_script(
                pg_restore.stdout.take().expect("stdout is piped"),
                psql_child.stdin.take().expect("stdin is piped"),
            )));
            children.push(pg_restore);
            children.push(psql_child);
        } else {
            children.push(pg_restore);
        }
        Ok((
            Restorer {
                children,
                stderr,
                filter,
            },
            stdin,
        ))
    }

    /// Waits for every process; on failure returns the exit status and stderr lines.
    async fn wait(mut self) -> Result<(), (String, Vec<String>)> {
        let mut failure = None;
        for child in &mut self.children {
            match child.wait().await {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    failure.get_or_insert_with(|| describe(s));
                }
                Err(e) => {
                    failure.get_or_insert_with(|| format!("could not be waited for: {e}"));
                }
            }
        }
        if let Some(f) = self.filter.take() {
            if let Ok(Err(e)) = f.await {
                failure.get_or_insert_with(|| format!("script filter failed: {e}"));
            }
        }
        let mut lines = Vec::new();
        for s in self.stderr.drain(..) {
            lines.extend(s.await.unwrap_or_default());
        }
        match failure {
            None => Ok(()),
            Some(status) => Err((status, lines)),
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended abnormally".into(),
    }
}

/// Hints for a failed pg_restore's known causes, from its stderr, so the operator gets a way
/// out instead of a wall: missing roles; for an in-place restore (`in_place`), the failures
/// only a new database avoids.
fn hint_for(stderr: &[String], has_globals: bool, in_place: bool) -> String {
    let missing: Vec<&str> = stderr
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find("role \"")? + 6..];
            let end = rest.find("\" does not exist")?;
            Some(&rest[..end])
        })
        .collect();
    let mut hints = String::new();
    if !missing.is_empty() {
        hints.push_str(&format!(
            "\nhint: the role(s) {} do not exist on the target server: {}create them first, or restore with --no-owner to give every object to the restoring user",
            missing.join(", "),
            if has_globals {
                "restore with --with-globals (this backup has the roles), "
            } else {
                ""
            }
        ));
    }
    if in_place {
        let said = |needle: &str| stderr.iter().any(|l| l.contains(needle));
        if said("out of shared memory") || said("max_locks_per_transaction") {
            hints.push_str("\nhint: an in-place restore locks every object it replaces in one transaction, more than the server's lock table holds: restore with --full or --target-db (a new database, no such transaction), or raise max_locks_per_transaction");
        }
        if said("other objects depend on it") {
            hints.push_str("\nhint: objects created after the backup depend on objects it replaces, so they cannot be dropped in place: restore with --full (a new database, swapped in after checking) or --target-db");
        }
    }
    hints
}

/// Runs the restore described by `plan`.
pub async fn execute(
    plan: &Plan,
    storage: &Storage,
    cancel: &CancellationToken,
) -> Result<Restored, RestoreError> {
    let clock = Instant::now();
    let t = &plan.target;
    if let Some(roles) = plan.roles.as_ref().filter(|r| !r.statements.is_empty()) {
        let admin = maintenance(&plan.server).await?;
        let sql = format!("BEGIN;\n{}\nCOMMIT;", roles.statements.join("\n"));
        admin.batch_execute(&sql).await.map_err(query_err(
            "creating the missing roles (nothing else was changed)",
        ))?;
        tracing::info!(roles = %roles.missing.join(", "), "created the missing roles");
    }
    match &plan.mode {
        Mode::InPlace => {
            let left = format!("database `{}` is unchanged", t.name);
            restore_into(plan, storage, &t.name, true, cancel, &left).await?;
            let tables = count_tables(plan, &t.name).await?;
            Ok(Restored {
                database: t.name.clone(),
                kept_old: None,
                duration: clock.elapsed(),
                tables,
                stored_bytes: plan.entry.manifest.stored_bytes,
            })
        }
        Mode::NewDatabase { name, drop_old, .. } => {
            let admin = maintenance(&plan.server).await?;
            let now = Utc::now();
            let scratch = scratch_name(name, "restoring", now);
            let shape = Shape::decide(plan, &admin).await?;
            for note in &shape.notes {
                tracing::warn!("not carried over: {note}");
            }
            shape.create(&admin, &scratch, t.server_major).await?;
            let left = match &t.existing {
                Some(_) => {
                    format!("`{name}` is unchanged; the partial restore `{scratch}` was dropped")
                }
                None => format!("the partial restore `{scratch}` was dropped"),
            };
            let restored = async {
                restore_into(plan, storage, &scratch, false, cancel, &left).await?;
                let tables = count_tables(plan, &scratch).await?;
                if let Some(expected) = &plan.entry.manifest.tables {
                    let problems = tables::compare(expected, &tables);
                    if !problems.is_empty() {
                        return Err(RestoreError::Check {
                            database: scratch.clone(),
                            problems,
                            left: left.clone(),
                        });
                    }
                }
                // Properties last: a setting such as default_transaction_read_only or a revoked
                // CONNECT must not get in the way of the restore and its counts.
                let problems = shape.apply_and_check(plan, &admin, &scratch).await?;
                if !problems.is_empty() {
                    return Err(RestoreError::Check {
                        database: scratch.clone(),
                        problems,
                        left: left.clone(),
                    });
                }
                if cancel.is_cancelled() {
                    return Err(RestoreError::Cancelled { left: left.clone() });
                }
                Ok(tables)
            }
            .await;
            let tables = match restored {
                Ok(t) => t,
                Err(e) => {
                    let _ = drop_database(&admin, &plan.server, &scratch, t.server_major).await;
                    return Err(e);
                }
            };
            let kept_old = match swap(&admin, &scratch, name, now).await {
                Ok(k) => k,
                Err(e) => {
                    let _ = drop_database(&admin, &plan.server, &scratch, t.server_major).await;
                    return Err(e);
                }
            };
            let kept_old = match (kept_old, drop_old) {
                (Some(old), true) => {
                    // The swap is done: a failure now must not read as a failed restore. A
                    // subscription keeps it from dropping; the user decides what happens to its
                    // slot on the publisher, so it is not disarmed here.
                    admin
                        .batch_execute(&format!("DROP DATABASE {}", ident(&old)))
                        .await
                        .map_err(|e| RestoreError::OldNotDropped {
                            database: name.clone(),
                            old: old.clone(),
                            cause: dump::pg_error_text(&e),
                        })?;
                    None
                }
                (k, _) => k,
            };
            Ok(Restored {
                database: name.clone(),
                kept_old,
                duration: clock.elapsed(),
                tables,
                stored_bytes: plan.entry.manifest.stored_bytes,
            })
        }
    }
}

async fn count_tables(plan: &Plan, database: &str) -> Result<Vec<TableRows>, RestoreError> {
    let client = dump::connect(&plan.server, database).await?;
    tables::count(&client)
        .await
        .map_err(query_err("counting the restored rows"))
}

/// What a database the restore creates is given: the properties the backup recorded, as far
/// as the target server can have them, or for a backup that predates them, the encoding,
/// locales and owner of the database it replaces.
struct Shape {
    intended: Option<DatabaseProperties>,
    like: Option<ExistingDb>,
    notes: Vec<String>,
}

impl Shape {
    async fn decide(plan: &Plan, admin: &tokio_postgres::Client) -> Result<Shape, RestoreError> {
        let Some(recorded) = &plan.entry.manifest.database_properties else {
            return Ok(Shape {
                intended: None,
                like: plan.target.existing.clone(),
                notes: vec![format!(
                    "this backup predates recorded database properties: its settings, privileges and comment are not restored, and {}",
                    if plan.target.existing.is_some() {
                        "encoding, locales and owner are those of the database it replaces"
                    } else {
                        "encoding, locales and owner are the server's defaults"
                    }
                )],
            });
        };
        let roles = admin
            .query(
                "SELECT rolname::text, rolname = current_user FROM pg_catalog.pg_roles",
                &[],
            )
            .await
            .map_err(query_err("listing roles"))?;
        let me = roles
            .iter()
            .find(|r| r.get::<_, bool>(1))
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_default();
        let roles = roles.iter().map(|r| r.get::<_, String>(0)).collect();
        let (intended, notes) = properties::intended(recorded, &roles, &me, plan.options.no_owner);
        Ok(Shape {
            intended: Some(intended),
            like: None,
            notes,
        })
    }

    async fn create(
        &self,
        admin: &tokio_postgres::Client,
        name: &str,
        server_major: u32,
    ) -> Result<(), RestoreError> {
        let sql = match &self.intended {
            Some(p) => properties::create_sql(name, p, &p.owner, server_major)
                .map_err(|why| RestoreError::Refused(format!("{why}; nothing was changed")))?,
            None => create_sql_like(name, self.like.as_ref()),
        };
        admin
            .batch_execute(&sql)
            .await
            .map_err(query_err(&format!("creating database `{name}`")))
    }

    /// Gives `name` the intended comment, privileges and settings, then reads them back: the
    /// differences found.
    async fn apply_and_check(
        &self,
        plan: &Plan,
        admin: &tokio_postgres::Client,
        name: &str,
    ) -> Result<Vec<String>, RestoreError> {
        let Some(p) = &self.intended else {
            return Ok(Vec::new());
        };
        let major = plan.target.server_major;
        let read = |what| async move {
            properties::read(admin, name, major)
                .await
                .map_err(query_err(what))?
                .ok_or_else(|| RestoreError::Refused(format!("database `{name}` is gone")))
        };
        let current = read("reading the restored database's properties").await?;
        let roles = p
            .privileges
            .iter()
            .map(|w| w.grantee.clone())
            .chain(p.settings.iter().filter_map(|s| s.role.clone()))
            .chain([p.owner.clone()])
            .collect();
        let (statements, _) = properties::follow_up_sql(name, p, &current.privileges, &roles);
        if !statements.is_empty() {
            admin
                .batch_execute(&statements.join(";\n"))
                .await
                .map_err(query_err(
                    "giving the restored database its privileges and settings",
                ))?;
        }
        let found = read("checking the restored database's properties").await?;
        Ok(properties::compare(p, &found))
    }
}

fn create_sql_like(name: &str, like: Option<&ExistingDb>) -> String {
    let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", ident(name));
    if let Some(e) = like {
        // The replacement gets what the original had, so collation-dependent indexes and the
        // application's expectations stay the same.
        sql.push_str(&format!(
            " OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            ident(&e.owner),
            postgres_protocol::escape::escape_literal(&e.encoding),
            postgres_protocol::escape::escape_literal(&e.collate),
            postgres_protocol::escape::escape_literal(&e.ctype),
        ));
    }
    sql
}

/// Drops a database this module created (a drill's scratch database); the error says why it
/// is left.
pub async fn drop_scratch(
    server: &DatabaseConfig,
    name: &str,
    server_major: u32,
) -> Result<(), String> {
    let admin = maintenance(server).await.map_err(|e| e.to_string())?;
    drop_database(&admin, server, name, server_major).await
}

/// Drops the scratch databases `<base>__<tag>_<time>` whose time is before `before`: what an
/// interrupted drill left behind. Also their `<…>__restoring_<time>` stage, as long as its
/// name, cut to PostgreSQL's identifier limit, still holds `<base>__<tag>_` (a `base` of up to
/// 29 bytes for drills). Returns the names dropped.
pub async fn drop_stale_scratch(
    server: &DatabaseConfig,
    base: &str,
    tag: &str,
    before: chrono::DateTime<Utc>,
    server_major: u32,
) -> Vec<String> {
    let Ok(admin) = maintenance(server).await else {
        return Vec::new();
    };
    let Ok(rows) = admin
        .query("SELECT datname::text FROM pg_database", &[])
        .await
    else {
        return Vec::new();
    };
    let mut dropped = Vec::new();
    for name in rows.iter().map(|r| r.get::<_, String>(0)) {
        if scratch_started(&name, base, tag).is_some_and(|t| t < before) {
            if drop_database(&admin, server, &name, server_major)
                .await
                .is_err()
            {
                continue;
            }
            dropped.push(name);
        }
    }
    dropped
}

/// When the scratch database `name` of `base` and `tag` was begun: the time in its own name,
/// or for its `__restoring_` stage, the stage's time. `None` for any other name.
fn scratch_started(name: &str, base: &str, tag: &str) -> Option<chrono::DateTime<Utc>> {
    // The base is cut to fit PostgreSQL's identifier limit the same way at any time.
    let template = scratch_name(base, tag, chrono::DateTime::UNIX_EPOCH);
    let prefix = &template[..template.len() - STAMP_LEN];
    let stamp = |s: &str| {
        s.get(..STAMP_LEN)
            .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, STAMP).ok())
            .map(|t| t.and_utc())
    };
    const STAGE: &str = "__restoring_";
    let stage_at = name.len().checked_sub(STAGE.len() + STAMP_LEN);
    match stage_at.and_then(|i| Some((i, name.get(i..)?.strip_prefix(STAGE)?))) {
        Some((i, time)) if name[..i].starts_with(prefix) => stamp(time),
        _ => stamp(name.strip_prefix(prefix)?),
    }
}

/// Drops a database this module created. Subscriptions restored into it are disarmed first
/// (disabled, their slot detached, dropped): they block `DROP DATABASE`, and dropping one that
/// still names its slot would connect to the publisher to drop that slot there. Warns and
/// returns the cause when the database is left.
async fn drop_database(
    admin: &tokio_postgres::Client,
    server: &DatabaseConfig,
    name: &str,
    server_major: u32,
) -> Result<(), String> {
    if let Err(e) = disarm_subscriptions(server, name).await {
        tracing::warn!("could not disarm the subscriptions of `{name}`: {e}");
    }
    let force = if server_major >= 13 {
        " WITH (FORCE)"
    } else {
        ""
    };
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {}{force}", ident(name)))
        .await
        .map_err(|e| {
            let cause = dump::pg_error_text(&e);
            tracing::warn!("could not drop `{name}`: {cause}; drop it by hand");
            cause
        })
}

/// Disables, detaches from their slots and drops the subscriptions of database `name`, which
/// never connect to their publishers for it (a database that is gone has none).
async fn disarm_subscriptions(server: &DatabaseConfig, name: &str) -> Result<(), RestoreError> {
    let admin = maintenance(server).await?;
    let any = admin
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_subscription s \
               JOIN pg_catalog.pg_database d ON d.oid = s.subdbid WHERE d.datname = $1 LIMIT 1",
            &[&name],
        )
        .await
        .map_err(query_err("listing subscriptions"))?;
    if any.is_none() {
        return Ok(());
    }
    let client = dump::connect(server, name).await?;
    let subs = client
        .query(
            "SELECT subname::text FROM pg_catalog.pg_subscription \
              WHERE subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .map_err(query_err("listing subscriptions"))?;
    for sub in subs.iter().map(|r| ident(&r.get::<_, String>(0))) {
        client
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {sub} DISABLE; \
                 ALTER SUBSCRIPTION {sub} SET (slot_name = NONE); \
                 DROP SUBSCRIPTION {sub};"
            ))
            .await
            .map_err(query_err("disarming a subscription"))?;
    }
    Ok(())
}

/// Gives `scratch` the name `name`. An existing `name` is renamed to `<name>__pre_restore_…`
/// first, after its connections are terminated; that name is returned.
async fn swap(
    admin: &tokio_postgres::Client,
    scratch: &str,
    name: &str,
    at: chrono::DateTime<Utc>,
) -> Result<Option<String>, RestoreError> {
    let exists = existing_db(admin, name).await?.is_some();
    let old = scratch_name(name, "pre_restore", at);
    if exists {
        // Refusing new connections first keeps clients from reconnecting between termination
        // and rename. (Only the owner or a superuser may; without it, retries cover the gap.)
        let blocked = admin
            .batch_execute(&format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
                ident(name)
            ))
            .await
            .is_ok();
        let mut attempt = 0;
        loop {
            attempt += 1;
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                )
                .await
                .map_err(query_err("terminating connections"))?;
            match admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    ident(name),
                    ident(&old)
                ))
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 20 => {
                    tracing::debug!("rename not yet possible: {}", dump::pg_error_text(&e));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    if blocked {
                        let _ = admin
                            .batch_execute(&format!(
                                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                                ident(name)
                            ))
                            .await;
                    }
                    return Err(RestoreError::Query {
                        what: format!(
                            "renaming `{name}` out of the way (clients keep reconnecting?)"
                        ),
                        cause: dump::pg_error_text(&e),
                    });
                }
            }
        }
        if blocked {
            let _ = admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                    ident(&old)
                ))
                .await;
        }
    }
    if let Err(e) = admin
        .batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            ident(scratch),
            ident(name)
        ))
        .await
    {
        if exists {
            // Put the original back under its name; the restored copy is dropped by the caller.
            let _ = admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    ident(&old),
                    ident(name)
                ))
                .await;
        }
        return Err(RestoreError::Query {
            what: format!("renaming the restored database to `{name}`"),
            cause: dump::pg_error_text(&e),
        });
    }
    Ok(exists.then_some(old))
}

/// Streams the archive into pg_restore restoring into `database`. With `single_transaction`
/// the objects are dropped and recreated inside one transaction.
async fn restore_into(
    plan: &Plan,
    storage: &Storage,
    database: &str,
    single_transaction: bool,
    cancel: &CancellationToken,
    left: &str,
) -> Result<(), RestoreError> {
    let entry = &plan.entry;
    let progress_bytes = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start(
        plan.options.progress,
        entry.manifest.stored_bytes,
        progress_bytes.clone(),
    );
    let cancelled = || RestoreError::Cancelled {
        left: left.to_string(),
    };
    // With --jobs, pg_restore needs a seekable file: the archive is checked completely while
    // it is written, before pg_restore starts.
    let local = match plan.options.jobs {
        None => None,
        Some(_) => {
            let file = tempfile::Builder::new()
                .prefix("pgsidecar-restore-")
                .suffix(".dump")
                .tempfile()
                .map_err(|e| RestoreError::TempFile {
                    path: std::env::temp_dir(),
                    cause: e.to_string(),
                })?;
            let path = file.path().to_path_buf();
            tracing::info!(path = %path.display(), "--jobs: writing the archive to a local file; it is removed afterwards");
            let sink =
                tokio::fs::File::from_std(file.reopen().map_err(|e| RestoreError::TempFile {
                    path: path.clone(),
                    cause: e.to_string(),
                })?);
            let feed = Feed {
                hold_back: false,
                check_after_close: false,
            };
            let streamed = tokio::select! {
                r = verify::stream_archive(storage, entry, &plan.options.encryption, sink, feed, progress_bytes.clone()) => {
                    r.map_err(|source| RestoreError::Aborted { source: Box::new(source), left: left.to_string() })?
                }
                _ = cancel.cancelled() => return Err(cancelled()),
            };
            if let Some(e) = streamed.sink_error {
                return Err(RestoreError::TempFile {
                    path,
                    cause: e.to_string(),
                });
            }
            Some(file)
        }
    };
    let (restorer, stdin) = Restorer::start(
        plan,
        database,
        single_transaction,
        local.as_ref().map(|f| f.path()),
    )?;
    let failed = |(status, stderr): (String, Vec<String>)| RestoreError::Restore {
        database: database.to_string(),
        hint: hint_for(
            &stderr,
            plan.entry.manifest.globals.is_some(),
            single_transaction,
        ),
        status,
        stderr,
        left: left.to_string(),
    };
    if let Some(stdin) = stdin {
        let feed = Feed {
            hold_back: true,
            check_after_close: false,
        };
        let streamed = tokio::select! {
            r = verify::stream_archive(storage, entry, &plan.options.encryption, stdin, feed, progress_bytes) => r,
            _ = cancel.cancelled() => return Err(cancelled()),
        };
        match streamed {
            // pg_restore stopped reading: its own error says why.
            Ok(s) if s.sink_error.is_some() => {
                return Err(match restorer.wait().await {
                    Err(f) => failed(f),
                    Ok(()) => failed(("stopped reading the archive early".into(), Vec::new())),
                })
            }
            Ok(_) => {}
            // Dropping the restorer kills pg_restore before it could commit.
            Err(source) => {
                drop(restorer);
                return Err(RestoreError::Aborted {
                    source: Box::new(source),
                    left: left.to_string(),
                });
            }
        }
    }
    tokio::select! {
        r = restorer.wait() => r.map_err(failed),
        _ = cancel.cancelled() => Err(cancelled()),
    }
}

#[cfg(test)]
mod tests {
    // Golden files in snapshots/: after a deliberate change, `INSTA_UPDATE=always cargo test --lib restore` rewrites them; review `git diff`.

    /// Regression: an in-place restore that failed on the lock table or on a newer dependent
    /// view left the database unchanged but named no way out.
    #[test]
    fn in_place_failures_name_the_way_out() {
        let lines = |l: &str| vec![l.to_string()];
        let locks = lines("pg_restore: error: out of shared memory HINT: You might need to increase \"max_locks_per_transaction\".");
        assert!(super::hint_for(&locks, false, true).contains("restore with --full or --target-db"));
        let view = lines("pg_restore: error: could not execute query: ERROR: cannot drop table public.t because other objects depend on it");
        let hint = super::hint_for(&view, false, true);
        assert!(
            hint.contains("--full") && hint.contains("--target-db"),
            "{hint}"
        );
        // A new database has neither problem, and says nothing of them.
        assert_eq!(super::hint_for(&view, false, false), "");
        assert_eq!(
            super::hint_for(&lines("ERROR: syntax error"), true, true),
            ""
        );
    }

    use super::*;

    fn at(s: &str) -> chrono::DateTime<Utc> {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn scratch_databases_are_dated_by_their_names() {
        let drill = at("2026-11-20T02:00:00Z");
        let stage = at("2026-11-20T02:00:05Z");
        for base in ["app", "a_database_of_29_bytes_name_x"] {
            let scratch = scratch_name(base, "drill", drill);
            assert_eq!(scratch_started(&scratch, base, "drill"), Some(drill));
            // The stage name is cut to 63 bytes, which for long bases cuts the drill's time.
            let restoring = scratch_name(&scratch, "restoring", stage);
            assert_eq!(
                scratch_started(&restoring, base, "drill"),
                Some(stage),
                "{restoring}"
            );
        }
        for other in [
            "app",
            "app2__drill_20261120020000",
            "app__drill_notatime12345",
            "app__restoring_20261120020000",
            "app__pre_restore_20261120020000",
        ] {
            assert_eq!(scratch_started(other, "app", "drill"), None, "{other}");
        }
    }

    fn client(version: &str) -> ClientTool {
        let major = version.split('.').next().unwrap().parse().unwrap();
        ClientTool {
            path: PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/pg_restore")),
            version: version.into(),
            major,
        }
    }

    /// A plan as [`super::plan`] would make it, without a server: a backup of `app` taken 3h05m
    /// before `now` (see [`golden_restore_plans`]).
    fn fixed_plan(mode: Mode, existing: Option<ExistingDb>) -> Plan {
        let entry =
            crate::catalog::tests::entry("app", "2026-11-24T02:00:00Z", 3 << 20, 40 << 20, 83_400);
        let name = match &mode {
            Mode::InPlace => entry.manifest.database.clone(),
            Mode::NewDatabase { name, .. } => name.clone(),
        };
        Plan {
            entry,
            server: DatabaseConfig {
                host: "db.internal".into(),
                port: 5433,
                user: "postgres".into(),
                password: None,
                dbname: "postgres".into(),
                sslmode: crate::source::SslMode::Prefer,
                sslrootcert: None,
                connect_timeout: Duration::from_secs(10),
            },
            target: Target {
                server_version: "17.4".into(),
                server_major: 17,
                name,
                existing,
            },
            mode,
            pg_restore: client("17.4"),
            via_psql: None,
            options: Options::default(),
            roles: None,
        }
    }

    fn existing() -> ExistingDb {
        ExistingDb {
            size: 52 << 20,
            connections: 3,
            owner: "app".into(),
            encoding: "UTF8".into(),
            collate: "C.UTF-8".into(),
            ctype: "C.UTF-8".into(),
        }
    }

    /// What `restore` prints before it asks for confirmation, for each mode.
    #[test]
    fn golden_restore_plans() {
        let now = at("2026-11-24T05:05:30Z");

        let in_place = fixed_plan(Mode::InPlace, Some(existing()));
        insta::assert_snapshot!("in_place", in_place.describe(now));

        // A new database from an encrypted backup with roles to create, through psql (an
        // older server), with parallel jobs.
        let mut new_db = fixed_plan(
            Mode::NewDatabase {
                name: "app_copy".into(),
                replace: false,
                drop_old: false,
            },
            None,
        );
        let m = &mut new_db.entry.manifest;
        m.encryption = Some(crate::codec::encryption::EncryptionRecord {
            scheme: crate::codec::encryption::Scheme::X25519,
            recipients: vec!["0123456789abcdef".into()],
        });
        m.globals = Some(crate::catalog::manifest::Globals {
            key: crate::keys::globals_key(&m.key),
            raw_bytes: 2048,
            stored_bytes: 700,
            sha256: "0".repeat(64),
            role_passwords: false,
        });
        new_db.target.server_version = "16.8".into();
        new_db.target.server_major = 16;
        new_db.via_psql = Some(ClientTool {
            path: PathBuf::from("/usr/lib/postgresql/17/bin/psql"),
            ..client("17.4")
        });
        new_db.options.jobs = Some(4);
        new_db.options.with_globals = true;
        new_db.roles = Some(crate::source::globals::RolePlan {
            missing: vec!["app_owner".into(), "reporting".into()],
            statements: vec![],
        });
        // The temporary directory comes from the environment.
        let text = new_db
            .describe(now)
            .replace(&std::env::temp_dir().display().to_string(), "$TMPDIR");
        insta::assert_snapshot!("new_database", text);

        let mut replace = fixed_plan(
            Mode::NewDatabase {
                name: "app".into(),
                replace: true,
                drop_old: false,
            },
            Some(existing()),
        );
        replace.options.with_globals = true;
        replace.roles = Some(crate::source::globals::RolePlan::default());
        insta::assert_snapshot!("replace_keep_old", replace.describe(now));

        let replace_drop = fixed_plan(
            Mode::NewDatabase {
                name: "app".into(),
                replace: true,
                drop_old: true,
            },
            Some(existing()),
        );
        insta::assert_snapshot!("replace_drop_old", replace_drop.describe(now));
    }
}

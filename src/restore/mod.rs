//! Restore stage: brings a stored backup back into a PostgreSQL server.
//!
//! Invariant: nothing existing is dropped or overwritten before the replacement has been fully
//! restored and checked. The default mode restores into the existing database inside one
//! transaction, and pg_restore cannot reach its COMMIT before the stored object has proved
//! intact (see [`verify::Feed::hold_back`]). The other modes restore into a new scratch
//! database, check it, and only then rename databases; any failure before that drops the
//! scratch database and leaves everything else as it was. An encrypted backup is only
//! planned once the configured key has opened its age header: a missing or wrong key is
//! refused before anything is touched.
//!
//! [`plan`](plan()) gathers the facts and decides ([`Plan`]); [`execute`](execute()) carries a
//! plan out; `shape` decides what a new database is given; `scratch` creates, swaps in, drops
//! and sweeps scratch databases, whose names [`crate::keys`] decides; [`verify`] is the read
//! path of a stored backup.

mod execute;
pub mod globals;
mod plan;
mod progress;
mod restorer;
mod scratch;
mod shape;
pub mod verify;

pub use crate::keys::scratch_name;
pub use execute::{execute, Restored};
pub use plan::{plan, ExistingDb, Plan, Target};
pub use scratch::{drop_scratch, drop_stale_scratch};

use std::path::PathBuf;

use crate::source::dump::{self, DumpError};
use crate::source::tools::ToolError;
use crate::source::DatabaseConfig;
use verify::VerifyError;

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
    Globals(#[from] crate::restore::globals::GlobalsError),
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

/// Quotes an identifier for SQL.
fn ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
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

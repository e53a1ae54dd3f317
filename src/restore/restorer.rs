//! Restore stage, the running processes: pg_restore alone, or pg_restore feeding psql through
//! a script filter. Invariant: dropping the [`Restorer`] kills them, so nothing they had not
//! committed is left; the filter only leaves out one statement in the script's preamble.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Plan, RestoreError};
use crate::source::dump::{self, DumpError};
use crate::source::process::{Child, LogAs};
use crate::source::tools::ClientTool;

/// The running restore processes: pg_restore alone, or pg_restore feeding psql through the
/// filter. Dropping it kills them, which rolls back whatever they had not committed.
pub(super) struct Restorer {
    children: Vec<Child>,
    filter: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
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
    pub(super) fn start(
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
        });
        let mut pg_restore =
            Child::spawn(&mut cmd, LogAs::PgRestore).map_err(spawn_err(&plan.pg_restore))?;
        let stdin = pg_restore.take_stdin();
        let mut children = vec![];
        let mut filter = None;
        if let Some(psql) = &plan.via_psql {
            let mut cmd = dump::client_command(psql, &plan.server, database);
            cmd.args(["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1"])
                .arg(format!("--dbname={}", dump::conninfo(database)))
                .stdin(Stdio::piped())
                .stdout(Stdio::null());
            let mut psql_child =
                Child::spawn(&mut cmd, LogAs::PgRestore).map_err(spawn_err(psql))?;
            filter = Some(tokio::spawn(filter_script(
                pg_restore.take_stdout().expect("stdout is piped"),
                psql_child.take_stdin().expect("stdin is piped"),
            )));
            children.push(pg_restore);
            children.push(psql_child);
        } else {
            children.push(pg_restore);
        }
        Ok((Restorer { children, filter }, stdin))
    }

    /// Waits for every process; on failure returns the exit status and stderr lines.
    pub(super) async fn wait(mut self) -> Result<(), (String, Vec<String>)> {
        let mut failure = None;
        let mut lines = Vec::new();
        // Drained one by one: dropping this future (a cancel) drops the ones not yet waited
        // for, which kills them.
        for child in self.children.drain(..) {
            match child.wait().await {
                Ok(stderr) => lines.extend(stderr),
                Err(f) => {
                    failure.get_or_insert_with(|| f.exit.noun());
                    lines.extend(f.stderr);
                }
            }
        }
        if let Some(f) = self.filter.take() {
            if let Ok(Err(e)) = f.await {
                failure.get_or_insert_with(|| format!("script filter failed: {e}"));
            }
        }
        match failure {
            None => Ok(()),
            Some(status) => Err((status, lines)),
        }
    }
}

/// Hints for a failed pg_restore's known causes, from its stderr, so the operator gets a way
/// out instead of a wall: missing roles; for an in-place restore (`in_place`), the failures
/// only a new database avoids.
pub(super) fn hint_for(stderr: &[String], has_globals: bool, in_place: bool) -> String {
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

#[cfg(test)]
mod tests {
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
}

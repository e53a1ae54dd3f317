//! Command line: what `pgsidecar` accepts. Parsing only; the command modules carry it out.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Streams PostgreSQL backups to S3 on a schedule and restores them.
#[derive(Debug, Parser)]
#[command(name = "pgsidecar", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML configuration file (default: $PGSIDECAR_CONFIG). Environment variables
    /// PGSIDECAR_<SECTION>__<KEY> override it.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Names under which the binary runs one command directly (`restore latest` is
/// `pgsidecar restore latest`), so that `docker exec sidecar restore latest` works.
pub const MULTI_CALL: &[&str] = &[
    "backup", "restore", "list", "verify", "drill", "prune", "ack", "health",
];

impl Cli {
    /// Parses the process's arguments, dispatching on the name the binary was invoked by.
    pub fn from_args() -> Cli {
        Cli::parse_from(multi_call(std::env::args_os().collect()))
    }
}

/// Inserts the command when the program's name is one of [`MULTI_CALL`].
pub fn multi_call(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let invoked = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .map(str::to_string);
    if let Some(name) = invoked.filter(|n| MULTI_CALL.contains(&n.as_str())) {
        args[0] = "pgsidecar".into();
        args.insert(1, name.into());
    }
    args
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: back up on schedule until SIGTERM (without a schedule: once, then exit).
    Run,
    /// Take a backup now (waits if a scheduled backup of the database is running), then
    /// record it, prune by the job's retention and notify, like a scheduled backup.
    Backup {
        /// The job to back up (needed when several are configured).
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Retry a failed backup as the job's `retry` policy says (default: one attempt).
        #[arg(long)]
        retry: bool,
    },
    /// List complete backups, newest first.
    List {
        /// Print JSON (one array of manifests) instead of a table.
        #[arg(long)]
        json: bool,
        /// Only backups of this job.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Only backups of this database.
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
        /// The point-in-time recovery archive instead: each cluster's base backups and the
        /// window each can be restored to.
        #[arg(long, conflicts_with_all = ["job", "db"])]
        pitr: bool,
    },
    /// Check that a backup can be read back: sha256 and sizes against its manifest,
    /// decompression, and `pg_restore --list`. Never touches a database.
    Verify {
        /// `latest`, a time (the newest backup at or before it), or a key from `list`.
        #[arg(default_value = "latest")]
        backup: String,
        /// Only backups of this job.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Only backups of this database.
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
        /// age identity file that decrypts encrypted backups (default: encryption.identity_file).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// The destination to read from: `primary` or a copy's name (default: the primary,
        /// or the first copy that answers when it cannot be reached).
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    /// Restore a backup. Shows what will happen and asks first (without a terminal: --yes).
    /// By default restores into the backup's own database in one transaction: on any error
    /// nothing changes.
    Restore {
        /// `latest`, a time (the newest backup at or before it), or a key from `list`.
        #[arg(default_value = "latest")]
        backup: String,
        /// The job whose backups to use (needed when several are configured).
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// The database whose backups to use (needed when the job backs up several).
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
        /// Restore into a new database NAME instead; the original is untouched.
        #[arg(long, value_name = "NAME", conflicts_with = "full")]
        target_db: Option<String>,
        /// With --target-db: replace NAME if it exists (it is kept as NAME__pre_restore_<time>).
        #[arg(long, requires = "target_db")]
        replace_target: bool,
        /// Replace the database: restore into a new one, check it, then swap names. The old
        /// database is kept as <db>__pre_restore_<time>.
        #[arg(long)]
        full: bool,
        /// Drop the replaced database after a successful swap instead of keeping it.
        #[arg(long)]
        drop_old: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Do not restore ownership and privileges (for servers without the original roles).
        #[arg(long)]
        no_owner: bool,
        /// Create the roles stored with the backup that the server lacks, before restoring
        /// (needs backups taken with `globals = true`).
        #[arg(long)]
        with_globals: bool,
        /// Allow restoring into `postgres`, `template0` or `template1`.
        #[arg(long)]
        allow_system_database: bool,
        /// Parallel pg_restore jobs (with --full or --target-db; needs a local temp copy).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
        jobs: Option<u32>,
        /// age identity file that decrypts encrypted backups (default: encryption.identity_file).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// The destination to read from: `primary` or a copy's name (default: the primary,
        /// or the first copy that answers when it cannot be reached).
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    /// Acknowledge a backup's size anomaly (it was expected): prune may then rotate the
    /// backup before it away.
    Ack {
        /// `latest`, a time, or a key from `list`.
        #[arg(default_value = "latest")]
        backup: String,
        /// Only backups of this job.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Only backups of this database.
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
    },
    /// Delete the backups the retention policy no longer keeps (and leftovers of interrupted
    /// backups), printing what is kept and why.
    Prune {
        /// Only this job (default: every job with a retention policy).
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Only this database.
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore drill: restore the newest backup into a scratch database, compare its tables
    /// and row counts with the manifest, time it, drop it, and notify.
    Drill {
        /// Only this job.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Only this database.
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
        /// age identity file that decrypts encrypted backups (default: encryption.identity_file).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// The destination to read from: `primary` or a copy's name (default: the primary,
        /// or the first copy that answers when it cannot be reached).
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    /// Copy the backups a destination lacks from another one (object to object, each
    /// checked against its manifest's sha256): how a new copy is filled with what exists.
    Copy {
        /// The destination to fill: a copy's name, or `primary`.
        #[arg(long, value_name = "NAME")]
        to: String,
        /// The destination to read from (default: primary).
        #[arg(long, value_name = "NAME", default_value = "primary")]
        from: String,
        /// Only this job (default: every job).
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Only this database.
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
        /// Say what would be copied; copy nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Point-in-time recovery: preflight, base backups, restore to a moment, removal.
    Pitr {
        #[command(subcommand)]
        command: PitrCommand,
    },
    /// Exit 0 if the daemon runs and every job's newest successful backup is recent enough;
    /// otherwise print why and exit 1.
    Health {
        /// Check only that the daemon runs and updates its status, not the backups' age: for
        /// orchestrators that restart unhealthy containers (a restart cures no stale backup).
        #[arg(long)]
        live: bool,
    },
    /// Print the effective configuration, secrets redacted.
    Config,
}

impl Command {
    /// The `--from` of a command that reads backups (`restore`, `verify`, `drill`).
    pub fn reads_from(&self) -> Option<Option<&str>> {
        match self {
            Command::Restore { from, .. }
            | Command::Verify { from, .. }
            | Command::Drill { from, .. } => Some(from.as_deref()),
            _ => None,
        }
    }
}

/// `pgsidecar pitr …`
#[derive(Debug, Subcommand)]
pub enum PitrCommand {
    /// Check that the server allows WAL archiving (role, pg_hba.conf, settings); each failure
    /// prints the line or statement that fixes it. Exits 1 when one fails.
    Check,
    /// Take a base backup now (the daemon takes them on pitr.base_backup_schedule).
    BaseBackup,
    /// Prepare a data directory recovered to a moment: the base backup is unpacked into DIR,
    /// the WAL it needs is staged beside it and checked (no gap), and recovery is configured.
    /// Start PostgreSQL (the archive's major version) on DIR to replay and promote.
    Restore {
        /// `latest`, or a time with its offset: `2026-11-30 14:05:00+01`.
        #[arg(long, value_name = "TIME")]
        time: String,
        /// The new data directory (absent or empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Where WAL is staged (default: DIR.wal beside DIR).
        #[arg(long, value_name = "DIR")]
        wal_dir: Option<PathBuf>,
        /// The cluster to restore, when the archive holds several.
        #[arg(long, value_name = "ID")]
        system_identifier: Option<u64>,
        /// Owner of what is written, `UID[:GID]` (the server's user; 999 in the official
        /// image).
        #[arg(long, value_name = "UID[:GID]")]
        owner: Option<String>,
        /// age identity file that decrypts the archive.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Delete base backups the `[pitr.retention]` rules do not keep, and the WAL only they
    /// needed; says which base backup anchors which WAL.
    Prune {
        /// Say what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Drop the sidecar's replication slot, so the server stops keeping WAL for it. Stop the
    /// archiving daemon first (it would create the slot again), then run this before removing
    /// the sidecar or turning pitr.enabled off.
    Disable,
    /// Run a point-in-time restore drill now: restore into a scratch directory
    /// (pitr.drill.dir), start PostgreSQL on it, run `pitr verify`'s checks, print the RTO
    /// and RPO, and remove everything. Exits 1 when the drill fails.
    Drill {
        /// `newest`, `random` (a time in a recoverable window), or a time with its offset;
        /// default: pitr.drill.target.
        #[arg(long, value_name = "TIME")]
        time: Option<String>,
        /// age identity file that decrypts the archive (default: encryption.identity_file).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Check a server started on a restored data directory before moving an application to
    /// it: it promoted, belongs to this archive, runs on a new timeline, replayed no commit
    /// after the target, and QUERY (if given) returns true. Waits for replay to finish.
    /// Exits 1 when a check fails.
    Verify {
        /// The restored server's host (the database connection's user, password, database
        /// and TLS settings are used).
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 5432)]
        port: u16,
        /// The time the restore was asked for (`latest`, or a time with its offset).
        #[arg(long, value_name = "TIME", default_value = "latest")]
        time: String,
        /// SQL whose first value must be true, e.g. `SELECT count(*) > 0 FROM orders`.
        #[arg(long, value_name = "SQL")]
        query: Option<String>,
        /// How long to wait for replay to finish and the server to promote.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(multi_call(args.iter().map(Into::into).collect()))
    }

    #[test]
    fn invoked_names_dispatch() {
        let cli = parse(&["/usr/local/bin/restore", "latest", "--yes"]).unwrap();
        assert!(matches!(cli.command, Command::Restore { yes: true, .. }));
        let cli = parse(&["verify"]).unwrap();
        assert!(matches!(cli.command, Command::Verify { ref backup, .. } if backup == "latest"));
        assert!(matches!(
            parse(&["pgsidecar", "list"]).unwrap().command,
            Command::List { .. }
        ));
    }

    #[test]
    fn identity_is_accepted_where_backups_are_read() {
        for cmd in ["restore", "verify", "drill"] {
            let cli = parse(&["pgsidecar", cmd, "--identity", "/run/secrets/age"]).unwrap();
            let identity = match cli.command {
                Command::Restore { identity, .. }
                | Command::Verify { identity, .. }
                | Command::Drill { identity, .. } => identity,
                _ => None,
            };
            assert_eq!(identity, Some(PathBuf::from("/run/secrets/age")), "{cmd}");
        }
        assert!(parse(&["pgsidecar", "backup", "--identity", "x"]).is_err());
    }

    #[test]
    fn restore_flags_are_checked() {
        assert!(parse(&["restore", "--full", "--target-db", "x"]).is_err());
        assert!(parse(&["restore", "--replace-target"]).is_err());
        assert!(parse(&["restore", "--jobs", "0"]).is_err());
    }
}

//! Command line: what `pgsidecar` accepts. Parsing only; [`crate::app`] carries commands out.

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

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: back up on schedule until SIGTERM (without a schedule: once, then exit).
    Run,
    /// Take a backup now (waits if a scheduled backup of the database is running).
    Backup {
        /// The job to back up (needed when several are configured).
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
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
    },
    /// Exit 0 if the daemon runs and every job's newest successful backup is recent enough;
    /// otherwise print why and exit 1.
    Health,
    /// Print the effective configuration, secrets redacted.
    Config,
}

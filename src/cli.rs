//! Command line: what `pgsidecar` accepts. Parsing only; [`crate::app`] carries commands out.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Streams PostgreSQL backups to S3 and restores them.
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
    /// Take a backup now and store it with its manifest.
    Backup,
    /// List complete backups, newest first.
    List {
        /// Print JSON (one array of manifests) instead of a table.
        #[arg(long)]
        json: bool,
        /// Only backups of this database.
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
    },
    /// Print the effective configuration, secrets redacted.
    Config,
}

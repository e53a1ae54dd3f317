//! `pgsidecar restore`: shows the plan, asks, then restores (see [`crate::restore`]).

use std::path::PathBuf;

use super::select::{encryption_with, load_catalog, select};
use super::{CliError, ExitCode};
use crate::restore::{self, Mode, RestoreError};
use crate::sidecar::Sidecar;

/// The command line of `restore` (see `pgsidecar restore --help`).
pub struct Request {
    pub backup: String,
    pub job: Option<String>,
    pub db: Option<String>,
    pub target_db: Option<String>,
    pub replace_target: bool,
    pub full: bool,
    pub drop_old: bool,
    pub yes: bool,
    pub no_owner: bool,
    pub jobs: Option<u32>,
    pub with_globals: bool,
    pub allow_system_database: bool,
    pub identity: Option<PathBuf>,
}

pub async fn run(sidecar: &Sidecar, r: Request) -> Result<ExitCode, CliError> {
    let config = &sidecar.config;
    let job = config.job(r.job.as_deref())?;
    let encryption = encryption_with(config, r.identity.as_deref())?;
    let catalog = load_catalog(sidecar, Some(job.name.clone()), r.db).await?;
    let entry = select(&catalog, &r.backup)?;
    if r.drop_old && !r.full && !r.replace_target {
        return Err(
            RestoreError::Refused("--drop-old needs --full or --replace-target".into()).into(),
        );
    }
    let mode = match (r.full, r.target_db) {
        (_, Some(name)) => Mode::NewDatabase {
            name,
            replace: r.replace_target,
            drop_old: r.drop_old,
        },
        (true, None) => Mode::NewDatabase {
            name: entry.manifest.database.clone(),
            replace: true,
            drop_old: r.drop_old,
        },
        (false, None) => Mode::InPlace,
    };
    let options = restore::Options {
        no_owner: r.no_owner,
        jobs: r.jobs,
        progress: true,
        with_globals: r.with_globals,
        encryption,
        allow_system_database: r.allow_system_database,
        scratch: false,
    };
    let mut server = job.database.clone();
    server.dbname = entry.manifest.database.clone();
    let storage = &sidecar.storage;
    let plan = restore::plan(entry, storage, &server, &config.tools, mode, options).await?;
    plan.confirm(r.yes)?;
    let cancel = crate::shutdown::on_signal();
    let done = restore::execute(&plan, storage, &cancel).await?;
    println!(
        "restored {} into `{}` in {:.1}s: {} tables, {} rows{}",
        entry.manifest.key,
        done.database,
        done.duration.as_secs_f64(),
        done.tables.len(),
        done.rows(),
        match &done.kept_old {
            Some(old) => format!(
                "; the previous database is kept as `{old}` (drop it when no longer needed)"
            ),
            None => String::new(),
        }
    );
    Ok(ExitCode::Success)
}

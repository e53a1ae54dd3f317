//! Runs a parsed command: loads the configuration, builds the adapters (the composition root),
//! and turns the outcome into an exit code and one readable error message.

use std::io::Write;

use crate::catalog;
use crate::cli::{Cli, Command};
use crate::config::{self, Config, Sources};
use crate::exit::ExitCode;
use crate::job::{self, WhenBusy};
use crate::storage::Storage;

/// Runs `cli` to completion.
pub fn run(cli: Cli) -> ExitCode {
    let config = match config::load(&Sources::from_process(cli.config.clone())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::Usage;
        }
    };
    crate::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::Failure;
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if e.downcast_ref::<config::ConfigError>().is_some() {
                ExitCode::Usage
            } else {
                ExitCode::Failure
            }
        }
    }
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Config => {
            print!("{}", config.to_redacted_toml());
            Ok(ExitCode::Success)
        }
        Command::Health => {
            let status = crate::status::Status::read(&config.health.status_file)?;
            let mut problems = status.problems(chrono::Utc::now());
            if !crate::status::pid_alive(status.pid) {
                problems.insert(0, format!("the daemon (pid {}) is not running", status.pid));
            }
            if problems.is_empty() {
                println!("healthy");
                Ok(ExitCode::Success)
            } else {
                for p in problems {
                    println!("unhealthy: {p}");
                }
                Ok(ExitCode::Failure)
            }
        }
        Command::Run => {
            let cancel = crate::shutdown::on_signal();
            let storage = Storage::from_config(&config.storage).await;
            let ok = crate::daemon::run(config, storage, cancel).await;
            Ok(if ok {
                ExitCode::Success
            } else {
                ExitCode::Failure
            })
        }
        Command::Backup { job } => {
            let job = config.job(job.as_deref())?;
            let cancel = crate::shutdown::on_signal();
            let storage = Storage::from_config(&config.storage).await;
            for db in &job.databases {
                let done =
                    job::backup_database(job, &config.tools, &storage, db, WhenBusy::Wait, &cancel)
                        .await?;
                println!("{}", done.manifest.key);
            }
            Ok(ExitCode::Success)
        }
        Command::Verify { backup, job, db } => {
            let storage = Storage::from_config(&config.storage).await;
            let catalog = load_catalog(&config, &storage, job, db).await?;
            let entry = crate::verify::select(&catalog.entries, &backup)
                .ok_or_else(|| crate::verify::VerifyError::NoMatch(backup.clone()))?;
            let done = crate::verify::verify(&storage, &config.tools, entry).await?;
            println!(
                "ok: {} ({} stored, {} raw, {} archive entries, sha256 matches the manifest)",
                entry.manifest.key,
                crate::notify::human_bytes(done.stored_bytes),
                crate::notify::human_bytes(done.raw_bytes),
                done.toc_entries
            );
            Ok(ExitCode::Success)
        }
        Command::List { json, job, db } => {
            let storage = Storage::from_config(&config.storage).await;
            let catalog = load_catalog(&config, &storage, job, db).await?;
            for problem in &catalog.problems {
                tracing::warn!("{problem}");
            }
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &catalog.entries)?;
                writeln!(out)?;
            } else {
                write!(
                    out,
                    "{}",
                    catalog::render_table(&catalog.entries, chrono::Utc::now())
                )?;
            }
            Ok(ExitCode::Success)
        }
    }
}

/// The backups of one job (or all), optionally of one database.
async fn load_catalog(
    config: &Config,
    storage: &Storage,
    job: Option<String>,
    db: Option<String>,
) -> anyhow::Result<catalog::Catalog> {
    let base = match job {
        Some(name) => config.job(Some(&name))?.prefix.clone(),
        None => config.storage.base_prefix(),
    };
    Ok(catalog::load(storage, &base, db.as_deref()).await?)
}

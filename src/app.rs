//! Runs a parsed command: loads the configuration, builds the adapters (the composition root),
//! and turns the outcome into an exit code and one readable error message.

use std::io::Write;

use crate::catalog;
use crate::cli::{Cli, Command};
use crate::config::{self, Config, Sources};
use crate::exit::ExitCode;
use crate::job;
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
        Ok(()) => ExitCode::Success,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::Failure
        }
    }
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Config => {
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Backup => {
            let cancel = crate::shutdown::on_signal();
            let storage = Storage::from_config(&config.storage).await;
            let done = job::backup_database(
                &config,
                &storage,
                &config.database.dbname,
                chrono::Utc::now(),
                &cancel,
            )
            .await?;
            println!("{}", done.manifest.key);
            Ok(())
        }
        Command::List { json, db } => {
            let storage = Storage::from_config(&config.storage).await;
            let base = Storage::base_prefix(&config.storage);
            let catalog = catalog::load(&storage, &base, db.as_deref()).await?;
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
            Ok(())
        }
    }
}

//! Command line: parses arguments ([`args`]), loads the configuration, assembles the sidecar
//! (the composition root) and runs one command, one file each. Every command ends in an
//! [`ExitCode`], and its error is printed once, as one line, through the redaction layer.

mod ack;
mod args;
mod backup;
mod copy;
mod drill;
mod error;
mod exit;
mod health;
mod list;
mod pitr;
mod print_config;
mod prune;
mod restore;
mod run;
mod select;
mod verify;

pub use args::{multi_call, Cli, Command, MULTI_CALL};
pub use error::CliError;
pub use exit::ExitCode;

use crate::config::{self, Sources};
use crate::sidecar::Sidecar;

/// Prints `e` as the one-line error of a command, through the redaction layer.
fn report_error(e: &dyn std::fmt::Display) {
    eprintln!("error: {}", crate::secret::redact(&e.to_string()));
}

/// Runs `cli` to completion.
pub fn run(cli: Cli) -> ExitCode {
    let config = match config::load(&Sources::from_process(cli.config.clone())) {
        Ok(c) => c,
        Err(e) => {
            report_error(&e);
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
            report_error(&e);
            e.exit_code()
        }
    }
}

async fn dispatch(command: Command, config: config::Config) -> Result<ExitCode, CliError> {
    // Commands that need no adapters.
    match command {
        Command::Config => return Ok(print_config::run(&config)),
        Command::Health { live } => return health::run(&config, live),
        _ => {}
    }
    let sidecar = Sidecar::assemble(config).await;
    // Commands that read backups read them from `--from`, or a copy when the primary is down.
    let sidecar = match command.reads_from() {
        Some(from) => select::reading_from(sidecar, from).await?,
        None => sidecar,
    };
    match command {
        Command::Run => Ok(run::run(sidecar).await),
        Command::Backup { job, retry } => backup::run(sidecar, job, retry).await,
        Command::Restore {
            backup,
            job,
            db,
            target_db,
            replace_target,
            full,
            drop_old,
            yes,
            no_owner,
            jobs,
            with_globals,
            allow_system_database,
            identity,
            from: _,
        } => {
            let request = restore::Request {
                backup,
                job,
                db,
                target_db,
                replace_target,
                full,
                drop_old,
                yes,
                no_owner,
                jobs,
                with_globals,
                allow_system_database,
                identity,
            };
            restore::run(&sidecar, request).await
        }
        Command::Ack { backup, job, db } => ack::run(&sidecar, &backup, job, db).await,
        Command::Prune { job, db, dry_run } => prune::run(&sidecar, job, db, dry_run).await,
        Command::Drill {
            job, db, identity, ..
        } => drill::run(sidecar, job, db, identity).await,
        Command::Verify {
            backup,
            job,
            db,
            identity,
            ..
        } => verify::run(&sidecar, &backup, job, db, identity).await,
        Command::Copy {
            to,
            from,
            job,
            db,
            dry_run,
        } => copy::run(&sidecar, &from, &to, job, db, dry_run).await,
        Command::List {
            json, pitr: true, ..
        } => pitr::list(&sidecar, json).await,
        Command::List { json, job, db, .. } => list::run(&sidecar, json, job, db).await,
        Command::Pitr { command } => pitr::run(&sidecar, command).await,
        Command::Config | Command::Health { .. } => unreachable!("handled above"),
    }
}

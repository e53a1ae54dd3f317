//! Runs a parsed command: loads the configuration, builds the adapters (the composition root),
//! and turns the outcome into an exit code and one readable error message.

use std::io::Write;

use futures::StreamExt;

use crate::catalog;
use crate::cli::{Cli, Command};
use crate::config::{self, Config, Sources};
use crate::exit::ExitCode;
use crate::pipeline::backup::{self, WhenBusy};
use crate::restore::{self, Mode, RestoreError};
use crate::storage::Storage;

/// Prints `e` as the one-line error of a command, through the redaction layer.
fn report_error(e: &dyn std::fmt::Display) {
    eprintln!("error: {}", crate::secret::redact(&e.to_string()));
}

/// Prunes `db` after `backup` stored a backup of it. Only that database: another whose
/// newest attempt failed keeps everything it has.
async fn prune_backed_up(
    storage: &Storage,
    job: &crate::pipeline::Job,
    db: &str,
) -> Result<(), crate::prune::PruneError> {
    if job.retention.is_none() {
        return Ok(());
    }
    for r in crate::prune::prune_job(storage, job, Some(db), &|_| false, false).await? {
        if !r.deleted.is_empty() {
            tracing::info!(database = %r.database, count = r.deleted.len(), "pruned old backups");
        }
    }
    Ok(())
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
            let usage = e.downcast_ref::<config::ConfigError>().is_some()
                || e.downcast_ref::<RestoreError>()
                    .is_some_and(RestoreError::is_usage)
                || e.downcast_ref::<crate::verify::VerifyError>()
                    .is_some_and(crate::verify::VerifyError::is_usage);
            if usage {
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
        Command::Health { live } => {
            let status = crate::health::status::Status::read(&config.health.status_file)?;
            let now = chrono::Utc::now();
            let mut problems = if live {
                status.liveness_problems(now)
            } else {
                status.problems(now)
            };
            if !crate::health::status::pid_alive(status.pid) {
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
            ensure_lifecycle(&config, &storage).await;
            let ok =
                crate::daemon::run(config, storage, crate::schedule::Clock::System, cancel).await;
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
            ensure_lifecycle(&config, &storage).await;
            let databases = backup::databases(job).await?;
            let several = databases.len() > 1 || job.databases.iter().any(|d| d == "*");
            let results: Vec<_> = futures::stream::iter(&databases)
                .map(|db| {
                    let (tools, storage, cancel) = (&config.tools, &storage, &cancel);
                    async move {
                        let r = backup::backup_database(
                            job,
                            tools,
                            storage,
                            db,
                            WhenBusy::Wait,
                            cancel,
                        )
                        .await;
                        (db, r)
                    }
                })
                .buffer_unordered(job.max_parallel)
                .collect()
                .await;
            let mut failed = 0;
            for (db, result) in results {
                match result {
                    Ok(done) => {
                        println!("{}", done.manifest.key);
                        // The backup is stored; a prune that fails is reported, not allowed
                        // to hide the other databases' results.
                        if let Err(e) = prune_backed_up(&storage, job, db).await {
                            report_error(&e);
                            failed += 1;
                        }
                    }
                    // With several databases one failure does not stop the others.
                    Err(e) if several => {
                        report_error(&e);
                        failed += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(if failed == 0 {
                ExitCode::Success
            } else {
                ExitCode::Failure
            })
        }
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
        } => {
            let job = config.job(job.as_deref())?;
            let encryption = encryption_with(&config, identity.as_deref())?;
            let storage = Storage::from_config(&config.storage).await;
            let catalog = load_catalog(&config, &storage, Some(job.name.clone()), db).await?;
            let entry = select(&catalog, &backup)?;
            if drop_old && !full && !replace_target {
                return Err(RestoreError::Refused(
                    "--drop-old needs --full or --replace-target".into(),
                )
                .into());
            }
            let mode = match (full, target_db) {
                (_, Some(name)) => Mode::NewDatabase {
                    name,
                    replace: replace_target,
                    drop_old,
                },
                (true, None) => Mode::NewDatabase {
                    name: entry.manifest.database.clone(),
                    replace: true,
                    drop_old,
                },
                (false, None) => Mode::InPlace,
            };
            let options = restore::Options {
                no_owner,
                jobs,
                progress: true,
                with_globals,
                encryption,
                allow_system_database,
                scratch: false,
            };
            let mut server = job.database.clone();
            server.dbname = entry.manifest.database.clone();
            let plan =
                restore::plan(entry, &storage, &server, &config.tools, mode, options).await?;
            plan.confirm(yes)?;
            let cancel = crate::shutdown::on_signal();
            let done = restore::execute(&plan, &storage, &cancel).await?;
            println!(
                "restored {} into `{}` in {:.1}s: {} tables, {} rows{}",
                entry.manifest.key,
                done.database,
                done.duration.as_secs_f64(),
                done.tables.len(),
                done.rows(),
                match &done.kept_old {
                    Some(old) => format!("; the previous database is kept as `{old}` (drop it when no longer needed)"),
                    None => String::new(),
                }
            );
            Ok(ExitCode::Success)
        }
        Command::Ack { backup, job, db } => {
            let storage = Storage::from_config(&config.storage).await;
            let catalog = load_catalog(&config, &storage, job, db).await?;
            let entry = select(&catalog, &backup)?;
            if entry.manifest.anomalies.is_empty() {
                println!(
                    "{} has no size anomaly; nothing to acknowledge",
                    entry.manifest.key
                );
                return Ok(ExitCode::Success);
            }
            let body = serde_json::json!({
                "acknowledged_at": chrono::Utc::now(),
                "anomalies": entry.manifest.anomalies,
            });
            storage
                .put_bytes(
                    &crate::prune::ack_key(entry),
                    bytes::Bytes::from(body.to_string()),
                )
                .await?;
            println!(
                "acknowledged the anomaly of {}; prune may now rotate the backup before it",
                entry.manifest.key
            );
            Ok(ExitCode::Success)
        }
        Command::Prune { job, db, dry_run } => {
            let storage = Storage::from_config(&config.storage).await;
            let jobs: Vec<&crate::pipeline::Job> = match &job {
                Some(name) => vec![config.job(Some(name))?],
                None => config
                    .jobs
                    .iter()
                    .filter(|j| j.retention.is_some())
                    .collect(),
            };
            if jobs.is_empty() {
                return Err(crate::prune::PruneError::NoPolicy(
                    config
                        .jobs
                        .iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
                .into());
            }
            // The daemon's status says whose newest attempt failed; without one, nothing did.
            let status = crate::health::status::Status::read(&config.health.status_file).ok();
            let mut errors = 0;
            for job in jobs {
                let failed_last = |db: &str| {
                    status
                        .as_ref()
                        .is_some_and(|s| s.last_attempt_failed(&job.name, db))
                };
                let reports =
                    crate::prune::prune_job(&storage, job, db.as_deref(), &failed_last, dry_run)
                        .await?;
                errors += reports.iter().map(|r| r.errors.len()).sum::<usize>();
                print!("{}", crate::prune::render(&job.name, &reports, dry_run));
            }
            Ok(if errors == 0 {
                ExitCode::Success
            } else {
                ExitCode::Failure
            })
        }
        Command::Drill { job, db, identity } => {
            let encryption = encryption_with(&config, identity.as_deref())?;
            let storage = Storage::from_config(&config.storage).await;
            let cancel = crate::shutdown::on_signal();
            let jobs: Vec<&crate::pipeline::Job> = match &job {
                Some(name) => vec![config.job(Some(name))?],
                None => config.jobs.iter().collect(),
            };
            let mut failed = 0;
            for job in jobs {
                let job = &crate::pipeline::Job {
                    encryption: encryption.clone(),
                    ..job.clone()
                };
                // Finding the databases of `*` needs the source server; a drill does not, so
                // an unreachable source fails this job's drills only.
                let databases = match backup::databases(job).await {
                    Ok(d) => d,
                    Err(e) => {
                        failed += 1;
                        report_error(&e);
                        continue;
                    }
                };
                for database in databases
                    .iter()
                    .filter(|d| db.as_ref().is_none_or(|x| x == *d))
                {
                    match crate::pipeline::drill::drill(
                        job,
                        &job.drill_server,
                        &config.tools,
                        &storage,
                        database,
                        &cancel,
                    )
                    .await
                    {
                        Ok(report) => println!("ok: {} {}", report.key, report.summary()),
                        Err(e) => {
                            failed += 1;
                            report_error(&e);
                        }
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::Success
            } else {
                ExitCode::Failure
            })
        }
        Command::Verify {
            backup,
            job,
            db,
            identity,
        } => {
            let encryption = encryption_with(&config, identity.as_deref())?;
            let storage = Storage::from_config(&config.storage).await;
            let catalog = load_catalog(&config, &storage, job, db).await?;
            let entry = select(&catalog, &backup)?;
            let done = crate::verify::verify(&storage, &config.tools, entry, &encryption).await?;
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

/// The configured encryption, with the identities of `--identity FILE` when given (it wins
/// over `encryption.identity_file`).
fn encryption_with(
    config: &Config,
    identity: Option<&std::path::Path>,
) -> Result<crate::codec::encryption::Encryption, config::ConfigError> {
    match identity {
        None => Ok(config.encryption.clone()),
        Some(path) => config
            .encryption
            .clone()
            .with_identity_file(path, "--identity")
            .map_err(|e| config::ConfigError::Invalid {
                key: "--identity".into(),
                source_name: None,
                message: e.to_string(),
            }),
    }
}

/// Puts the configured lifecycle rules on the bucket. A store that refuses (a missing
/// permission, no lifecycle support) gets a warning: backups do not depend on it.
async fn ensure_lifecycle(config: &Config, storage: &Storage) {
    use crate::storage::LifecycleChange;
    let Some(lifecycle) = &config.storage.lifecycle else {
        return;
    };
    match storage
        .ensure_lifecycle(lifecycle, &config.storage.base_prefix())
        .await
    {
        Ok(LifecycleChange::Updated) => tracing::info!("bucket lifecycle rules updated"),
        Ok(LifecycleChange::Unchanged) => {
            tracing::debug!("bucket lifecycle rules already in place")
        }
        Ok(LifecycleChange::Unsupported) => {
            tracing::warn!("storage.lifecycle is set, but this storage has no lifecycle rules")
        }
        Err(e) => tracing::warn!("cannot put the lifecycle rules on the bucket: {e}"),
    }
}

/// The backup `selector` names. `latest` and times are ambiguous when the catalog holds
/// several databases: then `--db` is required.
fn select<'a>(catalog: &'a catalog::Catalog, selector: &str) -> anyhow::Result<&'a catalog::Entry> {
    for problem in &catalog.problems {
        tracing::warn!("{problem}");
    }
    let entry = crate::verify::select(&catalog.entries, selector)
        .ok_or_else(|| crate::verify::VerifyError::NoMatch(selector.to_string()))?;
    let mut databases: Vec<&str> = catalog
        .entries
        .iter()
        .map(|e| e.manifest.database.as_str())
        .collect();
    databases.sort_unstable();
    databases.dedup();
    let by_key = entry.manifest.key == selector || entry.manifest_key == selector;
    if databases.len() > 1 && !by_key {
        return Err(RestoreError::Refused(format!(
            "backups of several databases match `{selector}` ({}): choose one with --db NAME",
            databases.join(", ")
        ))
        .into());
    }
    Ok(entry)
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

//! `pgsidecar pitr …` and `pgsidecar list --pitr`.

use std::io::Write;

use super::args::PitrCommand;
use super::select::encryption_with;
use super::{CliError, ExitCode};
use crate::pitr::archive::Archive;
use crate::pitr::restore::{self, Target};
use crate::pitr::server::Primary;
use crate::pitr::{base, check, verify, PitrError};
use crate::sidecar::Sidecar;

pub async fn run(sidecar: &Sidecar, command: PitrCommand) -> Result<ExitCode, CliError> {
    let config = &sidecar.config;
    let pitr = &config.pitr;
    match command {
        PitrCommand::Check => {
            let findings = check::run(pitr, &config.tools).await;
            print_findings(&findings)?;
            Ok(ExitCode::success_if(findings.iter().all(|f| f.ok)))
        }
        PitrCommand::BaseBackup => {
            let primary = Primary::connect(&pitr.database)
                .await
                .map_err(PitrError::from)?;
            let facts = primary.facts().await.map_err(PitrError::from)?;
            let cluster = crate::keys::pitr_cluster_prefix(&pitr.prefix, facts.system_identifier);
            let done = base::take(
                &pitr.database,
                &config.tools,
                &sidecar.storage,
                &cluster,
                &facts,
                &config.encryption,
                &crate::shutdown::on_signal(),
            )
            .await
            .map_err(PitrError::from)?;
            println!("{}", done.key);
            eprintln!(
                "base backup from {} to {} on timeline {}; usable once the WAL up to {} is archived",
                done.start_lsn, done.end_lsn, done.timeline, done.end_lsn
            );
            Ok(ExitCode::Success)
        }
        PitrCommand::Restore {
            time,
            to,
            wal_dir,
            system_identifier,
            owner,
            identity,
        } => {
            let target = parse_target(&time)?;
            let encryption = encryption_with(config, identity.as_deref())?;
            let cancel = crate::shutdown::on_signal();
            let prepared = restore::prepare(&restore::Request {
                cancel: &cancel,
                storage: &sidecar.storage,
                pitr_prefix: &pitr.prefix,
                system_identifier,
                target,
                data_dir: &to,
                wal_dir: wal_dir.as_deref(),
                encryption: &encryption,
                owner: owner.as_deref(),
            })
            .await
            .map_err(PitrError::from)?;
            for w in &prepared.warnings {
                eprintln!("warning: {w}");
            }
            for n in &prepared.notes {
                eprintln!("note: {n}");
            }
            let b = &prepared.base;
            println!(
                "prepared {} from the base backup of {} (PostgreSQL {}, timeline {}) and {} WAL file(s) in {}, the last {}",
                prepared.data_dir.display(),
                b.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                b.server_version,
                b.timeline,
                prepared.staged,
                prepared.wal_dir.display(),
                prepared.last
            );
            println!(
                "next: start PostgreSQL {} on {} (with zstd on its PATH); it replays to {} and promotes",
                b.server_major,
                prepared.data_dir.display(),
                match target {
                    Target::Latest => "the end of the archive".to_string(),
                    Target::Time(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                }
            );
            Ok(ExitCode::success_if(prepared.warnings.is_empty()))
        }
        PitrCommand::Verify {
            host,
            port,
            time,
            query,
            wait,
        } => {
            let target = parse_target(&time)?;
            let server = crate::source::DatabaseConfig {
                host,
                port,
                ..pitr.database.clone()
            };
            let verified = verify::verify(
                &server,
                &verify::Expectation {
                    storage: &sidecar.storage,
                    pitr_prefix: &pitr.prefix,
                    target,
                    query: query.as_deref(),
                    wait,
                },
            )
            .await;
            print_findings(&verified.findings)?;
            Ok(ExitCode::success_if(verified.passed()))
        }
        PitrCommand::Drill { time, identity } => {
            use crate::pitr::drill::{Choice, Drill};
            use crate::pitr::settings::DrillChoice;
            let mut settings = pitr.clone();
            let choice = match time.as_deref() {
                None => Choice::Config,
                Some("newest") => Choice::Target(Target::Latest),
                Some("random") => {
                    settings.drill.target = DrillChoice::Random;
                    Choice::Config
                }
                Some(t) => Choice::Target(parse_target(t)?),
            };
            let encryption = encryption_with(config, identity.as_deref())?;
            let drill = Drill {
                config: &settings,
                tools: &config.tools,
                storage: &sidecar.storage,
                encryption: &encryption,
            };
            match drill.run(choice, &crate::shutdown::on_signal()).await {
                Ok(report) => {
                    print_findings(&report.findings)?;
                    println!("drill passed: {}", report.summary());
                    Ok(ExitCode::Success)
                }
                Err(e) => {
                    println!("drill failed: {}", crate::secret::redact(&e.to_string()));
                    Ok(ExitCode::success_if(false))
                }
            }
        }
        PitrCommand::Prune { dry_run } => {
            let Some(policy) = &pitr.retention else {
                return Err(crate::config::ConfigError::Invalid {
                    key: "pitr.retention".into(),
                    source_name: None,
                    message: "is not set: without rules nothing is pruned (set e.g. PGSIDECAR_PITR__RETENTION__KEEP_LAST)".into(),
                }
                .into());
            };
            let mut failed = false;
            for id in restore::clusters(&sidecar.storage, &pitr.prefix)
                .await
                .map_err(PitrError::from)?
            {
                let (plan, errors) = crate::pitr::prune::prune_cluster(
                    &sidecar.storage,
                    &pitr.prefix,
                    id,
                    policy,
                    pitr.timezone,
                    sidecar.clock.now(),
                    dry_run,
                )
                .await
                .map_err(PitrError::from)?;
                let verb = if dry_run { "would delete" } else { "deleted" };
                println!("cluster {id}:");
                if let Some(why) = &plan.held {
                    println!("  nothing pruned: {why}");
                }
                for k in &plan.kept {
                    println!(
                        "  keep base backup {} ({}): WAL from {}",
                        k.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        k.reasons.join(", "),
                        k.anchors
                    );
                }
                for key in &plan.deleted_bases {
                    println!("  {verb} base backup {key}");
                }
                if !plan.deleted_wal.is_empty() {
                    println!(
                        "  {verb} {} WAL object(s) before {}",
                        plan.deleted_wal.len(),
                        plan.wal_from.as_deref().unwrap_or("-")
                    );
                }
                for e in &errors {
                    super::report_error(&format!("prune: {e}"));
                    failed = true;
                }
            }
            Ok(ExitCode::success_if(!failed))
        }
        PitrCommand::Disable => {
            let primary = Primary::connect(&pitr.database)
                .await
                .map_err(PitrError::from)?;
            if primary
                .drop_slot(&pitr.slot)
                .await
                .map_err(PitrError::from)?
            {
                println!("dropped the replication slot `{}`: the server no longer keeps WAL for pgsidecar", pitr.slot);
            } else {
                println!(
                    "no replication slot `{}` on the server; nothing to do",
                    pitr.slot
                );
            }
            Ok(ExitCode::Success)
        }
    }
}

/// `list --pitr`: per cluster, each base backup and the window it can restore to.
pub async fn list(sidecar: &Sidecar, json: bool) -> Result<ExitCode, CliError> {
    let prefix = &sidecar.config.pitr.prefix;
    let ids = restore::clusters(&sidecar.storage, prefix)
        .await
        .map_err(PitrError::from)?;
    let mut rows = Vec::new();
    for id in ids {
        let cluster = crate::keys::pitr_cluster_prefix(prefix, id);
        let archive = Archive::load(&sidecar.storage, &cluster, None)
            .await
            .map_err(PitrError::from)?;
        for problem in &archive.problems {
            tracing::warn!("{problem}");
        }
        for b in archive.base_backups.iter().rev() {
            let (reaches, note) = match archive.reach(b) {
                Ok(r) => {
                    let last = match (&r.partial, r.complete_to) {
                        (Some((seg, _, _)), _) => {
                            format!(
                                "{} (partial)",
                                b.wal_segment_size.file_name(b.timeline, *seg)
                            )
                        }
                        (None, Some(seg)) => b.wal_segment_size.file_name(b.timeline, seg),
                        (None, None) => "-".into(),
                    };
                    let mut window = match r.last_stored_at {
                        Some(at) => {
                            format!("to {last}, stored {}", at.format("%Y-%m-%d %H:%M:%S UTC"))
                        }
                        None => format!("to {last}"),
                    };
                    if let Some(gap) = &r.gap_after {
                        window.push_str(&format!(" (then WAL segment {gap} is missing)"));
                    }
                    (true, window)
                }
                Err(gap) => (
                    false,
                    format!("not restorable: WAL segment {} is missing", gap.missing),
                ),
            };
            rows.push(serde_json::json!({
                "system_identifier": id.to_string(),
                "base_backup": b.key,
                "started_at": b.started_at,
                "from": b.finished_at,
                "timeline": b.timeline,
                "server_version": b.server_version,
                "stored_bytes": b.stored_bytes,
                "restorable": reaches,
                "window": note,
            }));
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else if rows.is_empty() {
        writeln!(out, "no point-in-time recovery archive under `{prefix}/`")?;
    } else {
        for r in &rows {
            writeln!(
                out,
                "{}  base {}  PostgreSQL {}  timeline {}  {} {}  {}",
                r["system_identifier"].as_str().unwrap_or_default(),
                r["started_at"].as_str().unwrap_or_default(),
                r["server_version"].as_str().unwrap_or_default(),
                r["timeline"],
                if r["restorable"] == true {
                    "restorable from"
                } else {
                    "NOT restorable; finished"
                },
                r["from"].as_str().unwrap_or_default(),
                r["window"].as_str().unwrap_or_default()
            )?;
        }
    }
    Ok(ExitCode::Success)
}

fn parse_target(time: &str) -> Result<Target, CliError> {
    time.parse().map_err(|message| {
        crate::config::ConfigError::Invalid {
            key: "--time".into(),
            source_name: None,
            message,
        }
        .into()
    })
}

/// One `ok`/`FAIL` line per finding, with its fix.
fn print_findings(findings: &[check::Finding]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for f in findings {
        writeln!(out, "{} {}", if f.ok { "ok  " } else { "FAIL" }, f.what)?;
        if let Some(fix) = f.fix.as_deref().filter(|f| !f.is_empty()) {
            writeln!(out, "     fix: {fix}")?;
        }
    }
    Ok(())
}

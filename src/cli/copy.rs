//! `pgsidecar copy`: fills one destination with the backups another holds and it lacks.

use super::select::unknown_destination;
use super::{report_error, CliError, ExitCode};
use crate::catalog::copy::{copy_missing, Side};
use crate::config::ConfigError;
use crate::sidecar::Sidecar;

pub async fn run(
    sidecar: &Sidecar,
    from: &str,
    to: &str,
    job: Option<String>,
    db: Option<String>,
    dry_run: bool,
) -> Result<ExitCode, CliError> {
    let config = &sidecar.config;
    if from == to {
        return Err(ConfigError::Invalid {
            key: "--to".into(),
            source_name: None,
            message: format!("`{to}` is also --from: copy between two destinations"),
        }
        .into());
    }
    let from_store = sidecar
        .store(from)
        .ok_or_else(|| unknown_destination(sidecar, from, "--from"))?;
    let to_store = sidecar
        .store(to)
        .ok_or_else(|| unknown_destination(sidecar, to, "--to"))?;
    let jobs = match &job {
        Some(name) => vec![config.job(Some(name))?],
        None => config.jobs.iter().collect(),
    };
    let cancel = crate::shutdown::on_signal();
    let (mut copied, mut present, mut failed) = (0, 0, 0);
    for job in jobs {
        let placements = job.placements();
        let prefix_in = |name: &str| {
            placements
                .iter()
                .find(|p| p.destination == name)
                .map(|p| p.prefix.clone())
                .expect("every destination has a placement")
        };
        let (from_prefix, to_prefix) = (prefix_in(from), prefix_in(to));
        let report = copy_missing(
            &Side {
                name: from,
                storage: from_store,
                prefix: &from_prefix,
            },
            &Side {
                name: to,
                storage: to_store,
                prefix: &to_prefix,
            },
            db.as_deref(),
            dry_run,
            &cancel,
        )
        .await?;
        for problem in &report.problems {
            tracing::warn!("{problem}");
        }
        for (key, bytes) in &report.copied {
            let verb = if dry_run { "would copy" } else { "copied" };
            println!("{verb} {key} ({bytes} bytes)");
        }
        for (key, why) in &report.failed {
            report_error(&format!("cannot copy `{key}`: {why}"));
        }
        copied += report.copied.len();
        present += report.present;
        failed += report.failed.len();
    }
    let verb = if dry_run { "to copy" } else { "copied" };
    println!("copy from {from} to {to}: {copied} {verb}, {present} already there, {failed} failed");
    Ok(ExitCode::success_if(failed == 0))
}

//! `pgsidecar drill`: restore drills now, through the same loop as scheduled ones.

use std::path::PathBuf;

use super::select::encryption_with;
use super::{report_error, CliError, ExitCode};
use crate::pipeline::drill::run_drills;
use crate::pipeline::Job;
use crate::sidecar::Sidecar;

pub async fn run(
    sidecar: Sidecar,
    job: Option<String>,
    db: Option<String>,
    identity: Option<PathBuf>,
) -> Result<ExitCode, CliError> {
    let encryption = encryption_with(&sidecar.config, identity.as_deref())?;
    let jobs: Vec<Job> = match &job {
        Some(name) => vec![sidecar.config.job(Some(name))?.clone()],
        None => sidecar.config.jobs.clone(),
    }
    .into_iter()
    .map(|j| Job {
        encryption: encryption.clone(),
        ..j
    })
    .collect();
    let (_, ctx) = sidecar.command_context(crate::shutdown::on_signal());
    let results = run_drills(&ctx, &jobs, db.as_deref()).await;
    ctx.notify.flush(crate::notify::FLUSH_LIMIT).await;
    let mut failed = 0;
    for (_, _, result) in results {
        match result {
            Ok(report) => println!("ok: {} {}", report.key, report.summary()),
            Err(e) => {
                failed += 1;
                report_error(&e);
            }
        }
    }
    Ok(ExitCode::success_if(failed == 0))
}

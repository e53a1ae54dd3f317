//! `pgsidecar prune`: applies each job's retention and prints what is kept and why.

use super::{CliError, ExitCode};
use crate::health::status::Status;
use crate::pipeline::Job;
use crate::retention::prune::{prune_job, render, PruneError};
use crate::sidecar::Sidecar;

pub async fn run(
    sidecar: &Sidecar,
    job: Option<String>,
    db: Option<String>,
    dry_run: bool,
) -> Result<ExitCode, CliError> {
    let config = &sidecar.config;
    let jobs: Vec<&Job> = match &job {
        Some(name) => vec![config.job(Some(name))?],
        None => config
            .jobs
            .iter()
            .filter(|j| j.retention.is_some())
            .collect(),
    };
    if jobs.is_empty() {
        let names: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
        return Err(PruneError::NoPolicy(names.join(", ")).into());
    }
    // The daemon's status says whose newest attempt failed; without one, nothing did.
    let status = Status::read(&config.health.status_file).ok();
    let mut errors = 0;
    for job in jobs {
        let failed_last = |db: &str| {
            status
                .as_ref()
                .is_some_and(|s| s.last_attempt_failed(&job.name, db))
        };
        let reports = prune_job(
            &sidecar.storage,
            job.prune_scope(),
            db.as_deref(),
            &failed_last,
            dry_run,
            sidecar.clock.now(),
        )
        .await?;
        errors += reports.iter().map(|r| r.errors.len()).sum::<usize>();
        print!("{}", render(&job.name, &reports, dry_run));
    }
    Ok(ExitCode::success_if(errors == 0))
}

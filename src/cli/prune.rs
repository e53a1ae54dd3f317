//! `pgsidecar prune`: applies each job's retention, in every destination by that
//! destination's own, and prints what is kept and why.

use super::{report_error, CliError, ExitCode};
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
    let has_policy = |j: &&Job| j.placements().iter().any(|p| p.retention.is_some());
    let jobs: Vec<&Job> = match &job {
        Some(name) => vec![config.job(Some(name))?],
        None => config.jobs.iter().filter(has_policy).collect(),
    };
    if jobs.is_empty() || !jobs.iter().all(has_policy) {
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
        // Each destination by its own retention; one without any is left as it is.
        for place in job.placements() {
            let (Some(storage), Some(_)) = (sidecar.store(&place.destination), &place.retention)
            else {
                continue;
            };
            let pruned = prune_job(
                storage,
                job.prune_scope_in(&place),
                db.as_deref(),
                &failed_last,
                dry_run,
                sidecar.clock.now(),
            )
            .await;
            let reports = match pruned {
                Ok(r) => r,
                // Without copies this is the command's error, as it always was; with them,
                // one destination that cannot be read must not keep the others unpruned.
                Err(e) if job.copies.is_empty() => return Err(e.into()),
                Err(e) => {
                    report_error(&format!("{} in {}: {e}", job.name, place.destination));
                    errors += 1;
                    continue;
                }
            };
            errors += reports.iter().map(|r| r.errors.len()).sum::<usize>();
            let label = if job.copies.is_empty() {
                job.name.clone()
            } else {
                format!("{} in {}", job.name, place.destination)
            };
            print!("{}", render(&label, &reports, dry_run));
        }
    }
    Ok(ExitCode::success_if(errors == 0))
}

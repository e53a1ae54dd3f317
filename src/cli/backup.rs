//! `pgsidecar backup`: one backup of every database of a job now, through the same pipeline
//! and tail as a scheduled one (status, retention, notification). Exits 1 when a backup
//! failed or its retention could not be applied.

use super::{report_error, CliError, ExitCode};
use crate::pipeline::{run::run_job, Trigger};
use crate::sidecar::Sidecar;

pub async fn run(sidecar: Sidecar, job: Option<String>, retry: bool) -> Result<ExitCode, CliError> {
    sidecar.config.job(job.as_deref())?;
    sidecar.ensure_lifecycle().await;
    let (config, ctx) = sidecar.command_context(crate::shutdown::on_signal());
    let job = config.job(job.as_deref())?;
    let outcomes = run_job(&ctx, job, Trigger::Manual { retry }).await;
    ctx.notify.flush(crate::notify::FLUSH_LIMIT).await;
    let mut failed = 0;
    // One failing database never hides the others' results.
    for outcome in outcomes? {
        match outcome.result {
            Ok(done) => {
                println!("{}", done.manifest.key);
                for (name, m) in done.stored.iter().skip(1) {
                    say(&format!("stored in {name}: {}", m.key));
                }
                // `destinations.policy = "any"`: the backup counts, and the gap is said.
                for f in &done.failed {
                    say(&format!(
                        "warning: not stored in `{}`: {}",
                        f.destination,
                        crate::secret::redact(&f.error)
                    ));
                }
                // The backup is stored, but a retention policy that is not applied fills the
                // store: the run is not a clean success.
                for e in &outcome.prune_errors {
                    report_error(&format!("{}: {e}", outcome.database));
                    failed += 1;
                }
            }
            Err(e) => {
                report_error(&e);
                failed += 1;
            }
        }
    }
    Ok(ExitCode::success_if(failed == 0))
}

/// One line on stderr in one write: stderr is unbuffered, and a line written in pieces can be
/// split by the key printed on stdout where both reach one stream (`docker exec`).
fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

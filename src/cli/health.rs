//! `pgsidecar health`: the container's HEALTHCHECK, read from the daemon's status file.

use super::{CliError, ExitCode};
use crate::config::Config;
use crate::health::status::{pid_alive, Status};
use crate::schedule::Clock;

pub fn run(config: &Config, live: bool) -> Result<ExitCode, CliError> {
    let status = Status::read(&config.health.status_file)?;
    let now = Clock::System.now();
    let mut problems = if live {
        status.liveness_problems(now)
    } else {
        status.problems(now)
    };
    if status.pid == 0 {
        // Only commands run by hand have written the file (see `health::Board`).
        problems.insert(0, "no daemon has run: start `pgsidecar run`".to_string());
    } else if !pid_alive(status.pid) {
        problems.insert(0, format!("the daemon (pid {}) is not running", status.pid));
    }
    if problems.is_empty() {
        println!("healthy");
        return Ok(ExitCode::Success);
    }
    for p in problems {
        println!("unhealthy: {p}");
    }
    Ok(ExitCode::Failure)
}

//! `pgsidecar list`: complete backups, newest first, as a table or JSON.

use std::io::Write;

use super::select::load_catalog;
use super::{CliError, ExitCode};
use crate::sidecar::Sidecar;

pub async fn run(
    sidecar: &Sidecar,
    json: bool,
    job: Option<String>,
    db: Option<String>,
) -> Result<ExitCode, CliError> {
    let catalog = load_catalog(sidecar, job, db).await?;
    for problem in &catalog.problems {
        tracing::warn!("{problem}");
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &catalog.entries).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        let table = crate::catalog::render_table(&catalog.entries, sidecar.clock.now());
        write!(out, "{table}")?;
    }
    Ok(ExitCode::Success)
}

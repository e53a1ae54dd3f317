//! `pgsidecar verify`: reads a backup back and checks it against its manifest.

use std::path::PathBuf;

use super::select::{encryption_with, load_catalog, select};
use super::{CliError, ExitCode};
use crate::notify::human_bytes;
use crate::sidecar::Sidecar;

pub async fn run(
    sidecar: &Sidecar,
    backup: &str,
    job: Option<String>,
    db: Option<String>,
    identity: Option<PathBuf>,
) -> Result<ExitCode, CliError> {
    let encryption = encryption_with(&sidecar.config, identity.as_deref())?;
    let catalog = load_catalog(sidecar, job, db).await?;
    let entry = select(&catalog, backup)?;
    let done =
        crate::restore::verify::verify(&sidecar.storage, &sidecar.config.tools, entry, &encryption)
            .await?;
    println!(
        "ok: {} ({} stored, {} raw, {} archive entries, sha256 matches the manifest)",
        entry.manifest.key,
        human_bytes(done.stored_bytes),
        human_bytes(done.raw_bytes),
        done.toc_entries
    );
    Ok(ExitCode::Success)
}

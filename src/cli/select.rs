//! Command line: what several commands share: choosing a backup, loading a catalog, and the
//! `--identity` that decrypts.

use std::path::Path;

use super::CliError;
use crate::catalog::{self, Catalog, Entry};
use crate::codec::encryption::Encryption;
use crate::config::{Config, ConfigError};
use crate::restore::verify::VerifyError;
use crate::restore::RestoreError;
use crate::sidecar::Sidecar;

/// The configured encryption, with the identities of `--identity FILE` when given (it wins
/// over `encryption.identity_file`).
pub fn encryption_with(
    config: &Config,
    identity: Option<&Path>,
) -> Result<Encryption, ConfigError> {
    match identity {
        None => Ok(config.encryption.clone()),
        Some(path) => config
            .encryption
            .clone()
            .with_identity_file(path, "--identity")
            .map_err(|e| ConfigError::Invalid {
                key: "--identity".into(),
                source_name: None,
                message: e.to_string(),
            }),
    }
}

/// The backup `selector` names. `latest` and times are ambiguous when the catalog holds
/// several databases: then `--db` is required.
pub fn select<'a>(catalog: &'a Catalog, selector: &str) -> Result<&'a Entry, CliError> {
    for problem in &catalog.problems {
        tracing::warn!("{problem}");
    }
    let entry = crate::restore::verify::select(&catalog.entries, selector)
        .ok_or_else(|| VerifyError::NoMatch(selector.to_string()))?;
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
pub async fn load_catalog(
    sidecar: &Sidecar,
    job: Option<String>,
    db: Option<String>,
) -> Result<Catalog, CliError> {
    let base = match job {
        Some(name) => sidecar.config.job(Some(&name))?.prefix.clone(),
        None => sidecar.config.storage.base_prefix(),
    };
    Ok(catalog::load(&sidecar.storage, &base, db.as_deref()).await?)
}

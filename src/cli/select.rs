//! Command line: what several commands share: choosing a backup, loading a catalog, the
//! `--identity` that decrypts, and the destination (`--from`) backups are read from.

use std::path::Path;

use super::CliError;
use crate::catalog::{self, Catalog, Entry};
use crate::codec::encryption::Encryption;
use crate::config::{Config, ConfigError};
use crate::restore::verify::VerifyError;
use crate::restore::RestoreError;
use crate::sidecar::Sidecar;
use crate::storage::StorageError;

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

/// The sidecar reading backups from destination `from` in place of the primary (its store,
/// and each job's prefix and retention there). Without `from`: the primary, or, when it cannot
/// be reached, the first copy that can, said on stderr.
pub async fn reading_from(sidecar: Sidecar, from: Option<&str>) -> Result<Sidecar, CliError> {
    use crate::pipeline::destinations::PRIMARY;
    match from {
        Some(PRIMARY) => Ok(sidecar),
        Some(name) => switch_to(sidecar, name),
        None if sidecar.copies.is_empty() => Ok(sidecar),
        None => {
            let Err(e) = probe(&sidecar.storage, &sidecar.config.storage.base_prefix()).await
            else {
                return Ok(sidecar);
            };
            for (i, copy) in sidecar.config.copies.iter().enumerate() {
                if probe(&sidecar.copies[i].storage, &copy.storage.base_prefix())
                    .await
                    .is_ok()
                {
                    let name = copy.name.clone();
                    eprintln!(
                        "note: primary storage cannot be reached ({}); reading from copy `{name}` (choose with --from)",
                        crate::secret::redact(&e.to_string())
                    );
                    return switch_to(sidecar, &name);
                }
            }
            Ok(sidecar)
        }
    }
}

/// Whether a store answers: a listing under its prefix that finds nothing.
async fn probe(storage: &crate::storage::Storage, base: &str) -> Result<(), StorageError> {
    let key = crate::keys::join_prefix(base, ".pgsidecar-probe/");
    storage.list(&key).await.map(|_| ())
}

fn switch_to(mut sidecar: Sidecar, name: &str) -> Result<Sidecar, CliError> {
    let Some(i) = sidecar.copies.iter().position(|c| c.name == name) else {
        return Err(unknown_destination(&sidecar, name, "--from"));
    };
    let copy = sidecar.copies.remove(i);
    sidecar.storage = copy.storage;
    let config = &mut sidecar.config;
    let copy_config = config.copies.remove(i);
    config.storage = copy_config.storage;
    for job in &mut config.jobs {
        if let Some(place) = job.copies.iter().find(|p| p.destination == name).cloned() {
            *job = job.in_destination(&place);
        }
    }
    Ok(sidecar)
}

/// The error for a destination name (`flag`'s value) that is not configured.
pub fn unknown_destination(sidecar: &Sidecar, name: &str, flag: &str) -> CliError {
    ConfigError::Invalid {
        key: flag.into(),
        source_name: None,
        message: format!(
            "no destination `{name}`; the destinations are: {}",
            sidecar.destination_names().join(", ")
        ),
    }
    .into()
}

//! `pgsidecar list`: complete backups, newest first, as a table or JSON. With copies
//! configured, every destination is read, and each backup says which hold it.

use std::io::Write;

use super::select::load_catalog;
use super::{CliError, ExitCode};
use crate::catalog::{self, Catalog, Entry};
use crate::sidecar::Sidecar;

pub async fn run(
    sidecar: &Sidecar,
    json: bool,
    job: Option<String>,
    db: Option<String>,
) -> Result<ExitCode, CliError> {
    let catalog = if sidecar.copies.is_empty() {
        load_catalog(sidecar, job, db).await?
    } else {
        every_destination(sidecar, job, db).await?
    };
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

/// The backups of every destination, one entry per backup (the first destination's, the
/// primary's when it holds it) naming all that hold it. A destination that cannot be read is
/// warned about; only when none can is it an error.
async fn every_destination(
    sidecar: &Sidecar,
    job: Option<String>,
    db: Option<String>,
) -> Result<Catalog, CliError> {
    let job = match &job {
        Some(name) => Some(sidecar.config.job(Some(name))?),
        None => None,
    };
    let mut bases = vec![(
        crate::storage::PRIMARY.to_string(),
        &sidecar.storage,
        sidecar.config.storage.base_prefix(),
    )];
    for (c, d) in sidecar.config.copies.iter().zip(&sidecar.copies) {
        bases.push((c.name.clone(), &d.storage, c.storage.base_prefix()));
    }
    let mut merged = Catalog::default();
    // Backups are matched by their key below their destination's prefix.
    let mut by_rest: std::collections::BTreeMap<String, usize> = Default::default();
    let mut first_error = None;
    let mut read_any = false;
    for (name, storage, base) in bases {
        let prefix = match job {
            Some(j) => crate::keys::join_prefix(&base, &j.sub_prefix),
            None => base.clone(),
        };
        let found = match catalog::load(storage, &prefix, db.as_deref()).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "warning: cannot read destination `{name}`: {}",
                    crate::secret::redact(&e.to_string())
                );
                first_error.get_or_insert(e);
                continue;
            }
        };
        read_any = true;
        merged.problems.extend(found.problems);
        for entry in found.entries {
            let rest = entry
                .manifest_key
                .strip_prefix(base.as_str())
                .unwrap_or(&entry.manifest_key)
                .trim_start_matches('/')
                .to_string();
            match by_rest.get(&rest) {
                Some(&i) => merged.entries[i].destinations.push(name.clone()),
                None => {
                    by_rest.insert(rest, merged.entries.len());
                    merged.entries.push(Entry {
                        destinations: vec![name.clone()],
                        ..entry
                    });
                }
            }
        }
    }
    if let (false, Some(e)) = (read_any, first_error) {
        return Err(e.into());
    }
    merged
        .entries
        .sort_by_key(|e| std::cmp::Reverse(e.manifest.started_at));
    Ok(merged)
}

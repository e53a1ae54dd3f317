//! Catalog: the backups that exist, read from manifests only. An object without a manifest is
//! not a backup; a manifest that cannot be read, or whose object is gone, is reported as a
//! problem naming its key instead of failing the whole listing.

pub mod anomaly;
pub mod copy;
pub mod manifest;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::keys::MANIFEST_SUFFIX;
use crate::storage::{Storage, StorageError};
use manifest::Manifest;

/// One backup.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub manifest_key: String,
    #[serde(flatten)]
    pub manifest: Manifest,
    /// The destinations that hold it, when several were read (`list`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
}

/// The backups under a prefix, newest first, and what could not be read.
#[derive(Debug, Default)]
pub struct Catalog {
    pub entries: Vec<Entry>,
    pub problems: Vec<String>,
}

/// Reads every manifest under `base` (or only those of `database`).
pub async fn load(
    storage: &Storage,
    base: &str,
    database: Option<&str>,
) -> Result<Catalog, StorageError> {
    let prefix = match database {
        Some(db) => crate::keys::database_prefix(base, db),
        None if base.is_empty() => String::new(),
        None => format!("{base}/"),
    };
    let objects = storage.list(&prefix).await?;
    let mut catalog = Catalog::default();
    for object in objects.iter().filter(|o| o.key.ends_with(MANIFEST_SUFFIX)) {
        let bytes = match storage.get_bytes(&object.key).await {
            Ok(b) => b,
            Err(e) => {
                catalog.problems.push(e.to_string());
                continue;
            }
        };
        match Manifest::parse(&object.key, &bytes) {
            Ok(m) => {
                let missing: Vec<&str> = m
                    .objects
                    .iter()
                    .filter(|p| !objects.iter().any(|o| o.key == p.key))
                    .map(|p| p.key.as_str())
                    .collect();
                // Prune deletes what a manifest names. pgsidecar names every object after its
                // manifest, so a manifest naming any other key (edited by hand, or copied from
                // elsewhere) must not get that object deleted: it is no backup of ours.
                let foreign: Vec<&str> = m
                    .objects
                    .iter()
                    .map(|p| p.key.as_str())
                    .chain(m.globals.as_ref().map(|g| g.key.as_str()))
                    .filter(|k| crate::keys::manifest_key(k) != object.key)
                    .collect();
                let rejected = if !foreign.is_empty() {
                    Some(format!(
                        "names object(s) that are not its own: {}",
                        foreign.join(", ")
                    ))
                } else if !missing.is_empty() {
                    Some(format!(
                        "refers to missing object(s) {}",
                        missing.join(", ")
                    ))
                } else {
                    None
                };
                match rejected {
                    Some(why) => catalog.problems.push(format!(
                        "manifest `{}` {why}; it is not listed as a backup",
                        object.key
                    )),
                    None => catalog.entries.push(Entry {
                        manifest_key: object.key.clone(),
                        manifest: m,
                        destinations: Vec::new(),
                    }),
                }
            }
            Err(e) => catalog.problems.push(e.to_string()),
        }
    }
    catalog
        .entries
        .sort_by_key(|e| std::cmp::Reverse(e.manifest.started_at));
    Ok(catalog)
}

/// A short age such as `3h05m`.
pub fn human_age(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The table `list` prints, newest first; `now` is passed in so the ages are testable.
/// With several destinations read, an `IN` column names those holding each backup.
pub fn render_table(entries: &[Entry], now: DateTime<Utc>) -> String {
    let with_in = entries.iter().any(|e| !e.destinations.is_empty());
    let mut header = vec![
        "STARTED (UTC)",
        "AGE",
        "DATABASE",
        "STORED",
        "RAW",
        "DURATION",
    ];
    if with_in {
        header.push("IN");
    }
    header.push("KEY");
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let m = &e.manifest;
            let mut row = vec![
                m.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                human_age(now - m.started_at),
                m.database.clone(),
                crate::notify::human_bytes(m.stored_bytes),
                crate::notify::human_bytes(m.raw_bytes),
                format!("{:.1}s", m.duration_ms as f64 / 1000.0),
            ];
            if with_in {
                row.push(e.destinations.join(","));
            }
            row.push(m.key.clone());
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = *w));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.clone());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("(no backups)\n");
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    // Golden files in snapshots/: after a deliberate change, `INSTA_UPDATE=always cargo test --lib catalog` rewrites them; review `git diff`.
    use super::*;
    use crate::codec::Compression;
    use crate::storage::StoredPiece;

    pub(crate) fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    /// A complete, unencrypted backup of `database` by job `prod`, begun at `started`.
    pub(crate) fn entry(
        database: &str,
        started: &str,
        stored_bytes: u64,
        raw_bytes: u64,
        duration_ms: u64,
    ) -> Entry {
        let started_at = at(started);
        let key = crate::keys::dump_key(
            "prod",
            database,
            started_at,
            Compression::Zstd { level: 3 },
            false,
        );
        Entry {
            destinations: Vec::new(),
            manifest_key: crate::keys::manifest_key(&key),
            manifest: Manifest {
                format: manifest::FORMAT.into(),
                format_version: manifest::PLAIN_FORMAT_VERSION,
                tool_version: "0.1.0".into(),
                job: "prod".into(),
                database: database.into(),
                host: "db".into(),
                port: 5432,
                server_version: "17.2".into(),
                server_major: 17,
                pg_dump_version: "17.2".into(),
                pg_dump_major: 17,
                dump_format: "custom".into(),
                started_at,
                finished_at: started_at + chrono::TimeDelta::milliseconds(duration_ms as i64),
                duration_ms,
                database_size_bytes: raw_bytes * 2,
                raw_bytes,
                stored_bytes,
                compression: Compression::Zstd { level: 3 },
                encryption: None,
                sha256: "0".repeat(64),
                key: key.clone(),
                objects: vec![StoredPiece {
                    key,
                    size: stored_bytes,
                }],
                globals: None,
                tables: None,
                anomalies: vec![],
                database_properties: None,
            },
        }
    }

    /// What `list` prints: ages in every unit, sizes in every unit, a name wider than its
    /// column's header and one with non-ASCII letters (columns are padded by characters).
    #[test]
    fn golden_list_table() {
        let now = at("2026-11-24T12:00:00Z");
        let entries = [
            entry("app", "2026-11-24T11:59:30Z", 900, 4_000, 1_234),
            entry(
                "app",
                "2026-11-24T11:15:00Z",
                3 * 1024 * 1024,
                40 << 20,
                83_400,
            ),
            entry("café", "2026-11-24T02:00:00Z", 512 * 1024, 2 << 20, 5_000),
            entry(
                "analytics_warehouse",
                "2026-11-20T02:00:00Z",
                7 << 30,
                33 << 30,
                3_725_000,
            ),
        ];
        insta::assert_snapshot!("list", render_table(&entries, now));
        insta::assert_snapshot!("list_empty", render_table(&[], now));
    }
}

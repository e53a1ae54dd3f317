//! Manifest: the record that makes a stored dump a backup. Written only after the dump object
//! is complete and checked; `list`, `restore` and retention read manifests only, so an object
//! without one (a crash mid-upload) is never mistaken for a backup.
//!
//! Also the one place that names keys: `<prefix>/<database>/<UTC timestamp>.dump.zst` (with
//! `.age` appended when encrypted) and the manifest
//! `<prefix>/<database>/<UTC timestamp>.manifest.json` beside it.

use crate::codec::encryption::EncryptionRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::Compression;
use crate::storage::StoredPiece;

/// Value of the `format` field; anything else under the prefix is not ours.
pub const FORMAT: &str = "pgsidecar-manifest";
/// Bumped when a field changes meaning; readers refuse versions they do not know. Version 2
/// added [`Manifest::encryption`]: encrypted backups are written as version 2, so that a
/// pgsidecar from before encryption refuses them (asking for an upgrade) instead of taking
/// the encrypted bytes for a damaged archive. Unencrypted backups stay version 1.
pub const FORMAT_VERSION: u32 = 2;
/// The version of manifests of unencrypted backups, which every release reads.
pub const PLAIN_FORMAT_VERSION: u32 = 1;

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest `{key}` is not valid JSON: {cause}")]
    Json { key: String, cause: String },
    #[error("`{key}` is not a pgsidecar manifest (format `{format}`)")]
    Foreign { key: String, format: String },
    #[error("manifest `{key}` has format version {version}; this pgsidecar reads versions up to {FORMAT_VERSION}: upgrade pgsidecar")]
    Version { key: String, version: u32 },
}

/// Everything known about one complete backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// pgsidecar's version that took the backup.
    pub tool_version: String,
    pub job: String,
    pub database: String,
    /// Server host and port (never credentials).
    pub host: String,
    pub port: u16,
    pub server_version: String,
    pub server_major: u32,
    pub pg_dump_version: String,
    pub pg_dump_major: u32,
    /// pg_dump's archive format: always `custom`.
    pub dump_format: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// `pg_database_size` when the backup started.
    pub database_size_bytes: u64,
    /// Bytes pg_dump wrote.
    pub raw_bytes: u64,
    /// Bytes stored (after compression and encryption), over all pieces.
    pub stored_bytes: u64,
    pub compression: Compression,
    /// How the stored objects (dump and globals) are encrypted; absent: they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionRecord>,
    /// sha256 of the stored bytes (encrypted, when encrypted), all pieces concatenated in order.
    pub sha256: String,
    /// Key of the first (usually only) piece.
    pub key: String,
    /// Every stored object, in order.
    pub objects: Vec<StoredPiece>,
    /// Roles, memberships and tablespaces of the server, when the job stores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<Globals>,
    /// Exact row count of every table, taken in pg_dump's snapshot. Absent when they could not
    /// be counted there (no snapshot could be exported, or the count failed) and in manifests
    /// of earlier versions: an absent list means "not known", never "no tables".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<crate::source::tables::TableRows>>,
    /// What shrank compared with the previous backup ([`crate::catalog::anomaly`]); empty when nothing
    /// did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<String>,
    /// The database's encoding, locale, owner, privileges, settings and comment at backup
    /// time ([`crate::source::properties`]), given back to every database a restore creates. Absent in
    /// manifests of earlier versions, and when they could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_properties: Option<crate::source::properties::DatabaseProperties>,
}

impl Manifest {
    /// Parses and checks a manifest read from `key`.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            format_version: Option<u32>,
        }
        let json = |e: serde_json::Error| ManifestError::Json {
            key: key.into(),
            cause: e.to_string(),
        };
        let header: Header = serde_json::from_slice(bytes).map_err(json)?;
        let format = header.format.unwrap_or_default();
        if format != FORMAT {
            return Err(ManifestError::Foreign {
                key: key.into(),
                format,
            });
        }
        match header.format_version {
            Some(PLAIN_FORMAT_VERSION..=FORMAT_VERSION) => {
                serde_json::from_slice(bytes).map_err(json)
            }
            v => Err(ManifestError::Version {
                key: key.into(),
                version: v.unwrap_or(0),
            }),
        }
    }

    /// The manifest as stored: pretty JSON, so an operator can read it with `aws s3 cp … -`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("manifest serializes")
    }
}

/// The format version a manifest with `encryption` is written as.
pub fn format_version(encryption: Option<&EncryptionRecord>) -> u32 {
    match encryption {
        Some(_) => FORMAT_VERSION,
        None => PLAIN_FORMAT_VERSION,
    }
}

/// The `pg_dumpall --globals-only` output stored beside a dump (zstd-compressed SQL, encrypted
/// like the dump).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Globals {
    pub key: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// sha256 of the stored (compressed, and encrypted when the backup is) bytes.
    pub sha256: String,
    /// Whether role passwords are included: only a user who may read `pg_authid` gets them;
    /// without, roles are restored without passwords and must be given new ones.
    pub role_passwords: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_is_recorded_by_fingerprint_and_old_manifests_parse() {
        let mut m = Manifest::parse("k", WITHOUT_TABLES.as_bytes()).unwrap();
        assert_eq!(m.encryption, None);
        let json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert!(json.get("encryption").is_none(), "{json}");
        m.encryption = Some(EncryptionRecord {
            scheme: crate::codec::encryption::Scheme::X25519,
            recipients: vec!["0123456789abcdef".into()],
        });
        m.format_version = format_version(m.encryption.as_ref());
        let json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(json["format_version"], 2);
        assert_eq!(
            json["encryption"],
            serde_json::json!({ "scheme": "age-x25519", "recipients": ["0123456789abcdef"] })
        );
        assert_eq!(Manifest::parse("k", &m.to_json()).unwrap(), m);
    }

    /// A manifest as written before row counts were recorded.
    const WITHOUT_TABLES: &str = r#"{
  "format": "pgsidecar-manifest",
  "format_version": 1,
  "tool_version": "0.1.0",
  "job": "default",
  "database": "app",
  "host": "db",
  "port": 5432,
  "server_version": "17.2",
  "server_major": 17,
  "pg_dump_version": "17.2",
  "pg_dump_major": 17,
  "dump_format": "custom",
  "started_at": "2026-11-24T02:00:00Z",
  "finished_at": "2026-11-24T02:00:05Z",
  "duration_ms": 5000,
  "database_size_bytes": 1000,
  "raw_bytes": 900,
  "stored_bytes": 300,
  "compression": { "algorithm": "zstd", "level": 3 },
  "sha256": "00",
  "key": "p/app/2026-11-24T020000Z.dump.zst",
  "objects": [{ "key": "p/app/2026-11-24T020000Z.dump.zst", "size": 300 }]
}"#;

    #[test]
    fn manifest_without_tables_parses_and_stays_without() {
        let m = Manifest::parse("k", WITHOUT_TABLES.as_bytes()).unwrap();
        assert_eq!(m.tables, None);
        assert_eq!(m.objects.len(), 1);
        let json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert!(json.get("tables").is_none(), "{json}");
    }

    #[test]
    fn tables_round_trip() {
        let mut m = Manifest::parse("k", WITHOUT_TABLES.as_bytes()).unwrap();
        m.tables = Some(vec![crate::source::tables::TableRows {
            schema: "public".into(),
            name: "Mixed Case".into(),
            rows: 3,
            partition_of: None,
        }]);
        let json = m.to_json();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v["tables"],
            serde_json::json!([{ "schema": "public", "name": "Mixed Case", "rows": 3 }])
        );
        assert_eq!(Manifest::parse("k", &json).unwrap(), m);
        // An empty list (a database without tables) is recorded, unlike an unknown one.
        m.tables = Some(vec![]);
        let v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(v["tables"], serde_json::json!([]));
    }

    #[test]
    fn rejects_foreign_and_broken_manifests() {
        assert!(matches!(
            Manifest::parse("k", b"not json"),
            Err(ManifestError::Json { .. })
        ));
        assert!(matches!(
            Manifest::parse("k", br#"{"format":"other"}"#),
            Err(ManifestError::Foreign { .. })
        ));
        assert!(matches!(
            Manifest::parse(
                "k",
                br#"{"format":"pgsidecar-manifest","format_version":99}"#
            ),
            Err(ManifestError::Version { version: 99, .. })
        ));
    }
}

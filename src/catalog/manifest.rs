//! Manifest: the record that makes a stored dump a backup. Written only after the dump object
//! is complete and checked; `list`, `restore` and retention read manifests only, so an object
//! without one (a crash mid-upload) is never mistaken for a backup.
//!
//! Also the one place that names keys: `<prefix>/<database>/<UTC timestamp>.dump.zst` (with
//! `.age` appended when encrypted) and the manifest
//! `<prefix>/<database>/<UTC timestamp>.manifest.json` beside it.

use crate::codec::encryption::EncryptionRecord;
use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
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
/// Suffix of manifest keys.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Suffix of the marker `pgsidecar ack` writes beside a manifest whose anomalies were seen.
pub const ACK_SUFFIX: &str = ".anomaly-ack";
/// Suffix of the roles and tablespaces (`pg_dumpall --globals-only`) stored with a backup.
pub const GLOBALS_SUFFIX: &str = ".globals.sql.zst";
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H%M%SZ";

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

/// The key of the globals stored with the dump `dump_key`; encrypted like the dump (`.age`).
pub fn globals_key(dump_key: &str) -> String {
    let manifest = manifest_key(dump_key);
    let stem = manifest
        .strip_suffix(MANIFEST_SUFFIX)
        .expect("manifest keys end with the suffix");
    let encrypted = if dump_key.ends_with(crate::codec::encryption::SUFFIX) {
        crate::codec::encryption::SUFFIX
    } else {
        ""
    };
    format!("{stem}{GLOBALS_SUFFIX}{encrypted}")
}

/// Characters kept as they are in a database name's key segment; the rest are %-encoded, so
/// names with `/`, spaces, quotes or unicode make one safe path segment.
const KEY_SAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// `<prefix>/<database>/`: every object of one database's backups.
pub fn database_prefix(base: &str, database: &str) -> String {
    let segment = utf8_percent_encode(database, KEY_SAFE).to_string();
    // `.` and `..` would be path tricks on a file system.
    let segment = match segment.as_str() {
        "." => "%2E".to_string(),
        ".." => "%2E%2E".to_string(),
        _ => segment,
    };
    if base.is_empty() {
        format!("{segment}/")
    } else {
        format!("{base}/{segment}/")
    }
}

/// The key of a dump of `database` started at `started`: `.dump`, the compression's suffix,
/// and `.age` when `encrypted`.
pub fn dump_key(
    base: &str,
    database: &str,
    started: DateTime<Utc>,
    compression: Compression,
    encrypted: bool,
) -> String {
    format!(
        "{}{}.dump{}{}",
        database_prefix(base, database),
        started.format(TIMESTAMP_FORMAT),
        compression.suffix(),
        if encrypted {
            crate::codec::encryption::SUFFIX
        } else {
            ""
        }
    )
}

/// The start time encoded in a manifest key, if `key` is one.
pub fn started_from_key(key: &str) -> Option<DateTime<Utc>> {
    let name = key.rsplit('/').next()?.strip_suffix(MANIFEST_SUFFIX)?;
    chrono::NaiveDateTime::parse_from_str(name, TIMESTAMP_FORMAT)
        .ok()
        .map(|n| n.and_utc())
}

/// The manifest key belonging to a dump key.
pub fn manifest_key(dump_key: &str) -> String {
    // Only the file name is looked at: a prefix such as `pg.dumps/` must not cut the key short.
    let name_start = dump_key.rfind('/').map_or(0, |i| i + 1);
    let name = &dump_key[name_start..];
    let stem_end = name
        .find(".dump")
        .or_else(|| name.find(GLOBALS_SUFFIX))
        .map_or(dump_key.len(), |i| name_start + i);
    format!("{}{MANIFEST_SUFFIX}", &dump_key[..stem_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sortable_and_safe() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T02:00:00Z")
            .unwrap()
            .to_utc();
        let k = dump_key("prod", "app", t, Compression::Zstd { level: 3 }, false);
        assert_eq!(k, "prod/app/2026-11-24T020000Z.dump.zst");
        assert_eq!(
            manifest_key(&k),
            "prod/app/2026-11-24T020000Z.manifest.json"
        );
        assert_eq!(
            globals_key(&k),
            "prod/app/2026-11-24T020000Z.globals.sql.zst"
        );
        assert_eq!(
            manifest_key(&globals_key(&k)),
            "prod/app/2026-11-24T020000Z.manifest.json"
        );
        assert_eq!(
            dump_key("", "we/ird 'db'ü", t, Compression::None, false),
            "we%2Fird%20%27db%27%C3%BC/2026-11-24T020000Z.dump"
        );
        assert_eq!(database_prefix("p", ".."), "p/%2E%2E/");
    }

    #[test]
    fn encrypted_keys_keep_their_suffix_and_map_to_the_same_manifest() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T02:00:00Z")
            .unwrap()
            .to_utc();
        let k = dump_key("prod", "app", t, Compression::Zstd { level: 3 }, true);
        assert_eq!(k, "prod/app/2026-11-24T020000Z.dump.zst.age");
        let manifest = "prod/app/2026-11-24T020000Z.manifest.json";
        assert_eq!(manifest_key(&k), manifest);
        assert_eq!(manifest_key(&format!("{k}.002")), manifest);
        let g = globals_key(&k);
        assert_eq!(g, "prod/app/2026-11-24T020000Z.globals.sql.zst.age");
        assert_eq!(manifest_key(&g), manifest);
        let plain = dump_key("p.age", "x.age", t, Compression::None, true);
        assert_eq!(plain, "p.age/x.age/2026-11-24T020000Z.dump.age");
        assert_eq!(
            manifest_key(&plain),
            "p.age/x.age/2026-11-24T020000Z.manifest.json"
        );
        assert_eq!(
            globals_key(&plain),
            "p.age/x.age/2026-11-24T020000Z.globals.sql.zst.age"
        );
    }

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

//! Key grammar: the one module that names what pgsidecar stores and creates — object keys
//! (dumps, their pieces, manifests, globals, anomaly acknowledgements, the encryption suffix)
//! and scratch database names — and reads them back. Everything else asks it; prune deletes
//! only what it recognises here.
//!
//! Layout: `<prefix>/<database, %-encoded>/<start, UTC>.dump[.zst|.gz][.age][.NNN]`, beside
//! `<start>.manifest.json`, `<start>.globals.sql.zst[.age]` and `<start>.anomaly-ack`.

use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::codec::Compression;

/// Suffix of manifest keys.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Suffix of the marker `pgsidecar ack` writes beside a manifest whose anomalies were seen.
pub const ACK_SUFFIX: &str = ".anomaly-ack";
/// What names the roles and tablespaces (`pg_dumpall --globals-only`) stored with a backup:
/// `<start>.globals.sql`, then the compression's suffix (as the dump's) and `.age`.
pub const GLOBALS_STEM: &str = ".globals.sql";
/// The start time in key names (UTC, sortable as text).
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H%M%SZ";
/// Suffix of an object encrypted with age.
pub const ENCRYPTED_SUFFIX: &str = ".age";

/// Object-key suffix after `.dump` for `compression`.
pub fn compression_suffix(compression: Compression) -> &'static str {
    match compression {
        Compression::Zstd { .. } => ".zst",
        Compression::Gzip { .. } => ".gz",
        Compression::None => "",
    }
}

/// The compression named by an object key's suffix: that of a dump, or of globals (which
/// before they followed the job's compression were always `.zst`). `None` for other keys.
pub fn compression_of(key: &str) -> Option<Compression> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let base = strip_piece(name);
    let base = base.strip_suffix(ENCRYPTED_SUFFIX).unwrap_or(base);
    let after = [".dump", GLOBALS_STEM]
        .iter()
        .find_map(|stem| base.find(stem).map(|i| &base[i + stem.len()..]))?;
    match after {
        ".zst" => Some(Compression::Zstd { level: 3 }),
        ".gz" => Some(Compression::Gzip { level: 6 }),
        "" => Some(Compression::None),
        _ => None,
    }
}

/// The key of the globals stored with the dump `dump_key`: compressed and encrypted like the
/// dump.
pub fn globals_key(dump_key: &str) -> String {
    let manifest = manifest_key(dump_key);
    let stem = manifest
        .strip_suffix(MANIFEST_SUFFIX)
        .expect("manifest keys end with the suffix");
    let compressed = compression_of(dump_key).map_or("", compression_suffix);
    let encrypted = if dump_key.ends_with(ENCRYPTED_SUFFIX) {
        ENCRYPTED_SUFFIX
    } else {
        ""
    };
    format!("{stem}{GLOBALS_STEM}{compressed}{encrypted}")
}

/// `name` without a continuation piece's `.NNN`.
fn strip_piece(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((b, n)) if n.len() == 3 && n.bytes().all(|c| c.is_ascii_digit()) => b,
        _ => name,
    }
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
        compression_suffix(compression),
        if encrypted { ENCRYPTED_SUFFIX } else { "" }
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
        .or_else(|| name.find(GLOBALS_STEM))
        .map_or(dump_key.len(), |i| name_start + i);
    format!("{}{MANIFEST_SUFFIX}", &dump_key[..stem_end])
}

/// Whether `key` is a dump object (or a continuation piece) or a globals object that
/// pgsidecar writes, encrypted or not: the objects a manifest accounts for.
pub fn is_dump_key(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    let base = strip_piece(name);
    let base = base.strip_suffix(ENCRYPTED_SUFFIX).unwrap_or(base);
    [".dump", GLOBALS_STEM].iter().any(|stem| {
        ["", ".zst", ".gz"]
            .iter()
            .any(|c| base.ends_with(&format!("{stem}{c}")))
    })
}

/// The key of piece `n` (1-based) of a stream stored under `key`.
pub fn piece_key(key: &str, n: u32) -> String {
    if n == 1 {
        key.to_string()
    } else {
        format!("{key}.{n:03}")
    }
}

/// The key of the acknowledgement of the anomaly of the backup whose manifest is
/// `manifest_key`.
pub fn ack_key(manifest_key: &str) -> String {
    let stem = manifest_key
        .strip_suffix(MANIFEST_SUFFIX)
        .unwrap_or(manifest_key);
    format!("{stem}{ACK_SUFFIX}")
}

/// PostgreSQL truncates longer identifiers, which would make scratch names collide.
pub const MAX_IDENTIFIER_BYTES: usize = 63;
/// Tag of the database a restore into a new database restores into before the swap.
pub const RESTORING_TAG: &str = "restoring";
/// Tag of a drill's copy.
pub const DRILL_TAG: &str = "drill";
/// Tag of the database a `--full`/`--replace-target` restore renamed aside.
pub const PRE_RESTORE_TAG: &str = "pre_restore";
/// Every tag of a database the sidecar creates.
const SCRATCH_TAGS: [&str; 3] = [RESTORING_TAG, DRILL_TAG, PRE_RESTORE_TAG];
/// The time in scratch database names, and its length.
const STAMP: &str = "%Y%m%d%H%M%S";
const STAMP_LEN: usize = 14;

/// `<base>__<tag>_<time>`, cut so that it fits PostgreSQL's identifier length.
pub fn scratch_name(base: &str, tag: &str, at: DateTime<Utc>) -> String {
    let suffix = format!("__{tag}_{}", at.format(STAMP));
    let mut cut = MAX_IDENTIFIER_BYTES
        .saturating_sub(suffix.len())
        .min(base.len());
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &base[..cut])
}

/// When the scratch database `name` of `base` and `tag` was begun: the time in its own name,
/// or for its `__restoring_` stage, the stage's time. `None` for any other name.
pub fn scratch_started(name: &str, base: &str, tag: &str) -> Option<DateTime<Utc>> {
    // The base is cut to fit PostgreSQL's identifier limit the same way at any time.
    let template = scratch_name(base, tag, DateTime::UNIX_EPOCH);
    let prefix = &template[..template.len() - STAMP_LEN];
    let stamp = |s: &str| {
        s.get(..STAMP_LEN)
            .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, STAMP).ok())
            .map(|t| t.and_utc())
    };
    let stage = format!("__{RESTORING_TAG}_");
    let stage_at = name.len().checked_sub(stage.len() + STAMP_LEN);
    match stage_at.and_then(|i| Some((i, name.get(i..)?.strip_prefix(stage.as_str())?))) {
        Some((i, time)) if name[..i].starts_with(prefix) => stamp(time),
        _ => stamp(name.strip_prefix(prefix)?),
    }
}

/// Whether `name` is a database the sidecar made (a restore's stage, a drill's copy, the old
/// database a restore kept): never backed up.
pub fn is_scratch_database(name: &str) -> bool {
    SCRATCH_TAGS
        .iter()
        .any(|tag| name.contains(&format!("__{tag}_")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn scratch_databases_are_dated_by_their_names() {
        let drill = at("2026-11-20T02:00:00Z");
        let stage = at("2026-11-20T02:00:05Z");
        for base in ["app", "a_database_of_29_bytes_name_x"] {
            let scratch = scratch_name(base, "drill", drill);
            assert_eq!(scratch_started(&scratch, base, "drill"), Some(drill));
            // The stage name is cut to 63 bytes, which for long bases cuts the drill's time.
            let restoring = scratch_name(&scratch, "restoring", stage);
            assert_eq!(
                scratch_started(&restoring, base, "drill"),
                Some(stage),
                "{restoring}"
            );
        }
        for other in [
            "app",
            "app2__drill_20261120020000",
            "app__drill_notatime12345",
            "app__restoring_20261120020000",
            "app__pre_restore_20261120020000",
        ] {
            assert_eq!(scratch_started(other, "app", "drill"), None, "{other}");
        }
    }

    #[test]
    fn scratch_databases_are_recognised_by_their_tags() {
        let t = at("2026-11-20T02:00:00Z");
        for tag in [RESTORING_TAG, DRILL_TAG, PRE_RESTORE_TAG] {
            assert!(is_scratch_database(&scratch_name("app", tag, t)), "{tag}");
        }
        assert!(!is_scratch_database("app"));
        assert!(!is_scratch_database("app_drill_copy"));
    }

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
        // Globals are compressed like their dump (before, always zstd).
        assert_eq!(
            globals_key(&plain),
            "p.age/x.age/2026-11-24T020000Z.globals.sql.age"
        );
        let gz = dump_key("p", "x", t, Compression::Gzip { level: 6 }, false);
        assert_eq!(globals_key(&gz), "p/x/2026-11-24T020000Z.globals.sql.gz");
        assert!(is_dump_key(&globals_key(&gz)) && is_dump_key(&globals_key(&plain)));
    }

    #[test]
    fn compression_is_read_from_dump_and_globals_keys_old_and_new() {
        let cases = [
            (
                "p/x/T.dump.zst.age.003",
                Some(Compression::Zstd { level: 3 }),
            ),
            ("p/x/T.dump.gz", Some(Compression::Gzip { level: 6 })),
            ("p/x/T.dump", Some(Compression::None)),
            (
                "p/x/T.globals.sql.zst.age",
                Some(Compression::Zstd { level: 3 }),
            ),
            ("p/x/T.globals.sql", Some(Compression::None)),
            ("p/x/T.manifest.json", None),
        ];
        for (key, want) in cases {
            assert_eq!(compression_of(key), want, "{key}");
        }
    }

    #[test]
    fn dump_keys() {
        assert!(is_dump_key("p/db/2026-01-01T000000Z.dump.zst"));
        assert!(is_dump_key("p/db/2026-01-01T000000Z.dump.zst.002"));
        assert!(is_dump_key("db/x.dump"));
        assert!(!is_dump_key("p/db/2026-01-01T000000Z.manifest.json"));
        assert!(!is_dump_key("p/other.tar"));
        assert!(is_dump_key("p/db/2026-01-01T000000Z.dump.zst.age"));
        assert!(is_dump_key("p/db/2026-01-01T000000Z.dump.gz.age.003"));
        assert!(is_dump_key("p/db/2026-01-01T000000Z.dump.age"));
        assert!(is_dump_key("p/db/2026-01-01T000000Z.globals.sql.zst.age"));
        assert!(!is_dump_key("p/db/notes.age"));
        assert!(!is_dump_key("p/db/2026-01-01T000000Z.manifest.json.age"));
        assert_eq!(piece_key("a.dump.zst", 1), "a.dump.zst");
        assert_eq!(piece_key("a.dump.zst", 12), "a.dump.zst.012");
    }
}

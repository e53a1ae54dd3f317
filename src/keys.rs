//! Key grammar: the one module that names what pgsidecar stores and creates — object keys
//! (dumps, their pieces, manifests, globals, anomaly acknowledgements, the encryption suffix)
//! and scratch database names — and reads them back. Everything else asks it; prune deletes
//! only what it recognises here.
//!
//! Layout: `<prefix>/<database, %-encoded>/<start, UTC>.dump[.zst|.gz][.age][.NNN]`, beside
//! `<start>.manifest.json`, `<start>.globals.sql.zst[.age]` and `<start>.anomaly-ack`.
//!
//! The WAL archive of point-in-time recovery lives under `<prefix>/~pitr/<system identifier>/`
//! (`~` is %-encoded in database names, so no database's backups can share it), keyed by the
//! cluster so a restored or different cluster never mixes into an old archive:
//! `wal/<segment>.<sha256>.zst[.age]`, `wal/<segment>.partial.<time>.<sha256>.zst[.age]`,
//! `wal/<timeline>.history.<sha256>.zst[.age]`, and base backups
//! `base/<start>.tar.zst[.age][.NNN]` with `base/<start>.base.json`. The sha256 is that of the
//! WAL file itself, so the same segment stored twice has the same key.

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

/// `base/sub`, either part possibly empty: a job's prefix under a destination's prefix.
pub fn join_prefix(base: &str, sub: &str) -> String {
    match (base.is_empty(), sub.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => sub.to_string(),
        (false, false) => format!("{base}/{sub}"),
    }
}

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

// ---------------------------------------------------------------------------------------------
// The WAL archive (point-in-time recovery).

/// `<pitr prefix>/<system identifier>/`: everything archived from one cluster.
pub fn pitr_cluster_prefix(pitr_prefix: &str, system_identifier: u64) -> String {
    format!("{pitr_prefix}/{system_identifier}/")
}

/// The cluster (system identifier) whose `<pitr prefix>/<id>/` prefix `key` is under.
pub fn pitr_cluster_of(pitr_prefix: &str, key: &str) -> Option<u64> {
    let rest = key.strip_prefix(pitr_prefix)?.strip_prefix('/')?;
    rest.split_once('/')?.0.parse().ok()
}

/// `<cluster>wal/`
pub fn wal_prefix(cluster: &str) -> String {
    format!("{cluster}wal/")
}

/// `<cluster>base/`
pub fn base_backup_prefix(cluster: &str) -> String {
    format!("{cluster}base/")
}

fn archived_suffix(encrypted: bool) -> &'static str {
    if encrypted {
        ".zst.age"
    } else {
        ".zst"
    }
}

/// What a key under `<cluster>wal/` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalKey {
    /// A complete segment: its 24-hex file name.
    Segment { name: String, sha256: String },
    /// The segment being written, as it was at `at`.
    Partial {
        name: String,
        at: DateTime<Utc>,
        sha256: String,
    },
    /// A timeline's history file.
    History { timeline: u32, sha256: String },
}

/// The key of a complete WAL segment `name` (24 hex digits) whose content has `sha256`.
pub fn wal_segment_key(cluster: &str, name: &str, sha256: &str, encrypted: bool) -> String {
    format!(
        "{}{name}.{sha256}{}",
        wal_prefix(cluster),
        archived_suffix(encrypted)
    )
}

/// The key of segment `name` as it was, partly written, at `at`.
pub fn wal_partial_key(
    cluster: &str,
    name: &str,
    at: DateTime<Utc>,
    sha256: &str,
    encrypted: bool,
) -> String {
    format!(
        "{}{name}.partial.{}.{sha256}{}",
        wal_prefix(cluster),
        at.format(TIMESTAMP_FORMAT),
        archived_suffix(encrypted)
    )
}

/// The key of timeline `timeline`'s history file.
pub fn wal_history_key(cluster: &str, timeline: u32, sha256: &str, encrypted: bool) -> String {
    format!(
        "{}{timeline:08X}.history.{sha256}{}",
        wal_prefix(cluster),
        archived_suffix(encrypted)
    )
}

/// What `key` (anywhere under a `wal/` prefix) holds; `None` for keys pgsidecar did not name.
pub fn parse_wal_key(key: &str) -> Option<WalKey> {
    let name = key.rsplit('/').next()?;
    let name = name.strip_suffix(ENCRYPTED_SUFFIX).unwrap_or(name);
    let name = name.strip_suffix(".zst")?;
    let parts: Vec<&str> = name.split('.').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let sha = |s: &str| hex(s, 64).then(|| s.to_string());
    match parts.as_slice() {
        [seg, digest] if hex(seg, 24) => Some(WalKey::Segment {
            name: seg.to_string(),
            sha256: sha(digest)?,
        }),
        [seg, "partial", at, digest] if hex(seg, 24) => Some(WalKey::Partial {
            name: seg.to_string(),
            at: chrono::NaiveDateTime::parse_from_str(at, TIMESTAMP_FORMAT)
                .ok()?
                .and_utc(),
            sha256: sha(digest)?,
        }),
        [tli, "history", digest] if hex(tli, 8) => Some(WalKey::History {
            timeline: u32::from_str_radix(tli, 16).ok()?,
            sha256: sha(digest)?,
        }),
        _ => None,
    }
}

/// The key of a base backup started at `started`.
pub fn base_backup_key(cluster: &str, started: DateTime<Utc>, encrypted: bool) -> String {
    format!(
        "{}{}.tar{}",
        base_backup_prefix(cluster),
        started.format(TIMESTAMP_FORMAT),
        archived_suffix(encrypted)
    )
}

/// Suffix of base backup manifests (not [`MANIFEST_SUFFIX`]: they are no dump's).
pub const BASE_MANIFEST_SUFFIX: &str = ".base.json";

/// The manifest key of the base backup `base_key`.
pub fn base_manifest_key(base_key: &str) -> String {
    let stem = [".tar.zst.age", ".tar.zst"]
        .iter()
        .find_map(|s| base_key.strip_suffix(s))
        .unwrap_or(base_key);
    format!("{stem}{BASE_MANIFEST_SUFFIX}")
}

#[cfg(test)]
mod pitr_tests {
    use super::*;

    #[test]
    fn wal_keys_round_trip() {
        let c = pitr_cluster_prefix("prod/~pitr", 7_312_345_678_901_234_567);
        assert_eq!(c, "prod/~pitr/7312345678901234567/");
        assert_eq!(
            pitr_cluster_of("prod/~pitr", &c),
            Some(7_312_345_678_901_234_567)
        );
        let sha = "ab".repeat(32);
        let seg = wal_segment_key(&c, "000000010000000000000003", &sha, false);
        assert_eq!(seg, format!("{c}wal/000000010000000000000003.{sha}.zst"));
        assert_eq!(
            parse_wal_key(&seg),
            Some(WalKey::Segment {
                name: "000000010000000000000003".into(),
                sha256: sha.clone()
            })
        );
        let at = "2026-11-30T14:05:00Z".parse().unwrap();
        let partial = wal_partial_key(&c, "000000010000000000000004", at, &sha, true);
        assert_eq!(
            parse_wal_key(&partial),
            Some(WalKey::Partial {
                name: "000000010000000000000004".into(),
                at,
                sha256: sha.clone()
            })
        );
        assert!(partial.ends_with(".zst.age"));
        let history = wal_history_key(&c, 2, &sha, false);
        assert_eq!(
            parse_wal_key(&history),
            Some(WalKey::History {
                timeline: 2,
                sha256: sha.clone()
            })
        );
        assert_eq!(parse_wal_key(&format!("{c}wal/notes.txt")), None);
        assert_eq!(
            parse_wal_key(&format!("{c}wal/000000010000000000000003.zst")),
            None
        );
        let base = base_backup_key(&c, at, false);
        assert_eq!(base, format!("{c}base/2026-11-30T140500Z.tar.zst"));
        assert_eq!(
            base_manifest_key(&base),
            format!("{c}base/2026-11-30T140500Z.base.json")
        );
        // A base backup's manifest is never taken for a dump's.
        assert!(!base_manifest_key(&base).ends_with(MANIFEST_SUFFIX));
        // No database's prefix can be the archive's.
        assert_ne!(database_prefix("prod", "~pitr"), "prod/~pitr/");
    }
}

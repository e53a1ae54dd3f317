//! The WAL archive as stored: which segments, partial segments, history files and base
//! backups exist for one cluster, and what a restore can reach from them.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::wal::{self, Lsn, SegmentSize};
use crate::codec::encryption::EncryptionRecord;
use crate::keys::{self, WalKey};
use crate::storage::{Storage, StorageError, StoredPiece};

/// What is recorded beside a base backup (`<start>.base.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseBackup {
    /// The tar stream's first object.
    pub key: String,
    /// Every object of the tar stream, in order.
    pub objects: Vec<StoredPiece>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Where replay must begin (the backup's checkpoint redo point).
    pub start_lsn: Lsn,
    /// At or after the point where the backup became consistent (the server's position read
    /// once pg_basebackup finished): WAL up to here must be archived.
    pub end_lsn: Lsn,
    pub timeline: u32,
    /// As text: JSON numbers lose precision beyond 2^53.
    pub system_identifier: String,
    pub server_version: String,
    pub server_major: u32,
    pub wal_segment_size: SegmentSize,
    /// Bytes of the tar stream as pg_basebackup wrote it.
    pub raw_bytes: u64,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// sha256 of the stored bytes (all objects in order), hex.
    pub sha256: String,
    pub encryption: Option<EncryptionRecord>,
    pub pgsidecar_version: String,
}

/// One stored WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    /// sha256 of the WAL file itself (before compression), hex.
    pub sha256: String,
}

/// One cluster's archive.
#[derive(Debug, Default)]
pub struct Archive {
    /// Complete segments by timeline and segment number.
    pub segments: BTreeMap<(u32, u64), Stored>,
    /// The newest upload of each partial segment, with its time.
    pub partials: BTreeMap<(u32, u64), (DateTime<Utc>, Stored)>,
    /// Older uploads of partial segments, superseded by a newer upload or the complete
    /// segment: safe to delete.
    pub superseded: Vec<String>,
    pub histories: BTreeMap<u32, Stored>,
    /// When each complete segment was stored (the store's last-modified time).
    pub stored_at: BTreeMap<(u32, u64), DateTime<Utc>>,
    /// Base backups, oldest first.
    pub base_backups: Vec<BaseBackup>,
    /// Objects that could not be read, and why.
    pub problems: Vec<String>,
}

impl Archive {
    /// Reads the archive under `cluster` (a [`keys::pitr_cluster_prefix`]). Segment names are
    /// read with `segment_size`, or with the base backups' size when `None`.
    pub async fn load(
        storage: &Storage,
        cluster: &str,
        segment_size: Option<SegmentSize>,
    ) -> Result<Archive, StorageError> {
        let mut archive = Archive::default();
        for object in storage.list(&keys::base_backup_prefix(cluster)).await? {
            if !object.key.ends_with(keys::BASE_MANIFEST_SUFFIX) {
                continue;
            }
            let bytes = storage.get_bytes(&object.key).await?;
            match serde_json::from_slice::<BaseBackup>(&bytes) {
                Ok(b) => archive.base_backups.push(b),
                Err(e) => archive.problems.push(format!(
                    "base backup manifest `{}` is unreadable: {e}",
                    object.key
                )),
            }
        }
        archive.base_backups.sort_by_key(|b| b.started_at);
        let size = segment_size
            .or_else(|| archive.base_backups.last().map(|b| b.wal_segment_size))
            .unwrap_or(SegmentSize::DEFAULT);
        let objects = storage.list(&keys::wal_prefix(cluster)).await?;
        archive.add_wal(size, objects.into_iter().map(|o| (o.key, o.last_modified)));
        Ok(archive)
    }

    fn add_wal(
        &mut self,
        size: SegmentSize,
        keys: impl Iterator<Item = (String, Option<DateTime<Utc>>)>,
    ) {
        // Every upload of each partial segment, with its time.
        type Uploads = Vec<(DateTime<Utc>, Stored)>;
        let mut partials: BTreeMap<(u32, u64), Uploads> = BTreeMap::new();
        for (key, modified) in keys {
            match keys::parse_wal_key(&key) {
                Some(WalKey::Segment { name, sha256 }) => match size.parse_name(&name) {
                    Ok(id) => {
                        if let Some(other) = self.segments.get(&id) {
                            self.problems.push(format!(
                                "segment {name} is stored twice with different contents: `{}` and `{key}`",
                                other.key
                            ));
                        }
                        self.segments.insert(id, Stored { key, sha256 });
                        if let Some(at) = modified {
                            self.stored_at.insert(id, at);
                        }
                    }
                    Err(e) => self.problems.push(format!("`{key}`: {e}")),
                },
                Some(WalKey::Partial { name, at, sha256 }) => match size.parse_name(&name) {
                    Ok(id) => partials
                        .entry(id)
                        .or_default()
                        .push((at, Stored { key, sha256 })),
                    Err(e) => self.problems.push(format!("`{key}`: {e}")),
                },
                Some(WalKey::History { timeline, sha256 }) => {
                    self.histories.insert(timeline, Stored { key, sha256 });
                }
                None => {}
            }
        }
        for (id, mut versions) in partials {
            versions.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.key.cmp(&b.1.key)));
            let newest = versions.pop().expect("a partial has one version at least");
            self.superseded
                .extend(versions.into_iter().map(|(_, s)| s.key));
            if self.segments.contains_key(&id) {
                self.superseded.push(newest.1.key);
            } else {
                self.partials.insert(id, newest);
            }
        }
    }

    /// Segment numbers stored complete on timeline `tli`.
    pub fn segment_numbers(&self, tli: u32) -> BTreeSet<u64> {
        self.segments
            .keys()
            .filter(|(t, _)| *t == tli)
            .map(|(_, s)| *s)
            .collect()
    }

    /// What a restore from `base` can reach: the last complete segment of the unbroken run
    /// from the backup's start, and the partial segment right after it, if stored. `Err`
    /// names the first missing segment when the WAL up to the backup's end is incomplete.
    pub fn reach(&self, base: &BaseBackup) -> Result<Reach, wal::Gap> {
        let size = base.wal_segment_size;
        let tli = base.timeline;
        let have = self.segment_numbers(tli);
        let first = size.segment_of(base.start_lsn);
        let last_needed = size.segment_of(Lsn(base.end_lsn.0.saturating_sub(1)));
        let end = wal::contiguous_end(&have, first);
        let complete_to = match end {
            Some(e) if e >= last_needed => Some(e),
            _ => {
                // The end segment may be the partial one, when the backup ended in the segment
                // being written.
                let partial_ok = end.map_or(first, |e| e + 1) == last_needed
                    && self.partials.contains_key(&(tli, last_needed));
                if !partial_ok {
                    return Err(wal::first_gap(size, tli, &have, first, last_needed)
                        .expect("a shorter run has a gap"));
                }
                end
            }
        };
        let next = complete_to.map_or(first, |e| e + 1);
        let partial = self
            .partials
            .get(&(tli, next))
            .map(|(at, s)| (next, *at, s.clone()));
        // WAL stored after a hole can never be replayed from this backup.
        let beyond = next + u64::from(partial.is_some());
        let orphaned = have.range(beyond..).next().is_some()
            || self
                .partials
                .range((tli, beyond)..(tli + 1, 0))
                .next()
                .is_some();
        Ok(Reach {
            first,
            complete_to,
            gap_after: orphaned.then(|| size.file_name(tli, next)),
            last_stored_at: match &partial {
                Some((_, at, _)) => Some(*at),
                None => complete_to.and_then(|e| self.stored_at.get(&(tli, e)).copied()),
            },
            partial,
        })
    }
}

/// The WAL a restore from one base backup can replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The backup's first segment.
    pub first: u64,
    /// The last complete segment of the unbroken run from `first` (`None`: not even `first`
    /// is complete).
    pub complete_to: Option<u64>,
    /// The partial segment after the run: its number, when it was uploaded, and the object.
    pub partial: Option<(u64, DateTime<Utc>, Stored)>,
    /// The segment missing after the run when WAL is stored beyond it (a hole the replay
    /// cannot cross).
    pub gap_after: Option<String>,
    /// When the last WAL the run reaches was stored.
    pub last_stored_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(start: &str, end: &str) -> BaseBackup {
        BaseBackup {
            key: "k".into(),
            objects: vec![],
            started_at: "2026-11-30T10:00:00Z".parse().unwrap(),
            finished_at: "2026-11-30T10:01:00Z".parse().unwrap(),
            start_lsn: start.parse().unwrap(),
            end_lsn: end.parse().unwrap(),
            timeline: 1,
            system_identifier: "1".into(),
            server_version: "17.2".into(),
            server_major: 17,
            wal_segment_size: SegmentSize::DEFAULT,
            raw_bytes: 0,
            stored_bytes: 0,
            sha256: String::new(),
            encryption: None,
            pgsidecar_version: "test".into(),
        }
    }

    fn archive(names: &[&str]) -> Archive {
        let sha = "a".repeat(64);
        let mut a = Archive::default();
        a.add_wal(
            SegmentSize::DEFAULT,
            names.iter().map(|n| {
                if let Some((seg, at)) = n.split_once('@') {
                    let at: DateTime<Utc> = at.parse().unwrap();
                    (keys::wal_partial_key("c/", seg, at, &sha, false), None)
                } else {
                    (keys::wal_segment_key("c/", n, &sha, false), None)
                }
            }),
        );
        a
    }

    #[test]
    fn reach_runs_from_the_backup_to_the_first_gap_then_takes_the_partial() {
        let a = archive(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000006",
            "000000010000000000000005@2026-11-30T10:05:00Z",
            "000000010000000000000005@2026-11-30T10:04:00Z",
        ]);
        let r = a.reach(&base("0/2000028", "0/3000100")).unwrap();
        assert_eq!(r.first, 2);
        assert_eq!(r.complete_to, Some(4));
        let (seg, at, _) = r.partial.unwrap();
        assert_eq!(seg, 5);
        assert_eq!(at, "2026-11-30T10:05:00Z".parse::<DateTime<Utc>>().unwrap());
        // Segment 6 is stored, so the complete 5 is missing: replay stops at the partial's end.
        assert_eq!(r.gap_after.as_deref(), Some("000000010000000000000005"));
        // The older upload of the partial is superseded.
        assert_eq!(a.superseded.len(), 1);
        assert!(a.superseded[0].contains("T100400Z"));
    }

    #[test]
    fn a_gap_before_the_backups_end_names_the_missing_segment() {
        let a = archive(&["000000010000000000000002", "000000010000000000000004"]);
        let gap = a.reach(&base("0/2000028", "0/4000100")).unwrap_err();
        assert_eq!(gap.missing, "000000010000000000000003");
        // The start segment itself missing.
        let gap = a.reach(&base("0/1000028", "0/1000100")).unwrap_err();
        assert_eq!(gap.missing, "000000010000000000000001");
    }

    #[test]
    fn an_unbroken_archive_has_no_hole_after_its_reach() {
        let a = archive(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004@2026-11-30T10:05:00Z",
        ]);
        let r = a.reach(&base("0/2000028", "0/3000100")).unwrap();
        assert_eq!(r.gap_after, None);
        assert_eq!(
            r.last_stored_at,
            Some("2026-11-30T10:05:00Z".parse().unwrap())
        );
    }

    #[test]
    fn a_backup_ending_in_the_partial_segment_is_usable() {
        let a = archive(&["000000010000000000000007@2026-11-30T10:05:00Z"]);
        let r = a.reach(&base("0/7000028", "0/7000100")).unwrap();
        assert_eq!(r.complete_to, None);
        assert_eq!(r.partial.unwrap().0, 7);
    }

    #[test]
    fn partials_of_complete_segments_are_superseded() {
        let a = archive(&[
            "000000010000000000000002@2026-11-30T10:05:00Z",
            "000000010000000000000002",
        ]);
        assert!(a.partials.is_empty());
        assert_eq!(a.superseded.len(), 1);
    }
}

//! Retention of the archive: base backups follow the `[pitr.retention]` rules; WAL is kept
//! from the oldest kept base backup's start onward, so every kept backup stays restorable to
//! every moment its WAL reaches. History files are always kept.
//!
//! Invariants: nothing is deleted without a policy; the newest base backup whose WAL is
//! complete is always kept; WAL at or after the start of any kept base backup is never
//! deleted; a base backup's manifest is deleted last, so an interrupted prune leaves objects
//! without a manifest (leftovers), never a manifest without its objects.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::archive::{Archive, BaseBackup};
use crate::retention::{self, Policy, Reason};
use crate::storage::{Storage, StorageError};

/// What a prune of one cluster's archive does (pure: see [`plan`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Kept base backups, newest first: key, start time, why, and the first WAL segment it
    /// needs.
    pub kept: Vec<Kept>,
    /// Base backups deleted (their first object's key).
    pub deleted_bases: Vec<String>,
    /// WAL objects deleted: segments and partial segments before the oldest kept start.
    pub deleted_wal: Vec<String>,
    /// The first segment kept (24 hex digits), when anything is kept.
    pub wal_from: Option<String>,
    /// Why nothing is deleted, when that is the decision.
    pub held: Option<String>,
}

/// One kept base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    pub key: String,
    pub started_at: DateTime<Utc>,
    pub reasons: Vec<String>,
    /// The first WAL segment it replays.
    pub anchors: String,
}

/// Decides what `policy` keeps of `archive` at `now` (calendar rules in `tz`).
pub fn plan(archive: &Archive, policy: &Policy, tz: Tz, now: DateTime<Utc>) -> Plan {
    let mut plan = Plan {
        kept: Vec::new(),
        deleted_bases: Vec::new(),
        deleted_wal: Vec::new(),
        wal_from: None,
        held: None,
    };
    let bases = &archive.base_backups;
    if bases.is_empty() {
        plan.held = Some("no base backup is stored".into());
        return plan;
    }
    let mut decisions = retention::select(bases, |b| b.started_at, policy, tz, now);
    // The newest base backup that can be restored is kept whatever the rules say: pruning
    // must never leave the archive without a way back.
    let newest_usable = bases
        .iter()
        .rev()
        .find(|b| archive.reach(b).is_ok())
        .map(|b| b.key.clone());
    for d in &mut decisions {
        if Some(&d.item.key) == newest_usable.as_ref() && d.keep.is_empty() {
            d.keep.push(Reason::NewestRestorable);
        }
    }
    if decisions.iter().all(|d| !d.is_kept()) {
        plan.held = Some("the rules keep no base backup; nothing is pruned".into());
        return plan;
    }
    let mut oldest_start: Option<(u64, &BaseBackup)> = None;
    for d in &decisions {
        let b = d.item;
        let first = b.wal_segment_size.segment_of(b.start_lsn);
        if d.is_kept() {
            plan.kept.push(Kept {
                key: b.key.clone(),
                started_at: b.started_at,
                reasons: d.keep.iter().map(|r| r.to_string()).collect(),
                anchors: b.wal_segment_size.file_name(b.timeline, first),
            });
            if oldest_start.is_none_or(|(s, _)| first < s) {
                oldest_start = Some((first, b));
            }
        } else {
            plan.deleted_bases.push(b.key.clone());
        }
    }
    let (first, anchor) = oldest_start.expect("something is kept");
    plan.wal_from = Some(anchor.wal_segment_size.file_name(anchor.timeline, first));
    // Segment numbers are positions in the WAL, which only grows across timelines: WAL
    // before the oldest kept start is needed by no kept backup, on any timeline.
    for ((_, segno), stored) in &archive.segments {
        if *segno < first {
            plan.deleted_wal.push(stored.key.clone());
        }
    }
    for ((_, segno), (_, stored)) in &archive.partials {
        if *segno < first {
            plan.deleted_wal.push(stored.key.clone());
        }
    }
    plan
}

/// Carries out `plan` (unless `dry_run`); returns the errors met, each naming its object.
/// Base backups go first (manifest last), then WAL oldest first.
pub async fn execute(storage: &Storage, archive: &Archive, plan: &Plan) -> Vec<String> {
    let mut errors = Vec::new();
    let delete = |key: String| async move {
        storage
            .delete(&key)
            .await
            .map_err(|e: StorageError| format!("{key}: {e}"))
    };
    for key in &plan.deleted_bases {
        let Some(base) = archive.base_backups.iter().find(|b| &b.key == key) else {
            continue;
        };
        let mut ok = true;
        for piece in &base.objects {
            if let Err(e) = delete(piece.key.clone()).await {
                errors.push(e);
                ok = false;
            }
        }
        if ok {
            if let Err(e) = delete(crate::keys::base_manifest_key(&base.key)).await {
                errors.push(e);
            }
        }
    }
    for key in &plan.deleted_wal {
        if let Err(e) = delete(key.clone()).await {
            errors.push(e);
        }
    }
    errors
}

/// Loads the archive of cluster `system_identifier` under `pitr_prefix`, plans by `policy`
/// and, unless `dry_run`, carries the plan out. Returns the plan and the errors met.
pub async fn prune_cluster(
    storage: &Storage,
    pitr_prefix: &str,
    system_identifier: u64,
    policy: &Policy,
    tz: Tz,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<(Plan, Vec<String>), StorageError> {
    let cluster = crate::keys::pitr_cluster_prefix(pitr_prefix, system_identifier);
    let archive = Archive::load(storage, &cluster, None).await?;
    let plan = plan(&archive, policy, tz, now);
    let errors = if dry_run || plan.held.is_some() {
        Vec::new()
    } else {
        execute(storage, &archive, &plan).await
    };
    Ok((plan, errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::wal::SegmentSize;

    fn base(start_seg: u64, at: &str) -> BaseBackup {
        let size = SegmentSize::DEFAULT;
        BaseBackup {
            key: format!("c/base/{at}.tar.zst"),
            objects: vec![],
            started_at: at.parse().unwrap(),
            finished_at: at.parse().unwrap(),
            start_lsn: size.start_of(start_seg),
            end_lsn: size.start_of(start_seg + 1),
            timeline: 1,
            system_identifier: "1".into(),
            server_version: "17.2".into(),
            server_major: 17,
            wal_segment_size: size,
            raw_bytes: 0,
            stored_bytes: 0,
            sha256: String::new(),
            encryption: None,
            pgsidecar_version: "test".into(),
        }
    }

    fn archive(bases: Vec<BaseBackup>, segments: std::ops::Range<u64>) -> Archive {
        let mut a = Archive {
            base_backups: bases,
            ..Default::default()
        };
        for s in segments {
            a.segments.insert(
                (1, s),
                crate::pitr::archive::Stored {
                    key: format!("c/wal/{s}"),
                    sha256: String::new(),
                },
            );
        }
        a
    }

    fn keep_last(n: u32) -> Policy {
        Policy {
            keep_last: Some(n),
            ..Default::default()
        }
    }

    #[test]
    fn wal_is_kept_from_the_oldest_kept_base_backups_start() {
        let a = archive(
            vec![
                base(2, "2026-11-01T03:00:00Z"),
                base(10, "2026-11-08T03:00:00Z"),
                base(20, "2026-11-15T03:00:00Z"),
            ],
            2..30,
        );
        let now = "2026-11-16T00:00:00Z".parse().unwrap();
        let p = plan(&a, &keep_last(2), chrono_tz::UTC, now);
        assert_eq!(p.deleted_bases, vec!["c/base/2026-11-01T03:00:00Z.tar.zst"]);
        assert_eq!(p.wal_from.as_deref(), Some("00000001000000000000000A"));
        let deleted: Vec<&str> = p.deleted_wal.iter().map(String::as_str).collect();
        assert_eq!(
            deleted,
            [
                "c/wal/2", "c/wal/3", "c/wal/4", "c/wal/5", "c/wal/6", "c/wal/7", "c/wal/8",
                "c/wal/9"
            ]
        );
        assert_eq!(p.kept.len(), 2);
        assert_eq!(p.kept[1].anchors, "00000001000000000000000A");
        // Every kept backup still reaches the end of the archive.
        let mut after = archive(a.base_backups[1..].to_vec(), 10..30);
        after.stored_at.clear();
        for b in &after.base_backups {
            assert_eq!(after.reach(b).unwrap().complete_to, Some(29));
        }
    }

    #[test]
    fn the_newest_restorable_backup_is_kept_whatever_the_rules_say() {
        // The newest base backup misses its WAL (segment 21 is absent): the one before it is
        // the newest restorable, and is kept although keep_last = 1 names only the newest.
        let mut a = archive(
            vec![
                base(10, "2026-11-08T03:00:00Z"),
                base(20, "2026-11-15T03:00:00Z"),
            ],
            10..20,
        );
        a.segments.remove(&(1, 20));
        let now = "2026-11-16T00:00:00Z".parse().unwrap();
        let p = plan(&a, &keep_last(1), chrono_tz::UTC, now);
        assert!(p.deleted_bases.is_empty(), "{p:?}");
        assert!(p.deleted_wal.is_empty(), "{p:?}");
    }

    #[test]
    fn nothing_is_pruned_without_base_backups() {
        let a = archive(vec![], 1..5);
        let p = plan(&a, &keep_last(1), chrono_tz::UTC, Utc::now());
        assert!(p.held.is_some() && p.deleted_wal.is_empty());
    }
}

//! Job: one configured backup job, validated: what to dump, when, where, and how hard to try.

use serde::Serialize;

use crate::codec::Compression;
use crate::retry::RetryPolicy;
use crate::source::DatabaseConfig;

/// One backup job: what to dump, when, where, and how hard to try.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub name: String,
    pub databases: Vec<String>,
    /// Connection settings (its `dbname` is replaced by each of `databases`).
    pub database: DatabaseConfig,
    #[serde(serialize_with = "serialize_schedule")]
    pub schedule: Option<crate::schedule::Schedule>,
    /// The zone of `schedule` and of retention's calendar periods.
    #[serde(serialize_with = "serialize_tz")]
    pub timezone: chrono_tz::Tz,
    /// Key prefix of this job's backups (storage URL prefix plus the job's sub-prefix).
    pub prefix: String,
    /// The job's own part of `prefix` (the same under every destination).
    pub sub_prefix: String,
    /// Its place in each `[[copies]]` destination, in the order of their names.
    pub copies: Vec<super::destinations::Placement>,
    /// Whether a backup stored in only some destinations counts.
    pub delivery: super::destinations::Delivery,
    pub catch_up: bool,
    /// Store `pg_dumpall --globals-only` with each dump.
    pub globals: bool,
    /// Databases excluded when `databases` is `*`.
    pub exclude: Vec<String>,
    pub max_parallel: usize,
    /// What `prune` keeps; `None`: prune nothing.
    pub retention: Option<crate::retention::Policy>,
    /// Shrinkage beyond this percentage is an anomaly (0: not checked).
    pub max_drop_percent: u32,
    pub compression: Compression,
    pub retry: RetryPolicy,
    /// Where this job's restore drills restore into.
    pub drill_server: DatabaseConfig,
    /// The top-level `[encryption]`, here so the job's stages receive it ready (not repeated
    /// in `config` output).
    #[serde(skip)]
    pub encryption: crate::codec::encryption::Encryption,
}

fn serialize_tz<S: serde::Serializer>(tz: &chrono_tz::Tz, ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_str(tz)
}

/// How `config` shows a schedule: its expression, or what having none means.
pub fn serialize_schedule<S: serde::Serializer>(
    s: &Option<crate::schedule::Schedule>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_str(s.expr()),
        None => ser.serialize_str("(none: one backup, then exit)"),
    }
}

impl Job {
    /// What a prune of this job covers in the primary.
    pub fn prune_scope(&self) -> crate::retention::prune::Scope<'_> {
        crate::retention::prune::Scope {
            job: &self.name,
            prefix: &self.prefix,
            policy: self.retention.as_ref(),
            timezone: self.timezone,
            attempt_timeout: self.retry.attempt_timeout,
        }
    }

    /// What a prune of this job covers in the destination of `place`.
    pub fn prune_scope_in<'a>(
        &'a self,
        place: &'a super::destinations::Placement,
    ) -> crate::retention::prune::Scope<'a> {
        crate::retention::prune::Scope {
            prefix: &place.prefix,
            policy: place.retention.as_ref(),
            ..self.prune_scope()
        }
    }

    /// The job's place in every destination, the primary first.
    pub fn placements(&self) -> Vec<super::destinations::Placement> {
        std::iter::once(super::destinations::Placement {
            destination: super::destinations::PRIMARY.to_string(),
            prefix: self.prefix.clone(),
            retention: self.retention.clone(),
        })
        .chain(self.copies.iter().cloned())
        .collect()
    }

    /// This job as seen in destination `place`: its prefix and retention there.
    pub fn in_destination(&self, place: &super::destinations::Placement) -> Job {
        Job {
            prefix: place.prefix.clone(),
            retention: place.retention.clone(),
            ..self.clone()
        }
    }
}

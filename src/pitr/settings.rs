//! What point-in-time recovery is configured with (`[pitr]`, `PGSIDECAR_PITR__…`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::source::DatabaseConfig;

/// The `[pitr]` section, checked.
#[derive(Debug, Clone, Serialize)]
pub struct PitrConfig {
    /// Whether `run` archives WAL continuously.
    pub enabled: bool,
    /// The physical replication slot the sidecar owns (`pitr.slot`, default `pgsidecar`).
    pub slot: String,
    /// How often the segment being written (`.partial`) is uploaded while it changes.
    #[serde(with = "humantime_serde")]
    pub partial_interval: Duration,
    /// How often the sidecar commits an empty transaction, so a restore to any time finds a
    /// commit after it; `None` writes nothing.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
    /// When base backups are taken (default weekly); the daemon also takes one when the
    /// archive has none for this cluster.
    #[serde(serialize_with = "schedule_expr")]
    pub base_backup_schedule: crate::schedule::Schedule,
    /// The replication role's connection: the database connection with `pitr.user` and
    /// `pitr.password` when set.
    pub database: DatabaseConfig,
    /// Where `pg_receivewal` writes what it receives: the segment being written, and at most
    /// 16 received segments waiting for storage before the receiver is stopped. Its WAL files
    /// are removed at every start; other files are left alone.
    pub spool: PathBuf,
    /// Create the slot even though `max_slot_wal_keep_size = -1` lets it keep WAL without
    /// bound (`pitr.allow_unbounded_wal`).
    pub allow_unbounded_wal: bool,
    /// Where the archive lives: `<storage prefix>/~pitr/<system identifier>/`.
    pub prefix: String,
    /// Archive lag above which `health` fails and an alert is sent.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// Which base backups to keep; `None` prunes nothing.
    pub retention: Option<crate::retention::Policy>,
    /// The time zone of the base backup and drill schedules and of the retention's calendar
    /// rules.
    #[serde(serialize_with = "tz_name")]
    pub timezone: chrono_tz::Tz,
    /// How often the archive is read for holes (the periodic WAL check) and the newest base
    /// backup's age is compared with its schedule.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Point-in-time restore drills (`[pitr.drill]`).
    pub drill: DrillConfig,
}

/// `[pitr.drill]`: restores of the archive into a scratch directory, on a schedule, that a
/// server started by the sidecar replays and `pitr verify`'s checks pass.
#[derive(Debug, Clone, Serialize)]
pub struct DrillConfig {
    /// When drills run; `None`: only by hand (`pgsidecar pitr drill`).
    #[serde(serialize_with = "opt_schedule_expr")]
    pub schedule: Option<crate::schedule::Schedule>,
    /// The moment restored.
    pub target: DrillChoice,
    /// Where the scratch data directory is made (each drill's own subdirectory, removed
    /// after it). Needs room for the cluster and the WAL since its base backup.
    pub dir: PathBuf,
    /// SQL whose first value must be true on the restored cluster (`pitr verify --query`).
    pub query: Option<String>,
    /// Longest a drill may take, restore and replay included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Which moment a drill restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillChoice {
    /// The end of the archive (`--time latest`): the restore a lost server would need.
    Newest,
    /// A time drawn uniformly from the recoverable windows, so old chains are proven too.
    Random,
}

/// `pitr.drill.timeout` when unset.
pub const DEFAULT_DRILL_TIMEOUT: Duration = Duration::from_secs(3600);

fn opt_schedule_expr<S: serde::Serializer>(
    s: &Option<crate::schedule::Schedule>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_str(s.expr()),
        None => ser.serialize_none(),
    }
}

fn tz_name<S: serde::Serializer>(tz: &chrono_tz::Tz, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(tz.name())
}

/// `pitr.slot` when unset.
pub const DEFAULT_SLOT: &str = "pgsidecar";
/// `pitr.partial_interval` when unset.
pub const DEFAULT_PARTIAL_INTERVAL: Duration = Duration::from_secs(30);
/// `pitr.check_interval` when unset.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(900);
/// `pitr.max_lag` when unset: ten partial uploads' worth at the default interval.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(300);
/// `pitr.base_backup_schedule` when unset: Sundays at 03:00.
pub const DEFAULT_BASE_BACKUP_SCHEDULE: &str = "0 3 * * 0";

fn schedule_expr<S: serde::Serializer>(
    s: &crate::schedule::Schedule,
    ser: S,
) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expr())
}

/// Whether `name` can be a replication slot's name (PostgreSQL's rule in
/// `ReplicationSlotValidateName`: lower-case letters, digits and `_`, at most 63 bytes).
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

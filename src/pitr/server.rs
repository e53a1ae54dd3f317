//! What the archiver asks the primary, over an ordinary connection of the replication role:
//! the cluster's identity, its WAL settings, and the sidecar's physical replication slot.

use tokio_postgres::Client;

use super::wal::{Lsn, SegmentSize};
use crate::source::dump::{self, DumpError};
use crate::source::DatabaseConfig;

/// Errors talking to the primary about WAL and the slot.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Connect(#[from] DumpError),
    #[error("{what} failed on the server: {cause}")]
    Query { what: &'static str, cause: String },
    #[error("the server answered `{value}` for {what}, which pgsidecar cannot read")]
    Unreadable { what: &'static str, value: String },
}

impl ServerError {
    /// Whether retrying cannot help (wrong password, missing privilege).
    pub fn is_permanent(&self) -> bool {
        match self {
            ServerError::Connect(e) => e.is_permanent(),
            ServerError::Query { cause, .. } => {
                cause.contains("permission denied") || cause.contains("must be superuser")
            }
            ServerError::Unreadable { .. } => true,
        }
    }
}

/// The facts about a cluster its archive is keyed and checked by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFacts {
    /// `pg_control_system().system_identifier`: differs between clusters, survives restores.
    pub system_identifier: u64,
    /// The timeline WAL is being written on now.
    pub timeline: u32,
    pub segment_size: SegmentSize,
    /// Where WAL is being written now (`pg_current_wal_lsn()`).
    pub current: Lsn,
    /// `server_version`, e.g. `17.2`.
    pub version: String,
    pub major: u32,
    /// `max_slot_wal_keep_size` in bytes, `None` when -1 (no bound).
    pub max_slot_wal_keep: Option<u64>,
}

/// The sidecar's slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// `None` once the slot was invalidated (its WAL removed).
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes of WAL the slot holds on the primary (current position − restart_lsn).
    pub retained_bytes: Option<u64>,
}

impl SlotState {
    /// Whether the server removed WAL the slot needed.
    pub fn is_lost(&self) -> bool {
        self.restart_lsn.is_none() || self.wal_status.as_deref() == Some("lost")
    }
}

/// A connection of the replication role to the primary.
pub struct Primary {
    client: Client,
}

fn query_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> ServerError {
    move |e| ServerError::Query {
        what,
        cause: dump::pg_error_text(&e),
    }
}

fn lsn(what: &'static str, text: &str) -> Result<Lsn, ServerError> {
    text.parse().map_err(|_| ServerError::Unreadable {
        what,
        value: text.to_string(),
    })
}

impl Primary {
    /// Connects as the replication role to `db.dbname`.
    pub async fn connect(db: &DatabaseConfig) -> Result<Primary, ServerError> {
        Ok(Primary {
            client: dump::connect(db, &db.dbname).await?,
        })
    }

    /// The cluster's identity and WAL settings.
    pub async fn facts(&self) -> Result<ClusterFacts, ServerError> {
        let row = self
            .client
            .query_one(
                "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                        pg_walfile_name(pg_current_wal_lsn()), \
                        pg_size_bytes(current_setting('wal_segment_size'))::text, \
                        pg_current_wal_lsn()::text, \
                        current_setting('server_version'), \
                        current_setting('server_version_num')::int, \
                        current_setting('max_slot_wal_keep_size')",
                &[],
            )
            .await
            .map_err(query_err("reading the cluster's identity and WAL settings"))?;
        let text = |i: usize| -> String { row.get(i) };
        let unreadable = |what, value: String| ServerError::Unreadable { what, value };
        let sysid = text(0);
        let walfile = text(1);
        let seg_bytes = text(2);
        let keep = text(6);
        Ok(ClusterFacts {
            system_identifier: sysid
                .parse()
                .map_err(|_| unreadable("the system identifier", sysid.clone()))?,
            timeline: walfile
                .get(..8)
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .ok_or_else(|| unreadable("the current WAL file", walfile.clone()))?,
            segment_size: seg_bytes
                .parse::<u64>()
                .ok()
                .and_then(|b| SegmentSize::try_from(b).ok())
                .ok_or_else(|| unreadable("wal_segment_size", seg_bytes.clone()))?,
            current: lsn("pg_current_wal_lsn()", &text(3))?,
            version: text(4)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
            major: (row.get::<_, i32>(5) / 10000) as u32,
            max_slot_wal_keep: match keep.trim() {
                "-1" => None,
                other => Some(
                    size_bytes(other)
                        .ok_or_else(|| unreadable("max_slot_wal_keep_size", other.to_string()))?,
                ),
            },
        })
    }

    /// The slot `name`, or `None` when the server has no physical slot of that name.
    pub async fn slot(&self, name: &str) -> Result<Option<SlotState>, ServerError> {
        let row = self
            .client
            .query_opt(
                "SELECT restart_lsn::text, wal_status, \
                        (pg_current_wal_lsn() - restart_lsn)::bigint \
                   FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'",
                &[&name],
            )
            .await
            .map_err(query_err("reading the replication slot"))?;
        let Some(row) = row else { return Ok(None) };
        let restart: Option<String> = row.get(0);
        Ok(Some(SlotState {
            restart_lsn: restart
                .as_deref()
                .map(|t| lsn("the slot's restart_lsn", t))
                .transpose()?,
            wal_status: row.get(1),
            retained_bytes: row.get::<_, Option<i64>>(2).map(|b| b.max(0) as u64),
        }))
    }

    /// Creates the physical slot `name`, reserving WAL from now on.
    pub async fn create_slot(&self, name: &str) -> Result<Lsn, ServerError> {
        let row = self
            .client
            .query_one(
                "SELECT lsn::text FROM pg_create_physical_replication_slot($1, true)",
                &[&name],
            )
            .await
            .map_err(query_err("creating the replication slot"))?;
        let text: Option<String> = row.get(0);
        lsn("the new slot's position", text.as_deref().unwrap_or(""))
    }

    /// Where the server writes WAL now (`pg_current_wal_lsn()`).
    pub async fn current_lsn(&self) -> Result<Lsn, ServerError> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(query_err("reading the WAL position"))?;
        lsn("pg_current_wal_lsn()", &row.get::<_, String>(0))
    }

    /// Moves the slot's `restart_lsn` forward to `to`, releasing older WAL on the primary.
    pub async fn advance_slot(&self, name: &str, to: Lsn) -> Result<(), ServerError> {
        self.client
            .execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&name, &to.to_string()],
            )
            .await
            .map_err(query_err("advancing the replication slot"))?;
        Ok(())
    }

    /// Drops the slot `name`; `false` when there was none.
    pub async fn drop_slot(&self, name: &str) -> Result<bool, ServerError> {
        let n = self
            .client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                  WHERE slot_name = $1",
                &[&name],
            )
            .await
            .map_err(query_err("dropping the replication slot"))?;
        Ok(n > 0)
    }

    /// Commits a transaction with an transaction ID, so the WAL holds a commit record (with
    /// its time) even when the database is idle: a restore to "now" then finds a commit
    /// after its target.
    pub async fn heartbeat(&self) -> Result<(), ServerError> {
        self.client
            .execute("SELECT txid_current()", &[])
            .await
            .map_err(query_err("the heartbeat transaction"))?;
        Ok(())
    }

    /// Ends the current segment so everything written so far can be archived as complete
    /// (`pg_switch_wal()`); used after a base backup, whose end must be archived.
    pub async fn switch_wal(&self) -> Result<(), ServerError> {
        self.client
            .execute("SELECT pg_switch_wal()", &[])
            .await
            .map_err(query_err("pg_switch_wal()"))?;
        Ok(())
    }

    /// The connection, for the preflight checks.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Bytes of a PostgreSQL size setting as `current_setting` prints it (`10GB`, `512MB`,
/// `1024kB`, `0`).
pub fn size_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_settings_read_as_postgresql_prints_them() {
        assert_eq!(size_bytes("10GB"), Some(10 << 30));
        assert_eq!(size_bytes("512MB"), Some(512 << 20));
        assert_eq!(size_bytes("64kB"), Some(64 << 10));
        assert_eq!(size_bytes("0"), Some(0));
        assert_eq!(size_bytes("ten"), None);
        assert_eq!(size_bytes("1PB"), None);
    }
}

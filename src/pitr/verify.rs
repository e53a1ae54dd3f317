//! `pgsidecar pitr verify`: whether a server started on a restored data directory is what
//! the restore asked for, before anyone moves an application onto it.
//!
//! The checks: the server left recovery (promoted); it is a cluster of this archive (its
//! system identifier); it runs on a timeline newer than the base backup it was restored from,
//! so it can never overwrite the history it came from; its last replayed commit is at or
//! before the target time (`pg_last_xact_replay_timestamp()`, which stays fixed after
//! promotion); and an optional query of the operator's returns true.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::archive::Archive;
use super::check::Finding;
use super::restore::{choose_base, Target};
use crate::source::{dump, DatabaseConfig};
use crate::storage::Storage;

/// What the restored server is checked against.
pub struct Expectation<'a> {
    pub storage: &'a Storage,
    /// `<storage prefix>/~pitr`.
    pub pitr_prefix: &'a str,
    pub target: Target,
    /// SQL that must return a true first value in its first row (`SELECT count(*) = 200 FROM t`).
    pub query: Option<&'a str>,
    /// How long to wait for the server to accept connections and leave recovery.
    pub wait: Duration,
}

/// The outcome: one finding per check, and what was read.
#[derive(Debug, Default)]
pub struct Verified {
    pub findings: Vec<Finding>,
    /// The timeline the server runs on.
    pub timeline: Option<u32>,
    /// The last commit replayed from the archive.
    pub last_replayed_commit: Option<DateTime<Utc>>,
}

impl Verified {
    pub fn passed(&self) -> bool {
        !self.findings.is_empty() && self.findings.iter().all(|f| f.ok)
    }
}

fn pass(what: String) -> Finding {
    Finding {
        ok: true,
        what,
        fix: None,
    }
}

fn fail(what: String, fix: &str) -> Finding {
    Finding {
        ok: false,
        what,
        fix: Some(fix.to_string()),
    }
}

/// Waits for `server` to leave recovery, then checks it against `expect`.
pub async fn verify(server: &DatabaseConfig, expect: &Expectation<'_>) -> Verified {
    let mut out = Verified::default();
    let client = match promoted(server, expect.wait).await {
        Ok(c) => c,
        Err(why) => {
            out.findings.push(fail(why, "read the restored server's log: replay stops with FATAL when WAL is missing or the target is past the archive's end"));
            return out;
        }
    };
    out.findings
        .push(pass("the server left recovery (promoted)".into()));
    let row = match client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                    pg_walfile_name(pg_current_wal_lsn()), \
                    pg_last_xact_replay_timestamp()",
            &[],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            out.findings.push(fail(
                format!("read the server's identity: {}", dump::pg_error_text(&e)),
                "connect as a superuser or a role with pg_monitor",
            ));
            return out;
        }
    };
    let sysid: u64 = row.get::<_, String>(0).parse().unwrap_or_default();
    let timeline = row
        .get::<_, String>(1)
        .get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .unwrap_or_default();
    out.timeline = Some(timeline);
    out.last_replayed_commit = row
        .get::<_, Option<std::time::SystemTime>>(2)
        .map(Into::into);

    let cluster = crate::keys::pitr_cluster_prefix(expect.pitr_prefix, sysid);
    let archive = match Archive::load(expect.storage, &cluster, None).await {
        Ok(mut a) if !a.base_backups.is_empty() => {
            // The base backup this server was restored from is one on an older timeline:
            // the archive may already hold the restored server's own, newer ones.
            a.base_backups.retain(|b| b.timeline < timeline);
            a
        }
        Ok(_) => {
            out.findings.push(fail(
                format!(
                    "cluster {sysid} has no base backup under `{}`",
                    expect.pitr_prefix
                ),
                "verify a server restored from this archive (the same storage and prefix)",
            ));
            return out;
        }
        Err(e) => {
            out.findings.push(fail(
                format!("read the archive of cluster {sysid}: {e}"),
                "check storage",
            ));
            return out;
        }
    };
    out.findings
        .push(pass(format!("cluster {sysid} is the archive's")));
    match choose_base(&archive, expect.target) {
        Ok((base, _)) => out.findings.push(pass(format!(
            "new timeline {timeline}, restored from timeline {}",
            base.timeline
        ))),
        Err(_) => out.findings.push(fail(
            format!("the server runs on timeline {timeline}, and no base backup of an older timeline reaches the target: it was not promoted from this archive"),
            "verify the server that pitr restore prepared, after it promoted",
        )),
    }
    match (expect.target, out.last_replayed_commit) {
        (Target::Time(t), Some(at)) if at <= t => out.findings.push(pass(format!(
            "last replayed commit {} is at or before the target, {:.1} s before it",
            at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            (t - at).num_milliseconds() as f64 / 1000.0
        ))),
        (Target::Time(t), Some(at)) => out.findings.push(fail(
            format!(
                "last replayed commit {} is after the target {}",
                at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                t.format("%Y-%m-%d %H:%M:%S%.3f UTC")
            ),
            "restore again into a new directory with the intended --time",
        )),
        (_, None) => out.findings.push(pass(
            "no commit was replayed after the base backup (the database was idle)".into(),
        )),
        (Target::Latest, Some(at)) => out.findings.push(pass(format!(
            "last replayed commit {}",
            at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
        ))),
    }
    if let Some(sql) = expect.query {
        out.findings.push(query_check(&client, sql).await);
    }
    out
}

/// Connects until the server answers and has left recovery, or `wait` passes.
async fn promoted(server: &DatabaseConfig, wait: Duration) -> Result<Client, String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut next_word = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        last = match dump::connect(server, &server.dbname).await {
            Ok(client) => match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                Ok(row) if !row.get::<_, bool>(0) => return Ok(client),
                Ok(_) => "the server is still in recovery".to_string(),
                Err(e) => dump::pg_error_text(&e),
            },
            Err(e) => e.to_string(),
        };
        // Replay can take long; a server that is gone looks the same, so say what is seen.
        if tokio::time::Instant::now() >= next_word {
            tracing::info!(host = %server.host, "still waiting for the server to promote: {last}");
            next_word += Duration::from_secs(30);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "not promoted within {}: {last}",
                humantime::format_duration(wait)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn query_check(client: &Client, sql: &str) -> Finding {
    let fix = "look at the data, then restore again to another --time if it is not what you need";
    match client.simple_query(sql).await {
        Ok(messages) => {
            let first = messages.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                _ => None,
            });
            match first {
                Some(Some(v)) if !matches!(v.as_str(), "f" | "false" | "0") => {
                    pass(format!("the query returned {v}"))
                }
                Some(v) => fail(
                    format!("the query returned {}", v.as_deref().unwrap_or("NULL")),
                    fix,
                ),
                None => fail("the query returned no row".into(), fix),
            }
        }
        Err(e) => fail(
            format!("the query failed: {}", dump::pg_error_text(&e)),
            fix,
        ),
    }
}

//! Restore stage, scratch databases: creating their names (through [`crate::keys`]), swapping
//! a checked one into place, dropping and sweeping them. Invariant: only databases this stage
//! created are dropped, and an existing database is only renamed aside, never dropped here.

use std::time::Duration;

use chrono::Utc;

use super::plan::existing_db;
use super::{ident, maintenance, query_err, RestoreError};
use crate::keys::{self, scratch_name, scratch_started};
use crate::source::dump;
use crate::source::DatabaseConfig;

/// Drops a database this module created (a drill's scratch database); the error says why it
/// is left.
pub async fn drop_scratch(
    server: &DatabaseConfig,
    name: &str,
    server_major: u32,
) -> Result<(), String> {
    let admin = maintenance(server).await.map_err(|e| e.to_string())?;
    drop_database(&admin, server, name, server_major).await
}

/// Drops the scratch databases `<base>__<tag>_<time>` whose time is before `before`: what an
/// interrupted drill left behind. Also their `<…>__restoring_<time>` stage, as long as its
/// name, cut to PostgreSQL's identifier limit, still holds `<base>__<tag>_` (a `base` of up to
/// 29 bytes for drills). Returns the names dropped.
pub async fn drop_stale_scratch(
    server: &DatabaseConfig,
    base: &str,
    tag: &str,
    before: chrono::DateTime<Utc>,
    server_major: u32,
) -> Vec<String> {
    let Ok(admin) = maintenance(server).await else {
        return Vec::new();
    };
    let Ok(rows) = admin
        .query("SELECT datname::text FROM pg_database", &[])
        .await
    else {
        return Vec::new();
    };
    let mut dropped = Vec::new();
    for name in rows.iter().map(|r| r.get::<_, String>(0)) {
        if scratch_started(&name, base, tag).is_some_and(|t| t < before) {
            if drop_database(&admin, server, &name, server_major)
                .await
                .is_err()
            {
                continue;
            }
            dropped.push(name);
        }
    }
    dropped
}

/// Drops a database this module created. Subscriptions restored into it are disarmed first
/// (disabled, their slot detached, dropped): they block `DROP DATABASE`, and dropping one that
/// still names its slot would connect to the publisher to drop that slot there. Warns and
/// returns the cause when the database is left.
pub(super) async fn drop_database(
    admin: &tokio_postgres::Client,
    server: &DatabaseConfig,
    name: &str,
    server_major: u32,
) -> Result<(), String> {
    if let Err(e) = disarm_subscriptions(server, name).await {
        tracing::warn!("could not disarm the subscriptions of `{name}`: {e}");
    }
    let force = if server_major >= 13 {
        " WITH (FORCE)"
    } else {
        ""
    };
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {}{force}", ident(name)))
        .await
        .map_err(|e| {
            let cause = dump::pg_error_text(&e);
            tracing::warn!("could not drop `{name}`: {cause}; drop it by hand");
            cause
        })
}

/// Disables, detaches from their slots and drops the subscriptions of database `name`, which
/// never connect to their publishers for it (a database that is gone has none).
async fn disarm_subscriptions(server: &DatabaseConfig, name: &str) -> Result<(), RestoreError> {
    let admin = maintenance(server).await?;
    let any = admin
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_subscription s \
               JOIN pg_catalog.pg_database d ON d.oid = s.subdbid WHERE d.datname = $1 LIMIT 1",
            &[&name],
        )
        .await
        .map_err(query_err("listing subscriptions"))?;
    if any.is_none() {
        return Ok(());
    }
    let client = dump::connect(server, name).await?;
    let subs = client
        .query(
            "SELECT subname::text FROM pg_catalog.pg_subscription \
              WHERE subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .map_err(query_err("listing subscriptions"))?;
    for sub in subs.iter().map(|r| ident(&r.get::<_, String>(0))) {
        client
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {sub} DISABLE; \
                 ALTER SUBSCRIPTION {sub} SET (slot_name = NONE); \
                 DROP SUBSCRIPTION {sub};"
            ))
            .await
            .map_err(query_err("disarming a subscription"))?;
    }
    Ok(())
}

/// Gives `scratch` the name `name`. An existing `name` is renamed to `<name>__pre_restore_…`
/// first, after its connections are terminated; that name is returned.
pub(super) async fn swap(
    admin: &tokio_postgres::Client,
    scratch: &str,
    name: &str,
    at: chrono::DateTime<Utc>,
) -> Result<Option<String>, RestoreError> {
    let exists = existing_db(admin, name).await?.is_some();
    let old = scratch_name(name, keys::PRE_RESTORE_TAG, at);
    if exists {
        // Refusing new connections first keeps clients from reconnecting between termination
        // and rename. (Only the owner or a superuser may; without it, retries cover the gap.)
        let blocked = admin
            .batch_execute(&format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
                ident(name)
            ))
            .await
            .is_ok();
        let mut attempt = 0;
        loop {
            attempt += 1;
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                )
                .await
                .map_err(query_err("terminating connections"))?;
            match admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    ident(name),
                    ident(&old)
                ))
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 20 => {
                    tracing::debug!("rename not yet possible: {}", dump::pg_error_text(&e));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    if blocked {
                        let _ = admin
                            .batch_execute(&format!(
                                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                                ident(name)
                            ))
                            .await;
                    }
                    return Err(RestoreError::Query {
                        what: format!(
                            "renaming `{name}` out of the way (clients keep reconnecting?)"
                        ),
                        cause: dump::pg_error_text(&e),
                    });
                }
            }
        }
        if blocked {
            let _ = admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                    ident(&old)
                ))
                .await;
        }
    }
    if let Err(e) = admin
        .batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            ident(scratch),
            ident(name)
        ))
        .await
    {
        if exists {
            // Put the original back under its name; the restored copy is dropped by the caller.
            let _ = admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    ident(&old),
                    ident(name)
                ))
                .await;
        }
        return Err(RestoreError::Query {
            what: format!("renaming the restored database to `{name}`"),
            cause: dump::pg_error_text(&e),
        });
    }
    Ok(exists.then_some(old))
}

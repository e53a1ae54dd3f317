//! `pgsidecar pitr check`: what the primary must allow before WAL can be archived, each
//! failure with the exact line or statement that fixes it.

use std::process::Stdio;

use super::server::{Primary, ServerError};
use super::PitrConfig;
use crate::source::{dump, tools, ToolsConfig};

/// One finding of the preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    /// What was checked and what was found.
    pub what: String,
    /// What to do, when not ok.
    pub fix: Option<String>,
}

fn pass(what: impl Into<String>) -> Finding {
    Finding {
        ok: true,
        what: what.into(),
        fix: None,
    }
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        ok: false,
        what: what.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check; a connection that fails ends the list early (the rest needs it).
pub async fn run(config: &PitrConfig, tools_config: &ToolsConfig) -> Vec<Finding> {
    let db = &config.database;
    let user = &db.user;
    let mut out = Vec::new();
    let primary = match Primary::connect(db).await {
        Ok(p) => p,
        Err(e) => {
            out.push(fail(
                format!("connect as `{user}`: {e}"),
                "check pitr.user / pitr.password (default: the database connection's)",
            ));
            return out;
        }
    };
    let facts = match primary.facts().await {
        Ok(f) => f,
        Err(e) => {
            out.push(fail(
                format!("read the cluster's identity: {e}"),
                format!("GRANT EXECUTE ON FUNCTION pg_control_system() TO {user};"),
            ));
            return out;
        }
    };
    out.push(pass(format!(
        "PostgreSQL {} (system identifier {}, timeline {}, wal_segment_size {} MB)",
        facts.version,
        facts.system_identifier,
        facts.timeline,
        facts.segment_size.bytes() >> 20
    )));
    let q = |sql: &'static str| {
        let primary = &primary;
        async move {
            primary
                .client()
                .query_one(sql, &[])
                .await
                .map_err(|e| ServerError::Query {
                    what: "the preflight",
                    cause: dump::pg_error_text(&e),
                })
        }
    };
    match q("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user").await {
        Ok(r) if r.get::<_, bool>(0) => out.push(pass(format!("role `{user}` may replicate"))),
        Ok(_) => out.push(fail(
            format!("role `{user}` lacks the REPLICATION attribute"),
            format!("ALTER ROLE \"{user}\" REPLICATION;  -- or a role of its own: CREATE ROLE pgsidecar_wal LOGIN REPLICATION PASSWORD '…'; then set pitr.user and pitr.password_file"),
        )),
        Err(e) => out.push(fail(format!("read role attributes: {e}"), "connect as a role that can read pg_roles")),
    }
    match q("SELECT current_setting('wal_level')").await {
        Ok(r) => {
            let level: String = r.get(0);
            if level == "minimal" {
                out.push(fail(
                    "wal_level is minimal",
                    "ALTER SYSTEM SET wal_level = 'replica';  -- then restart the server",
                ));
            } else {
                out.push(pass(format!("wal_level is {level}")));
            }
        }
        Err(e) => out.push(fail(format!("read wal_level: {e}"), "")),
    }
    match q("SELECT current_setting('max_wal_senders')::int, \
                    (SELECT count(*) FROM pg_stat_replication)::int, \
                    current_setting('max_replication_slots')::int, \
                    (SELECT count(*) FROM pg_replication_slots)::int")
    .await
    {
        Ok(r) => {
            let (senders, used, slots, slots_used): (i32, i32, i32, i32) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if senders - used < 2 {
                out.push(fail(
                    format!("max_wal_senders is {senders}, {used} in use; archiving and base backups need 2"),
                    format!("ALTER SYSTEM SET max_wal_senders = {};  -- then restart the server", senders.max(used) + 2),
                ));
            } else {
                out.push(pass(format!("max_wal_senders {senders} ({used} in use)")));
            }
            let ours = primary.slot(&config.slot).await.ok().flatten().is_some();
            if slots <= slots_used && !ours {
                out.push(fail(
                    format!("max_replication_slots is {slots}, all in use"),
                    format!(
                        "ALTER SYSTEM SET max_replication_slots = {};  -- then restart the server",
                        slots + 1
                    ),
                ));
            } else {
                out.push(pass(format!(
                    "replication slot `{}` {}",
                    config.slot,
                    if ours { "exists" } else { "can be created" }
                )));
            }
        }
        Err(e) => out.push(fail(format!("read replication settings: {e}"), "")),
    }
    match facts.max_slot_wal_keep {
        Some(bytes) => out.push(pass(format!(
            "max_slot_wal_keep_size is {} MB: WAL waiting for storage is bounded",
            bytes >> 20
        ))),
        None if config.allow_unbounded_wal => out.push(pass(
            "max_slot_wal_keep_size is -1 (unbounded), accepted by pitr.allow_unbounded_wal",
        )),
        None => out.push(fail(
            "max_slot_wal_keep_size is -1: while storage is unreachable the slot would keep WAL until the disk fills",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '20GB'; SELECT pg_reload_conf();  -- or pitr.allow_unbounded_wal = true",
        )),
    }
    out.push(replication_connection(config, tools_config, facts.major).await);
    out
}

/// Opens a replication connection the way pg_receivewal does; pg_hba.conf needs its own
/// `replication` line for it (`host all all all` does not match replication connections).
async fn replication_connection(
    config: &PitrConfig,
    tools_config: &ToolsConfig,
    major: u32,
) -> Finding {
    let db = &config.database;
    let tool = match tools::for_server("pg_receivewal", &tools_config.bin_dirs, major).await {
        Ok(t) => t,
        Err(e) => {
            return fail(
                format!("find pg_receivewal: {e}"),
                "install the PostgreSQL client tools of the server's major version",
            )
        }
    };
    let psql = tools::ClientTool {
        path: tool.path.with_file_name("psql"),
        ..tool
    };
    let mut cmd = dump::client_command(&psql, db, &db.dbname);
    cmd.args(["-X", "-A", "-t", "-w", "-c", "IDENTIFY_SYSTEM"])
        .arg("-d")
        .arg(format!(
            "dbname='{}' replication=true",
            db.dbname.replace('\\', "\\\\").replace('\'', "\\'")
        ))
        .stdin(Stdio::null());
    match cmd.output().await {
        Ok(out) if out.status.success() => {
            pass("a replication connection is accepted (pg_hba.conf)")
        }
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let what = format!(
                "a replication connection is refused: {}",
                crate::secret::redact(&err)
            );
            if !err.contains("pg_hba.conf") {
                return fail(
                    what,
                    "see the failures above (the role needs REPLICATION; pitr.user and pitr.password)",
                );
            }
            let client = err
                .split("host \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("<the sidecar's address>");
            fail(
                what,
                format!(
                    "add to pg_hba.conf, above any `reject` line, then SELECT pg_reload_conf();\n    host replication {} {}/32 scram-sha-256\n  (in Docker, `samenet` instead of the address covers the stack's network)",
                    db.user, client
                ),
            )
        }
        Err(e) => fail(
            format!("run {}: {e}", psql.path.display()),
            "install psql beside pg_receivewal",
        ),
    }
}

//! Restore stage, the decision: gathers the facts about the backup and the target server and
//! makes the [`Plan`], which is shown to the operator and confirmed before anything changes.
//! Invariant: planning changes nothing, and refuses what cannot work (an undecryptable backup,
//! a newer server's backup, a missing or existing target) before anything is touched.

use std::io::{BufRead, IsTerminal, Write};

use chrono::Utc;

use super::verify;
use super::{maintenance, query_err, Mode, Options, RestoreError};
use crate::catalog::Entry;
use crate::source::tools::{self, ClientTool};
use crate::source::DatabaseConfig;
use crate::source::ToolsConfig;
use crate::storage::Storage;

/// The target server and database as found before anything changes.
#[derive(Debug, Clone)]
pub struct Target {
    pub server_version: String,
    pub server_major: u32,
    /// The database restored into in the end.
    pub name: String,
    /// Facts about the existing database of that name, if there is one.
    pub existing: Option<ExistingDb>,
}

/// An existing database.
#[derive(Debug, Clone)]
pub struct ExistingDb {
    pub size: u64,
    /// Clients connected to it; autovacuum and other server processes are not counted.
    pub connections: i64,
    pub owner: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
}

/// Everything decided before the restore starts; [`Plan::describe`] shows it to the operator.
#[derive(Debug, Clone)]
pub struct Plan {
    pub entry: Entry,
    pub server: DatabaseConfig,
    pub target: Target,
    pub mode: Mode,
    pub pg_restore: ClientTool,
    /// pg_restore writes SQL that psql runs, with the one statement older servers reject
    /// removed (pg_restore 17+ into a server before 17).
    pub via_psql: Option<ClientTool>,
    pub options: Options,
    /// With `--with-globals`: the roles to create first.
    pub roles: Option<crate::restore::globals::RolePlan>,
}

pub(super) async fn existing_db(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<ExistingDb>, RestoreError> {
    let row = client
        .query_opt(
            "SELECT pg_database_size(d.oid), \
                    (SELECT count(*) FROM pg_stat_activity a \
                      WHERE a.datname = d.datname AND a.pid <> pg_backend_pid() \
                        AND a.backend_type = 'client backend'), \
                    pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), \
                    d.datcollate::text, d.datctype::text \
               FROM pg_database d WHERE d.datname = $1",
            &[&name],
        )
        .await
        .map_err(query_err("reading the target database"))?;
    Ok(row.map(|r| ExistingDb {
        size: r.get::<_, i64>(0).max(0) as u64,
        connections: r.get(1),
        owner: r.get(2),
        encoding: r.get(3),
        collate: r.get(4),
        ctype: r.get(5),
    }))
}

/// Decides how `entry` will be restored on `server` without changing anything, and refuses
/// what cannot work: an encrypted backup the configured key does not open, a newer server's
/// backup, a missing or existing target, a pg_restore that cannot read the archive.
pub async fn plan(
    entry: &Entry,
    storage: &Storage,
    server: &DatabaseConfig,
    tools: &ToolsConfig,
    mode: Mode,
    options: Options,
) -> Result<Plan, RestoreError> {
    let m = &entry.manifest;
    verify::check_decryptable(storage, entry, &options.encryption)
        .await
        .map_err(RestoreError::Undecryptable)?;
    let admin = maintenance(server).await?;
    let row = admin
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(query_err("reading the server version"))?;
    let server_version: String = row.get(0);
    let server_major = (row.get::<_, i32>(1) / 10000) as u32;
    if m.server_major > server_major {
        return Err(RestoreError::Refused(format!(
            "`{}` is a backup of PostgreSQL {} and the target server runs PostgreSQL {server_major}; \
             a dump can only be restored into the same or a newer major: restore into a PostgreSQL {} (or newer) server",
            m.key, m.server_major, m.server_major
        )));
    }
    let name = match &mode {
        Mode::InPlace => m.database.clone(),
        Mode::NewDatabase { name, .. } => name.clone(),
    };
    // Restoring over a system database is almost always a typo with wide consequences (every
    // tool connects to `postgres`; `template1` seeds every new database).
    if ["postgres", "template0", "template1"].contains(&name.as_str())
        && !options.allow_system_database
    {
        return Err(RestoreError::Refused(format!(
            "`{name}` is a system database; restore into another one with --target-db NAME, or add --allow-system-database if this is really meant"
        )));
    }
    let existing = existing_db(&admin, &name).await?;
    match (&mode, &existing) {
        (Mode::InPlace, None) => {
            return Err(RestoreError::Refused(format!(
                "database `{name}` does not exist on the target server; restore into a new database with --target-db {name}"
            )))
        }
        (Mode::InPlace, Some(_)) if options.jobs.is_some() => {
            return Err(RestoreError::Refused(
                "--jobs cannot restore inside one transaction; use it with --full or --target-db".into(),
            ))
        }
        (Mode::NewDatabase { replace: false, .. }, Some(_)) => {
            return Err(RestoreError::Refused(format!(
                "database `{name}` already exists; choose another --target-db, or add --replace-target to replace it (it is kept as `{name}__pre_restore_<time>`)"
            )))
        }
        _ => {}
    }
    let found = tools::discover("pg_restore", &tools.bin_dirs).await?;
    let pg_restore = tools::choose_for_restore(&found, m.pg_dump_major, server_major)?;
    let via_psql = if pg_restore.major >= 17 && server_major < 17 {
        if options.jobs.is_some() {
            return Err(RestoreError::Refused(format!(
                "--jobs needs pg_restore to connect directly, but pg_restore {} sends `SET transaction_timeout`, which PostgreSQL {server_major} rejects; install the PostgreSQL {server_major} client tools or restore without --jobs",
                pg_restore.version
            )));
        }
        let dir = pg_restore.path.parent().map(|d| d.to_path_buf());
        let psql = tools::discover("psql", &dir.into_iter().collect::<Vec<_>>())
            .await?
            .remove(0);
        Some(psql)
    } else {
        None
    };
    let roles = match (&m.globals, options.with_globals) {
        (_, false) => None,
        (None, true) => {
            return Err(RestoreError::Refused(format!(
                "`{}` has no roles stored with it (set `globals = true`, PGSIDECAR_GLOBALS=true, for future backups); create the roles by hand or restore with --no-owner",
                m.key
            )))
        }
        (Some(g), true) => {
            let sql =
                crate::restore::globals::fetch(storage, g, m.encryption.as_ref(), &options.encryption)
                    .await?;
            let existing = admin
                .query("SELECT rolname::text FROM pg_roles", &[])
                .await
                .map_err(query_err("listing roles"))?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect();
            Some(crate::restore::globals::plan_roles(&sql, &existing))
        }
    };
    Ok(Plan {
        roles,
        entry: entry.clone(),
        server: server.clone(),
        target: Target {
            server_version,
            server_major,
            name,
            existing,
        },
        mode,
        pg_restore,
        via_psql,
        options,
    })
}

impl Plan {
    /// What will happen, for the operator to confirm.
    pub fn describe(&self, now: chrono::DateTime<Utc>) -> String {
        let m = &self.entry.manifest;
        let t = &self.target;
        let hb = crate::notify::human_bytes;
        let age = crate::catalog::human_age(now - m.started_at);
        let mut out = format!(
            "Backup:  {} (taken {} UTC, {age} ago)\n         database `{}` on PostgreSQL {}, {} stored, {} uncompressed{}\n",
            m.key,
            m.started_at.format("%Y-%m-%d %H:%M:%S"),
            m.database,
            m.server_version,
            hb(m.stored_bytes),
            hb(m.raw_bytes),
            match &m.encryption {
                Some(e) => format!(", encrypted ({}; the configured key opens it)", e.scheme),
                None => String::new(),
            },
        );
        out.push_str(&format!(
            "Target:  database `{}` on {}:{} (PostgreSQL {})",
            t.name, self.server.host, self.server.port, t.server_version
        ));
        match &t.existing {
            Some(e) => out.push_str(&format!(
                ", exists: {}, {} open connection(s)\n",
                hb(e.size),
                e.connections
            )),
            None => out.push_str(", does not exist yet\n"),
        }
        let action = match &self.mode {
            Mode::InPlace => format!(
                "restore into `{}` in ONE transaction: objects in the backup are dropped and recreated; \
                 on any error nothing changes. Open connections may make it wait for their locks.",
                t.name
            ),
            Mode::NewDatabase { name, .. } if t.existing.is_none() => format!(
                "restore into a new database, check it, then name it `{name}`."
            ),
            Mode::NewDatabase { name, drop_old, .. } => format!(
                "restore into a new database and check it; then terminate the connections to `{name}`, \
                 rename it to `{name}__pre_restore_<time>`{} and give the restored one its name.",
                if *drop_old { " and DROP it" } else { " (kept until you drop it)" }
            ),
        };
        out.push_str(&format!("Action:  {action}\n"));
        out.push_str(&format!(
            "Client:  pg_restore {}{}\n",
            self.pg_restore.version,
            match &self.via_psql {
                Some(_) => format!(
                    " through psql (it sends `SET transaction_timeout`, which PostgreSQL {} rejects; that one statement is left out)",
                    t.server_major
                ),
                None => String::new(),
            }
        ));
        match &self.roles {
            Some(r) if r.missing.is_empty() => {
                out.push_str("Roles:   every role of the backup exists on the target server\n")
            }
            Some(r) => out.push_str(&format!(
                "Roles:   creates the missing role(s) {} first{}\n",
                r.missing.join(", "),
                if m.globals.as_ref().is_some_and(|g| !g.role_passwords) {
                    " (stored without passwords: set them afterwards)"
                } else {
                    ""
                }
            )),
            None => {}
        }
        if let Some(n) = self.options.jobs {
            out.push_str(&format!(
                "Jobs:    {n} parallel; this needs the archive as a local file ({} in {}), removed afterwards\n",
                hb(m.raw_bytes),
                std::env::temp_dir().display()
            ));
        }
        out
    }

    /// Shows the plan and asks for confirmation on a terminal; without one, `yes` must be given.
    pub fn confirm(&self, yes: bool) -> Result<(), RestoreError> {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{}", self.describe(Utc::now()));
        if yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(RestoreError::Refused(
                "no terminal to confirm on: add --yes to restore without confirmation".into(),
            ));
        }
        let _ = write!(
            err,
            "Type the database name `{}` to go ahead: ",
            self.target.name
        );
        let _ = err.flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|_| RestoreError::Declined)?;
        if answer.trim() == self.target.name {
            Ok(())
        } else {
            Err(RestoreError::Declined)
        }
    }
}

#[cfg(test)]
mod tests {
    // Golden files in src/snapshots/: after a deliberate change, `INSTA_UPDATE=always cargo test --lib restore` rewrites them; review `git diff`.

    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn at(s: &str) -> chrono::DateTime<Utc> {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn client(version: &str) -> ClientTool {
        let major = version.split('.').next().unwrap().parse().unwrap();
        ClientTool {
            path: PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/pg_restore")),
            version: version.into(),
            major,
        }
    }

    /// A plan as [`super::plan`] would make it, without a server: a backup of `app` taken 3h05m
    /// before `now` (see [`golden_restore_plans`]).
    fn fixed_plan(mode: Mode, existing: Option<ExistingDb>) -> Plan {
        let entry =
            crate::catalog::tests::entry("app", "2026-11-24T02:00:00Z", 3 << 20, 40 << 20, 83_400);
        let name = match &mode {
            Mode::InPlace => entry.manifest.database.clone(),
            Mode::NewDatabase { name, .. } => name.clone(),
        };
        Plan {
            entry,
            server: DatabaseConfig {
                host: "db.internal".into(),
                port: 5433,
                user: "postgres".into(),
                password: None,
                dbname: "postgres".into(),
                sslmode: crate::source::SslMode::Prefer,
                sslrootcert: None,
                connect_timeout: Duration::from_secs(10),
                tls: crate::source::tls::Connector::unverified(),
            },
            target: Target {
                server_version: "17.4".into(),
                server_major: 17,
                name,
                existing,
            },
            mode,
            pg_restore: client("17.4"),
            via_psql: None,
            options: Options::default(),
            roles: None,
        }
    }

    fn existing() -> ExistingDb {
        ExistingDb {
            size: 52 << 20,
            connections: 3,
            owner: "app".into(),
            encoding: "UTF8".into(),
            collate: "C.UTF-8".into(),
            ctype: "C.UTF-8".into(),
        }
    }

    /// What `restore` prints before it asks for confirmation, for each mode.
    #[test]
    fn golden_restore_plans() {
        // The crate keeps every golden file in src/snapshots/.
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path("../snapshots");
        let _snapshots = settings.bind_to_scope();
        let now = at("2026-11-24T05:05:30Z");

        let in_place = fixed_plan(Mode::InPlace, Some(existing()));
        insta::assert_snapshot!("in_place", in_place.describe(now));

        // A new database from an encrypted backup with roles to create, through psql (an
        // older server), with parallel jobs.
        let mut new_db = fixed_plan(
            Mode::NewDatabase {
                name: "app_copy".into(),
                replace: false,
                drop_old: false,
            },
            None,
        );
        let m = &mut new_db.entry.manifest;
        m.encryption = Some(crate::codec::encryption::EncryptionRecord {
            scheme: crate::codec::encryption::Scheme::X25519,
            recipients: vec!["0123456789abcdef".into()],
        });
        m.globals = Some(crate::catalog::manifest::Globals {
            key: crate::keys::globals_key(&m.key),
            raw_bytes: 2048,
            stored_bytes: 700,
            sha256: "0".repeat(64),
            role_passwords: false,
        });
        new_db.target.server_version = "16.8".into();
        new_db.target.server_major = 16;
        new_db.via_psql = Some(ClientTool {
            path: PathBuf::from("/usr/lib/postgresql/17/bin/psql"),
            ..client("17.4")
        });
        new_db.options.jobs = Some(4);
        new_db.options.with_globals = true;
        new_db.roles = Some(crate::restore::globals::RolePlan {
            missing: vec!["app_owner".into(), "reporting".into()],
            statements: vec![],
        });
        // The temporary directory comes from the environment.
        let text = new_db
            .describe(now)
            .replace(&std::env::temp_dir().display().to_string(), "$TMPDIR");
        insta::assert_snapshot!("new_database", text);

        let mut replace = fixed_plan(
            Mode::NewDatabase {
                name: "app".into(),
                replace: true,
                drop_old: false,
            },
            Some(existing()),
        );
        replace.options.with_globals = true;
        replace.roles = Some(crate::restore::globals::RolePlan::default());
        insta::assert_snapshot!("replace_keep_old", replace.describe(now));

        let replace_drop = fixed_plan(
            Mode::NewDatabase {
                name: "app".into(),
                replace: true,
                drop_old: true,
            },
            Some(existing()),
        );
        insta::assert_snapshot!("replace_drop_old", replace_drop.describe(now));
    }
}

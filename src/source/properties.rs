//! What a database is beyond its contents: encoding, locale provider and locale, owner,
//! privileges, settings, comment and connection limit. A custom-format dump leaves these to
//! `pg_restore --create`, which the sidecar cannot use (it restores into databases it names
//! itself), so a backup records them in its manifest and every database the sidecar creates
//! (`restore --full`, `--target-db`, drills) gets them back, checked by [`compare`].
//!
//! The catalog columns follow PostgreSQL's `pg_database` by major: `datlocprovider`,
//! `daticulocale` and `datcollversion` from 15, `daticurules` from 16, `datlocale` (replacing
//! `daticulocale`) and the builtin provider from 17.

use serde::{Deserialize, Serialize};

/// A database's properties, as [`read`] finds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseProperties {
    pub owner: String,
    pub encoding: String,
    /// `libc`, `icu` or `builtin`.
    pub locale_provider: String,
    pub collate: String,
    pub ctype: String,
    /// The ICU or builtin locale (not set for libc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icu_rules: Option<String>,
    /// The collation library's version when the database was created (recorded, and reported
    /// when it differs, not restored: the target server's library decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation_version: Option<String>,
    /// -1: no limit.
    pub connection_limit: i32,
    /// Effective privileges, the defaults spelled out; sorted.
    pub privileges: Vec<Privilege>,
    /// `ALTER DATABASE … SET` and `ALTER ROLE … IN DATABASE … SET`; sorted.
    pub settings: Vec<Setting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One privilege on the database: `CONNECT`, `CREATE` or `TEMPORARY`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Privilege {
    /// A role name; empty for PUBLIC.
    pub grantee: String,
    pub privilege: String,
    pub grantable: bool,
}

/// One setting stored for the database, for every role or (`role`) for one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Setting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub name: String,
    /// As the catalog stores it (`app, public` for a search_path).
    pub value: String,
}

/// Reads the properties of `database` through `client` (any database of the server).
pub async fn read(
    client: &tokio_postgres::Client,
    database: &str,
    server_major: u32,
) -> Result<Option<DatabaseProperties>, tokio_postgres::Error> {
    let provider = if server_major >= 15 {
        "CASE d.datlocprovider WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE 'libc' END"
    } else {
        "'libc'"
    };
    let locale = match server_major {
        17.. => "d.datlocale",
        15 | 16 => "d.daticulocale",
        _ => "NULL::text",
    };
    let rules = if server_major >= 16 {
        "d.daticurules"
    } else {
        "NULL::text"
    };
    let version = if server_major >= 15 {
        "d.datcollversion"
    } else {
        "NULL::text"
    };
    let sql = format!(
        "SELECT pg_catalog.pg_get_userbyid(d.datdba)::text, \
                pg_catalog.pg_encoding_to_char(d.encoding)::text, {provider}, \
                d.datcollate::text, d.datctype::text, {locale}::text, {rules}::text, \
                {version}::text, d.datconnlimit, \
                pg_catalog.shobj_description(d.oid, 'pg_database')::text \
           FROM pg_catalog.pg_database d WHERE d.datname = $1"
    );
    let Some(row) = client.query_opt(&sql, &[&database]).await? else {
        return Ok(None);
    };
    let privileges = client
        .query(
            "SELECT CASE WHEN a.grantee = 0 THEN '' \
                         ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END, \
                    a.privilege_type::text, a.is_grantable \
               FROM pg_catalog.pg_database d, \
                    pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a \
              WHERE d.datname = $1",
            &[&database],
        )
        .await?
        .iter()
        .map(|r| Privilege {
            grantee: r.get(0),
            privilege: r.get(1),
            grantable: r.get(2),
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut settings: Vec<Setting> = client
        .query(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL \
                         ELSE pg_catalog.pg_get_userbyid(s.setrole)::text END, \
                    pg_catalog.unnest(s.setconfig) \
               FROM pg_catalog.pg_db_role_setting s \
               JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase \
              WHERE d.datname = $1",
            &[&database],
        )
        .await?
        .iter()
        .filter_map(|r| {
            let item: String = r.get(1);
            let (name, value) = item.split_once('=')?;
            Some(Setting {
                role: r.get(0),
                name: name.to_string(),
                value: value.to_string(),
            })
        })
        .collect();
    settings.sort();
    Ok(Some(DatabaseProperties {
        owner: row.get(0),
        encoding: row.get(1),
        locale_provider: row.get(2),
        collate: row.get(3),
        ctype: row.get(4),
        locale: row.get(5),
        icu_rules: row.get(6),
        collation_version: row.get(7),
        connection_limit: row.get(8),
        privileges,
        settings,
        comment: row.get(9),
    }))
}

fn literal(s: &str) -> String {
    postgres_protocol::escape::escape_literal(s)
}

fn ident(s: &str) -> String {
    postgres_protocol::escape::escape_identifier(s)
}

/// `CREATE DATABASE name` with the encoding, locale provider, locales and connection limit of
/// `p`, for a server of `server_major` (pure). The owner is `owner`: `p.owner` when that role
/// exists there. Fails, naming the property, when that server cannot give it.
pub fn create_sql(
    name: &str,
    p: &DatabaseProperties,
    owner: &str,
    server_major: u32,
) -> Result<String, String> {
    let mut sql = format!(
        "CREATE DATABASE {} TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        ident(name),
        ident(owner),
        literal(&p.encoding),
        literal(&p.collate),
        literal(&p.ctype),
    );
    match (p.locale_provider.as_str(), server_major) {
        ("libc", _) => {}
        ("icu", 15..) => {
            sql.push_str(" LOCALE_PROVIDER icu");
            if let Some(l) = &p.locale {
                sql.push_str(&format!(" ICU_LOCALE {}", literal(l)));
            }
        }
        ("builtin", 17..) => {
            sql.push_str(" LOCALE_PROVIDER builtin");
            if let Some(l) = &p.locale {
                sql.push_str(&format!(" BUILTIN_LOCALE {}", literal(l)));
            }
        }
        (other, _) => {
            return Err(format!(
                "the database used the `{other}` locale provider, which PostgreSQL {server_major} does not have"
            ))
        }
    }
    if let Some(rules) = &p.icu_rules {
        if server_major < 16 {
            return Err(format!(
                "the database had ICU rules, which PostgreSQL {server_major} does not have"
            ));
        }
        sql.push_str(&format!(" ICU_RULES {}", literal(rules)));
    }
    if p.connection_limit != -1 {
        sql.push_str(&format!(" CONNECTION LIMIT {}", p.connection_limit));
    }
    Ok(sql)
}

/// Settings whose value is a list that `SET` takes as separate literals (PostgreSQL's
/// `GUC_LIST_QUOTE` variables, as pg_dump's `variable_is_guc_list_quote` names them): written
/// as one literal, `app, public` would become a single schema named "app, public".
const LIST_SETTINGS: &[&str] = &[
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// The `SET name TO …` clause for a stored setting (pure).
pub fn set_clause(name: &str, value: &str) -> String {
    let value = if LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        split_list(value)
            .iter()
            .map(|v| literal(v))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        literal(value)
    };
    format!("SET {} TO {value}", ident(name))
}

/// Splits a stored list setting at commas outside double quotes, trimming blanks and
/// unquoting (PostgreSQL's `SplitGUCList`).
fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut current).trim().to_string()),
            c if !quoted && c.is_whitespace() && current.trim().is_empty() => {}
            c => current.push(c),
        }
    }
    if !current.trim().is_empty() || !out.is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// What the statements after `CREATE DATABASE` set: comment, privileges, settings (pure).
/// `current` are the privileges the new database has; roles missing from `roles` are left
/// out, each with a note.
pub fn follow_up_sql(
    name: &str,
    p: &DatabaseProperties,
    current: &[Privilege],
    roles: &std::collections::BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let (mut sql, mut notes) = (Vec::new(), Vec::new());
    let db = ident(name);
    let who = |g: &str| {
        if g.is_empty() {
            "PUBLIC".to_string()
        } else {
            ident(g)
        }
    };
    let exists = |g: &str| g.is_empty() || roles.contains(g);
    if let Some(c) = &p.comment {
        sql.push(format!("COMMENT ON DATABASE {db} IS {}", literal(c)));
    }
    for c in current.iter().filter(|c| !p.privileges.contains(c)) {
        sql.push(format!(
            "REVOKE {} ON DATABASE {db} FROM {} CASCADE",
            c.privilege,
            who(&c.grantee)
        ));
    }
    for w in p.privileges.iter().filter(|w| !current.contains(w)) {
        if !exists(&w.grantee) {
            notes.push(format!(
                "{} on the database for `{}`: the role does not exist here",
                w.privilege, w.grantee
            ));
            continue;
        }
        sql.push(format!(
            "GRANT {} ON DATABASE {db} TO {}{}",
            w.privilege,
            who(&w.grantee),
            if w.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        ));
    }
    for s in &p.settings {
        match &s.role {
            None => sql.push(format!(
                "ALTER DATABASE {db} {}",
                set_clause(&s.name, &s.value)
            )),
            Some(r) if roles.contains(r) => sql.push(format!(
                "ALTER ROLE {} IN DATABASE {db} {}",
                ident(r),
                set_clause(&s.name, &s.value)
            )),
            Some(r) => notes.push(format!(
                "setting {} for `{r}` in the database: the role does not exist here",
                s.name
            )),
        }
    }
    (sql, notes)
}

/// Each compared property with its text, for [`compare`]. The collation version is the
/// target library's, and not compared.
fn described(p: &DatabaseProperties) -> [(&'static str, String); 11] {
    let privileges = p
        .privileges
        .iter()
        .map(|w| {
            let grantee = if w.grantee.is_empty() {
                "PUBLIC"
            } else {
                &w.grantee
            };
            format!(
                "{grantee}:{}{}",
                w.privilege,
                if w.grantable { "*" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let settings = p
        .settings
        .iter()
        .map(|s| match &s.role {
            Some(r) => format!("{}={} (for {r})", s.name, s.value),
            None => format!("{}={}", s.name, s.value),
        })
        .collect::<Vec<_>>()
        .join("; ");
    [
        ("the owner", p.owner.clone()),
        ("the encoding", p.encoding.clone()),
        ("the locale provider", p.locale_provider.clone()),
        ("LC_COLLATE", p.collate.clone()),
        ("LC_CTYPE", p.ctype.clone()),
        ("the locale", p.locale.clone().unwrap_or_default()),
        ("the ICU rules", p.icu_rules.clone().unwrap_or_default()),
        ("the connection limit", p.connection_limit.to_string()),
        ("the comment", p.comment.clone().unwrap_or_default()),
        ("the privileges", privileges),
        ("the settings", settings),
    ]
}

/// How `found` differs from `recorded` (a database the sidecar restored against its backup):
/// one line per differing property.
pub fn compare(recorded: &DatabaseProperties, found: &DatabaseProperties) -> Vec<String> {
    described(recorded)
        .into_iter()
        .zip(described(found))
        .filter(|((_, r), (_, f))| r != f)
        .map(|((what, r), (_, f))| format!("{what}: `{f}`, the backup recorded `{r}`"))
        .collect()
}

/// What a restore gives a new database (pure): `recorded` with the owner the target server
/// can have (`fallback`, the restoring user, when the owner role is missing there or with
/// `no_owner`), and without privileges and role settings of roles it lacks (with
/// `no_owner`, the new owner's default privileges). The notes say what was not carried over.
pub fn intended(
    recorded: &DatabaseProperties,
    roles: &std::collections::BTreeSet<String>,
    fallback: &str,
    no_owner: bool,
) -> (DatabaseProperties, Vec<String>) {
    let mut p = recorded.clone();
    let mut notes = Vec::new();
    if no_owner || !roles.contains(&recorded.owner) {
        if !no_owner {
            notes.push(format!(
                "the owner `{}` does not exist here: the database is owned by `{fallback}`",
                recorded.owner
            ));
        }
        p.owner = fallback.to_string();
    }
    if no_owner {
        let grant = |grantee: &str, privilege: &str| Privilege {
            grantee: grantee.to_string(),
            privilege: privilege.to_string(),
            grantable: false,
        };
        p.privileges = vec![
            grant("", "CONNECT"),
            grant("", "TEMPORARY"),
            grant(fallback, "CONNECT"),
            grant(fallback, "CREATE"),
            grant(fallback, "TEMPORARY"),
        ];
    } else {
        for w in &mut p.privileges {
            if w.grantee == recorded.owner {
                w.grantee = p.owner.clone();
            }
        }
        p.privileges.retain(|w| {
            let keep = w.grantee.is_empty() || roles.contains(&w.grantee) || w.grantee == p.owner;
            if !keep {
                notes.push(format!(
                    "{} on the database for `{}`: the role does not exist here",
                    w.privilege, w.grantee
                ));
            }
            keep
        });
    }
    p.privileges.sort();
    p.privileges.dedup();
    p.settings.retain(|s| match &s.role {
        Some(r) if !roles.contains(r) => {
            notes.push(format!(
                "setting {} for `{r}` in the database: the role does not exist here",
                s.name
            ));
            false
        }
        _ => true,
    });
    (p, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> DatabaseProperties {
        DatabaseProperties {
            owner: "crm_owner".into(),
            encoding: "UTF8".into(),
            locale_provider: "builtin".into(),
            collate: "C.UTF-8".into(),
            ctype: "C.UTF-8".into(),
            locale: Some("PG_UNICODE_FAST".into()),
            icu_rules: None,
            collation_version: Some("1".into()),
            connection_limit: 20,
            privileges: vec![Privilege {
                grantee: "crm_owner".into(),
                privilege: "CONNECT".into(),
                grantable: false,
            }],
            settings: vec![
                Setting {
                    role: None,
                    name: "search_path".into(),
                    value: "app, \"We ird\", public".into(),
                },
                Setting {
                    role: Some("reporter".into()),
                    name: "statement_timeout".into(),
                    value: "5s".into(),
                },
            ],
            comment: Some("the CRM's 'data'".into()),
        }
    }

    #[test]
    fn create_carries_provider_locale_and_limit() {
        assert_eq!(
            create_sql("crm copy", &props(), "crm_owner", 18).unwrap(),
            "CREATE DATABASE \"crm copy\" TEMPLATE template0 OWNER \"crm_owner\" ENCODING 'UTF8' \
             LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' LOCALE_PROVIDER builtin \
             BUILTIN_LOCALE 'PG_UNICODE_FAST' CONNECTION LIMIT 20"
        );
        let err = create_sql("x", &props(), "o", 16).unwrap_err();
        assert!(err.contains("`builtin` locale provider"), "{err}");
    }

    #[test]
    fn list_settings_are_set_as_separate_literals() {
        assert_eq!(
            set_clause("search_path", "app, \"We ird\", public"),
            "SET \"search_path\" TO 'app', 'We ird', 'public'"
        );
        assert_eq!(
            set_clause("statement_timeout", "5s"),
            "SET \"statement_timeout\" TO '5s'"
        );
        assert_eq!(split_list("\"a\"\"b\" , c"), vec!["a\"b", "c"]);
    }

    #[test]
    fn follow_up_revokes_what_the_backup_lacked_and_skips_missing_roles() {
        let current = vec![
            Privilege {
                grantee: String::new(),
                privilege: "CONNECT".into(),
                grantable: false,
            },
            Privilege {
                grantee: "crm_owner".into(),
                privilege: "CONNECT".into(),
                grantable: false,
            },
        ];
        let roles = ["crm_owner".to_string()].into();
        let (sql, notes) = follow_up_sql("crm", &props(), &current, &roles);
        assert_eq!(
            sql,
            [
                "COMMENT ON DATABASE \"crm\" IS 'the CRM''s ''data'''",
                "REVOKE CONNECT ON DATABASE \"crm\" FROM PUBLIC CASCADE",
                "ALTER DATABASE \"crm\" SET \"search_path\" TO 'app', 'We ird', 'public'",
            ]
        );
        assert_eq!(
            notes,
            ["setting statement_timeout for `reporter` in the database: the role does not exist here"]
        );
    }

    #[test]
    fn compare_names_each_difference() {
        let mut found = props();
        found.locale_provider = "libc".into();
        found.collation_version = Some("2".into());
        found.settings.clear();
        let diffs = compare(&props(), &found);
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert_eq!(
            diffs[0],
            "the locale provider: `libc`, the backup recorded `builtin`"
        );
        assert!(diffs[1].starts_with("the settings: ``, the backup recorded `search_path="));
    }
}

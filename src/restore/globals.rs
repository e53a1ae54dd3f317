//! Globals: the roles stored with a backup (`pg_dumpall --globals-only`) and how a restore
//! recreates the missing ones.
//!
//! Only roles that do not exist on the target server are created, with their attributes,
//! comments and memberships; existing roles are never altered (their passwords and attributes
//! on the target are the truth there). Tablespaces are left out: their directories belong to
//! the old server's disk.

use std::collections::BTreeSet;

use crate::catalog::manifest::Globals;
use crate::storage::{Storage, StorageError};

/// Errors reading the stored globals.
#[derive(Debug, thiserror::Error)]
pub enum GlobalsError {
    #[error("cannot read the roles stored in `{key}`: {source}")]
    Storage {
        key: String,
        #[source]
        source: StorageError,
    },
    #[error("the roles stored in `{key}` are damaged: {reason}")]
    Damaged { key: String, reason: String },
}

/// Reads and checks the SQL stored in `globals`, decrypting it with `keys` when the backup is
/// encrypted (`encrypted`, from its manifest).
pub async fn fetch(
    storage: &Storage,
    globals: &Globals,
    encrypted: Option<&crate::codec::encryption::EncryptionRecord>,
    keys: &crate::codec::encryption::Encryption,
) -> Result<String, GlobalsError> {
    let damaged = |reason: String| GlobalsError::Damaged {
        key: globals.key.clone(),
        reason,
    };
    let bytes = storage
        .get_bytes(&globals.key)
        .await
        .map_err(|source| GlobalsError::Storage {
            key: globals.key.clone(),
            source,
        })?;
    let sha = crate::codec::hash::sha256_hex(&bytes);
    if sha != globals.sha256 || bytes.len() as u64 != globals.stored_bytes {
        return Err(damaged(format!(
            "sha256 {sha} over {} bytes does not match the manifest ({} over {} bytes)",
            bytes.len(),
            globals.sha256,
            globals.stored_bytes
        )));
    }
    // Globals written before they followed the job's compression are `.zst`; the key says.
    let codec = crate::codec::Codec {
        compression: crate::keys::compression_of(&globals.key)
            .ok_or_else(|| damaged("its key names no known compression".into()))?,
        encryption: keys,
    };
    let sql = codec
        .decode_bytes(encrypted, bytes.to_vec())
        .await
        .map_err(|e| match crate::codec::encryption::as_decrypt_error(&e) {
            Some(d) => damaged(format!("cannot decrypt: {d}")),
            None => damaged(e.to_string()),
        })?;
    String::from_utf8(sql).map_err(|e| damaged(e.to_string()))
}

/// Splits a leading SQL identifier (quoted or not) off `s`: (name, rest).
fn split_ident(s: &str) -> Option<(String, &str)> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|&(_, n)| n) == Some('"') {
                    chars.next();
                    name.push('"');
                } else {
                    return Some((name, &quoted[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = s.find([' ', ';']).unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

/// The statements of a globals dump that concern roles, by the role(s) they concern.
enum RoleStatement {
    /// `CREATE ROLE`, `ALTER ROLE`, `COMMENT ON ROLE` of one role.
    Of(String, String),
    /// `GRANT role TO member`, with any `GRANTED BY` removed: the restoring user grants.
    Grant {
        role: String,
        member: String,
        sql: String,
    },
}

/// Splits SQL as pg_dumpall writes it into statements, each ending in its `;`. A `;` or a
/// newline inside a literal ('…', E'…', $tag$…$tag$) or a quoted identifier ends nothing, so a
/// comment spanning lines stays one statement. psql meta-commands (`\restrict`, on a line of
/// their own) and `--` comments are dropped. The rules are those of the PostgreSQL
/// documentation, "SQL Syntax: Lexical Structure" (with standard_conforming_strings on, as
/// pg_dumpall sets it).
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    while let Some(c) = chars.next() {
        match c {
            '\\' if current.trim().is_empty() => {
                // A meta-command runs to the end of its line.
                chars.by_ref().find(|&n| n == '\n');
                current.clear();
            }
            '-' if chars.peek() == Some(&'-') => {
                chars.by_ref().find(|&n| n == '\n');
                current.push('\n');
            }
            '\'' => {
                let mut before = current.chars().rev();
                let escapes = matches!(before.next(), Some('E' | 'e'))
                    && !before.next().is_some_and(ident_char);
                current.push(c);
                while let Some(n) = chars.next() {
                    current.push(n);
                    if escapes && n == '\\' {
                        current.extend(chars.next());
                    } else if n == '\'' {
                        if chars.peek() == Some(&'\'') {
                            current.extend(chars.next());
                        } else {
                            break;
                        }
                    }
                }
            }
            '"' => {
                current.push(c);
                while let Some(n) = chars.next() {
                    current.push(n);
                    if n == '"' {
                        if chars.peek() == Some(&'"') {
                            current.extend(chars.next());
                        } else {
                            break;
                        }
                    }
                }
            }
            '$' if !current.chars().last().is_some_and(ident_char) => {
                // $tag$ … $tag$, the tag possibly empty; `$1` is a parameter, not a quote.
                current.push(c);
                let rest: String = chars.clone().collect();
                let tag = rest
                    .find(|ch: char| !ident_char(ch))
                    .filter(|&i| rest[i..].starts_with('$'))
                    .map(|i| &rest[..i])
                    .filter(|t| !t.starts_with(|d: char| d.is_ascii_digit()));
                if let Some(tag) = tag {
                    let delimiter = format!("${tag}$");
                    let body = tag.len() + 1;
                    let end = rest[body..]
                        .find(&delimiter)
                        .map_or(rest.len(), |i| body + i + delimiter.len());
                    current.push_str(&rest[..end]);
                    for _ in rest[..end].chars() {
                        chars.next();
                    }
                }
            }
            ';' => {
                current.push(';');
                out.push(current.trim().to_string());
                current.clear();
            }
            _ => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

fn parse_line(line: &str) -> Option<RoleStatement> {
    for prefix in ["CREATE ROLE ", "ALTER ROLE ", "COMMENT ON ROLE "] {
        if let Some(rest) = line.strip_prefix(prefix) {
            let (role, _) = split_ident(rest)?;
            return Some(RoleStatement::Of(role, line.to_string()));
        }
    }
    let rest = line.strip_prefix("GRANT ")?;
    let (role, rest) = split_ident(rest)?;
    let (member, _) = split_ident(rest.strip_prefix(" TO ")?)?;
    let body = line.trim_end_matches(';');
    let body = body.find(" GRANTED BY ").map_or(body, |i| &body[..i]);
    Some(RoleStatement::Grant {
        role,
        member,
        sql: format!("{body};"),
    })
}

/// What a restore with `--with-globals` will do on the target server.
#[derive(Debug, Clone, Default)]
pub struct RolePlan {
    /// Roles in the backup that the target server lacks.
    pub missing: Vec<String>,
    /// Statements that create them, set their attributes and memberships.
    pub statements: Vec<String>,
}

/// The statements that create the roles of `sql` missing from `existing` (pure).
pub fn plan_roles(sql: &str, existing: &BTreeSet<String>) -> RolePlan {
    let statements: Vec<RoleStatement> = statements(sql)
        .iter()
        .filter_map(|s| parse_line(s))
        .collect();
    let missing: BTreeSet<String> = statements
        .iter()
        .filter_map(|s| match s {
            RoleStatement::Of(role, sql) if sql.starts_with("CREATE ROLE ") => Some(role),
            _ => None,
        })
        .filter(|r| !existing.contains(*r))
        .cloned()
        .collect();
    let statements = statements
        .into_iter()
        .filter_map(|s| match s {
            RoleStatement::Of(role, sql) => missing.contains(&role).then_some(sql),
            RoleStatement::Grant { role, member, sql } => {
                (missing.contains(&role) || missing.contains(&member)).then_some(sql)
            }
        })
        .collect();
    RolePlan {
        missing: missing.into_iter().collect(),
        statements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"\restrict abc
SET default_transaction_read_only = off;
--
-- Roles
--

CREATE ROLE app_owner;
ALTER ROLE app_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE "Report ""Reader""";
ALTER ROLE "Report ""Reader""" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:x';
COMMENT ON ROLE app_owner IS 'owns the app';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
ALTER ROLE app_owner SET search_path TO 'app';
GRANT app_owner TO "Report ""Reader""" WITH INHERIT TRUE GRANTED BY postgres;
GRANT pg_read_all_data TO postgres GRANTED BY postgres;
CREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';
"#;

    #[test]
    fn only_missing_roles_are_created_with_their_memberships() {
        let existing: BTreeSet<String> = ["postgres".to_string()].into();
        let plan = plan_roles(DUMP, &existing);
        assert_eq!(plan.missing, vec!["Report \"Reader\"", "app_owner"]);
        assert_eq!(
            plan.statements,
            vec![
                "CREATE ROLE app_owner;",
                "ALTER ROLE app_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;",
                "CREATE ROLE \"Report \"\"Reader\"\"\";",
                "ALTER ROLE \"Report \"\"Reader\"\"\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:x';",
                "COMMENT ON ROLE app_owner IS 'owns the app';",
                "ALTER ROLE app_owner SET search_path TO 'app';",
                "GRANT app_owner TO \"Report \"\"Reader\"\"\" WITH INHERIT TRUE;",
            ]
        );
    }

    /// Regression: a role comment spanning lines was cut at its first newline, and the
    /// restore failed with "unterminated quoted string".
    #[test]
    fn statements_keep_newlines_and_semicolons_inside_literals() {
        let sql = r#"\restrict k
SET x = 1;
-- a comment; not a statement
CREATE ROLE ledger_ro;
COMMENT ON ROLE ledger_ro IS 'read-only role
for the reporting team; see ''docs''';
COMMENT ON ROLE "we;ird
name" IS E'line\none \' still; in';
CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
SELECT $1;
\unrestrict k
"#;
        assert_eq!(
            statements(sql),
            vec![
                "SET x = 1;",
                "CREATE ROLE ledger_ro;",
                "COMMENT ON ROLE ledger_ro IS 'read-only role\nfor the reporting team; see ''docs''';",
                "COMMENT ON ROLE \"we;ird\nname\" IS E'line\\none \\' still; in';",
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;",
                "SELECT $1;",
            ]
        );
        let plan = plan_roles(sql, &BTreeSet::new());
        assert_eq!(
            plan.statements,
            vec![
                "CREATE ROLE ledger_ro;",
                "COMMENT ON ROLE ledger_ro IS 'read-only role\nfor the reporting team; see ''docs''';",
            ]
        );
    }

    #[test]
    fn nothing_to_do_when_every_role_exists() {
        let existing: BTreeSet<String> = ["postgres", "app_owner", "Report \"Reader\""]
            .into_iter()
            .map(String::from)
            .collect();
        let plan = plan_roles(DUMP, &existing);
        assert!(plan.missing.is_empty() && plan.statements.is_empty());
    }
}

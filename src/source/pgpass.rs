//! libpq's password file (`~/.pgpass`, `PGPASSFILE`): `host:port:database:user:password`
//! lines where `*` matches anything and `\` escapes `:` and `\`. Read here because
//! tokio-postgres does not, while pg_dump would: both must use the same password.

use std::path::Path;

use crate::secret::Secret;

/// The password of the first line matching the connection, if the file exists and matches.
pub fn lookup(path: &Path, host: &str, port: u16, dbname: &str, user: &str) -> Option<Secret> {
    let text = std::fs::read_to_string(path).ok()?;
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(split_fields)
        .filter(|f| f.len() == 5)
        .find(|f| {
            [host, port.as_str(), dbname, user]
                .iter()
                .zip(f.iter())
                .all(|(want, have)| have == "*" || have == want)
        })
        .map(|f| Secret::new(f[4].clone()))
}

fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().expect("never empty").push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgpass");
        std::fs::write(
            &p,
            "# comment\nother:5432:*:app:no\ndb:*:*:app:pa\\:ss\\\\word:x\n",
        )
        .unwrap();
        let s = lookup(&p, "db", 5432, "prod", "app").unwrap();
        assert_eq!(s.expose(), "pa:ss\\word:x");
        assert!(lookup(&p, "db", 5432, "prod", "nobody").is_none());
    }
}

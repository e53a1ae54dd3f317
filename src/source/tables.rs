//! Tables and their row counts: recorded in the manifest at backup time (in pg_dump's own
//! snapshot, so they describe exactly what was dumped) and compared after a restore or drill.
//!
//! Sizes and checksums prove that the stored bytes are the ones pg_dump wrote, not that a
//! restore put every row back: a restore that finishes without error can still miss data (a
//! filtered table list, rows loaded into another database). Counts taken in any other snapshot
//! would drift from the dump on a busy database and make every comparison noisy, so they are
//! taken only in the transaction whose snapshot pg_dump imports.
//!
//! The set counted is what pg_dump writes data for: ordinary tables, leaf partitions included
//! (a partitioned parent stores nothing itself), outside the system schemas and the temporary
//! ones of other sessions, and not owned by an extension (pg_dump recreates those through
//! `CREATE EXTENSION`, not from their data).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One table's exact row count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub schema: String,
    pub name: String,
    pub rows: u64,
    /// For a partition, its root partitioned table (`schema.name`, quoted as SQL needs):
    /// partitions come and go (daily rotation), so their rows are judged by this total.
    /// Absent from manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<String>,
}

impl TableRows {
    /// `schema.name`, each part quoted as SQL needs it, so names with dots, spaces or capitals
    /// read unambiguously.
    pub fn qualified_name(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", QuotedIdent(schema), QuotedIdent(name))
}

/// An identifier as SQL would need it written: bare when it is lower case letters, digits and
/// underscores, double-quoted otherwise.
struct QuotedIdent<'a>(&'a str);

impl fmt::Display for QuotedIdent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let bare = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
        if bare {
            f.write_str(s)
        } else {
            write!(f, "\"{}\"", s.replace('"', "\"\""))
        }
    }
}

/// The tables counted, each with its name quoted for SQL by the server itself.
const LIST_SQL: &str = r#"
SELECT n.nspname::text, c.relname::text, format('%I.%I', n.nspname, c.relname),
       (SELECT format('%I.%I', rn.nspname, rc.relname)
          FROM pg_catalog.pg_class rc
          JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
         WHERE c.relispartition AND rc.oid = pg_catalog.pg_partition_root(c.oid))
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname !~ '^pg_'
  AND n.nspname <> 'information_schema'
  AND NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_depend d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.objid = c.oid
      AND d.deptype = 'e'
  )
"#;

/// Tables counted by one statement. The counts are `UNION ALL`ed client-side rather than run
/// by the server through `query_to_xml`, which would need one statement in all but fails on
/// servers built without libxml. Batches keep statements short and, in a transaction, bound
/// the locks held at once (see [`count_in_transaction`]).
const BATCH: usize = 50;

/// Savepoint each batch runs in, inside a transaction.
const SAVEPOINT: &str = "pgsidecar_count";

/// Exact row counts of every table pg_dump dumps the data of. Each statement sees its own
/// snapshot: for a database nobody writes to, such as a fresh restore. Sorted by schema, then
/// name.
pub async fn count(
    client: &tokio_postgres::Client,
) -> Result<Vec<TableRows>, tokio_postgres::Error> {
    count_with(client, false).await
}

/// [`count`] inside `client`'s open transaction, so every count sees its snapshot (the one
/// pg_dump imported). Each statement runs in a savepoint that is rolled back after it: a failed
/// count leaves the transaction usable (its snapshot stays importable), and the locks the
/// counts take are let go batch by batch. Held to the end, they would add one lock per table to
/// pg_dump's own in the shared lock table, and a lock held on a table pg_dump has not locked
/// yet could queue a DDL statement, and behind it pg_dump, until the backup ends: a stall.
pub async fn count_in_transaction(
    client: &tokio_postgres::Client,
) -> Result<Vec<TableRows>, tokio_postgres::Error> {
    count_with(client, true).await
}

async fn count_with(
    client: &tokio_postgres::Client,
    in_transaction: bool,
) -> Result<Vec<TableRows>, tokio_postgres::Error> {
    let mut listed = Vec::new();
    for row in run(client, LIST_SQL, in_transaction).await? {
        let schema: String = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        let quoted: String = row.try_get(2)?;
        let partition_of: Option<String> = row.try_get(3)?;
        listed.push((schema, name, quoted, partition_of));
    }
    let mut tables = Vec::with_capacity(listed.len());
    for batch in listed.chunks(BATCH) {
        let sql = batch
            .iter()
            .enumerate()
            .map(|(i, (_, _, quoted, _))| format!("SELECT {i}, count(*) FROM {quoted}"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let mut counts = vec![0u64; batch.len()];
        for row in run(client, &sql, in_transaction).await? {
            let i: i32 = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            if let Some(c) = usize::try_from(i).ok().and_then(|i| counts.get_mut(i)) {
                *c = n.max(0) as u64;
            }
        }
        for ((schema, name, _, partition_of), rows) in batch.iter().zip(counts) {
            tables.push(TableRows {
                schema: schema.clone(),
                name: name.clone(),
                rows,
                partition_of: partition_of.clone(),
            });
        }
    }
    // Sorted here rather than by the server: the order must not depend on its collation.
    tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    Ok(tables)
}

/// Runs one query, in a transaction inside a savepoint rolled back afterwards.
async fn run(
    client: &tokio_postgres::Client,
    sql: &str,
    in_savepoint: bool,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    if !in_savepoint {
        return client.query_typed(sql, &[]).await;
    }
    // Pipelined: requests go out in the order their futures are first polled, which `join3`
    // does in order. The rollback runs whether or not the query failed, and once sent it runs
    // even if this future is dropped.
    let (opened, rows, closed) = futures::future::join3(
        client.batch_execute(&format!("SAVEPOINT {SAVEPOINT}")),
        client.query_typed(sql, &[]),
        client.batch_execute(&format!(
            "ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"
        )),
    )
    .await;
    opened?;
    let rows = rows?;
    closed?;
    Ok(rows)
}

/// The differences between the counts a backup recorded (`expected`) and those of a database
/// it was restored into (`actual`): one line per table that is missing, has a different number
/// of rows, or was not in the backup. Empty when they agree.
pub fn compare(expected: &[TableRows], actual: &[TableRows]) -> Vec<String> {
    // Per table: rows the backup recorded, rows found.
    type Counts = (Option<u64>, Option<u64>);
    let mut both: BTreeMap<(&str, &str), Counts> = BTreeMap::new();
    for t in expected {
        both.entry((&t.schema, &t.name)).or_default().0 = Some(t.rows);
    }
    for t in actual {
        both.entry((&t.schema, &t.name)).or_default().1 = Some(t.rows);
    }
    both.into_iter()
        .filter_map(|((schema, name), counts)| {
            let table = qualified(schema, name);
            match counts {
                (Some(e), Some(a)) if e != a => Some(format!(
                    "table {table} has {a} {}, the backup recorded {e}",
                    plural(a)
                )),
                (Some(e), None) => Some(format!(
                    "table {table} is missing (the backup recorded {e} {})",
                    plural(e)
                )),
                (None, Some(a)) => Some(format!(
                    "table {table} was not in the backup (it has {a} {})",
                    plural(a)
                )),
                _ => None,
            }
        })
        .collect()
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        "row"
    } else {
        "rows"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(schema: &str, name: &str, rows: u64) -> TableRows {
        TableRows {
            partition_of: None,
            schema: schema.into(),
            name: name.into(),
            rows,
        }
    }

    #[test]
    fn equal_counts_have_no_differences() {
        let tables = vec![t("public", "a", 0), t("s", "b", 1000)];
        assert!(compare(&tables, &tables).is_empty());
        assert!(compare(&[], &[]).is_empty());
    }

    #[test]
    fn each_difference_is_one_line_in_name_order() {
        let expected = vec![
            t("public", "t", 7),
            t("public", "gone", 1),
            t("billing", "same", 3),
        ];
        let actual = vec![
            t("public", "t", 5),
            t("billing", "same", 3),
            t("public", "Extra Table", 0),
        ];
        assert_eq!(
            compare(&expected, &actual),
            vec![
                "table public.\"Extra Table\" was not in the backup (it has 0 rows)",
                "table public.gone is missing (the backup recorded 1 row)",
                "table public.t has 5 rows, the backup recorded 7",
            ]
        );
    }

    #[test]
    fn input_order_does_not_matter() {
        let expected = vec![t("b", "x", 1), t("a", "y", 2)];
        let actual = vec![t("a", "y", 3), t("b", "x", 1)];
        assert_eq!(
            compare(&expected, &actual),
            vec!["table a.y has 3 rows, the backup recorded 2"]
        );
    }

    #[test]
    fn names_are_quoted_when_sql_would_need_it() {
        assert_eq!(t("public", "plain_1", 0).qualified_name(), "public.plain_1");
        assert_eq!(
            t("My Schema", "a.b", 0).qualified_name(),
            "\"My Schema\".\"a.b\""
        );
        assert_eq!(
            t("s", "say \"hi\"", 0).qualified_name(),
            "s.\"say \"\"hi\"\"\""
        );
        assert_eq!(t("s", "1st", 0).qualified_name(), "s.\"1st\"");
    }
}

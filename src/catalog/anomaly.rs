//! Size anomalies: a backup much smaller than the one before it, or a table that emptied.
//!
//! An accidental `DELETE`, a truncated import or a dropped table still dumps cleanly: every
//! check of the backup itself passes. Only the comparison with the previous backup shows it,
//! and it has to be loud before retention rotates the good backups away, so the backup before
//! an anomaly is kept until someone acknowledges it (`pgsidecar ack`).

use crate::catalog::manifest::Manifest;
use crate::notify::human_bytes;
use crate::source::tables::TableRows;

/// What shrank between `previous` and the backup being taken (`raw_bytes`, `tables`), beyond
/// `max_drop_percent` (0 turns the check off). Pure.
pub fn compare(
    previous: &Manifest,
    raw_bytes: u64,
    tables: Option<&[TableRows]>,
    max_drop_percent: u32,
) -> Vec<String> {
    if max_drop_percent == 0 {
        return Vec::new();
    }
    let dropped = |before: u64, after: u64| {
        before > 0
            && after < before
            && (before - after) * 100 > before * u64::from(max_drop_percent)
    };
    let mut out = Vec::new();
    if dropped(previous.raw_bytes, raw_bytes) {
        out.push(format!(
            "the dump shrank from {} to {} (-{}%) since {}",
            human_bytes(previous.raw_bytes),
            human_bytes(raw_bytes),
            (previous.raw_bytes - raw_bytes) * 100 / previous.raw_bytes,
            previous.started_at.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    if let (Some(before), Some(now)) = (previous.tables.as_deref(), tables) {
        // Partitions are judged together, by their partitioned table's total: detaching the
        // oldest day and creating the next is rotation, not loss.
        fn totals(tables: &[TableRows]) -> std::collections::BTreeMap<&str, u64> {
            let mut sums = std::collections::BTreeMap::new();
            for t in tables {
                if let Some(root) = &t.partition_of {
                    *sums.entry(root.as_str()).or_default() += t.rows;
                }
            }
            sums
        }
        let now_totals = totals(now);
        for (root, before_rows) in totals(before).into_iter().filter(|&(_, r)| r > 0) {
            let now_rows = now_totals.get(root).copied().unwrap_or(0);
            if now_rows == 0 {
                out.push(format!(
                    "partitioned table {root} is empty (its partitions had {before_rows} rows)"
                ));
            } else if dropped(before_rows, now_rows) {
                out.push(format!(
                    "partitioned table {root} fell from {before_rows} to {now_rows} rows"
                ));
            }
        }
        for b in before
            .iter()
            .filter(|b| b.rows > 0 && b.partition_of.is_none())
        {
            let name = b.qualified_name();
            match now
                .iter()
                .find(|n| n.schema == b.schema && n.name == b.name)
            {
                None => out.push(format!("table {name} is gone (it had {} rows)", b.rows)),
                Some(n) if n.rows == 0 => {
                    out.push(format!("table {name} is empty (it had {} rows)", b.rows))
                }
                Some(n) if dropped(b.rows, n.rows) => out.push(format!(
                    "table {name} fell from {} to {} rows",
                    b.rows, n.rows
                )),
                Some(_) => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn previous(raw: u64, tables: &[(&str, u64)]) -> Manifest {
        let json = serde_json::json!({
            "format": "pgsidecar-manifest", "format_version": 1, "tool_version": "0",
            "job": "j", "database": "app", "host": "h", "port": 5432,
            "server_version": "17.0", "server_major": 17, "pg_dump_version": "17.0",
            "pg_dump_major": 17, "dump_format": "custom",
            "started_at": "2026-11-24T02:00:00Z", "finished_at": "2026-11-24T02:00:01Z",
            "duration_ms": 1000, "database_size_bytes": raw, "raw_bytes": raw,
            "stored_bytes": raw, "compression": { "algorithm": "none" }, "sha256": "00",
            "key": "p/app/x.dump", "objects": [{ "key": "p/app/x.dump", "size": raw }],
            "tables": tables.iter().map(|(n, r)| serde_json::json!({"schema": "public", "name": n, "rows": r})).collect::<Vec<_>>(),
        });
        Manifest::parse("k", json.to_string().as_bytes()).unwrap()
    }

    fn rows(tables: &[(&str, u64)]) -> Vec<TableRows> {
        tables
            .iter()
            .map(|(n, r)| TableRows {
                schema: "public".into(),
                name: n.to_string(),
                rows: *r,
                partition_of: None,
            })
            .collect()
    }

    #[test]
    fn shrinking_dumps_and_emptied_tables_are_named() {
        let prev = previous(
            1000,
            &[("orders", 500), ("users", 10), ("log", 0), ("old", 3)],
        );
        let now = rows(&[("orders", 100), ("users", 0), ("log", 0)]);
        let found = compare(&prev, 400, Some(&now), 50);
        assert_eq!(
            found,
            [
                "the dump shrank from 1000 B to 400 B (-60%) since 2026-11-24 02:00 UTC",
                "table public.orders fell from 500 to 100 rows",
                "table public.users is empty (it had 10 rows)",
                "table public.old is gone (it had 3 rows)",
            ]
        );
    }

    #[test]
    fn small_changes_growth_and_a_disabled_check_are_quiet() {
        let prev = previous(1000, &[("orders", 500)]);
        assert!(compare(&prev, 600, Some(&rows(&[("orders", 300)])), 50).is_empty());
        assert!(compare(&prev, 5000, Some(&rows(&[("orders", 900)])), 50).is_empty());
        assert!(compare(&prev, 1, Some(&rows(&[("orders", 0)])), 0).is_empty());
        // Without counts on either side only the size is compared.
        assert_eq!(compare(&prev, 100, None, 50).len(), 1);
    }

    /// Regression: daily partition rotation (drop the oldest partition, create the next, same
    /// total) warned "table … is gone" at every backup.
    #[test]
    fn partition_rotation_is_judged_by_the_partitioned_tables_total() {
        let part = |name: &str, rows: u64| TableRows {
            schema: "public".into(),
            name: name.into(),
            rows,
            partition_of: Some("public.events".into()),
        };
        let mut prev = previous(1000, &[]);
        prev.tables = Some(vec![part("events_d1", 100), part("events_d2", 100)]);
        let rotated = [part("events_d2", 100), part("events_d3", 100)];
        assert!(compare(&prev, 1000, Some(&rotated), 50).is_empty());
        let lost = [part("events_d2", 10), part("events_d3", 0)];
        assert_eq!(
            compare(&prev, 1000, Some(&lost), 50),
            ["partitioned table public.events fell from 200 to 10 rows"]
        );
        let emptied = [part("events_d3", 0)];
        assert_eq!(
            compare(&prev, 1000, Some(&emptied), 50),
            ["partitioned table public.events is empty (its partitions had 200 rows)"]
        );
    }
}

//! The status page at `/`: what the daemon knows, for a person to look at. Server-rendered
//! HTML with inline SVG charts; no script, nothing fetched from elsewhere; readable on a phone
//! and without colour (every state is also a word and a symbol).
//!
//! Invariant: it shows only what [`Status`] holds, which never holds a secret (errors are
//! redacted before they are recorded); every text from outside is HTML-escaped.

use std::fmt::Write;

use chrono::{DateTime, TimeDelta, Utc};

use super::status::{human, DbStatus, JobStatus, PitrStatus, RecentBackup, Status};

/// How a database's backups stand, in the page's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The newest attempt succeeded, and the newest success is as recent as the schedule wants.
    Ok,
    /// No success yet, or the newest is older than its schedule allows.
    Late,
    /// The newest attempt failed.
    Failing,
}

impl State {
    fn of(job: &JobStatus, db: &DbStatus, now: DateTime<Utc>) -> State {
        if db.last_attempt_at.is_some() && db.last_attempt_at > db.last_success_at {
            return State::Failing;
        }
        match (db.last_success_at, job.max_age_secs) {
            (None, _) => State::Late,
            (Some(t), Some(max)) if (now - t).num_seconds() > max => State::Late,
            _ => State::Ok,
        }
    }

    fn label(self) -> &'static str {
        match self {
            State::Ok => "✔ OK",
            State::Late => "⚠ LATE",
            State::Failing => "✖ FAILING",
        }
    }

    fn class(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Late => "late",
            State::Failing => "failing",
        }
    }
}

/// The page for `status` at `now` (pure).
pub fn render(status: &Status, now: DateTime<Utc>) -> String {
    let mut body = String::new();
    for job in &status.jobs {
        body.push_str(&job_section(job, now));
    }
    if let Some(p) = &status.pitr {
        body.push_str(&pitr_section(p, now));
    }
    let problems = status.problems(now);
    let summary = if problems.is_empty() {
        "✔ healthy".to_string()
    } else {
        format!("✖ unhealthy: {} problem(s)", problems.len())
    };
    let mut problem_list = String::new();
    if !problems.is_empty() {
        problem_list.push_str("<ul class=\"problems\">");
        for p in &problems {
            let _ = write!(problem_list, "<li>{}</li>", esc(p));
        }
        problem_list.push_str("</ul>");
    }
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="60">
<title>pgsidecar status</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>pgsidecar</h1>
<p class="overall {overall}" id="overall">{summary}</p>
<p class="meta">As of {now} UTC · daemon (pid {pid}) up since {started} UTC · this page refreshes every minute</p>
{problem_list}
</header>
<main>
{body}
</main>
</body>
</html>
"#,
        overall = if problems.is_empty() { "ok" } else { "failing" },
        now = now.format("%Y-%m-%d %H:%M:%S"),
        pid = status.pid,
        started = status.started_at.format("%Y-%m-%d %H:%M"),
    )
}

const STYLE: &str = "
:root{color-scheme:light dark;--ok:#1a7f37;--late:#9a6700;--failing:#cf222e;--muted:#57606a;--line:#d0d7de}
body{font:16px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;padding:1rem;max-width:72rem;margin-inline:auto}
h1{margin:.2rem 0;font-size:1.6rem}h2{font-size:1.25rem;margin:1.5rem 0 .5rem}h3{margin:0 0 .4rem;font-size:1.1rem;display:flex;gap:.5rem;flex-wrap:wrap;align-items:baseline}
.meta,small,figcaption{color:var(--muted)}
.overall{font-weight:700;font-size:1.1rem}
.badge{font-weight:700;border:2px solid currentColor;border-radius:.4rem;padding:0 .35rem;font-size:.9rem}
.ok{color:var(--ok)}.late{color:var(--late)}.failing{color:var(--failing)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,22rem),1fr));gap:1rem}
article{border:1px solid var(--line);border-left-width:6px;border-radius:.5rem;padding:.75rem}
article.state-ok{border-left-color:var(--ok)}article.state-late{border-left-color:var(--late)}article.state-failing{border-left-color:var(--failing)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem .75rem;margin:.25rem 0}
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}
.error{color:var(--failing);font-family:ui-monospace,monospace;font-size:.85rem}
figure{margin:.5rem 0 0}svg{width:100%;height:auto;display:block}
svg .bar{fill:#4c78a8}svg .bar.anomaly{fill:var(--failing)}svg text{font-size:9px;fill:currentColor}
.problems{color:var(--failing)}
";

fn job_section(job: &JobStatus, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let schedule = match &job.schedule {
        Some(s) => format!("schedule <code>{}</code>", esc(s)),
        None => "no schedule".to_string(),
    };
    let next = job
        .next_run
        .map(|t| {
            format!(
                " · next run {} UTC (in {})",
                t.format("%Y-%m-%d %H:%M"),
                human(t - now)
            )
        })
        .unwrap_or_default();
    let _ = write!(
        out,
        "<section class=\"job\"><h2>Job {} <small>{schedule}{next}</small></h2><div class=\"cards\">",
        esc(&job.name)
    );
    if job.databases.is_empty() {
        out.push_str("<p>No database backed up yet.</p>");
    }
    for db in &job.databases {
        let state = State::of(job, db, now);
        out.push_str(&db_card(job, db, state, now));
    }
    out.push_str("</div></section>\n");
    out
}

fn db_card(job: &JobStatus, db: &DbStatus, state: State, now: DateTime<Utc>) -> String {
    let mut rows = String::new();
    let mut row = |k: &str, v: String| {
        let _ = write!(rows, "<dt>{k}</dt><dd>{v}</dd>");
    };
    row(
        "Newest backup",
        match db.last_success_at {
            Some(t) => format!(
                "{} UTC, {} ago{}",
                t.format("%Y-%m-%d %H:%M"),
                human(now - t),
                job.max_age_secs
                    .map(|m| format!(" (allowed: {})", human(TimeDelta::seconds(m))))
                    .unwrap_or_default()
            ),
            None => "none yet".to_string(),
        },
    );
    if let (Some(size), Some(secs)) = (db.last_stored_bytes, db.last_duration_secs) {
        row(
            "Its size",
            format!("{} stored, taken in {secs:.1} s", bytes(size)),
        );
    }
    if !db.last_anomalies.is_empty() {
        row(
            "Anomalies",
            format!(
                "<span class=\"error\">{}</span>",
                esc(&db.last_anomalies.join("; "))
            ),
        );
    }
    if state == State::Failing {
        row(
            "Last attempt",
            db.last_attempt_at
                .map(|t| format!("{} UTC, failed", t.format("%Y-%m-%d %H:%M")))
                .unwrap_or_default(),
        );
    }
    if let Some(e) = db.last_error.as_deref().filter(|_| state == State::Failing) {
        row("Error", format!("<span class=\"error\">{}</span>", esc(e)));
    }
    row(
        "Since start",
        format!(
            "{} backups, {} failed runs, {} pruned",
            db.backups_total, db.failures_total, db.pruned_total
        ),
    );
    row(
        "Restore drill",
        drill_line(
            db.last_drill_at,
            db.last_drill_passed,
            db.last_drill_restore_secs
                .map(|s| format!(", restored in {s:.1} s (RTO)"))
                .unwrap_or_default(),
        ),
    );
    if db.destinations.len() > 1 {
        let list: Vec<String> = db
            .destinations
            .iter()
            .map(|(name, d)| {
                let when = d
                    .last_success_at
                    .map(|t| format!("{} ago", human(now - t)))
                    .unwrap_or_else(|| "none yet".into());
                let failed = if d.failures_total > 0 {
                    format!(", {} failed", d.failures_total)
                } else {
                    String::new()
                };
                format!("{}: {when}{failed}", esc(name))
            })
            .collect();
        row("Destinations", list.join("<br>"));
    }
    let charts = if db.recent.is_empty() {
        String::new()
    } else {
        format!(
            "{}{}",
            chart(
                &db.recent,
                "Stored size",
                |b| b.stored_bytes as f64,
                |v| bytes(v as u64)
            ),
            chart(
                &db.recent,
                "Duration",
                |b| b.duration_secs,
                |v| format!("{v:.1} s")
            ),
        )
    };
    format!(
        "<article class=\"db state-{class}\" data-state=\"{class}\"><h3><span class=\"badge {class}\">{label}</span><span class=\"name\">{name}</span></h3><dl>{rows}</dl>{charts}</article>",
        class = state.class(),
        label = state.label(),
        name = esc(&db.database),
    )
}

/// A bar chart of `value` over the recent backups, oldest on the left; a backup that recorded
/// an anomaly is drawn in the failing colour and marked `!` (for readers without colour).
fn chart(
    recent: &[RecentBackup],
    title: &str,
    value: impl Fn(&RecentBackup) -> f64,
    show: impl Fn(f64) -> String,
) -> String {
    let (w, h, top) = (300.0, 60.0, 10.0);
    let values: Vec<f64> = recent.iter().map(&value).collect();
    let max = values
        .iter()
        .cloned()
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let step = w / recent.len() as f64;
    let mut bars = String::new();
    for (i, (b, v)) in recent.iter().zip(&values).enumerate() {
        let bh = ((v / max) * (h - top)).max(1.0);
        let x = i as f64 * step;
        let anomaly = if b.anomaly { " anomaly" } else { "" };
        let _ = write!(
            bars,
            "<rect class=\"bar{anomaly}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{} UTC: {}{}</title></rect>",
            x + step * 0.1,
            h - bh,
            step * 0.8,
            b.started_at.format("%Y-%m-%d %H:%M"),
            show(*v),
            if b.anomaly { " (size anomaly)" } else { "" }
        );
        if b.anomaly {
            let _ = write!(
                bars,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">!</text>",
                x + step / 2.0,
                (h - bh - 1.0).max(top - 1.0)
            );
        }
    }
    let newest = values.last().copied().unwrap_or_default();
    let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let marked = recent.iter().filter(|b| b.anomaly).count();
    let caption = format!(
        "{title}, last {n} backups: newest {}, min {}, max {}{}",
        show(newest),
        show(min),
        show(max),
        if marked > 0 {
            format!(", {marked} marked ! (size anomaly)")
        } else {
            String::new()
        },
        n = recent.len(),
    );
    format!(
        "<figure><svg viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{caption}\">{bars}</svg><figcaption>{caption}</figcaption></figure>",
        caption = esc(&caption)
    )
}

fn pitr_section(p: &PitrStatus, now: DateTime<Utc>) -> String {
    let mut rows = String::new();
    let mut row = |k: &str, v: String| {
        let _ = write!(rows, "<dt>{k}</dt><dd>{v}</dd>");
    };
    let lagging = p.lag_secs.is_some_and(|l| l > p.max_lag_secs);
    let state = if p.slot_lost || p.gap.is_some() || lagging {
        State::Failing
    } else {
        State::Ok
    };
    row(
        "Archive lag",
        match p.lag_secs {
            Some(l) => format!(
                "{} (allowed: {})",
                human(TimeDelta::seconds(l)),
                human(TimeDelta::seconds(p.max_lag_secs))
            ),
            None => "not measured yet".into(),
        },
    );
    row(
        "Recoverable up to",
        p.last_stored_at
            .map(|t| {
                format!(
                    "{} UTC ({} ago), the newest WAL stored",
                    t.format("%Y-%m-%d %H:%M:%S"),
                    human(now - t)
                )
            })
            .unwrap_or_else(|| "nothing stored yet".into()),
    );
    row(
        "Newest base backup",
        p.last_base_backup_at
            .map(|t| {
                format!(
                    "{} UTC ({} ago)",
                    t.format("%Y-%m-%d %H:%M"),
                    human(now - t)
                )
            })
            .unwrap_or_else(|| "none yet".into()),
    );
    if let (Some(held), Some(keep)) = (p.slot_retained_bytes, p.slot_keep_bytes) {
        row(
            "Slot",
            format!(
                "holds {} of at most {}{}",
                bytes(held),
                bytes(keep),
                if p.slot_lost { ", LOST" } else { "" }
            ),
        );
    } else if p.slot_lost {
        row(
            "Slot",
            "<span class=\"failing\">✖ lost or missing</span>".into(),
        );
    }
    if let Some(gap) = &p.gap {
        row(
            "WAL gap",
            format!("<span class=\"error\">segment {} missing</span>", esc(gap)),
        );
    }
    row(
        "PITR drill",
        drill_line(
            p.last_drill_at,
            p.last_drill_passed,
            match (p.last_drill_rto_secs, p.last_drill_rpo_secs) {
                (Some(rto), Some(rpo)) => format!(", RTO {rto:.1} s, RPO {rpo:.1} s"),
                _ => String::new(),
            },
        ),
    );
    if let Some(e) = &p.last_error {
        row(
            "Last error",
            format!("<span class=\"error\">{}</span>", esc(e)),
        );
    }
    format!(
        "<section class=\"pitr\"><h2>Point-in-time recovery</h2><div class=\"cards\"><article class=\"db state-{class}\" data-state=\"{class}\"><h3><span class=\"badge {class}\">{label}</span><span class=\"name\">WAL archive</span></h3><dl>{rows}</dl></article></div></section>\n",
        class = state.class(),
        label = state.label(),
    )
}

/// "✔ passed <time> UTC<figures>" or "✖ FAILED <time> UTC"; "none yet" before the first.
fn drill_line(at: Option<DateTime<Utc>>, passed: Option<bool>, figures: String) -> String {
    match (at, passed) {
        (Some(t), Some(true)) => format!(
            "<span class=\"ok\">✔ passed</span> {} UTC{figures}",
            t.format("%Y-%m-%d %H:%M")
        ),
        (Some(t), Some(false)) => format!(
            "<span class=\"failing\">✖ FAILED</span> {} UTC",
            t.format("%Y-%m-%d %H:%M")
        ),
        _ => "none yet".to_string(),
    }
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// `text` safe inside HTML text and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::status::{DbStatus, JobStatus, Status};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn status(dbs: Vec<DbStatus>) -> Status {
        Status {
            pid: 7,
            started_at: t("2026-12-01T00:00:00Z"),
            heartbeat_at: t("2026-12-01T12:00:00Z"),
            jobs: vec![JobStatus {
                name: "prod".into(),
                schedule: Some("0 2 * * *".into()),
                max_age_secs: Some(26 * 3600),
                next_run: Some(t("2026-12-02T02:00:00Z")),
                databases: dbs,
            }],
            pitr: None,
        }
    }

    #[test]
    fn each_state_is_a_word_and_text_from_outside_is_escaped() {
        let now = t("2026-12-01T12:00:00Z");
        let fresh = DbStatus {
            database: "app".into(),
            last_success_at: Some(t("2026-12-01T02:00:00Z")),
            last_attempt_at: Some(t("2026-12-01T02:00:00Z")),
            ..DbStatus::default()
        };
        let old = DbStatus {
            database: "<script>".into(),
            last_success_at: Some(t("2026-11-28T02:00:00Z")),
            last_attempt_at: Some(t("2026-11-28T02:00:00Z")),
            ..DbStatus::default()
        };
        let failing = DbStatus {
            database: "billing".into(),
            last_success_at: Some(t("2026-11-30T02:00:00Z")),
            last_attempt_at: Some(t("2026-12-01T02:10:00Z")),
            last_error: Some("connection refused & <gone>".into()),
            ..DbStatus::default()
        };
        let page = render(&status(vec![fresh, old, failing]), now);
        assert!(
            page.contains("✔ OK</span><span class=\"name\">app"),
            "{page}"
        );
        assert!(
            page.contains("⚠ LATE</span><span class=\"name\">&lt;script&gt;"),
            "{page}"
        );
        assert!(
            page.contains("✖ FAILING</span><span class=\"name\">billing"),
            "{page}"
        );
        assert!(
            page.contains("connection refused &amp; &lt;gone&gt;"),
            "{page}"
        );
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<script"), "no script at all");
    }

    #[test]
    fn charts_mark_anomalies_in_words_too() {
        let now = t("2026-12-01T12:00:00Z");
        let mut db = DbStatus {
            database: "app".into(),
            last_success_at: Some(t("2026-12-01T02:00:00Z")),
            ..DbStatus::default()
        };
        for (i, size) in [100u64, 110, 20].iter().enumerate() {
            db.remember(RecentBackup {
                started_at: t("2026-11-29T02:00:00Z") + TimeDelta::days(i as i64),
                stored_bytes: *size,
                duration_secs: 1.0 + i as f64,
                anomaly: *size == 20,
            });
        }
        let page = render(&status(vec![db]), now);
        assert_eq!(page.matches("<rect class=\"bar").count(), 6, "{page}");
        assert_eq!(page.matches("class=\"bar anomaly\"").count(), 2, "{page}");
        assert!(page.contains("Stored size, last 3 backups: newest 20 B, min 20 B, max 110 B, 1 marked ! (size anomaly)"), "{page}");
    }

    #[test]
    fn recent_keeps_the_newest_thirty_in_order_once() {
        let mut db = DbStatus::default();
        for i in (0..40).rev() {
            let b = RecentBackup {
                started_at: t("2026-11-01T00:00:00Z") + TimeDelta::hours(i),
                stored_bytes: i as u64,
                duration_secs: 1.0,
                anomaly: false,
            };
            db.remember(b.clone());
            db.remember(b);
        }
        assert_eq!(db.recent.len(), crate::health::status::RECENT);
        assert_eq!(db.recent[0].stored_bytes, 10);
        assert_eq!(db.recent.last().unwrap().stored_bytes, 39);
    }
}

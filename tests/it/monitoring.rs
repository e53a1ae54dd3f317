//! The monitoring files in `deploy/`: the Prometheus alerting rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), and every metric and label that the rules and
//! the Grafana dashboard query is one a real daemon exports, which a real Prometheus scrapes,
//! loads the rules against without an evaluation error, and answers each panel's query from.
//!
//! promtool and prometheus come from Debian's `prometheus` package (scripts/test-deps.sh),
//! found on PATH.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::harness::{self, s3, Daemon, Pg, Sidecar};

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/pgsidecar.json";

/// Labels Prometheus adds to every scraped series itself: queries may select on them although
/// `/metrics` has none.
const TARGET_LABELS: [&str; 1] = ["instance"];

fn repo(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(repo(file)).unwrap_or_else(|e| panic!("read {file}: {e}"))
}

/// Runs `promtool args`, which must succeed; returns its output.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .current_dir(repo(""))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool ({e}): scripts/test-deps.sh installs it (Debian's `prometheus`)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

// ---- The rules and the dashboard, as files --------------------------------------------------

/// Each rule of a rules file as `(alert name, expr)`. Reads the layout alerts.yml uses: an
/// `expr:` on one line, or a `>-` / `|` block under it.
fn rule_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_string();
        } else if let Some(value) = trimmed.strip_prefix("expr:") {
            let indent = line.len() - trimmed.len();
            let value = value.trim();
            let expr = if value.starts_with('>') || value.starts_with('|') {
                let mut parts = Vec::new();
                while let Some(next) = lines.get(i + 1) {
                    let deeper = next.len() - next.trim_start().len() > indent;
                    if !(deeper || next.trim().is_empty()) {
                        break;
                    }
                    parts.push(next.trim());
                    i += 1;
                }
                parts.join(" ").trim().to_string()
            } else if let Some(quoted) = value.strip_prefix('\'') {
                quoted.trim_end_matches('\'').replace("''", "'")
            } else {
                value.to_string()
            };
            out.push((alert.clone(), expr));
        }
        i += 1;
    }
    out
}

/// The dashboard's queries as `(where, PromQL)`: every panel target's `expr`, and the selector
/// of each `label_values(selector, label)` variable (with the label, which must exist on it).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    fn panels<'a>(list: &'a Value, into: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            into.push(p);
            panels(&p["panels"], into);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    for p in all {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    format!("panel `{}` {}", p["title"], t["refId"]),
                    expr.to_string(),
                    None,
                ));
            }
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(…): {q}", v["name"]));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        out.push((
            format!("variable `{}`", v["name"]),
            selector.trim().to_string(),
            Some(label.trim().to_string()),
        ));
    }
    out
}

/// The dashboard's variables replaced as "All" does, and its interval variables by a window.
fn without_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$instance", ".*")
        .replace("$job", ".*")
        .replace("$database", ".*")
}

// ---- PromQL, as far as naming metrics and labels goes ----------------------------------------

/// What one PromQL expression names.
#[derive(Debug, Default)]
struct Uses {
    /// Each `pgsidecar_*` metric selected, with the label names its matchers use.
    selectors: Vec<(String, BTreeSet<String>)>,
    /// Labels of `by (…)` and `on (…)`: every metric of the expression must have them.
    every: BTreeSet<String>,
    /// Labels of `without`, `ignoring`, `group_left` and `group_right`: some metric must.
    some: BTreeSet<String>,
}

/// Scans `expr` for its `pgsidecar_*` selectors, their matchers' label names and the label
/// lists of its grouping and matching clauses; strings, ranges and numbers are skipped.
fn scan(expr: &str) -> Uses {
    let c: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_space = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let skip_string = |i: usize| {
        let quote = c[i];
        let mut j = i + 1;
        while j < c.len() && c[j] != quote {
            j += if c[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    // The label names of a list `(a, b)` or of matchers `{a="x", b=~"y"}` opening at `i`.
    let names = |i: usize| -> (BTreeSet<String>, usize) {
        let close = if c[i] == '(' { ')' } else { '}' };
        let mut out = BTreeSet::new();
        let mut j = i + 1;
        while j < c.len() && c[j] != close {
            if c[j] == '"' || c[j] == '\'' || c[j] == '`' {
                j = skip_string(j);
            } else if ident(c[j]) {
                let start = j;
                while j < c.len() && ident(c[j]) {
                    j += 1;
                }
                out.insert(c[start..j].iter().collect());
            } else {
                j += 1;
            }
        }
        (out, j + 1)
    };
    // The metric a `{` right after belongs to: `Some(None)` for one not ours (`up`).
    let mut last_metric: Option<Option<usize>> = None;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(i);
            last_metric = None;
        } else if ch == '[' {
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
            last_metric = None;
        } else if ch == '{' {
            let (labels, end) = names(i);
            match last_metric {
                Some(Some(m)) => uses.selectors[m].1.extend(labels),
                Some(None) => {}
                None => panic!("a selector without a metric name in `{expr}`"),
            }
            i = end;
            last_metric = None;
        } else if ch.is_ascii_digit() || ch == '.' {
            while i < c.len() && (ident(c[i]) || c[i] == '.') {
                i += 1;
            }
            last_metric = None;
        } else if ident(ch) {
            let start = i;
            while i < c.len() && ident(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_space(i);
            let call = next < c.len() && c[next] == '(';
            last_metric = None;
            match word.as_str() {
                "by" | "on" if call => {
                    let (labels, end) = names(next);
                    uses.every.extend(labels);
                    i = end;
                }
                "without" | "ignoring" | "group_left" | "group_right" if call => {
                    let (labels, end) = names(next);
                    uses.some.extend(labels);
                    i = end;
                }
                _ if call => {}
                w if w.starts_with("pgsidecar_") => {
                    uses.selectors.push((word.clone(), BTreeSet::new()));
                    last_metric = Some(Some(uses.selectors.len() - 1));
                }
                _ => last_metric = Some(None),
            }
        } else {
            i += 1;
            last_metric = None;
        }
    }
    uses
}

#[test]
fn promql_scan_finds_metrics_matchers_and_grouping_labels() {
    let u = scan(
        r#"max by (job, database) (increase(pgsidecar_failures_total{job=~"$job", database!="x{y}"}[1h]))
           > ignoring (destination) group_left pgsidecar_backup_max_age_seconds offset 1d
           or time() - pgsidecar_pitr_drill_age_seconds > 8 * 86400 unless on(instance) up"#,
    );
    let selectors: Vec<(&str, Vec<&str>)> = u
        .selectors
        .iter()
        .map(|(m, l)| (m.as_str(), l.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        selectors,
        [
            ("pgsidecar_failures_total", vec!["database", "job"]),
            ("pgsidecar_backup_max_age_seconds", vec![]),
            ("pgsidecar_pitr_drill_age_seconds", vec![]),
        ]
    );
    assert_eq!(
        u.every.iter().collect::<Vec<_>>(),
        ["database", "instance", "job"]
    );
    assert_eq!(u.some.iter().collect::<Vec<_>>(), ["destination"]);
}

// ---- /metrics --------------------------------------------------------------------------------

/// The series names of a `/metrics` answer, each with the label names its series carry.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let body = text.split_once("\r\n\r\n").map_or(text, |(_, b)| b);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let mut rest = &line[end + 1..];
            while let Some((name, after)) = rest.split_once("=\"") {
                labels.insert(name.trim_start_matches(',').trim().to_string());
                // The value ends at the first quote not escaped.
                let mut chars = after.char_indices();
                let mut close = after.len();
                while let Some((i, ch)) = chars.next() {
                    match ch {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            close = i;
                            break;
                        }
                        _ => {}
                    }
                }
                rest = &after[close + 1..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
    }
    out
}

/// What in `queries` names a metric or label that `metrics` lacks, one line each.
fn missing(
    queries: &[(String, String, Option<String>)],
    metrics: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let has = |m: &str, l: &str| {
        TARGET_LABELS.contains(&l) || metrics.get(m).is_some_and(|ls| ls.contains(l))
    };
    let mut out = Vec::new();
    for (place, expr, label) in queries {
        let mut uses = scan(expr);
        uses.every.extend(label.clone());
        if uses.selectors.is_empty() && !expr.contains("up{") {
            out.push(format!("{place}: no pgsidecar metric in `{expr}`"));
        }
        for (m, labels) in &uses.selectors {
            if !metrics.contains_key(m) {
                out.push(format!("{place}: `{m}` is not exported"));
                continue;
            }
            for l in labels.iter().chain(&uses.every) {
                if !has(m, l) {
                    out.push(format!("{place}: `{m}` has no label `{l}`"));
                }
            }
        }
        for l in &uses.some {
            if !uses.selectors.iter().any(|(m, _)| has(m, l)) {
                out.push(format!(
                    "{place}: no metric of `{expr}` has the label `{l}`"
                ));
            }
        }
    }
    out
}

/// Every `pgsidecar_*` word of every query in the files is a selector [`scan`] reports: no
/// metric escapes the check against `/metrics`.
#[test]
fn the_scan_sees_every_metric_the_files_name() {
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let queries = rule_exprs(&read(ALERTS))
        .into_iter()
        .map(|(_, e)| e)
        .chain(dashboard_queries(&dash).into_iter().map(|(_, e, _)| e));
    let mut seen = BTreeSet::new();
    for expr in queries {
        let words: BTreeSet<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.starts_with("pgsidecar_"))
            .collect();
        let uses = scan(&expr);
        let selected: BTreeSet<&str> = uses.selectors.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(words, selected, "{expr}");
        seen.extend(selected.into_iter().map(String::from));
    }
    assert!(seen.len() >= 30, "{seen:?}");
}

#[test]
fn missing_names_what_the_scrape_lacks() {
    let metrics = exported(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n\
         # TYPE pgsidecar_failures counter\n\
         pgsidecar_failures_total{job=\"default\",database=\"a\\\"b,c=\\\"\"} 0\n\
         pgsidecar_pitr_slot_lost 0.0\n\
         # EOF\n",
    );
    assert_eq!(
        metrics["pgsidecar_failures_total"]
            .iter()
            .collect::<Vec<_>>(),
        ["database", "job"]
    );
    assert!(metrics["pgsidecar_pitr_slot_lost"].is_empty());
    let q = |expr: &str| vec![("q".to_string(), expr.to_string(), None)];
    let ok = [
        r#"increase(pgsidecar_failures_total{job=~"$job"}[1h]) > 0"#,
        r#"sum by (database) (pgsidecar_failures_total)"#,
        r#"pgsidecar_pitr_slot_lost{instance=~"$instance"} == 1"#,
        r#"pgsidecar_failures_total > ignoring (job) group_left pgsidecar_pitr_slot_lost"#,
        r#"up{job=~".*pgsidecar.*"} == 0"#,
    ];
    for expr in ok {
        assert_eq!(missing(&q(expr), &metrics), Vec::<String>::new(), "{expr}");
    }
    for (expr, says) in [
        ("pgsidecar_failures", "`pgsidecar_failures` is not exported"),
        (
            r#"pgsidecar_failures_total{destination="x"}"#,
            "has no label `destination`",
        ),
        (
            "max by (job) (pgsidecar_pitr_slot_lost)",
            "`pgsidecar_pitr_slot_lost` has no label `job`",
        ),
        (
            "pgsidecar_pitr_slot_lost > ignoring (destination) pgsidecar_failures_total",
            "has the label `destination`",
        ),
        ("time() - 5", "no pgsidecar metric"),
    ] {
        let found = missing(&q(expr), &metrics);
        assert!(found.iter().any(|m| m.contains(says)), "{expr}: {found:?}");
    }
}

// ---- A real Prometheus -----------------------------------------------------------------------

/// `prometheus` scraping one sidecar every second, with alerts.yml loaded; stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        // The scrape configuration alerts.yml's header recommends.
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: pgsidecar\n    honor_labels: true\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
                repo(ALERTS).display()
            ),
        )
        .unwrap();
        let port = harness::free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus ({e}): scripts/test-deps.sh installs it (Debian's `prometheus`)")
            });
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        assert!(
            harness::wait_until(30, || p
                .get("/-/ready")
                .is_some_and(|b| b.contains("Ready"))),
            "prometheus did not become ready"
        );
        p
    }

    /// The body of `GET path` (HTTP/1.0: no chunked answer), if it answered 200.
    fn get(&self, path: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nhost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
    }

    /// The result vector of the instant query `q`, or the error it gave.
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let mut enc = String::new();
        for b in q.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET /api/v1/query?query={enc} HTTP/1.0\r\nhost: x\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {out}"))?;
        if v["status"] != "success" {
            return Err(v.to_string());
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- The tests -------------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let out = promtool(&["check", "rules", ALERTS]);
    let rules = rule_exprs(&read(ALERTS));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{out}"
    );
    let out = promtool(&["test", "rules", ALERT_TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Each alert has a case where it fires and one where it stays quiet.
    let tests = read(ALERT_TESTS);
    for (alert, _) in &rules {
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .skip(1)
            .filter(|c| c.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert}: no case where it stays quiet"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{alert}: no case where it fires"
        );
    }
}

#[test]
fn alert_rules_have_a_severity_and_say_what_to_do() {
    let yaml = read(ALERTS);
    let rules: Vec<&str> = yaml.split("- alert: ").skip(1).collect();
    assert_eq!(rules.len(), rule_exprs(&yaml).len());
    for rule in rules {
        let name = rule.lines().next().unwrap();
        assert!(name.starts_with("Pgsidecar"), "{name}");
        assert!(
            rule.contains("severity: critical") || rule.contains("severity: warning"),
            "{name}: no severity"
        );
        assert!(rule.contains("summary: "), "{name}: no summary");
        assert!(rule.contains("description: "), "{name}: no description");
    }
}

/// The dashboard imports anywhere: its data source is the `DS_PROMETHEUS` variable, it has
/// `job` and `database` variables, it loads nothing from outside, and every query is PromQL
/// that promtool accepts.
#[test]
fn dashboard_is_self_contained_and_its_queries_parse() {
    let text = read(DASHBOARD);
    let dash: Value = serde_json::from_str(&text).unwrap();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 39);
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    assert_eq!(var("DS_PROMETHEUS").unwrap()["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS").unwrap()["query"], "prometheus");
    // Imported by hand, Grafana asks for the data source and writes it in its place.
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    for name in ["job", "database"] {
        let q = var(name).unwrap_or_else(|| panic!("no `{name}` variable"))["query"]["query"]
            .as_str()
            .unwrap();
        assert!(
            q.starts_with("label_values(") && q.ends_with(&format!(", {name})")),
            "{q}"
        );
    }
    for url in ["http://", "https://", "//cdn", "data:"] {
        assert!(!text.contains(url), "the dashboard refers to `{url}`");
    }
    // Every data source reference is the variable.
    let mut ids = BTreeSet::new();
    let mut all = Vec::new();
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(m) => {
                if let Some(ds) = m.get("datasource") {
                    out.push(ds);
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], &mut all);
    walk(&dash["templating"], &mut all);
    for ds in all {
        assert_eq!(ds["uid"], "${DS_PROMETHEUS}", "{ds}");
    }
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id twice: {p}");
    }
    // promtool checks the queries' syntax as recording rules.
    let queries = dashboard_queries(&dash);
    assert!(queries.len() > 20, "{queries:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr, _)) in queries.iter().enumerate() {
        let expr = without_variables(expr);
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ));
    }
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()]);
}

/// One daemon with everything on: a scheduled backup with a copy in a local directory, restore
/// drills every few seconds, WAL archiving with its base backup and point-in-time drills. Every
/// metric and label the rules and the dashboard use appears on its `/metrics`; Prometheus,
/// scraping it as alerts.yml's header says, evaluates every rule without an error and has data
/// for every panel query.
#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let started = Instant::now();
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut queries: Vec<(String, String, Option<String>)> = rule_exprs(&read(ALERTS))
        .into_iter()
        .map(|(alert, expr)| (format!("alert {alert}"), expr, None))
        .collect();
    assert!(queries.len() >= 19);
    let panel_queries = dashboard_queries(&dash);
    queries.extend(panel_queries.iter().cloned());

    // A cluster of its own: WAL archiving needs a bounded slot, as `pitr check` asks.
    let pg = Pg::own(15);
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'",
    );
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let db = pg.create_db("monitoring");
    pg.psql(
        &db,
        "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 100)",
    );
    let bucket = s3().bucket("monitoring");
    let copy = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let drills = tempfile::Builder::new()
        .prefix("pgsc-drill-")
        .tempdir()
        .unwrap();
    if harness::postgres_ids().is_some() {
        // PostgreSQL refuses root: the point-in-time drill runs its server as the owner.
        Command::new("chown")
            .arg("postgres:postgres")
            .arg(drills.path())
            .status()
            .unwrap();
    }
    let port = harness::free_port();
    let mut daemon = Daemon::start(
        Sidecar::new(&pg, &db, &s3().endpoint(), &bucket, "p")
            // No backup yet: the daemon catches up at once.
            .env("PGSIDECAR_SCHEDULE", "0 3 * * *")
            .env(
                "PGSIDECAR_COPIES__OFFSITE__URL",
                format!("file://{}", copy.path().display()),
            )
            .env("PGSIDECAR_DRILL__SCHEDULE", "*/5 * * * * *")
            .env("PGSIDECAR_PITR__ENABLED", "true")
            .env("PGSIDECAR_PITR__SPOOL", spool.path())
            .env("PGSIDECAR_PITR__PARTIAL_INTERVAL", "1s")
            .env("PGSIDECAR_PITR__HEARTBEAT", "1s")
            .env("PGSIDECAR_PITR__DRILL__SCHEDULE", "*/10 * * * * *")
            .env("PGSIDECAR_PITR__DRILL__TIMEOUT", "60s")
            .env("PGSIDECAR_PITR__DRILL__DIR", drills.path())
            .env("PGSIDECAR_HTTP__LISTEN", format!("127.0.0.1:{port}")),
    );
    let prometheus = Prometheus::start(port);

    let scrape = || exported(&harness::http_get(port, "/metrics"));
    let complete = harness::wait_until(120, || missing(&queries, &scrape()).is_empty());
    let metrics = harness::http_get(port, "/metrics");
    assert!(
        complete,
        "after {:?}:\n{}\n\n/metrics:\n{metrics}\n\nthe daemon's log:\n{}",
        started.elapsed(),
        missing(&queries, &exported(&metrics)).join("\n"),
        daemon.stderr()
    );
    let exported_at = started.elapsed();

    // Prometheus: every rule loaded and evaluated without an error (a vector matching that
    // meets duplicates fails at evaluation, not in promtool), and every panel has data.
    let rules_ok = || -> Result<usize, String> {
        let body = prometheus
            .get("/api/v1/rules")
            .ok_or("no answer from /api/v1/rules")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["name"] == "pgsidecar")
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if bad.is_empty() && !rules.is_empty() {
            Ok(rules.len())
        } else {
            Err(format!("{} rules; {}", rules.len(), bad.join("; ")))
        }
    };
    let empty_panels = || -> Vec<String> {
        panel_queries
            .iter()
            .filter_map(|(place, expr, label)| {
                let q = without_variables(expr);
                match prometheus.query(&q) {
                    Err(e) => Some(format!("{place}: `{q}`: {e}")),
                    Ok(r) if r.is_empty() => Some(format!("{place}: `{q}` has no data")),
                    Ok(r) => label
                        .as_ref()
                        .filter(|l| !r.iter().any(|s| s["metric"][l.as_str()].is_string()))
                        .map(|l| format!("{place}: no `{l}` label on `{q}`")),
                }
            })
            .collect()
    };
    let ready = harness::wait_until(30, || {
        rules_ok().is_ok_and(|n| n == queries.len() - panel_queries.len())
            && empty_panels().is_empty()
    });
    assert!(
        ready,
        "rules: {:?}\npanels without data:\n{}\n\n/metrics:\n{}",
        rules_ok(),
        empty_panels().join("\n"),
        harness::http_get(port, "/metrics")
    );
    let answered_at = started.elapsed();
    // A healthy sidecar sets off no alert, not even a pending one (a first drill that ran
    // before the first backup existed may fail: the next one passes).
    let alerts = || {
        prometheus
            .query("ALERTS")
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{} ({})",
                    a["metric"]["alertname"], a["metric"]["alertstate"]
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(
        harness::wait_until(20, || alerts().is_empty()),
        "alerts on a healthy sidecar: {:?}\n\n/metrics:\n{}",
        alerts(),
        harness::http_get(port, "/metrics")
    );
    println!(
        "every metric exported after {exported_at:?}, every panel answered by Prometheus after \
         {answered_at:?}, in {:?} in all",
        started.elapsed()
    );
    drop(prometheus);
    daemon.signal("TERM");
    assert!(
        daemon.wait_exit(30).is_some(),
        "the daemon did not stop: {}",
        daemon.stderr()
    );
}

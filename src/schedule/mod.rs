//! Schedule: when a job fires. Cron expressions as users write them in crontab (5 fields, or
//! 6 with seconds first, or `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly`), evaluated in an
//! IANA time zone.
//!
//! Invariants: across DST changes every firing happens once: a local time that does not exist
//! (spring forward) fires at the first instant after the gap, a local time that happens twice
//! (fall back) fires at its first occurrence only. Day-of-week numbers follow crontab (0 and 7
//! are Sunday), not the `cron` crate's 1 = Sunday. All functions take `now` as a parameter.

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

mod clock;

mod firings;

pub use clock::Clock;
pub use firings::{fire_on_schedule, Firings};

/// Names of the fields of a 6-field expression, for error messages.
const FIELD_NAMES: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

/// Errors in a schedule expression.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("schedule `{expr}` has {count} fields; use 5 (minute hour day-of-month month day-of-week), 6 (with seconds first) or @hourly/@daily/@weekly/@monthly/@yearly")]
    FieldCount { expr: String, count: usize },
    #[error("schedule `{expr}`: the {field} field `{value}` is invalid{detail}")]
    Field {
        expr: String,
        field: &'static str,
        value: String,
        detail: String,
    },
    #[error("schedule `{expr}` never fires")]
    Never { expr: String },
    #[error("`{0}` is not an IANA time zone (such as `Europe/Berlin` or `UTC`)")]
    TimeZone(String),
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    /// One schedule, or two when both day fields are restricted: crontab fires when *either*
    /// day matches, while the `cron` crate requires both, so each day field gets its own.
    inner: Vec<cron::Schedule>,
    tz: Tz,
}

/// Parses an IANA time zone name.
pub fn parse_tz(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::TimeZone(name.to_string()))
}

impl Schedule {
    /// Parses `expr`, naming the offending field when it is invalid.
    pub fn parse(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        let trimmed = expr.trim();
        let cron_expr = if trimmed.starts_with('@') {
            let known = [
                "@hourly",
                "@daily",
                "@weekly",
                "@monthly",
                "@yearly",
                "@annually",
            ];
            if !known.contains(&trimmed) {
                return Err(ScheduleError::Field {
                    expr: expr.into(),
                    field: "shorthand",
                    value: trimmed.into(),
                    detail: format!(": use one of {}", known.join(", ")),
                });
            }
            vec![trimmed.replace("@annually", "@yearly")]
        } else {
            let mut fields: Vec<String> = trimmed.split_whitespace().map(str::to_string).collect();
            match fields.len() {
                5 => fields.insert(0, "0".into()),
                6 => {}
                n => {
                    return Err(ScheduleError::FieldCount {
                        expr: expr.into(),
                        count: n,
                    })
                }
            }
            fields[5] = crontab_weekdays(&fields[5]).map_err(|detail| ScheduleError::Field {
                expr: expr.into(),
                field: "day-of-week",
                value: fields[5].clone(),
                detail: format!(": {detail}"),
            })?;
            // Check each field alone, so the error names the one that is wrong.
            for (i, name) in FIELD_NAMES.iter().enumerate() {
                let mut probe = vec!["*".to_string(); 6];
                probe[0] = "0".into();
                probe[i] = fields[i].clone();
                if let Err(e) = probe.join(" ").parse::<cron::Schedule>() {
                    let original = if i == 0 || trimmed.split_whitespace().count() == 6 {
                        trimmed.split_whitespace().nth(i)
                    } else {
                        trimmed.split_whitespace().nth(i - 1)
                    };
                    return Err(ScheduleError::Field {
                        expr: expr.into(),
                        field: name,
                        value: original.unwrap_or_default().to_string(),
                        detail: format!(": {e}"),
                    });
                }
            }
            let restricted = |f: &str| f != "*" && f != "?";
            if restricted(&fields[3]) && restricted(&fields[5]) {
                let mut by_month_day = fields.clone();
                by_month_day[5] = "*".into();
                let mut by_week_day = fields.clone();
                by_week_day[3] = "*".into();
                vec![by_month_day.join(" "), by_week_day.join(" ")]
            } else {
                vec![fields.join(" ")]
            }
        };
        let inner = cron_expr
            .iter()
            .map(|e| e.parse::<cron::Schedule>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ScheduleError::Field {
                expr: expr.into(),
                field: "expression",
                value: trimmed.into(),
                detail: format!(": {e}"),
            })?;
        let schedule = Schedule {
            expr: trimmed.to_string(),
            inner,
            tz,
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::Never { expr: expr.into() });
        }
        Ok(schedule)
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone it is evaluated in.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The instant a local wall-clock time denotes: the first of two during a repeated hour,
    /// the end of the gap for a time skipped by the clock.
    fn resolve(&self, local: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => t.to_utc(),
            LocalResult::Ambiguous(first, _) => first.to_utc(),
            LocalResult::None => {
                let mut probe = local;
                loop {
                    probe += TimeDelta::minutes(1);
                    if let Some(t) = self.tz.from_local_datetime(&probe).earliest() {
                        // Snap back to the transition: the first instant after the gap.
                        let t = t.to_utc();
                        return t - TimeDelta::seconds(t.timestamp().rem_euclid(60));
                    }
                }
            }
        }
    }

    /// How far before (or after) `around` candidate wall-clock times must be considered: a
    /// few hours when a UTC offset change is near, else none. Dense schedules (every second)
    /// would otherwise walk thousands of candidates per call.
    fn slack(&self, around: DateTime<Utc>) -> TimeDelta {
        use chrono::Offset;
        let window = TimeDelta::hours(3);
        let offset = |t: DateTime<Utc>| t.with_timezone(&self.tz).offset().fix();
        if offset(around - window) == offset(around) && offset(around) == offset(around + window) {
            TimeDelta::seconds(1)
        } else {
            window
        }
    }

    /// The first firing strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.tz).naive_local();
        let start = Utc.from_utc_datetime(&(local - self.slack(now)));
        self.inner
            .iter()
            .filter_map(|inner| {
                inner
                    .after(&start)
                    .take(100_000)
                    .map(|naive| self.resolve(naive.naive_utc()))
                    .find(|t| *t > now)
            })
            .min()
    }

    /// The last firing at or before `now`.
    pub fn prev_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.tz).naive_local();
        let start = Utc.from_utc_datetime(&(local + self.slack(now)));
        self.inner
            .iter()
            .filter_map(|inner| {
                inner
                    .after(&start)
                    .rev()
                    .take(100_000)
                    .map(|naive| self.resolve(naive.naive_utc()))
                    .find(|t| *t <= now)
            })
            .max()
    }

    /// Every firing in `(from, to]`, deduplicated, oldest first.
    pub fn firings_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from;
        while let Some(next) = self.next_after(t) {
            if next > to || out.len() >= 10_000 {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }

    /// The longest gap between consecutive firings over the next year (sampled), used to judge
    /// whether the newest backup is overdue.
    pub fn period(&self, now: DateTime<Utc>) -> TimeDelta {
        let mut longest = TimeDelta::zero();
        let mut t = now;
        let mut prev = self.prev_at_or_before(now);
        for _ in 0..400 {
            let Some(next) = self.next_after(t) else {
                break;
            };
            if let Some(p) = prev {
                longest = longest.max(next - p);
            }
            prev = Some(next);
            t = next;
            if next - now > TimeDelta::days(370) {
                break;
            }
        }
        longest
    }
}

/// Rewrites a crontab day-of-week field (0-7, 0 and 7 = Sunday) into the `cron` crate's
/// numbering (1-7, 1 = Sunday). Names pass through.
fn crontab_weekdays(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let mut days: Vec<u32> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step `{s}` is not a positive number"))?,
            ),
            None => (item, 1),
        };
        let bounds: Option<(u32, u32)> = if range == "*" {
            Some((0, 6))
        } else if let Some((a, b)) = range.split_once('-') {
            match (a.parse::<u32>(), b.parse::<u32>()) {
                (Ok(a), Ok(b)) => Some((a, b)),
                (Err(_), Err(_)) => None,
                _ => return Err(format!("`{range}` mixes names and numbers")),
            }
        } else {
            range.parse::<u32>().ok().map(|n| (n, n))
        };
        match bounds {
            Some((a, b)) => {
                if a > 7 || b > 7 || a > b {
                    return Err(format!("`{range}` is outside 0-7 (0 and 7 are Sunday)"));
                }
                days.extend((a..=b).step_by(step as usize).map(|d| d % 7 + 1));
            }
            None => names.push(item.to_string()),
        }
    }
    days.sort_unstable();
    days.dedup();
    let mut out: Vec<String> = days.iter().map(u32::to_string).collect();
    out.extend(names);
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn sched(expr: &str, tz: &str) -> Schedule {
        Schedule::parse(expr, parse_tz(tz).unwrap()).unwrap()
    }

    #[test]
    fn daily_at_two_in_berlin() {
        let s = sched("0 2 * * *", "Europe/Berlin");
        // Winter: UTC+1.
        assert_eq!(
            s.next_after(utc("2026-01-10T12:00:00Z")),
            Some(utc("2026-01-11T01:00:00Z"))
        );
        // Summer: UTC+2.
        assert_eq!(
            s.next_after(utc("2026-07-10T12:00:00Z")),
            Some(utc("2026-07-11T00:00:00Z"))
        );
    }

    #[test]
    fn spring_forward_gap_runs_once_after_the_gap() {
        // 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let s = sched("30 2 * * *", "Europe/Berlin");
        let fire = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(fire, utc("2026-03-29T01:00:00Z"));
        assert_eq!(s.next_after(fire), Some(utc("2026-03-30T00:30:00Z")));
        // Every 15 minutes through the gap: 02:00, 02:15, 02:30, 02:45 and 03:00 are one instant.
        let q = sched("*/15 * * * *", "Europe/Berlin");
        let fires = q.firings_between(utc("2026-03-29T00:40:00Z"), utc("2026-03-29T01:20:00Z"));
        assert_eq!(
            fires,
            vec![
                utc("2026-03-29T00:45:00Z"),
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-29T01:15:00Z")
            ]
        );
    }

    #[test]
    fn fall_back_repeated_hour_runs_once() {
        // 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
        let s = sched("30 2 * * *", "Europe/Berlin");
        let fires = s.firings_between(utc("2026-10-24T12:00:00Z"), utc("2026-10-26T12:00:00Z"));
        assert_eq!(
            fires,
            vec![utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]
        );
    }

    #[test]
    fn new_york_dst_both_ways() {
        let s = sched("30 2 * * *", "America/New_York");
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        assert_eq!(
            s.next_after(utc("2026-03-07T12:00:00Z")),
            Some(utc("2026-03-08T07:00:00Z"))
        );
        // 2026-11-01: 02:00 EDT goes back to 01:00 EST; 02:30 exists once (EST).
        let fires = s.firings_between(utc("2026-10-31T12:00:00Z"), utc("2026-11-02T12:00:00Z"));
        assert_eq!(
            fires,
            vec![utc("2026-11-01T07:30:00Z"), utc("2026-11-02T07:30:00Z")]
        );
        let h = sched("30 1 * * *", "America/New_York");
        let fires = h.firings_between(utc("2026-10-31T12:00:00Z"), utc("2026-11-01T12:00:00Z"));
        assert_eq!(
            fires,
            vec![utc("2026-11-01T05:30:00Z")],
            "01:30 repeats; it runs once"
        );
    }

    #[test]
    fn crontab_sunday_is_zero_and_seven() {
        for expr in ["0 2 * * 0", "0 2 * * 7", "0 2 * * Sun"] {
            let s = sched(expr, "UTC");
            // 2026-11-29 is a Sunday.
            assert_eq!(
                s.next_after(utc("2026-11-25T00:00:00Z")),
                Some(utc("2026-11-29T02:00:00Z")),
                "{expr}"
            );
        }
        let weekdays = sched("0 9 * * 1-5", "UTC");
        assert_eq!(
            weekdays.next_after(utc("2026-11-28T00:00:00Z")),
            Some(utc("2026-11-30T09:00:00Z"))
        );
        assert_eq!(crontab_weekdays("5-7").unwrap(), "1,6,7");
        assert_eq!(crontab_weekdays("*/2").unwrap(), "1,3,5,7");
    }

    #[test]
    fn both_day_fields_restricted_means_either_as_in_crontab() {
        // The 1st of the month, and every Sunday.
        let s = sched("0 2 1 * 0", "UTC");
        let fires = s.firings_between(utc("2026-11-25T00:00:00Z"), utc("2026-12-07T00:00:00Z"));
        assert_eq!(
            fires,
            vec![
                utc("2026-11-29T02:00:00Z"),
                utc("2026-12-01T02:00:00Z"),
                utc("2026-12-06T02:00:00Z")
            ]
        );
        assert_eq!(
            s.prev_at_or_before(utc("2026-12-02T00:00:00Z")),
            Some(utc("2026-12-01T02:00:00Z"))
        );
    }

    #[test]
    fn six_fields_and_shorthands() {
        let s = sched("*/10 * * * * *", "UTC");
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:05Z")),
            Some(utc("2026-01-01T00:00:10Z"))
        );
        let h = sched("@hourly", "UTC");
        assert_eq!(
            h.next_after(utc("2026-01-01T00:00:05Z")),
            Some(utc("2026-01-01T01:00:00Z"))
        );
        assert_eq!(h.period(utc("2026-01-01T00:00:05Z")), TimeDelta::hours(1));
        let w = sched("@weekly", "UTC");
        assert_eq!(w.period(utc("2026-01-01T00:00:00Z")), TimeDelta::days(7));
    }

    #[test]
    fn prev_and_period() {
        let s = sched("0 2 * * *", "Europe/Berlin");
        assert_eq!(
            s.prev_at_or_before(utc("2026-01-10T12:00:00Z")),
            Some(utc("2026-01-10T01:00:00Z"))
        );
        assert_eq!(
            s.prev_at_or_before(utc("2026-01-10T01:00:00Z")),
            Some(utc("2026-01-10T01:00:00Z"))
        );
        assert_eq!(
            s.period(utc("2026-01-10T12:00:00Z")),
            TimeDelta::hours(25),
            "the DST night is longest"
        );
    }

    #[test]
    fn invalid_expressions_name_the_field() {
        let tz = parse_tz("UTC").unwrap();
        let err = |e: &str| Schedule::parse(e, tz).unwrap_err().to_string();
        assert!(
            err("0 25 * * *").contains("the hour field `25`"),
            "{}",
            err("0 25 * * *")
        );
        assert!(err("61 * * * *").contains("the minute field `61`"));
        assert!(err("0 2 * * 8").contains("the day-of-week field `8`"));
        assert!(err("0 2 32 * *").contains("the day-of-month field `32`"));
        assert!(err("0 2 * 13 *").contains("the month field `13`"));
        assert!(err("0 2 * *").contains("has 4 fields"));
        assert!(err("@sometimes").contains("@hourly"));
        assert!(err("0 0 30 2 *").contains("never fires"));
        assert!(parse_tz("Mars/Olympus").is_err());
    }
}

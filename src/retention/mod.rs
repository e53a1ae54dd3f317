//! Retention: which backups a `prune` keeps, restic-style (`forget --keep-*`), as a pure
//! function of the backups, the policy, a time zone and `now`; deleting is the caller's job.
//!
//! Invariants: the newest backup is always kept, whatever the policy says, so a prune can never
//! leave a database without a backup; a policy with nothing set keeps everything (callers
//! should refuse to prune with it, as restic does, rather than rely on that); calendar buckets
//! are taken in the configured time zone, so "one per day" means one per local day across DST.

pub mod prune;

use std::cmp::Reverse;
use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Serialize, Serializer};

/// How many backups to keep by each rule; a backup is kept when any rule keeps it.
///
/// `None` leaves a rule out; `Some(0)` is an explicit "none by this rule", so a policy of only
/// zeros is not empty and prunes everything but the newest backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

impl Policy {
    /// True when no rule is set, which `select` treats as "keep everything": a missing policy
    /// must never read as "delete everything".
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// The largest count: with fewer backups than this the policy cannot be satisfied yet, so
    /// the caller declines to prune (a safety floor against a misread or young catalog). Not
    /// the sum: rules share backups (today's is daily, weekly and monthly at once), so a
    /// steady state can hold fewer than the sum and pruning would never start.
    pub fn minimum(&self) -> usize {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0) as usize
    }
}

/// Why a backup is kept; shown in the prune plan so an operator can see which rule holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The newest backup, kept regardless of the policy.
    Newest,
    /// One of the `keep_last` newest; carries that count.
    Last(u32),
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    MaxAge,
    /// The policy is empty, so nothing is pruned.
    NoPolicy,
    /// The last backup before one with an unacknowledged size anomaly (kept by prune, not by
    /// the policy: see [`crate::catalog::anomaly`]).
    BeforeAnomaly,
    /// A backup with an unacknowledged size anomaly: the evidence stays with what it protects.
    Anomaly,
    /// The newest base backup whose WAL is complete (point-in-time recovery), kept whatever
    /// the policy says.
    NewestRestorable,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Newest => f.write_str("newest"),
            Reason::Last(n) => write!(f, "last {n}"),
            Reason::NewestRestorable => write!(f, "newest restorable"),
            Reason::Hourly => f.write_str("hourly"),
            Reason::Daily => f.write_str("daily"),
            Reason::Weekly => f.write_str("weekly"),
            Reason::Monthly => f.write_str("monthly"),
            Reason::Yearly => f.write_str("yearly"),
            Reason::MaxAge => f.write_str("max age"),
            Reason::NoPolicy => f.write_str("no policy"),
            Reason::BeforeAnomaly => f.write_str("before an unacknowledged anomaly"),
            Reason::Anomaly => f.write_str("unacknowledged anomaly"),
        }
    }
}

/// Serialized as its display text, so JSON plans read like the printed ones.
impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The verdict on one backup.
#[derive(Debug, Serialize)]
pub struct Decision<'a, T> {
    pub item: &'a T,
    pub started_at: DateTime<Utc>,
    /// Every rule that keeps the backup, in the order of [`Reason`]; empty means delete.
    pub keep: Vec<Reason>,
}

impl<T> Decision<'_, T> {
    /// True when at least one rule keeps the backup.
    pub fn is_kept(&self) -> bool {
        !self.keep.is_empty()
    }
}

/// A calendar bucket as local (year, ordinal/week/month, hour) numbers; unused parts are 0.
type Bucket = (i32, u32, u32);

/// Calendar periods for the bucket rules, coarsest last.
#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// The bucket of a local time. Weeks use the ISO week-year, so the days of a week that
    /// spans New Year share one bucket instead of splitting into two half-weeks.
    fn key(self, t: &DateTime<Tz>) -> Bucket {
        match self {
            Period::Hour => (t.year(), t.ordinal(), t.hour()),
            Period::Day => (t.year(), t.ordinal(), 0),
            Period::Week => (t.iso_week().year(), t.iso_week().week(), 0),
            Period::Month => (t.year(), t.month(), 0),
            Period::Year => (t.year(), 0, 0),
        }
    }

    fn reason(self) -> Reason {
        match self {
            Period::Hour => Reason::Hourly,
            Period::Day => Reason::Daily,
            Period::Week => Reason::Weekly,
            Period::Month => Reason::Monthly,
            Period::Year => Reason::Yearly,
        }
    }
}

/// Decides for every item whether it is kept and why; the result is newest first whatever
/// the input order. Calendar buckets are taken in `tz`, `max_age` is measured from `now`.
pub fn select<'a, T>(
    items: &'a [T],
    started_at: impl Fn(&T) -> DateTime<Utc>,
    policy: &Policy,
    tz: Tz,
    now: DateTime<Utc>,
) -> Vec<Decision<'a, T>> {
    let mut decisions: Vec<_> = items
        .iter()
        .map(|item| Decision {
            item,
            started_at: started_at(item),
            keep: Vec::new(),
        })
        .collect();
    decisions.sort_by_key(|d| Reverse(d.started_at));

    if policy.is_empty() {
        for (i, d) in decisions.iter_mut().enumerate() {
            d.keep.push(if i == 0 {
                Reason::Newest
            } else {
                Reason::NoPolicy
            });
        }
        return decisions;
    }

    // A set of used buckets rather than restic's "differs from the previous one": local keys
    // need not be monotonic in UTC when a zone sets its clock back across a bucket boundary.
    let mut buckets: Vec<(Period, usize, HashSet<Bucket>)> = [
        (Period::Hour, policy.keep_hourly),
        (Period::Day, policy.keep_daily),
        (Period::Week, policy.keep_weekly),
        (Period::Month, policy.keep_monthly),
        (Period::Year, policy.keep_yearly),
    ]
    .into_iter()
    .filter_map(|(period, count)| Some((period, count? as usize, HashSet::new())))
    .collect();
    // A max_age beyond TimeDelta's range (centuries) keeps everything, as it would if it fit.
    let max_age = policy
        .max_age
        .map(|d| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX));

    for (i, d) in decisions.iter_mut().enumerate() {
        if i == 0 {
            d.keep.push(Reason::Newest);
        }
        if let Some(n) = policy.keep_last.filter(|&n| i < n as usize) {
            d.keep.push(Reason::Last(n));
        }
        let local = d.started_at.with_timezone(&tz);
        for (period, count, used) in &mut buckets {
            if used.len() < *count && used.insert(period.key(&local)) {
                d.keep.push(period.reason());
            }
        }
        if max_age.is_some_and(|max| now - d.started_at < max) {
            d.keep.push(Reason::MaxAge);
        }
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2027-06-01T00:00:00Z";

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    fn times(list: &[&str]) -> Vec<DateTime<Utc>> {
        list.iter().map(|s| at(s)).collect()
    }

    /// The plan as `"<UTC time> <reasons>"` lines, newest first; deleted backups show `-`.
    fn plan(items: &[DateTime<Utc>], policy: &Policy, tz: Tz) -> Vec<String> {
        select(items, |t| *t, policy, tz, at(NOW))
            .iter()
            .map(|d| {
                let reasons: Vec<String> = d.keep.iter().map(Reason::to_string).collect();
                let reasons = if reasons.is_empty() {
                    "-".to_string()
                } else {
                    reasons.join(", ")
                };
                format!("{} {reasons}", d.started_at.format("%Y-%m-%dT%H:%MZ"))
            })
            .collect()
    }

    /// The UTC times of the kept backups, newest first.
    fn kept(items: &[DateTime<Utc>], policy: &Policy, tz: Tz) -> Vec<String> {
        select(items, |t| *t, policy, tz, at(NOW))
            .iter()
            .filter(|d| d.is_kept())
            .map(|d| d.started_at.format("%Y-%m-%dT%H:%MZ").to_string())
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_n_newest() {
        let items = times(&[
            "2027-05-01T00:00:00Z",
            "2027-05-02T00:00:00Z",
            "2027-05-03T00:00:00Z",
            "2027-05-04T00:00:00Z",
        ]);
        let policy = Policy {
            keep_last: Some(2),
            ..Policy::default()
        };
        assert_eq!(
            plan(&items, &policy, Tz::UTC),
            [
                "2027-05-04T00:00Z newest, last 2",
                "2027-05-03T00:00Z last 2",
                "2027-05-02T00:00Z -",
                "2027-05-01T00:00Z -",
            ]
        );
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_day() {
        let items = times(&[
            "2027-05-01T01:00:00Z",
            "2027-05-01T13:00:00Z",
            "2027-05-02T01:00:00Z",
            "2027-05-02T13:00:00Z",
            "2027-05-02T23:00:00Z",
            "2027-05-03T06:00:00Z",
        ]);
        let policy = Policy {
            keep_daily: Some(2),
            ..Policy::default()
        };
        assert_eq!(
            kept(&items, &policy, Tz::UTC),
            ["2027-05-03T06:00Z", "2027-05-02T23:00Z"]
        );
    }

    #[test]
    fn keep_monthly_keeps_the_newest_of_each_month() {
        // Two backups a month (the 1st and the 28th) from 2026-01 to 2027-02: 14 months.
        let items: Vec<_> = (0..14)
            .flat_map(|m| {
                let (y, m) = (2026 + m / 12, m % 12 + 1);
                [
                    at(&format!("{y}-{m:02}-01T12:00:00Z")),
                    at(&format!("{y}-{m:02}-28T12:00:00Z")),
                ]
            })
            .collect();
        for (count, expected) in [(12, 12), (14, 14), (20, 14)] {
            let policy = Policy {
                keep_monthly: Some(count),
                ..Policy::default()
            };
            let kept = kept(&items, &policy, Tz::UTC);
            assert_eq!(kept.len(), expected);
            assert!(kept.iter().all(|t| t[8..10] == *"28"), "{kept:?}");
            assert_eq!(kept[0], "2027-02-28T12:00Z");
        }
    }

    #[test]
    fn iso_week_spanning_new_year_is_one_weekly_bucket() {
        // 2026-12-31 (Thu) and 2027-01-01 (Fri) are both in 2026-W53; 2027-01-04 is 2027-W01.
        let items = times(&[
            "2026-12-21T12:00:00Z",
            "2026-12-31T12:00:00Z",
            "2027-01-01T12:00:00Z",
            "2027-01-04T12:00:00Z",
        ]);
        let weekly = Policy {
            keep_weekly: Some(3),
            ..Policy::default()
        };
        assert_eq!(
            kept(&items, &weekly, Tz::UTC),
            [
                "2027-01-04T12:00Z",
                "2027-01-01T12:00Z",
                "2026-12-21T12:00Z"
            ]
        );
        // Years do split there.
        let yearly = Policy {
            keep_yearly: Some(2),
            ..Policy::default()
        };
        assert_eq!(
            kept(&items, &yearly, Tz::UTC),
            ["2027-01-04T12:00Z", "2026-12-31T12:00Z"]
        );
    }

    #[test]
    fn repeated_hour_on_fall_back_is_one_hourly_bucket() {
        // Europe/Berlin 2026-10-25: 00:30Z is 02:30 CEST and 01:30Z is 02:30 CET.
        let items = times(&[
            "2026-10-24T23:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:30:00Z",
        ]);
        let policy = Policy {
            keep_hourly: Some(3),
            ..Policy::default()
        };
        assert_eq!(
            kept(&items, &policy, chrono_tz::Europe::Berlin),
            [
                "2026-10-25T02:30Z",
                "2026-10-25T01:30Z",
                "2026-10-24T23:30Z"
            ]
        );
        // In UTC they are four distinct hours.
        assert_eq!(
            kept(&items, &policy, Tz::UTC),
            [
                "2026-10-25T02:30Z",
                "2026-10-25T01:30Z",
                "2026-10-25T00:30Z"
            ]
        );
    }

    #[test]
    fn daily_buckets_follow_local_dates_on_spring_forward() {
        // Europe/Berlin 2026-03-29 has 23 hours: 23:30Z on the 28th is already the 29th (CET),
        // 22:30Z on the 29th is already the 30th (CEST).
        let items = times(&[
            "2026-03-28T22:30:00Z",
            "2026-03-28T23:30:00Z",
            "2026-03-29T21:30:00Z",
            "2026-03-29T22:30:00Z",
        ]);
        let policy = Policy {
            keep_daily: Some(3),
            ..Policy::default()
        };
        assert_eq!(
            kept(&items, &policy, chrono_tz::Europe::Berlin),
            [
                "2026-03-29T22:30Z",
                "2026-03-29T21:30Z",
                "2026-03-28T22:30Z"
            ]
        );
        assert_eq!(
            kept(&items, &policy, Tz::UTC),
            ["2026-03-29T22:30Z", "2026-03-28T23:30Z"]
        );
    }

    #[test]
    fn daily_buckets_follow_the_time_zone_date() {
        // 23:30Z and 16:00Z on May 1 are May 2 in Tokyo; 14:00Z is 23:00 on May 1 there.
        let items = times(&[
            "2027-05-01T14:00:00Z",
            "2027-05-01T16:00:00Z",
            "2027-05-01T23:30:00Z",
        ]);
        let policy = Policy {
            keep_daily: Some(7),
            ..Policy::default()
        };
        assert_eq!(
            kept(&items, &policy, chrono_tz::Asia::Tokyo),
            ["2027-05-01T23:30Z", "2027-05-01T14:00Z"]
        );
        assert_eq!(kept(&items, &policy, Tz::UTC), ["2027-05-01T23:30Z"]);
    }

    #[test]
    fn max_age_keeps_backups_younger_than_it() {
        let items = times(&[
            "2027-05-29T00:00:00Z", // 3 days old
            "2027-05-30T00:00:01Z", // just under 2 days
            "2027-05-31T00:00:00Z",
        ]);
        let policy = Policy {
            max_age: Some(Duration::from_secs(2 * 86400)),
            ..Policy::default()
        };
        assert_eq!(
            plan(&items, &policy, Tz::UTC),
            [
                "2027-05-31T00:00Z newest, max age",
                "2027-05-30T00:00Z max age",
                "2027-05-29T00:00Z -",
            ]
        );
    }

    #[test]
    fn a_backup_can_be_kept_for_several_reasons() {
        let items = times(&[
            "2026-12-31T10:00:00Z",
            "2027-05-30T10:00:00Z",
            "2027-05-31T10:00:00Z",
            "2027-05-31T20:00:00Z",
        ]);
        let policy = Policy {
            keep_last: Some(1),
            keep_daily: Some(2),
            keep_monthly: Some(2),
            keep_yearly: Some(2),
            max_age: Some(Duration::from_secs(86400)),
            ..Policy::default()
        };
        assert_eq!(
            plan(&items, &policy, Tz::UTC),
            [
                "2027-05-31T20:00Z newest, last 1, daily, monthly, yearly, max age",
                "2027-05-31T10:00Z max age",
                "2027-05-30T10:00Z daily",
                "2026-12-31T10:00Z monthly, yearly",
            ]
        );
    }

    #[test]
    fn newest_is_kept_even_when_no_rule_keeps_it() {
        let items = times(&["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]);
        let zero_daily = Policy {
            keep_daily: Some(0),
            ..Policy::default()
        };
        let too_short = Policy {
            max_age: Some(Duration::from_secs(60)),
            ..Policy::default()
        };
        for policy in [zero_daily, too_short] {
            assert!(!policy.is_empty());
            assert_eq!(
                plan(&items, &policy, Tz::UTC),
                ["2026-01-02T00:00Z newest", "2026-01-01T00:00Z -"]
            );
        }
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let items = times(&["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]);
        assert!(Policy::default().is_empty());
        assert_eq!(
            plan(&items, &Policy::default(), Tz::UTC),
            ["2026-01-02T00:00Z newest", "2026-01-01T00:00Z no policy"]
        );
    }

    #[test]
    fn output_is_newest_first_whatever_the_input_order() {
        let items = times(&[
            "2027-05-02T00:00:00Z",
            "2027-05-04T00:00:00Z",
            "2027-05-01T00:00:00Z",
            "2027-05-03T00:00:00Z",
        ]);
        let policy = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let decisions = select(&items, |t| *t, &policy, Tz::UTC, at(NOW));
        let order: Vec<_> = decisions.iter().map(|d| *d.item).collect();
        assert_eq!(
            order,
            times(&[
                "2027-05-04T00:00:00Z",
                "2027-05-03T00:00:00Z",
                "2027-05-02T00:00:00Z",
                "2027-05-01T00:00:00Z",
            ])
        );
        assert!(std::ptr::eq(decisions[0].item, &items[1]));
        assert!(select(&[] as &[DateTime<Utc>], |t| *t, &policy, Tz::UTC, at(NOW)).is_empty());
    }

    #[test]
    fn minimum_is_the_largest_count() {
        let policy = Policy {
            keep_last: Some(3),
            keep_daily: Some(7),
            keep_weekly: Some(4),
            max_age: Some(Duration::from_secs(86400)),
            ..Policy::default()
        };
        assert_eq!(policy.minimum(), 7);
        assert_eq!(Policy::default().minimum(), 0);
    }

    #[test]
    fn reasons_display_and_serialize_as_text() {
        let all = [
            Reason::Newest,
            Reason::Last(3),
            Reason::Hourly,
            Reason::Daily,
            Reason::Weekly,
            Reason::Monthly,
            Reason::Yearly,
            Reason::MaxAge,
            Reason::NoPolicy,
        ];
        let shown: Vec<String> = all.iter().map(Reason::to_string).collect();
        assert_eq!(
            shown,
            [
                "newest",
                "last 3",
                "hourly",
                "daily",
                "weekly",
                "monthly",
                "yearly",
                "max age",
                "no policy"
            ]
        );
        assert_eq!(
            serde_json::to_string(&[Reason::Last(3), Reason::MaxAge]).expect("serialize"),
            r#"["last 3","max age"]"#
        );
    }
}

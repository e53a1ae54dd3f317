//! Schedule: the loop that fires one schedule until shutdown, shared by backup jobs and drills.
//!
//! Invariants: firings of one schedule never overlap (the next wait starts after the previous
//! run returned); firings that passed during a run are reported as skipped, never queued; a
//! cancelled `shutdown` ends the wait at once and no firing starts after it.

use std::future::Future;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Clock, Schedule};

/// What the loop drives: one implementation for backup jobs, one for drills, one per test.
pub trait Firings {
    /// Runs the firing scheduled at `at`; returns when the run is over.
    fn fire(&self, at: DateTime<Utc>) -> impl Future<Output = ()> + Send;
    /// The next firing will be at `at` (health and `/metrics` show it).
    fn next(&self, _at: DateTime<Utc>) {}
    /// These firings passed while the previous run was still going; they are skipped.
    fn skipped(&self, _missed: &[DateTime<Utc>]) {}
}

/// Fires `schedule` strictly after `after` until `shutdown` or the schedule has no further
/// firing.
pub async fn fire_on_schedule(
    schedule: &Schedule,
    clock: &Clock,
    shutdown: &CancellationToken,
    mut after: DateTime<Utc>,
    firings: &impl Firings,
) {
    loop {
        let Some(next) = schedule.next_after(after) else {
            tracing::warn!(
                schedule = schedule.expr(),
                "schedule has no further firings"
            );
            return;
        };
        firings.next(next);
        tokio::select! {
            _ = clock.sleep_until(next) => {}
            _ = shutdown.cancelled() => return,
        }
        firings.fire(next).await;
        if shutdown.is_cancelled() {
            return;
        }
        let now = clock.now();
        let missed = schedule.firings_between(next, now);
        if !missed.is_empty() {
            firings.skipped(&missed);
        }
        after = now.max(next);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// Records what the loop did; each run lasts `run_for` of virtual time.
    struct Recorder {
        clock: Clock,
        run_for: Duration,
        fired: Mutex<Vec<(DateTime<Utc>, DateTime<Utc>)>>,
        skipped: Mutex<Vec<DateTime<Utc>>>,
        stop_after: usize,
        shutdown: CancellationToken,
    }

    impl Firings for Recorder {
        async fn fire(&self, at: DateTime<Utc>) {
            self.fired.lock().unwrap().push((at, self.clock.now()));
            tokio::time::sleep(self.run_for).await;
            if self.fired.lock().unwrap().len() >= self.stop_after {
                self.shutdown.cancel();
            }
        }
        fn skipped(&self, missed: &[DateTime<Utc>]) {
            self.skipped.lock().unwrap().extend_from_slice(missed);
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn recorder(start: &str, run_for: Duration, stop_after: usize) -> Recorder {
        Recorder {
            clock: Clock::starting_at(t(start)),
            run_for,
            fired: Mutex::default(),
            skipped: Mutex::default(),
            stop_after,
            shutdown: CancellationToken::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_daily_at_2_am_local_time_across_a_dst_change() {
        let schedule = Schedule::parse("0 2 * * *", "Europe/Berlin".parse().unwrap()).unwrap();
        let r = recorder("2026-03-27T12:00:00Z", Duration::from_secs(60), 3);
        fire_on_schedule(&schedule, &r.clock, &r.shutdown, r.clock.now(), &r).await;
        let fired = r.fired.lock().unwrap().clone();
        // 2 AM on 29 March does not exist in Berlin: that firing comes at the end of the gap.
        assert_eq!(
            fired,
            vec![
                (t("2026-03-28T01:00:00Z"), t("2026-03-28T01:00:00Z")),
                (t("2026-03-29T01:00:00Z"), t("2026-03-29T01:00:00Z")),
                (t("2026-03-30T00:00:00Z"), t("2026-03-30T00:00:00Z")),
            ]
        );
        assert!(r.skipped.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_longer_than_the_period_skips_firings_instead_of_queueing_them() {
        let schedule = Schedule::parse("*/10 * * * *", chrono_tz::UTC).unwrap();
        let r = recorder("2026-01-01T00:05:00Z", Duration::from_secs(25 * 60), 2);
        fire_on_schedule(&schedule, &r.clock, &r.shutdown, r.clock.now(), &r).await;
        let fired: Vec<_> = r.fired.lock().unwrap().iter().map(|f| f.0).collect();
        assert_eq!(
            fired,
            vec![t("2026-01-01T00:10:00Z"), t("2026-01-01T00:40:00Z")]
        );
        assert_eq!(
            r.skipped.lock().unwrap().clone(),
            vec![t("2026-01-01T00:20:00Z"), t("2026-01-01T00:30:00Z")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_at_once_and_no_firing_starts() {
        let schedule = Schedule::parse("@weekly", chrono_tz::UTC).unwrap();
        let r = recorder("2026-01-01T00:00:00Z", Duration::ZERO, 1);
        let shutdown = r.shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            shutdown.cancel();
        });
        fire_on_schedule(&schedule, &r.clock, &r.shutdown, r.clock.now(), &r).await;
        assert!(r.fired.lock().unwrap().is_empty());
        assert_eq!(r.clock.now(), t("2026-01-01T00:00:05Z"));
    }
}

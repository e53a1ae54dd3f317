//! Schedule: the clock the daemon reads and sleeps on.
//!
//! Invariant: the daemon takes wall time only from a [`Clock`] and waits only through it, so
//! tests drive scheduling, catch-up, retries and health through days in milliseconds.
//! `tokio::time::pause()` alone cannot do that: it moves tokio's timers, not the wall clock.

use chrono::{DateTime, Utc};

/// Where "now" comes from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// Wall time that starts at `start` and advances with tokio's clock. Under
    /// `tokio::time::pause()` the runtime skips ahead whenever every task waits, so a test
    /// sees a day of schedule in an instant, with `now` and every sleep in step.
    Virtual {
        start: DateTime<Utc>,
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// A virtual clock reading `start` now (see [`Clock::Virtual`]).
    pub fn starting_at(start: DateTime<Utc>) -> Clock {
        Clock::Virtual {
            start,
            origin: tokio::time::Instant::now(),
        }
    }

    /// The current wall time.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Virtual { start, origin } => {
                *start
                    + chrono::TimeDelta::from_std(origin.elapsed())
                        .unwrap_or(chrono::TimeDelta::MAX)
            }
        }
    }

    /// Sleeps until the wall time `at` (returns at once when it has passed).
    pub async fn sleep_until(&self, at: DateTime<Utc>) {
        if let Ok(wait) = (at - self.now()).to_std() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_virtual_clock_moves_with_tokio_time() {
        let start = "2026-03-29T00:30:00Z".parse().unwrap();
        let clock = Clock::starting_at(start);
        assert_eq!(clock.now(), start);
        let later = start + chrono::TimeDelta::hours(30);
        clock.sleep_until(later).await;
        assert_eq!(clock.now(), later);
        // A time in the past returns at once and leaves the clock where it was.
        clock.sleep_until(start).await;
        assert_eq!(clock.now(), later);
    }
}

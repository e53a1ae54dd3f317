//! Retries: one helper for every "try again later" in the sidecar. It stops at a permanent
//! error, at the last attempt, or when `stop` is cancelled, and reports each failure to the
//! caller so attempts can be logged and notified with their number.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ConstantBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use serde::Serialize;

/// How a failed backup is retried.
#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub exponential: bool,
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    pub jitter: bool,
    /// Longest one attempt may run before it is given up and counted as failed: the bound
    /// for a connection that hangs without ever being closed.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
}

/// The waits between attempts a policy prescribes (one fewer than its attempts).
pub fn delays(policy: &RetryPolicy) -> Box<dyn Iterator<Item = Duration> + Send> {
    let retries = policy.attempts.saturating_sub(1) as usize;
    if policy.exponential {
        let mut b = ExponentialBuilder::default()
            .with_min_delay(policy.interval)
            .with_max_delay(policy.max_interval)
            .with_max_times(retries);
        if policy.jitter {
            b = b.with_jitter();
        }
        Box::new(b.build())
    } else {
        let mut b = ConstantBuilder::default()
            .with_delay(policy.interval)
            .with_max_times(retries);
        if policy.jitter {
            b = b.with_jitter();
        }
        Box::new(b.build())
    }
}

/// Runs `op(attempt)` until it succeeds or must stop; returns its last result and the number
/// of attempts made. `on_failure(attempt, error, next_wait)` sees every failure; `next_wait`
/// is `None` when no attempt follows.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    stop: &CancellationToken,
    is_permanent: impl Fn(&E) -> bool,
    mut on_failure: impl FnMut(u32, &E, Option<Duration>),
    mut op: F,
) -> (Result<T, E>, u32)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waits = delays(policy);
    let mut attempt = 1;
    loop {
        let err = match op(attempt).await {
            Ok(v) => return (Ok(v), attempt),
            Err(e) => e,
        };
        let wait = if is_permanent(&err) || stop.is_cancelled() {
            None
        } else {
            waits.next()
        };
        on_failure(attempt, &err, wait);
        let Some(wait) = wait else {
            return (Err(err), attempt);
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return (Err(err), attempt),
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, exponential: bool) -> RetryPolicy {
        RetryPolicy {
            attempts,
            interval: Duration::from_millis(10),
            exponential,
            max_interval: Duration::from_millis(40),
            jitter: false,
            attempt_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn fixed_and_exponential_delays() {
        let fixed: Vec<_> = delays(&policy(4, false)).collect();
        assert_eq!(fixed, vec![Duration::from_millis(10); 3]);
        // Rounded: the exponential builder computes in floating point.
        let exp: Vec<u128> = delays(&policy(5, true))
            .map(|d| (d.as_micros() + 500) / 1000)
            .collect();
        assert_eq!(exp, vec![10, 20, 40, 40]);
    }

    #[tokio::test]
    async fn stops_at_success_permanent_error_or_last_attempt() {
        let stop = CancellationToken::new();
        let mut seen = Vec::new();
        let (r, n) = retry(
            &policy(10, false),
            &stop,
            |_: &&str| false,
            |a, _, _| seen.push(a),
            |a| async move {
                if a < 3 {
                    Err("transient")
                } else {
                    Ok(a)
                }
            },
        )
        .await;
        assert_eq!((r, n), (Ok(3), 3));
        assert_eq!(seen, vec![1, 2]);

        let (r, n) = retry(
            &policy(10, false),
            &stop,
            |e: &&str| *e == "perm",
            |_, _, _| {},
            |_| async { Err::<(), _>("perm") },
        )
        .await;
        assert_eq!((r, n), (Err("perm"), 1));

        let mut last_wait = Some(Duration::ZERO);
        let (r, n) = retry(
            &policy(3, false),
            &stop,
            |_: &&str| false,
            |_, _, w| last_wait = w,
            |_| async { Err::<(), _>("x") },
        )
        .await;
        assert_eq!((r, n), (Err("x"), 3));
        assert_eq!(last_wait, None);
    }
}

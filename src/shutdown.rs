//! The one cancellation path: SIGTERM or SIGINT cancels a token that every long operation
//! watches; a second signal exits at once. A time limit cancels through the same tokens.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal: the conventional 128 + SIGINT.
const FORCED_EXIT: i32 = 130;

/// Installs the signal handlers and returns the token they cancel.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot install signal handlers; SIGTERM will not stop backups cleanly");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!(
            "shutdown requested; finishing cleanly (send the signal again to exit at once)"
        );
        t.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(FORCED_EXIT);
    });
    token
}

/// How long work stopped by its deadline may still take to clean up (kill its children, abort
/// its upload, drop its scratch database) before it is abandoned. Cleanup talks over the same
/// connections that may have stopped answering; two minutes is past the TCP keepalive horizon
/// (60 s idle, then 6 probes 10 s apart) at which a vanished peer is given up.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(120);

/// The longest work run by [`within`] with `limit` can take, its cleanup included: anything
/// older was cut short by a crash, not still running.
pub fn longest_run(limit: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(limit + CLEANUP_GRACE).unwrap_or(chrono::TimeDelta::MAX)
}

/// How work run by [`within`] ended.
pub enum Bounded<T> {
    /// It finished before the deadline.
    Finished(T),
    /// The deadline cancelled it. `cleaned_up` is what it returned once cancelled, or `None`
    /// when it was abandoned after [`CLEANUP_GRACE`].
    TimedOut { cleaned_up: Option<T> },
}

/// Runs `work` with a token that is cancelled when `parent` is, or once `limit` has passed.
pub async fn within<T, F>(
    limit: Duration,
    parent: &CancellationToken,
    work: impl FnOnce(CancellationToken) -> F,
) -> Bounded<T>
where
    F: Future<Output = T>,
{
    let token = parent.child_token();
    let work = work(token.clone());
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return Bounded::Finished(done),
        _ = tokio::time::sleep(limit) => {}
    }
    token.cancel();
    let cleaned_up = tokio::time::timeout(CLEANUP_GRACE, work).await.ok();
    if cleaned_up.is_none() {
        tracing::warn!(
            "cleanup after the time limit did not finish within {}; abandoned",
            humantime::format_duration(CLEANUP_GRACE)
        );
    }
    Bounded::TimedOut { cleaned_up }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work that stops only when cancelled, and then takes `cleanup` to return.
    async fn until_cancelled(token: CancellationToken, cleanup: Duration) -> &'static str {
        token.cancelled().await;
        tokio::time::sleep(cleanup).await;
        "cleaned up"
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_in_time_is_left_alone() {
        let parent = CancellationToken::new();
        let r = within(Duration::from_secs(10), &parent, |t| async move {
            tokio::time::sleep(Duration::from_secs(9)).await;
            t.is_cancelled()
        })
        .await;
        assert!(matches!(r, Bounded::Finished(false)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_cancels_and_waits_for_cleanup() {
        let parent = CancellationToken::new();
        let r = within(Duration::from_secs(10), &parent, |t| {
            until_cancelled(t, Duration::from_secs(5))
        })
        .await;
        assert!(matches!(
            r,
            Bounded::TimedOut {
                cleaned_up: Some("cleaned up")
            }
        ));
        assert!(!parent.is_cancelled(), "the limit cancels only this work");
    }

    #[tokio::test(start_paused = true)]
    async fn cleanup_that_hangs_is_abandoned_after_the_grace() {
        let parent = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let r = within(Duration::from_secs(10), &parent, |t| {
            until_cancelled(t, Duration::from_secs(100_000))
        })
        .await;
        assert!(matches!(r, Bounded::TimedOut { cleaned_up: None }));
        assert_eq!(started.elapsed(), Duration::from_secs(10) + CLEANUP_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_reaches_the_work_before_the_limit() {
        let parent = CancellationToken::new();
        parent.cancel();
        let r = within(Duration::from_secs(10), &parent, |t| {
            until_cancelled(t, Duration::ZERO)
        })
        .await;
        assert!(matches!(r, Bounded::Finished("cleaned up")));
    }
}

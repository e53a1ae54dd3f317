//! The one cancellation path: SIGTERM or SIGINT cancels a token that every long operation
//! watches; a second signal exits at once.

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

//! Restore stage, the progress display: a bar on a terminal, else a log line every 5 s.
//! Invariant: it only reads the byte count; dropping it stops it and nothing else.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reports streaming progress until dropped: a bar on a terminal, else a log line every 5 s.
pub(super) struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(super) fn start(enabled: bool, total: u64, done: Arc<AtomicU64>) -> Option<Progress> {
        if !enabled {
            return None;
        }
        let task = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            tokio::spawn(async move {
                loop {
                    bar.set_position(done.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        } else {
            tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let n = done.load(Ordering::Relaxed);
                    let rate = n as f64 / started.elapsed().as_secs_f64().max(0.001);
                    tracing::info!(
                        "restoring: {} of {} read ({:.0}%), {}/s",
                        crate::notify::human_bytes(n),
                        crate::notify::human_bytes(total),
                        100.0 * n as f64 / total.max(1) as f64,
                        crate::notify::human_bytes(rate as u64)
                    );
                }
            })
        };
        Some(Progress { task })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

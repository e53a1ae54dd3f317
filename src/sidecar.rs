//! Composition root: the one place that builds the adapters (storage, notifiers, the status
//! board, the clock) from the validated configuration. Commands and the daemon receive them
//! ready; no stage builds its own.

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Board;
use crate::notify::Dispatcher;
use crate::pipeline;
use crate::schedule::Clock;
use crate::storage::{LifecycleChange, Storage};

/// The validated configuration with its adapters.
pub struct Sidecar {
    pub config: Config,
    pub storage: Storage,
    pub notify: Dispatcher,
    pub clock: Clock,
}

impl Sidecar {
    /// Builds the adapters of `config` (no network traffic yet).
    pub async fn assemble(config: Config) -> Sidecar {
        Sidecar {
            storage: Storage::from_config(&config.storage).await,
            notify: Dispatcher::from_config(&config.notify),
            clock: Clock::System,
            config,
        }
    }

    /// The pipeline's context for a command run by hand: it records outcomes in the status
    /// file beside the daemon's (see [`Board`]). `shutdown` stops it at once.
    pub fn command_context(self, shutdown: CancellationToken) -> (Config, pipeline::Context) {
        let jobs: Vec<_> = self
            .config
            .jobs
            .iter()
            .map(|j| {
                (
                    j.name.clone(),
                    j.schedule.as_ref().map(|s| s.expr().to_string()),
                )
            })
            .collect();
        let board = Board::for_command(self.config.health.status_file.clone(), self.clock, &jobs);
        let ctx = pipeline::Context::new(
            self.storage,
            self.notify,
            board,
            self.clock,
            self.config.tools.clone(),
            shutdown.clone(),
            shutdown,
        );
        (self.config, ctx)
    }

    /// Puts the configured lifecycle rules on the bucket. A store that refuses (a missing
    /// permission, no lifecycle support) gets a warning: backups do not depend on it.
    pub async fn ensure_lifecycle(&self) {
        let Some(lifecycle) = &self.config.storage.lifecycle else {
            return;
        };
        match self
            .storage
            .ensure_lifecycle(lifecycle, &self.config.storage.base_prefix())
            .await
        {
            Ok(LifecycleChange::Updated) => tracing::info!("bucket lifecycle rules updated"),
            Ok(LifecycleChange::Unchanged) => {
                tracing::debug!("bucket lifecycle rules already in place")
            }
            Ok(LifecycleChange::Unsupported) => {
                tracing::warn!("storage.lifecycle is set, but this storage has no lifecycle rules")
            }
            Err(e) => tracing::warn!("cannot put the lifecycle rules on the bucket: {e}"),
        }
    }
}

//! Composition root: the one place that builds the adapters (storage, notifiers, the status
//! board, the clock) from the validated configuration. Commands and the daemon receive them
//! ready; no stage builds its own.

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Board;
use crate::notify::Dispatcher;
use crate::pipeline;
use crate::schedule::Clock;
use crate::storage::{Destination, LifecycleChange, Storage, StorageConfig};

/// The validated configuration with its adapters.
pub struct Sidecar {
    pub config: Config,
    /// The primary destination (`[storage]`).
    pub storage: Storage,
    /// The `[[copies]]` destinations, in the order of their names.
    pub copies: Vec<Destination>,
    pub notify: Dispatcher,
    pub clock: Clock,
}

impl Sidecar {
    /// Builds the adapters of `config` (no network traffic yet).
    pub async fn assemble(config: Config) -> Sidecar {
        let mut copies = Vec::new();
        for c in &config.copies {
            copies.push(Destination {
                name: c.name.clone(),
                storage: Storage::from_config(&c.storage).await,
            });
        }
        Sidecar {
            storage: Storage::from_config(&config.storage).await,
            copies,
            notify: Dispatcher::from_config(&config.notify),
            clock: Clock::System,
            config,
        }
    }

    /// The store of destination `name` (`primary` or a copy's name).
    pub fn store(&self, name: &str) -> Option<&Storage> {
        crate::storage::find(&self.storage, &self.copies, name)
    }

    /// The names of the destinations, the primary first.
    pub fn destination_names(&self) -> Vec<String> {
        std::iter::once(pipeline::destinations::PRIMARY.to_string())
            .chain(self.copies.iter().map(|c| c.name.clone()))
            .collect()
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
            self.copies,
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
        ensure_lifecycle_of("storage", &self.config.storage, &self.storage).await;
        for (c, d) in self.config.copies.iter().zip(&self.copies) {
            ensure_lifecycle_of(&format!("copies.{}", c.name), &c.storage, &d.storage).await;
        }
    }
}

/// Puts `config`'s lifecycle rules on the bucket of `storage`; `section` names it in warnings.
async fn ensure_lifecycle_of(section: &str, config: &StorageConfig, storage: &Storage) {
    let Some(lifecycle) = &config.lifecycle else {
        return;
    };
    match storage
        .ensure_lifecycle(lifecycle, &config.base_prefix())
        .await
    {
        Ok(LifecycleChange::Updated) => {
            tracing::info!("bucket lifecycle rules of {section} updated")
        }
        Ok(LifecycleChange::Unchanged) => {
            tracing::debug!("bucket lifecycle rules of {section} already in place")
        }
        Ok(LifecycleChange::Unsupported) => {
            tracing::warn!("{section}.lifecycle is set, but this storage has no lifecycle rules")
        }
        Err(e) => tracing::warn!("cannot put the lifecycle rules of {section} on the bucket: {e}"),
    }
}

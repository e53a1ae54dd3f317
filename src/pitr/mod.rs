//! Point-in-time recovery: continuous WAL archiving over the replication protocol, base
//! backups streamed by `pg_basebackup`, and restores to a moment.
//!
//! Invariant: the sidecar's replication slot means "stored". WAL is received without the
//! slot, and the slot is advanced only past segments whose objects are complete in storage,
//! so losing the spool (a killed container, a rescheduled task) never opens a gap.

pub mod archive;
pub mod archiver;
pub mod base;
pub mod check;
pub mod drill;
pub mod prune;
pub mod restore;
pub mod server;
pub mod service;
pub mod settings;
pub mod verify;
pub mod wal;

pub use settings::PitrConfig;

/// Any error of point-in-time recovery, for the command line's edge.
#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Archive(#[from] archiver::ArchiveError),
    #[error(transparent)]
    BaseBackup(#[from] base::BaseBackupError),
    #[error(transparent)]
    Restore(#[from] restore::PitrRestoreError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

impl PitrError {
    /// Whether the request itself was wrong (nothing was attempted).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PitrError::Restore(
                restore::PitrRestoreError::NotEmpty(_)
                    | restore::PitrRestoreError::UnsafePath { .. }
                    | restore::PitrRestoreError::Owner(_)
                    | restore::PitrRestoreError::SeveralClusters(_)
                    | restore::PitrRestoreError::NoSuchCluster(..)
            )
        )
    }
}

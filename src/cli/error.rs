//! Command line: the errors a command ends with, and the exit code each maps to.

use super::ExitCode;
use crate::config::ConfigError;
use crate::health::status::StatusError;
use crate::pipeline::backup::BackupError;
use crate::restore::verify::VerifyError;
use crate::restore::RestoreError;
use crate::retention::prune::PruneError;
use crate::storage::StorageError;

/// Why a command failed; [`CliError::exit_code`] says how the process ends.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Backup(Box<BackupError>),
    #[error(transparent)]
    Restore(Box<RestoreError>),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Prune(#[from] PruneError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(transparent)]
    Copy(Box<crate::catalog::copy::CopyError>),
    #[error(transparent)]
    Pitr(Box<crate::pitr::PitrError>),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl From<BackupError> for CliError {
    fn from(e: BackupError) -> Self {
        CliError::Backup(Box::new(e))
    }
}

impl From<crate::catalog::copy::CopyError> for CliError {
    fn from(e: crate::catalog::copy::CopyError) -> Self {
        CliError::Copy(Box::new(e))
    }
}

impl From<crate::pitr::PitrError> for CliError {
    fn from(e: crate::pitr::PitrError) -> Self {
        CliError::Pitr(Box::new(e))
    }
}

impl From<RestoreError> for CliError {
    fn from(e: RestoreError) -> Self {
        CliError::Restore(Box::new(e))
    }
}

impl CliError {
    /// [`ExitCode::Usage`] when nothing was attempted because the command line or the
    /// configuration is wrong; [`ExitCode::Failure`] otherwise.
    pub fn exit_code(&self) -> ExitCode {
        let usage = match self {
            CliError::Config(_) => true,
            CliError::Restore(e) => e.is_usage(),
            CliError::Verify(e) => e.is_usage(),
            CliError::Pitr(e) => e.is_usage(),
            _ => false,
        };
        if usage {
            ExitCode::Usage
        } else {
            ExitCode::Failure
        }
    }
}

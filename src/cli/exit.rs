//! Exit codes: a type, so every command ends in one of a known few.

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// The command did what it was asked.
    Success = 0,
    /// The command ran and failed (a backup failed, storage unreachable, …).
    Failure = 1,
    /// Bad command line or configuration: nothing was attempted.
    Usage = 2,
}

impl ExitCode {
    /// [`ExitCode::Success`] when `ok`, else [`ExitCode::Failure`].
    pub fn success_if(ok: bool) -> ExitCode {
        if ok {
            ExitCode::Success
        } else {
            ExitCode::Failure
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

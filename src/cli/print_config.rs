//! `pgsidecar config`: the effective configuration, secrets redacted.

use super::ExitCode;
use crate::config::Config;

pub fn run(config: &Config) -> ExitCode {
    print!("{}", config.to_redacted_toml());
    ExitCode::Success
}

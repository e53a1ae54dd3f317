//! The `pgsidecar` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    pgsidecar::app::run(pgsidecar::cli::Cli::parse()).into()
}

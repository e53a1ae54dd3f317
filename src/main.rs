//! The `pgsidecar` binary (also run as `backup`, `restore`, `list`, `verify`): parses the
//! command line and hands over to the library.

fn main() -> std::process::ExitCode {
    pgsidecar::cli::run(pgsidecar::cli::Cli::from_args()).into()
}

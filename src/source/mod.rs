//! Dump source: everything that talks to the PostgreSQL server and its client tools:
//! connections (TLS, `.pgpass`), the `pg_dump`/`pg_dumpall` processes, and what the sidecar
//! reads of a database (properties, row counts, roles).

pub mod dump;

pub mod pgpass;
pub mod process;
pub mod properties;
pub mod tables;
pub mod tls;
pub mod tools;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::secret::Secret;

/// How to reach the PostgreSQL server (always over TCP).
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Built from `sslmode` and `sslrootcert` when the configuration is read.
    #[serde(skip)]
    pub tls: tls::Connector,
}

/// libpq `sslmode` values the sidecar supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The value libpq and pg_dump understand.
    pub fn as_libpq(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where PostgreSQL client tools are looked for.
#[derive(Debug, Clone, Serialize)]
pub struct ToolsConfig {
    /// Directories holding `pg_dump` and friends; empty means "search the usual places".
    pub bin_dirs: Vec<PathBuf>,
}

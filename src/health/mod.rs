//! Health: the status the daemon keeps, and what `health`, `/healthz` and `/metrics` report
//! from it.

pub mod http;
pub mod status;

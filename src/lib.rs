//! pgsidecar: streams PostgreSQL backups to S3 on a schedule and restores them.
//!
//! Data flows one way: job → dump source ([`dump`]) → transforms ([`transform`]) → storage
//! sink ([`storage`]) → manifest ([`manifest`]); [`catalog`] reads manifests back.

pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod dump;
pub mod exit;
pub mod job;
pub mod logging;
pub mod manifest;
pub mod pgpass;
pub mod pgtools;
pub mod secret;
pub mod shutdown;
pub mod storage;
pub mod transform;

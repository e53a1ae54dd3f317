//! pgsidecar: streams PostgreSQL backups to S3 on a schedule and restores them.
//!
//! Data flows one way: schedule ([`schedule`], its daemon) → job ([`job`]) → dump source
//! ([`dump`]) → transforms ([`transform`], [`encryption`]) → storage sink ([`storage`]) →
//! manifest ([`manifest`]) → notify ([`notify`]); [`catalog`] reads manifests back,
//! [`status`] keeps what `health` and `/metrics` report.

pub mod anomaly;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;

pub mod dbprops;
pub mod drill;
pub mod dump;
pub mod encryption;
pub mod exit;
pub mod globals;
pub mod http;
pub mod job;
pub mod logging;
pub mod manifest;
pub mod notify;
pub mod pgpass;
pub mod pgtools;
pub mod prune;
pub mod restore;
pub mod retention;
pub mod retry;
pub mod schedule;
pub mod secret;
pub mod shutdown;
pub mod status;
pub mod storage;
pub mod tables;
pub mod tls;
pub mod transform;
pub mod verify;

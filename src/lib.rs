//! pgsidecar: streams PostgreSQL backups to S3 on a schedule and restores them.
//!
//! Data flows one way: [`schedule`] (fired by the [`daemon`]) → [`pipeline`] → dump
//! [`source`] → transforms ([`codec`]) → [`storage`] → manifest ([`catalog`]) → [`retention`]
//! → [`notify`]; [`health`] keeps what `health` and `/metrics` report. See
//! `docs/ARCHITECTURE.md`.

pub mod catalog;
pub mod cli;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod health;
pub mod keys;
pub mod logging;
pub mod notify;
pub mod pipeline;
pub mod pitr;

pub mod restore;
pub mod retention;
pub mod retry;
pub mod schedule;
pub mod secret;
pub mod shutdown;
pub mod sidecar;
pub mod source;
pub mod storage;

//! Dump source: everything that talks to the PostgreSQL server and its client tools:
//! connections (TLS, `.pgpass`), the `pg_dump`/`pg_dumpall` processes, and what the sidecar
//! reads of a database (properties, row counts, roles).

pub mod dump;
pub mod globals;
pub mod pgpass;
pub mod properties;
pub mod tables;
pub mod tls;
pub mod tools;

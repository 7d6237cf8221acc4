//! Connecting to PostgreSQL: libpq-style connection settings, TLS, and SQL sessions (the
//! source's snapshot sessions, a PostgreSQL target's). The replication connection
//! (`crate::stream`) is built on the same settings.

pub mod client;
pub mod conninfo;
pub mod tls;

pub use conninfo::ConnInfo;

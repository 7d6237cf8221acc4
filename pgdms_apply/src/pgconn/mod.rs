//! Connecting to PostgreSQL: libpq-style connection settings, TLS, and SQL sessions (the
//! source's snapshot sessions, a PostgreSQL target's). The replication connection
//! (`crate::stream`) is built on the same settings.

pub(crate) mod client;
pub(crate) mod conninfo;
pub(crate) mod identity;
pub(crate) mod tls;

pub use conninfo::ConnInfo;

//! The stream: connecting to the source over the replication protocol and reading a slot.

pub mod client;
pub mod conninfo;
pub mod lsn;
pub mod replication;
pub mod tls;

pub use conninfo::ConnInfo;
pub use lsn::Lsn;
pub use replication::{ReplicationConnection, ReplicationError, ReplicationStream, StreamMessage};

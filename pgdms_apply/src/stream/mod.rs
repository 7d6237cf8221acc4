//! The stream: the replication protocol to the source, and its slots.

pub mod replication;

pub use replication::{ReplicationConnection, ReplicationError, ReplicationStream, SlotInfo, StreamMessage};

//! pgdms-apply: consumes the records of the pgdms output plugin over the streaming
//! replication protocol and applies them to targets.
//!
//! The data flows through the modules in this order:
//! * [`stream`]: the replication client (connection settings, the protocol, the slot).
//! * [`apply`]: records become events, complete transactions become batches and groups.
//! * [`target`]: where groups land (PostgreSQL).
//!
//! [`dump`] prints the records as JSON lines instead: the user's window into a stream.

pub mod apply;
pub mod dump;
pub mod load;
pub mod mapping;
pub mod migrate;
pub mod sql;
pub mod stream;
pub mod target;
pub mod validate;

//! pgdms-apply: consumes the records of the pgdms output plugin over the streaming
//! replication protocol.
//!
//! * [`stream`]: the replication client (connection settings, the protocol, the slot).
//! * [`dump`]: records as JSON lines, the user's window into a stream.

pub mod dump;
pub mod stream;

//! pgdms-apply: consumes the records of the pgdms output plugin over the streaming
//! replication protocol and applies them to targets; migrates a live database (full load
//! from a snapshot, then CDC) with the same parts.
//!
//! The data flows through the modules in this order:
//! * [`stream`]: the replication protocol to the source, and its slots (over [`pgconn`]'s
//!   connection settings and TLS).
//! * [`apply`]: records become events ([`model`]'s relations, rows and changes), complete
//!   transactions become batches and groups; one retry policy ([`apply::retry`]).
//! * [`sink`]: where groups land: PostgreSQL, MySQL/MariaDB, SQLite, JSON lines, chosen in
//!   one place ([`sink::spec`]), each keeping its control records ([`sink::control`]).
//!
//! [`migrate`] runs a whole migration with them (schema, [`load`], CDC, cutover), for every
//! target kind; [`validate`] compares source and target; [`dump`] prints the records as
//! JSON lines instead: the user's window into a stream.

#![forbid(unsafe_code)]
// The docs are for pgdms's developers, internals included: `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

// What the binary and the end-to-end tests use is public; the rest is the crate's own.
pub mod apply;
pub mod cli;
pub(crate) mod dump;
pub mod error;
pub(crate) mod load;
pub(crate) mod mapping;
pub(crate) mod migrate;
pub mod model;
pub mod pgconn;
pub mod sink;
pub(crate) mod sql;
pub(crate) mod stream;
pub(crate) mod validate;

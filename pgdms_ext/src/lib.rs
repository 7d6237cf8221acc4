//! pgdms: the source side of a pgdms migration.
//!
//! * [`plugin`]: the `pgdms` logical-decoding output plugin, in safe Rust: options, the
//!   relation cache and the records it writes (the format is `pgdms_proto`).
//! * [`ffi`]: the thin layer between PostgreSQL and the plugin. Every `unsafe` block of the
//!   extension lives there.

use pgrx::prelude::*;

pub mod ffi;
pub mod plugin;

::pgrx::pg_module_magic!();

/// The version of the installed pgdms library.
#[pg_extern]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

//! pgdms: the source side of a pgdms migration.
//!
//! * [`plugin`]: the `pgdms` logical-decoding output plugin, in safe Rust: options, the
//!   relation cache and the records it writes (the format is `pgdms_proto`).
//! * [`ffi`]: the thin layer between PostgreSQL and the plugin. Every `unsafe` block of the
//!   extension lives there.
//! * [`sql`]: the SQL functions of the extension written in Rust, and the hand-written SQL
//!   of `sql/` (DDL capture, preflight checks, slots, least privilege) it installs.

pub mod ffi;
pub mod plugin;
pub mod sql;

::pgrx::pg_module_magic!();

/// Runs when PostgreSQL loads pgdms.so, in any backend (a walsender decoding, or a session
/// calling one of the extension's functions).
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    sql::define_settings();
}

//! The extension's SQL objects.
//!
//! Most of them are hand-written SQL in `sql/` at the repository root, installed in this
//! order by `CREATE EXTENSION pgdms`: the `pgdms` schema (`bootstrap.sql`), then the
//! functions below (`functions.sql`), then DDL capture, slots and least privilege, and the preflight checks.
//! What needs the server's C API or pgdms's own code (the DMS type map, the capture
//! switch) is written here in Rust.

use pgdms_proto::{dms, PgTypeInfo};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;

// The Rust functions below are declared in sql/functions.sql (`sql = false` here): pgrx
// would declare their schema with CREATE SCHEMA IF NOT EXISTS, which PostgreSQL refuses
// in an extension script when a schema of that name exists and belongs to the user.
pgrx::extension_sql_file!("../../sql/bootstrap.sql", bootstrap);
pgrx::extension_sql_file!("../../sql/functions.sql", name = "functions");
pgrx::extension_sql_file!("../../sql/ddl_capture.sql", name = "ddl_capture", requires = ["functions"]);
pgrx::extension_sql_file!("../../sql/slots.sql", name = "slots", requires = ["ddl_capture"]);
pgrx::extension_sql_file!("../../sql/preflight.sql", name = "preflight", requires = ["slots"]);

/// `pgdms.capture_ddl`: the reference's captureDDLs. Only a superuser may turn it off, so
/// an ordinary session cannot hide its DDL from the migration.
static CAPTURE_DDL: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn define_settings() {
    GucRegistry::define_bool_guc(
        c"pgdms.capture_ddl",
        c"Capture DDL (CREATE/ALTER/DROP of tables, types, schemas) for replication by pgdms.",
        c"When off, DDL is neither recorded in the audit table nor sent to pgdms consumers. Superuser only.",
        &CAPTURE_DDL,
        GucContext::Suset,
        GucFlags::default(),
    );
    // No placeholders for misspelt pgdms.* settings from now on.
    crate::ffi::reserve_setting_prefix(c"pgdms");
}

/// Whether DDL capture is on. The event triggers call it, which also loads pgdms.so and so
/// defines `pgdms.capture_ddl` before it is read: a value an unprivileged session set
/// before the library was loaded is then rejected, as for any superuser-only setting.
#[pg_extern(sql = false, stable, parallel_safe)]
fn capture_ddl_enabled() -> bool {
    CAPTURE_DDL.get()
}

/// The version of the installed pgdms library.
#[pg_extern(sql = false, immutable, parallel_safe)]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn type_info(type_oid: pg_sys::Oid, typmod: i32) -> Option<(pgdms_proto::DmsType, bool)> {
    let facts = crate::ffi::catalog::type_facts_if_exists(type_oid)?;
    Some(dms::dms_type_of(&PgTypeInfo {
        oid: type_oid.to_u32(),
        typmod,
        typtype: facts.typtype,
        is_array: facts.is_array,
        name: &facts.name,
    }))
}

/// The DMS type a column of this type and modifier carries in pgdms records: "INT4",
/// "NUMERIC(10,2)", "WSTRING(20)", "NCLOB"...
#[pg_extern(sql = false, stable, parallel_safe)]
fn dms_type(type_oid: pg_sys::Oid, typmod: default!(i32, -1)) -> Option<String> {
    type_info(type_oid, typmod).map(|(t, _)| t.to_string())
}

/// True when the type is outside the DMS type table: its values travel as their text
/// output, and heterogeneous targets store them as NCLOB text.
#[pg_extern(sql = false, stable, parallel_safe)]
fn dms_text_fallback(type_oid: pg_sys::Oid) -> Option<bool> {
    type_info(type_oid, -1).map(|(_, fallback)| fallback)
}

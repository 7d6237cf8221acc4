//! The one event trigger function that needs the command's parse tree, which PL/pgSQL
//! cannot see: at `DROP EXTENSION pgdms`, name the pgdms slots that would keep decoding
//! this database without DDL capture.

use pgrx::pg_sys;
use pgrx::spi::Spi;
use std::ffi::CStr;

/// fmgr's "version 1 calling convention" marker for `pgdms_warn_drop_extension`.
#[no_mangle]
pub extern "C" fn pg_finfo_pgdms_warn_drop_extension() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The names a DROP EXTENSION statement drops, or nothing for any other statement.
fn dropped_extensions(fcinfo: pg_sys::FunctionCallInfo) -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: called by the event trigger manager, which passes an EventTriggerData node as
    // the call's context (checked by tag before use); the parse tree and its name list live
    // for the duration of the call.
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_EventTriggerData {
            pgrx::error!("pgdms.warn_drop_extension() may only be called by an event trigger");
        }
        let tree = (*context.cast::<pg_sys::EventTriggerData>()).parsetree;
        if tree.is_null() || (*tree).type_ != pg_sys::NodeTag::T_DropStmt {
            return names;
        }
        let stmt = &*tree.cast::<pg_sys::DropStmt>();
        if stmt.removeType != pg_sys::ObjectType::OBJECT_EXTENSION || stmt.objects.is_null() {
            return names;
        }
        let list = &*stmt.objects;
        for cell in std::slice::from_raw_parts(list.elements, list.length as usize) {
            #[cfg(any(feature = "pg13", feature = "pg14"))]
            let name = (*cell.ptr_value.cast::<pg_sys::Value>()).val.str_;
            #[cfg(not(any(feature = "pg13", feature = "pg14")))]
            let name = (*cell.ptr_value.cast::<pg_sys::String>()).sval;
            if !name.is_null() {
                names.push(CStr::from_ptr(name).to_string_lossy().into_owned());
            }
        }
    }
    names
}

#[pgrx::pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pgdms_warn_drop_extension(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    if dropped_extensions(fcinfo).iter().any(|n| n == "pgdms") {
        let slots = Spi::get_one::<String>(
            "SELECT string_agg(format('%I', slot_name), ', ' ORDER BY slot_name) FROM pg_replication_slots \
             WHERE plugin = 'pgdms' AND database = current_database()",
        );
        if let Ok(Some(slots)) = slots {
            pgrx::ereport!(
                pgrx::PgLogLevel::WARNING,
                pgrx::PgSqlErrorCode::ERRCODE_WARNING,
                format!("replication slots of this database still use the pgdms plugin: {slots}"),
                "Without the extension their DDL is no longer captured. If the migration is over, drop them: \
                 SELECT pg_drop_replication_slot(name) or pgdms-apply slot drop --slot NAME."
            );
        }
    }
    pg_sys::Datum::from(0usize)
}

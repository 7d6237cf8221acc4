//! Sequences are not decoded: the target's are set to the source's values at the end of the
//! full load and again at cutover, so that the target's next values follow the source's.

use super::{sql_error, LoadError};
use tokio_postgres::Client;

/// Sets every sequence the target has to the source's current value; returns how many.
pub async fn sync(source: &Client, target: &Client) -> Result<usize, LoadError> {
    let rows = source
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value, start_value,
                    has_sequence_privilege(format('%I.%I', schemaname, sequencename), 'SELECT')
               FROM pg_sequences s
              WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
                -- Extensions' own (pgdms's audit key among them) stay with their extension.
                AND NOT EXISTS (SELECT FROM pg_depend d
                                 WHERE d.classid = 'pg_class'::regclass
                                   AND d.objid = format('%I.%I', s.schemaname, s.sequencename)::regclass
                                   AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e')",
            &[],
        )
        .await
        .map_err(sql_error("could not read the source's sequences"))?;
    // last_value reads NULL both for a sequence never used and one the role may not read.
    let read = "could not read the source's sequences";
    let mut unreadable: Vec<String> = Vec::new();
    for r in &rows {
        if !r.try_get::<_, bool>(3).map_err(sql_error(read))? {
            unreadable.push(r.try_get(0).map_err(sql_error(read))?);
        }
    }
    if !unreadable.is_empty() {
        return Err(LoadError::Table {
            table: unreadable.join(", "),
            error: "the source role may not read these sequences; GRANT SELECT on them (or run \
                    SELECT pgdms.grant_migration_role('<role>') as a superuser)"
                .into(),
        });
    }
    let mut set = 0;
    for r in rows {
        let name: String = r.try_get(0).map_err(sql_error(read))?;
        let last: Option<i64> = r.try_get(1).map_err(sql_error(read))?;
        let start: i64 = r.try_get(2).map_err(sql_error(read))?;
        // Never used on the source: the target's next value is the start value too.
        let (value, is_called) = match last {
            Some(v) => (v, true),
            None => (start, false),
        };
        let n = target
            .execute(
                "SELECT setval(c.oid, $2, $3) FROM pg_class c WHERE c.oid = to_regclass($1) AND c.relkind = 'S'",
                &[&name, &value, &is_called],
            )
            .await
            .map_err(sql_error(format!("could not set sequence {name} on the target")))?;
        if n == 0 {
            tracing::warn!(sequence = %name, "not on the target (renamed, or left out by table mappings): not set");
        }
        set += n as usize;
    }
    Ok(set)
}

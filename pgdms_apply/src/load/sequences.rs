//! Sequences are not decoded: the target's are set to the source's values at the end of the
//! full load and again at cutover, so that the target's next values follow the source's.

use super::{sql_error, LoadError};
use tokio_postgres::Client;

/// Sets every sequence the target has to the source's current value; returns how many.
pub async fn sync(source: &Client, target: &Client) -> Result<usize, LoadError> {
    let rows = source
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value, start_value
               FROM pg_sequences
              WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(sql_error("could not read the source's sequences"))?;
    let mut set = 0;
    for r in rows {
        let name: String = r.get(0);
        let last: Option<i64> = r.get(1);
        let start: i64 = r.get(2);
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
        set += n as usize;
    }
    Ok(set)
}

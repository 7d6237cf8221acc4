//! Tables the migration cannot carry, and why. They are named in the migration's log and in
//! `validate`'s report, never passed over in silence: a user who skipped the preflight
//! learns of them before cutting over, not after.

use tokio_postgres::Client;

/// A source table that is not migrated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotMigrated {
    pub schema: String,
    pub name: String,
    pub why: &'static str,
}

impl NotMigrated {
    pub fn qualified(&self) -> String {
        format!("{}.{}", crate::sql::quote_ident(&self.schema), crate::sql::quote_ident(&self.name))
    }
}

const UNLOGGED: &str = "unlogged: its changes never reach the WAL, so no decoding can see them; \
                        ALTER TABLE ... SET LOGGED on the source to migrate it";

/// The user tables of the source that the migration leaves out, outside extensions, as
/// the current snapshot shows them.
pub async fn not_migrated(client: &Client) -> Result<Vec<NotMigrated>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'u'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname !~ '^pg_toast'
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
                                   AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                                   AND d.deptype = 'e')
              ORDER BY 1, 2",
            &[&crate::sink::postgres::CONTROL_SCHEMA],
        )
        .await?;
    rows.iter().map(|r| Ok(NotMigrated { schema: r.try_get(0)?, name: r.try_get(1)?, why: UNLOGGED })).collect()
}

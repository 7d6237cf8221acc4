//! Which database a connection reaches, whatever the path to it (a socket, an address, a
//! pooler): so that a migration whose target is its own source is refused before it creates
//! anything. Writing the source into itself would apply every change twice over, forever.

use super::client::{connect, error_text};
use super::ConnInfo;

/// One database of one running server: the cluster's system identifier, the database's
/// oid, and when the server started (a physical copy of the cluster, promoted, has the same
/// identifier and oids but started at another moment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseIdentity {
    pub system_identifier: String,
    pub database_oid: String,
    pub started: String,
}

/// The identity of the database `info` names; `None` when the server does not say (a role
/// that may not call `pg_control_system()`, as some managed services set it up).
pub async fn database_identity(info: &ConnInfo) -> Result<Option<DatabaseIdentity>, String> {
    let conn = connect(info, "pgdms-apply").await.map_err(|e| e.to_string())?;
    let row = conn
        .client
        .query_one(
            "SELECT s.system_identifier::text, d.oid::text, pg_catalog.pg_postmaster_start_time()::text
               FROM pg_catalog.pg_control_system() s, pg_catalog.pg_database d
              WHERE d.datname = pg_catalog.current_database()",
            &[],
        )
        .await;
    match row {
        Ok(row) => Ok(Some(DatabaseIdentity {
            system_identifier: row.try_get(0).map_err(|e| error_text(&e))?,
            database_oid: row.try_get(1).map_err(|e| error_text(&e))?,
            started: row.try_get(2).map_err(|e| error_text(&e))?,
        })),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            tracing::debug!(to = %info.describe(), error = %error_text(&e), "cannot tell which database this is");
            Ok(None)
        }
        Err(e) => Err(format!("{}: {}", info.describe(), error_text(&e))),
    }
}

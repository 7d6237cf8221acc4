//! A PostgreSQL target's control store: the layout of `crate::sink::control` in schema
//! `pgdms`, read and written through any session on the target (the apply's, or a load
//! session inside its own transaction).

use super::CONTROL_SCHEMA;
use crate::pgconn::client::error_text;
use crate::sink::control::{self, ControlSql, Dialect, LoadedTable, MigrationRecord, Phase};
use crate::sink::TargetError;
use crate::sql::quote_literal;

fn failed(what: &'static str) -> impl Fn(tokio_postgres::Error) -> TargetError {
    move |e| {
        if e.is_closed() {
            TargetError::Transient(format!("{what}: {e}"))
        } else {
            TargetError::Refused(format!("{what}: {}", error_text(&e)))
        }
    }
}

/// The control store over one session.
pub struct PgControl<'a>(pub &'a tokio_postgres::Client);

impl ControlSql for PgControl<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn control_table(&self, table: &str) -> String {
        format!("{CONTROL_SCHEMA}.{table}")
    }

    async fn control_execute(&mut self, sql: &str) -> Result<(), TargetError> {
        self.0.batch_execute(sql).await.map_err(failed("could not create pgdms's tables on the target"))
    }

    async fn control_columns(&mut self, table: &str) -> Result<Vec<String>, TargetError> {
        let rows = self
            .0
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 \
                 AND NOT attisdropped ORDER BY attnum",
                &[&self.control_table(table)],
            )
            .await
            .map_err(failed("could not read pgdms's tables on the target"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn control_version(&mut self) -> Result<Option<i64>, TargetError> {
        let row = self
            .0
            .query_opt(&format!("SELECT max(version) FROM {CONTROL_SCHEMA}.{}", control::VERSION_TABLE), &[])
            .await
            .map_err(failed("could not read pgdms's control version"))?;
        Ok(row.and_then(|r| r.get(0)))
    }
}

impl PgControl<'_> {
    /// Creates the schema and the control tables (or brings them up to date).
    pub async fn prepare(&mut self) -> Result<(), TargetError> {
        self.0
            .batch_execute(&format!("SET client_min_messages = warning; CREATE SCHEMA IF NOT EXISTS {CONTROL_SCHEMA}"))
            .await
            .map_err(failed("could not create pgdms's schema on the target"))?;
        let prepared = control::prepare(self).await;
        self.0.batch_execute("RESET client_min_messages").await.map_err(failed("target"))?;
        prepared
    }

    /// The end LSN applied for `slot`.
    pub async fn applied(&self, slot: &str) -> Result<Option<pgdms_proto::Lsn>, TargetError> {
        let table = self.control_table("apply_progress");
        let row = self
            .0
            .query_opt(&format!("SELECT end_lsn::text FROM {table} WHERE slot_name = $1"), &[&slot])
            .await
            .map_err(failed("could not read pgdms.apply_progress"))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(control::parse_lsn(&table, "end_lsn", slot, row.get(0))?))
    }

    pub async fn migration(&self, slot: &str) -> Result<Option<MigrationRecord>, TargetError> {
        let table = self.control_table("migration");
        let row = self
            .0
            .query_opt(&format!("SELECT phase, consistent_point::text FROM {table} WHERE slot_name = $1"), &[&slot])
            .await
            .map_err(failed("could not read pgdms.migration"))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(MigrationRecord::parse(&table, slot, row.get(0), row.get(1))?))
    }

    pub async fn begin_migration(&self, slot: &str, record: MigrationRecord) -> Result<(), TargetError> {
        self.0
            .execute(
                &format!(
                    "INSERT INTO {CONTROL_SCHEMA}.migration (slot_name, phase, consistent_point) VALUES ($1, $2, $3::text::pg_lsn)"
                ),
                &[&slot, &record.phase.as_str(), &record.consistent_point.to_string()],
            )
            .await
            .map_err(failed("could not record the migration"))?;
        Ok(())
    }

    /// In the session's transaction, if it has one.
    pub async fn set_phase(&self, slot: &str, phase: Phase) -> Result<bool, TargetError> {
        let updated = self
            .0
            .execute(
                &format!("UPDATE {CONTROL_SCHEMA}.migration SET phase = $2, updated_at = now() WHERE slot_name = $1"),
                &[&slot, &phase.as_str()],
            )
            .await
            .map_err(failed("could not record the migration's phase"))?;
        Ok(updated > 0)
    }

    pub async fn forget_migration(&self, slot: &str) -> Result<(), TargetError> {
        let lit = quote_literal(slot);
        self.0
            .batch_execute(&format!(
                "DELETE FROM {CONTROL_SCHEMA}.migration WHERE slot_name = {lit};
                 DELETE FROM {CONTROL_SCHEMA}.load_progress WHERE slot_name = {lit};
                 DELETE FROM {CONTROL_SCHEMA}.migration_schema WHERE slot_name = {lit};"
            ))
            .await
            .map_err(failed("could not reset the migration's records"))
    }

    pub async fn loaded_tables(&self, slot: &str) -> Result<Vec<LoadedTable>, TargetError> {
        let table = self.control_table("load_progress");
        let rows = self
            .0
            .query(
                &format!("SELECT source_oid, table_name, snapshot_lsn::text FROM {table} WHERE slot_name = $1"),
                &[&slot],
            )
            .await
            .map_err(failed("could not read pgdms.load_progress"))?;
        rows.iter().map(|r| Ok(LoadedTable::parse(&table, slot, r.get(0), r.get(1), r.get(2))?)).collect()
    }
}

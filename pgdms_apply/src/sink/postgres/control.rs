//! A PostgreSQL target's control store: the layout of `crate::sink::control` in schema
//! `pgdms_apply`, read and written through any session on the target (the apply's, or a load
//! session inside its own transaction).

use super::CONTROL_SCHEMA;
use crate::pgconn::client::error_text;
use crate::sink::control::{self, ControlSql, Dialect, LoadedTable, MigrationRecord, Phase, SuspendedTable};
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

/// Releases before 0.3 kept the control tables in schema `pgdms`, the extension's name:
/// a target with the extension installed (A -> B -> C, or B -> A after a cutover) could not
/// hold both. A target written by them has its tables moved, as they are, into
/// `pgdms_apply` (the role that made them owns them), and the old schema dropped when
/// that leaves it empty and no extension lives in it.
fn move_from_old_schema() -> String {
    let tables: Vec<String> =
        control::TABLES.iter().map(|t| t.name).chain([control::VERSION_TABLE]).map(quote_literal).collect();
    format!(
        "DO $pgdms$
         DECLARE t text;
         BEGIN
           IF to_regclass('{CONTROL_SCHEMA}.{version}') IS NOT NULL THEN RETURN; END IF;
           FOR t IN SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = 'pgdms' AND c.relkind = 'r' AND c.relname = ANY (ARRAY[{tables}])
                       AND pg_catalog.pg_has_role(c.relowner, 'USAGE')
                       AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                                        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                          AND d.objid = c.oid AND d.deptype = 'e')
           LOOP
             EXECUTE pg_catalog.format('ALTER TABLE pgdms.%I SET SCHEMA {CONTROL_SCHEMA}', t);
           END LOOP;
           IF EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname = 'pgdms'
                         AND pg_catalog.pg_has_role(n.nspowner, 'USAGE')
                         AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid)
                         AND NOT EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extnamespace = n.oid)
                         AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                                          WHERE d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                                            AND d.refobjid = n.oid)) THEN
             DROP SCHEMA pgdms;
           END IF;
         END $pgdms$",
        version = control::VERSION_TABLE,
        tables = tables.join(", ")
    )
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
        let read = failed("could not read pgdms's tables on the target");
        let rows = self
            .0
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 \
                 AND NOT attisdropped ORDER BY attnum",
                &[&self.control_table(table)],
            )
            .await
            .map_err(&read)?;
        rows.iter().map(|r| r.try_get(0).map_err(&read)).collect()
    }

    async fn control_version(&mut self) -> Result<Option<i64>, TargetError> {
        let read = failed("could not read pgdms's control version");
        let row = self
            .0
            .query_opt(&format!("SELECT max(version) FROM {CONTROL_SCHEMA}.{}", control::VERSION_TABLE), &[])
            .await
            .map_err(&read)?;
        // max() is NULL over an empty table: no version yet.
        Ok(row.map(|r| r.try_get::<_, Option<i64>>(0)).transpose().map_err(&read)?.flatten())
    }
}

impl PgControl<'_> {
    /// Creates the schema and the control tables (or brings them up to date).
    pub async fn prepare(&mut self) -> Result<(), TargetError> {
        self.0
            .batch_execute(&format!("SET client_min_messages = warning; CREATE SCHEMA IF NOT EXISTS {CONTROL_SCHEMA}"))
            .await
            .map_err(failed("could not create pgdms's schema on the target"))?;
        self.0.batch_execute(&move_from_old_schema()).await.map_err(failed("could not move pgdms's tables"))?;
        let prepared = control::prepare(self).await;
        self.0.batch_execute("RESET client_min_messages").await.map_err(failed("target"))?;
        prepared
    }

    /// The end LSN applied for `slot`.
    pub async fn applied(&self, slot: &str) -> Result<Option<pgdms_proto::Lsn>, TargetError> {
        let table = self.control_table("apply_progress");
        let read = failed("could not read pgdms_apply.apply_progress");
        let row = self
            .0
            .query_opt(&format!("SELECT end_lsn::text FROM {table} WHERE slot_name = $1"), &[&slot])
            .await
            .map_err(&read)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(control::parse_lsn(&table, "end_lsn", slot, row.try_get(0).map_err(&read)?)?))
    }

    /// The acknowledged position recorded for `slot` (see `control::TABLES`).
    pub async fn acknowledged(&self, slot: &str) -> Result<Option<pgdms_proto::Lsn>, TargetError> {
        let table = self.control_table("apply_progress");
        let read = failed("could not read pgdms_apply.apply_progress");
        let row = self
            .0
            // Nothing applied yet: a migration's slot confirms its consistent point.
            .query_opt(
                &format!(
                    "SELECT p.acked_lsn::text FROM {table} p WHERE p.slot_name = $1
                     UNION ALL
                     SELECT m.consistent_point::text FROM {CONTROL_SCHEMA}.migration m
                      WHERE m.slot_name = $1 AND NOT EXISTS (SELECT FROM {table} p WHERE p.slot_name = $1)"
                ),
                &[&slot],
            )
            .await
            .map_err(&read)?;
        let Some(text) = row.map(|r| r.try_get::<_, Option<String>>(0)).transpose().map_err(&read)?.flatten() else {
            return Ok(None);
        };
        Ok(Some(control::parse_lsn(&table, "acked_lsn", slot, &text)?))
    }

    /// Records that nothing is left to apply before `lsn`, in a transaction of its own.
    pub async fn advance(&self, slot: &str, lsn: pgdms_proto::Lsn) -> Result<(), TargetError> {
        let table = self.control_table("apply_progress");
        self.0
            .execute(
                &format!(
                    "INSERT INTO {table} (slot_name, end_lsn, applied_at, acked_lsn) VALUES ($1, $2::text::pg_lsn, now(), $2::text::pg_lsn)
                     ON CONFLICT (slot_name) DO UPDATE SET end_lsn = greatest({table}.end_lsn, excluded.end_lsn),
                                                           acked_lsn = greatest({table}.acked_lsn, excluded.acked_lsn)"
                ),
                &[&slot, &lsn.to_string()],
            )
            .await
            .map_err(failed("could not record the acknowledged position in pgdms_apply.apply_progress"))?;
        Ok(())
    }

    pub async fn migration(&self, slot: &str) -> Result<Option<MigrationRecord>, TargetError> {
        let table = self.control_table("migration");
        let read = failed("could not read pgdms_apply.migration");
        let row = self
            .0
            .query_opt(&format!("SELECT phase, consistent_point::text FROM {table} WHERE slot_name = $1"), &[&slot])
            .await
            .map_err(&read)?;
        let Some(row) = row else { return Ok(None) };
        let (phase, point) = (row.try_get(0).map_err(&read)?, row.try_get(1).map_err(&read)?);
        Ok(Some(MigrationRecord::parse(&table, slot, phase, point)?))
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
                 DELETE FROM {CONTROL_SCHEMA}.migration_schema WHERE slot_name = {lit};
                 DELETE FROM {CONTROL_SCHEMA}.suspended_table WHERE slot_name = {lit};"
            ))
            .await
            .map_err(failed("could not reset the migration's records"))
    }

    pub async fn loaded_tables(&self, slot: &str) -> Result<Vec<LoadedTable>, TargetError> {
        let table = self.control_table("load_progress");
        let read = failed("could not read pgdms_apply.load_progress");
        let rows = self
            .0
            .query(
                &format!("SELECT source_oid, table_name, snapshot_lsn::text FROM {table} WHERE slot_name = $1"),
                &[&slot],
            )
            .await
            .map_err(&read)?;
        rows.iter()
            .map(|r| {
                let (oid, name, lsn) =
                    (r.try_get(0).map_err(&read)?, r.try_get(1).map_err(&read)?, r.try_get(2).map_err(&read)?);
                Ok(LoadedTable::parse(&table, slot, oid, name, lsn)?)
            })
            .collect()
    }

    /// Takes the migration's lock on the target for this session's life: held by every apply
    /// session and by a reload, so that no change of a table is applied while it is reloaded.
    /// False when another session holds it.
    pub async fn claim(&self, slot: &str) -> Result<bool, TargetError> {
        let read = failed("could not take the migration's lock on the target");
        self.0
            .query_one(
                "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext('pgdms-apply ' || $1::text))",
                &[&slot],
            )
            .await
            .map_err(&read)?
            .try_get(0)
            .map_err(&read)
    }

    /// Sets table `source_oid` aside (`--on-table-error suspend`), in the session's
    /// transaction if it has one; a table suspended already keeps its count.
    pub async fn suspend(
        &self,
        slot: &str,
        source_oid: u32,
        name: &str,
        suspended_in: &str,
        lsn: pgdms_proto::Lsn,
        error: &str,
    ) -> Result<(), TargetError> {
        self.0
            .execute(
                &format!(
                    "INSERT INTO {CONTROL_SCHEMA}.suspended_table
                            (slot_name, source_oid, table_name, suspended_in, lsn, error, changes_passed_over)
                     VALUES ($1, $2, $3, $4, $5::text::pg_lsn, $6, 0)
                     ON CONFLICT (slot_name, source_oid) DO UPDATE
                        SET table_name = excluded.table_name, suspended_in = excluded.suspended_in,
                            lsn = excluded.lsn, error = excluded.error, suspended_at = now()"
                ),
                &[&slot, &source_oid, &name, &suspended_in, &lsn.to_string(), &error],
            )
            .await
            .map_err(failed("could not record the suspended table in pgdms_apply.suspended_table"))?;
        Ok(())
    }

    /// The tables of `slot` set aside, by source name.
    pub async fn suspended(&self, slot: Option<&str>) -> Result<Vec<SuspendedTable>, TargetError> {
        let read = failed("could not read pgdms_apply.suspended_table");
        let rows = self
            .0
            .query(
                &format!(
                    "SELECT source_oid, table_name, error, changes_passed_over FROM {CONTROL_SCHEMA}.suspended_table
                      WHERE slot_name = $1 OR $1 IS NULL ORDER BY table_name"
                ),
                &[&slot],
            )
            .await
            .map_err(&read)?;
        rows.iter()
            .map(|r| {
                Ok(SuspendedTable {
                    source_oid: r.try_get(0).map_err(&read)?,
                    name: r.try_get(1).map_err(&read)?,
                    error: r.try_get(2).map_err(&read)?,
                    passed_over: r.try_get(3).map_err(&read)?,
                })
            })
            .collect()
    }

    /// Counts changes of suspended tables passed over, in the session's transaction (the
    /// group that passed over them).
    pub async fn passed_over(&self, slot: &str, counts: &[(u32, i64)]) -> Result<(), TargetError> {
        let (oids, counts): (Vec<u32>, Vec<i64>) = counts.iter().copied().unzip();
        self.0
            .execute(
                &format!(
                    "UPDATE {CONTROL_SCHEMA}.suspended_table s SET changes_passed_over = s.changes_passed_over + c.n
                       FROM unnest($2::oid[], $3::bigint[]) c(oid, n)
                      WHERE s.slot_name = $1 AND s.source_oid = c.oid"
                ),
                &[&slot, &oids, &counts],
            )
            .await
            .map_err(failed("could not count the changes passed over in pgdms_apply.suspended_table"))?;
        Ok(())
    }
}

//! pgdms's own tables on a MySQL target: the control store's layout
//! (`crate::sink::control`) in the control database.

use super::sql::text;
use super::{column, server_error, MySqlTarget};
use crate::sink::control::{
    self, ControlSql, ControlStore, Dialect as ControlDialect, LoadedTable, MigrationRecord, Phase,
};
use crate::sink::TargetError;
use mysql_async::prelude::Queryable;

impl MySqlTarget {
    pub(super) async fn control_tables(&mut self) -> Result<(), TargetError> {
        self.ensure_database(&self.control.clone()).await?;
        control::prepare(self).await
    }
}

impl ControlSql for MySqlTarget {
    fn dialect(&self) -> ControlDialect {
        ControlDialect::MySql
    }
    fn control_table(&self, table: &str) -> String {
        self.control_place(&format!("pgdms_{table}"))
    }
    async fn control_execute(&mut self, sql: &str) -> Result<(), TargetError> {
        self.run(sql).await
    }
    async fn control_columns(&mut self, table: &str) -> Result<Vec<String>, TargetError> {
        let rows: Vec<mysql_async::Row> = self
            .conn
            .query(format!(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} \
                 ORDER BY ORDINAL_POSITION",
                text(&self.control),
                text(&format!("pgdms_{table}"))
            ))
            .await
            .map_err(server_error)?;
        rows.iter().map(|r| column(r, 0)).collect()
    }
    async fn control_version(&mut self) -> Result<Option<i64>, TargetError> {
        let sql = format!("SELECT max(version) FROM {}", ControlSql::control_table(self, control::VERSION_TABLE));
        let row: Option<mysql_async::Row> = self.conn.query_first(sql).await.map_err(server_error)?;
        // max() is NULL over an empty table: no version yet.
        Ok(row.map(|r| column::<Option<i64>>(&r, 0)).transpose()?.flatten())
    }
}

impl ControlStore for MySqlTarget {
    async fn migration(&mut self, slot: &str) -> Result<Option<MigrationRecord>, TargetError> {
        let row: Option<mysql_async::Row> = self
            .conn
            .query_first(format!(
                "SELECT phase, consistent_point FROM {} WHERE slot_name = {}",
                self.control_place("pgdms_migration"),
                text(slot)
            ))
            .await
            .map_err(server_error)?;
        let Some(row) = row else { return Ok(None) };
        let (phase, point): (String, String) = (column(&row, 0)?, column(&row, 1)?);
        Ok(Some(MigrationRecord::parse("pgdms_migration", slot, &phase, &point)?))
    }

    async fn begin_migration(&mut self, slot: &str, record: MigrationRecord) -> Result<(), TargetError> {
        let sql = format!(
            "INSERT INTO {} (slot_name, phase, consistent_point) VALUES ({}, {}, {})",
            self.control_place("pgdms_migration"),
            text(slot),
            text(record.phase.as_str()),
            text(&record.consistent_point.to_string())
        );
        self.run(&sql).await
    }

    async fn set_phase(&mut self, slot: &str, phase: Phase) -> Result<bool, TargetError> {
        let sql = format!(
            "UPDATE {} SET phase = {}, updated_at = CURRENT_TIMESTAMP(6) WHERE slot_name = {}",
            self.control_place("pgdms_migration"),
            text(phase.as_str()),
            text(slot)
        );
        self.run(&sql).await?;
        // MySQL counts rows changed, not rows found: a row already in `phase` counts none.
        Ok(self.conn.affected_rows() > 0 || self.migration(slot).await?.is_some())
    }

    async fn forget_migration(&mut self, slot: &str) -> Result<(), TargetError> {
        for table in ["pgdms_migration", "pgdms_load_progress"] {
            let sql = format!("DELETE FROM {} WHERE slot_name = {}", self.control_place(table), text(slot));
            self.run(&sql).await?;
        }
        Ok(())
    }

    async fn loaded_tables(&mut self, slot: &str) -> Result<Vec<LoadedTable>, TargetError> {
        let rows: Vec<mysql_async::Row> = self
            .conn
            .query(format!(
                "SELECT source_oid, table_name, snapshot_lsn FROM {} WHERE slot_name = {}",
                self.control_place("pgdms_load_progress"),
                text(slot)
            ))
            .await
            .map_err(server_error)?;
        rows.iter()
            .map(|r| {
                let (oid, name, lsn): (u32, String, String) = (column(r, 0)?, column(r, 1)?, column(r, 2)?);
                Ok(LoadedTable::parse("pgdms_load_progress", slot, oid, name, &lsn)?)
            })
            .collect()
    }
}

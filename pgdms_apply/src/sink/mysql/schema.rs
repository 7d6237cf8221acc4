//! Databases, table shapes and DDL on a MySQL target, and the implicit commits DDL brings:
//! how far into a source transaction the target got is recorded before each.

use super::sql::{abbreviated, literal, normal_type, text};
use super::{column, server_error, MySqlTarget, TargetColumn, D};
use crate::model::batch::key_columns;
use crate::model::{ColumnInfo, RelInfo};
use crate::sink::rowsql::{added_column_cell, added_column_text};
use crate::sink::typemap::{self, Flavor};
use crate::sink::{Target, TargetError};
use mysql_async::prelude::Queryable;
use pgdms_proto::ddl::TableDef;

impl MySqlTarget {
    /// Records that the open group's items up to `done` are on the target (inside the open
    /// transaction if there is one, else at once).
    pub(super) async fn record_position(&mut self, done: u64) -> Result<(), TargetError> {
        let sql = format!(
            "INSERT INTO {} (slot_name, end_lsn, resume_after_item) VALUES ({}, '0/0', {done}) \
             ON DUPLICATE KEY UPDATE resume_after_item = VALUES(resume_after_item)",
            self.control_place("pgdms_apply_progress"),
            text(&self.slot),
        );
        self.run(&sql).await
    }

    /// A schema change is coming, which commits implicitly: commit the open transaction
    /// first, recording how far into the source transaction it got.
    pub(super) async fn before_implicit_commit(&mut self) -> Result<(), TargetError> {
        if !self.in_group {
            return Ok(());
        }
        if self.group_xids.len() > 1 {
            // The position counts one transaction's items; with several in the group it
            // would not say which. Start again from the last commit: in the new session the
            // transaction that needs the change comes as a group of its own.
            self.rollback().await?;
            return Err(TargetError::Transient(
                "the target's schema had to change in the middle of a group of several source transactions; \
                 applying them again one at a time"
                    .into(),
            ));
        }
        if let Some(done) = self.done_item {
            self.record_position(done).await?;
        }
        self.run("COMMIT").await?;
        self.in_group = false;
        Ok(())
    }

    /// Runs a statement that changes the schema (and so commits), the open transaction
    /// committed first with its position.
    pub(super) async fn run_ddl(&mut self, sql: &str) -> Result<(), TargetError> {
        self.before_implicit_commit().await?;
        self.run(sql).await?;
        tracing::info!(statement = %abbreviated(sql), "schema changed on the target");
        Ok(())
    }

    /// Numbers the next item of the open group; true when it was done before a restart
    /// (see `resume_after`).
    pub(super) fn next_item(&mut self) -> (u64, bool) {
        self.item += 1;
        (self.item, self.resume_after.is_some_and(|r| self.item <= r))
    }

    pub(super) async fn ensure_database(&mut self, db: &str) -> Result<(), TargetError> {
        let sql =
            format!("CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE {}", D.quote(db), self.collation);
        // Read as a row: only whether there is one matters.
        let exists: Option<mysql_async::Row> = self
            .conn
            .query_first(format!(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
                text(db)
            ))
            .await
            .map_err(server_error)?;
        if exists.is_none() {
            self.run_ddl(&sql).await?;
        }
        Ok(())
    }

    pub(super) async fn read_columns(&mut self, place: &(String, String)) -> Result<Vec<TargetColumn>, TargetError> {
        let rows: Vec<mysql_async::Row> = self
            .conn
            .query(format!(
                "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
                text(&place.0),
                text(&place.1)
            ))
            .await
            .map_err(server_error)?;
        rows.iter()
            .map(|r| {
                let (name, t, nullable): (String, String, String) = (column(r, 0)?, column(r, 1)?, column(r, 2)?);
                Ok(TargetColumn { name, type_: normal_type(&t), nullable: nullable == "YES" })
            })
            .collect()
    }

    pub(super) async fn columns(&mut self, place: &(String, String)) -> Result<Vec<TargetColumn>, TargetError> {
        if let Some(c) = self.tables.get(place) {
            return Ok(c.clone());
        }
        let c = self.read_columns(place).await?;
        if !c.is_empty() {
            self.tables.insert(place.clone(), c.clone());
        }
        Ok(c)
    }

    /// The columns a table of `rel` has on the target (generated columns are not carried)
    /// and their MySQL types.
    pub(super) fn wanted(&self, rel: &RelInfo, json_nullable: bool) -> Vec<TargetColumn> {
        let cols: Vec<&ColumnInfo> = rel.columns.iter().filter(|c| !c.generated).collect();
        let key: Vec<usize> = {
            let k = key_columns(rel);
            cols.iter()
                .enumerate()
                .filter(|(_, c)| k.iter().any(|&i| std::ptr::eq(&rel.columns[i], **c)))
                .map(|(i, _)| i)
                .collect()
        };
        let types = typemap::mysql_types(&cols, &key, &self.opts);
        cols.iter()
            .zip(types)
            .map(|(c, type_)| TargetColumn {
                name: c.name.clone(),
                type_,
                nullable: !c.not_null || (json_nullable && typemap::is_json_like(c)),
            })
            .collect()
    }

    pub(super) fn create_sql(&self, rel: &RelInfo, place: &(String, String), json_nullable: bool) -> String {
        let mut defs: Vec<String> = self
            .wanted(rel, json_nullable)
            .iter()
            .map(|c| format!("{} {}{}", D.quote(&c.name), c.type_, if c.nullable { "" } else { " NOT NULL" }))
            .collect();
        let key = key_columns(rel);
        if !key.is_empty() {
            let cols: Vec<String> = key.iter().map(|&i| D.quote(&rel.columns[i].name)).collect();
            defs.push(format!("PRIMARY KEY ({})", cols.join(", ")));
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={}",
            Self::quoted(place),
            defs.join(", "),
            self.collation
        )
    }

    /// Gives the target table of `rel` its shape: created if missing, columns added, types
    /// and NOT NULL brought in line. Columns are never dropped here (a drop or rename comes
    /// as DDL, where the columns' identity is known).
    pub(super) async fn reconcile(&mut self, rel: &RelInfo) -> Result<(String, String), TargetError> {
        let place = self.place(&rel.schema, &rel.name);
        if self.reconciled.get(&rel.oid) == Some(rel) {
            return Ok(place);
        }
        let existing = self.columns(&place).await?;
        if existing.is_empty() {
            self.ensure_database(&place.0.clone()).await?;
            let sql = self.create_sql(rel, &place, false);
            self.run_ddl(&sql).await?;
        } else {
            let mut changes = Vec::new();
            let mut tighten = Vec::new();
            for want in self.wanted(rel, false) {
                match existing.iter().find(|c| c.name == want.name) {
                    None => {
                        // The rows already there get the value the source gave them
                        // (through the mapping); without one, NULL, so the column stays nullable.
                        let text = self.added_values.remove(&(place.0.clone(), place.1.clone(), want.name.clone()));
                        let default = match (text, rel.columns.iter().find(|c| c.name == want.name)) {
                            (Some(text), Some(col)) => match added_column_cell(&text, col, &self.opts, Flavor::MySql) {
                                Ok(value) => value.map(|c| literal(&c)),
                                Err(e) => {
                                    tracing::warn!(table = %rel.qualified(), column = %want.name, value = %e.source_text,
                                            "the rows already there hold a value MySQL cannot: NULL on the target");
                                    None
                                }
                            },
                            _ => None,
                        };
                        let not_null = !want.nullable && default.is_some();
                        if !want.nullable && !not_null {
                            tracing::warn!(table = %rel.qualified(), column = %want.name,
                                "column added on the source as NOT NULL with a default MySQL cannot evaluate: nullable on the target, NULL in the rows it had");
                        }
                        changes.push(format!(
                            "ADD COLUMN {} {}{}{}",
                            D.quote(&want.name),
                            want.type_,
                            if not_null { " NOT NULL" } else { "" },
                            // MySQL 8 takes a default for TEXT and BLOB columns only as an
                            // expression; MariaDB takes the literal.
                            default
                                .map(|d| if self.mariadb { format!(" DEFAULT {d}") } else { format!(" DEFAULT ({d})") })
                                .unwrap_or_default()
                        ));
                    }
                    Some(have) => {
                        // NOT NULL is added separately, after the type (it may not hold);
                        // dropping it goes with the type.
                        let keep_not_null = !have.nullable && !want.nullable;
                        if have.type_ != want.type_ || (want.nullable && !have.nullable) {
                            changes.push(format!(
                                "MODIFY COLUMN {} {}{}",
                                D.quote(&want.name),
                                want.type_,
                                if keep_not_null { " NOT NULL" } else { "" }
                            ));
                        }
                        let known_loose = self.loose.contains(&(place.0.clone(), place.1.clone(), want.name.clone()));
                        if !want.nullable && have.nullable && !known_loose {
                            tighten.push((want.name.clone(), want.type_.clone()));
                        }
                    }
                }
            }
            if !changes.is_empty() {
                let sql = format!("ALTER TABLE {} {}", Self::quoted(&place), changes.join(", "));
                self.run_ddl(&sql).await?;
            }
            for (name, type_) in tighten {
                // NOT NULL where the rows allow it: a column added without a default MySQL
                // could evaluate holds NULLs, and strict mode refuses (rightly) to invent values.
                let sql =
                    format!("ALTER TABLE {} MODIFY COLUMN {} {type_} NOT NULL", Self::quoted(&place), D.quote(&name));
                match self.run_ddl(&sql).await {
                    Ok(()) => {}
                    Err(TargetError::Refused(e)) => {
                        tracing::warn!(table = %rel.qualified(), column = %name, error = %e,
                            "NOT NULL on the source, but the target's rows hold NULL there: the column stays nullable");
                        self.loose.insert((place.0.clone(), place.1.clone(), name));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.tables.remove(&place);
        self.reconciled.insert(rel.oid, rel.clone());
        Ok(place)
    }

    /// Replays drops and renames (additions and type changes come with the relation record
    /// that follows, see `described`); true when statements ran. Each is checked against
    /// the catalog first: after a crash between a statement and the record of it, it may
    /// come again.
    pub(super) async fn replay_table_ddl(
        &mut self,
        before: &TableDef,
        after: Option<&TableDef>,
    ) -> Result<bool, TargetError> {
        let old = self.place(&before.schema, &before.name);
        let existing = self.columns(&old).await?;
        if existing.is_empty() {
            return Ok(false); // never created here (or already renamed or dropped)
        }
        let Some(after) = after else {
            self.tables.remove(&old);
            self.reconciled.remove(&before.oid);
            self.run_ddl(&format!("DROP TABLE IF EXISTS {}", Self::quoted(&old))).await?;
            return Ok(true);
        };
        let have: Vec<&str> = existing.iter().map(|c| c.name.as_str()).collect();
        let mut steps = Vec::new();
        for b in &before.columns {
            match after.columns.iter().find(|a| a.attnum == b.attnum) {
                None if have.contains(&b.name.as_str()) => steps.push(format!("DROP COLUMN {}", D.quote(&b.name))),
                Some(a) if a.name != b.name && have.contains(&b.name.as_str()) => {
                    steps.push(format!("RENAME COLUMN {} TO {}", D.quote(&b.name), D.quote(&a.name)))
                }
                _ => {}
            }
        }
        // Columns added: the value the rows already there got on the source, for the
        // ADD COLUMN that the relation record brings (`reconcile`).
        let (db, table) = self.place(&after.schema, &after.name);
        for a in &after.columns {
            if before.columns.iter().all(|b| b.attnum != a.attnum) {
                if let Some(text) = added_column_text(a) {
                    self.added_values.insert((db.clone(), table.clone(), a.name.clone()), text);
                }
            }
        }
        // One ALTER: MySQL 8 and MariaDB 10.6+ make it atomic, so it is all done or not.
        let renamed_already = before.columns.iter().any(|b| {
            after.columns.iter().any(|a| a.attnum == b.attnum && a.name != b.name && have.contains(&a.name.as_str()))
                && !have.contains(&b.name.as_str())
        });
        let mut ran = false;
        if !steps.is_empty() && !renamed_already {
            self.tables.remove(&old);
            self.run_ddl(&format!("ALTER TABLE {} {}", Self::quoted(&old), steps.join(", "))).await?;
            ran = true;
        }
        let new = (db, table);
        if new != old {
            self.ensure_database(&new.0.clone()).await?;
            if self.columns(&new).await?.is_empty() {
                self.tables.remove(&old);
                self.run_ddl(&format!("RENAME TABLE {} TO {}", Self::quoted(&old), Self::quoted(&new))).await?;
                ran = true;
            }
            self.tables.remove(&new);
        }
        Ok(ran)
    }
}

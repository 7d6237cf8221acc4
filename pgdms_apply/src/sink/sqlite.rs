//! A SQLite target: a database file, written through the DMS mapping (`typemap`).
//!
//! Tables are named after the source's (`orders`), prefixed with their schema outside
//! `public` (`sales.orders`, one identifier). A group of source transactions is one SQLite
//! transaction, which also records the group's end LSN in `pgdms_apply_progress`, so a
//! restart resumes exactly after it. DDL is transactional in SQLite: column additions
//! (from the relation that follows them), drops and renames, and table renames and drops
//! land in the group of their source transaction.

use super::control::{self, ControlSql, ControlStore, Dialect as ControlDialect, LoadedTable, MigrationRecord, Phase};
use super::rowsql::{added_column_cell, added_column_text, literal, Converter, Dialect, Statement};
use super::typemap::{self, Cell, Flavor, MapOptions};
use super::{LoadTarget, OnError, SourceSettings, Target, TargetError};
use crate::model::batch::{key_columns, Batch};
use crate::model::{RelInfo, Row};
use pgdms_proto::ddl::DdlObject;
use pgdms_proto::Ddl;
use pgdms_proto::Lsn;
use rusqlite::types::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

const D: Dialect = Dialect::Sqlite;

pub struct SqliteTarget {
    conn: rusqlite::Connection,
    path: PathBuf,
    slot: String,
    opts: MapOptions,
    on_error: OnError,
    in_group: bool,
    /// Columns of the target's tables, by table name, as far as known.
    columns: HashMap<String, Vec<String>>,
    /// For columns added on the source, by (table, column): the value the rows already
    /// there got, as the source's text, until the relation record brings the column.
    added_values: HashMap<(String, String), String>,
}

fn err(e: rusqlite::Error) -> TargetError {
    TargetError::Refused(e.to_string())
}

fn value(c: Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Int(i) => Value::Integer(i),
        Cell::Real(f) => Value::Real(f),
        Cell::Text(s) => Value::Text(s),
        Cell::Blob(b) => Value::Blob(b),
    }
}

/// The target table's name: the source's, with its schema outside `public`.
pub fn table_name(schema: &str, name: &str) -> String {
    if schema == "public" {
        name.to_string()
    } else {
        format!("{schema}.{name}")
    }
}

impl SqliteTarget {
    pub fn open(path: &std::path::Path, opts: MapOptions, on_error: OnError) -> Result<Self, TargetError> {
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| TargetError::Config(format!("could not open SQLite database {}: {e}", path.display())))?;
        // WAL: readers (a person checking the target) do not block the apply.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000")
            .map_err(err)?;
        Ok(SqliteTarget {
            conn,
            path: path.to_path_buf(),
            slot: String::new(),
            opts,
            on_error,
            in_group: false,
            columns: HashMap::new(),
            added_values: HashMap::new(),
        })
    }

    fn open_group(&mut self) -> Result<(), TargetError> {
        if !self.in_group {
            self.conn.execute_batch("BEGIN").map_err(err)?;
            self.in_group = true;
        }
        Ok(())
    }

    /// Runs one statement (names in it come from the stream: SQLite refuses a second one).
    fn run(&self, sql: &str) -> Result<(), TargetError> {
        self.conn.execute(sql, []).map(drop).map_err(|e| TargetError::Refused(format!("{e}: {sql}")))
    }

    fn execute(&self, s: Statement) -> Result<usize, rusqlite::Error> {
        if s.sql.is_empty() {
            return Ok(0);
        }
        let mut stmt = self.conn.prepare_cached(&s.sql)?;
        stmt.execute(rusqlite::params_from_iter(s.params.into_iter().map(value)))
    }

    fn existing_columns(&self, table: &str) -> Result<Vec<String>, TargetError> {
        let mut stmt = self.conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid").map_err(err)?;
        let rows = stmt.query_map([table], |r| r.get::<_, String>(0)).map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn create_sql(&self, rel: &RelInfo, table: &str, json_nullable: bool) -> String {
        let mut defs: Vec<String> = rel
            .columns
            .iter()
            .map(|c| {
                let not_null = c.not_null && !(json_nullable && typemap::is_json_like(c));
                format!(
                    "{} {}{}",
                    D.quote(&c.name),
                    typemap::sqlite_type(c, &self.opts),
                    if not_null { " NOT NULL" } else { "" }
                )
            })
            .collect();
        let key = key_columns(rel);
        if !key.is_empty() {
            let cols: Vec<String> = key.iter().map(|&i| D.quote(&rel.columns[i].name)).collect();
            defs.push(format!("PRIMARY KEY ({})", cols.join(", ")));
        }
        format!("CREATE TABLE {} ({})", D.quote(table), defs.join(", "))
    }

    /// The target table of `rel`, created or given the columns it lacks (a column added on
    /// the source arrives in the relation that follows its DDL).
    fn ensure(&mut self, rel: &RelInfo) -> Result<String, TargetError> {
        let table = table_name(&rel.schema, &rel.name);
        if !self.columns.contains_key(&table) {
            let existing = self.existing_columns(&table)?;
            if existing.is_empty() {
                self.run(&self.create_sql(rel, &table, false))?;
                tracing::info!(table = %table, "table created on the target");
                self.columns.insert(table.clone(), rel.columns.iter().map(|c| c.name.clone()).collect());
                return Ok(table);
            }
            self.columns.insert(table.clone(), existing);
        }
        let missing: Vec<&crate::model::ColumnInfo> =
            rel.columns.iter().filter(|c| !self.columns[&table].contains(&c.name)).collect();
        for c in missing {
            // The rows already there get the value the source gave them. SQLite adds a
            // NOT NULL column only with a (constant) default, which that value is; without
            // one the column stays nullable.
            let value = match self.added_values.remove(&(table.clone(), c.name.clone())) {
                Some(text) => added_column_cell(&text, c, &self.opts, Flavor::Sqlite).ok().flatten(),
                None => None,
            };
            let fill = match &value {
                Some(v) if c.not_null => format!(" NOT NULL DEFAULT {}", literal(v)),
                Some(v) => format!(" DEFAULT {}", literal(v)),
                None => {
                    if c.not_null {
                        tracing::warn!(table = %table, column = %c.name,
                            "column added on the source as NOT NULL with no value for the rows there: nullable on the target");
                    }
                    String::new()
                }
            };
            self.run(&format!(
                "ALTER TABLE {} ADD COLUMN {} {}{fill}",
                D.quote(&table),
                D.quote(&c.name),
                typemap::sqlite_type(c, &self.opts)
            ))?;
            tracing::info!(table = %table, column = %c.name, "column added on the target");
            self.columns.get_mut(&table).expect("inserted above").push(c.name.clone());
        }
        Ok(table)
    }

    fn apply_batch(&mut self, batch: &Batch) -> Result<(), TargetError> {
        for c in &batch.raw {
            let table = self.ensure(&c.rel)?;
            let mut conv = Converter { dialect: D, opts: &self.opts, table: D.quote(&table), exceptions: vec![] };
            let Some(stmt) = conv.change(c) else {
                if self.on_error == OnError::Log {
                    tracing::warn!(table = %c.rel.qualified(), lsn = %c.lsn, "change without a key passed over");
                    continue;
                }
                return Err(TargetError::NoIdentity { table: c.rel.qualified(), operation: c.operation(), lsn: c.lsn });
            };
            if let Err(e) = self.execute(stmt) {
                let error = TargetError::Change {
                    table: c.rel.qualified(),
                    source_oid: Some(c.rel.oid),
                    operation: c.operation(),
                    lsn: c.lsn,
                    key: super::rowsql::key_text(c),
                    error: e.to_string(),
                };
                if self.on_error == OnError::Log {
                    tracing::warn!(%error, "change passed over");
                    continue;
                }
                return Err(error);
            }
        }
        Ok(())
    }

    fn replay_ddl(&mut self, ddl: &Ddl) -> Result<(), TargetError> {
        let DdlObject::Table { before, after } = &ddl.object else { return Ok(()) };
        let Some(before) = before else { return Ok(()) }; // created with its first rows
        let old = table_name(&before.schema, &before.name);
        if self.existing_columns(&old)?.is_empty() {
            return Ok(()); // never written: created later from its relation
        }
        self.columns.remove(&old);
        let Some(after) = after else {
            return self.run(&format!("DROP TABLE IF EXISTS {}", D.quote(&old)));
        };
        for b in &before.columns {
            match after.columns.iter().find(|a| a.attnum == b.attnum) {
                None => self.run(&format!("ALTER TABLE {} DROP COLUMN {}", D.quote(&old), D.quote(&b.name)))?,
                Some(a) if a.name != b.name => self.run(&format!(
                    "ALTER TABLE {} RENAME COLUMN {} TO {}",
                    D.quote(&old),
                    D.quote(&b.name),
                    D.quote(&a.name)
                ))?,
                Some(_) => {}
            }
        }
        let new = table_name(&after.schema, &after.name);
        for a in after.columns.iter().filter(|a| before.column(a.attnum).is_none()) {
            if let Some(text) = added_column_text(a) {
                self.added_values.insert((new.clone(), a.name.clone()), text);
            }
        }
        if new != old {
            self.columns.remove(&new);
            self.run(&format!("ALTER TABLE {} RENAME TO {}", D.quote(&old), D.quote(&new)))?;
        }
        Ok(())
    }
}

impl Target for SqliteTarget {
    async fn start(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        self.slot = slot.to_string();
        control::prepare(self).await?;
        let lsn: Option<String> = self
            .conn
            .query_row("SELECT end_lsn FROM pgdms_apply_progress WHERE slot_name = ?1", [slot], |r| r.get(0))
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(err(e)) })?;
        tracing::info!(path = %self.path.display(), "SQLite target");
        Ok(lsn.map(|l| control::parse_lsn("pgdms_apply_progress", "end_lsn", slot, &l)).transpose()?)
    }

    async fn configure(&mut self, _: &SourceSettings) -> Result<(), TargetError> {
        Ok(())
    }

    async fn apply(&mut self, batch: &Batch) -> Result<(), TargetError> {
        self.open_group()?;
        self.apply_batch(batch)
    }

    async fn truncate(&mut self, rels: &[Arc<RelInfo>], _restart_identity: bool, _lsn: Lsn) -> Result<(), TargetError> {
        self.open_group()?;
        for rel in rels {
            let table = self.ensure(rel)?;
            self.run(&format!("DELETE FROM {}", D.quote(&table)))?;
        }
        Ok(())
    }

    async fn ddl(&mut self, ddl: &Ddl, _lsn: Lsn) -> Result<(), TargetError> {
        self.open_group()?;
        self.replay_ddl(ddl)
    }

    async fn ensure_table(&mut self, rel: &RelInfo, _lsn: Lsn) -> Result<(), TargetError> {
        self.open_group()?;
        self.ensure(rel).map(|_| ())
    }

    async fn described(&mut self, rel: &RelInfo, _lsn: Lsn) -> Result<(), TargetError> {
        self.open_group()?;
        self.ensure(rel).map(|_| ())
    }

    fn holds_columnless_tables(&self) -> bool {
        false
    }

    async fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), TargetError> {
        self.open_group()?;
        self.conn
            .execute(
                // A commit's end is past every position acknowledged before it.
                "INSERT INTO pgdms_apply_progress (slot_name, end_lsn, commit_time, applied_at, acked_lsn) VALUES (?1, ?2, ?3, datetime('now'), ?2)
                 ON CONFLICT (slot_name) DO UPDATE SET end_lsn = excluded.end_lsn, commit_time = excluded.commit_time,
                                                       applied_at = excluded.applied_at, acked_lsn = excluded.acked_lsn",
                rusqlite::params![self.slot, end_lsn.to_string(), commit_time],
            )
            .map_err(err)?;
        self.conn.execute_batch("COMMIT").map_err(err)?;
        self.in_group = false;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), TargetError> {
        if self.in_group {
            self.in_group = false;
            self.columns.clear();
            self.conn.execute_batch("ROLLBACK").map_err(err)?;
        }
        Ok(())
    }

    fn records_acknowledged(&self) -> bool {
        true
    }

    async fn advance(&mut self, lsn: Lsn) -> Result<(), TargetError> {
        self.conn
            .execute(
                "INSERT INTO pgdms_apply_progress (slot_name, end_lsn, applied_at, acked_lsn) VALUES (?1, ?2, datetime('now'), ?2)
                 ON CONFLICT (slot_name) DO UPDATE SET acked_lsn = excluded.acked_lsn",
                rusqlite::params![self.slot, lsn.to_string()],
            )
            .map_err(err)?;
        Ok(())
    }

    async fn acknowledged(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        let row: Option<Option<String>> = self
            .conn
            .query_row("SELECT acked_lsn FROM pgdms_apply_progress WHERE slot_name = ?1", [slot], |r| r.get(0))
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(err(e)) })?;
        let recorded = match row {
            Some(acked) => acked,
            // Nothing applied yet: a migration's slot confirms its consistent point.
            None => self.migration(slot).await?.map(|m| m.consistent_point.to_string()),
        };
        Ok(recorded.map(|l| control::parse_lsn("pgdms_apply_progress", "acked_lsn", slot, &l)).transpose()?)
    }
}

impl ControlSql for SqliteTarget {
    fn dialect(&self) -> ControlDialect {
        ControlDialect::Sqlite
    }
    fn control_table(&self, table: &str) -> String {
        D.quote(&format!("pgdms_{table}"))
    }
    async fn control_execute(&mut self, sql: &str) -> Result<(), TargetError> {
        self.run(sql)
    }
    async fn control_columns(&mut self, table: &str) -> Result<Vec<String>, TargetError> {
        self.existing_columns(&format!("pgdms_{table}"))
    }
    async fn control_version(&mut self) -> Result<Option<i64>, TargetError> {
        self.conn.query_row("SELECT max(version) FROM pgdms_control_version", [], |r| r.get(0)).map_err(err)
    }
}

impl ControlStore for SqliteTarget {
    async fn migration(&mut self, slot: &str) -> Result<Option<MigrationRecord>, TargetError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row("SELECT phase, consistent_point FROM pgdms_migration WHERE slot_name = ?1", [slot], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(err(e)) })?;
        let Some((phase, point)) = row else { return Ok(None) };
        Ok(Some(MigrationRecord::parse("pgdms_migration", slot, &phase, &point)?))
    }

    async fn begin_migration(&mut self, slot: &str, record: MigrationRecord) -> Result<(), TargetError> {
        self.conn
            .execute(
                "INSERT INTO pgdms_migration (slot_name, phase, consistent_point) VALUES (?1, ?2, ?3)",
                rusqlite::params![slot, record.phase.as_str(), record.consistent_point.to_string()],
            )
            .map_err(err)?;
        Ok(())
    }

    async fn set_phase(&mut self, slot: &str, phase: Phase) -> Result<bool, TargetError> {
        let updated = self
            .conn
            .execute(
                "UPDATE pgdms_migration SET phase = ?2, updated_at = CURRENT_TIMESTAMP WHERE slot_name = ?1",
                rusqlite::params![slot, phase.as_str()],
            )
            .map_err(err)?;
        Ok(updated > 0)
    }

    async fn forget_migration(&mut self, slot: &str) -> Result<(), TargetError> {
        for table in ["pgdms_migration", "pgdms_load_progress"] {
            self.conn.execute(&format!("DELETE FROM {table} WHERE slot_name = ?1"), [slot]).map_err(err)?;
        }
        Ok(())
    }

    async fn loaded_tables(&mut self, slot: &str) -> Result<Vec<LoadedTable>, TargetError> {
        let mut stmt = self
            .conn
            .prepare("SELECT source_oid, table_name, snapshot_lsn FROM pgdms_load_progress WHERE slot_name = ?1")
            .map_err(err)?;
        let rows = stmt
            .query_map([slot], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(err)?;
        rows.map(|r| {
            let (oid, name, lsn) = r.map_err(err)?;
            Ok(LoadedTable::parse("pgdms_load_progress", slot, oid, name, &lsn)?)
        })
        .collect()
    }
}

impl LoadTarget for SqliteTarget {
    async fn load_begin(&mut self, rel: &RelInfo, _snapshot_lsn: Lsn) -> Result<(), TargetError> {
        self.open_group()?;
        let table = table_name(&rel.schema, &rel.name);
        self.run(&format!("DROP TABLE IF EXISTS {}", D.quote(&table)))?;
        self.run(&self.create_sql(rel, &table, true))?;
        self.columns.insert(table, rel.columns.iter().map(|c| c.name.clone()).collect());
        Ok(())
    }

    async fn load_rows(&mut self, rel: &RelInfo, rows: &[Row]) -> Result<(), TargetError> {
        let table = table_name(&rel.schema, &rel.name);
        let mut conv = Converter { dialect: D, opts: &self.opts, table: D.quote(&table), exceptions: vec![] };
        for row in rows {
            let stmt = conv.insert(rel, row);
            self.execute(stmt).map_err(|e| TargetError::Refused(format!("could not load a row into {table}: {e}")))?;
        }
        Ok(())
    }

    async fn load_end(
        &mut self,
        rel: &RelInfo,
        source_name: &str,
        slot: &str,
        snapshot_lsn: Lsn,
    ) -> Result<(), TargetError> {
        let table = table_name(&rel.schema, &rel.name);
        if rel.columns.iter().any(|c| c.not_null && typemap::is_json_like(c)) {
            // SQLite cannot add NOT NULL to a column: the table is rebuilt with it.
            let tmp = format!("{table}__pgdms_load");
            self.run(&format!("ALTER TABLE {} RENAME TO {}", D.quote(&table), D.quote(&tmp)))?;
            self.run(&self.create_sql(rel, &table, false))?;
            self.run(&format!("INSERT INTO {} SELECT * FROM {}", D.quote(&table), D.quote(&tmp)))?;
            self.run(&format!("DROP TABLE {}", D.quote(&tmp)))?;
        }
        self.conn
            .execute(
                "INSERT INTO pgdms_load_progress (slot_name, source_oid, table_name, snapshot_lsn) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (slot_name, source_oid) DO UPDATE SET table_name = excluded.table_name, snapshot_lsn = excluded.snapshot_lsn",
                rusqlite::params![slot, rel.oid, source_name, snapshot_lsn.to_string()],
            )
            .map_err(err)?;
        self.conn.execute_batch("COMMIT").map_err(err)?;
        self.in_group = false;
        Ok(())
    }
}

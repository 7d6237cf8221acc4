//! A MySQL / MariaDB target, written through the DMS mapping (`typemap`).
//!
//! Where tables go: with a database in the target URL (`mysql://u@host/db`), every table
//! goes into it, named as the source's (`orders`), prefixed with its schema outside
//! `public` (`sales.orders`, one identifier); without one, each source schema becomes the
//! database of the same name, and pgdms's own tables live in database `pgdms`. Tables are
//! InnoDB, utf8mb4 with a binary, no-pad collation: keys compare exactly as PostgreSQL's
//! ('a', 'A' and 'a ' are three keys).
//!
//! A group of source transactions is one InnoDB transaction, which also records the
//! group's end LSN in `pgdms_apply_progress`. MySQL commits DDL implicitly, so a source
//! transaction that changes a table's shape comes as a group of its own
//! (`schema_changes_commit`), and the target records how far into that transaction it got
//! (`resume_after_item`, the number of its changes, truncates and DDL records done): with
//! the changes before each implicit commit, and right after each DDL record's statements.
//! A restart replays the transaction from there: nothing lost, nothing applied twice. The
//! DDL is also checked against the catalog before it runs, so the one statement that may
//! run again (a crash between a DDL and its record) is harmless.
//!
//! Values MySQL cannot hold (see `typemap`) are written as NULL and each is recorded in
//! `pgdms_value_exceptions` in the same transaction, and logged.

//!
//! The module by role: `sql` (SQL text: literals, statements), `schema` (databases, table
//! shapes, DDL replay, and the implicit commits DDL brings), `dml` (rows: netted, in order,
//! and what the target refuses), `store` (pgdms's own tables).

mod dml;
mod schema;
mod sql;
mod store;

use super::control::{self, ControlStore};
use super::rowsql::{Converter, Dialect};
use super::typemap::MapOptions;
use super::{LoadTarget, OnError, SourceSettings, Target, TargetError};
use crate::model::batch::{Batch, TableMode};
use crate::model::{Change, RelInfo, Row};
use mysql_async::prelude::Queryable;
use pgdms_proto::ddl::DdlObject;
use pgdms_proto::Ddl;
use pgdms_proto::Lsn;
use sql::{abbreviated, inline, statement_chunks, text};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub(super) const D: Dialect = Dialect::MySql;
/// A multi-row INSERT stays under this many bytes of SQL (MySQL's max_allowed_packet is
/// 16 MB by default, 4 MB on older servers).
pub(super) const STATEMENT_BYTES: usize = 2 << 20;
pub(super) const STATEMENT_ROWS: usize = 1000;

/// Where the target's tables go.
#[derive(Debug, Clone)]
pub(super) enum Naming {
    /// Every table into this database.
    OneDatabase(String),
    /// Each source schema into the database of its name.
    PerSchema,
}

/// A column of a target table, as MySQL reports it (type normalised, see `normal_type`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TargetColumn {
    name: String,
    type_: String,
    nullable: bool,
}

pub struct MySqlTarget {
    conn: mysql_async::Conn,
    naming: Naming,
    control: String,
    collation: &'static str,
    slot: String,
    opts: MapOptions,
    on_error: OnError,
    /// MariaDB (else MySQL): they differ in collation names and column defaults.
    mariadb: bool,
    in_group: bool,
    /// Items (changes, truncates, DDL records) of the open group seen so far, and the
    /// number of the last one done.
    item: u64,
    done_item: Option<u64>,
    /// Source transactions with changes applied in the open group.
    group_xids: HashSet<u32>,
    /// After a restart: the first source transaction's items up to this number are on the
    /// target already (its DDL committed them).
    resume_after: Option<u64>,
    /// Columns left nullable because their rows hold NULL (not tried again this session).
    loose: HashSet<(String, String, String)>,
    /// The target's tables, by (database, table), as far as read or created.
    tables: HashMap<(String, String), Vec<TargetColumn>>,
    /// The description each source table was last reconciled with.
    reconciled: HashMap<u32, RelInfo>,
    /// For columns added on the source: the value the rows already there got, as the
    /// source's text (`rowsql::added_column_text`), until the ADD COLUMN.
    added_values: HashMap<(String, String, String), String>,
    /// The snapshot LSN of the table being loaded (value exceptions are recorded at it).
    load_lsn: Lsn,
}

pub(super) fn server_error(e: mysql_async::Error) -> TargetError {
    // A lost connection, a deadlock or a lock wait timeout (InnoDB rolled the transaction
    // back): the group is tried again from the last commit.
    let retry = matches!(&e, mysql_async::Error::Server(s) if s.code == 1213 || s.code == 1205);
    if let mysql_async::Error::Driver(mysql_async::DriverError::PacketTooLarge) = e {
        return TargetError::Refused(
            "a statement is larger than the server's max_allowed_packet: raise it on the MySQL server \
             (SET GLOBAL max_allowed_packet = 1073741824) and run again"
                .into(),
        );
    }
    if retry || e.is_fatal() || matches!(e, mysql_async::Error::Io(_)) {
        TargetError::Transient(e.to_string())
    } else {
        TargetError::Refused(e.to_string())
    }
}

/// Column `i` of a row MySQL sent, as `T`, or an error naming the column. mysql_async's
/// typed reads (`Row::get`, and `query`/`query_first` into anything but a `Row`) panic on
/// a value that does not convert, so replies are read as `Row`s and checked here.
pub(super) fn column<T: mysql_async::prelude::FromValue>(row: &mysql_async::Row, i: usize) -> Result<T, TargetError> {
    let name = || row.columns_ref().get(i).map_or_else(|| i.to_string(), |c| c.name_str().into_owned());
    match row.get_opt::<T, _>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(TargetError::Refused(format!("MySQL's reply, column {}: {e}", name()))),
        None => Err(TargetError::Refused(format!("MySQL's reply has no column {}", name()))),
    }
}

impl MySqlTarget {
    /// Connects to `url` (`mysql://user:password@host:port/database`; `mariadb://` too).
    pub async fn connect(url: &str, opts: MapOptions, on_error: OnError) -> Result<Self, TargetError> {
        let url = url.strip_prefix("mariadb://").map(|r| format!("mysql://{r}")).unwrap_or_else(|| url.to_string());
        let parsed = mysql_async::Opts::from_url(&url)
            .map_err(|e| TargetError::Config(format!("invalid MySQL target URL: {e}")))?;
        let naming = match parsed.db_name() {
            Some(db) if !db.is_empty() => Naming::OneDatabase(db.to_string()),
            _ => Naming::PerSchema,
        };
        let control = match &naming {
            Naming::OneDatabase(db) => db.clone(),
            Naming::PerSchema => "pgdms".into(),
        };
        let builder = mysql_async::OptsBuilder::from_opts(parsed).init(vec![
            // Strict: a value MySQL would cut or bend is an error, never silently altered.
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES,NO_ENGINE_SUBSTITUTION,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO'",
            // timestamptz values arrive in UTC.
            "SET SESSION time_zone = '+00:00'",
            "SET NAMES utf8mb4",
            // Rows arrive in the source's commit order, constraints checked there.
            "SET SESSION foreign_key_checks = 0",
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ]);
        let mut conn = mysql_async::Conn::new(builder).await.map_err(|e| match e {
            // Too many connections, shutting down, starting up: try again later.
            mysql_async::Error::Server(s) if matches!(s.code, 1040 | 1053 | 1203) => {
                TargetError::Transient(format!("MySQL is not taking connections now: {s}"))
            }
            mysql_async::Error::Server(s) => TargetError::Config(format!("MySQL refused the connection: {s}")),
            e => TargetError::Transient(format!("could not connect to MySQL: {e}")),
        })?;
        let version: Option<mysql_async::Row> = conn.query_first("SELECT VERSION()").await.map_err(server_error)?;
        let version: String = version.map(|r| column(&r, 0)).transpose()?.unwrap_or_default();
        // No-pad binary collations: MariaDB's and MySQL 8's names differ.
        let mariadb = version.contains("MariaDB");
        let collation = if mariadb { "utf8mb4_nopad_bin" } else { "utf8mb4_0900_bin" };
        tracing::debug!(%version, collation, "MySQL target");
        Ok(MySqlTarget {
            conn,
            naming,
            control,
            collation,
            slot: String::new(),
            opts,
            on_error,
            mariadb,
            in_group: false,
            item: 0,
            done_item: None,
            group_xids: HashSet::new(),
            resume_after: None,
            loose: HashSet::new(),
            tables: HashMap::new(),
            reconciled: HashMap::new(),
            added_values: HashMap::new(),
            load_lsn: Lsn(0),
        })
    }

    /// The (database, table) of a source table.
    fn place(&self, schema: &str, name: &str) -> (String, String) {
        match &self.naming {
            Naming::OneDatabase(db) => (db.clone(), super::sqlite::table_name(schema, name)),
            Naming::PerSchema => (schema.to_string(), name.to_string()),
        }
    }

    fn quoted(place: &(String, String)) -> String {
        format!("{}.{}", D.quote(&place.0), D.quote(&place.1))
    }

    fn control_place(&self, name: &str) -> String {
        format!("{}.{}", D.quote(&self.control), D.quote(name))
    }

    async fn run(&mut self, sql: &str) -> Result<(), TargetError> {
        self.conn.query_drop(sql).await.map_err(|e| match server_error(e) {
            TargetError::Refused(m) => TargetError::Refused(format!("{m}; statement: {}", abbreviated(sql))),
            other => other,
        })
    }

    async fn open_group(&mut self) -> Result<(), TargetError> {
        if !self.in_group {
            self.run("START TRANSACTION").await?;
            self.in_group = true;
        }
        Ok(())
    }
}

impl Target for MySqlTarget {
    async fn start(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        self.slot = slot.to_string();
        self.control_tables().await?;
        let row: Option<mysql_async::Row> = self
            .conn
            .query_first(format!(
                "SELECT end_lsn, resume_after_item FROM {} WHERE slot_name = {}",
                self.control_place("pgdms_apply_progress"),
                text(slot)
            ))
            .await
            .map_err(server_error)?;
        let Some(row) = row else { return Ok(None) };
        let (end, resume): (String, Option<u64>) = (column(&row, 0)?, column(&row, 1)?);
        self.resume_after = resume;
        if let Some(r) = self.resume_after {
            tracing::info!(done = r, "resuming inside a source transaction that DDL committed in parts");
        }
        let end = control::parse_lsn("pgdms_apply_progress", "end_lsn", slot, &end)?;
        Ok((end != Lsn(0)).then_some(end))
    }

    async fn configure(&mut self, _: &SourceSettings) -> Result<(), TargetError> {
        Ok(())
    }

    async fn apply(&mut self, batch: &Batch) -> Result<(), TargetError> {
        // Every table's shape first: a schema change commits, and so must come before any
        // row of the batch (the position recorded with it is the batch's start).
        for t in &batch.tables {
            self.reconcile(&t.rel).await?;
        }
        self.open_group().await?;
        // The batch's changes are items item+1..; those done before a restart are skipped.
        let done_before = self.resume_after.map_or(0, |r| r.saturating_sub(self.item)).min(batch.len() as u64) as usize;
        let todo: Vec<&Change> = batch.raw[done_before..].iter().collect();
        let netted = batch.tables.iter().any(|t| matches!(t.mode, TableMode::Net(_)));
        if done_before == 0 && netted && batch.len() > 1 {
            self.run("SAVEPOINT pgdms_batch").await?;
            match self.apply_net(batch).await {
                Ok(()) => {}
                Err(TargetError::Refused(e)) => {
                    // Applied in order instead, which names the change the target refuses.
                    tracing::debug!(error = %e, "set-wise apply refused: applying the batch change by change");
                    self.run("ROLLBACK TO SAVEPOINT pgdms_batch").await?;
                    self.apply_in_order(&todo).await?;
                }
                Err(e) => return Err(e),
            }
        } else {
            self.apply_in_order(&todo).await?;
        }
        self.group_xids.extend(todo.iter().map(|c| c.xid));
        self.item += batch.len() as u64;
        self.done_item = Some(self.item);
        Ok(())
    }

    async fn truncate(&mut self, rels: &[Arc<RelInfo>], _restart_identity: bool, _lsn: Lsn) -> Result<(), TargetError> {
        let (n, done_before) = self.next_item();
        if done_before {
            return Ok(());
        }
        // Every table's shape first, as in `apply`: a schema change commits.
        let mut places = Vec::with_capacity(rels.len());
        for rel in rels {
            places.push(self.reconcile(rel).await?);
        }
        self.open_group().await?;
        for place in places {
            // DELETE, not TRUNCATE: MySQL's TRUNCATE is DDL and would commit the group.
            self.run(&format!("DELETE FROM {}", Self::quoted(&place))).await?;
        }
        self.done_item = Some(n);
        Ok(())
    }

    async fn ddl(&mut self, ddl: &Ddl, _lsn: Lsn) -> Result<(), TargetError> {
        let (n, done_before) = self.next_item();
        if done_before {
            return Ok(());
        }
        if let DdlObject::Table { before: Some(before), after } = &ddl.object {
            if self.replay_table_ddl(before, after.as_ref()).await? {
                // Its statements committed: say so at once, so that a crash from here on
                // does not run them again.
                self.record_position(n).await?;
            }
        }
        self.done_item = Some(n);
        Ok(())
    }

    async fn ensure_table(&mut self, rel: &RelInfo, _lsn: Lsn) -> Result<(), TargetError> {
        self.reconcile(rel).await.map(|_| ())
    }

    async fn described(&mut self, rel: &RelInfo, _lsn: Lsn) -> Result<(), TargetError> {
        self.reconcile(rel).await.map(|_| ())
    }

    fn schema_changes_commit(&self) -> bool {
        true
    }

    fn holds_columnless_tables(&self) -> bool {
        false
    }

    fn records_acknowledged(&self) -> bool {
        true
    }

    async fn advance(&mut self, lsn: Lsn) -> Result<(), TargetError> {
        let sql = format!(
            // Only the acknowledged position: where the apply resumes (end_lsn, and how far
            // into a transaction DDL committed in parts) stays as the last commit left it.
            "INSERT INTO {} (slot_name, end_lsn, applied_at, resume_after_item, acked_lsn) VALUES ({}, {lsn}, NOW(6), NULL, {lsn}) \
             ON DUPLICATE KEY UPDATE acked_lsn = VALUES(acked_lsn)",
            self.control_place("pgdms_apply_progress"),
            text(&self.slot),
            lsn = text(&lsn.to_string())
        );
        self.run(&sql).await
    }

    async fn acknowledged(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        let row: Option<mysql_async::Row> = self
            .conn
            .query_first(format!(
                "SELECT acked_lsn FROM {} WHERE slot_name = {}",
                self.control_place("pgdms_apply_progress"),
                text(slot)
            ))
            .await
            .map_err(server_error)?;
        let recorded: Option<String> = match row {
            Some(row) => column(&row, 0)?,
            // Nothing applied yet: a migration's slot confirms its consistent point.
            None => self.migration(slot).await?.map(|m| m.consistent_point.to_string()),
        };
        Ok(recorded.map(|l| control::parse_lsn("pgdms_apply_progress", "acked_lsn", slot, &l)).transpose()?)
    }

    async fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), TargetError> {
        self.open_group().await?;
        let sql = format!(
            // A commit's end is past every position acknowledged before it.
            "INSERT INTO {} (slot_name, end_lsn, commit_time, applied_at, resume_after_item, acked_lsn) \
             VALUES ({}, {lsn}, {commit_time}, NOW(6), NULL, {lsn}) \
             ON DUPLICATE KEY UPDATE end_lsn = VALUES(end_lsn), commit_time = VALUES(commit_time), \
             applied_at = VALUES(applied_at), resume_after_item = NULL, acked_lsn = VALUES(acked_lsn)",
            self.control_place("pgdms_apply_progress"),
            text(&self.slot),
            lsn = text(&end_lsn.to_string())
        );
        self.run(&sql).await?;
        self.run("COMMIT").await?;
        self.in_group = false;
        self.item = 0;
        self.done_item = None;
        self.group_xids.clear();
        self.resume_after = None;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), TargetError> {
        self.tables.clear();
        self.reconciled.clear();
        self.item = 0;
        self.done_item = None;
        self.group_xids.clear();
        if self.in_group {
            self.in_group = false;
            self.run("ROLLBACK").await?;
        }
        Ok(())
    }
}

impl LoadTarget for MySqlTarget {
    async fn load_begin(&mut self, rel: &RelInfo, snapshot_lsn: Lsn) -> Result<(), TargetError> {
        self.load_lsn = snapshot_lsn;
        let place = self.place(&rel.schema, &rel.name);
        self.ensure_database(&place.0.clone()).await?;
        self.run_ddl(&format!("DROP TABLE IF EXISTS {}", Self::quoted(&place))).await?;
        let sql = self.create_sql(rel, &place, true);
        self.run_ddl(&sql).await?;
        self.tables.remove(&place);
        self.reconciled.remove(&rel.oid);
        self.open_group().await
    }

    async fn load_rows(&mut self, rel: &RelInfo, rows: &[Row]) -> Result<(), TargetError> {
        let place = self.place(&rel.schema, &rel.name);
        let rows: Vec<&Row> = rows.iter().collect();
        for chunk in statement_chunks(&rows) {
            let mut conv = Converter { dialect: D, opts: &self.opts, table: Self::quoted(&place), exceptions: vec![] };
            let stmt = conv.insert_rows(rel, chunk);
            let exceptions = std::mem::take(&mut conv.exceptions);
            self.run(&inline(stmt)).await.map_err(|e| match e {
                TargetError::Refused(m) => {
                    TargetError::Refused(format!("could not load rows into {}: {m}", Self::quoted(&place)))
                }
                other => other,
            })?;
            self.record_exceptions(exceptions, self.load_lsn).await?;
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
        let place = self.place(&rel.schema, &rel.name);
        self.open_group().await?;
        self.run("COMMIT").await?;
        self.in_group = false;
        // NOT NULL back on json-like columns (a table rebuild in MySQL: after the rows).
        let restore: Vec<String> = self
            .wanted(rel, false)
            .into_iter()
            .zip(self.wanted(rel, true))
            .filter(|(after, during)| after.nullable != during.nullable)
            .map(|(c, _)| format!("MODIFY COLUMN {} {} NOT NULL", D.quote(&c.name), c.type_))
            .collect();
        if !restore.is_empty() {
            self.run_ddl(&format!("ALTER TABLE {} {}", Self::quoted(&place), restore.join(", "))).await?;
        }
        let sql = format!(
            "INSERT INTO {} (slot_name, source_oid, table_name, snapshot_lsn) VALUES ({}, {}, {}, {}) \
             ON DUPLICATE KEY UPDATE table_name = VALUES(table_name), snapshot_lsn = VALUES(snapshot_lsn)",
            self.control_place("pgdms_load_progress"),
            text(slot),
            rel.oid,
            text(source_name),
            text(&snapshot_lsn.to_string())
        );
        self.run(&sql).await?;
        self.tables.remove(&place);
        Ok(())
    }
}

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

use super::control::{self, ControlSql, ControlStore, Dialect as ControlDialect, LoadedTable, MigrationRecord, Phase};
use super::rowsql::{Converter, Dialect, Statement, ValueException};
use super::typemap::{self, Cell, MapOptions};
use super::{LoadTarget, OnError, SourceSettings, Target, TargetError};
use crate::model::batch::{key_columns, Batch, NetOp, TableMode};
use crate::model::{Change, ChangeKind, ColumnInfo, RelInfo, Row, Val};
use mysql_async::prelude::Queryable;
use pgdms_proto::ddl::{ColumnDef, DdlObject, TableDef};
use pgdms_proto::Ddl;
use pgdms_proto::Lsn;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

const D: Dialect = Dialect::MySql;
/// A multi-row INSERT stays under this many bytes of SQL (MySQL's max_allowed_packet is
/// 16 MB by default, 4 MB on older servers).
const STATEMENT_BYTES: usize = 2 << 20;
const STATEMENT_ROWS: usize = 1000;

/// Where the target's tables go.
#[derive(Debug, Clone)]
enum Naming {
    /// Every table into this database.
    OneDatabase(String),
    /// Each source schema into the database of its name.
    PerSchema,
}

/// A column of a target table, as MySQL reports it (type normalised, see `normal_type`).
#[derive(Debug, Clone, PartialEq)]
struct TargetColumn {
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
    /// Literal defaults of columns added on the source, for the rows already there.
    added_defaults: HashMap<(String, String, String), String>,
    /// The snapshot LSN of the table being loaded (value exceptions are recorded at it).
    load_lsn: Lsn,
}

fn server_error(e: mysql_async::Error) -> TargetError {
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

/// A SQL literal of a cell. The session runs with NO_BACKSLASH_ESCAPES, so doubling quotes
/// is the whole of string escaping.
fn literal(c: &Cell) -> String {
    match c {
        Cell::Null => "NULL".into(),
        Cell::Int(i) => i.to_string(),
        // Shortest round-trip digits with an exponent: MySQL reads it as a DOUBLE.
        Cell::Real(f) => format!("{f:e}"),
        Cell::Text(s) => format!("'{}'", s.replace('\'', "''")),
        Cell::Blob(b) => {
            use std::fmt::Write as _;
            let mut s = String::with_capacity(b.len() * 2 + 3);
            s.push_str("X'");
            for byte in b {
                let _ = write!(s, "{byte:02x}"); // into a String: cannot fail
            }
            s.push('\'');
            s
        }
    }
}

/// The statement with its parameters written in as literals (one round trip, no prepared
/// statement per shape). `?` only ever stands for a parameter outside backtick-quoted names.
fn inline(s: Statement) -> String {
    let mut out = String::with_capacity(s.sql.len() + s.params.len() * 8);
    let mut params = s.params.iter();
    let mut quoted = false;
    for ch in s.sql.chars() {
        match ch {
            '`' => {
                quoted = !quoted;
                out.push(ch);
            }
            '?' if !quoted => out.push_str(&literal(params.next().unwrap_or(&Cell::Null))),
            _ => out.push(ch),
        }
    }
    out
}

/// Rows cut into multi-row statements' worth (`STATEMENT_ROWS` rows, about
/// `STATEMENT_BYTES` bytes).
fn statement_chunks<'a, 'r>(rows: &'a [&'r Row]) -> Vec<&'a [&'r Row]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let (mut end, mut bytes) = (start, 0);
        while end < rows.len() && end - start < STATEMENT_ROWS && bytes < STATEMENT_BYTES {
            bytes += rows[end].iter().map(|v| v.approx_len()).sum::<usize>();
            end += 1;
        }
        chunks.push(&rows[start..end]);
        start = end;
    }
    chunks
}

fn text(s: &str) -> String {
    literal(&Cell::Text(s.to_string()))
}

/// MySQL's COLUMN_TYPE in the spelling of `typemap::mysql_types` (MariaDB adds display
/// widths to integers, BOOLEAN is TINYINT(1)).
fn normal_type(column_type: &str) -> String {
    let t = column_type.to_ascii_uppercase();
    if t == "TINYINT(1)" {
        return "BOOLEAN".into();
    }
    for int in ["SMALLINT", "BIGINT", "INT"] {
        if t.starts_with(&format!("{int}(")) {
            return int.into();
        }
    }
    t
}

/// A PostgreSQL column default MySQL can take as it is: a number, a string, a boolean
/// (recognised by PostgreSQL's own parser), as a MySQL literal. Anything else (functions,
/// expressions) has no MySQL equivalent here.
fn literal_default(def: &ColumnDef) -> Option<String> {
    use crate::sql::checked::Constant;
    Some(match crate::sql::checked::constant(def.default.as_deref()?)? {
        Constant::Number(n) | Constant::Text(n) => text(&n),
        Constant::Bool(b) => text(if b { "true" } else { "false" }),
    })
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
        let version: Option<String> = conn.query_first("SELECT VERSION()").await.map_err(server_error)?;
        let version = version.unwrap_or_default();
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
            added_defaults: HashMap::new(),
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

    /// Records that the open group's items up to `done` are on the target (inside the open
    /// transaction if there is one, else at once).
    async fn record_position(&mut self, done: u64) -> Result<(), TargetError> {
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
    async fn before_implicit_commit(&mut self) -> Result<(), TargetError> {
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
    async fn run_ddl(&mut self, sql: &str) -> Result<(), TargetError> {
        self.before_implicit_commit().await?;
        self.run(sql).await?;
        tracing::info!(statement = %abbreviated(sql), "schema changed on the target");
        Ok(())
    }

    /// Numbers the next item of the open group; true when it was done before a restart
    /// (see `resume_after`).
    fn next_item(&mut self) -> (u64, bool) {
        self.item += 1;
        (self.item, self.resume_after.is_some_and(|r| self.item <= r))
    }

    async fn ensure_database(&mut self, db: &str) -> Result<(), TargetError> {
        let sql =
            format!("CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE {}", D.quote(db), self.collation);
        let exists: Option<String> = self
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

    async fn read_columns(&mut self, place: &(String, String)) -> Result<Vec<TargetColumn>, TargetError> {
        let rows: Vec<(String, String, String)> = self
            .conn
            .query(format!(
                "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
                text(&place.0),
                text(&place.1)
            ))
            .await
            .map_err(server_error)?;
        Ok(rows
            .into_iter()
            .map(|(name, t, nullable)| TargetColumn { name, type_: normal_type(&t), nullable: nullable == "YES" })
            .collect())
    }

    async fn columns(&mut self, place: &(String, String)) -> Result<Vec<TargetColumn>, TargetError> {
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
    fn wanted(&self, rel: &RelInfo, json_nullable: bool) -> Vec<TargetColumn> {
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

    fn create_sql(&self, rel: &RelInfo, place: &(String, String), json_nullable: bool) -> String {
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
    async fn reconcile(&mut self, rel: &RelInfo) -> Result<(String, String), TargetError> {
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
                        // The rows already there get the column's default where it is a
                        // plain value; otherwise NULL, so the column stays nullable.
                        let default = self
                            .added_defaults
                            .remove(&(place.0.clone(), place.1.clone(), want.name.clone()))
                            .map(|d| match (want.type_.as_str(), d.as_str()) {
                                ("BOOLEAN", "'true'") => "1".to_string(),
                                ("BOOLEAN", "'false'") => "0".to_string(),
                                _ => d,
                            });
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

    async fn record_exceptions(&mut self, exceptions: Vec<ValueException>, lsn: Lsn) -> Result<(), TargetError> {
        for e in exceptions {
            tracing::warn!(table = %e.table, column = %e.column, key = %e.key, value = %e.source_text, %lsn,
                "a value MySQL cannot hold: written as NULL, recorded in pgdms_value_exceptions");
            let sql = format!(
                "INSERT INTO {} (slot_name, lsn, table_name, column_name, row_key, source_value) VALUES ({}, {}, {}, {}, {}, {})",
                self.control_place("pgdms_value_exceptions"),
                text(&self.slot),
                text(&lsn.to_string()),
                text(&e.table),
                text(&e.column),
                text(&e.key),
                text(&e.source_text)
            );
            self.run(&sql).await?;
        }
        Ok(())
    }

    /// A change the target refused: stop, or (--on-error=log) record it and go on.
    async fn refused(&mut self, c: &Change, error: TargetError) -> Result<(), TargetError> {
        let TargetError::Refused(message) = error else { return Err(error) };
        let error = TargetError::Change {
            table: c.rel.qualified(),
            operation: c.operation(),
            lsn: c.lsn,
            key: super::rowsql::key_text(c),
            error: message,
        };
        if self.on_error == OnError::Stop {
            return Err(error);
        }
        tracing::warn!(%error, "change passed over, recorded in pgdms_apply_exceptions");
        let sql = format!(
            "INSERT INTO {} (slot_name, lsn, table_name, operation, error) VALUES ({}, {}, {}, {}, {})",
            self.control_place("pgdms_apply_exceptions"),
            text(&self.slot),
            text(&c.lsn.to_string()),
            text(&c.rel.qualified()),
            text(c.operation()),
            text(&error.to_string())
        );
        self.run(&sql).await
    }

    /// Applies changes one by one in source order (a run of inserts into one table is one
    /// statement). Their tables have their shape already (see `apply`).
    async fn apply_in_order(&mut self, changes: &[&Change]) -> Result<(), TargetError> {
        let mut i = 0;
        while i < changes.len() {
            let c = changes[i];
            let place = self.place(&c.rel.schema, &c.rel.name);
            let mut conv = Converter { dialect: D, opts: &self.opts, table: Self::quoted(&place), exceptions: vec![] };
            let mut run_end = i + 1;
            let stmt = if let ChangeKind::Insert { new } = &c.kind {
                let mut rows: Vec<&Row> = vec![new];
                let mut bytes: usize = new.iter().map(|v| v.approx_len()).sum();
                while run_end < changes.len() && rows.len() < STATEMENT_ROWS && bytes < STATEMENT_BYTES {
                    let next = changes[run_end];
                    let ChangeKind::Insert { new } = &next.kind else { break };
                    if !Arc::ptr_eq(&next.rel, &c.rel) && *next.rel != *c.rel {
                        break;
                    }
                    bytes += new.iter().map(|v| v.approx_len()).sum::<usize>();
                    rows.push(new);
                    run_end += 1;
                }
                Some(conv.insert_rows(&c.rel, &rows))
            } else {
                conv.change(c)
            };
            let exceptions = std::mem::take(&mut conv.exceptions);
            let last = changes[run_end - 1];
            match stmt {
                None if self.on_error == OnError::Log => {
                    tracing::warn!(table = %c.rel.qualified(), lsn = %c.lsn, "change without a key passed over");
                }
                None => {
                    return Err(TargetError::NoIdentity {
                        table: c.rel.qualified(),
                        operation: c.operation(),
                        lsn: c.lsn,
                    })
                }
                Some(s) if s.sql.is_empty() => {}
                Some(s) => {
                    if let Err(e) = self.run(&inline(s)).await {
                        // Only a refused statement is looked into; anything else (a lost
                        // connection, a deadlock that rolled the transaction back) ends here.
                        let TargetError::Refused(_) = e else { return Err(e) };
                        if run_end - i > 1 {
                            // Find the refused row: one statement each.
                            for &one in &changes[i..run_end] {
                                let mut conv = Converter {
                                    dialect: D,
                                    opts: &self.opts,
                                    table: Self::quoted(&place),
                                    exceptions: vec![],
                                };
                                let s = conv.change(one).expect("an insert always has a statement");
                                if let Err(e) = self.run(&inline(s)).await {
                                    let TargetError::Refused(_) = e else { return Err(e) };
                                    self.refused(one, e).await?;
                                }
                            }
                        } else {
                            self.refused(c, e).await?;
                        }
                    }
                    self.record_exceptions(exceptions, last.lsn).await?;
                }
            }
            i = run_end;
        }
        Ok(())
    }

    /// Applies a batch's net change set-wise, per table: the keys deleted in one statement,
    /// the rows inserted or updated in multi-row upserts, updates that leave a TOASTed value
    /// untouched one by one, rows of keyless tables appended; tables the batch could not net
    /// (a key changed, no key) in source order.
    async fn apply_net(&mut self, batch: &Batch) -> Result<(), TargetError> {
        for t in &batch.tables {
            let TableMode::Net(net) = &t.mode else {
                let changes: Vec<&Change> = batch.raw_of(t.rel.oid).collect();
                self.apply_in_order(&changes).await?;
                continue;
            };
            let rel = &t.rel;
            let place = self.place(&rel.schema, &rel.name);
            let lsn = batch.raw.last().map(|c| c.lsn).unwrap_or_default();
            let mut conv = Converter { dialect: D, opts: &self.opts, table: Self::quoted(&place), exceptions: vec![] };
            let mut statements = Vec::new();
            let deleted: Vec<&Row> =
                net.ops().filter(|(_, op)| matches!(op, NetOp::Delete | NetOp::Replace(_))).map(|(k, _)| k).collect();
            for keys in deleted.chunks(STATEMENT_ROWS) {
                statements.push(conv.delete_keys(rel, &t.key_cols, keys));
            }
            let mut upserted: Vec<&Row> = Vec::new();
            for (key, op) in net.ops() {
                match op {
                    NetOp::Insert(r) | NetOp::Replace(r) => upserted.push(r),
                    NetOp::Update(r) if !r.contains(&Val::Unchanged) => upserted.push(r),
                    NetOp::Update(r) => statements.push(conv.update_key(rel, &t.key_cols, key, r)),
                    NetOp::Delete => {}
                }
            }
            let appended: Vec<&Row> = net.appended().iter().collect();
            for chunk in statement_chunks(&upserted).into_iter().chain(statement_chunks(&appended)) {
                statements.push(conv.insert_rows(rel, chunk));
            }
            let exceptions = std::mem::take(&mut conv.exceptions);
            for s in statements {
                if !s.sql.is_empty() {
                    self.run(&inline(s)).await?;
                }
            }
            self.record_exceptions(exceptions, lsn).await?;
        }
        Ok(())
    }

    /// Replays drops and renames (additions and type changes come with the relation record
    /// that follows, see `described`); true when statements ran. Each is checked against
    /// the catalog first: after a crash between a statement and the record of it, it may
    /// come again.
    async fn replay_table_ddl(&mut self, before: &TableDef, after: Option<&TableDef>) -> Result<bool, TargetError> {
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
        // Columns added with a plain default: the rows already there get it.
        let (db, table) = self.place(&after.schema, &after.name);
        for a in &after.columns {
            if before.columns.iter().all(|b| b.attnum != a.attnum) {
                if let Some(d) = literal_default(a) {
                    self.added_defaults.insert((db.clone(), table.clone(), a.name.clone()), d);
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

    async fn control_tables(&mut self) -> Result<(), TargetError> {
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
        self.conn
            .query(format!(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} \
                 ORDER BY ORDINAL_POSITION",
                text(&self.control),
                text(&format!("pgdms_{table}"))
            ))
            .await
            .map_err(server_error)
    }
    async fn control_version(&mut self) -> Result<Option<i64>, TargetError> {
        let sql = format!("SELECT max(version) FROM {}", ControlSql::control_table(self, control::VERSION_TABLE));
        let v: Option<Option<i64>> = self.conn.query_first(sql).await.map_err(server_error)?;
        Ok(v.flatten())
    }
}

fn abbreviated(sql: &str) -> String {
    if sql.len() <= 300 {
        return sql.to_string();
    }
    let mut end = 300;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &sql[..end])
}

impl Target for MySqlTarget {
    async fn start(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        self.slot = slot.to_string();
        self.control_tables().await?;
        let row: Option<(String, Option<u64>)> = self
            .conn
            .query_first(format!(
                "SELECT end_lsn, resume_after_item FROM {} WHERE slot_name = {}",
                self.control_place("pgdms_apply_progress"),
                text(slot)
            ))
            .await
            .map_err(server_error)?;
        let Some((end, resume)) = row else { return Ok(None) };
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

    async fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), TargetError> {
        self.open_group().await?;
        let sql = format!(
            "INSERT INTO {} (slot_name, end_lsn, commit_time, applied_at, resume_after_item) VALUES ({}, {}, {commit_time}, NOW(6), NULL) \
             ON DUPLICATE KEY UPDATE end_lsn = VALUES(end_lsn), commit_time = VALUES(commit_time), \
             applied_at = VALUES(applied_at), resume_after_item = NULL",
            self.control_place("pgdms_apply_progress"),
            text(&self.slot),
            text(&end_lsn.to_string())
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

impl ControlStore for MySqlTarget {
    async fn migration(&mut self, slot: &str) -> Result<Option<MigrationRecord>, TargetError> {
        let row: Option<(String, String)> = self
            .conn
            .query_first(format!(
                "SELECT phase, consistent_point FROM {} WHERE slot_name = {}",
                self.control_place("pgdms_migration"),
                text(slot)
            ))
            .await
            .map_err(server_error)?;
        let Some((phase, point)) = row else { return Ok(None) };
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
        let rows: Vec<(u32, String, String)> = self
            .conn
            .query(format!(
                "SELECT source_oid, table_name, snapshot_lsn FROM {} WHERE slot_name = {}",
                self.control_place("pgdms_load_progress"),
                text(slot)
            ))
            .await
            .map_err(server_error)?;
        rows.into_iter()
            .map(|(oid, name, lsn)| Ok(LoadedTable::parse("pgdms_load_progress", slot, oid, name, &lsn)?))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped_and_placeholders_outside_names_filled() {
        let s = Statement {
            sql: "INSERT INTO `a?``b` (`c`) VALUES (?, ?, ?, ?)".into(),
            params: vec![Cell::Text("it's".into()), Cell::Blob(vec![0, 255]), Cell::Real(1e300), Cell::Null],
        };
        assert_eq!(inline(s), "INSERT INTO `a?``b` (`c`) VALUES ('it''s', X'00ff', 1e300, NULL)");
        assert_eq!(normal_type("int(11)"), "INT");
        assert_eq!(normal_type("tinyint(1)"), "BOOLEAN");
        assert_eq!(normal_type("decimal(10,2)"), "DECIMAL(10,2)");
    }

    #[test]
    fn only_plain_defaults_are_carried() {
        let def = |d: &str| ColumnDef { default: Some(d.into()), ..Default::default() };
        assert_eq!(literal_default(&def("0")).as_deref(), Some("'0'"));
        assert_eq!(literal_default(&def("'it''s'::text")).as_deref(), Some("'it''s'"));
        assert_eq!(literal_default(&def("true")).as_deref(), Some("'true'"));
        assert_eq!(literal_default(&def("now()")), None);
        assert_eq!(literal_default(&def("nextval('s'::regclass)")), None);
        assert_eq!(literal_default(&def(r"'a\\'' or 1'::text")).as_deref(), Some(r"'a\\'' or 1'"));
        assert_eq!(literal_default(&def("1); DROP TABLE t; --")), None);
    }
}

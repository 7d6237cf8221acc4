//! A PostgreSQL target (homogeneous: every value lands as the source had it).
//!
//! A batch is applied set-wise: per table, the keys to delete and the rows to update go
//! into temporary staging tables with COPY, and one DELETE ... USING and one UPDATE ... FROM
//! per table do the work; inserted rows are copied straight into the table. Should that
//! fail (a unique key broken mid-way, a row missing), the batch is rolled back to a
//! savepoint and replayed change by change in source order, which either succeeds or names
//! the change that cannot be applied.
//!
//! The session runs with `session_replication_role = replica`, as PostgreSQL's own apply
//! worker does: triggers and foreign keys of the target do not fire for replicated changes.

use super::{OnError, SourceSettings, Target, TargetError};
use crate::apply::batch::{Batch, NetOp, NetTable, TableBatch, TableMode};
use crate::apply::change::{quote_ident, quote_literal, Change, ChangeKind, Old, RelInfo, Row, Val};
use crate::stream::{conninfo::Host, ConnInfo, Lsn};
use bytes::{BufMut, BytesMut};
use futures_util::SinkExt;
use pgdms_proto::{dms::oids, Identity};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

/// Where the target keeps its own tables.
pub const CONTROL_SCHEMA: &str = "pgdms";

pub struct PostgresTarget {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
    slot: String,
    on_error: OnError,
    synchronous_commit: String,
    in_group: bool,
    statements: HashMap<String, Statement>,
    staging: HashSet<String>,
}

fn connection_error(e: tokio_postgres::Error) -> TargetError {
    TargetError::Connection(e.to_string())
}

/// A tokio-postgres error: a lost connection is transient, anything else is the statement's.
fn classify(e: tokio_postgres::Error) -> Result<String, TargetError> {
    if e.is_closed() || e.as_db_error().is_none() && e.code().is_none() {
        return Err(connection_error(e));
    }
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            // admin_shutdown, crash_shutdown, cannot_connect_now, connection exceptions.
            if code.starts_with("57P") || code.starts_with("08") {
                return Err(TargetError::Connection(db.to_string()));
            }
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                let _ = write!(s, " ({d})");
            }
            Ok(s)
        }
        None => Ok(e.to_string()),
    }
}

impl PostgresTarget {
    pub async fn connect(info: &ConnInfo, on_error: OnError, synchronous_commit: &str) -> Result<Self, TargetError> {
        let mut config = tokio_postgres::Config::new();
        match &info.host {
            Host::Unix(dir) => config.host_path(dir),
            Host::Tcp(h) => config.host(h),
        };
        config.port(info.port).user(&info.user).dbname(&info.dbname).application_name("pgdms-apply");
        if let Some(p) = &info.password {
            config.password(p);
        }
        if let Some(o) = &info.options {
            config.options(o);
        }
        if let Some(t) = info.connect_timeout {
            config.connect_timeout(std::time::Duration::from_secs(t));
        }
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| TargetError::Connection(format!("could not connect to {}: {e}", info.describe())))?;
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("target connection ended: {e}");
            }
        });
        Ok(PostgresTarget {
            client,
            connection,
            slot: String::new(),
            on_error,
            synchronous_commit: synchronous_commit.to_string(),
            in_group: false,
            statements: HashMap::new(),
            staging: HashSet::new(),
        })
    }

    async fn run(&self, sql: &str) -> Result<(), TargetError> {
        match self.client.batch_execute(sql).await {
            Ok(()) => Ok(()),
            Err(e) => Err(TargetError::Other(format!("{}: {sql}", classify(e)?))),
        }
    }

    async fn begin_if_needed(&mut self) -> Result<(), TargetError> {
        if !self.in_group {
            self.client.batch_execute("BEGIN").await.map_err(connection_error)?;
            self.in_group = true;
        }
        Ok(())
    }

    /// A cached prepared statement whose parameters are all text.
    async fn statement(&mut self, sql: &str, params: usize) -> Result<Statement, String> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.client.prepare_typed(sql, &vec![Type::TEXT; params]).await.map_err(|e| e.to_string())?;
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    /// The temporary staging table for `rel` (its non-generated columns, with the target's
    /// types), created on first use. Named after the column layout, so a table whose
    /// columns changed gets a new one.
    async fn staging_table(&mut self, rel: &RelInfo) -> Result<String, TargetError> {
        let cols = written_columns(rel);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&(rel.oid, cols.iter().map(|&i| &rel.columns[i].name).collect::<Vec<_>>()), &mut h);
        let name = format!("pgdms_stage_{}_{:x}", rel.oid, std::hash::Hasher::finish(&h));
        if !self.staging.contains(&name) {
            let list = column_list(rel, &cols);
            // Created outside any batch savepoint, and committed, so a rollback keeps it.
            let sql = format!(
                "CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {list} FROM {} WITH NO DATA",
                quote_ident(&name),
                rel.qualified()
            );
            if self.in_group {
                self.run(&sql).await?;
            } else {
                self.run(&format!("BEGIN; {sql}; COMMIT")).await?;
            }
            self.staging.insert(name.clone());
        }
        Ok(name)
    }

    async fn copy_rows<'r>(
        &self,
        table: &str,
        columns: &str,
        rows: impl Iterator<Item = Vec<&'r Val>>,
    ) -> Result<u64, tokio_postgres::Error> {
        let sink = self.client.copy_in(&format!("COPY {table} ({columns}) FROM STDIN")).await?;
        futures_util::pin_mut!(sink);
        let mut buf = BytesMut::with_capacity(256 * 1024);
        for row in rows {
            for (i, v) in row.into_iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b'\t');
                }
                write_copy_value(&mut buf, v);
            }
            buf.put_u8(b'\n');
            if buf.len() >= 192 * 1024 {
                sink.send(buf.split().freeze()).await?;
            }
        }
        if !buf.is_empty() {
            sink.send(buf.freeze()).await?;
        }
        sink.as_mut().finish().await
    }

    /// The set-wise form of one table's net changes.
    async fn apply_net(&mut self, t: &TableBatch, net: &NetTable) -> Result<(), String> {
        let rel = &t.rel;
        let written = written_columns(rel);
        let target = rel.qualified();
        let mut deletes = Vec::new();
        let mut updates: HashMap<Vec<bool>, Vec<(&Row, &Row)>> = HashMap::new();
        let mut inserts: Vec<&Row> = net.appended().iter().collect();
        for (key, op) in net.ops() {
            match op {
                NetOp::Delete => deletes.push(key),
                NetOp::Replace(row) => {
                    deletes.push(key);
                    inserts.push(row);
                }
                NetOp::Insert(row) => inserts.push(row),
                NetOp::Update(row) => {
                    let set: Vec<bool> =
                        written.iter().map(|&i| !t.key_cols.contains(&i) && row[i] != Val::Unchanged).collect();
                    updates.entry(set).or_default().push((key, row));
                }
            }
        }
        let key_match = t
            .key_cols
            .iter()
            .map(|&i| format!("t.{c} = s.{c}", c = quote_ident(&rel.columns[i].name)))
            .collect::<Vec<_>>()
            .join(" AND ");
        if !deletes.is_empty() || !updates.is_empty() {
            let stage = self.staging_table(rel).await.map_err(|e| e.to_string())?;
            let qstage = quote_ident(&stage);
            if !deletes.is_empty() {
                self.client.batch_execute(&format!("TRUNCATE {qstage}")).await.map_err(|e| e.to_string())?;
                let key_list = column_list(rel, &t.key_cols);
                self.copy_rows(&qstage, &key_list, deletes.iter().map(|k| k.iter().collect()))
                    .await
                    .map_err(|e| e.to_string())?;
                let n = self
                    .client
                    .execute(&format!("DELETE FROM {target} t USING {qstage} s WHERE {}", key_match), &[])
                    .await
                    .map_err(|e| e.to_string())?;
                if n != deletes.len() as u64 {
                    return Err(format!(
                        "{} of {} rows to delete were not found",
                        deletes.len() as u64 - n,
                        deletes.len()
                    ));
                }
            }
            for (set, rows) in &updates {
                if !set.contains(&true) {
                    continue; // nothing but unchanged values: the row is as it was
                }
                self.client.batch_execute(&format!("TRUNCATE {qstage}")).await.map_err(|e| e.to_string())?;
                let list = column_list(rel, &written);
                // Key values from the op's key: under REPLICA IDENTITY FULL the row marks
                // every column that kept its value, keys included, as unchanged.
                let staged = rows.iter().map(|(key, r)| {
                    written
                        .iter()
                        .map(|&i| t.key_cols.iter().position(|&k| k == i).map_or(&r[i], |p| &key[p]))
                        .collect()
                });
                self.copy_rows(&qstage, &list, staged).await.map_err(|e| e.to_string())?;
                let assignments: Vec<String> = written
                    .iter()
                    .zip(set)
                    .filter(|(_, s)| **s)
                    .map(|(&i, _)| format!("{c} = s.{c}", c = quote_ident(&rel.columns[i].name)))
                    .collect();
                let sql =
                    format!("UPDATE {target} t SET {} FROM {qstage} s WHERE {}", assignments.join(", "), key_match);
                let n = self.client.execute(&sql, &[]).await.map_err(|e| e.to_string())?;
                if n != rows.len() as u64 {
                    return Err(format!("{} of {} rows to update were not found", rows.len() as u64 - n, rows.len()));
                }
            }
        }
        if !inserts.is_empty() {
            let list = column_list(rel, &written);
            self.copy_rows(&target, &list, inserts.iter().map(|r| written.iter().map(|&i| &r[i]).collect()))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Applies one change as its own statement; `Err` carries the error text.
    async fn apply_one(&mut self, c: &Change) -> Result<(), ApplyOneError> {
        let rel = &c.rel;
        let target = rel.qualified();
        let written = written_columns(rel);
        let cast = |i: usize, n: usize| format!("${n}::{}", rel.columns[i].type_sql);
        match &c.kind {
            ChangeKind::Insert { new } => {
                let overriding = if rel.columns.iter().any(|c| c.identity == Identity::Always) {
                    " OVERRIDING SYSTEM VALUE"
                } else {
                    ""
                };
                let values: Vec<String> = written.iter().enumerate().map(|(n, &i)| cast(i, n + 1)).collect();
                let sql = format!(
                    "INSERT INTO {target} ({}){overriding} VALUES ({})",
                    column_list(rel, &written),
                    values.join(", ")
                );
                let params: Vec<Option<String>> = written.iter().map(|&i| new[i].to_pg_text()).collect();
                self.execute_expect(&sql, params, None).await
            }
            ChangeKind::Update { old, new } => {
                let set: Vec<usize> = written.iter().copied().filter(|&i| new[i] != Val::Unchanged).collect();
                if set.is_empty() {
                    return Ok(());
                }
                let mut params: Vec<Option<String>> = set.iter().map(|&i| new[i].to_pg_text()).collect();
                let assignments: Vec<String> = set
                    .iter()
                    .enumerate()
                    .map(|(n, &i)| format!("{} = {}", quote_ident(&rel.columns[i].name), cast(i, n + 1)))
                    .collect();
                let (cond, cond_params) = self.row_condition(c, old, Some(new))?;
                let first = params.len();
                params.extend(cond_params);
                let sql = format!("UPDATE {target} SET {} WHERE {}", assignments.join(", "), renumber(&cond, first));
                self.execute_expect(&sql, params, Some(1)).await
            }
            ChangeKind::Delete { old } => {
                let (cond, params) = self.row_condition(c, old, None)?;
                self.execute_expect(&format!("DELETE FROM {target} WHERE {cond}"), params, Some(1)).await
            }
        }
    }

    /// The WHERE clause that finds a change's row (parameters from $1), and its parameters.
    fn row_condition(
        &self,
        c: &Change,
        old: &Old,
        new: Option<&Row>,
    ) -> Result<(String, Vec<Option<String>>), ApplyOneError> {
        let rel = &c.rel;
        let key_cols = crate::apply::batch::key_columns(rel);
        let key_vals: Option<Vec<&Val>> = match old {
            Old::Key(k) if k.len() == key_cols.len() && !key_cols.is_empty() => Some(k.iter().collect()),
            Old::Full(row) if !key_cols.is_empty() => Some(key_cols.iter().map(|&i| &row[i]).collect()),
            Old::None if !key_cols.is_empty() => new.map(|n| key_cols.iter().map(|&i| &n[i]).collect()),
            _ => None,
        };
        if let Some(vals) = key_vals {
            let cond: Vec<String> = key_cols
                .iter()
                .enumerate()
                .map(|(n, &i)| {
                    format!("{} = ${}::{}", quote_ident(&rel.columns[i].name), n + 1, rel.columns[i].type_sql)
                })
                .collect();
            return Ok((cond.join(" AND "), vals.iter().map(|v| v.to_pg_text()).collect()));
        }
        let Old::Full(row) = old else { return Err(ApplyOneError::NoIdentity) };
        // No key: the whole old row identifies it; of identical rows, change one, as the
        // source did. Compared as text, which every type has (json or point have no
        // equality operator); money through numeric, since its text depends on lc_monetary.
        let cond: Vec<String> = rel
            .columns
            .iter()
            .enumerate()
            .map(|(n, col)| {
                let text = if col.type_oid == oids::MONEY { "::numeric::text" } else { "::text" };
                format!("{}{text} IS NOT DISTINCT FROM ${}", quote_ident(&col.name), n + 1)
            })
            .collect();
        let sql = format!("ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)", rel.qualified(), cond.join(" AND "));
        Ok((sql, row.iter().map(Val::to_pg_text).collect()))
    }

    async fn execute_expect(
        &mut self,
        sql: &str,
        params: Vec<Option<String>>,
        expect: Option<u64>,
    ) -> Result<(), ApplyOneError> {
        let stmt = self.statement(sql, params.len()).await.map_err(ApplyOneError::Failed)?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        match self.client.execute(&stmt, &refs).await {
            Ok(n) if expect.is_none_or(|e| e == n) => Ok(()),
            Ok(0) => Err(ApplyOneError::Failed("the row was not found on the target".into())),
            Ok(n) => Err(ApplyOneError::Failed(format!("{n} rows matched instead of one"))),
            Err(e) => Err(match classify(e) {
                Ok(msg) => ApplyOneError::Failed(msg),
                Err(TargetError::Connection(c)) => ApplyOneError::Connection(c),
                Err(other) => ApplyOneError::Failed(other.to_string()),
            }),
        }
    }

    /// Applies a batch's changes one by one in source order (`only`: of these tables).
    async fn replay(&mut self, batch: &Batch, only: Option<&HashSet<u32>>) -> Result<(), TargetError> {
        for c in &batch.raw {
            if only.is_some_and(|o| !o.contains(&c.rel.oid)) {
                continue;
            }
            let log = self.on_error == OnError::Log;
            if log {
                self.run("SAVEPOINT pgdms_change").await?;
            }
            match self.apply_one(c).await {
                Ok(()) => {
                    if log {
                        self.run("RELEASE SAVEPOINT pgdms_change").await?;
                    }
                }
                Err(ApplyOneError::Connection(e)) => return Err(TargetError::Connection(e)),
                Err(err) => {
                    let (table, operation, lsn) = (c.rel.qualified(), c.operation(), c.lsn);
                    let text = match &err {
                        ApplyOneError::NoIdentity => "the source logs no key for this table's rows".to_string(),
                        ApplyOneError::Failed(e) | ApplyOneError::Connection(e) => e.clone(),
                    };
                    if !log {
                        return Err(match err {
                            ApplyOneError::NoIdentity => TargetError::NoIdentity { table, operation, lsn },
                            _ => TargetError::Change { table, operation, lsn, key: describe_key(c), error: text },
                        });
                    }
                    self.run("ROLLBACK TO SAVEPOINT pgdms_change").await?;
                    tracing::warn!(%table, operation, %lsn, key = %describe_key(c), error = %text, "change recorded in the exceptions table");
                    self.record_exception(c, &text).await?;
                }
            }
        }
        Ok(())
    }

    async fn record_exception(&mut self, c: &Change, error: &str) -> Result<(), TargetError> {
        let sql = format!(
            "INSERT INTO {CONTROL_SCHEMA}.apply_exceptions (slot_name, table_name, operation, key, lsn, xid, error, change) \
             VALUES ($1, $2, $3, $4::jsonb, $5::pg_lsn, $6::bigint, $7, $8::jsonb)"
        );
        let params = [
            Some(self.slot.clone()),
            Some(c.rel.qualified()),
            Some(c.operation().to_string()),
            Some(key_json(c).to_string()),
            Some(c.lsn.to_string()),
            Some(c.xid.to_string()),
            Some(error.to_string()),
            Some(change_json(c).to_string()),
        ];
        let stmt = self.statement(&sql, params.len()).await.map_err(TargetError::Other)?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        self.client.execute(&stmt, &refs).await.map_err(|e| match classify(e) {
            Ok(m) => TargetError::Other(m),
            Err(c) => c,
        })?;
        Ok(())
    }
}

enum ApplyOneError {
    NoIdentity,
    Failed(String),
    Connection(String),
}

/// Renumbers `$1..` parameters of a clause to follow `offset` others.
fn renumber(clause: &str, offset: usize) -> String {
    let mut out = String::with_capacity(clause.len() + 8);
    let mut chars = clause.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '$' && chars.peek().is_some_and(|c| c.is_ascii_digit()) {
            let mut n = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n * 10 + d as usize;
                chars.next();
            }
            let _ = write!(out, "${}", n + offset);
        } else {
            out.push(ch);
        }
    }
    out
}

/// Columns a target write sets: all but generated ones (the target computes those).
fn written_columns(rel: &RelInfo) -> Vec<usize> {
    rel.columns.iter().enumerate().filter(|(_, c)| !c.generated).map(|(i, _)| i).collect()
}

fn column_list(rel: &RelInfo, cols: &[usize]) -> String {
    cols.iter().map(|&i| quote_ident(&rel.columns[i].name)).collect::<Vec<_>>().join(", ")
}

fn key_values(c: &Change) -> Vec<(String, Option<String>)> {
    let rel = &c.rel;
    let key_cols = crate::apply::batch::key_columns(rel);
    let row = match &c.kind {
        ChangeKind::Insert { new } => Some(new),
        ChangeKind::Update { old: Old::Full(r), .. } | ChangeKind::Delete { old: Old::Full(r) } => Some(r),
        ChangeKind::Update { old: Old::Key(k), .. } | ChangeKind::Delete { old: Old::Key(k) } => {
            return key_cols.iter().zip(k).map(|(&i, v)| (rel.columns[i].name.clone(), v.to_pg_text())).collect();
        }
        ChangeKind::Update { new, .. } => Some(new),
        ChangeKind::Delete { old: Old::None } => None,
    };
    let cols: Vec<usize> = if key_cols.is_empty() { (0..rel.columns.len()).collect() } else { key_cols };
    row.map(|r| cols.iter().map(|&i| (rel.columns[i].name.clone(), r[i].to_pg_text())).collect()).unwrap_or_default()
}

fn describe_key(c: &Change) -> String {
    let kv = key_values(c);
    if kv.is_empty() {
        return "unknown".into();
    }
    kv.iter().map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("NULL"))).collect::<Vec<_>>().join(", ")
}

fn key_json(c: &Change) -> serde_json::Value {
    serde_json::Value::Object(
        key_values(c).into_iter().map(|(k, v)| (k, v.map_or(serde_json::Value::Null, Into::into))).collect(),
    )
}

fn row_json(rel: &RelInfo, row: &Row) -> serde_json::Value {
    serde_json::Value::Object(
        rel.columns
            .iter()
            .zip(row)
            .map(|(c, v)| {
                let j = match v {
                    Val::Unchanged => serde_json::json!({"unchanged_toast": true}),
                    v => v.to_pg_text().map_or(serde_json::Value::Null, Into::into),
                };
                (c.name.clone(), j)
            })
            .collect(),
    )
}

fn change_json(c: &Change) -> serde_json::Value {
    let old = |o: &Old| match o {
        Old::None => serde_json::Value::Null,
        Old::Full(r) => row_json(&c.rel, r),
        Old::Key(k) => {
            let key_cols = c.rel.key_indices();
            serde_json::Value::Object(
                key_cols
                    .iter()
                    .zip(k)
                    .map(|(&i, v)| {
                        (c.rel.columns[i].name.clone(), v.to_pg_text().map_or(serde_json::Value::Null, Into::into))
                    })
                    .collect(),
            )
        }
    };
    match &c.kind {
        ChangeKind::Insert { new } => serde_json::json!({"new": row_json(&c.rel, new)}),
        ChangeKind::Update { old: o, new } => serde_json::json!({"old": old(o), "new": row_json(&c.rel, new)}),
        ChangeKind::Delete { old: o } => serde_json::json!({"old": old(o)}),
    }
}

/// One value in COPY's text format.
fn write_copy_value(buf: &mut BytesMut, v: &Val) {
    let escape = |buf: &mut BytesMut, bytes: &[u8]| {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'\\' => b"\\\\",
                b'\t' => b"\\t",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                _ => continue,
            };
            buf.put_slice(&bytes[start..i]);
            buf.put_slice(esc);
            start = i + 1;
        }
        buf.put_slice(&bytes[start..]);
    };
    match v {
        Val::Null | Val::Unchanged => buf.put_slice(b"\\N"),
        Val::Text(t) => escape(buf, t),
        Val::Int2(i) => buf.put_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Val::Int4(i) => buf.put_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Val::Int8(i) => buf.put_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Val::Bool(b) => buf.put_u8(if *b { b't' } else { b'f' }),
        // The hex form of bytea has a backslash, which COPY needs doubled.
        other => escape(buf, other.to_pg_text().unwrap_or_default().as_bytes()),
    }
}

impl Target for PostgresTarget {
    async fn start(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        self.slot = slot.to_string();
        let setup = format!(
            "SET session_replication_role = replica;
             SET client_min_messages = warning;
             SET TimeZone = 'UTC';
             SET extra_float_digits = 3;
             SET bytea_output = hex;
             SET lc_monetary = 'C';
             SET synchronous_commit = {};
             CREATE SCHEMA IF NOT EXISTS {CONTROL_SCHEMA};
             CREATE TABLE IF NOT EXISTS {CONTROL_SCHEMA}.apply_progress (
                 slot_name text PRIMARY KEY,
                 end_lsn pg_lsn NOT NULL,
                 commit_time timestamptz,
                 updated_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {CONTROL_SCHEMA}.apply_exceptions (
                 id bigserial PRIMARY KEY,
                 slot_name text NOT NULL,
                 logged_at timestamptz NOT NULL DEFAULT now(),
                 table_name text NOT NULL,
                 operation text NOT NULL,
                 key jsonb,
                 lsn pg_lsn NOT NULL,
                 xid bigint,
                 error text NOT NULL,
                 change jsonb);",
            quote_literal(&self.synchronous_commit)
        );
        self.client.batch_execute(&setup).await.map_err(|e| match classify(e) {
            Ok(m) if m.contains("session_replication_role") => TargetError::Other(format!(
                "{m}: pgdms-apply needs a target role that may set session_replication_role \
                 (a superuser, or on PostgreSQL 15+: GRANT SET ON PARAMETER session_replication_role TO <role>)"
            )),
            Ok(m) => TargetError::Other(m),
            Err(c) => c,
        })?;
        let rows = self
            .client
            .query(&format!("SELECT end_lsn::text FROM {CONTROL_SCHEMA}.apply_progress WHERE slot_name = $1"), &[&slot])
            .await
            .map_err(connection_error)?;
        Ok(rows.first().map(|r| r.get::<_, String>(0)).and_then(|s| s.parse().ok()))
    }

    async fn configure(&mut self, settings: &SourceSettings) -> Result<(), TargetError> {
        let mut sql = String::new();
        if let Some(d) = &settings.date_style {
            let _ = write!(sql, "SET DateStyle = {};", quote_literal(d));
        }
        if let Some(i) = &settings.interval_style {
            let _ = write!(sql, "SET IntervalStyle = {};", quote_literal(i));
        }
        if sql.is_empty() {
            return Ok(());
        }
        self.run(&sql).await
    }

    async fn apply(&mut self, batch: &Batch) -> Result<(), TargetError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.begin_if_needed().await?;
        // Staging tables first, outside the batch's savepoint.
        for t in &batch.tables {
            if matches!(&t.mode, TableMode::Net(n) if n.ops().any(|(_, op)| !matches!(op, NetOp::Insert(_)))) {
                self.staging_table(&t.rel).await?;
            }
        }
        self.run("SAVEPOINT pgdms_batch").await?;
        let mut failure = None;
        for t in &batch.tables {
            let result = match &t.mode {
                TableMode::Net(net) => self.apply_net(t, net).await.map_err(|e| (t.rel.qualified(), e)),
                TableMode::Sequential => {
                    let only = HashSet::from([t.rel.oid]);
                    match self.replay_quiet(batch, &only).await {
                        Ok(()) => Ok(()),
                        Err(e) => Err((t.rel.qualified(), e)),
                    }
                }
            };
            if let Err(e) = result {
                failure = Some(e);
                break;
            }
        }
        match failure {
            None => self.run("RELEASE SAVEPOINT pgdms_batch").await,
            Some((table, why)) => {
                if self.client.is_closed() {
                    return Err(TargetError::Connection(why));
                }
                tracing::debug!(%table, %why, changes = batch.len(), "set-wise apply failed; replaying the batch change by change");
                self.run("ROLLBACK TO SAVEPOINT pgdms_batch").await?;
                self.replay(batch, None).await?;
                self.run("RELEASE SAVEPOINT pgdms_batch").await
            }
        }
    }

    async fn truncate(&mut self, rels: &[Arc<RelInfo>], restart_identity: bool, lsn: Lsn) -> Result<(), TargetError> {
        self.begin_if_needed().await?;
        let list: Vec<String> = rels.iter().map(|r| r.qualified()).collect();
        let restart = if restart_identity { " RESTART IDENTITY" } else { "" };
        let sql = format!("TRUNCATE {}{restart}", list.join(", "));
        match self.client.batch_execute(&sql).await {
            Ok(()) => Ok(()),
            Err(e) => Err(TargetError::Change {
                table: list.join(", "),
                operation: "truncate",
                lsn,
                key: "(all rows)".into(),
                error: classify(e)?,
            }),
        }
    }

    async fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), TargetError> {
        if !self.in_group {
            return Ok(());
        }
        let commit_time = pgdms_proto::Value::TimestampTz(commit_time).to_pg_text().map(|c| c.into_owned());
        let sql = format!(
            "INSERT INTO {CONTROL_SCHEMA}.apply_progress (slot_name, end_lsn, commit_time, updated_at) \
             VALUES ($1, $2::pg_lsn, $3::timestamptz, now()) \
             ON CONFLICT (slot_name) DO UPDATE SET end_lsn = excluded.end_lsn, commit_time = excluded.commit_time, updated_at = now()"
        );
        let stmt = self.statement(&sql, 3).await.map_err(TargetError::Other)?;
        let lsn = end_lsn.to_string();
        self.client.execute(&stmt, &[&self.slot, &lsn, &commit_time]).await.map_err(connection_error)?;
        self.client.batch_execute("COMMIT").await.map_err(connection_error)?;
        self.in_group = false;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), TargetError> {
        if self.in_group {
            self.in_group = false;
            self.client.batch_execute("ROLLBACK").await.map_err(connection_error)?;
        }
        Ok(())
    }
}

impl PostgresTarget {
    /// Replays some tables' changes in order without the exceptions handling of `replay`:
    /// used inside the set-wise pass, whose failure triggers the careful replay anyway.
    async fn replay_quiet(&mut self, batch: &Batch, only: &HashSet<u32>) -> Result<(), String> {
        for c in batch.raw.iter().filter(|c| only.contains(&c.rel.oid)) {
            match self.apply_one(c).await {
                Ok(()) => {}
                Err(ApplyOneError::NoIdentity) => return Err("no replica identity".into()),
                Err(ApplyOneError::Failed(e) | ApplyOneError::Connection(e)) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for PostgresTarget {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn copy_text_escapes() {
        let mut b = BytesMut::new();
        write_copy_value(&mut b, &Val::Text(Bytes::from_static(b"a\tb\\c\nd\re")));
        b.put_u8(b'|');
        write_copy_value(&mut b, &Val::Null);
        b.put_u8(b'|');
        write_copy_value(&mut b, &Val::Bytes(Bytes::from_static(&[0, 255])));
        b.put_u8(b'|');
        write_copy_value(&mut b, &Val::Int8(-42));
        assert_eq!(&b[..], b"a\\tb\\\\c\\nd\\re|\\N|\\\\x00ff|-42");
    }

    #[test]
    fn renumbers_parameters() {
        assert_eq!(renumber("a = $1::int AND b = $2::text AND c = $10", 3), "a = $4::int AND b = $5::text AND c = $13");
    }
}

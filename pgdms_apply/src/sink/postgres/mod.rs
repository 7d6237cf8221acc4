//! A PostgreSQL target (homogeneous: every value lands as the source had it).
//!
//! A batch is applied set-wise: per table, one DELETE, one UPDATE per set of changed
//! columns and one INSERT over arrays of the batch's net changes (see [`plan`]), all sent
//! pipelined with the batch's savepoint, so a batch costs one round trip. A table with many
//! changes goes through COPY instead: keys and rows into temporary staging tables, then
//! DELETE ... USING and UPDATE ... FROM them, inserts copied straight in. Should the
//! set-wise form fail (a unique key broken mid-way, a row missing), the batch is rolled back
//! to its savepoint and replayed change by change in source order, which either succeeds
//! or names the change that cannot be applied.
//!
//! The session runs with `session_replication_role = replica`, as PostgreSQL's own apply
//! worker does: triggers and foreign keys of the target do not fire for replicated changes
//! (those marked ENABLE ALWAYS or REPLICA do). It acts as the target role, and writes each
//! table and replays each object's DDL as the object's owner (see [`roles`]), so that the
//! source's owners' code never runs with more than their rights.

pub(crate) mod control;
mod copy;
mod ddl;
mod plan;
mod report;
pub(crate) mod roles;

use super::control::{ControlStore, LoadedTable, MigrationRecord, Phase, SuspendedTable};
use super::{CopyPath, LoadTarget, OnError, SourceSettings, Target, TargetError};
use crate::model::batch::{Batch, NetOp, NetTable, TableBatch, TableMode};
use crate::model::Row;
use crate::model::{Change, RelInfo, Val};
use crate::pgconn::client::{error_text, SqlConnection};
use crate::pgconn::ConnInfo;
use crate::sql::{quote_ident, quote_literal};
use bytes::BytesMut;
use control::PgControl;
use futures_util::future::join_all;
use futures_util::SinkExt;
use pgdms_proto::ddl::DdlObject;
use pgdms_proto::Ddl;
use pgdms_proto::Lsn;
use plan::{
    change_statement, column_clause, column_list, net_statements, split_net, unnest_safe, written_columns, NetSplit,
    NoIdentity, Planned,
};
use roles::{Object, RoleError, Roles};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Statement;

/// Prepared statements kept per connection at most.
const MAX_STATEMENTS: usize = 2_000;

/// Tables of a batch applied through COPY, with their net changes.
type CopiedTables<'b> = Vec<(&'b TableBatch, &'b NetTable)>;

/// Tables with more net changes than this in a batch go through COPY and staging tables
/// rather than array parameters.
const UNNEST_MAX_ROWS: usize = 5_000;

/// pgdms-apply's own schema on a PostgreSQL target. Never migrated from a source (a source
/// can be another migration's target): the source's catalog queries take this name as a
/// parameter and leave it out, `pg_dump` excludes it, and the apply passes over its changes and DDL.
pub const CONTROL_SCHEMA: &str = "pgdms_apply";

pub struct PostgresTarget {
    conn: SqlConnection,
    slot: String,
    on_error: OnError,
    synchronous_commit: String,
    in_group: bool,
    /// The last batch's savepoint is still open. It is released only with the next batch's
    /// statements (or by COMMIT): a statement that affected the wrong number of rows does not
    /// abort the transaction, so the batch must stay undoable until its results are checked.
    batch_savepoint: bool,
    statements: HashMap<String, Statement>,
    staging: HashSet<String>,
    /// `--target-role`: the role to act as, if not the login role.
    target_role: Option<String>,
    /// The session's search_path as set up, restored before each batch and commit (code of
    /// the source's owners may have changed it, and the statements' names resolve through it).
    search_path: String,
    /// Who the session acts as (set up by `start`).
    roles: Option<Roles>,
    /// Where it connects (for the full load's own sessions).
    info: ConnInfo,
}

fn connection_error(e: tokio_postgres::Error) -> TargetError {
    TargetError::Transient(e.to_string())
}

/// A tokio-postgres error: a lost connection is transient, anything else is the statement's.
fn classify(e: tokio_postgres::Error) -> Result<String, TargetError> {
    if is_alarm(&e) {
        return Err(TargetError::Tampered(error_text_marking_alarm(&e)));
    }
    // Lost: closed, or failing on the socket. A client-side error (a value that does not
    // serialize) is no reason to reconnect and try again forever.
    let io = std::error::Error::source(&e).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
    if e.is_closed() || io {
        return Err(connection_error(e));
    }
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            if crate::error::sqlstate_connection_lost(code) {
                return Err(TargetError::Transient(db.to_string()));
            }
            Ok(error_text(&e))
        }
        None => Ok(e.to_string()),
    }
}

/// A SQL session on the target that acts as the target role (`role`, or the login role;
/// never a superuser), for the migration's own work: its control tables, the full load
/// (with `replica`: `session_replication_role = replica` first, set with the login's
/// right), sequences, validation.
pub async fn open_session(
    info: &ConnInfo,
    role: Option<&str>,
    application: &str,
    replica: bool,
) -> Result<(SqlConnection, Roles), TargetError> {
    let conn = crate::pgconn::client::connect(info, application).await.map_err(|e| match e {
        crate::pgconn::client::ConnectError::Tls(t) => TargetError::Refused(t),
        other => TargetError::Transient(other.to_string()),
    })?;
    if replica {
        conn.client.batch_execute("SET session_replication_role = replica").await.map_err(|e| match classify(e) {
            Ok(m) => TargetError::Refused(format!(
                "{m}: the target login must be allowed to set session_replication_role \
                 (on PostgreSQL 15+: GRANT SET ON PARAMETER session_replication_role TO <role>)"
            )),
            Err(c) => c,
        })?;
    }
    let roles = Roles::assume(&conn.client, role).await.map_err(role_error)?;
    Ok((conn, roles))
}

/// Marks the error text of a gate that found the session tampered with (see `roles`): the
/// apply must not go on in this session, nor pass over the change.
const ALARM_MARK: &str = "the session was tampered with: ";

fn is_alarm(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == roles::GATE_ALARM)
}

fn error_text_marking_alarm(e: &tokio_postgres::Error) -> String {
    if is_alarm(e) {
        format!("{ALARM_MARK}{}", error_text(e))
    } else {
        error_text(e)
    }
}

/// The rows a gate call says its statement affected; no row: the gate is not what pgdms made.
pub fn gate_count(row: Option<&tokio_postgres::Row>) -> Result<u64, String> {
    match row {
        Some(row) => row.try_get::<_, i64>(0).map(|n| n as u64).map_err(|e| e.to_string()),
        None => Err("the gate that writes as the table's owner was altered (it is no longer that owner's \
                     SECURITY DEFINER function with pgdms's settings): refused; see README, \"Target role\""
            .into()),
    }
}

/// Why a DDL replay failed, or the connection error that ended it.
fn ddl_error(e: ddl::DdlError) -> Result<String, TargetError> {
    match e {
        ddl::DdlError::Target(e) => classify(e),
        other => Ok(other.to_string()),
    }
}

/// Who the session acts as could not be settled: a refusal ends the apply (retrying would
/// not change it); a lost connection is retried.
/// Why a TRUNCATE of tables of several owners is refused.
pub const TRUNCATE_TRIGGER_REFUSED: &str = "a trigger of theirs fires for TRUNCATE, which would run as the target \
    role: give the tables one owner on the target, or let that trigger fire on the origin only (ALTER TABLE ... \
    ENABLE TRIGGER, not ALWAYS or REPLICA)";

/// Tables of several owners truncated in one statement are truncated as the target role
/// (one gate runs as one owner). That is refused while a trigger on one whose owner is
/// neither the target role nor a superuser fires for it (ALWAYS or REPLICA: the session is
/// a replica's): `Some` names it. The tables are locked first, inside the caller's
/// transaction, so that no trigger can be made between this check and the TRUNCATE.
pub async fn lock_for_truncate(
    client: &tokio_postgres::Client,
    tables: &[String],
) -> Result<Option<String>, tokio_postgres::Error> {
    let list: Vec<String> = tables.iter().map(|t| format!("ONLY {t}")).collect();
    client.batch_execute(&format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", list.join(", "))).await?;
    let row = client
        .query_opt(
            "SELECT pg_catalog.format('trigger %I on %s', t.tgname, t.tgrelid::pg_catalog.regclass)
               FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
              WHERE t.tgrelid = ANY (SELECT pg_catalog.to_regclass(n) FROM pg_catalog.unnest($1::pg_catalog.text[]) n)
                AND t.tgenabled IN ('A', 'R') AND (t.tgtype::int & 32) <> 0
                AND c.relowner <> (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
                AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = c.relowner)
              LIMIT 1",
            &[&tables],
        )
        .await?;
    row.map(|r| r.try_get(0)).transpose()
}

/// A reply's column that does not read as its type: a refusal (asking again would not
/// change it), not a lost connection.
fn unreadable(e: tokio_postgres::Error) -> TargetError {
    TargetError::Refused(format!("target: {e}"))
}

pub fn role_error(e: RoleError) -> TargetError {
    match e {
        RoleError::Sql(e) => match classify(e) {
            Ok(m) => TargetError::Refused(format!("could not settle which role writes the target: {m}")),
            Err(c) => c,
        },
        refused => TargetError::Refused(refused.to_string()),
    }
}

impl PostgresTarget {
    pub async fn connect(
        info: &ConnInfo,
        on_error: OnError,
        synchronous_commit: &str,
        target_role: Option<&str>,
    ) -> Result<Self, TargetError> {
        use crate::pgconn::client::ConnectError;
        let conn = crate::pgconn::client::connect(info, "pgdms-apply").await.map_err(|e| match e {
            ConnectError::Tls(t) => TargetError::Config(t),
            // The server answered, and not with "not now": no such database, no such role, a
            // wrong password. Trying again gives the same answer.
            ConnectError::Connect { ref error, .. }
                if error.code().is_some_and(|c| !crate::error::sqlstate_connection_lost(c.code())) =>
            {
                TargetError::Config(e.to_string())
            }
            other => TargetError::Transient(other.to_string()),
        })?;
        Ok(PostgresTarget {
            conn,
            info: info.clone(),
            slot: String::new(),
            on_error,
            synchronous_commit: synchronous_commit.to_string(),
            in_group: false,
            batch_savepoint: false,
            statements: HashMap::new(),
            staging: HashSet::new(),
            target_role: target_role.map(str::to_string),
            roles: None,
            search_path: String::new(),
        })
    }

    fn roles(&mut self) -> Result<&mut Roles, TargetError> {
        self.roles.as_mut().ok_or_else(|| TargetError::Refused("the target session was not started".into()))
    }

    /// The role to write `rel` as (None: the target role), looked up once per table.
    async fn table_role(&mut self, qualified: &str) -> Result<Option<String>, TargetError> {
        let client = &self.conn.client;
        let roles =
            self.roles.as_mut().ok_or_else(|| TargetError::Refused("the target session was not started".into()))?;
        roles.owner(client, Object::Table, qualified).await.map_err(role_error)
    }

    /// The role a DDL record is replayed as: the owner of the object it changes (for an
    /// object it creates, of the partitioned table or the schema it goes into), when the
    /// target role may become it.
    async fn ddl_role(&mut self, record: &Ddl) -> Result<Option<String>, TargetError> {
        let q = |schema: &str, name: &str| format!("{}.{}", quote_ident(schema), quote_ident(name));
        let objects: Vec<(Object, String)> = match &record.object {
            DdlObject::Table { before, after } => {
                let mut v: Vec<(Object, String)> =
                    [before, after].into_iter().flatten().map(|d| (Object::Table, q(&d.schema, &d.name))).collect();
                // A new table: as the partitioned table's owner, or the schema's.
                if let Some(a) = after {
                    if let Some(p) = &a.partition_of {
                        v.push((Object::Table, q(&p.schema, &p.name)));
                    }
                    v.push((Object::Schema, quote_ident(&a.schema)));
                }
                v
            }
            DdlObject::Type { before, after } => {
                let mut v: Vec<(Object, String)> =
                    [before, after].into_iter().flatten().map(|d| (Object::Type, q(&d.schema, &d.name))).collect();
                v.extend(after.iter().map(|a| (Object::Schema, quote_ident(&a.schema))));
                v
            }
            DdlObject::Schema { before, after } => {
                [before, after].into_iter().flatten().map(|d| (Object::Schema, quote_ident(&d.name))).collect()
            }
            DdlObject::Rewrite { .. } | DdlObject::CaptureFailed { .. } => Vec::new(),
        };
        let client = &self.conn.client;
        let roles =
            self.roles.as_mut().ok_or_else(|| TargetError::Refused("the target session was not started".into()))?;
        for (kind, name) in objects {
            if let Some(role) = roles.lookup(client, kind, &name).await.map_err(role_error)? {
                return Ok(role);
            }
        }
        Ok(None)
    }

    /// The session settings the statements depend on, set again: code of the source's owners
    /// that ran in an earlier statement (a trigger, a check) may have changed them, and a
    /// search_path of its choosing would resolve the names of later statements, a
    /// standard_conforming_strings = off would change how their texts parse, a
    /// synchronous_commit = off would make the commit that the source is told of not durable.
    fn settings_pinned(&self) -> Planned {
        Planned {
            gated: false,
            sql: "SELECT pg_catalog.set_config('search_path', $1, false), \
                         pg_catalog.set_config('standard_conforming_strings', 'on', false), \
                         pg_catalog.set_config('synchronous_commit', $2, false)"
                .into(),
            params: vec![Some(self.search_path.clone()), Some(self.synchronous_commit.clone())],
            expect: None,
        }
    }

    /// `steps` as they run for a table written as `role`: through its gate when that is
    /// another owner (made by `ensure_gate` before), as they are otherwise.
    fn as_role(&self, role: Option<&str>, steps: Vec<Planned>) -> Result<Vec<Planned>, String> {
        let Some(role) = role else { return Ok(steps) };
        let call = self.known_gate(role)?;
        steps.into_iter().map(|s| s.through_gate(&call)).collect()
    }

    /// The gate of `owner` made before in this transaction's lifetime.
    fn known_gate(&self, owner: &str) -> Result<String, String> {
        self.roles
            .as_ref()
            .and_then(|r| r.known_gate(owner))
            .ok_or_else(|| format!("no gate for role {} was made", quote_ident(owner)))
    }

    /// Makes `owner`'s gate if this session has not (see `roles`).
    async fn ensure_gate(&mut self, owner: &str) -> Result<String, TargetError> {
        let own_transaction = !self.in_group;
        let client = &self.conn.client;
        let roles =
            self.roles.as_mut().ok_or_else(|| TargetError::Refused("the target session was not started".into()))?;
        roles.gate(client, owner, own_transaction).await.map_err(|e| match e {
            RoleError::Sql(e) => match classify(e) {
                Ok(m) => TargetError::Refused(format!(
                    "could not make the gate that writes as role {}: {m} (the target role must be able to SET ROLE \
                     to it and to create schema pgdms_gate)",
                    quote_ident(owner)
                )),
                Err(c) => c,
            },
            refused => TargetError::Refused(refused.to_string()),
        })
    }

    async fn open_group(&mut self) -> Result<(), TargetError> {
        if !self.in_group {
            self.run("BEGIN").await?;
            self.in_group = true;
        }
        Ok(())
    }

    async fn run(&self, sql: &str) -> Result<(), TargetError> {
        match self.conn.client.batch_execute(sql).await {
            Ok(()) => Ok(()),
            Err(e) => Err(TargetError::Refused(format!("{}: {sql}", classify(e)?))),
        }
    }

    /// Sends statements pipelined (preparing, also pipelined, those not cached yet); on
    /// failure, the index of the first failing statement and why.
    async fn pipeline(&mut self, steps: &[Planned]) -> Result<(), (usize, String)> {
        let uncached = |cache: &HashMap<String, Statement>| {
            let mut missing: Vec<(usize, Vec<Type>)> = Vec::new();
            for (i, s) in steps.iter().enumerate() {
                if !cache.contains_key(&s.sql) && !missing.iter().any(|(m, _)| steps[*m].sql == s.sql) {
                    missing.push((i, vec![Type::TEXT; s.params.len()]));
                }
            }
            missing
        };
        let mut missing = uncached(&self.statements);
        if self.statements.len() + missing.len() > MAX_STATEMENTS {
            // Under REPLICA IDENTITY FULL every set of changed columns is its own statement:
            // keep the cache (and the server's prepared statements) bounded.
            self.statements.clear();
            missing = uncached(&self.statements);
        }
        let prepared =
            join_all(missing.iter().map(|(i, types)| self.conn.client.prepare_typed(&steps[*i].sql, types))).await;
        for ((i, _), p) in missing.iter().zip(prepared) {
            match p {
                Ok(stmt) => {
                    self.statements.insert(steps[*i].sql.clone(), stmt);
                }
                Err(e) => return Err((*i, error_text(&e))),
            }
        }
        let stmts: Vec<&Statement> = steps.iter().map(|s| &self.statements[&s.sql]).collect();
        let params: Vec<Vec<&(dyn ToSql + Sync)>> =
            steps.iter().map(|s| s.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()).collect();
        let client = &self.conn.client;
        let results = join_all(stmts.iter().zip(&params).zip(steps).map(|((st, p), s)| async move {
            if s.gated {
                Ok(gate_count(client.query(*st, p).await?.first()))
            } else {
                client.execute(*st, p).await.map(Ok)
            }
        }))
        .await;
        for (i, (r, s)) in results.into_iter().zip(steps).enumerate() {
            let r = match r {
                Ok(Err(refused)) => return Err((i, refused)),
                Ok(Ok(n)) => Ok(n),
                Err(e) => Err(e),
            };
            match r {
                Ok(n) if s.expect.is_none_or(|e| e == n) => {}
                Ok(0) if s.expect == Some(1) => return Err((i, "the row was not found on the target".into())),
                Ok(n) => return Err((i, format!("{n} rows affected where {} were expected", s.expect.unwrap_or(0)))),
                Err(e) => return Err((i, error_text_marking_alarm(&e))),
            }
        }
        Ok(())
    }

    /// The temporary staging table for `rel` (its non-generated columns, with the target's
    /// types), created on first use. Named after the column layout, so a table whose
    /// columns changed gets a new one.
    async fn staging_table(&mut self, rel: &RelInfo) -> Result<String, TargetError> {
        let cols = written_columns(rel);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let layout: Vec<(&String, &String)> =
            cols.iter().map(|&i| (&rel.columns[i].name, &rel.columns[i].type_sql)).collect();
        std::hash::Hash::hash(&(rel.oid, layout), &mut h);
        let owner = self.known_role(rel);
        // Named in pg_temp: no search_path can put a look-alike first. For another owner's
        // table, the columns are text and its statements cast them: the target role fills the
        // table, and the owner's types (domains with checks) must not run their code then.
        let kind = if owner.is_some() { "t" } else { "" };
        let name = format!(
            "pg_temp.{}",
            quote_ident(&format!("pgdms_stage_{}_{:x}{kind}", rel.oid, std::hash::Hasher::finish(&h)))
        );
        if !self.staging.contains(&name) {
            // Outside a group, created in a transaction of its own; inside one, it is gone if
            // the group rolls back, which is why `rollback` forgets the names. The table's
            // owner, who writes the table from it, may read it.
            let create = match &owner {
                None => format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {name} AS SELECT {} FROM {} WITH NO DATA",
                    column_list(rel, &cols),
                    rel.qualified()
                ),
                Some(_) => format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {name} ({})",
                    cols.iter()
                        .map(|&i| format!("{} pg_catalog.text", quote_ident(&rel.columns[i].name)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let mut steps = vec![Planned::utility(&create)];
            if let Some(owner) = &owner {
                steps.push(Planned::utility(&format!("GRANT SELECT ON {name} TO {}", quote_ident(owner))));
            }
            if !self.in_group {
                steps.insert(0, Planned::utility("BEGIN"));
                steps.push(Planned::utility("COMMIT"));
            }
            self.pipeline(&steps).await.map_err(|(_, why)| TargetError::Refused(why))?;
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
        let sink = self.conn.client.copy_in(&format!("COPY {table}{columns} FROM STDIN")).await?;
        futures_util::pin_mut!(sink);
        let mut buf = BytesMut::with_capacity(256 * 1024);
        for row in rows {
            copy::write_row(&mut buf, row);
            if buf.len() >= 192 * 1024 {
                sink.send(buf.split().freeze()).await?;
            }
        }
        if !buf.is_empty() {
            sink.send(buf.freeze()).await?;
        }
        sink.as_mut().finish().await
    }

    /// The set-wise form of a table with many net changes, through COPY.
    /// Runs a statement on a table as `role` (through its gate), or as the target role; the
    /// rows it affected.
    async fn execute_as(&self, role: Option<&str>, sql: &str) -> Result<u64, String> {
        let [step] = <[Planned; 1]>::try_from(self.as_role(role, vec![Planned::utility(sql)])?)
            .map_err(|_| "one statement".to_string())?;
        if !step.gated {
            return self.conn.client.execute(sql, &[]).await.map_err(|e| error_text(&e));
        }
        let params: Vec<&(dyn ToSql + Sync)> = step.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows =
            self.conn.client.query(step.sql.as_str(), &params).await.map_err(|e| error_text_marking_alarm(&e))?;
        gate_count(rows.first())
    }

    /// The set-wise form of a table with many net changes, through COPY: the staging table
    /// filled as the target role, the table written as `role`.
    async fn apply_net_copy(&mut self, t: &TableBatch, net: &NetTable) -> Result<(), String> {
        let role = self.known_role(&t.rel);
        let role = role.as_deref();
        let rel = &t.rel;
        let written = written_columns(rel);
        let target = rel.qualified();
        let NetSplit { deletes, updates, inserts } = split_net(t, net);
        // A staged value: cast from text in another owner's staging table (see staging_table).
        let staged = |i: usize| {
            let c = quote_ident(&rel.columns[i].name);
            if role.is_some() {
                format!("s.{c}::{}", rel.columns[i].type_sql)
            } else {
                format!("s.{c}")
            }
        };
        let key_match = t
            .key_cols
            .iter()
            .map(|&i| format!("t.{} = {}", quote_ident(&rel.columns[i].name), staged(i)))
            .collect::<Vec<_>>()
            .join(" AND ");
        if !deletes.is_empty() || !updates.is_empty() {
            let stage = self.staging_table(rel).await.map_err(|e| e.to_string())?;
            let qstage = stage;
            if !deletes.is_empty() {
                self.conn.client.batch_execute(&format!("TRUNCATE {qstage}")).await.map_err(|e| error_text(&e))?;
                let key_list = column_clause(rel, &t.key_cols);
                self.copy_rows(&qstage, &key_list, deletes.iter().map(|k| k.iter().collect()))
                    .await
                    .map_err(|e| error_text(&e))?;
                let sql = format!("DELETE FROM ONLY {target} t USING {qstage} s WHERE {key_match}");
                let n = self.execute_as(role, &sql).await?;
                if n != deletes.len() as u64 {
                    // The server's count may exceed the rows staged (a key the target holds
                    // twice): no subtraction that could overflow.
                    return Err(match (deletes.len() as u64).checked_sub(n) {
                        Some(missing) => format!("{missing} of {} rows to delete were not found", deletes.len()),
                        None => format!("{n} rows deleted where {} were expected", deletes.len()),
                    });
                }
            }
            for (set, rows) in &updates {
                self.conn.client.batch_execute(&format!("TRUNCATE {qstage}")).await.map_err(|e| error_text(&e))?;
                let list = column_clause(rel, &written);
                // Key values from the op's key: under REPLICA IDENTITY FULL the row marks
                // every column that kept its value, keys included, as unchanged.
                let staged_rows = rows.iter().map(|(key, r)| {
                    written
                        .iter()
                        .map(|&i| t.key_cols.iter().position(|&k| k == i).map_or(&r[i], |p| &key[p]))
                        .collect()
                });
                self.copy_rows(&qstage, &list, staged_rows).await.map_err(|e| error_text(&e))?;
                let assignments: Vec<String> =
                    set.iter().map(|&i| format!("{} = {}", quote_ident(&rel.columns[i].name), staged(i))).collect();
                let sql =
                    format!("UPDATE ONLY {target} t SET {} FROM {qstage} s WHERE {key_match}", assignments.join(", "));
                let n = self.execute_as(role, &sql).await?;
                if n != rows.len() as u64 {
                    return Err(format!("{n} rows updated where {} were expected", rows.len()));
                }
            }
        }
        if !inserts.is_empty() {
            let list = column_clause(rel, &written);
            let rows = inserts.iter().map(|r| written.iter().map(|&i| &r[i]).collect());
            if role.is_none() {
                self.copy_rows(&target, &list, rows).await.map_err(|e| error_text(&e))?;
            } else {
                // COPY cannot go through a gate: into the staging table, then from it.
                let stage = self.staging_table(rel).await.map_err(|e| e.to_string())?;
                self.conn.client.batch_execute(&format!("TRUNCATE {stage}")).await.map_err(|e| error_text(&e))?;
                let copied = self.copy_rows(&stage, &list, rows).await.map_err(|e| error_text(&e))?;
                let values: Vec<String> = written.iter().map(|&i| staged(i)).collect();
                let sql = format!(
                    "INSERT INTO {target}{list}{} SELECT {} FROM {stage} s",
                    plan::overriding(rel),
                    values.join(", ")
                );
                let n = self.execute_as(role, &sql).await?;
                if n != copied {
                    return Err(format!("{n} rows inserted where {copied} were expected"));
                }
            }
        }
        Ok(())
    }

    /// Applies a batch's changes one by one in source order, each its own round trip, so
    /// that a failure names its change. With --on-error=log a failing change goes to the
    /// exceptions table and the rest still apply.
    async fn replay(&mut self, batch: &Batch) -> Result<(), TargetError> {
        let log = self.on_error == OnError::Log;
        // With --on-error=log each change has a savepoint, released (like the batch's) only
        // once its result was checked, together with the next one's.
        let mut change_savepoint = false;
        for c in &batch.raw {
            let (table, operation, lsn) = (c.rel.qualified(), c.operation(), c.lsn);
            if log {
                // Its own round trip: preparing the change's statement can fail and abort the
                // transaction, which must then roll back to this change's savepoint, not to
                // the previous change's.
                let mut savepoint = Vec::with_capacity(2);
                if change_savepoint {
                    savepoint.push(Planned::utility("RELEASE SAVEPOINT pgdms_change"));
                }
                savepoint.push(Planned::utility("SAVEPOINT pgdms_change"));
                self.pipeline(&savepoint).await.map_err(|(_, why)| TargetError::Transient(why))?;
                change_savepoint = true;
            }
            let outcome = match change_statement(c) {
                Ok(None) => Ok(()),
                Ok(Some(stmt)) => {
                    // As the table's owner.
                    let role = self.roles()?.known_table_owner(&table).map(str::to_string);
                    match self.as_role(role.as_deref(), vec![stmt]) {
                        Ok(steps) => self.pipeline(&steps).await.map_err(|(_, why)| why),
                        Err(why) => Err(why),
                    }
                }
                Err(NoIdentity) if !log => return Err(TargetError::NoIdentity { table, operation, lsn }),
                Err(NoIdentity) => {
                    Err("the source logs no key for this table's rows: set REPLICA IDENTITY FULL or add a primary key"
                        .into())
                }
            };
            if let Err(why) = outcome {
                if self.conn.client.is_closed() {
                    return Err(TargetError::Transient(why));
                }
                // Not a change to pass over: the session itself is not to be trusted any more.
                if why.starts_with(ALARM_MARK) {
                    return Err(TargetError::Refused(why));
                }
                if !log {
                    return Err(TargetError::Change {
                        table,
                        source_oid: Some(c.rel.oid),
                        operation,
                        lsn,
                        key: report::describe_key(c),
                        error: why,
                    });
                }
                self.run("ROLLBACK TO SAVEPOINT pgdms_change").await?;
                tracing::warn!(%table, operation, %lsn, key = %report::describe_key(c), error = %why, "change recorded in the exceptions table");
                self.record_exception(c, &why).await?;
            }
        }
        if change_savepoint {
            self.run("RELEASE SAVEPOINT pgdms_change").await?;
        }
        Ok(())
    }

    async fn record_exception(&mut self, c: &Change, error: &str) -> Result<(), TargetError> {
        self.record_exception_row(
            c.rel.qualified(),
            c.operation(),
            report::key_json(c).to_string(),
            c.lsn,
            Some(c.xid),
            error,
            report::change_json(c).to_string(),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_exception_row(
        &mut self,
        table: String,
        operation: &str,
        key_json: String,
        lsn: Lsn,
        xid: Option<u32>,
        error: &str,
        change_json: String,
    ) -> Result<(), TargetError> {
        let step = Planned {
            gated: false,
            sql: format!(
                "INSERT INTO {CONTROL_SCHEMA}.apply_exceptions (slot_name, table_name, operation, key, lsn, xid, error, change) \
                 VALUES ($1, $2, $3, $4::jsonb, $5::pg_lsn, $6::bigint, $7, $8::jsonb)"
            ),
            params: vec![
                Some(self.slot.clone()),
                Some(table),
                Some(operation.to_string()),
                Some(key_json),
                Some(lsn.to_string()),
                xid.map(|x| x.to_string()),
                Some(error.to_string()),
                Some(change_json),
            ],
            expect: Some(1),
        };
        self.pipeline(&[step])
            .await
            .map_err(|(_, why)| TargetError::Refused(format!("could not record an exception: {why}")))
    }

    /// The statements of a batch's set-wise form, except tables that go through COPY.
    /// The role a table of the batch is written as (looked up by `apply` before).
    fn known_role(&self, rel: &RelInfo) -> Option<String> {
        self.roles.as_ref().and_then(|r| r.known_table_owner(&rel.qualified())).map(str::to_string)
    }

    fn plan_batch<'b>(&self, batch: &'b Batch) -> Result<(Vec<Planned>, CopiedTables<'b>), String> {
        let mut steps = Vec::new();
        let mut copied = Vec::new();
        for t in &batch.tables {
            let table_steps = match &t.mode {
                TableMode::Net(net)
                    if unnest_safe(&t.rel) && net.ops().count() + net.appended().len() <= UNNEST_MAX_ROWS =>
                {
                    net_statements(t, net)
                }
                TableMode::Net(net) => {
                    copied.push((t, net));
                    continue;
                }
                TableMode::Sequential => {
                    let mut v = Vec::new();
                    for c in batch.raw_of(t.rel.oid) {
                        v.extend(change_statement(c).map_err(|NoIdentity| "a change without a key".to_string())?);
                    }
                    v
                }
            };
            steps.extend(self.as_role(self.known_role(&t.rel).as_deref(), table_steps)?);
        }
        Ok((steps, copied))
    }

    /// The set-wise pass of a batch, inside its savepoint.
    async fn apply_set_wise(&mut self, batch: &Batch) -> Result<(), String> {
        let (steps, copied) = self.plan_batch(batch)?;
        for (t, net) in &copied {
            self.apply_net_copy(t, net).await?;
        }
        self.pipeline(&steps).await.map_err(|(_, why)| why)
    }
}

impl Target for PostgresTarget {
    async fn start(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        self.slot = slot.to_string();
        // What the statements' texts depend on, then the one right beyond the owners' the
        // apply needs, then the role everything else runs as.
        let settings = format!(
            "SET standard_conforming_strings = on;
             SET client_min_messages = warning;
             SET TimeZone = 'UTC';
             SET extra_float_digits = 3;
             SET bytea_output = hex;
             SET lc_monetary = 'C';
             SET synchronous_commit = {};
             SET session_replication_role = replica;",
            quote_literal(&self.synchronous_commit)
        );
        self.conn.client.batch_execute(&settings).await.map_err(|e| match classify(e) {
            Ok(m) if m.contains("session_replication_role") => TargetError::Refused(format!(
                "{m}: pgdms-apply needs a target login that may set session_replication_role \
                 (on PostgreSQL 15+: GRANT SET ON PARAMETER session_replication_role TO <role>; before 15, a superuser \
                 login with --target-role)"
            )),
            Ok(m) => TargetError::Refused(m),
            Err(c) => c,
        })?;
        self.roles = Some(Roles::assume(&self.conn.client, self.target_role.as_deref()).await.map_err(role_error)?);
        let path = self.conn.client.query_one("SELECT current_setting('search_path')", &[]).await;
        self.search_path = path.map_err(connection_error)?.try_get(0).map_err(unreadable)?;
        let mut store = PgControl(&self.conn.client);
        store.prepare().await?;
        store.applied(slot).await
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
        // Who writes each table (looked up once per table and session), and the gates of
        // owners other than the target role (made before the batch's savepoint).
        for t in &batch.tables {
            if let Some(owner) = self.table_role(&t.rel.qualified()).await? {
                self.ensure_gate(&owner).await?;
            }
        }
        // Staging tables of the tables going through COPY exist before the savepoint.
        for t in &batch.tables {
            if let TableMode::Net(net) = &t.mode {
                let copied = !unnest_safe(&t.rel) || net.ops().count() + net.appended().len() > UNNEST_MAX_ROWS;
                // Another owner's table takes its inserts through the staging table too.
                let staged =
                    net.ops().any(|(_, op)| !matches!(op, NetOp::Insert(_))) || self.known_role(&t.rel).is_some();
                if copied && staged {
                    self.staging_table(&t.rel).await?;
                }
            }
        }
        let mut opening = Vec::with_capacity(2);
        if !self.in_group {
            opening.push(Planned::utility("BEGIN"));
        } else if self.batch_savepoint {
            opening.push(Planned::utility("RELEASE SAVEPOINT pgdms_batch"));
        }
        // Pinned before the savepoint, so that a rollback to it keeps them pinned.
        opening.push(self.settings_pinned());
        opening.push(Planned::utility("SAVEPOINT pgdms_batch"));
        if let Err((_, why)) = self.pipeline(&opening).await {
            return Err(TargetError::Transient(why));
        }
        self.in_group = true;
        self.batch_savepoint = true;
        if let Err(why) = self.apply_set_wise(batch).await {
            if self.conn.client.is_closed() {
                return Err(TargetError::Transient(why));
            }
            if why.starts_with(ALARM_MARK) {
                return Err(TargetError::Refused(why));
            }
            tracing::debug!(%why, changes = batch.len(), "set-wise apply failed; replaying the batch change by change");
            self.run("ROLLBACK TO SAVEPOINT pgdms_batch").await?;
            self.replay(batch).await?;
        }
        Ok(())
    }

    async fn ddl(&mut self, record: &Ddl, lsn: Lsn) -> Result<(), TargetError> {
        self.open_group().await?;
        if self.batch_savepoint {
            self.run("RELEASE SAVEPOINT pgdms_batch").await?;
            self.batch_savepoint = false;
        }
        // Prepared statements name columns and types that may be gone now, and objects may
        // have come, gone or been renamed.
        self.statements.clear();
        let acting = self.ddl_role(record).await?;
        let gate = match &acting {
            Some(owner) => Some(self.ensure_gate(owner).await?),
            None => None,
        };
        self.roles()?.forget();
        let what = || format!("{} {}", record.command_tag, record.object_identity);
        let failure = match &record.object {
            DdlObject::CaptureFailed { error } => Some(format!(
                "the source could not capture a DDL command ({error}), so the target cannot follow it; \
                 compare the definitions and fix the target by hand, then pass over it with --on-error=log"
            )),
            _ => {
                // With only pg_catalog on the path, the target's catalog describes types and
                // defaults as the source's DDL records do (qualified). Only for the replay:
                // the set-wise statements need the operators of extension types (citext...)
                // that the session's own path finds. Rolling back to the savepoint restores it.
                self.run("SAVEPOINT pgdms_ddl").await?;
                let previous = self.conn.client.query_one("SELECT current_setting('search_path')", &[]).await;
                let previous: String =
                    previous.map_err(|e| TargetError::Transient(e.to_string()))?.try_get(0).map_err(unreadable)?;
                self.run(
                    "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false), \
                            pg_catalog.set_config('standard_conforming_strings', 'on', false)",
                )
                .await?;
                // As the object's owner: through its gate.
                match ddl::replay(&self.conn.client, record, gate.as_deref()).await {
                    Ok(done) => {
                        let restore =
                            self.conn.client.execute("SELECT set_config('search_path', $1, false)", &[&previous]).await;
                        restore.map_err(|e| TargetError::Transient(e.to_string()))?;
                        self.run("RELEASE SAVEPOINT pgdms_ddl").await?;
                        for statement in &done.statements {
                            tracing::info!(%lsn, ddl = %what(), %statement, "DDL replayed");
                        }
                        for warning in &done.warnings {
                            tracing::warn!(%lsn, ddl = %what(), "{warning}");
                        }
                        if let Some((table, reason)) = done.reload {
                            tracing::warn!(%lsn, %table, %reason, "the source rewrote the table; its rows on the target may differ: flagged for reload in {CONTROL_SCHEMA}.apply_reload_needed");
                            let step = Planned {
                                gated: false,
                                sql: format!("INSERT INTO {CONTROL_SCHEMA}.apply_reload_needed (slot_name, table_name, lsn, reason) VALUES ($1, $2, $3::pg_lsn, $4)"),
                                params: vec![Some(self.slot.clone()), Some(table), Some(lsn.to_string()), Some(reason)],
                                expect: Some(1),
                            };
                            self.pipeline(&[step]).await.map_err(|(_, why)| TargetError::Refused(why))?;
                        }
                        None
                    }
                    Err(failed) => {
                        let why = ddl_error(failed.error)?;
                        self.run("ROLLBACK TO SAVEPOINT pgdms_ddl").await?;
                        let who = acting.as_deref().unwrap_or(self.roles()?.target()).to_string();
                        Some(format!("{why}; statement (as role {}): {}", quote_ident(&who), failed.statement))
                    }
                }
            }
        };
        let Some(error) = failure else { return Ok(()) };
        if self.on_error == OnError::Stop {
            return Err(TargetError::Change {
                table: record.object_identity.clone(),
                source_oid: None,
                operation: "ddl",
                lsn,
                key: record.command_tag.clone(),
                error,
            });
        }
        tracing::warn!(%lsn, ddl = %what(), %error, "DDL recorded in the exceptions table");
        let change = serde_json::to_string(record).unwrap_or_default();
        self.record_exception_row(
            record.object_identity.clone(),
            "ddl",
            serde_json::json!({ "command_tag": record.command_tag }).to_string(),
            lsn,
            None,
            &error,
            change,
        )
        .await
    }

    async fn ensure_table(&mut self, rel: &RelInfo, lsn: Lsn) -> Result<(), TargetError> {
        self.open_group().await?;
        // As the owner of the schema it goes into, as a table a DDL record creates.
        let client = &self.conn.client;
        let roles =
            self.roles.as_mut().ok_or_else(|| TargetError::Refused("the target session was not started".into()))?;
        let owner = roles.owner(client, Object::Schema, &quote_ident(&rel.schema)).await.map_err(role_error)?;
        let gate = match &owner {
            Some(owner) => Some(self.ensure_gate(owner).await?),
            None => None,
        };
        match ddl::ensure_table(&self.conn.client, rel, gate.as_deref()).await {
            Ok(true) => {
                tracing::warn!(table = %rel.qualified(), %lsn, "created on the target from its relation record: its rows came before its DDL (CREATE TABLE AS in a large transaction)");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(failed) => Err(TargetError::Change {
                table: rel.qualified(),
                source_oid: None,
                operation: "ddl",
                lsn,
                key: "CREATE TABLE".into(),
                error: format!("{}; statement: {}", ddl_error(failed.error)?, failed.statement),
            }),
        }
    }

    async fn truncate(&mut self, rels: &[Arc<RelInfo>], restart_identity: bool, lsn: Lsn) -> Result<(), TargetError> {
        self.open_group().await?;
        // One statement (tables referencing each other go together), as their owner when
        // they have one owner, else as the target role.
        let mut owners = HashSet::new();
        for r in rels {
            owners.insert(self.table_role(&r.qualified()).await?);
        }
        let list: Vec<String> = rels.iter().map(|r| format!("ONLY {}", r.qualified())).collect();
        let several = owners.len() > 1;
        let role = if several { None } else { owners.into_iter().next().flatten() };
        if let Some(owner) = &role {
            self.ensure_gate(owner).await?;
        } else if several {
            // Tables of several owners in one TRUNCATE (the source truncated them together,
            // and foreign keys between them may want that): as the target role, which is only
            // safe while no trigger of theirs fires for it.
            let names: Vec<String> = rels.iter().map(|r| r.qualified()).collect();
            if let Some(trigger) = lock_for_truncate(&self.conn.client, &names).await.map_err(connection_error)? {
                return Err(TargetError::Change {
                    table: list.join(", "),
                    source_oid: None,
                    operation: "truncate",
                    lsn,
                    key: "(all rows)".into(),
                    error: format!("these tables have several owners, and {TRUNCATE_TRIGGER_REFUSED}: {trigger}"),
                });
            }
        }
        let restart = if restart_identity { " RESTART IDENTITY" } else { "" };
        let truncate = vec![Planned::utility(&format!("TRUNCATE {}{restart}", list.join(", ")))];
        let outcome = match self.as_role(role.as_deref(), truncate) {
            Ok(steps) => self.pipeline(&steps).await,
            Err(why) => Err((0, why)),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(_) if self.conn.client.is_closed() => {
                Err(TargetError::Transient("the target closed the connection".into()))
            }
            Err((_, why)) => Err(TargetError::Change {
                table: list.join(", "),
                source_oid: (rels.len() == 1).then(|| rels[0].oid),
                operation: "truncate",
                lsn,
                key: "(all rows)".into(),
                error: why,
            }),
        }
    }

    async fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), TargetError> {
        if !self.in_group {
            return Ok(());
        }
        let commit_time = pgdms_proto::Value::TimestampTz(commit_time).to_pg_text().map(|c| c.into_owned());
        let progress = Planned {
            gated: false,
            sql: format!(
                "INSERT INTO {CONTROL_SCHEMA}.apply_progress (slot_name, end_lsn, commit_time, applied_at, acked_lsn) \
                 VALUES ($1, $2::pg_lsn, $3::timestamptz, now(), $2::pg_lsn) \
                 ON CONFLICT (slot_name) DO UPDATE SET end_lsn = excluded.end_lsn, commit_time = excluded.commit_time, applied_at = now(), \
                 acked_lsn = greatest({CONTROL_SCHEMA}.apply_progress.acked_lsn, excluded.acked_lsn)"
            ),
            params: vec![Some(self.slot.clone()), Some(end_lsn.to_string()), commit_time],
            expect: Some(1),
        };
        let result = self.pipeline(&[self.settings_pinned(), progress, Planned::utility("COMMIT")]).await;
        self.in_group = false;
        self.batch_savepoint = false;
        result.map_err(|(_, why)| {
            if self.conn.client.is_closed() {
                TargetError::Transient(format!("commit failed: {why}"))
            } else {
                TargetError::Refused(format!("the target refused to commit at source LSN {end_lsn}: {why}"))
            }
        })
    }

    fn records_acknowledged(&self) -> bool {
        true
    }

    async fn advance(&mut self, lsn: Lsn) -> Result<(), TargetError> {
        PgControl(&self.conn.client).advance(&self.slot, lsn).await
    }

    async fn acknowledged(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        PgControl(&self.conn.client).acknowledged(slot).await
    }

    async fn claim(&mut self, slot: &str) -> Result<(), TargetError> {
        if PgControl(&self.conn.client).claim(slot).await? {
            return Ok(());
        }
        Err(TargetError::Transient(format!(
            "another pgdms-apply session applies or reloads migration \"{slot}\" on this target (or the last one \
             has not gone yet)"
        )))
    }

    fn suspends_tables(&self) -> bool {
        true
    }

    async fn suspended_tables(&mut self, slot: &str) -> Result<Vec<SuspendedTable>, TargetError> {
        PgControl(&self.conn.client).suspended(Some(slot)).await
    }

    async fn suspend(&mut self, source_oid: u32, name: &str, lsn: Lsn, error: &str) -> Result<(), TargetError> {
        PgControl(&self.conn.client).suspend(&self.slot, source_oid, name, "cdc", lsn, error).await
    }

    async fn passed_over(&mut self, counts: &[(u32, i64)]) -> Result<(), TargetError> {
        self.open_group().await?;
        PgControl(&self.conn.client).passed_over(&self.slot, counts).await
    }

    async fn rollback(&mut self) -> Result<(), TargetError> {
        // Staging tables and gates made inside the group went with it; they are made again.
        self.staging.clear();
        if let Some(roles) = self.roles.as_mut() {
            roles.forget_gates();
        }
        if self.in_group {
            self.in_group = false;
            self.batch_savepoint = false;
            self.conn.client.batch_execute("ROLLBACK").await.map_err(connection_error)?;
        }
        Ok(())
    }
}

impl ControlStore for PostgresTarget {
    async fn migration(&mut self, slot: &str) -> Result<Option<MigrationRecord>, TargetError> {
        PgControl(&self.conn.client).migration(slot).await
    }
    async fn begin_migration(&mut self, slot: &str, record: MigrationRecord) -> Result<(), TargetError> {
        PgControl(&self.conn.client).begin_migration(slot, record).await
    }
    async fn set_phase(&mut self, slot: &str, phase: Phase) -> Result<bool, TargetError> {
        PgControl(&self.conn.client).set_phase(slot, phase).await
    }
    async fn forget_migration(&mut self, slot: &str) -> Result<(), TargetError> {
        PgControl(&self.conn.client).forget_migration(slot).await
    }
    async fn loaded_tables(&mut self, slot: &str) -> Result<Vec<LoadedTable>, TargetError> {
        PgControl(&self.conn.client).loaded_tables(slot).await
    }
}

/// A PostgreSQL target loads through its copy path (`crate::load`): COPY sessions of their
/// own, in parallel, with the schema restored around them. The row-wise methods are never
/// called for it, and say so if they are.
impl LoadTarget for PostgresTarget {
    fn copy_path(&self) -> Option<CopyPath> {
        Some(CopyPath { target: self.info.clone(), role: self.target_role.clone() })
    }
    async fn load_begin(&mut self, rel: &RelInfo, _: Lsn) -> Result<(), TargetError> {
        Err(not_row_wise(rel))
    }
    async fn load_rows(&mut self, rel: &RelInfo, _: &[Row]) -> Result<(), TargetError> {
        Err(not_row_wise(rel))
    }
    async fn load_end(&mut self, rel: &RelInfo, _: &str, _: &str, _: Lsn) -> Result<(), TargetError> {
        Err(not_row_wise(rel))
    }
}

fn not_row_wise(rel: &RelInfo) -> TargetError {
    TargetError::Config(format!(
        "{}: a PostgreSQL target is loaded through COPY (its copy path), not row by row",
        rel.qualified()
    ))
}

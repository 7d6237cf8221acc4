//! The full load: every table copied from one consistent snapshot of the source.
//!
//! `jobs` workers each open a source session that imports the snapshot (so all of them see
//! the same database, the one the replication slot's changes start from) and a target
//! session. They take units of work (tables, or block ranges of large tables) largest
//! first, and stream each as `COPY (SELECT ...) TO STDOUT` from the source straight into
//! `COPY ... FROM STDIN` on the target, binary when every column type has binary I/O,
//! without staging anything. Each unit commits on its own; a table is recorded as loaded
//! in `pgdms_apply.load_progress` once its last unit committed, so a rerun after a crash knows
//! which tables to load again.

pub mod plan;
pub mod progress;
pub mod rows;
pub mod schema;
pub mod sequences;
pub mod skipped;

use crate::pgconn::client::{connect, error_text, ConnectError, SqlConnection};
use crate::pgconn::ConnInfo;
use crate::sink::postgres::roles::{Object, Roles};
use crate::sql::quote_literal;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use pgdms_proto::Lsn;
use plan::{plan, unit_query, Plan, SourceTable, Unit};
use progress::{Progress, Summary};
use std::collections::VecDeque;
use std::sync::Mutex;

pub const CONTROL_SCHEMA: &str = crate::sink::postgres::CONTROL_SCHEMA;

/// Bytes of rows sent to the target per COPY message.
const COPY_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{context}: {source}")]
    Sql { context: String, source: tokio_postgres::Error },
    #[error("could not load {table}: {error}")]
    Table { table: String, error: String },
    #[error("{0}")]
    Target(String),
}

pub(crate) fn sql_error(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> LoadError {
    let context = context.into();
    move |source| LoadError::Sql { context, source }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Tables larger than this are cut into block ranges loaded in parallel (0: never).
    pub split_bytes: u64,
    /// The slot whose migration this load belongs to (the key of `pgdms_apply.load_progress`).
    pub slot: String,
    /// Recorded with each table: changes committed before this LSN are in the copy.
    pub snapshot_lsn: Lsn,
    /// The target's tables may be emptied: a table loaded in one unit is then truncated and
    /// copied with FREEZE in one transaction (its rows need no hint-bit writes later, which
    /// the index builds would otherwise do).
    pub freeze: bool,
    /// A table the target refuses: stop the load, or set it aside and load the others.
    pub on_table_error: crate::sink::OnTableError,
}

/// A source session inside the exported snapshot.
pub async fn snapshot_session(source: &ConnInfo, snapshot: &str) -> Result<SqlConnection, LoadError> {
    let conn = connect(source, "pgdms-apply load").await?;
    conn.client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {};
             SET LOCAL statement_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0",
            quote_literal(snapshot)
        ))
        .await
        .map_err(sql_error(format!(
            "could not import snapshot {snapshot} (it lives only while the connection that exported it is open)"
        )))?;
    Ok(conn)
}

/// Loads the tables `select` keeps, as of the snapshot `sources` imported (one session per
/// job, already inside it). Tables are emptied on the target first when `truncate_first`.
pub async fn load(
    sources: Vec<SqlConnection>,
    target: &ConnInfo,
    target_role: Option<&str>,
    opts: &LoadOptions,
    select: impl Fn(SourceTable) -> Option<SourceTable>,
    truncate_first: bool,
) -> Result<Summary, LoadError> {
    let version: i32 = sources[0]
        .client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(sql_error("source"))?
        .try_get(0)
        .map_err(sql_error("source"))?;
    let tables: Vec<SourceTable> = plan::source_tables(&sources[0].client)
        .await
        .map_err(sql_error("could not list the source's tables"))?
        .into_iter()
        .filter_map(select)
        .collect();
    let plan = plan(tables, opts.split_bytes, version >= 140000);
    let mut targets = Vec::with_capacity(sources.len());
    for _ in 0..sources.len() {
        // As the target role: the rows' checks, defaults and generated columns are the
        // source owners' code.
        let (t, roles) = crate::sink::postgres::open_session(target, target_role, "pgdms-apply load", true)
            .await
            .map_err(|e| LoadError::Target(e.to_string()))?;
        t.client.batch_execute("SET synchronous_commit = off").await.map_err(sql_error("target"))?;
        targets.push((t, roles));
    }
    if truncate_first && !plan.tables.is_empty() {
        let (session, roles) = &mut targets[0];
        empty_tables(&session.client, roles, &plan.tables).await?;
    }
    let units_per_table = |i: usize| plan.units.iter().filter(|u| u.table == i).count();
    let progress = Progress::new(
        &plan.tables.iter().enumerate().map(|(i, t)| (t.qualified(), t.bytes, units_per_table(i))).collect::<Vec<_>>(),
    );
    let queue = Mutex::new(plan.units.iter().cloned().collect::<VecDeque<Unit>>());
    let workers = sources
        .iter()
        .zip(targets.iter_mut())
        .map(|(s, (t, roles))| worker(&s.client, &t.client, roles, &plan, &queue, &progress, opts));
    futures_util::future::try_join_all(workers).await?;
    for s in &sources {
        let _ = s.client.batch_execute("COMMIT").await;
    }
    let summary = progress.finish();
    tracing::info!(
        tables = summary.tables,
        rows = summary.rows,
        bytes = %indicatif::HumanBytes(summary.bytes),
        seconds = format!("{:.1}", summary.elapsed.as_secs_f64()),
        "full load done"
    );
    Ok(summary)
}

async fn worker(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    roles: &mut Roles,
    plan: &Plan,
    queue: &Mutex<VecDeque<Unit>>,
    progress: &Progress,
    opts: &LoadOptions,
) -> Result<(), LoadError> {
    loop {
        let Some(unit) = queue.lock().ok().and_then(|mut q| q.pop_front()) else { return Ok(()) };
        let table = &plan.tables[unit.table];
        let name = table.qualified();
        progress.unit_started(&name, table.bytes);
        let freeze = opts.freeze && unit.blocks.is_none();
        // The rows go in as the table's owner (its checks and generated columns run then):
        // through the owner's gate when that is not the target role (see sink::postgres::roles).
        let refused = |e| LoadError::Target(crate::sink::postgres::role_error(e).to_string());
        let owner = roles.owner(target, Object::Table, &table.target_qualified()).await.map_err(refused)?;
        let gate = match &owner {
            Some(owner) => Some((owner.as_str(), roles.gate(target, owner, true).await.map_err(refused)?)),
            None => None,
        };
        let gate = gate.as_ref().map(|(owner, call)| (*owner, call.as_str()));
        let rows = match copy_unit(source, target, table, gate, unit.blocks, freeze, progress).await {
            Ok(rows) => rows,
            // Suspended only for what the target refused, while both sessions stand: a lost
            // connection or a source-side failure is no fault of the table's, and would set
            // every later one aside too.
            Err(error)
                if opts.on_table_error == crate::sink::OnTableError::Suspend
                    && !error.starts_with("source:")
                    && !source.is_closed()
                    && !target.is_closed() =>
            {
                suspend(target, queue, opts, unit.table, table, &error).await?;
                continue;
            }
            Err(error) => {
                return Err(LoadError::Table {
                    table: name,
                    error: format!(
                        "{error}. The tables loaded so far stay loaded: fix the cause and run the same command \
                         to load the rest, or pass --on-table-error suspend to set such a table aside and go on"
                    ),
                })
            }
        };
        if let Some(table_rows) = progress.unit_finished(&name, rows) {
            mark_loaded(target, opts, table, table_rows).await?;
        }
    }
}

/// Sets a table the target refused aside (`--on-table-error suspend`): recorded on the
/// target, its units still queued dropped. Units already committed stay until a reload
/// empties the table.
async fn suspend(
    target: &tokio_postgres::Client,
    queue: &Mutex<VecDeque<Unit>>,
    opts: &LoadOptions,
    index: usize,
    table: &SourceTable,
    error: &str,
) -> Result<(), LoadError> {
    if let Ok(mut q) = queue.lock() {
        q.retain(|u| u.table != index);
    }
    let name = table.qualified();
    crate::sink::postgres::control::PgControl(target)
        .suspend(&opts.slot, table.oid, &name, "load", opts.snapshot_lsn, error)
        .await
        .map_err(|e| LoadError::Target(e.to_string()))?;
    tracing::error!(table = %name, %error, "table suspended: the target refused its rows; the load goes on without it, and its changes are passed over until --reload-table");
    Ok(())
}

/// Empties the tables about to be loaded, in one statement (tables referencing each other
/// must go together): as their owner when they have one other than the target role, else
/// as the target role (see sink::postgres::lock_for_truncate).
async fn empty_tables(
    client: &tokio_postgres::Client,
    roles: &mut Roles,
    tables: &[SourceTable],
) -> Result<(), LoadError> {
    const WHAT: &str = "could not empty the target's tables before loading them";
    let names: Vec<String> = tables.iter().map(|t| t.target_qualified()).collect();
    let truncate = format!("TRUNCATE {}", names.iter().map(|t| format!("ONLY {t}")).collect::<Vec<_>>().join(", "));
    let refused = |e| LoadError::Target(format!("{WHAT}: {}", crate::sink::postgres::role_error(e)));
    // A table another one's foreign key references (a reload, after the post-data) cannot
    // be truncated alone: its rows are deleted instead, each table as its owner, with no
    // trigger or foreign-key action firing (session_replication_role = replica).
    if referenced_from_outside(client, &names).await.map_err(sql_error(WHAT))? {
        let deleted = async {
            client.batch_execute("BEGIN").await.map_err(|e| format!("target: {}", error_text(&e)))?;
            for name in &names {
                let statement = format!("DELETE FROM ONLY {name}");
                match roles.owner(client, Object::Table, name).await.map_err(|e| refused(e).to_string())? {
                    Some(owner) => {
                        let call = roles.gate(client, &owner, true).await.map_err(|e| refused(e).to_string())?;
                        through_gate(client, &call, &statement).await?;
                    }
                    None => {
                        client.batch_execute(&statement).await.map_err(|e| format!("target: {}", error_text(&e)))?
                    }
                }
            }
            client.batch_execute("COMMIT").await.map_err(|e| format!("target: {}", error_text(&e)))
        }
        .await;
        if deleted.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        return deleted.map_err(|e| LoadError::Target(format!("{WHAT}: {e}")));
    }
    let mut owners = std::collections::HashSet::new();
    for name in &names {
        owners.insert(roles.owner(client, Object::Table, name).await.map_err(refused)?);
    }
    if owners.len() == 1 {
        if let Some(owner) = owners.into_iter().next().flatten() {
            let call = roles.gate(client, &owner, true).await.map_err(refused)?;
            return through_gate(client, &call, &truncate)
                .await
                .map(|_| ())
                .map_err(|e| LoadError::Target(format!("{WHAT}: {e}")));
        }
    }
    let emptied = async {
        client.batch_execute("BEGIN").await?;
        if let Some(trigger) = crate::sink::postgres::lock_for_truncate(client, &names).await? {
            return Ok(Some(trigger));
        }
        client.batch_execute(&format!("{truncate}; COMMIT")).await?;
        Ok(None)
    }
    .await;
    if !matches!(emptied, Ok(None)) {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    match emptied {
        Ok(None) => Ok(()),
        Ok(Some(trigger)) => Err(LoadError::Target(format!(
            "{WHAT}: these tables have several owners, and {}: {trigger}",
            crate::sink::postgres::TRUNCATE_TRIGGER_REFUSED
        ))),
        Err(e) => Err(sql_error(WHAT)(e)),
    }
}

/// Whether a foreign key of a table outside `tables` references one of them.
async fn referenced_from_outside(
    client: &tokio_postgres::Client,
    tables: &[String],
) -> Result<bool, tokio_postgres::Error> {
    client
        .query_one(
            "WITH t AS (SELECT pg_catalog.to_regclass(n) AS oid FROM pg_catalog.unnest($1::pg_catalog.text[]) n)
             SELECT EXISTS (SELECT FROM pg_catalog.pg_constraint c
                             WHERE c.contype = 'f' AND c.confrelid IN (SELECT oid FROM t)
                               AND c.conrelid NOT IN (SELECT oid FROM t WHERE oid IS NOT NULL))",
            &[&tables],
        )
        .await?
        .try_get(0)
}

/// Runs `statement` through an owner's gate (see sink::postgres::roles).
async fn through_gate(target: &tokio_postgres::Client, call: &str, statement: &str) -> Result<u64, String> {
    match target.query(call, &[&statement, &"{}"]).await {
        Ok(rows) => crate::sink::postgres::gate_count(rows.first()),
        Err(e) => Err(format!("target: {}", error_text(&e))),
    }
}

/// The target's types of `table`'s columns, in the order of its target column list.
async fn target_column_types(target: &tokio_postgres::Client, table: &SourceTable) -> Result<Vec<String>, String> {
    let rows = target
        .query(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM unnest($2::text[]) WITH ORDINALITY c(name, i)
               JOIN pg_attribute a ON a.attrelid = to_regclass($1) AND a.attname = c.name ORDER BY c.i",
            &[&table.target_qualified(), &table.target_columns],
        )
        .await
        .map_err(|e| format!("target: {}", error_text(&e)))?;
    if rows.len() != table.target_columns.len() {
        return Err(format!("the target's {} lacks columns of the source's", table.target_qualified()));
    }
    rows.iter().map(|r| r.try_get(0).map_err(|e| format!("target: {}", error_text(&e)))).collect()
}

/// Streams one unit from the source into the target, in a target transaction of its own.
/// With `gate` (the table's owner and its gate), COPY cannot run as the owner: the rows go
/// as text into a temporary table (its columns text, so that the owner's types run no code
/// of theirs as the target role), and from it into the table through the gate, cast to the
/// table's types there (no FREEZE then).
async fn copy_unit(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    table: &SourceTable,
    gate: Option<(&str, &str)>,
    blocks: Option<(u64, u64)>,
    freeze: bool,
    progress: &Progress,
) -> Result<u64, String> {
    let name = table.qualified();
    let binary = table.binary && gate.is_none();
    let out_format = if binary { " (FORMAT binary)" } else { "" };
    let copy_freeze = freeze && gate.is_none();
    let in_format = match (binary, copy_freeze) {
        (true, true) => " (FORMAT binary, FREEZE)",
        (true, false) => " (FORMAT binary)",
        (false, true) => " (FREEZE)",
        (false, false) => "",
    };
    let out_sql = format!("COPY ({}) TO STDOUT{out_format}", unit_query(table, blocks));
    let target_name = table.target_qualified();
    let columns = table.target_column_clause();
    let stage = format!("pg_temp.{}", crate::sql::quote_ident(&format!("pgdms_load_{}", table.oid)));
    let copy_into = if gate.is_some() { &stage } else { &target_name };
    let in_sql = format!("COPY {copy_into}{columns} FROM STDIN{in_format}");
    let mut begin = "BEGIN".to_string();
    match gate {
        None if freeze => begin += &format!("; TRUNCATE ONLY {target_name}"),
        None => {}
        Some((owner, _)) => {
            let text_columns: Vec<String> = table
                .target_columns
                .iter()
                .map(|c| format!("{} pg_catalog.text", crate::sql::quote_ident(c)))
                .collect();
            begin += &format!(
                "; CREATE TEMP TABLE {stage} ({}) ON COMMIT DROP; GRANT SELECT ON {stage} TO {}",
                text_columns.join(", "),
                crate::sql::quote_ident(owner)
            )
        }
    }
    let types = match gate {
        Some(_) => target_column_types(target, table).await?,
        None => Vec::new(),
    };
    if let Err(e) = target.batch_execute(&begin).await {
        let _ = target.batch_execute("ROLLBACK").await;
        return Err(format!("target: {}", error_text(&e)));
    }
    let result = async {
        if let (Some((_, call)), true) = (gate, freeze) {
            through_gate(target, call, &format!("TRUNCATE ONLY {target_name}")).await?;
        }
        let rows_out = source.copy_out(&out_sql).await.map_err(|e| format!("source: {}", error_text(&e)))?;
        let sink = target.copy_in(&in_sql).await.map_err(|e| format!("target: {}", error_text(&e)))?;
        futures_util::pin_mut!(rows_out);
        futures_util::pin_mut!(sink);
        // The source sends a message per row: gather rows into large messages for the
        // target, whose COPY then reads a few hundred kilobytes at a time, not a row.
        let mut buf = BytesMut::with_capacity(COPY_CHUNK + 64 * 1024);
        while let Some(row) = rows_out.next().await {
            let row = row.map_err(|e| format!("source: {}", error_text(&e)))?;
            buf.extend_from_slice(&row);
            if buf.len() >= COPY_CHUNK {
                progress.advance(&name, buf.len() as u64);
                sink.feed(buf.split().freeze()).await.map_err(|e| format!("target: {}", error_text(&e)))?;
            }
        }
        if !buf.is_empty() {
            progress.advance(&name, buf.len() as u64);
            sink.feed(buf.freeze()).await.map_err(|e| format!("target: {}", error_text(&e)))?;
        }
        let rows = sink.as_mut().finish().await.map_err(|e| format!("target: {}", error_text(&e)))?;
        if let Some((_, call)) = gate {
            let values: Vec<String> = table
                .target_columns
                .iter()
                .zip(&types)
                .map(|(c, ty)| format!("s.{}::{ty}", crate::sql::quote_ident(c)))
                .collect();
            let insert = format!(
                "INSERT INTO {target_name}{columns} OVERRIDING SYSTEM VALUE SELECT {} FROM {stage} s",
                values.join(", ")
            );
            let inserted = through_gate(target, call, &insert).await?;
            if inserted != rows {
                return Err(format!("{inserted} rows went into {target_name} where {rows} were copied"));
            }
        }
        Ok(rows)
    }
    .await;
    match result {
        Ok(rows) => {
            target.batch_execute("COMMIT").await.map_err(|e| error_text(&e))?;
            Ok(rows)
        }
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn mark_loaded(
    target: &tokio_postgres::Client,
    opts: &LoadOptions,
    table: &SourceTable,
    rows: u64,
) -> Result<(), LoadError> {
    target
        .execute(
            &format!(
                // Loaded whole: no longer set aside.
                "WITH unsuspended AS (DELETE FROM {CONTROL_SCHEMA}.suspended_table WHERE slot_name = $1 AND source_oid = $2)
                 INSERT INTO {CONTROL_SCHEMA}.load_progress (slot_name, source_oid, table_name, rows, bytes, snapshot_lsn)
                 VALUES ($1, $2, $3, $4, $5, $6::text::pg_lsn)
                 ON CONFLICT (slot_name, source_oid) DO UPDATE
                    SET rows = excluded.rows, bytes = excluded.bytes, snapshot_lsn = excluded.snapshot_lsn, loaded_at = now()"
            ),
            &[
                &opts.slot,
                &table.oid,
                &table.qualified(),
                &(rows as i64),
                &(table.bytes as i64),
                &opts.snapshot_lsn.to_string(),
            ],
        )
        .await
        .map_err(sql_error(format!("could not record {} as loaded", table.qualified())))?;
    Ok(())
}

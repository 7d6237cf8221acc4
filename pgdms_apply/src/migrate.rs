//! The whole migration in one command: slot and snapshot, schema, full load, CDC; and the
//! cutover that ends it.
//!
//! 1. A replication slot is created with an exported snapshot: the slot's changes start
//!    exactly where the snapshot ends, so the load plus the changes are the source's
//!    history with no gap and no overlap.
//! 2. While the connection that exported it stays idle, the load sessions (and pg_dump)
//!    import the snapshot; then the schema's pre-data is restored, the tables are copied
//!    (`crate::load`), the post-data (indexes, constraints) is built in parallel, and the
//!    sequences are set.
//! 3. CDC streams from the slot's consistent point (`crate::apply`).
//!
//! `pgdms.migration` on the target records the phase, so a rerun after a crash resumes: a
//! crash during the load reloads only the tables not recorded as loaded, from a snapshot
//! of a temporary slot of their own; CDC then passes over those tables' changes committed
//! before that snapshot (they are in the copy).

use crate::apply::{self, ApplyError, ApplyOptions, Finished};
use crate::load::schema::{self, SchemaError};
use crate::load::{self, plan::SourceTable, LoadError, LoadOptions, CONTROL_SCHEMA};
use crate::mapping::Mapping;
use crate::sql::quote_ident;
use crate::stream::client::connect;
use crate::stream::{ConnInfo, Lsn, ReplicationConnection, ReplicationError};
use crate::target::postgres::{open_session, PostgresTarget};
use crate::target::OnError;
use crate::validate;
use std::path::PathBuf;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Copy the tables; no slot is kept.
    FullLoad,
    /// Copy the tables, then stream changes from the slot (the default).
    FullLoadAndCdc,
}

/// What to do with the target's tables before the load (the reference's TargetTablePrepMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Prep {
    /// Create the schema from the source's (dropping objects of the same names first), and
    /// indexes and constraints after the load.
    DropAndCreate,
    /// Keep the target's tables; empty them before loading.
    Truncate,
    /// Keep the target's tables as they are, and load into them.
    DoNothing,
}

#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub mode: Mode,
    pub prep: Prep,
    pub jobs: usize,
    pub split_bytes: u64,
    pub pg_bin: Option<PathBuf>,
    pub apply: ApplyOptions,
    pub on_error: OnError,
    pub synchronous_commit: String,
    pub drop_slot_on_finish: bool,
    /// Table mappings (also in `apply.mapping`, for CDC).
    pub mapping: Mapping,
    /// The role a PostgreSQL target is written as (`--target-role`; else the login role).
    pub target_role: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Source(#[from] ReplicationError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{0}")]
    Fatal(String),
}

impl From<crate::stream::client::ConnectError> for MigrateError {
    fn from(e: crate::stream::client::ConnectError) -> Self {
        MigrateError::Load(e.into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Schema,
    Load,
    PostData,
    Cdc,
    Done,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Schema => "schema",
            Phase::Load => "load",
            Phase::PostData => "post-data",
            Phase::Cdc => "cdc",
            Phase::Done => "done",
        }
    }

    fn parse(s: &str) -> Phase {
        match s {
            "schema" => Phase::Schema,
            "load" => Phase::Load,
            "post-data" => Phase::PostData,
            "cdc" => Phase::Cdc,
            _ => Phase::Done,
        }
    }
}

async fn set_phase(target: &tokio_postgres::Client, slot: &str, phase: Phase) -> Result<(), MigrateError> {
    target
        .execute(
            &format!("UPDATE {CONTROL_SCHEMA}.migration SET phase = $2, updated_at = now() WHERE slot_name = $1"),
            &[&slot, &phase.name()],
        )
        .await
        .map_err(load::sql_error("could not record the migration's phase"))?;
    tracing::info!(slot, phase = phase.name(), "migration phase");
    Ok(())
}

async fn slot_exists(repl: &mut ReplicationConnection, slot: &str) -> Result<bool, MigrateError> {
    let rows = repl
        .command(&format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = {}", crate::sql::quote_literal(slot)))
        .await?;
    Ok(!rows.is_empty())
}

/// Runs (or resumes) the migration of `source` into `target`.
pub async fn migrate(
    source: &ConnInfo,
    target: &ConnInfo,
    opts: &MigrateOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Finished, MigrateError> {
    let slot = opts.apply.slot.clone();
    let role = opts.target_role.as_deref();
    let (tgt, _) = open_session(target, role, "pgdms-apply migrate", false).await?;
    load::prepare_control_tables(&tgt.client).await?;
    let recorded = tgt
        .client
        .query_opt(&format!("SELECT phase FROM {CONTROL_SCHEMA}.migration WHERE slot_name = $1"), &[&slot])
        .await
        .map_err(load::sql_error("could not read pgdms.migration"))?
        .map(|r| Phase::parse(r.get::<_, &str>(0)));
    let mut repl = ReplicationConnection::connect(source).await?;
    let recorded = if recorded == Some(Phase::Schema) {
        // Nothing was loaded yet: start over, with a new slot and snapshot, so the schema,
        // the load and the changes all start at one point.
        tracing::info!(%slot, "the last run stopped while creating the schema: starting over");
        if slot_exists(&mut repl, &slot).await? {
            repl.drop_slot(&slot, true).await?;
        }
        tgt.client
            .batch_execute(&format!(
                "DELETE FROM {CONTROL_SCHEMA}.migration WHERE slot_name = {lit};
                 DELETE FROM {CONTROL_SCHEMA}.load_progress WHERE slot_name = {lit};
                 DELETE FROM {CONTROL_SCHEMA}.migration_schema WHERE slot_name = {lit};",
                lit = crate::sql::quote_literal(&slot)
            ))
            .await
            .map_err(load::sql_error("could not reset the migration's records"))?;
        None
    } else {
        recorded
    };
    let source_major = repl.server_version_num() / 10000;
    let pg_bin = schema::find_pg_bin(opts.pg_bin.as_deref(), source_major);
    let cdc = opts.mode == Mode::FullLoadAndCdc;
    // The schema archive of the load's snapshot: its post-data is built after the load.
    let mut archive: Option<Archive> = None;

    let phase = match recorded {
        None => {
            let snapshot = new_migration_slot(repl, &slot, cdc).await?;
            tgt.client
                .execute(
                    &format!(
                        "INSERT INTO {CONTROL_SCHEMA}.migration (slot_name, phase, consistent_point) VALUES ($1, 'schema', $2::text::pg_lsn)"
                    ),
                    &[&slot, &snapshot.lsn.to_string()],
                )
                .await
                .map_err(load::sql_error("could not record the migration"))?;
            archive = copy_phase(source, target, &tgt.client, opts, &pg_bin, snapshot, None).await?;
            Phase::PostData
        }
        Some(Phase::Schema | Phase::Load) => {
            if opts.prep == Prep::DoNothing {
                return Err(MigrateError::Fatal(format!(
                    "the last run of this migration stopped during the load, and with --target-prep do-nothing \
                     the unfinished tables may hold part of a copy next to rows of their own: empty them and \
                     rerun with --target-prep truncate, or start over (DELETE FROM {CONTROL_SCHEMA}.migration \
                     WHERE slot_name = '{slot}' on the target, and drop the slot)"
                )));
            }
            if cdc && !slot_exists(&mut repl, &slot).await? {
                return Err(MigrateError::Fatal(format!(
                    "replication slot \"{slot}\" of this migration is gone: the changes since its start are lost. \
                     Start over: DELETE FROM {CONTROL_SCHEMA}.migration WHERE slot_name = '{slot}' on the target, then rerun"
                )));
            }
            drop(repl);
            let snapshot = reload_snapshot(source).await?;
            let loaded = load::loaded_tables(&tgt.client, &slot).await?;
            tracing::info!(%slot, tables_loaded = loaded.len(), snapshot_lsn = %snapshot.lsn, "resuming the full load");
            archive = copy_phase(source, target, &tgt.client, opts, &pg_bin, snapshot, Some(&loaded)).await?;
            Phase::PostData
        }
        Some(other) => other,
    };
    if phase == Phase::PostData {
        post_data(source, target, &tgt.client, opts, &pg_bin, archive.as_ref()).await?;
        // Table mappings, then the next phase, in one transaction: a crash leaves both or neither.
        tgt.client.batch_execute("BEGIN").await.map_err(load::sql_error("target"))?;
        if opts.prep == Prep::DropAndCreate && !opts.mapping.is_identity() {
            let src = connect(source, "pgdms-apply migrate").await?;
            map_schema(&src.client, &tgt.client, &opts.mapping).await?;
        }
        set_phase(&tgt.client, &slot, if cdc { Phase::Cdc } else { Phase::Done }).await?;
        tgt.client.batch_execute("COMMIT").await.map_err(load::sql_error("target"))?;
    }
    if !cdc || phase == Phase::Done {
        return Ok(Finished::Reached);
    }

    // CDC from the slot's consistent point, passing over what reloaded tables already hold.
    let mut apply_opts = opts.apply.clone();
    set_reloaded_tables(&tgt.client, &slot, &mut apply_opts).await?;
    drop(tgt);
    let (on_error, sync) = (opts.on_error, opts.synchronous_commit.clone());
    let connect_target = || PostgresTarget::connect(target, on_error, &sync, role);
    stream_changes(source, connect_target, opts, &apply_opts, shutdown).await
}

/// Creates the migration's slot with an exported snapshot (refusing a slot that exists
/// already: its changes may not match the target). Full load only: the slot is there for
/// its snapshot alone, temporary, and goes with the connection.
async fn new_migration_slot(mut repl: ReplicationConnection, slot: &str, cdc: bool) -> Result<Snapshot, MigrateError> {
    if slot_exists(&mut repl, slot).await? {
        return Err(MigrateError::Fatal(format!(
            "replication slot \"{slot}\" exists, but the target has no record of a migration from it: \
             to stream from it into a target that already holds the data, use `pgdms-apply cdc`; \
             to start a new migration, drop it first (pgdms-apply slot drop --slot {slot})"
        )));
    }
    let created = repl.create_slot(slot, !cdc, true).await?;
    let name = created
        .snapshot_name
        .clone()
        .ok_or_else(|| MigrateError::Fatal("the source exported no snapshot with the new slot".into()))?;
    tracing::info!(%slot, consistent_point = %created.consistent_point, snapshot = %name, "slot created");
    Ok(Snapshot { exporter: repl, name, lsn: created.consistent_point })
}

/// A resumed load: the first snapshot is gone with its connection, so the tables not loaded
/// yet are loaded from a temporary slot's snapshot, and CDC passes over their changes
/// committed before it.
async fn reload_snapshot(source: &ConnInfo) -> Result<Snapshot, MigrateError> {
    let mut reload = ReplicationConnection::connect(source).await?;
    let temp = format!("pgdms_reload_{}", std::process::id());
    let created = reload.create_slot(&temp, true, true).await?;
    let name = created
        .snapshot_name
        .clone()
        .ok_or_else(|| MigrateError::Fatal("the source exported no snapshot with the temporary slot".into()))?;
    Ok(Snapshot { exporter: reload, name, lsn: created.consistent_point })
}

/// Tables loaded from a later snapshot than the migration's start (`start`): CDC passes over
/// their changes (rows, by oid, and DDL, by name) committed before their snapshot.
fn mark_reloaded(opts: &mut ApplyOptions, start: Lsn, loaded: Vec<(u32, String, Lsn)>) {
    for (oid, name, at) in loaded {
        if at > start {
            opts.reloaded.by_oid.insert(oid, at);
            opts.reloaded.by_name.insert(name, at);
        }
    }
}

/// CDC from the slot's consistent point into the target `connect_target` opens; drops the
/// slot once `--until` is reached if asked.
async fn stream_changes<T, F, Fut>(
    source: &ConnInfo,
    connect_target: F,
    opts: &MigrateOptions,
    apply_opts: &ApplyOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Finished, MigrateError>
where
    T: crate::target::Target,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::target::TargetError>>,
{
    let finished = apply::run(source, connect_target, apply_opts, shutdown).await?;
    if finished == Finished::Reached && opts.drop_slot_on_finish {
        let mut repl = ReplicationConnection::connect(source).await?;
        repl.drop_slot(&apply_opts.slot, true).await?;
        tracing::info!(slot = %apply_opts.slot, "migration finished: slot dropped");
    }
    Ok(finished)
}

/// A schema archive in a temporary directory (removed with it).
struct Archive {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// An exported snapshot, and the replication connection that exported it: it lives as long
/// as that connection stays open and idle.
struct Snapshot {
    exporter: ReplicationConnection,
    name: String,
    /// The consistent point of the slot created with it.
    lsn: Lsn,
}

/// The first run (`loaded` is None): schema, then every table, as of the slot's snapshot.
/// A resumed run: the tables not in `loaded`, as of a temporary slot's snapshot. Returns the
/// snapshot's schema archive (first run, drop-and-create), for the post-data.
async fn copy_phase(
    source: &ConnInfo,
    target: &ConnInfo,
    tgt: &tokio_postgres::Client,
    opts: &MigrateOptions,
    pg_bin: &std::path::Path,
    snapshot: Snapshot,
    loaded: Option<&[(u32, String, Lsn)]>,
) -> Result<Option<Archive>, MigrateError> {
    let Snapshot { exporter, name: snapshot, lsn: snapshot_lsn } = snapshot;
    let snapshot = snapshot.as_str();
    let with_schema = loaded.is_none();
    let slot = &opts.apply.slot;
    let jobs = opts.jobs.max(1);
    let mut sessions = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        sessions.push(load::snapshot_session(source, snapshot).await?);
    }
    let workdir = schema_workdir()?;
    // The first snapshot's schema is dumped once and kept on the target: a resumed run
    // builds the post-data of the schema its tables were created with.
    let archive = match (opts.prep, with_schema) {
        (Prep::DropAndCreate, true) => {
            let path = schema::dump(pg_bin, source, snapshot, workdir.path()).await?;
            let archive = Archive { _dir: workdir, path };
            store_archive(tgt, slot, &archive).await?;
            Some(archive)
        }
        _ => None,
    };
    // Every session holds the snapshot now.
    drop(exporter);
    if let (true, Some(archive)) = (with_schema, &archive) {
        let role = opts.target_role.as_deref();
        let not_migrated = schema::restore(pg_bin, target, role, &archive.path, "pre-data", 1, true).await?;
        report_not_migrated(&not_migrated);
    }
    set_phase(tgt, slot, Phase::Load).await?;
    let load_opts = LoadOptions {
        jobs,
        split_bytes: opts.split_bytes,
        slot: slot.clone(),
        snapshot_lsn,
        // Only tables this migration created: TRUNCATE would fail on a table another one's
        // foreign key references, and must never empty a table the user keeps.
        freeze: opts.prep == Prep::DropAndCreate,
    };
    // With drop-and-create the tables are loaded under the source's names and renamed (and
    // their removed columns dropped) once the post-data is built on them; otherwise the
    // target already has the mapped tables.
    let keep = |t: SourceTable| -> Option<SourceTable> {
        if loaded.is_some_and(|l| l.iter().any(|(oid, _, _)| *oid == t.oid)) {
            return None;
        }
        if opts.prep == Prep::DropAndCreate {
            opts.mapping.includes(&t.schema, &t.name).then_some(t)
        } else {
            t.mapped(&opts.mapping)
        }
    };
    // Resuming: a table not recorded as loaded may hold part of an interrupted copy.
    let truncate_first = opts.prep == Prep::Truncate || loaded.is_some();
    load::load(sessions, target, opts.target_role.as_deref(), &load_opts, keep, truncate_first).await?;
    set_phase(tgt, slot, Phase::PostData).await?;
    Ok(archive)
}

/// Renames the loaded tables, schemas and columns as the table mappings say, drops the
/// columns they remove and the tables they leave out. Runs in the caller's transaction;
/// tables already renamed are passed over.
async fn map_schema(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    m: &Mapping,
) -> Result<(), MigrateError> {
    let tables = source
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    -- The replica identity's key, which changes carry whatever the mappings say.
                    coalesce((SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a
                                ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                               WHERE i.indrelid = c.oid
                                 AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))),
                             '{}')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
                AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                   AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e')
              ORDER BY c.relkind = 'p' DESC, c.relispartition, 1, 2",
            &[],
        )
        .await
        .map_err(load::sql_error("could not list the source's tables"))?;
    let run = |stmt: String| async move {
        tracing::info!(statement = %stmt, "table mapping");
        target
            .batch_execute(&stmt)
            .await
            .map_err(|e| MigrateError::Fatal(format!("{stmt}: {}", crate::stream::client::error_text(&e))))
    };
    for r in tables {
        let (schema, name, key): (String, String, Vec<String>) = (r.get(0), r.get(1), r.get(2));
        let q = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let exists: bool = target
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&q])
            .await
            .map_err(load::sql_error("target"))?
            .get(0);
        if !exists {
            continue;
        }
        if !m.includes(&schema, &name) {
            run(format!("DROP TABLE IF EXISTS {q} CASCADE")).await?;
            continue;
        }
        // The target's own columns (as loaded, under the source's names); inherited ones
        // follow their parent's, mapped first.
        let own: Vec<String> = target
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0
                    AND NOT attisdropped AND attinhcount = 0 ORDER BY attnum",
                &[&q],
            )
            .await
            .map_err(load::sql_error("target"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for c in &own {
            match m.column(&schema, &name, c) {
                // Key columns stay: updates and deletes find their rows by them.
                None if !key.contains(c) => {
                    run(format!("ALTER TABLE {q} DROP COLUMN IF EXISTS {}", quote_ident(c))).await?
                }
                Some(n) if n != *c => {
                    run(format!("ALTER TABLE {q} RENAME COLUMN {} TO {}", quote_ident(c), quote_ident(&n))).await?
                }
                _ => {}
            }
        }
        let (ts, tn) = m.table(&schema, &name);
        if tn != name {
            run(format!("ALTER TABLE {q} RENAME TO {}", quote_ident(&tn))).await?;
        }
        if ts != schema {
            run(format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&ts))).await?;
            run(format!("ALTER TABLE {}.{} SET SCHEMA {}", quote_ident(&schema), quote_ident(&tn), quote_ident(&ts)))
                .await?;
        }
    }
    Ok(())
}

/// Tables loaded from a later snapshot than the migration's slot (reloaded after a crash),
/// with that snapshot's LSN: CDC passes over their changes (rows, by oid, and DDL, by name)
/// committed before it. Sets `opts.reloaded`.
pub async fn set_reloaded_tables(
    tgt: &tokio_postgres::Client,
    slot: &str,
    opts: &mut ApplyOptions,
) -> Result<(), MigrateError> {
    let has_tables: bool = tgt
        .query_one(&format!("SELECT to_regclass('{CONTROL_SCHEMA}.load_progress') IS NOT NULL"), &[])
        .await
        .map_err(load::sql_error("target"))?
        .get(0);
    if !has_tables {
        return Ok(());
    }
    let start: Option<String> = tgt
        .query_opt(
            &format!("SELECT consistent_point::text FROM {CONTROL_SCHEMA}.migration WHERE slot_name = $1"),
            &[&slot],
        )
        .await
        .map_err(load::sql_error("could not read pgdms.migration"))?
        .map(|r| r.get(0));
    let start: Lsn = start.and_then(|s| s.parse().ok()).unwrap_or_default();
    mark_reloaded(opts, start, load::loaded_tables(tgt, slot).await?);
    Ok(())
}

/// Owner and privilege statements of the schema the target role could not run (roles it
/// lacks or may not become): one line naming the roles, each statement at debug level.
fn report_not_migrated(lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let mut roles: Vec<String> = lines.iter().filter_map(|l| role_named(l)).collect();
    roles.sort();
    roles.dedup();
    for l in lines {
        tracing::debug!(statement = %l, "not migrated");
    }
    tracing::info!(
        statements = lines.len(),
        roles = %roles.join(", "),
        "owners and privileges not migrated: the target lacks these roles or the target role may not act for them; \
         the objects are the target role's (see README, \"Target role\")"
    );
}

/// The role a pg_restore error is about: `role "x" does not exist`, `SET ROLE "x"`...
fn role_named(error: &str) -> Option<String> {
    let lower = error.to_ascii_lowercase();
    let at = lower.find("role \"")? + "role \"".len();
    let rest = &error[at..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Indexes, constraints, triggers (after the load, in parallel), and the sequences.
async fn post_data(
    source: &ConnInfo,
    target: &ConnInfo,
    tgt: &tokio_postgres::Client,
    opts: &MigrateOptions,
    pg_bin: &std::path::Path,
    archive: Option<&Archive>,
) -> Result<(), MigrateError> {
    let stored = match archive {
        Some(_) => None,
        None => stored_archive(tgt, &opts.apply.slot).await?,
    };
    let archive = archive.or(stored.as_ref());
    if opts.prep == Prep::DropAndCreate {
        // The snapshot's archive; when resuming after a crash in this phase it is gone, and
        // the source's schema as it is now stands in (DDL since the snapshot is captured and
        // replayed by CDC, which has not started yet).
        let current;
        let path = match archive {
            Some(a) => &a.path,
            None => {
                current = dump_current(pg_bin, source).await?;
                &current.path
            }
        };
        tracing::info!(jobs = opts.jobs, "building indexes and constraints");
        let role = opts.target_role.as_deref();
        let not_migrated = schema::restore(pg_bin, target, role, path, "post-data", opts.jobs, true).await?;
        report_not_migrated(&not_migrated);
    }
    let src = connect(source, "pgdms-apply migrate").await?;
    let n = load::sequences::sync(&src.client, tgt).await?;
    tracing::info!(sequences = n, "sequences set to the source's values");
    Ok(())
}

/// A temporary directory for a schema archive (removed when dropped).
fn schema_workdir() -> Result<tempfile::TempDir, MigrateError> {
    tempfile::Builder::new()
        .prefix("pgdms-schema-")
        .tempdir()
        .map_err(|e| MigrateError::Fatal(format!("could not create a temporary directory for the schema dump: {e}")))
}

/// Keeps the schema archive of a migration on the target.
async fn store_archive(tgt: &tokio_postgres::Client, slot: &str, archive: &Archive) -> Result<(), MigrateError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| MigrateError::Fatal(format!("could not read {}: {e}", p.display())))
    };
    let dump = read(&archive.path)?;
    let list = read(&archive.path.with_file_name("schema.list"))?;
    tgt.execute(
        &format!(
            "INSERT INTO {CONTROL_SCHEMA}.migration_schema (slot_name, archive, list) VALUES ($1, $2, $3)
             ON CONFLICT (slot_name) DO UPDATE SET archive = excluded.archive, list = excluded.list"
        ),
        &[&slot, &dump, &list],
    )
    .await
    .map_err(load::sql_error("could not keep the schema archive on the target"))?;
    Ok(())
}

/// The schema archive kept on the target, in a temporary directory.
async fn stored_archive(tgt: &tokio_postgres::Client, slot: &str) -> Result<Option<Archive>, MigrateError> {
    let Some(row) = tgt
        .query_opt(
            &format!("SELECT archive, list FROM {CONTROL_SCHEMA}.migration_schema WHERE slot_name = $1"),
            &[&slot],
        )
        .await
        .map_err(load::sql_error("could not read the kept schema archive"))?
    else {
        return Ok(None);
    };
    let dir = schema_workdir()?;
    let path = dir.path().join("schema.dump");
    let write = |p: &std::path::Path, bytes: &[u8]| {
        std::fs::write(p, bytes).map_err(|e| MigrateError::Fatal(format!("could not write {}: {e}", p.display())))
    };
    write(&path, row.get::<_, &[u8]>(0))?;
    write(&dir.path().join("schema.list"), row.get::<_, &[u8]>(1))?;
    Ok(Some(Archive { _dir: dir, path }))
}

/// A schema archive of the source as it is now.
async fn dump_current(pg_bin: &std::path::Path, source: &ConnInfo) -> Result<Archive, MigrateError> {
    let dir = schema_workdir()?;
    let src = connect(source, "pgdms-apply migrate").await?;
    src.client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(load::sql_error("source"))?;
    let snapshot: String = src
        .client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(load::sql_error("could not export a snapshot of the source"))?
        .get(0);
    let path = schema::dump(pg_bin, source, &snapshot, dir.path()).await?;
    drop(src);
    Ok(Archive { _dir: dir, path })
}

/// The end of a migration: catch up, set sequences, validate, report, and drop the slot if
/// asked. The source should be quiet (applications stopped or read-only).
#[allow(clippy::too_many_arguments)]
pub async fn cutover(
    source: &ConnInfo,
    target: &ConnInfo,
    target_role: Option<&str>,
    apply_opts: &ApplyOptions,
    on_error: OnError,
    drop_slot: bool,
    skip_validate: bool,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<validate::TableReport>, MigrateError> {
    let slot = apply_opts.slot.clone();
    let src = connect(source, "pgdms-apply cutover").await?;
    let until: Lsn = src
        .client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(load::sql_error("source"))?
        .get::<_, String>(0)
        .parse()
        .unwrap_or_default();
    tracing::info!(%slot, %until, "catching up to the source's current position");
    let mut opts = apply_opts.clone();
    opts.until = Some(until);
    {
        let (tgt, _) = open_session(target, target_role, "pgdms-apply cutover", false).await?;
        load::prepare_control_tables(&tgt.client).await?;
        set_reloaded_tables(&tgt.client, &slot, &mut opts).await?;
    }
    let connect_target = || PostgresTarget::connect(target, on_error, "on", target_role);
    match apply::run(source, connect_target, &opts, shutdown).await? {
        Finished::Reached => {}
        Finished::Interrupted => return Err(MigrateError::Fatal("cutover interrupted before catching up".into())),
    }
    let (tgt, _) = open_session(target, target_role, "pgdms-apply cutover", false).await?;
    let n = load::sequences::sync(&src.client, &tgt.client).await?;
    tracing::info!(sequences = n, "sequences set to the source's values");
    let mapping = apply_opts.mapping.as_deref().cloned().unwrap_or_default();
    let reports = if skip_validate { Vec::new() } else { validate_all(&src.client, &tgt.client, &mapping).await? };
    if reports.iter().any(|r| !r.ok()) {
        tracing::warn!(%slot, "tables differ: the slot is kept, to stream again after fixing the target");
        return Ok(reports);
    }
    if drop_slot {
        let mut repl = ReplicationConnection::connect(source).await?;
        repl.drop_slot(&slot, true).await?;
        tracing::info!(%slot, "slot dropped");
    }
    tgt.client
        .execute(
            &format!("UPDATE {CONTROL_SCHEMA}.migration SET phase = 'done', updated_at = now() WHERE slot_name = $1"),
            &[&slot],
        )
        .await
        .map_err(load::sql_error("could not record the migration as done"))?;
    Ok(reports)
}

/// Compares every table of the source with the target's.
pub async fn validate_all(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    mapping: &Mapping,
) -> Result<Vec<validate::TableReport>, MigrateError> {
    source.batch_execute(validate::SAME_TEXT).await.map_err(load::sql_error("source"))?;
    target.batch_execute(validate::SAME_TEXT).await.map_err(load::sql_error("target"))?;
    source.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(load::sql_error("source"))?;
    let tables: Vec<SourceTable> = load::plan::source_tables(source)
        .await
        .map_err(load::sql_error("could not list the source's tables"))?
        .into_iter()
        .filter_map(|t| t.mapped(mapping))
        .collect();
    let mut reports = Vec::with_capacity(tables.len());
    for t in &tables {
        let r = validate::compare(source, target, t)
            .await
            .map_err(|e| MigrateError::Fatal(format!("could not validate {}: {e}", t.qualified())))?;
        reports.push(r);
    }
    let _ = source.batch_execute("COMMIT").await;
    Ok(reports)
}

impl From<crate::target::TargetError> for MigrateError {
    fn from(e: crate::target::TargetError) -> Self {
        MigrateError::Apply(ApplyError::Target(e))
    }
}

/// The migration into a heterogeneous target: slot and snapshot, every table read row by
/// row in the snapshot and written through the DMS mapping, then CDC. Restartable like the
/// PostgreSQL path: the target records the phase and the tables loaded, a rerun reloads the
/// others from a temporary slot's snapshot, and CDC passes over their earlier changes.
pub async fn migrate_rows<T, F, Fut>(
    source: &ConnInfo,
    connect_target: F,
    opts: &MigrateOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Finished, MigrateError>
where
    T: crate::target::LoadTarget,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::target::TargetError>>,
{
    let slot = opts.apply.slot.clone();
    let cdc = opts.mode == Mode::FullLoadAndCdc;
    let mut target = connect_target().await?;
    target.start(&slot).await?;
    let recorded = target.migration(&slot).await?;
    let mut repl = ReplicationConnection::connect(source).await?;
    match recorded.as_ref().map(|(phase, _)| phase.as_str()) {
        None => {
            let snapshot = new_migration_slot(repl, &slot, cdc).await?;
            target.set_migration(&slot, "load", snapshot.lsn).await?;
            // The exporter stays open until the session imported the snapshot; a
            // full-load-only slot is temporary and goes once the load is done.
            let session = load::snapshot_session(source, &snapshot.name).await?;
            load_rows_phase(&session.client, &mut target, opts, snapshot.lsn, &[]).await?;
            drop(snapshot);
        }
        Some("load") => {
            if cdc && !slot_exists(&mut repl, &slot).await? {
                return Err(MigrateError::Fatal(format!(
                    "replication slot \"{slot}\" of this migration is gone: the changes since its start are lost; \
                     start over with a new target (or remove its pgdms_* records) and a new slot"
                )));
            }
            drop(repl);
            let snapshot = reload_snapshot(source).await?;
            let loaded = target.loaded_tables(&slot).await?;
            tracing::info!(%slot, tables_loaded = loaded.len(), snapshot_lsn = %snapshot.lsn, "resuming the full load");
            let session = load::snapshot_session(source, &snapshot.name).await?;
            load_rows_phase(&session.client, &mut target, opts, snapshot.lsn, &loaded).await?;
            drop(snapshot);
        }
        Some(_) => {}
    }
    let start = match target.migration(&slot).await? {
        Some((phase, start)) => {
            if phase == "load" {
                target.set_migration(&slot, if cdc { "cdc" } else { "done" }, start).await?;
            }
            start
        }
        None => Lsn(0),
    };
    if !cdc {
        return Ok(Finished::Reached);
    }
    let mut apply_opts = opts.apply.clone();
    mark_reloaded(&mut apply_opts, start, target.loaded_tables(&slot).await?);
    drop(target);
    stream_changes(source, connect_target, opts, &apply_opts, shutdown).await
}

/// Loads every selected table not in `loaded`, one after the other, each in a target
/// transaction of its own (where the target has transactions).
async fn load_rows_phase<T: crate::target::LoadTarget>(
    src: &tokio_postgres::Client,
    target: &mut T,
    opts: &MigrateOptions,
    snapshot_lsn: Lsn,
    loaded: &[(u32, String, Lsn)],
) -> Result<(), MigrateError> {
    use crate::load::rows::{mapped, source_relations, TableReader};
    let rels = source_relations(src).await.map_err(load::sql_error("could not list the source's tables"))?;
    let started = std::time::Instant::now();
    let (mut tables, mut total) = (0usize, 0u64);
    for rel in rels {
        if loaded.iter().any(|(oid, _, _)| *oid == rel.oid) {
            continue;
        }
        let Some((target_rel, kept)) = mapped(&rel, &opts.mapping) else { continue };
        let source_name = rel.qualified();
        target.load_begin(&target_rel, snapshot_lsn).await?;
        let mut reader = TableReader::open(src, &rel, 1000)
            .await
            .map_err(|error| LoadError::Table { table: source_name.clone(), error })?;
        let mut rows = 0u64;
        loop {
            let chunk =
                reader.next_chunk().await.map_err(|error| LoadError::Table { table: source_name.clone(), error })?;
            if chunk.is_empty() {
                break;
            }
            rows += chunk.len() as u64;
            let chunk: Vec<crate::apply::change::Row> = if kept.len() == rel.columns.len() {
                chunk
            } else {
                chunk.into_iter().map(|r| kept.iter().map(|&i| r[i].clone()).collect()).collect()
            };
            target.load_rows(&target_rel, &chunk).await?;
        }
        target.load_end(&target_rel, &source_name, &opts.apply.slot, snapshot_lsn).await?;
        tracing::info!(table = %source_name, rows, "table loaded");
        tables += 1;
        total += rows;
    }
    tracing::info!(tables, rows = total, seconds = format!("{:.1}", started.elapsed().as_secs_f64()), "full load done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::role_named;

    #[test]
    fn refused_owner_statements_name_their_role() {
        assert_eq!(
            role_named("must be able to SET ROLE \"postgres\" | Command was: ALTER TABLE t OWNER TO postgres;")
                .as_deref(),
            Some("postgres")
        );
        assert_eq!(role_named("could not execute query: ERROR:  role \"app\" does not exist").as_deref(), Some("app"));
        assert_eq!(role_named("permission denied for schema x"), None);
    }
}

//! The migration engine: one runner for every target kind. Slot and snapshot, schema, full
//! load, CDC; and the cutover that ends it (`cutover`).
//!
//! 1. A replication slot is created with an exported snapshot: the slot's changes start
//!    exactly where the snapshot ends, so the load plus the changes are the source's
//!    history with no gap and no overlap.
//! 2. While the connection that exported it stays idle, the load imports the snapshot. A
//!    PostgreSQL target takes its own path (`postgres`): the schema's pre-data restored,
//!    the tables copied in parallel (`crate::load`), the post-data (indexes, constraints)
//!    built in parallel, the sequences set. Other targets get the rows table by table,
//!    through the DMS mapping (`rows`).
//! 3. CDC streams from the slot's consistent point (`crate::apply`).
//!
//! The target records the phase and the tables loaded (`crate::sink::control`), and
//! [`plan::plan`] decides from them what a rerun does: a crash during the load reloads only
//! the tables not recorded as loaded, from a snapshot of a temporary slot of their own; CDC
//! then passes over those tables' changes committed before that snapshot (they are in the
//! copy).

mod archive;
pub mod cutover;
pub mod plan;
mod postgres;
pub mod reload;
mod rows;

use crate::apply::{self, ApplyError, ApplyOptions, Finished};
use crate::load::schema::{self, SchemaError};
use crate::load::LoadError;
use crate::mapping::Mapping;
use crate::pgconn::{identity, ConnInfo};
use crate::sink::control::{ControlStore, MigrationRecord, Phase};
use crate::sink::spec::SinkFactory;
use crate::sink::{LoadTarget, Target, TargetError};
use crate::stream::{ReplicationConnection, ReplicationError};
use pgdms_proto::Lsn;
use plan::{Load, Refusal};
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
    pub drop_slot_on_finish: bool,
    /// Table mappings (also in `apply.mapping`, for CDC).
    pub mapping: Mapping,
    /// `--reload-table`: tables to copy again from a new snapshot before streaming on.
    pub reload: Vec<reload::TablePattern>,
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
    #[error(transparent)]
    Validate(#[from] crate::validate::ValidateError),
    /// The run cannot go on as things stand; the message says what to do.
    #[error("{0}")]
    Refused(String),
    /// A local file (the schema archive) could not be written or read.
    #[error("{0}")]
    Local(String),
    /// The run ended with tables set aside (`--on-table-error suspend`).
    #[error("{}", describe_suspended(slot, tables))]
    Suspended { slot: String, tables: Vec<crate::sink::control::SuspendedTable> },
}

fn describe_suspended(slot: &str, tables: &[crate::sink::control::SuspendedTable]) -> String {
    let list: Vec<String> =
        tables.iter().map(|t| format!("{} ({} changes passed over; {})", t.name, t.passed_over, t.error)).collect();
    let first = tables.first().map_or("SCHEMA.NAME", |t| t.name.as_str());
    format!(
        "{} of migration \"{slot}\" suspended, not in step with the source: {}. Fix the cause on the target, \
         then run the same migrate command with --reload-table for each (--reload-table '{first}')",
        match tables.len() {
            1 => "1 table".to_string(),
            n => format!("{n} tables"),
        },
        list.join("; ")
    )
}

/// Ends a run that left tables suspended with [`MigrateError::Suspended`], which names them.
pub async fn check_suspended(sink: &SinkFactory, slot: &str) -> Result<(), MigrateError> {
    // Only a PostgreSQL target records suspended tables (and opening another kind again,
    // a stream file, is not free of effects).
    if !matches!(sink.spec, crate::sink::spec::TargetSpec::Postgres(_)) {
        return Ok(());
    }
    let mut target = sink.connect().await?;
    target.start(slot).await?;
    let tables = target.suspended_tables(slot).await?;
    if tables.is_empty() {
        return Ok(());
    }
    Err(MigrateError::Suspended { slot: slot.to_string(), tables })
}

/// Refuses table-level options (`--on-table-error suspend`, `--reload-table`) a target
/// cannot honour, before anything is created: only a PostgreSQL target records suspended
/// tables.
pub fn check_table_options(
    sink: &SinkFactory,
    on_table_error: crate::sink::OnTableError,
    reload: bool,
) -> Result<(), MigrateError> {
    let suspend = on_table_error == crate::sink::OnTableError::Suspend;
    if (suspend || reload) && !matches!(sink.spec, crate::sink::spec::TargetSpec::Postgres(_)) {
        let what = if suspend { "--on-table-error suspend" } else { "--reload-table" };
        return Err(MigrateError::Refused(format!(
            "{what} needs a PostgreSQL target for now: this target cannot record suspended tables. \
             Leave it out (a refused table then stops the run, naming it)"
        )));
    }
    Ok(())
}

impl From<crate::pgconn::client::ConnectError> for MigrateError {
    fn from(e: crate::pgconn::client::ConnectError) -> Self {
        MigrateError::Load(e.into())
    }
}

impl From<TargetError> for MigrateError {
    fn from(e: TargetError) -> Self {
        MigrateError::Apply(ApplyError::Target(e))
    }
}

/// What a refusal of the plan means, and what to do about it.
fn refused(r: Refusal, slot: &str) -> MigrateError {
    MigrateError::Refused(match r {
        Refusal::SlotWithoutMigration => format!(
            "replication slot \"{slot}\" exists, but the target has no record of a migration from it: \
             to stream from it into a target that already holds the data, use `pgdms-apply cdc`; \
             to start a new migration, drop it first (pgdms-apply slot drop --slot {slot})"
        ),
        Refusal::SlotGone => format!(
            "replication slot \"{slot}\" of this migration is gone: the changes since its start are lost. \
             Start over: delete the migration's records on the target (PostgreSQL: DELETE FROM \
             pgdms_apply.migration WHERE slot_name = '{slot}'; MySQL and SQLite: the same in pgdms_migration and \
             pgdms_load_progress; JSON lines: remove the .progress file), then rerun"
        ),
        Refusal::ResumeIntoKeptTables => format!(
            "the last run of this migration stopped during the load, and with --target-prep do-nothing \
             the unfinished tables may hold part of a copy next to rows of their own: empty them and \
             rerun with --target-prep truncate, or start over (DELETE FROM pgdms_apply.migration \
             WHERE slot_name = '{slot}' on the target, and drop the slot)"
        ),
    })
}

/// Refuses a PostgreSQL target that is the source database itself (reached by whatever
/// path), before anything is created on either side.
pub async fn refuse_same_database(source: &ConnInfo, sink: &SinkFactory) -> Result<(), MigrateError> {
    let crate::sink::spec::TargetSpec::Postgres(target) = &sink.spec else { return Ok(()) };
    // A side that cannot be reached fails with its own message when it is connected to
    // for the work itself; the check needs both.
    let (from, to) = (identity::database_identity(source).await, identity::database_identity(target).await);
    match (from, to) {
        (Ok(Some(from)), Ok(Some(to))) if from == to => Err(MigrateError::Refused(format!(
            "the target is the source itself: {} and {} reach the same database (system identifier {}, \
             database oid {}). Nothing was created; give --target another database",
            source.describe(),
            target.describe(),
            from.system_identifier,
            from.database_oid
        ))),
        _ => Ok(()),
    }
}

/// Runs (or resumes) the migration of `source` into the target `sink` opens.
pub async fn migrate(
    source: &ConnInfo,
    sink: &SinkFactory,
    opts: &MigrateOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Finished, MigrateError> {
    let slot = opts.apply.slot.clone();
    let cdc = opts.mode == Mode::FullLoadAndCdc;
    check_table_options(sink, opts.apply.on_table_error, !opts.reload.is_empty())?;
    refuse_same_database(source, sink).await?;
    let mut target = sink.connect().await?;
    target.start(&slot).await?;
    let recorded = target.migration(&slot).await?;
    if !opts.reload.is_empty() && matches!(recorded.map(|r| r.phase), None | Some(Phase::Schema)) {
        return Err(MigrateError::Refused(format!(
            "--reload-table: the target holds no loaded migration from slot \"{slot}\" to reload tables into. \
             Run migrate without --reload-table first"
        )));
    }
    let copy = target.copy_path();
    // A row-wise target creates each table as it loads it: --target-prep is PostgreSQL's.
    let prep = if copy.is_some() { opts.prep } else { Prep::DropAndCreate };
    let mut repl = ReplicationConnection::connect(source).await?;
    let slot_info = repl.slot(&slot).await?;
    let exists = slot_info.is_some();
    if !opts.reload.is_empty() && slot_info.as_ref().is_some_and(|s| s.active) {
        return Err(MigrateError::Refused(format!(
            "--reload-table: slot \"{slot}\" is being streamed from (another pgdms-apply runs this migration). \
             Stop it (Ctrl-C or SIGTERM), then run this command: it reloads the tables and streams on"
        )));
    }
    let plan = plan::plan(recorded.map(|r| r.phase), opts.mode, prep, exists).map_err(|r| refused(r, &slot))?;
    if plan.start_over {
        tracing::info!(%slot, "the last run stopped while creating the schema: starting over");
        if exists {
            repl.drop_slot(&slot, true).await?;
        }
        target.forget_migration(&slot).await?;
    }
    let pg_bin = copy.as_ref().map(|_| schema::find_pg_bin(opts.pg_bin.as_deref(), repl.server_version_num() / 10000));
    let pg = copy.as_ref().zip(pg_bin.as_deref());
    // The schema archive of the load's snapshot (PostgreSQL): its post-data is built after the load.
    let mut archive = None;
    let load = match plan.load {
        Load::Fresh => {
            let snapshot = new_migration_slot(repl, &slot, cdc).await?;
            let first = if pg.is_some() { Phase::Schema } else { Phase::Load };
            target.begin_migration(&slot, MigrationRecord { phase: first, consistent_point: snapshot.lsn }).await?;
            Some((snapshot, None))
        }
        Load::Resume => {
            drop(repl);
            let snapshot = reload_snapshot(source, "pgdms_reload").await?;
            let loaded = target.loaded_tables(&slot).await?;
            tracing::info!(%slot, tables_loaded = loaded.len(), snapshot_lsn = %snapshot.lsn, "resuming the full load");
            Some((snapshot, Some(loaded)))
        }
        Load::None => None,
    };
    // A signal stops the load and the post-data step at once, by dropping them: what they
    // had not committed rolls back with their sessions, as after a crash, and the same
    // command resumes from what was committed (the tables recorded as loaded).
    let mut stop = shutdown.clone();
    let stopped = stop.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    if let Some((snapshot, loaded)) = load {
        name_tables_not_migrated(source, &opts.mapping).await?;
        let loading = async {
            match pg {
                Some((copy, pg_bin)) => {
                    postgres::copy_phase(source, copy, opts, pg_bin, snapshot, loaded.as_deref()).await
                }
                None => rows::load(source, &mut target, opts, snapshot, loaded.as_deref().unwrap_or_default())
                    .await
                    .map(|()| None),
            }
        };
        tokio::select! {
            loaded = loading => archive = loaded?,
            _ = &mut stopped => return Ok(interrupted(&slot, "the full load")),
        }
    }
    if plan.post_data {
        let next = if cdc { Phase::Cdc } else { Phase::Done };
        let finishing = async {
            match pg {
                // Indexes, sequences and table mappings, then the next phase, in one transaction.
                Some((copy, pg_bin)) => postgres::post_data(source, copy, opts, pg_bin, archive.as_ref(), next).await,
                None => {
                    if !target.set_phase(&slot, next).await? {
                        return Err(MigrateError::Refused(format!(
                            "the target lost the record of migration \"{slot}\""
                        )));
                    }
                    tracing::info!(%slot, phase = %next, "migration phase");
                    Ok(())
                }
            }
        };
        tokio::select! {
            done = finishing => done?,
            _ = &mut stopped => return Ok(interrupted(&slot, "building indexes and constraints")),
        }
    }
    if let (false, Some(copy)) = (opts.reload.is_empty(), &copy) {
        // A slot name of its own: a resumed load's temporary slot may still be going away.
        let snapshot = reload_snapshot(source, "pgdms_reload_table").await?;
        tokio::select! {
            done = reload::reload(source, copy, opts, &opts.reload, snapshot) => done?,
            _ = &mut stopped => return Ok(interrupted(&slot, "reloading tables")),
        }
    }
    if !plan.stream {
        return Ok(Finished::Reached);
    }
    // CDC from the slot's consistent point, passing over what reloaded tables already hold.
    let mut apply_opts = opts.apply.clone();
    set_reloaded_tables(&mut target, &slot, &mut apply_opts).await?;
    drop(target);
    stream_changes(source, sink, opts.drop_slot_on_finish, &apply_opts, shutdown).await
}

/// A migration stopped by a signal while `during`.
fn interrupted(slot: &str, during: &str) -> Finished {
    tracing::info!(%slot, "stopped during {during}: what was committed stays, the same command resumes");
    Finished::Interrupted
}

/// Says which of the source's tables the migration leaves out, and why.
async fn name_tables_not_migrated(source: &ConnInfo, mapping: &Mapping) -> Result<(), MigrateError> {
    let conn = crate::pgconn::client::connect(source, "pgdms-apply").await?;
    let left_out = crate::load::skipped::not_migrated(&conn.client)
        .await
        .map_err(crate::load::sql_error("source: could not list the tables left out"))?;
    for t in left_out.iter().filter(|t| mapping.includes(&t.schema, &t.name)) {
        tracing::warn!(table = %t.qualified(), why = t.why, "not migrated");
    }
    Ok(())
}

/// Creates the migration's slot with an exported snapshot. Full load only: the slot is
/// there for its snapshot alone, temporary, and goes with the connection.
async fn new_migration_slot(repl: ReplicationConnection, slot: &str, cdc: bool) -> Result<Snapshot, MigrateError> {
    let snapshot = Snapshot::export(repl, slot, !cdc).await?;
    tracing::info!(%slot, consistent_point = %snapshot.lsn, snapshot = %snapshot.name, "slot created");
    Ok(snapshot)
}

/// A resumed load: the first snapshot is gone with its connection, so the tables not loaded
/// yet are loaded from a temporary slot's snapshot, and CDC passes over their changes
/// committed before it.
async fn reload_snapshot(source: &ConnInfo, prefix: &str) -> Result<Snapshot, MigrateError> {
    let repl = ReplicationConnection::connect(source).await?;
    Snapshot::export(repl, &format!("{prefix}_{}", std::process::id()), true).await
}

/// An exported snapshot, and the replication connection that exported it: it lives as long
/// as that connection stays open and idle.
struct Snapshot {
    exporter: ReplicationConnection,
    name: String,
    /// The consistent point of the slot created with it.
    lsn: Lsn,
}

impl Snapshot {
    /// Creates slot `slot` on `repl` with an exported snapshot.
    async fn export(mut repl: ReplicationConnection, slot: &str, temporary: bool) -> Result<Snapshot, MigrateError> {
        let created = repl.create_slot(slot, temporary, true).await?;
        let name = created
            .snapshot_name
            .ok_or_else(|| MigrateError::Refused(format!("the source exported no snapshot with slot \"{slot}\"")))?;
        Ok(Snapshot { exporter: repl, name, lsn: created.consistent_point })
    }
}

/// Tables loaded from a later snapshot than the migration's slot (reloaded after a crash),
/// with that snapshot's LSN: CDC passes over their changes (rows, by oid, and DDL, by name)
/// committed before it. Sets `opts.reloaded`.
pub async fn set_reloaded_tables<T: ControlStore>(
    target: &mut T,
    slot: &str,
    opts: &mut ApplyOptions,
) -> Result<(), MigrateError> {
    let Some(migration) = target.migration(slot).await? else { return Ok(()) };
    for t in target.loaded_tables(slot).await? {
        if t.snapshot_lsn > migration.consistent_point {
            opts.reloaded.by_oid.insert(t.source_oid, t.snapshot_lsn);
            opts.reloaded.by_name.insert(t.name, t.snapshot_lsn);
        }
    }
    Ok(())
}

/// CDC from the slot's consistent point into the target `sink` opens; drops the slot once
/// `--until` is reached if asked.
pub async fn stream_changes(
    source: &ConnInfo,
    sink: &SinkFactory,
    drop_slot_on_finish: bool,
    apply_opts: &ApplyOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Finished, MigrateError> {
    let finished = apply::run(source, || sink.connect(), apply_opts, shutdown).await?;
    if finished == Finished::Reached && drop_slot_on_finish {
        let slot = &apply_opts.slot;
        let dropped = async { ReplicationConnection::connect(source).await?.drop_slot(slot, true).await }.await;
        dropped.map_err(|e| {
            MigrateError::Refused(format!("the migration finished, but dropping slot \"{slot}\" failed: {e}"))
        })?;
        tracing::info!(%slot, "migration finished: slot dropped");
    }
    Ok(finished)
}

//! The sink: the targets changes land in (named so as not to be cargo's `target/`).
//!
//! Every target implements [`Target`]; the apply loop (`crate::apply`) drives it the same
//! way whatever it is. A target applies batches inside a transaction of its own (a *group*
//! of source transactions), and stores the end LSN of the group's last source transaction
//! in the same transaction, so that after any crash it can say exactly where to resume.
//! [`LoadTarget`] adds the full load and the migration's records ([`control`]); [`spec`]
//! is the one place that decides per target kind.
//!
//! * [`postgres`]: a PostgreSQL target, lossless (COPY for the load, DDL replayed).
//! * [`mysql`], [`sqlite`], [`jsonl`]: the heterogeneous targets, through the DMS type
//!   mapping ([`typemap`]) and row-wise SQL ([`rowsql`]).

pub(crate) mod control;
pub(crate) mod jsonl;
pub(crate) mod mysql;
pub(crate) mod postgres;
pub(crate) mod rowsql;
pub(crate) mod spec;
pub mod sqlite;
pub mod typemap;

use crate::error::ErrorKind;
use crate::model::batch::Batch;
use crate::model::{RelInfo, Row};
use crate::pgconn::ConnInfo;
use control::{ControlError, ControlStore};
use pgdms_proto::Lsn;
use std::future::Future;
use std::sync::Arc;

/// What to do with a table the target refuses (its load fails, or a change of it cannot be
/// applied with `--on-error stop`): the reference's table-level error handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnTableError {
    /// Stop the migration, naming the table; what was loaded and applied stays, and the
    /// same command resumes once the cause is fixed.
    #[default]
    Stop,
    /// Set the table aside (recorded in the target's `pgdms_apply.suspended_table`), pass
    /// over its changes, counting them, and go on with every other table; `--reload-table`
    /// brings it back.
    Suspend,
}

/// What to do when a change cannot be applied (a constraint violation, a missing table...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Stop, naming the table, the LSN and the row's key. Nothing of the group is committed.
    Stop,
    /// Record the failing change in the exceptions table on the target and go on.
    Log,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The connection failed, the server went away, or it rolled the transaction back
    /// (a deadlock): retry from the last committed group.
    #[error("target connection: {0}")]
    Transient(String),
    /// A change that cannot be applied.
    #[error("cannot apply {operation} on {table} at LSN {lsn} (key {key}): {error}")]
    Change {
        table: String,
        /// The source table's oid, for a row change (not DDL).
        source_oid: Option<u32>,
        operation: &'static str,
        lsn: Lsn,
        key: String,
        error: String,
    },
    /// Updates or deletes of a table the source logs no old key for.
    #[error(
        "cannot apply {operation} on {table} at LSN {lsn}: the source logs no key for its rows. \
         On the source run ALTER TABLE {table} REPLICA IDENTITY FULL (or add a primary key); \
         changes already in the WAL can be passed over with --on-error=log, which records them \
         in the exceptions table"
    )]
    NoIdentity { table: String, operation: &'static str, lsn: Lsn },
    /// The target refused a statement; trying again gives the same answer.
    #[error("target: {0}")]
    Refused(String),
    /// The target cannot be written as configured (its address, rights, settings).
    #[error("target: {0}")]
    Config(String),
    /// The target's control records are damaged or from a newer release.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Someone tampered with the session pgdms-apply writes through.
    #[error("target: {0}")]
    Tampered(String),
}

impl TargetError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TargetError::Transient(_) => ErrorKind::Transient,
            TargetError::Change { operation: "ddl", .. } => ErrorKind::RefusedDdl,
            TargetError::Change { .. } | TargetError::NoIdentity { .. } => ErrorKind::RefusedChange,
            TargetError::Refused(_) => ErrorKind::Refused,
            TargetError::Config(_) => ErrorKind::Configuration,
            TargetError::Control(_) => ErrorKind::Corruption,
            TargetError::Tampered(_) => ErrorKind::Tampered,
        }
    }
}

/// Session settings of the source's decoding session that value texts depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceSettings {
    pub date_style: Option<String>,
    pub interval_style: Option<String>,
}

pub trait Target {
    /// Prepares the target (its control tables) and returns the end LSN of the last source
    /// transaction applied for `slot`, if any.
    fn start(&mut self, slot: &str) -> impl Future<Output = Result<Option<Lsn>, TargetError>>;

    /// Adopts the source session's settings for value texts.
    fn configure(&mut self, settings: &SourceSettings) -> impl Future<Output = Result<(), TargetError>>;

    /// Applies a batch inside the open group (opening one if needed).
    fn apply(&mut self, batch: &Batch) -> impl Future<Output = Result<(), TargetError>>;

    /// Empties exactly these tables, in one statement.
    fn truncate(
        &mut self,
        rels: &[Arc<RelInfo>],
        restart_identity: bool,
        lsn: Lsn,
    ) -> impl Future<Output = Result<(), TargetError>>;

    /// Replays a DDL command inside the open group (opening one if needed), from its
    /// before/after definitions.
    fn ddl(&mut self, ddl: &pgdms_proto::Ddl, lsn: Lsn) -> impl Future<Output = Result<(), TargetError>>;

    /// Creates `rel`'s table from its relation record if the target lacks it (inside the
    /// open group): for rows that come before their table's DDL record.
    fn ensure_table(&mut self, rel: &RelInfo, lsn: Lsn) -> impl Future<Output = Result<(), TargetError>>;

    /// Commits the open group, recording `end_lsn` as applied (nothing to do without one).
    fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> impl Future<Output = Result<(), TargetError>>;

    /// Abandons the open group.
    fn rollback(&mut self) -> impl Future<Output = Result<(), TargetError>>;

    /// Commit every source transaction as its own group (a stream target numbers the
    /// changes of each transaction by its end LSN).
    fn group_per_transaction(&self) -> bool {
        false
    }

    /// The target commits the open transaction whenever its schema changes (MySQL's DDL).
    /// A source transaction with DDL, or describing a table anew, then comes as a group of
    /// its own, so the target can record how far into that transaction it got before each
    /// implicit commit, and resume exactly there.
    fn schema_changes_commit(&self) -> bool {
        false
    }

    /// Does the target record every position the apply acknowledges to the source (so
    /// that a slot found ahead of it was advanced behind the apply's back)? Then the apply
    /// confirms an idle stream's position only after [`Target::advance`] recorded it.
    fn records_acknowledged(&self) -> bool {
        false
    }

    /// The source had nothing more to apply up to `lsn` (an idle stream's position): record
    /// it as the acknowledged position, outside any group.
    fn advance(&mut self, _lsn: Lsn) -> impl Future<Output = Result<(), TargetError>> {
        std::future::ready(Ok(()))
    }

    /// The position last recorded by [`Target::advance`] or a commit, when this target
    /// records them (`None`: not known, as on a target written by an older release).
    fn acknowledged(&mut self, _slot: &str) -> impl Future<Output = Result<Option<Lsn>, TargetError>> {
        std::future::ready(Ok(None))
    }

    /// Can this target hold a table without columns to write (`CREATE TABLE t ()`, or only
    /// generated columns)? MySQL and SQLite cannot: such a table is named as not migrated,
    /// and its changes passed over.
    fn holds_columnless_tables(&self) -> bool {
        true
    }

    /// Holds the migration of `slot` for this session: no other apply session and no reload
    /// of its tables runs meanwhile (refused with a transient error: the last session may not
    /// have gone yet).
    fn claim(&mut self, _slot: &str) -> impl Future<Output = Result<(), TargetError>> {
        std::future::ready(Ok(()))
    }

    /// Can this target set tables aside (`--on-table-error suspend`, `--reload-table`)?
    fn suspends_tables(&self) -> bool {
        false
    }

    /// The tables of `slot` set aside by `--on-table-error suspend`.
    fn suspended_tables(
        &mut self,
        _slot: &str,
    ) -> impl Future<Output = Result<Vec<control::SuspendedTable>, TargetError>> {
        std::future::ready(Ok(Vec::new()))
    }

    /// Sets table `source_oid` aside after the target refused a change of it at `lsn`,
    /// outside any group (the caller rolled the group back).
    fn suspend(
        &mut self,
        _source_oid: u32,
        _name: &str,
        _lsn: Lsn,
        _error: &str,
    ) -> impl Future<Output = Result<(), TargetError>> {
        std::future::ready(Err(TargetError::Config("this target cannot set tables aside".into())))
    }

    /// Counts changes of suspended tables passed over (source oid, count), inside the open
    /// group (opening one if needed), so that the count is exact across restarts.
    fn passed_over(&mut self, _counts: &[(u32, i64)]) -> impl Future<Output = Result<(), TargetError>> {
        std::future::ready(Ok(()))
    }

    /// The source described `rel` anew right after its DDL record (at `lsn`): a target
    /// that creates tables from relation records gives it this shape now.
    fn described(&mut self, _rel: &RelInfo, _lsn: Lsn) -> impl Future<Output = Result<(), TargetError>> {
        std::future::ready(Ok(()))
    }
}

/// What a PostgreSQL target's full load needs for its own path: parallel COPY sessions
/// into the target (FREEZE where the tables are new), with the schema's pre- and post-data
/// restored around them (`crate::migrate::postgres`).
#[derive(Debug, Clone)]
pub struct CopyPath {
    pub target: ConnInfo,
    /// `--target-role`.
    pub role: Option<String>,
}

/// A target a migration loads: its records ([`ControlStore`]), and either the rows, one
/// table at a time through the DMS mapping, or, where the target offers it
/// ([`LoadTarget::copy_path`]), its own bulk path.
pub trait LoadTarget: Target + ControlStore {
    /// The target's bulk load path, when it has one: the engine then loads through it rather
    /// than through the row methods below.
    fn copy_path(&self) -> Option<CopyPath> {
        None
    }

    /// Starts loading `rel`: its table dropped and created from the mapping (json, jsonb and
    /// hstore columns nullable until `load_end`), in a transaction where the target has them.
    fn load_begin(&mut self, rel: &RelInfo, snapshot_lsn: Lsn) -> impl Future<Output = Result<(), TargetError>>;

    fn load_rows(&mut self, rel: &RelInfo, rows: &[Row]) -> impl Future<Output = Result<(), TargetError>>;

    /// Ends loading `rel`: NOT NULL restored, the table recorded as loaded, committed.
    fn load_end(
        &mut self,
        rel: &RelInfo,
        source_name: &str,
        slot: &str,
        snapshot_lsn: Lsn,
    ) -> impl Future<Output = Result<(), TargetError>>;
}

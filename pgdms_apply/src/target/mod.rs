//! Targets: where changes land. Every target implements [`Target`]; the apply loop
//! (`crate::apply`) drives it the same way whatever it is.
//!
//! A target applies batches inside a transaction of its own (a *group* of source
//! transactions), and stores the end LSN of the group's last source transaction in the same
//! transaction, so that after any crash it can say exactly where to resume.

pub mod jsonl;
pub mod mysql;
pub mod postgres;
pub mod rowsql;
pub mod sqlite;
pub mod typemap;

use crate::apply::batch::Batch;
use crate::apply::change::{RelInfo, Row};
use crate::stream::Lsn;
use std::future::Future;
use std::sync::Arc;

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
    /// The connection failed or the server went away: retry from the last committed group.
    #[error("target connection: {0}")]
    Connection(String),
    /// A change that cannot be applied.
    #[error("cannot apply {operation} on {table} at LSN {lsn} (key {key}): {error}")]
    Change { table: String, operation: &'static str, lsn: Lsn, key: String, error: String },
    /// Updates or deletes of a table the source logs no old key for.
    #[error(
        "cannot apply {operation} on {table} at LSN {lsn}: the source logs no key for its rows. \
         On the source run ALTER TABLE {table} REPLICA IDENTITY FULL (or add a primary key); \
         changes already in the WAL can be passed over with --on-error=log, which records them \
         in the exceptions table"
    )]
    NoIdentity { table: String, operation: &'static str, lsn: Lsn },
    #[error("target: {0}")]
    Other(String),
}

impl TargetError {
    pub fn is_transient(&self) -> bool {
        matches!(self, TargetError::Connection(_))
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

    /// The source described `rel` anew right after its DDL record (at `lsn`): a target
    /// that creates tables from relation records gives it this shape now.
    fn described(&mut self, _rel: &RelInfo, _lsn: Lsn) -> impl Future<Output = Result<(), TargetError>> {
        std::future::ready(Ok(()))
    }
}

/// A target the full load writes row by row, through the DMS mapping (the heterogeneous
/// targets; a PostgreSQL target loads with COPY, see `crate::load`). It keeps the
/// migration's records itself, as the PostgreSQL target keeps them in `pgdms.migration`.
pub trait LoadTarget: Target {
    /// The migration from `slot` this target holds: its phase and consistent point.
    fn migration(&mut self, slot: &str) -> impl Future<Output = Result<Option<(String, Lsn)>, TargetError>>;

    fn set_migration(
        &mut self,
        slot: &str,
        phase: &str,
        consistent_point: Lsn,
    ) -> impl Future<Output = Result<(), TargetError>>;

    /// The tables loaded so far: source oid, source name and snapshot LSN.
    fn loaded_tables(&mut self, slot: &str) -> impl Future<Output = Result<Vec<(u32, String, Lsn)>, TargetError>>;

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

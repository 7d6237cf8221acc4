//! The one place that decides per target kind: `--target` parsed into a [`TargetSpec`],
//! and [`Sink`], the target of that kind, which every command drives through the target
//! traits whatever it is.

use super::control::{ControlStore, LoadedTable, MigrationRecord, Phase, SuspendedTable};
use super::jsonl::JsonlTarget;
use super::mysql::MySqlTarget;
use super::postgres::PostgresTarget;
use super::sqlite::SqliteTarget;
use super::typemap::MapOptions;
use super::{CopyPath, LoadTarget, OnError, SourceSettings, Target, TargetError};
use crate::model::batch::Batch;
use crate::model::{RelInfo, Row};
use crate::pgconn::ConnInfo;
use pgdms_proto::{Ddl, Lsn};
use std::path::PathBuf;
use std::sync::Arc;

/// The forms `--target` takes, for error messages.
pub const KNOWN_TARGETS: &str = "a PostgreSQL connection string or URI (\"host=db dbname=app\", \
    postgresql://...), mysql://USER:PASSWORD@HOST:PORT[/DATABASE] (or mariadb://), sqlite:PATH, \
    jsonl:PATH or jsonl:- (stdout)";

/// Where changes land, as `--target` names it.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    Postgres(ConnInfo),
    /// mysql://user:password@host:port[/database] (mariadb:// too).
    MySql(String),
    Sqlite(PathBuf),
    /// A file, or None for stdout.
    Jsonl(Option<PathBuf>),
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("--target is empty: give {KNOWN_TARGETS}")]
    Empty,
    #[error("--target has the unknown scheme \"{0}:\": give {KNOWN_TARGETS}")]
    UnknownScheme(String),
    #[error("--target sqlite:PATH needs the database file's path")]
    NoSqlitePath,
    #[error("{what} is not available for {kind} targets yet: it needs a PostgreSQL --target")]
    NotYet { what: String, kind: &'static str },
    #[error("invalid PostgreSQL --target: {0}")]
    Postgres(#[from] crate::pgconn::conninfo::ConnInfoError),
}

impl TargetSpec {
    pub fn parse(target: &str) -> Result<TargetSpec, SpecError> {
        let t = target.trim();
        if t.is_empty() {
            return Err(SpecError::Empty);
        }
        // A scheme is letters before a colon, with no '=' or space before it (a libpq
        // connection string has "key=value" pairs: "host=[::1]" is not a scheme).
        let scheme = t.split_once(':').map(|(s, _)| s).filter(|s| {
            s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        });
        match scheme.map(|s| s.to_ascii_lowercase()).as_deref() {
            None | Some("postgres" | "postgresql") => Ok(TargetSpec::Postgres(ConnInfo::parse(t)?.on("target"))),
            Some("mysql" | "mariadb") => Ok(TargetSpec::MySql(t.to_string())),
            Some("sqlite") => {
                let path = &t["sqlite:".len()..];
                let path = path.strip_prefix("//").unwrap_or(path);
                if path.is_empty() {
                    return Err(SpecError::NoSqlitePath);
                }
                Ok(TargetSpec::Sqlite(path.into()))
            }
            Some("jsonl") => Ok(TargetSpec::Jsonl(match &t["jsonl:".len()..] {
                "-" | "" => None,
                p => Some(p.into()),
            })),
            Some(_) => Err(SpecError::UnknownScheme(scheme.unwrap_or_default().to_string())),
        }
    }

    /// The PostgreSQL target, for a command the other kinds do not offer yet (`what`).
    pub fn postgres(&self, what: &str) -> Result<&ConnInfo, SpecError> {
        match self {
            TargetSpec::Postgres(info) => Ok(info),
            other => Err(SpecError::NotYet { what: what.to_string(), kind: other.kind() }),
        }
    }

    /// The target kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            TargetSpec::Postgres(_) => "PostgreSQL",
            TargetSpec::MySql(_) => "MySQL",
            TargetSpec::Sqlite(_) => "SQLite",
            TargetSpec::Jsonl(_) => "JSON-lines",
        }
    }
}

/// How the target is written, whatever its kind.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub on_error: OnError,
    /// The DMS type mapping (heterogeneous targets).
    pub map: MapOptions,
    /// synchronous_commit of a PostgreSQL target's session.
    pub synchronous_commit: String,
    /// The role a PostgreSQL target is written as (`--target-role`; else the login role).
    pub target_role: Option<String>,
}

/// A target of the kind its spec names, opened anew for each attempt of the apply.
#[derive(Debug, Clone)]
pub struct SinkFactory {
    pub spec: TargetSpec,
    pub settings: SinkSettings,
}

impl SinkFactory {
    pub async fn connect(&self) -> Result<Sink, TargetError> {
        let s = &self.settings;
        Ok(match &self.spec {
            TargetSpec::Postgres(info) => Sink::Postgres(
                PostgresTarget::connect(info, s.on_error, &s.synchronous_commit, s.target_role.as_deref()).await?,
            ),
            TargetSpec::MySql(url) => Sink::MySql(MySqlTarget::connect(url, s.map, s.on_error).await?),
            TargetSpec::Sqlite(path) => Sink::Sqlite(SqliteTarget::open(path, s.map, s.on_error)?),
            TargetSpec::Jsonl(path) => Sink::Jsonl(JsonlTarget::open(path.as_deref(), s.map)?),
        })
    }
}

/// The target, whatever its kind. One per session, built once and never copied around:
/// the PostgreSQL variant's size is no cost worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Sink {
    Postgres(PostgresTarget),
    MySql(MySqlTarget),
    Sqlite(SqliteTarget),
    Jsonl(JsonlTarget),
}

/// Calls `$call` on the target inside, whatever its kind.
macro_rules! each {
    ($sink:expr, $t:ident => $call:expr) => {
        match $sink {
            Sink::Postgres($t) => $call,
            Sink::MySql($t) => $call,
            Sink::Sqlite($t) => $call,
            Sink::Jsonl($t) => $call,
        }
    };
}

impl Target for Sink {
    async fn start(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        each!(self, t => t.start(slot).await)
    }
    async fn configure(&mut self, settings: &SourceSettings) -> Result<(), TargetError> {
        each!(self, t => t.configure(settings).await)
    }
    async fn apply(&mut self, batch: &Batch) -> Result<(), TargetError> {
        each!(self, t => t.apply(batch).await)
    }
    async fn truncate(&mut self, rels: &[Arc<RelInfo>], restart_identity: bool, lsn: Lsn) -> Result<(), TargetError> {
        each!(self, t => t.truncate(rels, restart_identity, lsn).await)
    }
    async fn ddl(&mut self, ddl: &Ddl, lsn: Lsn) -> Result<(), TargetError> {
        each!(self, t => t.ddl(ddl, lsn).await)
    }
    async fn ensure_table(&mut self, rel: &RelInfo, lsn: Lsn) -> Result<(), TargetError> {
        each!(self, t => t.ensure_table(rel, lsn).await)
    }
    async fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), TargetError> {
        each!(self, t => t.commit(end_lsn, commit_time).await)
    }
    async fn rollback(&mut self) -> Result<(), TargetError> {
        each!(self, t => t.rollback().await)
    }
    fn group_per_transaction(&self) -> bool {
        each!(self, t => t.group_per_transaction())
    }
    fn schema_changes_commit(&self) -> bool {
        each!(self, t => t.schema_changes_commit())
    }
    async fn described(&mut self, rel: &RelInfo, lsn: Lsn) -> Result<(), TargetError> {
        each!(self, t => t.described(rel, lsn).await)
    }
    fn records_acknowledged(&self) -> bool {
        each!(self, t => t.records_acknowledged())
    }
    async fn advance(&mut self, lsn: Lsn) -> Result<(), TargetError> {
        each!(self, t => t.advance(lsn).await)
    }
    async fn acknowledged(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        each!(self, t => t.acknowledged(slot).await)
    }
    fn holds_columnless_tables(&self) -> bool {
        each!(self, t => t.holds_columnless_tables())
    }
    async fn claim(&mut self, slot: &str) -> Result<(), TargetError> {
        each!(self, t => t.claim(slot).await)
    }
    fn suspends_tables(&self) -> bool {
        each!(self, t => t.suspends_tables())
    }
    async fn suspended_tables(&mut self, slot: &str) -> Result<Vec<SuspendedTable>, TargetError> {
        each!(self, t => t.suspended_tables(slot).await)
    }
    async fn suspend(&mut self, source_oid: u32, name: &str, lsn: Lsn, error: &str) -> Result<(), TargetError> {
        each!(self, t => t.suspend(source_oid, name, lsn, error).await)
    }
    async fn passed_over(&mut self, counts: &[(u32, i64)]) -> Result<(), TargetError> {
        each!(self, t => t.passed_over(counts).await)
    }
}

impl ControlStore for Sink {
    async fn migration(&mut self, slot: &str) -> Result<Option<MigrationRecord>, TargetError> {
        each!(self, t => t.migration(slot).await)
    }
    async fn begin_migration(&mut self, slot: &str, record: MigrationRecord) -> Result<(), TargetError> {
        each!(self, t => t.begin_migration(slot, record).await)
    }
    async fn set_phase(&mut self, slot: &str, phase: Phase) -> Result<bool, TargetError> {
        each!(self, t => t.set_phase(slot, phase).await)
    }
    async fn forget_migration(&mut self, slot: &str) -> Result<(), TargetError> {
        each!(self, t => t.forget_migration(slot).await)
    }
    async fn loaded_tables(&mut self, slot: &str) -> Result<Vec<LoadedTable>, TargetError> {
        each!(self, t => t.loaded_tables(slot).await)
    }
}

impl LoadTarget for Sink {
    fn copy_path(&self) -> Option<CopyPath> {
        each!(self, t => t.copy_path())
    }
    async fn load_begin(&mut self, rel: &RelInfo, snapshot_lsn: Lsn) -> Result<(), TargetError> {
        each!(self, t => t.load_begin(rel, snapshot_lsn).await)
    }
    async fn load_rows(&mut self, rel: &RelInfo, rows: &[Row]) -> Result<(), TargetError> {
        each!(self, t => t.load_rows(rel, rows).await)
    }
    async fn load_end(
        &mut self,
        rel: &RelInfo,
        source_name: &str,
        slot: &str,
        snapshot_lsn: Lsn,
    ) -> Result<(), TargetError> {
        each!(self, t => t.load_end(rel, source_name, slot, snapshot_lsn).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_forms() {
        assert!(matches!(TargetSpec::parse("host=db dbname=app"), Ok(TargetSpec::Postgres(_))));
        assert!(matches!(TargetSpec::parse("host=[::1] dbname=app"), Ok(TargetSpec::Postgres(_))));
        assert!(matches!(TargetSpec::parse("postgresql://u@db/app"), Ok(TargetSpec::Postgres(_))));
        assert!(matches!(TargetSpec::parse("mysql://u:p@h:3306/d"), Ok(TargetSpec::MySql(_))));
        assert!(matches!(TargetSpec::parse("mariadb://u@h"), Ok(TargetSpec::MySql(_))));
        assert!(
            matches!(TargetSpec::parse("sqlite:/tmp/x.db"), Ok(TargetSpec::Sqlite(p)) if p.as_os_str() == "/tmp/x.db")
        );
        assert!(
            matches!(TargetSpec::parse("sqlite:///tmp/x.db"), Ok(TargetSpec::Sqlite(p)) if p.as_os_str() == "/tmp/x.db")
        );
        assert!(matches!(TargetSpec::parse("sqlite:"), Err(SpecError::NoSqlitePath)));
        assert!(matches!(TargetSpec::parse("jsonl:-"), Ok(TargetSpec::Jsonl(None))));
        assert!(matches!(TargetSpec::parse("jsonl:/tmp/o.jsonl"), Ok(TargetSpec::Jsonl(Some(_)))));
        assert!(matches!(TargetSpec::parse("  "), Err(SpecError::Empty)));
    }

    #[test]
    fn an_unknown_scheme_lists_the_known_ones() {
        let e = TargetSpec::parse("oracle://scott@db/orcl").unwrap_err().to_string();
        assert!(e.contains("\"oracle:\""), "{e}");
        for known in ["postgresql://", "mysql://", "sqlite:PATH", "jsonl:PATH"] {
            assert!(e.contains(known), "{e}");
        }
    }
}

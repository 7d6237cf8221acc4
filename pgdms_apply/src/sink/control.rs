//! The control store: what a target records about the migrations and streams it receives,
//! in the target itself, so that what it holds and how far it got commit together.
//!
//! * The records are typed (the applied end LSN `Target::start` returns, [`MigrationRecord`], [`LoadedTable`]) and read
//!   strictly: a stored LSN or phase that does not parse is an error naming the table, the
//!   column and the value ([`ControlError::Corrupt`]), never "nothing applied", which would
//!   replay or skip changes without a word.
//! * The tables are described once ([`TABLES`]) and rendered per SQL dialect
//!   ([`Dialect`]): PostgreSQL keeps them in schema `pgdms_apply` (`pgdms_apply.apply_progress`), apart
//!   from the `pgdms` schema of the extension, which a target may have too (A -> B -> C), MySQL
//!   and SQLite as `pgdms_apply_progress`. The JSON-lines target keeps the same records in
//!   its progress file.
//! * The store is versioned ([`CONTROL_VERSION`], in table `control_version`): a target
//!   written by an older release is brought up to date (the columns it lacks are added), one
//!   written by a newer release is refused.

use super::TargetError;
use pgdms_proto::Lsn;
use std::fmt;
use std::future::Future;
use std::str::FromStr;

/// The version of the control tables' layout this release writes.
/// 1: the first versioned layout, one set of columns for every target kind.
pub const CONTROL_VERSION: i64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A record that does not parse: the target's control state is damaged.
    #[error(
        "{table}.{column} of slot \"{slot}\" holds \"{value}\", which is not {expected}: the target's control \
         record is damaged. Fix or delete that row (deleting it makes the migration start over from a new \
         slot), then run again"
    )]
    Corrupt { table: String, column: &'static str, slot: String, value: String, expected: &'static str },
    /// Written by a later release, whose layout this one does not know.
    #[error(
        "the target's pgdms control tables are version {found}, newer than this pgdms-apply writes \
         ({CONTROL_VERSION}): run the pgdms-apply release that wrote them"
    )]
    Newer { found: i64 },
}

/// Where a migration stands, as recorded on its target. The order is the order of the
/// phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Creating the schema (PostgreSQL targets); nothing is loaded yet.
    Schema,
    /// Loading the tables.
    Load,
    /// Building indexes and constraints, setting sequences (PostgreSQL targets).
    PostData,
    /// Streaming the changes.
    Cdc,
    /// Finished: a full load only, or cut over.
    Done,
}

impl Phase {
    pub const ALL: [Phase; 5] = [Phase::Schema, Phase::Load, Phase::PostData, Phase::Cdc, Phase::Done];

    /// The word stored on the target.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Schema => "schema",
            Phase::Load => "load",
            Phase::PostData => "post-data",
            Phase::Cdc => "cdc",
            Phase::Done => "done",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phase word that is none of [`Phase::ALL`].
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownPhase;

impl FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Phase, UnknownPhase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s).ok_or(UnknownPhase)
    }
}

/// A migration the target holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationRecord {
    pub phase: Phase,
    /// The consistent point of the migration's slot: its changes start there.
    pub consistent_point: Lsn,
}

/// A table the full load finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedTable {
    pub source_oid: u32,
    /// Its source name, `"schema"."name"`.
    pub name: String,
    /// The LSN of the snapshot it was copied from: its changes committed before are in it.
    pub snapshot_lsn: Lsn,
}

impl MigrationRecord {
    /// A migration record as stored in `table`: phase and consistent point, read strictly.
    pub fn parse(table: &str, slot: &str, phase: &str, consistent_point: &str) -> Result<Self, ControlError> {
        Ok(MigrationRecord {
            phase: parse_phase(table, "phase", slot, phase)?,
            consistent_point: parse_lsn(table, "consistent_point", slot, consistent_point)?,
        })
    }
}

impl LoadedTable {
    /// A loaded table as stored in `table`, its snapshot LSN read strictly.
    pub fn parse(
        table: &str,
        slot: &str,
        source_oid: u32,
        name: String,
        snapshot_lsn: &str,
    ) -> Result<Self, ControlError> {
        Ok(LoadedTable { source_oid, name, snapshot_lsn: parse_lsn(table, "snapshot_lsn", slot, snapshot_lsn)? })
    }
}

/// A table set aside by `--on-table-error suspend`: the target refused its rows, so its
/// changes are passed over (and counted) until `--reload-table` copies it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuspendedTable {
    pub source_oid: u32,
    /// Its source name, `"schema"."name"`.
    pub name: String,
    /// What the target said.
    pub error: String,
    /// Changes of it passed over since.
    pub passed_over: i64,
}

/// Reads a stored LSN, strictly.
pub fn parse_lsn(table: &str, column: &'static str, slot: &str, value: &str) -> Result<Lsn, ControlError> {
    value.parse().map_err(|_| corrupt(table, column, slot, value, "an LSN (X/Y)"))
}

/// Reads a stored phase, strictly.
pub fn parse_phase(table: &str, column: &'static str, slot: &str, value: &str) -> Result<Phase, ControlError> {
    value
        .parse()
        .map_err(|_| corrupt(table, column, slot, value, "a migration phase (schema, load, post-data, cdc, done)"))
}

fn corrupt(table: &str, column: &'static str, slot: &str, value: &str, expected: &'static str) -> ControlError {
    ControlError::Corrupt {
        table: table.to_string(),
        column,
        slot: slot.to_string(),
        value: value.to_string(),
        expected,
    }
}

/// The records every target keeps for the migration engine (`crate::migrate`).
pub trait ControlStore {
    /// The migration from `slot` this target holds.
    fn migration(&mut self, slot: &str) -> impl Future<Output = Result<Option<MigrationRecord>, TargetError>>;

    /// Records a new migration from `slot`, in its first phase.
    fn begin_migration(&mut self, slot: &str, record: MigrationRecord)
        -> impl Future<Output = Result<(), TargetError>>;

    /// Moves the migration from `slot` to `phase`; false when the target holds no such
    /// migration.
    fn set_phase(&mut self, slot: &str, phase: Phase) -> impl Future<Output = Result<bool, TargetError>>;

    /// Forgets the migration from `slot`: its phase, loaded tables and kept schema.
    fn forget_migration(&mut self, slot: &str) -> impl Future<Output = Result<(), TargetError>>;

    /// The tables the full load finished so far.
    fn loaded_tables(&mut self, slot: &str) -> impl Future<Output = Result<Vec<LoadedTable>, TargetError>>;
}

// ---- The one layout, rendered per dialect ----

/// The SQL dialects control tables are rendered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

/// What a control column holds; each dialect has its type for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A replication slot's name (at most 63 bytes).
    Slot,
    Lsn,
    /// A short word: a phase, an operation.
    Word,
    Oid,
    Text,
    Count,
    /// A source commit time (microseconds since 2000-01-01 UTC; PostgreSQL: timestamptz).
    CommitTime,
    /// When the row was written (defaults to now).
    Now,
    Json,
    Bytes,
    /// A generated row id (the table's primary key).
    Id,
}

#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    kind: Kind,
    not_null: bool,
}

const fn col(name: &'static str, kind: Kind, not_null: bool) -> Column {
    Column { name, kind, not_null }
}

/// A control table: its name without prefix (`apply_progress`), columns and primary key.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    key: &'static [&'static str],
}

/// The version table.
pub const VERSION_TABLE: &str = "control_version";

/// Every control table of [`CONTROL_VERSION`].
pub const TABLES: &[Table] = &[
    Table {
        name: "apply_progress",
        columns: &[
            col("slot_name", Kind::Slot, true),
            col("end_lsn", Kind::Lsn, true),
            col("commit_time", Kind::CommitTime, false),
            col("applied_at", Kind::Now, true),
            col("resume_after_item", Kind::Count, false),
            // The position the apply may confirm to the source: everything before it is
            // applied, or had nothing to apply. A slot found past it was advanced by
            // someone else. NULL when written by a release before 0.3 (control version 1).
            col("acked_lsn", Kind::Lsn, false),
        ],
        key: &["slot_name"],
    },
    Table {
        name: "migration",
        columns: &[
            col("slot_name", Kind::Slot, true),
            col("phase", Kind::Word, true),
            col("consistent_point", Kind::Lsn, true),
            col("started_at", Kind::Now, true),
            col("updated_at", Kind::Now, true),
        ],
        key: &["slot_name"],
    },
    Table {
        name: "load_progress",
        columns: &[
            col("slot_name", Kind::Slot, true),
            col("source_oid", Kind::Oid, true),
            col("table_name", Kind::Text, true),
            col("rows", Kind::Count, false),
            col("bytes", Kind::Count, false),
            col("snapshot_lsn", Kind::Lsn, true),
            col("loaded_at", Kind::Now, true),
        ],
        key: &["slot_name", "source_oid"],
    },
    Table {
        name: "migration_schema",
        columns: &[
            col("slot_name", Kind::Slot, true),
            col("archive", Kind::Bytes, true),
            col("list", Kind::Bytes, true),
        ],
        key: &["slot_name"],
    },
    Table {
        name: "apply_exceptions",
        columns: &[
            col("id", Kind::Id, true),
            col("slot_name", Kind::Slot, true),
            col("logged_at", Kind::Now, true),
            col("table_name", Kind::Text, true),
            col("operation", Kind::Word, true),
            col("key", Kind::Json, false),
            col("lsn", Kind::Lsn, true),
            col("xid", Kind::Count, false),
            col("error", Kind::Text, false),
            col("change", Kind::Json, false),
        ],
        key: &["id"],
    },
    Table {
        name: "value_exceptions",
        columns: &[
            col("id", Kind::Id, true),
            col("slot_name", Kind::Slot, true),
            col("lsn", Kind::Lsn, true),
            col("table_name", Kind::Text, true),
            col("column_name", Kind::Text, true),
            col("row_key", Kind::Text, false),
            col("source_value", Kind::Text, false),
            col("recorded_at", Kind::Now, true),
        ],
        key: &["id"],
    },
    Table {
        name: "suspended_table",
        columns: &[
            col("slot_name", Kind::Slot, true),
            col("source_oid", Kind::Oid, true),
            col("table_name", Kind::Text, true),
            // "load" or "cdc": when the target refused it.
            col("suspended_in", Kind::Word, true),
            col("lsn", Kind::Lsn, true),
            col("error", Kind::Text, true),
            col("changes_passed_over", Kind::Count, true),
            col("suspended_at", Kind::Now, true),
        ],
        key: &["slot_name", "source_oid"],
    },
    Table {
        name: "apply_reload_needed",
        columns: &[
            col("id", Kind::Id, true),
            col("slot_name", Kind::Slot, true),
            col("flagged_at", Kind::Now, true),
            col("table_name", Kind::Text, true),
            col("lsn", Kind::Lsn, true),
            col("reason", Kind::Text, true),
        ],
        key: &["id"],
    },
];

impl Dialect {
    fn column_type(self, kind: Kind) -> &'static str {
        use Dialect::*;
        match (self, kind) {
            (Postgres, Kind::Slot | Kind::Word | Kind::Text) => "text",
            (Postgres, Kind::Lsn) => "pg_lsn",
            (Postgres, Kind::Oid) => "oid",
            (Postgres, Kind::Count) => "bigint",
            (Postgres, Kind::CommitTime | Kind::Now) => "timestamptz",
            (Postgres, Kind::Json) => "jsonb",
            (Postgres, Kind::Bytes) => "bytea",
            (Postgres, Kind::Id) => "bigserial",
            (MySql, Kind::Slot) => "VARCHAR(64)",
            (MySql, Kind::Lsn) => "VARCHAR(20)",
            (MySql, Kind::Word) => "VARCHAR(16)",
            (MySql, Kind::Oid | Kind::Count | Kind::CommitTime) => "BIGINT",
            (MySql, Kind::Text | Kind::Json) => "LONGTEXT",
            (MySql, Kind::Now) => "DATETIME(6)",
            (MySql, Kind::Bytes) => "LONGBLOB",
            (MySql, Kind::Id) => "BIGINT AUTO_INCREMENT",
            (Sqlite, Kind::Slot | Kind::Lsn | Kind::Word | Kind::Text | Kind::Json | Kind::Now) => "TEXT",
            (Sqlite, Kind::Oid | Kind::Count | Kind::CommitTime) => "INTEGER",
            (Sqlite, Kind::Bytes) => "BLOB",
            (Sqlite, Kind::Id) => "INTEGER",
        }
    }

    fn now_default(self) -> &'static str {
        match self {
            Dialect::Postgres => "now()",
            Dialect::MySql => "CURRENT_TIMESTAMP(6)",
            Dialect::Sqlite => "CURRENT_TIMESTAMP",
        }
    }

    /// MySQL keys cannot be TEXT: its text columns in a key are VARCHAR.
    fn quote(self, name: &str) -> String {
        match self {
            Dialect::MySql => format!("`{name}`"),
            _ => format!("\"{name}\""),
        }
    }

    fn column_def(self, c: &Column, with_constraints: bool) -> String {
        let mut def = format!("{} {}", self.quote(c.name), self.column_type(c.kind));
        if with_constraints && c.kind == Kind::Now {
            def.push_str(" DEFAULT ");
            def.push_str(self.now_default());
        }
        if with_constraints && c.not_null && c.kind != Kind::Id {
            def.push_str(" NOT NULL");
        }
        def
    }
}

impl Table {
    /// `CREATE TABLE IF NOT EXISTS` of this table, named `qualified`.
    pub fn create(&self, dialect: Dialect, qualified: &str) -> String {
        let mut defs: Vec<String> = self.columns.iter().map(|c| dialect.column_def(c, true)).collect();
        let id_key = self.key == ["id"] && self.columns.iter().any(|c| c.kind == Kind::Id);
        match (dialect, id_key) {
            // SQLite's rowid alias: "INTEGER PRIMARY KEY" on the column itself.
            (Dialect::Sqlite, true) => defs[0].push_str(" PRIMARY KEY AUTOINCREMENT"),
            _ => defs.push(format!(
                "PRIMARY KEY ({})",
                self.key.iter().map(|k| dialect.quote(k)).collect::<Vec<_>>().join(", ")
            )),
        }
        let suffix = match dialect {
            Dialect::MySql => " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            _ => "",
        };
        format!("CREATE TABLE IF NOT EXISTS {qualified} ({}){suffix}", defs.join(", "))
    }

    /// `ALTER TABLE ... ADD COLUMN` for a column a table of an older layout lacks: nullable
    /// and without a default, which every dialect can add to a table with rows.
    pub fn add_column(&self, dialect: Dialect, qualified: &str, column: &Column) -> String {
        format!("ALTER TABLE {qualified} ADD COLUMN {}", dialect.column_def(column, false))
    }
}

/// The SQL a target's control store runs on, for [`prepare`].
pub trait ControlSql {
    fn dialect(&self) -> Dialect;
    /// The quoted, qualified name of control table `table` (`pgdms_apply.apply_progress`).
    fn control_table(&self, table: &str) -> String;
    /// Runs one statement.
    fn control_execute(&mut self, sql: &str) -> impl Future<Output = Result<(), TargetError>>;
    /// The columns of control table `table` (none when it does not exist).
    fn control_columns(&mut self, table: &str) -> impl Future<Output = Result<Vec<String>, TargetError>>;
    /// The version recorded in the version table, if any.
    fn control_version(&mut self) -> impl Future<Output = Result<Option<i64>, TargetError>>;
}

/// Creates the control tables, or brings those of an older layout up to date.
pub async fn prepare<S: ControlSql>(store: &mut S) -> Result<(), TargetError> {
    let d = store.dialect();
    let version_table = store.control_table(VERSION_TABLE);
    store
        .control_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {version_table} ({} {} NOT NULL)",
            d.quote("version"),
            d.column_type(Kind::Count)
        ))
        .await?;
    let found = store.control_version().await?;
    match found {
        Some(v) if v > CONTROL_VERSION => return Err(ControlError::Newer { found: v }.into()),
        Some(CONTROL_VERSION) => {
            for t in TABLES {
                store.control_execute(&t.create(d, &store.control_table(t.name))).await?;
            }
            return Ok(());
        }
        _ => {}
    }
    // Fresh, or written before this layout: every table created, the columns old ones lack
    // added, then the version recorded.
    for t in TABLES {
        let name = store.control_table(t.name);
        let existing = store.control_columns(t.name).await?;
        if existing.is_empty() {
            store.control_execute(&t.create(d, &name)).await?;
            continue;
        }
        for c in t.columns.iter().filter(|c| !existing.iter().any(|e| e == c.name)) {
            tracing::info!(table = %name, column = c.name, "control table brought up to date");
            store.control_execute(&t.add_column(d, &name, c)).await?;
        }
    }
    store.control_execute(&format!("DELETE FROM {version_table}")).await?;
    store.control_execute(&format!("INSERT INTO {version_table} VALUES ({CONTROL_VERSION})")).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_strictly() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>(), Ok(p));
        }
        assert_eq!("".parse::<Phase>(), Err(UnknownPhase));
        assert_eq!("Done".parse::<Phase>(), Err(UnknownPhase));
        assert_eq!("finished".parse::<Phase>(), Err(UnknownPhase));
    }

    #[test]
    fn a_corrupt_lsn_is_an_error_naming_table_and_value() {
        assert_eq!(
            parse_lsn("pgdms_apply.apply_progress", "end_lsn", "s", "16/B374D848").unwrap(),
            Lsn(0x16_B374_D848)
        );
        let e = parse_lsn("pgdms_apply.apply_progress", "end_lsn", "s", "garbage").unwrap_err().to_string();
        assert!(e.contains("pgdms_apply.apply_progress.end_lsn"), "{e}");
        assert!(e.contains("\"garbage\""), "{e}");
        assert!(parse_lsn("t", "c", "s", "").is_err());
        assert!(parse_lsn("t", "c", "s", "0/0/0").is_err());
        let e = parse_phase("pgdms_migration", "phase", "s", "loading").unwrap_err().to_string();
        assert!(e.contains("pgdms_migration.phase") && e.contains("\"loading\""), "{e}");
    }

    #[test]
    fn one_layout_renders_in_every_dialect() {
        let t = &TABLES[0];
        assert_eq!(
            t.create(Dialect::Postgres, "pgdms_apply.apply_progress"),
            "CREATE TABLE IF NOT EXISTS pgdms_apply.apply_progress (\"slot_name\" text NOT NULL, \"end_lsn\" pg_lsn NOT NULL, \
             \"commit_time\" timestamptz, \"applied_at\" timestamptz DEFAULT now() NOT NULL, \"resume_after_item\" bigint, \
             \"acked_lsn\" pg_lsn, PRIMARY KEY (\"slot_name\"))"
        );
        let exceptions = TABLES.iter().find(|t| t.name == "apply_exceptions").unwrap();
        let sqlite = exceptions.create(Dialect::Sqlite, "\"pgdms_apply_exceptions\"");
        assert!(sqlite.contains("\"id\" INTEGER PRIMARY KEY AUTOINCREMENT"), "{sqlite}");
        let mysql = exceptions.create(Dialect::MySql, "`pgdms`.`pgdms_apply_exceptions`");
        assert!(mysql.contains("`id` BIGINT AUTO_INCREMENT") && mysql.contains("PRIMARY KEY (`id`)"), "{mysql}");
        assert_eq!(
            t.add_column(Dialect::Sqlite, "\"pgdms_apply_progress\"", &t.columns[3]),
            "ALTER TABLE \"pgdms_apply_progress\" ADD COLUMN \"applied_at\" TEXT"
        );
    }
}

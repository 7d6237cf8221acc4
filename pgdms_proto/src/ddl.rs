//! DDL records: what a DDL command changed, as definitions before and after it.
//!
//! The extension's event triggers (`sql/ddl_capture.sql`) describe every table, type and
//! schema a command touched, compare the description with the one they recorded last
//! time, and when it differs, write an audit row and a transactional logical message
//! (prefix [`DDL_MESSAGE_PREFIX`], content: a [`Ddl`] as JSON). The output plugin turns
//! that message into a [`crate::Record::Ddl`], so the record reaches the consumer in
//! order with the row changes of its transaction.
//!
//! Query text is not replayable (inside a function, `current_query()` is the caller's
//! query): a consumer builds its own DDL from the difference between `before` and
//! `after`. `query` is kept for information only.

use crate::{Identity, Oid, RelKind, ReplicaIdentity};
use serde::{Deserialize, Serialize};

/// Prefix of the logical messages the event triggers emit.
pub const DDL_MESSAGE_PREFIX: &str = "pgdms.ddl";

/// One captured DDL change of one object.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Ddl {
    /// "CREATE TABLE", "ALTER TABLE", "DROP TYPE"...
    pub command_tag: String,
    /// The object's identity as PostgreSQL writes it (`pg_identify_object`).
    pub object_identity: String,
    /// The top-level statement that ran, for information: inside a function or DO block
    /// it is the statement that called it.
    pub query: String,
    pub object: DdlObject,
}

/// What changed. `before` is `None` for a new object, `after` for a dropped one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum DdlObject {
    Table {
        before: Option<TableDef>,
        after: Option<TableDef>,
    },
    Type {
        before: Option<TypeDef>,
        after: Option<TypeDef>,
    },
    Schema {
        before: Option<SchemaDef>,
        after: Option<SchemaDef>,
    },
    /// The command rewrote the table (`table_rewrite` event). Logical decoding does not
    /// carry the rewritten rows: with a volatile default (`ADD COLUMN ... DEFAULT
    /// random()`), a `USING` type change or `SET LOGGED`, a consumer cannot reproduce
    /// them and should reload the table. `reason` is PostgreSQL's bit mask
    /// (`pg_event_trigger_table_rewrite_reason`).
    Rewrite {
        oid: Oid,
        schema: String,
        name: String,
        reason: i32,
    },
    /// Capturing the command failed on the source (the command itself went through): the
    /// consumer cannot know what changed and must not go on as if nothing had.
    CaptureFailed {
        error: String,
    },
}

/// Rewrite reasons (`AT_REWRITE_*` in PostgreSQL's event_trigger.h).
pub mod rewrite_reason {
    pub const ALTER_PERSISTENCE: i32 = 0x01;
    pub const DEFAULT_VAL: i32 = 0x02;
    pub const COLUMN_REWRITE: i32 = 0x04;
    pub const ACCESS_METHOD: i32 = 0x08;

    /// The reasons in words.
    pub fn describe(reason: i32) -> String {
        let mut words = Vec::new();
        if reason & ALTER_PERSISTENCE != 0 {
            words.push("persistence changed (SET LOGGED/UNLOGGED)");
        }
        if reason & DEFAULT_VAL != 0 {
            words.push("a column added with a volatile default");
        }
        if reason & COLUMN_REWRITE != 0 {
            words.push("a column type changed");
        }
        if reason & ACCESS_METHOD != 0 {
            words.push("access method changed");
        }
        if words.is_empty() {
            words.push("table rewritten");
        }
        words.join(", ")
    }
}

/// A table's definition: what a target needs to create it or follow its changes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct TableDef {
    pub oid: Oid,
    pub schema: String,
    pub name: String,
    pub kind: RelKind,
    /// 'p'ermanent or 'u'nlogged (temporary tables are not captured).
    pub persistence: String,
    pub replica_identity: ReplicaIdentity,
    /// Live columns, by attnum.
    pub columns: Vec<ColumnDef>,
    pub primary_key: Option<PrimaryKey>,
    /// `pg_get_partkeydef` of a partitioned table: "RANGE (created)".
    pub partition_key: Option<String>,
    pub partition_of: Option<PartitionOf>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ColumnDef {
    /// The column's identity across renames and type changes.
    pub attnum: i16,
    pub name: String,
    pub type_oid: Oid,
    /// The type with its modifier, schema-qualified unless built in: "numeric(10,2)",
    /// "public.mood". For information: a target resolves `type_name` and applies
    /// `type_modifier` itself.
    pub type_sql: String,
    /// The type without its modifier ("numeric", "public.mood", "integer[]").
    #[serde(default)]
    pub type_name: String,
    /// `atttypmod` (-1: none).
    #[serde(default = "no_modifier")]
    pub type_modifier: i32,
    pub not_null: bool,
    pub default: Option<String>,
    /// The value the rows that were there when the column was added got (its default,
    /// evaluated once by the source), as the type's text; `None` when they got NULL, the
    /// table was rewritten since, or the extension is older than 0.3.1.
    #[serde(default)]
    pub missing: Option<String>,
    /// The expression of a stored generated column.
    pub generated: Option<String>,
    pub identity: Identity,
    /// "pg_catalog"."C" when not the type's default collation.
    pub collation: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct PrimaryKey {
    pub name: String,
    /// Attnums, in key order.
    pub columns: Vec<i16>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct PartitionOf {
    pub oid: Oid,
    pub schema: String,
    pub name: String,
    /// `pg_get_expr(relpartbound)`: "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')".
    pub bound: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TypeKind {
    Enum,
    Composite,
    Domain,
    /// Base, range and other types: described by name only.
    #[default]
    Other,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct TypeDef {
    pub oid: Oid,
    pub schema: String,
    pub name: String,
    pub kind: TypeKind,
    /// Enum labels in sort order.
    pub labels: Vec<String>,
    /// Composite attributes.
    pub attributes: Vec<TypeAttribute>,
    /// A domain's base type (with its modifier, for information), NOT NULL, default and
    /// CHECK constraints.
    pub base_type: Option<String>,
    /// The base type without its modifier, and the modifier (`typtypmod`).
    #[serde(default)]
    pub base_type_name: Option<String>,
    #[serde(default = "no_modifier")]
    pub base_type_modifier: i32,
    pub not_null: bool,
    pub default: Option<String>,
    pub checks: Vec<DomainCheck>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct TypeAttribute {
    /// The attribute's identity across renames and type changes.
    pub attnum: i16,
    pub name: String,
    /// For information, as in [`ColumnDef`].
    pub type_sql: String,
    #[serde(default)]
    pub type_name: String,
    #[serde(default = "no_modifier")]
    pub type_modifier: i32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct DomainCheck {
    pub name: String,
    /// `pg_get_constraintdef`: "CHECK ((VALUE > 0))" (for information).
    pub definition: String,
    /// The condition alone: "(VALUE > 0)".
    #[serde(default)]
    pub expression: Option<String>,
}

fn no_modifier() -> i32 {
    -1
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct SchemaDef {
    pub oid: Oid,
    pub name: String,
}

impl TableDef {
    pub fn column(&self, attnum: i16) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.attnum == attnum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Record;

    #[test]
    fn a_ddl_record_round_trips_through_postcard() {
        let def = TableDef {
            oid: 5,
            schema: "S".into(),
            name: "t t".into(),
            columns: vec![ColumnDef {
                attnum: 1,
                name: "a".into(),
                type_sql: "integer".into(),
                not_null: true,
                ..Default::default()
            }],
            primary_key: Some(PrimaryKey { name: "t_pkey".into(), columns: vec![1] }),
            ..Default::default()
        };
        let ddl = Ddl {
            command_tag: "CREATE TABLE".into(),
            object_identity: "\"S\".\"t t\"".into(),
            query: "create table ...".into(),
            object: DdlObject::Table { before: None, after: Some(def) },
        };
        let bytes = Record::Ddl(ddl.clone()).encode();
        assert_eq!(Record::decode(&bytes).unwrap(), Record::Ddl(ddl));
    }
}

//! The shared model: relations, column values, rows and row changes, owned, as the apply
//! hands them to targets and the full load reads them; and [`batch`], their net effect.
//!
//! Decoded records borrow from their message; the apply keeps changes until their group
//! commits, so `crate::apply::decode` converts them to these types. Text and bytea values
//! stay slices of the received message (`Bytes` is reference-counted), so nothing is copied.

pub mod batch;

use crate::sql::quote_ident;
use bytes::Bytes;
use pgdms_proto::{DmsType, Identity, Lsn, ReplicaIdentity, Value};
use std::sync::Arc;

/// One column value, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    /// A TOASTed value the change did not touch: the target keeps what it has.
    Unchanged,
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Float8(f64),
    /// UTF-8 text: the content of a text-like column, or another type's text output.
    Text(Bytes),
    Bytes(Bytes),
    Date(i32),
    Time(i64),
    TimeTz {
        micros: i64,
        offset_secs: i32,
    },
    Timestamp(i64),
    TimestampTz(i64),
    Uuid([u8; 16]),
}

pub type Row = Vec<Val>;

impl Val {
    /// About how many bytes the value takes in a statement (for sizing multi-row ones).
    pub fn approx_len(&self) -> usize {
        match self {
            Val::Text(b) => b.len() + 2,
            Val::Bytes(b) => b.len() * 2 + 3,
            _ => 24,
        }
    }

    pub(crate) fn from_wire(v: &Value<'_>, msg: &Bytes) -> Val {
        match *v {
            Value::Null => Val::Null,
            Value::UnchangedToast => Val::Unchanged,
            Value::Bool(b) => Val::Bool(b),
            Value::Int2(i) => Val::Int2(i),
            Value::Int4(i) => Val::Int4(i),
            Value::Int8(i) => Val::Int8(i),
            Value::Float4(f) => Val::Float4(f),
            Value::Float8(f) => Val::Float8(f),
            Value::Text(s) => Val::Text(msg.slice_ref(s.as_bytes())),
            Value::Bytes(b) => Val::Bytes(if b.is_empty() { Bytes::new() } else { msg.slice_ref(b) }),
            Value::Date(d) => Val::Date(d),
            Value::Time(t) => Val::Time(t),
            Value::TimeTz { micros, offset_secs } => Val::TimeTz { micros, offset_secs },
            Value::Timestamp(t) => Val::Timestamp(t),
            Value::TimestampTz(t) => Val::TimestampTz(t),
            Value::Uuid(u) => Val::Uuid(u),
        }
    }

    /// The wire form again, for PostgreSQL text rendering.
    pub fn as_wire(&self) -> Value<'_> {
        match self {
            Val::Null => Value::Null,
            Val::Unchanged => Value::UnchangedToast,
            Val::Bool(b) => Value::Bool(*b),
            Val::Int2(i) => Value::Int2(*i),
            Val::Int4(i) => Value::Int4(*i),
            Val::Int8(i) => Value::Int8(*i),
            Val::Float4(f) => Value::Float4(*f),
            Val::Float8(f) => Value::Float8(*f),
            // Text came from a &str of the message: valid UTF-8.
            Val::Text(b) => Value::Text(std::str::from_utf8(b).unwrap_or_default()),
            Val::Bytes(b) => Value::Bytes(b),
            Val::Date(d) => Value::Date(*d),
            Val::Time(t) => Value::Time(*t),
            Val::TimeTz { micros, offset_secs } => Value::TimeTz { micros: *micros, offset_secs: *offset_secs },
            Val::Timestamp(t) => Value::Timestamp(*t),
            Val::TimestampTz(t) => Value::TimestampTz(*t),
            Val::Uuid(u) => Value::Uuid(*u),
        }
    }

    /// PostgreSQL's text form (None for NULL and unchanged).
    pub fn to_pg_text(&self) -> Option<String> {
        self.as_wire().to_pg_text().map(|c| c.into_owned())
    }
}

/// A column of a source table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    pub type_oid: u32,
    /// The type with its modifier, as casts take it (checked to be one type name).
    pub type_sql: String,
    /// The type without its modifier, and the modifier: what a target resolves.
    pub type_name: String,
    pub type_modifier: i32,
    pub key: bool,
    pub primary_key: bool,
    pub generated: bool,
    pub identity: Identity,
    pub not_null: bool,
    pub dms_type: DmsType,
}

/// A source table, as its latest relation record describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct RelInfo {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<ColumnInfo>,
}

impl RelInfo {
    /// No column a row-wise target writes: none at all, or only generated ones (which the
    /// DMS mapping does not carry).
    pub fn writes_no_columns(&self) -> bool {
        self.columns.iter().all(|c| c.generated)
    }

    /// "schema"."name", quoted for SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Indices of the replica-identity key columns (the columns an old key image carries).
    pub fn key_indices(&self) -> Vec<usize> {
        self.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i).collect()
    }

    pub fn pk_indices(&self) -> Vec<usize> {
        self.columns.iter().enumerate().filter(|(_, c)| c.primary_key).map(|(i, _)| i).collect()
    }
}

/// The old values a change carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Old {
    /// Nothing was logged (no replica identity, or an update that kept its key).
    None,
    /// Values of the key columns, in column order.
    Key(Row),
    /// The whole old row.
    Full(Row),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    Insert { new: Row },
    Update { old: Old, new: Row },
    Delete { old: Old },
}

/// One row change of a source transaction.
#[derive(Debug, Clone)]
pub struct Change {
    pub rel: Arc<RelInfo>,
    pub kind: ChangeKind,
    /// WAL position of the change.
    pub lsn: Lsn,
    pub xid: u32,
}

impl Change {
    pub fn operation(&self) -> &'static str {
        match self.kind {
            ChangeKind::Insert { .. } => "insert",
            ChangeKind::Update { .. } => "update",
            ChangeKind::Delete { .. } => "delete",
        }
    }
}

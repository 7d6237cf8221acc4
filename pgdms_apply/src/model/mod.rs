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

    /// The value of a column of type `oid` whose PostgreSQL text (DateStyle ISO, TimeZone
    /// UTC, hex bytea) is `text`, in the form the plugin sends it; `None` if malformed.
    /// For values that come as text rather than in rows (a DDL record's `missing`).
    pub fn from_pg_text(oid: u32, text: &str) -> Option<Val> {
        use pgdms_proto::dms::oids;
        use pgdms_proto::pgtext::parse;
        fn hex(s: &str) -> Option<Vec<u8>> {
            let b = s.as_bytes();
            if !b.len().is_multiple_of(2) {
                return None;
            }
            b.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok()).collect()
        }
        Some(match oid {
            oids::BOOL => match text {
                "t" => Val::Bool(true),
                "f" => Val::Bool(false),
                _ => return None,
            },
            oids::INT2 => Val::Int2(text.parse().ok()?),
            oids::INT4 => Val::Int4(text.parse().ok()?),
            oids::INT8 => Val::Int8(text.parse().ok()?),
            oids::FLOAT4 => Val::Float4(text.parse().ok()?),
            oids::FLOAT8 => Val::Float8(text.parse().ok()?),
            oids::BYTEA => Val::Bytes(hex(text.strip_prefix("\\x")?)?.into()),
            oids::DATE => Val::Date(parse::date(text)?),
            oids::TIME => Val::Time(parse::time(text)?),
            oids::TIMETZ => {
                let (micros, offset_secs) = parse::time_tz(text)?;
                Val::TimeTz { micros, offset_secs }
            }
            oids::TIMESTAMP => Val::Timestamp(parse::timestamp(text)?),
            oids::TIMESTAMPTZ => Val::TimestampTz(parse::timestamp(text)?),
            oids::UUID => Val::Uuid(hex(&text.replace('-', ""))?.try_into().ok()?),
            _ => Val::Text(Bytes::copy_from_slice(text.as_bytes())),
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use pgdms_proto::dms::oids;

    #[test]
    fn text_forms_become_the_values_the_plugin_sends() {
        let values = [
            (oids::BOOL, Val::Bool(false)),
            (oids::INT2, Val::Int2(-7)),
            (oids::INT8, Val::Int8(i64::MIN)),
            (oids::FLOAT4, Val::Float4(0.1)),
            (oids::FLOAT8, Val::Float8(f64::NEG_INFINITY)),
            (oids::BYTEA, Val::Bytes(Bytes::from_static(&[0, 0xab, 0x10]))),
            (oids::DATE, Val::Date(-730_500)),
            (oids::TIME, Val::Time(3_723_500_000)),
            (oids::TIMETZ, Val::TimeTz { micros: 1, offset_secs: -19_800 }),
            (oids::TIMESTAMP, Val::Timestamp(-1)),
            (oids::TIMESTAMPTZ, Val::TimestampTz(86_400_000_120_000)),
            (oids::UUID, Val::Uuid([7; 16])),
            (oids::NUMERIC, Val::Text(Bytes::from_static(b"1.10"))),
        ];
        for (oid, v) in values {
            let text = v.to_pg_text().unwrap();
            assert_eq!(Val::from_pg_text(oid, &text), Some(v), "{text}");
        }
        assert_eq!(Val::from_pg_text(oids::BOOL, "true"), None);
        assert_eq!(Val::from_pg_text(oids::BYTEA, "\\x0"), None);
        assert_eq!(Val::from_pg_text(oids::INT4, "1.5"), None);
    }
}

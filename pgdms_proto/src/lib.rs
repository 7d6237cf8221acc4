//! The pgdms wire format.
//!
//! The `pgdms` output plugin (in `pgdms_ext`) writes [`Record`]s encoded with [postcard];
//! consumers (`pgdms-apply`, tests, anyone holding this crate) decode them with
//! [`Records`] (or [`Record::decode_prefix`]). A logical-decoding message holds one or
//! more records: a transaction's records travel together in one message (large
//! transactions in several), since every message costs the walsender and its client a
//! system call. Records are self-delimiting and borrow from the message bytes, so decoding
//! allocates only for the vectors of columns and values.
//!
//! A stream looks like:
//!
//! ```text
//! Startup                               once, before the first record of a decoding session
//! Begin                                 per source transaction with at least one change
//!   Relation                            before the first change of a table in the session,
//!                                       and again whenever its description changes
//!   Insert | Update | Delete | Truncate | Message | Ddl
//! Commit
//! ```
//!
//! Non-transactional [`Message`]s may appear between transactions. Every column of a
//! [`Relation`] carries its DMS type ([`DmsType`]), mapped as the AWS DMS guide's table
//! "Source Data Types for PostgreSQL" says, with that guide's gaps filled (see [`dms`]).

#![forbid(unsafe_code)]

pub mod ddl;
pub mod dms;
pub mod lsn;
pub mod options;
pub mod pgtext;

pub use ddl::{Ddl, DdlObject, TableDef, TypeDef, DDL_MESSAGE_PREFIX};
pub use dms::{DmsType, PgTypeInfo};
pub use lsn::{Lsn, LsnParseError};
pub use options::{OptionError, Options, OriginFilter};
use serde::{Deserialize, Serialize};

/// The name of the output plugin (and of the extension's shared library).
pub const PLUGIN_NAME: &str = "pgdms";

/// The pgdms release this crate belongs to; the plugin reports its own in [`Startup`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version of this wire format. A consumer asks for it with the `proto_version`
/// plugin option; the plugin refuses any other. Version 2 (pgdms 0.2): DDL records carry
/// type names and modifiers apart, and forged messages arrive as [`Record::Rejected`].
/// Version 3 (pgdms 0.3.1): a DDL record's columns carry the value the rows already there
/// got (`ColumnDef::missing`).
pub const PROTO_VERSION: u32 = 3;

/// A PostgreSQL object id.
pub type Oid = u32;

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp epoch.
/// `i64::MIN` and `i64::MAX` are `-infinity` and `infinity`.
pub type PgTimestamp = i64;

/// One message of the stream.
///
/// The variant order is the wire format: new variants are only ever appended, and
/// reserved ones keep their place even before the plugin emits them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // records are decoded one at a time, never stored in bulk
pub enum Record<'a> {
    #[serde(borrow)]
    Startup(Startup<'a>),
    Begin(Begin),
    Commit(Commit),
    #[serde(borrow)]
    Relation(Relation<'a>),
    #[serde(borrow)]
    Insert(Insert<'a>),
    #[serde(borrow)]
    Update(Update<'a>),
    #[serde(borrow)]
    Delete(Delete<'a>),
    Truncate(Truncate),
    #[serde(borrow)]
    Message(Message<'a>),
    // Reserved for streamed in-progress transactions (`streaming` option).
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(Commit),
    StreamAbort(StreamAbort),
    // Reserved for two-phase commit (`two_phase` option).
    #[serde(borrow)]
    BeginPrepare(Prepare<'a>),
    #[serde(borrow)]
    Prepare(Prepare<'a>),
    #[serde(borrow)]
    CommitPrepared(Prepare<'a>),
    #[serde(borrow)]
    RollbackPrepared(Prepare<'a>),
    /// A DDL command, in its transaction's order with the row changes.
    Ddl(Ddl),
    /// A message with a prefix pgdms reserves that pgdms's capture did not write: dropped.
    #[serde(borrow)]
    Rejected(Rejected<'a>),
}

/// How a decoding session was set up; sent before its first record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Startup<'a> {
    pub proto_version: u32,
    /// The extension's version (`CARGO_PKG_VERSION` of the plugin).
    pub plugin_version: &'a str,
    /// `server_version_num`, e.g. 150020.
    pub server_version_num: u32,
    /// `server_version`, e.g. "15.20 (Debian 15.20-0+deb12u1)".
    pub server_version: &'a str,
    /// The database's encoding. Text values in records are always UTF-8: the plugin
    /// converts from this encoding.
    pub server_encoding: &'a str,
    pub database: &'a str,
    /// Settings of the decoding session that shape the text form of values that travel as
    /// text (arrays of dates, intervals): a consumer that feeds those texts back to
    /// PostgreSQL sets the same values in its own session.
    pub date_style: &'a str,
    pub interval_style: &'a str,
    pub extra_float_digits: i32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    pub xid: u32,
    /// LSN of the transaction's first WAL record.
    pub begin_lsn: Lsn,
    /// LSN of its commit record.
    pub commit_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub xid: u32,
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to acknowledge once applied, and the
    /// progress marker of an exactly-once consumer.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicaIdentity {
    /// The primary key (or nothing when there is none).
    #[default]
    Default,
    /// The whole old row.
    Full,
    /// The columns of a chosen unique index.
    Index,
    Nothing,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelKind {
    #[default]
    Table,
    PartitionedTable,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RelationRef<'a> {
    pub oid: Oid,
    pub schema: &'a str,
    pub name: &'a str,
}

/// A table, described before its first change in a session and again when it changes.
/// Changes name their table by `oid`; the values of a tuple follow `columns` in order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Relation<'a> {
    pub oid: Oid,
    pub schema: &'a str,
    pub name: &'a str,
    pub kind: RelKind,
    pub replica_identity: ReplicaIdentity,
    /// The partitioned table this one is a partition of.
    #[serde(borrow)]
    pub partition_parent: Option<RelationRef<'a>>,
    #[serde(borrow)]
    pub columns: Vec<Column<'a>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Identity {
    #[default]
    None,
    Always,
    ByDefault,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Column<'a> {
    pub attnum: i16,
    pub name: &'a str,
    pub type_oid: Oid,
    /// `format_type` of the type without its modifier, schema-qualified unless built in:
    /// "integer", "character varying", "public.mood".
    pub type_name: &'a str,
    /// The type with its modifier, as SQL accepts it: "character varying(20)".
    pub type_sql: &'a str,
    pub type_modifier: i32,
    pub not_null: bool,
    /// The default expression, deparsed.
    pub default: Option<&'a str>,
    /// The collation, schema-qualified, when it is not the type's default.
    pub collation: Option<&'a str>,
    /// A stored generated column (its value is in the tuple; a target computes its own).
    pub generated: bool,
    pub identity: Identity,
    /// Part of the replica identity key (what old-key images carry).
    pub key: bool,
    /// Part of the primary key.
    pub primary_key: bool,
    pub dms_type: DmsType,
    /// The type is not in the DMS table: its values travel as their text output and its
    /// DMS type is the NCLOB fallback.
    pub dms_fallback: bool,
}

/// The values of a row, one per column of its [`Relation`], in column order.
pub type Tuple<'a> = Vec<Value<'a>>;

/// The old image an UPDATE or DELETE carries.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum OldImage<'a> {
    /// The values of the replica-identity key columns only (`Column::key`), in column order.
    #[serde(borrow)]
    Key(Tuple<'a>),
    /// The whole old row (REPLICA IDENTITY FULL).
    #[serde(borrow)]
    Full(Tuple<'a>),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Insert<'a> {
    pub relation: Oid,
    /// The change's LSN minus its transaction's `Begin::begin_lsn`.
    pub lsn_offset: u64,
    #[serde(borrow)]
    pub new: Tuple<'a>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Update<'a> {
    pub relation: Oid,
    /// The change's LSN minus its transaction's `Begin::begin_lsn`.
    pub lsn_offset: u64,
    /// Present when the key changed, when it holds an out-of-line value, or always under
    /// REPLICA IDENTITY FULL.
    #[serde(borrow)]
    pub old: Option<OldImage<'a>>,
    #[serde(borrow)]
    pub new: Tuple<'a>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Delete<'a> {
    pub relation: Oid,
    /// The change's LSN minus its transaction's `Begin::begin_lsn`.
    pub lsn_offset: u64,
    /// `None` when the table has no replica identity to log (REPLICA IDENTITY NOTHING, or
    /// DEFAULT without a primary key): such a delete cannot be applied by key.
    #[serde(borrow)]
    pub old: Option<OldImage<'a>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// The change's LSN minus its transaction's `Begin::begin_lsn`.
    pub lsn_offset: u64,
    /// Every table truncated, those reached through CASCADE included.
    pub relations: Vec<Oid>,
    pub restart_identity: bool,
    pub cascade: bool,
}

/// A message written with `pg_logical_emit_message`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Message<'a> {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: &'a str,
    #[serde(with = "serde_bytes")]
    pub content: &'a [u8],
}

/// The prefix of the logical messages pgdms reserves for itself (`pgdms.ddl`...).
pub const RESERVED_MESSAGE_PREFIX: &str = "pgdms.";

/// At most this many bytes of a rejected message's content travel with [`Rejected`].
pub const REJECTED_PREVIEW: usize = 256;

/// A logical message whose prefix starts with [`RESERVED_MESSAGE_PREFIX`] but that pgdms's
/// DDL capture did not write. `pg_logical_emit_message` is anyone's to call, so a message
/// counts as pgdms's only when the same transaction inserted the audit row holding its
/// digest (see `sql/ddl_capture.sql`); any other is dropped by the plugin, logged on the
/// source, and sent as this record so that the consumer reports it too. Transactional ones
/// come inside their transaction (its `Begin` names the xid).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Rejected<'a> {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: &'a str,
    /// The first [`REJECTED_PREVIEW`] bytes of the content, for the log.
    #[serde(with = "serde_bytes")]
    pub preview: &'a [u8],
    pub content_len: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: u32,
    pub first_segment: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
    pub abort_lsn: Lsn,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Prepare<'a> {
    pub xid: u32,
    pub gid: &'a str,
    pub lsn: Lsn,
    pub end_lsn: Lsn,
    pub time: PgTimestamp,
}

/// One column value.
///
/// Built-in types with a fixed binary meaning travel in it; every other value (numeric,
/// money as its numeric value, intervals, arrays, composites, ranges, json, extension and
/// user-defined types) travels as its text output, which the same type's input function on
/// any PostgreSQL reads back to the same value.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    /// An out-of-line (TOASTed) value the change did not touch: it was not logged, and the
    /// consumer keeps what it has.
    UnchangedToast,
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Float8(f64),
    /// Text of the value: the content of text, varchar, char(n) and name columns, and the
    /// text output of every type that has no binary variant here.
    Text(&'a str),
    /// bytea content.
    #[serde(with = "serde_bytes")]
    Bytes(&'a [u8]),
    /// Days since 2000-01-01; `i32::MIN`/`i32::MAX` are `-infinity`/`infinity`.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since local midnight and the zone offset in seconds east of UTC.
    TimeTz {
        micros: i64,
        offset_secs: i32,
    },
    Timestamp(PgTimestamp),
    /// Normalised to UTC.
    TimestampTz(PgTimestamp),
    Uuid([u8; 16]),
}

/// A record that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed pgdms record ({len} bytes): {source}; is the slot using the pgdms plugin with proto_version {PROTO_VERSION}?")]
    Malformed { len: usize, source: postcard::Error },
    #[error("{trailing} trailing bytes after a pgdms record")]
    Trailing { trailing: usize },
}

/// The records of one logical-decoding message, in order.
///
/// ```
/// # use pgdms_proto::{Record, Records};
/// let mut msg = Vec::new();
/// Record::StreamStop.encode_into(&mut msg);
/// Record::StreamStop.encode_into(&mut msg);
/// assert_eq!(Records::new(&msg).count(), 2);
/// ```
pub struct Records<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Records<'a> {
    pub fn new(message: &'a [u8]) -> Self {
        Records { rest: message, failed: false }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match Record::decode_prefix(self.rest) {
            Ok((record, rest)) => {
                self.rest = rest;
                Some(Ok(record))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl<'a> Record<'a> {
    /// Decodes a message that holds exactly one record.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (record, rest) = Self::decode_prefix(bytes)?;
        if !rest.is_empty() {
            return Err(DecodeError::Trailing { trailing: rest.len() });
        }
        Ok(record)
    }

    /// Decodes the record at the start of `bytes` and returns what follows it. Records are
    /// self-delimiting, which lets a consumer split a file of concatenated messages (such as
    /// `pg_recvlogical -f` writes, with a newline after each).
    pub fn decode_prefix(bytes: &'a [u8]) -> Result<(Self, &'a [u8]), DecodeError> {
        postcard::take_from_bytes(bytes).map_err(|source| DecodeError::Malformed { len: bytes.len(), source })
    }

    /// Appends the encoding of this record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // Writing into a growable Vec only fails on a serializer bug; there is no input to blame.
        let buf = std::mem::take(out);
        *out = postcard::to_extend(self, buf).expect("postcard encoding into a Vec cannot fail");
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_are_self_delimiting() {
        let records = vec![
            Record::Begin(Begin { xid: 7, begin_lsn: Lsn(1), commit_lsn: Lsn(2), commit_time: -5 }),
            Record::Insert(Insert {
                relation: 16384,
                lsn_offset: 40,
                new: vec![
                    Value::Int4(-1),
                    Value::Text("ünï\0code"),
                    Value::Bytes(&[0, 1, 0]),
                    Value::Null,
                    Value::UnchangedToast,
                    Value::Float8(f64::NEG_INFINITY),
                    Value::TimeTz { micros: 1, offset_secs: -3600 },
                ],
            }),
            Record::Message(Message { transactional: false, lsn: Lsn(9), prefix: "p", content: b"\n\0" }),
            Record::StreamStop,
        ];
        let mut stream = Vec::new();
        for r in &records {
            r.encode_into(&mut stream);
            stream.push(b'\n'); // as pg_recvlogical separates messages
        }
        let mut rest = &stream[..];
        for expected in &records {
            let (got, tail) = Record::decode_prefix(rest).unwrap();
            assert_eq!(&got, expected);
            assert_eq!(tail[0], b'\n');
            rest = &tail[1..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Record::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(Record::decode(&[]).is_err());
        let mut ok = Record::StreamStop.encode();
        ok.push(1);
        assert!(matches!(Record::decode(&ok), Err(DecodeError::Trailing { trailing: 1 })));
    }
}

//! The full load of a heterogeneous target: the source's tables read row by row inside the
//! snapshot, as the same values the plugin sends for changes.
//!
//! A table is described as the plugin describes it (`RelInfo`, DMS types from the same
//! `pgdms_proto::dms` table), and its rows are read with binary results for the types the
//! plugin sends in binary, and as their text output for the others -- so a loaded row and
//! a row inserted later land identically.

use crate::model::{ColumnInfo, RelInfo, Row, Val};
use bytes::Bytes;
use pgdms_proto::dms::{self, oids, PgTypeInfo};
use pgdms_proto::{Identity, ReplicaIdentity};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Client;

/// The selected source tables (every permanent table with rows: partitions, not their
/// parents), as the plugin describes them.
pub async fn source_relations(client: &Client) -> Result<Vec<RelInfo>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text,
                    a.attname::text, a.atttypid, a.atttypmod, t.typtype::text, t.typcategory = 'A', t.typname::text,
                    format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated <> '', a.attidentity::text,
                    coalesce(a.attnum = ANY (pk.indkey::int2[]), false),
                    coalesce(a.attnum = ANY (ri.indkey::int2[]), false), format_type(a.atttypid, NULL)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
               LEFT JOIN pg_index ri ON ri.indrelid = c.oid
                    AND ((c.relreplident = 'd' AND ri.indisprimary) OR (c.relreplident = 'i' AND ri.indisreplident))
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname !~ '^pg_toast'
                AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                   AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e')
              ORDER BY n.nspname, c.relname, a.attnum",
            &[&crate::sink::postgres::CONTROL_SCHEMA],
        )
        .await?;
    let mut rels: Vec<RelInfo> = Vec::new();
    for r in rows {
        let oid: u32 = r.try_get(0)?;
        if rels.last().is_none_or(|l| l.oid != oid) {
            let identity = match r.try_get::<_, &str>(3)? {
                "f" => ReplicaIdentity::Full,
                "i" => ReplicaIdentity::Index,
                "n" => ReplicaIdentity::Nothing,
                _ => ReplicaIdentity::Default,
            };
            rels.push(RelInfo {
                oid,
                schema: r.try_get(1)?,
                name: r.try_get(2)?,
                replica_identity: identity,
                columns: vec![],
            });
        }
        let name: &str = r.try_get(9)?;
        let (dms_type, _) = dms::dms_type_of(&PgTypeInfo {
            oid: r.try_get(5)?,
            typmod: r.try_get(6)?,
            typtype: r.try_get::<_, &str>(7)?.as_bytes().first().copied().unwrap_or(b'b'),
            is_array: r.try_get(8)?,
            name,
        });
        let identity = match r.try_get::<_, &str>(13)? {
            "a" => Identity::Always,
            "d" => Identity::ByDefault,
            _ => Identity::None,
        };
        let rel = rels.last_mut().expect("pushed above");
        rel.columns.push(ColumnInfo {
            name: r.try_get(4)?,
            type_oid: r.try_get(5)?,
            type_sql: r.try_get(10)?,
            type_name: r.try_get(16)?,
            type_modifier: r.try_get(6)?,
            key: r.try_get(15)?,
            primary_key: r.try_get(14)?,
            generated: r.try_get(12)?,
            identity,
            not_null: r.try_get(11)?,
            dms_type,
        });
    }
    Ok(rels)
}

/// How a column is read: its binary form, or its text output (as the plugin does).
fn select_expr(c: &ColumnInfo) -> String {
    let col = crate::sql::quote_ident(&c.name);
    match c.type_oid {
        oids::BOOL
        | oids::INT2
        | oids::INT4
        | oids::INT8
        | oids::FLOAT4
        | oids::FLOAT8
        | oids::TEXT
        | oids::VARCHAR
        | oids::BPCHAR
        | oids::BYTEA
        | oids::DATE
        | oids::TIME
        | oids::TIMETZ
        | oids::TIMESTAMP
        | oids::TIMESTAMPTZ
        | oids::UUID => col,
        // The type's output function, as the plugin calls it (a cast to text is not always
        // the same: inet::text keeps a /128 its output leaves out).
        oids::MONEY => format!("CASE WHEN {col} IS NOT NULL THEN format('%s', {col}::numeric) END"),
        _ => format!("CASE WHEN {col} IS NOT NULL THEN format('%s', {col}) END"),
    }
}

/// A result column's bytes, whatever its type.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn be<const N: usize>(b: &[u8]) -> Result<[u8; N], String> {
    b.get(..N).and_then(|s| s.try_into().ok()).ok_or_else(|| format!("a {N}-byte value had {} bytes", b.len()))
}

/// The value the plugin would send for a column of type `oid` with these binary (or text) bytes.
fn value(oid: u32, b: &[u8]) -> Result<Val, String> {
    Ok(match oid {
        oids::BOOL => Val::Bool(b.first().is_some_and(|&x| x != 0)),
        oids::INT2 => Val::Int2(i16::from_be_bytes(be(b)?)),
        oids::INT4 => Val::Int4(i32::from_be_bytes(be(b)?)),
        oids::INT8 => Val::Int8(i64::from_be_bytes(be(b)?)),
        oids::FLOAT4 => Val::Float4(f32::from_be_bytes(be(b)?)),
        oids::FLOAT8 => Val::Float8(f64::from_be_bytes(be(b)?)),
        oids::BYTEA => Val::Bytes(Bytes::copy_from_slice(b)),
        oids::DATE => Val::Date(i32::from_be_bytes(be(b)?)),
        oids::TIME => Val::Time(i64::from_be_bytes(be(b)?)),
        oids::TIMESTAMP => Val::Timestamp(i64::from_be_bytes(be(b)?)),
        oids::TIMESTAMPTZ => Val::TimestampTz(i64::from_be_bytes(be(b)?)),
        oids::TIMETZ => {
            let micros = i64::from_be_bytes(be(b)?);
            // The zone is in seconds west of UTC; the plugin sends the offset east.
            let zone = i32::from_be_bytes(be(b.get(8..).unwrap_or_default())?);
            Val::TimeTz { micros, offset_secs: -zone }
        }
        oids::UUID => Val::Uuid(be(b)?),
        _ => {
            std::str::from_utf8(b).map_err(|_| "a text value is not UTF-8 (is the source's encoding UTF8?)")?;
            Val::Text(Bytes::copy_from_slice(b))
        }
    })
}

/// The rows of one table, read in chunks through a cursor inside the session's snapshot
/// (results in binary, so fixed-size types arrive as the plugin sends them).
pub struct TableReader<'c> {
    client: &'c Client,
    fetch: tokio_postgres::Statement,
    types: Vec<u32>,
}

impl<'c> TableReader<'c> {
    pub async fn open(client: &'c Client, rel: &RelInfo, chunk: usize) -> Result<TableReader<'c>, String> {
        let exprs: Vec<String> = rel.columns.iter().map(select_expr).collect();
        let text = |e: tokio_postgres::Error| crate::pgconn::client::error_text(&e);
        client
            .batch_execute(&format!(
                "DECLARE pgdms_load NO SCROLL CURSOR FOR SELECT {} FROM ONLY {}",
                exprs.join(", "),
                rel.qualified()
            ))
            .await
            .map_err(text)?;
        let fetch = client.prepare(&format!("FETCH {chunk} FROM pgdms_load")).await.map_err(text)?;
        Ok(TableReader { client, fetch, types: rel.columns.iter().map(|c| c.type_oid).collect() })
    }

    /// The next rows; an empty vector at the end (the cursor is closed then).
    pub async fn next_chunk(&mut self) -> Result<Vec<Row>, String> {
        let text = |e: tokio_postgres::Error| crate::pgconn::client::error_text(&e);
        let fetched = self.client.query(&self.fetch, &[]).await.map_err(text)?;
        if fetched.is_empty() {
            self.client.batch_execute("CLOSE pgdms_load").await.map_err(text)?;
        }
        let mut rows = Vec::with_capacity(fetched.len());
        for row in fetched {
            let mut out = Vec::with_capacity(self.types.len());
            for (i, &oid) in self.types.iter().enumerate() {
                let raw: Option<Raw> = row.try_get(i).map_err(|e| e.to_string())?;
                out.push(match raw {
                    None => Val::Null,
                    Some(Raw(b)) => value(oid, b).map_err(|e| format!("column {}: {e}", row.columns()[i].name()))?,
                });
            }
            rows.push(out);
        }
        Ok(rows)
    }
}

/// `rel` under the table mappings: its target names and the columns kept (key columns
/// always: updates and deletes find rows by them), with their indices in `rel`. None when
/// the mappings leave the table out.
pub fn mapped(rel: &RelInfo, m: &crate::mapping::Mapping) -> Option<(RelInfo, Vec<usize>)> {
    if !m.includes(&rel.schema, &rel.name) {
        return None;
    }
    let (schema, name) = m.table(&rel.schema, &rel.name);
    let mut kept = Vec::new();
    let mut columns = Vec::new();
    for (i, c) in rel.columns.iter().enumerate() {
        let target = m.column(&rel.schema, &rel.name, &c.name).or_else(|| c.key.then(|| c.name.clone()));
        if let Some(n) = target {
            kept.push(i);
            columns.push(ColumnInfo { name: n, ..c.clone() });
        }
    }
    Some((RelInfo { oid: rel.oid, schema, name, replica_identity: rel.replica_identity, columns }, kept))
}

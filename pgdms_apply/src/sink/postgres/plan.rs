//! The SQL a batch becomes: statements with text parameters, each with the number of rows
//! it must affect, ready to be sent pipelined.
//!
//! A table's net changes become one DELETE, one UPDATE per set of changed columns and one
//! INSERT, each over `unnest` of array parameters (one array per column). A change applied
//! on its own becomes one statement that must touch exactly one row.

use crate::model::batch::old_key;
use crate::model::batch::{key_columns, NetOp, NetTable, TableBatch};
use crate::model::{Change, ChangeKind, Old, RelInfo, Row, Val};
use crate::sql::quote_ident;
use pgdms_proto::{dms::oids, DmsType, Identity};
use std::collections::BTreeMap;

/// One statement: its SQL, text parameters, and how many rows it must affect.
#[derive(Debug, Clone)]
pub struct Planned {
    pub sql: String,
    pub params: Vec<Option<String>>,
    pub expect: Option<u64>,
    /// A call of an owner's gate: the rows affected are the value it returns, and no row
    /// means the gate was altered (see `roles`).
    pub gated: bool,
}

impl Planned {
    pub fn utility(sql: &str) -> Planned {
        Planned { sql: sql.to_string(), params: Vec::new(), expect: None, gated: false }
    }

    /// This statement run through the gate `call` (as the gate's owner).
    pub fn through_gate(self, call: &str) -> Result<Planned, String> {
        Ok(Planned {
            sql: call.to_string(),
            params: vec![Some(super::roles::for_gate(&self.sql)?), Some(text_array(self.params.into_iter()))],
            expect: self.expect,
            gated: true,
        })
    }
}

/// The change cannot be applied: the table logs no key for it.
#[derive(Debug)]
pub struct NoIdentity;

/// Columns a target write sets: all but generated ones (the target computes those).
pub fn written_columns(rel: &RelInfo) -> Vec<usize> {
    rel.columns.iter().enumerate().filter(|(_, c)| !c.generated).map(|(i, _)| i).collect()
}

pub fn column_list(rel: &RelInfo, cols: &[usize]) -> String {
    cols.iter().map(|&i| quote_ident(&rel.columns[i].name)).collect::<Vec<_>>().join(", ")
}

/// ` (a, b)`: the columns as a COPY or INSERT names them; nothing when there are none (a
/// table without columns, or with generated ones only), which SQL cannot spell as `()` and
/// which then means the same: every column that is not generated.
pub fn column_clause(rel: &RelInfo, cols: &[usize]) -> String {
    if cols.is_empty() {
        return String::new();
    }
    format!(" ({})", column_list(rel, cols))
}

pub fn overriding(rel: &RelInfo) -> &'static str {
    if rel.columns.iter().any(|c| c.identity == Identity::Always) {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    }
}

/// Can the table's rows travel as arrays? Not when a column is itself an array (an array of
/// arrays is a multi-dimensional array, and unnest would take it apart), nor a box (whose
/// array elements are separated by ';', not ','), nor may be a composite (unnest in FROM
/// expands a composite element into its fields): a non-built-in type (its name comes
/// schema-qualified) that the DMS table maps to NCLOB.
pub fn unnest_safe(rel: &RelInfo) -> bool {
    rel.columns.iter().all(|c| {
        let maybe_composite = c.dms_type == DmsType::Nclob && c.type_sql.contains('.');
        !c.type_sql.ends_with(']') && c.type_oid != oids::BOX && !maybe_composite
    })
}

/// An array literal of `vals` (text elements, double-quoted and escaped; NULL bare).
fn array_literal<'v>(vals: impl Iterator<Item = &'v Val>) -> String {
    text_array(vals.map(Val::to_pg_text))
}

/// A text array literal (elements double-quoted and escaped; NULL bare).
pub fn text_array(items: impl Iterator<Item = Option<String>>) -> String {
    let mut s = String::from("{");
    for (i, v) in items.enumerate() {
        if i > 0 {
            s.push(',');
        }
        match v {
            None => s.push_str("NULL"),
            Some(t) => {
                s.push('"');
                for ch in t.chars() {
                    if ch == '"' || ch == '\\' {
                        s.push('\\');
                    }
                    s.push(ch);
                }
                s.push('"');
            }
        }
    }
    s.push('}');
    s
}

/// `unnest($1::t1[], $2::t2[]) AS s(c1, c2)` over `cols`, parameters from `first`.
fn unnest_source(rel: &RelInfo, cols: &[usize], first: usize) -> String {
    let arrays: Vec<String> =
        cols.iter().enumerate().map(|(n, &i)| format!("${}::{}[]", first + n, rel.columns[i].type_sql)).collect();
    format!("unnest({}) AS s({})", arrays.join(", "), column_list(rel, cols))
}

fn key_match(rel: &RelInfo, key_cols: &[usize]) -> String {
    key_cols
        .iter()
        .map(|&i| format!("t.{c} = s.{c}", c = quote_ident(&rel.columns[i].name)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// A table's net changes sorted by what the target must do.
pub struct NetSplit<'b> {
    /// Key values of rows to delete (replaced rows included).
    pub deletes: Vec<&'b Row>,
    /// (key values, new row) of rows to update, grouped by the columns they set (a row leaves
    /// out its unchanged values and its key); rows that set nothing are left out.
    pub updates: BTreeMap<Vec<usize>, Vec<(&'b Row, &'b Row)>>,
    /// Rows to insert (replaced rows included).
    pub inserts: Vec<&'b Row>,
}

pub fn split_net<'b>(t: &TableBatch, net: &'b NetTable) -> NetSplit<'b> {
    let written = written_columns(&t.rel);
    let mut split =
        NetSplit { deletes: Vec::new(), updates: BTreeMap::new(), inserts: net.appended().iter().collect() };
    for (key, op) in net.ops() {
        match op {
            NetOp::Delete => split.deletes.push(key),
            NetOp::Replace(row) => {
                split.deletes.push(key);
                split.inserts.push(row);
            }
            NetOp::Insert(row) => split.inserts.push(row),
            NetOp::Update(row) => {
                let set: Vec<usize> =
                    written.iter().copied().filter(|i| !t.key_cols.contains(i) && row[*i] != Val::Unchanged).collect();
                if !set.is_empty() {
                    split.updates.entry(set).or_default().push((key, row));
                }
            }
        }
    }
    split
}

/// The set-wise statements of a table's net changes: deletes, then updates, then inserts.
pub fn net_statements(t: &TableBatch, net: &NetTable) -> Vec<Planned> {
    let rel = &t.rel;
    let target = rel.qualified();
    let written = written_columns(rel);
    let NetSplit { deletes, updates, inserts } = split_net(t, net);
    let mut out = Vec::new();
    if !deletes.is_empty() {
        let params = (0..t.key_cols.len()).map(|k| Some(array_literal(deletes.iter().map(|key| &key[k])))).collect();
        out.push(Planned {
            gated: false,
            sql: format!(
                "DELETE FROM ONLY {target} t USING {} WHERE {}",
                unnest_source(rel, &t.key_cols, 1),
                key_match(rel, &t.key_cols)
            ),
            params,
            expect: Some(deletes.len() as u64),
        });
    }
    for (set, rows) in &updates {
        let mut params: Vec<Option<String>> =
            (0..t.key_cols.len()).map(|k| Some(array_literal(rows.iter().map(|(key, _)| &key[k])))).collect();
        params.extend(set.iter().map(|&i| Some(array_literal(rows.iter().map(|(_, r)| &r[i])))));
        let cols: Vec<usize> = t.key_cols.iter().chain(set).copied().collect();
        let assignments: Vec<String> =
            set.iter().map(|&i| format!("{c} = s.{c}", c = quote_ident(&rel.columns[i].name))).collect();
        out.push(Planned {
            gated: false,
            sql: format!(
                "UPDATE ONLY {target} t SET {} FROM {} WHERE {}",
                assignments.join(", "),
                unnest_source(rel, &cols, 1),
                key_match(rel, &t.key_cols)
            ),
            params,
            expect: Some(rows.len() as u64),
        });
    }
    if !inserts.is_empty() && written.is_empty() {
        // Rows with nothing to write (no columns, or generated ones only) still count.
        out.push(Planned {
            gated: false,
            sql: format!("INSERT INTO {target} SELECT FROM pg_catalog.generate_series(1, {})", inserts.len()),
            params: Vec::new(),
            expect: Some(inserts.len() as u64),
        });
    } else if !inserts.is_empty() {
        out.push(Planned {
            gated: false,
            sql: format!(
                "INSERT INTO {target} ({}){} SELECT * FROM {}",
                column_list(rel, &written),
                overriding(rel),
                unnest_source(rel, &written, 1)
            ),
            params: written.iter().map(|&i| Some(array_literal(inserts.iter().map(|r| &r[i])))).collect(),
            expect: Some(inserts.len() as u64),
        });
    }
    out
}

/// The WHERE clause that finds a change's row (its parameters numbered after `offset`
/// others), and its parameters.
fn row_condition(
    c: &Change,
    old: &Old,
    new: Option<&Row>,
    offset: usize,
) -> Result<(String, Vec<Option<String>>), NoIdentity> {
    let rel = &c.rel;
    let key_cols = key_columns(rel);
    let key_vals = if key_cols.is_empty() { None } else { old_key(old, new, &key_cols) };
    if let Some(vals) = key_vals {
        let cond: Vec<String> = key_cols
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                format!("{} = ${}::{}", quote_ident(&rel.columns[i].name), offset + n + 1, rel.columns[i].type_sql)
            })
            .collect();
        return Ok((cond.join(" AND "), vals.iter().map(|v| v.to_pg_text()).collect()));
    }
    if written_columns(rel).is_empty() {
        // No column but generated ones (or none at all): every row of the table is the same
        // row, so any one of them is the one the source changed, key or no key.
        return Ok((format!("ctid = (SELECT ctid FROM ONLY {} LIMIT 1)", rel.qualified()), Vec::new()));
    }
    let Old::Full(row) = old else { return Err(NoIdentity) };
    // No key: the whole old row identifies it; of identical rows, change one, as the source
    // did. Compared as text, which every type has (json or point have no equality
    // operator), both sides through the target's own input and output functions (so char(n)
    // padding and time zones compare alike); money through numeric, since its text depends
    // on lc_monetary.
    let cond: Vec<String> = rel
        .columns
        .iter()
        .enumerate()
        .map(|(n, col)| {
            let (via, ty) =
                if col.type_oid == oids::MONEY { ("::numeric", "numeric") } else { ("", col.type_sql.as_str()) };
            format!("{}{via}::text IS NOT DISTINCT FROM (${}::{ty})::text", quote_ident(&col.name), offset + n + 1)
        })
        .collect();
    let sql = format!("ctid = (SELECT ctid FROM ONLY {} WHERE {} LIMIT 1)", rel.qualified(), cond.join(" AND "));
    Ok((sql, row.iter().map(Val::to_pg_text).collect()))
}

/// One change as its own statement; `None` for an update that changes nothing.
pub fn change_statement(c: &Change) -> Result<Option<Planned>, NoIdentity> {
    let rel = &c.rel;
    let target = rel.qualified();
    let written = written_columns(rel);
    let cast = |i: usize, n: usize| format!("${n}::{}", rel.columns[i].type_sql);
    Ok(Some(match &c.kind {
        ChangeKind::Insert { .. } if written.is_empty() => Planned {
            gated: false,
            sql: format!("INSERT INTO {target} DEFAULT VALUES"),
            params: Vec::new(),
            expect: Some(1),
        },
        ChangeKind::Insert { new } => {
            let values: Vec<String> = written.iter().enumerate().map(|(n, &i)| cast(i, n + 1)).collect();
            Planned {
                gated: false,
                sql: format!(
                    "INSERT INTO {target} ({}){} VALUES ({})",
                    column_list(rel, &written),
                    overriding(rel),
                    values.join(", ")
                ),
                params: written.iter().map(|&i| new[i].to_pg_text()).collect(),
                expect: Some(1),
            }
        }
        ChangeKind::Update { old, new } => {
            let set: Vec<usize> = written.iter().copied().filter(|&i| new[i] != Val::Unchanged).collect();
            if set.is_empty() {
                return Ok(None);
            }
            let mut params: Vec<Option<String>> = set.iter().map(|&i| new[i].to_pg_text()).collect();
            let assignments: Vec<String> = set
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("{} = {}", quote_ident(&rel.columns[i].name), cast(i, n + 1)))
                .collect();
            let (cond, cond_params) = row_condition(c, old, Some(new), params.len())?;
            params.extend(cond_params);
            Planned {
                gated: false,
                sql: format!("UPDATE ONLY {target} SET {} WHERE {cond}", assignments.join(", ")),
                params,
                expect: Some(1),
            }
        }
        ChangeKind::Delete { old } => {
            let (cond, params) = row_condition(c, old, None, 0)?;
            Planned { sql: format!("DELETE FROM ONLY {target} WHERE {cond}"), params, expect: Some(1), gated: false }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn array_literals_quote_every_element() {
        let vals = [
            Val::Int4(1),
            Val::Null,
            Val::Text(Bytes::from_static(b"a \"q\" \\ {,}")),
            Val::Text(Bytes::from_static(b"NULL")),
        ];
        assert_eq!(array_literal(vals.iter()), r#"{"1",NULL,"a \"q\" \\ {,}","NULL"}"#);
    }
}

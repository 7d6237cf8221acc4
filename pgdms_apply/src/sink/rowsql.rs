//! SQL for the heterogeneous SQL targets (MySQL/MariaDB, SQLite): statement texts with `?`
//! placeholders, and the cells of a change, through the DMS mapping.
//!
//! Changes one by one in source order (`change`: exact for key updates and keyless tables
//! alike), and the pieces of a set-wise apply of a batch's net change (multi-row
//! `insert_rows`, `delete_keys`, `update_key`). Inserts into a keyed table are upserts, and
//! updates and deletes do not insist on finding their row: a target converges on the
//! source's rows even where one was missing.

use super::typemap::{cell, Cell, Flavor, MapOptions, Unrepresentable};
use crate::model::{Change, ChangeKind, ColumnInfo, Old, RelInfo, Row, Val};
use pgdms_proto::ddl::ColumnDef;

/// How a target spells SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

impl Dialect {
    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::MySql => format!("`{}`", ident.replace('`', "``")),
            Dialect::Sqlite => format!("\"{}\"", ident.replace('"', "\"\"")),
        }
    }

    pub fn flavor(self) -> Flavor {
        match self {
            Dialect::MySql => Flavor::MySql,
            Dialect::Sqlite => Flavor::Sqlite,
        }
    }
}

/// A SQL literal of a cell, as SQLite and MySQL both read it (MySQL sessions run with
/// NO_BACKSLASH_ESCAPES, so doubling quotes is the whole of string escaping).
pub fn literal(c: &Cell) -> String {
    match c {
        Cell::Null => "NULL".into(),
        Cell::Int(i) => i.to_string(),
        // Shortest round-trip digits with an exponent: read back as the same double.
        Cell::Real(f) => format!("{f:e}"),
        Cell::Text(s) => format!("'{}'", s.replace('\'', "''")),
        Cell::Blob(b) => {
            use std::fmt::Write as _;
            let mut s = String::with_capacity(b.len() * 2 + 3);
            s.push_str("X'");
            for byte in b {
                let _ = write!(s, "{byte:02x}"); // into a String: cannot fail
            }
            s.push('\'');
            s
        }
    }
}

/// The source's text of the value that the rows already there hold in a column a DDL
/// added: what the source gave them (`missing`, from pgdms 0.3.1), or, from an older
/// extension, the default when it is a constant. `None`: NULL, or not known.
pub fn added_column_text(def: &ColumnDef) -> Option<String> {
    use crate::sql::checked::{constant, Constant};
    if def.missing.is_some() {
        return def.missing.clone();
    }
    Some(match constant(def.default.as_deref()?)? {
        Constant::Number(n) | Constant::Text(n) => n,
        Constant::Bool(b) => if b { "t" } else { "f" }.into(),
    })
}

/// That value as `col`'s cell on the target, through the DMS mapping. `Ok(None)` when the
/// text is not a value of the column's type (nothing to give the rows).
pub fn added_column_cell(
    text: &str,
    col: &ColumnInfo,
    opts: &MapOptions,
    flavor: Flavor,
) -> Result<Option<Cell>, Unrepresentable> {
    match Val::from_pg_text(col.type_oid, text) {
        Some(v) => cell(&v, col, opts, flavor).map(|c| (c != Cell::Null).then_some(c)),
        None => Ok(None),
    }
}

/// A value the target could not hold, to report.
#[derive(Debug, Clone)]
pub struct ValueException {
    pub table: String,
    pub column: String,
    pub key: String,
    pub source_text: String,
}

/// A statement and its parameters.
#[derive(Debug)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Cell>,
}

/// Columns a change writes (generated columns are computed by the target, or not at all).
fn written(rel: &RelInfo) -> Vec<usize> {
    rel.columns.iter().enumerate().filter(|(_, c)| !c.generated).map(|(i, _)| i).collect()
}

/// The columns that find a row: the replica identity's key, or under FULL the primary key
/// or, without one, every column.
fn key_of(rel: &RelInfo) -> Vec<usize> {
    let k = crate::model::batch::key_columns(rel);
    if k.is_empty() {
        written(rel)
    } else {
        k
    }
}

pub struct Converter<'a> {
    pub dialect: Dialect,
    pub opts: &'a MapOptions,
    /// Quoted name of the target table.
    pub table: String,
    pub exceptions: Vec<ValueException>,
}

impl Converter<'_> {
    fn cell(&mut self, rel: &RelInfo, i: usize, v: &Val, key: &dyn Fn() -> String) -> Cell {
        match cell(v, &rel.columns[i], self.opts, self.dialect.flavor()) {
            Ok(c) => c,
            Err(Unrepresentable { source_text }) => {
                self.exceptions.push(ValueException {
                    // Unquoted: it is read by people, in a column of its own.
                    table: format!("{}.{}", rel.schema, rel.name),
                    column: rel.columns[i].name.clone(),
                    key: key(),
                    source_text,
                });
                Cell::Null
            }
        }
    }

    /// INSERT (an upsert where the table has a key) of a full row.
    pub fn insert(&mut self, rel: &RelInfo, new: &Row) -> Statement {
        self.insert_rows(rel, &[new])
    }

    /// One INSERT (an upsert where the table has a key) of full rows.
    pub fn insert_rows(&mut self, rel: &RelInfo, rows: &[&Row]) -> Statement {
        let cols = written(rel);
        let keys = crate::model::batch::key_columns(rel);
        let names: Vec<String> = cols.iter().map(|&i| self.dialect.quote(&rel.columns[i].name)).collect();
        let marks = format!("({})", vec!["?"; cols.len()].join(", "));
        let mut params = Vec::with_capacity(cols.len() * rows.len());
        for new in rows {
            let key_text = || describe(rel, &keys, new);
            params.extend(cols.iter().map(|&i| self.cell(rel, i, &new[i], &key_text)));
        }
        let values = vec![marks; rows.len()].join(", ");
        let mut sql = format!("INSERT INTO {} ({}) VALUES {values}", self.table, names.join(", "));
        let non_key: Vec<&String> =
            cols.iter().zip(&names).filter(|(i, _)| !keys.contains(i)).map(|(_, n)| n).collect();
        if !keys.is_empty() {
            match self.dialect {
                Dialect::MySql => {
                    // Every column, so that a row with only key columns is an upsert too.
                    let set: Vec<String> = names.iter().map(|n| format!("{n} = VALUES({n})")).collect();
                    sql += &format!(" ON DUPLICATE KEY UPDATE {}", set.join(", "));
                }
                Dialect::Sqlite => {
                    let conflict: Vec<String> =
                        keys.iter().map(|&i| self.dialect.quote(&rel.columns[i].name)).collect();
                    if non_key.is_empty() {
                        sql += &format!(" ON CONFLICT ({}) DO NOTHING", conflict.join(", "));
                    } else {
                        let set: Vec<String> = non_key.iter().map(|n| format!("{n} = excluded.{n}")).collect();
                        sql += &format!(" ON CONFLICT ({}) DO UPDATE SET {}", conflict.join(", "), set.join(", "));
                    }
                }
            }
        }
        Statement { sql, params }
    }

    /// DELETE of the rows with these keys (values in `key_cols` order), in one statement.
    pub fn delete_keys(&mut self, rel: &RelInfo, key_cols: &[usize], keys: &[&Row]) -> Statement {
        let names: Vec<String> = key_cols.iter().map(|&i| self.dialect.quote(&rel.columns[i].name)).collect();
        let tuple = |n: usize| if n == 1 { "?".to_string() } else { format!("({})", vec!["?"; n].join(", ")) };
        let mut params = Vec::with_capacity(keys.len() * key_cols.len());
        for key in keys {
            let key_text = || describe_values(rel, key_cols, key);
            params.extend(key_cols.iter().zip(key.iter()).map(|(&i, v)| self.cell(rel, i, v, &key_text)));
        }
        let lhs = if names.len() == 1 { names[0].clone() } else { format!("({})", names.join(", ")) };
        let list = vec![tuple(key_cols.len()); keys.len()].join(", ");
        Statement { sql: format!("DELETE FROM {} WHERE {lhs} IN ({list})", self.table), params }
    }

    /// UPDATE of the row with this key: the columns `new` changes (not `Unchanged`).
    pub fn update_key(&mut self, rel: &RelInfo, key_cols: &[usize], key: &Row, new: &Row) -> Statement {
        let key_text = || describe_values(rel, key_cols, key);
        let mut sets = Vec::new();
        let mut params = Vec::new();
        for i in written(rel) {
            if new[i] != Val::Unchanged {
                sets.push(format!("{} = ?", self.dialect.quote(&rel.columns[i].name)));
                params.push(self.cell(rel, i, &new[i], &key_text));
            }
        }
        if sets.is_empty() {
            return Statement { sql: String::new(), params };
        }
        let mut conds = Vec::new();
        for (&i, v) in key_cols.iter().zip(key) {
            conds.push(format!("{} = ?", self.dialect.quote(&rel.columns[i].name)));
            params.push(self.cell(rel, i, v, &key_text));
        }
        Statement {
            sql: format!("UPDATE {} SET {} WHERE {}", self.table, sets.join(", "), conds.join(" AND ")),
            params,
        }
    }

    /// The WHERE clause and parameters finding a change's old row; None without a key.
    fn locate(&mut self, rel: &RelInfo, old: &Old, new: Option<&Row>) -> Option<(String, Vec<Cell>)> {
        if crate::model::batch::key_columns(rel).is_empty() && !matches!(old, Old::Full(_)) {
            return None;
        }
        let key_cols = key_of(rel);
        let values: Row = match old {
            Old::Full(row) => key_cols.iter().map(|&i| row[i].clone()).collect(),
            _ => crate::model::batch::old_key(old, new, &key_cols)?,
        };
        let mut conds = Vec::with_capacity(key_cols.len());
        let mut params = Vec::with_capacity(key_cols.len());
        let key_text = || describe_values(rel, &key_cols, &values);
        for (&i, v) in key_cols.iter().zip(&values) {
            let name = self.dialect.quote(&rel.columns[i].name);
            let c = self.cell(rel, i, v, &key_text);
            if c == Cell::Null {
                conds.push(format!("{name} IS NULL"));
            } else {
                // Exact on MySQL too: its tables are created with a binary, no-pad collation.
                conds.push(format!("{name} = ?"));
                params.push(c);
            }
        }
        Some((conds.join(" AND "), params))
    }

    /// The statement of one change; None when the change cannot find its row (no key logged).
    pub fn change(&mut self, c: &Change) -> Option<Statement> {
        let rel = &c.rel;
        match &c.kind {
            ChangeKind::Insert { new } => Some(self.insert(rel, new)),
            ChangeKind::Update { old, new } => {
                let (cond, key_params) = self.locate(rel, old, Some(new))?;
                let keys = key_of(rel);
                let key_text = || describe(rel, &keys, new);
                let mut sets = Vec::new();
                let mut params = Vec::new();
                for i in written(rel) {
                    if new[i] == Val::Unchanged {
                        continue;
                    }
                    sets.push(format!("{} = ?", self.dialect.quote(&rel.columns[i].name)));
                    params.push(self.cell(rel, i, &new[i], &key_text));
                }
                if sets.is_empty() {
                    return Some(Statement { sql: String::new(), params: vec![] });
                }
                params.extend(key_params);
                let cond = self.one_row(&cond);
                Some(Statement { sql: format!("UPDATE {} SET {} WHERE {cond}", self.table, sets.join(", ")), params })
            }
            ChangeKind::Delete { old } => {
                let (cond, params) = self.locate(rel, old, None)?;
                let cond = self.one_row(&cond);
                Some(Statement { sql: format!("DELETE FROM {} WHERE {cond}", self.table), params })
            }
        }
    }
}

impl Converter<'_> {
    /// A condition matching at most one row: a keyless table (REPLICA IDENTITY FULL) may
    /// hold duplicates, of which a change touches one.
    fn one_row(&self, cond: &str) -> String {
        match self.dialect {
            Dialect::MySql => format!("{cond} LIMIT 1"),
            Dialect::Sqlite => format!("rowid IN (SELECT rowid FROM {} WHERE {cond} LIMIT 1)", self.table),
        }
    }
}

/// The key of a change's row, as text ("id=3"), for messages.
pub fn key_text(c: &Change) -> String {
    let key = key_of(&c.rel);
    match &c.kind {
        ChangeKind::Insert { new } | ChangeKind::Update { new, .. } => describe(&c.rel, &key, new),
        ChangeKind::Delete { old: Old::Full(row) } => describe(&c.rel, &key, row),
        ChangeKind::Delete { old: Old::Key(k) } => {
            describe_values(&c.rel, &crate::model::batch::key_columns(&c.rel), k)
        }
        ChangeKind::Delete { old: Old::None } => String::new(),
    }
}

fn describe(rel: &RelInfo, cols: &[usize], row: &Row) -> String {
    let values: Row = cols.iter().map(|&i| row.get(i).cloned().unwrap_or(Val::Null)).collect();
    describe_values(rel, cols, &values)
}

fn describe_values(rel: &RelInfo, cols: &[usize], values: &[Val]) -> String {
    cols.iter()
        .zip(values)
        .map(|(&i, v)| format!("{}={}", rel.columns[i].name, v.to_pg_text().unwrap_or_else(|| "NULL".into())))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdms_proto::dms::oids;
    use pgdms_proto::{DmsType, Identity};

    #[test]
    fn added_columns_give_the_rows_there_the_source_value_or_a_plain_constant() {
        let def = |default: &str, missing: Option<&str>| ColumnDef {
            default: Some(default.into()),
            missing: missing.map(Into::into),
            ..Default::default()
        };
        // The value the source stored wins over its expression.
        assert_eq!(
            added_column_text(&def("now()", Some("2026-12-01 10:00:00+00"))).as_deref(),
            Some("2026-12-01 10:00:00+00")
        );
        // From an older extension: constants only.
        assert_eq!(added_column_text(&def("0", None)).as_deref(), Some("0"));
        assert_eq!(added_column_text(&def("'it''s'::text", None)).as_deref(), Some("it's"));
        assert_eq!(added_column_text(&def("false", None)).as_deref(), Some("f"));
        assert_eq!(added_column_text(&def("now()", None)), None);
        assert_eq!(added_column_text(&def("nextval('s'::regclass)", None)), None);
        assert_eq!(added_column_text(&def("1); DROP TABLE t; --", None)), None);

        let col = |type_oid: u32, dms_type: DmsType| ColumnInfo {
            name: "c".into(),
            type_oid,
            type_sql: String::new(),
            type_name: String::new(),
            type_modifier: -1,
            key: false,
            primary_key: false,
            generated: false,
            identity: Identity::None,
            not_null: true,
            dms_type,
        };
        let opts = MapOptions::default();
        let b = col(oids::BOOL, DmsType::Boolean);
        assert_eq!(added_column_cell("f", &b, &opts, Flavor::Sqlite), Ok(Some(Cell::Text("false".into()))));
        let as_bool = MapOptions { boolean_as_boolean: true, ..opts };
        assert_eq!(added_column_cell("t", &b, &as_bool, Flavor::MySql), Ok(Some(Cell::Int(1))));
        let tz = col(oids::TIMESTAMPTZ, DmsType::Timestamp { utc: true });
        let cell = added_column_cell("2026-12-01 12:00:00+02", &tz, &opts, Flavor::MySql);
        assert_eq!(cell, Ok(Some(Cell::Text("2026-12-01 10:00:00".into()))));
        assert!(added_column_cell("infinity", &tz, &opts, Flavor::MySql).is_err());
        assert_eq!(added_column_cell("not a time", &tz, &opts, Flavor::Sqlite), Ok(None));
        assert_eq!(literal(&Cell::Text("it's".into())), "'it''s'");
    }
}

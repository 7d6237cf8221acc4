//! SQL text for MySQL: literals (the session runs with NO_BACKSLASH_ESCAPES), statements
//! with their values inlined, and the types and defaults as the catalog writes them.

use super::{STATEMENT_BYTES, STATEMENT_ROWS};
use crate::model::Row;
use crate::sink::rowsql::Statement;
use crate::sink::typemap::Cell;
use pgdms_proto::ddl::ColumnDef;

/// A SQL literal of a cell. The session runs with NO_BACKSLASH_ESCAPES, so doubling quotes
/// is the whole of string escaping.
pub(super) fn literal(c: &Cell) -> String {
    match c {
        Cell::Null => "NULL".into(),
        Cell::Int(i) => i.to_string(),
        // Shortest round-trip digits with an exponent: MySQL reads it as a DOUBLE.
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

/// The statement with its parameters written in as literals (one round trip, no prepared
/// statement per shape). `?` only ever stands for a parameter outside backtick-quoted names.
pub(super) fn inline(s: Statement) -> String {
    let mut out = String::with_capacity(s.sql.len() + s.params.len() * 8);
    let mut params = s.params.iter();
    let mut quoted = false;
    for ch in s.sql.chars() {
        match ch {
            '`' => {
                quoted = !quoted;
                out.push(ch);
            }
            '?' if !quoted => out.push_str(&literal(params.next().unwrap_or(&Cell::Null))),
            _ => out.push(ch),
        }
    }
    out
}

/// Rows cut into multi-row statements' worth (`STATEMENT_ROWS` rows, about
/// `STATEMENT_BYTES` bytes).
pub(super) fn statement_chunks<'a, 'r>(rows: &'a [&'r Row]) -> Vec<&'a [&'r Row]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let (mut end, mut bytes) = (start, 0);
        while end < rows.len() && end - start < STATEMENT_ROWS && bytes < STATEMENT_BYTES {
            bytes += rows[end].iter().map(|v| v.approx_len()).sum::<usize>();
            end += 1;
        }
        chunks.push(&rows[start..end]);
        start = end;
    }
    chunks
}

pub(super) fn text(s: &str) -> String {
    literal(&Cell::Text(s.to_string()))
}

/// MySQL's COLUMN_TYPE in the spelling of `typemap::mysql_types` (MariaDB adds display
/// widths to integers, BOOLEAN is TINYINT(1)).
pub(super) fn normal_type(column_type: &str) -> String {
    let t = column_type.to_ascii_uppercase();
    if t == "TINYINT(1)" {
        return "BOOLEAN".into();
    }
    for int in ["SMALLINT", "BIGINT", "INT"] {
        if t.starts_with(&format!("{int}(")) {
            return int.into();
        }
    }
    t
}

/// A PostgreSQL column default MySQL can take as it is: a number, a string, a boolean
/// (recognised by PostgreSQL's own parser), as a MySQL literal. Anything else (functions,
/// expressions) has no MySQL equivalent here.
pub(super) fn literal_default(def: &ColumnDef) -> Option<String> {
    use crate::sql::checked::Constant;
    Some(match crate::sql::checked::constant(def.default.as_deref()?)? {
        Constant::Number(n) | Constant::Text(n) => text(&n),
        Constant::Bool(b) => text(if b { "true" } else { "false" }),
    })
}

pub(super) fn abbreviated(sql: &str) -> String {
    if sql.len() <= 300 {
        return sql.to_string();
    }
    let mut end = 300;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &sql[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped_and_placeholders_outside_names_filled() {
        let s = Statement {
            sql: "INSERT INTO `a?``b` (`c`) VALUES (?, ?, ?, ?)".into(),
            params: vec![Cell::Text("it's".into()), Cell::Blob(vec![0, 255]), Cell::Real(1e300), Cell::Null],
        };
        assert_eq!(inline(s), "INSERT INTO `a?``b` (`c`) VALUES ('it''s', X'00ff', 1e300, NULL)");
        assert_eq!(normal_type("int(11)"), "INT");
        assert_eq!(normal_type("tinyint(1)"), "BOOLEAN");
        assert_eq!(normal_type("decimal(10,2)"), "DECIMAL(10,2)");
    }

    #[test]
    fn only_plain_defaults_are_carried() {
        let def = |d: &str| ColumnDef { default: Some(d.into()), ..Default::default() };
        assert_eq!(literal_default(&def("0")).as_deref(), Some("'0'"));
        assert_eq!(literal_default(&def("'it''s'::text")).as_deref(), Some("'it''s'"));
        assert_eq!(literal_default(&def("true")).as_deref(), Some("'true'"));
        assert_eq!(literal_default(&def("now()")), None);
        assert_eq!(literal_default(&def("nextval('s'::regclass)")), None);
        assert_eq!(literal_default(&def(r"'a\\'' or 1'::text")).as_deref(), Some(r"'a\\'' or 1'"));
        assert_eq!(literal_default(&def("1); DROP TABLE t; --")), None);
    }
}

//! SQL text for MySQL: literals (the session runs with NO_BACKSLASH_ESCAPES), statements
//! with their values inlined, and the types and defaults as the catalog writes them.

use super::{STATEMENT_BYTES, STATEMENT_ROWS};
use crate::model::Row;
pub(super) use crate::sink::rowsql::literal;
use crate::sink::rowsql::Statement;
use crate::sink::typemap::Cell;

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
}

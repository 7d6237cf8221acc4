//! Quoting for SQL text: replication commands to the source and statements to the target.

/// An identifier, double-quoted ("Mixed Case", "we""ird").
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal, single-quoted.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

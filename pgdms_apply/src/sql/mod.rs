//! SQL text: quoting for replication commands to the source and statements to the target,
//! and [`checked`], the gate every piece of SQL text from the stream passes before it goes
//! into a statement.

pub mod checked;

/// An identifier, double-quoted ("Mixed Case", "we""ird").
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal that means `s` whatever the session's `standard_conforming_strings`:
/// quotes doubled, and a value with a backslash written as an escape string (`E'a\\b'`), as
/// PostgreSQL's own `quote_literal` does. (Every session pgdms-apply opens also sets
/// `standard_conforming_strings = on`; this does not depend on it.)
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// `-c` options for every session pgdms-apply opens, merged into the user's `options`: the
/// settings the statements it builds depend on.
pub fn session_options(user: Option<&str>) -> String {
    const OURS: &str = "-c standard_conforming_strings=on";
    match user {
        Some(u) if !u.trim().is_empty() => format!("{u} {OURS}"),
        _ => OURS.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_mean_their_value_with_or_without_standard_conforming_strings() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\'); drop table t; --"), r"E'a\\''); drop table t; --'");
        assert_eq!(quote_literal(r"\"), r"E'\\'");
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
    }

    #[test]
    fn our_session_settings_come_last() {
        assert_eq!(session_options(None), "-c standard_conforming_strings=on");
        assert_eq!(
            session_options(Some("-c standard_conforming_strings=off")),
            "-c standard_conforming_strings=off -c standard_conforming_strings=on"
        );
    }
}

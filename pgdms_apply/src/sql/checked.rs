//! The gate for SQL text that arrives over the stream.
//!
//! DDL records describe objects with pieces of SQL the source wrote (type names, default,
//! generated and check expressions, partition keys and bounds, collations, sequence
//! names). The stream is untrusted input: anyone who can write to the source's WAL, or
//! tamper with the connection, chooses that text. Before a piece goes into a statement,
//! it is parsed here with PostgreSQL's own parser (libpg_query) and must be exactly one
//! element of its kind: one type name, one expression, one partition bound... Text that
//! would close the element and go on (`int); ALTER ROLE ...`, `1) , extra int DEFAULT (2`)
//! is refused. Names are taken apart and quoted again by us rather than passed on.
//!
//! A piece may not hold a comment either: `integer --` is one type name to the parser, but
//! pasted into a statement it would swallow the rest of the line.
//!
//! The statements built from these pieces are also sent one at a time through the extended
//! protocol, which runs exactly one statement per message whatever the text holds.

use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{a_const, Node};
use pg_query::ParserOptions;

/// Text refused: what it was meant to be, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the source sent {what} that is not one (refused: {text:?}{why})")]
pub struct Refused {
    pub what: &'static str,
    pub text: String,
    why: String,
}

impl Refused {
    /// A piece the record should carry and does not.
    pub fn missing(what: &'static str) -> Refused {
        Refused { what, text: String::new(), why: ": missing".into() }
    }
}

fn refused(what: &'static str, text: &str, why: impl std::fmt::Display) -> Refused {
    let why = why.to_string();
    let why = if why.is_empty() { why } else { format!(": {why}") };
    // Long texts are cut for the message; the refusal does not depend on it.
    let text: String = text.chars().take(200).collect();
    Refused { what, text, why }
}

/// Refuses text with a comment in it (what PostgreSQL's own scanner calls one).
fn no_comment(what: &'static str, text: &str) -> Result<(), Refused> {
    use pg_query::protobuf::Token;
    let tokens = pg_query::scan(text).map_err(|e| refused(what, text, e))?.tokens;
    if tokens.iter().any(|t| t.token == Token::SqlComment as i32 || t.token == Token::CComment as i32) {
        return Err(refused(what, text, "it holds a comment"));
    }
    Ok(())
}

/// The one statement `sql` parses to (an error for anything else).
fn one_statement(sql: &str) -> Result<N, String> {
    let parsed = pg_query::parse(sql, ParserOptions::DEFAULT).map_err(|e| e.to_string())?;
    let mut stmts = parsed.protobuf.stmts;
    if stmts.len() != 1 {
        return Err(format!("{} statements", stmts.len()));
    }
    stmts.pop().and_then(|s| s.stmt).and_then(|n| n.node).ok_or_else(|| "an empty statement".to_string())
}

/// Exactly one type name ("integer", "numeric(10,2)[]", "public.\"My Type\""), as the
/// source's `format_type` writes it.
pub fn type_name(text: &str) -> Result<&str, Refused> {
    const WHAT: &str = "a type name";
    if text.trim().is_empty() {
        return Err(refused(WHAT, text, "empty"));
    }
    no_comment(WHAT, text)?;
    // What PostgreSQL's parseTypeString (behind to_regtype) accepts: SELECT NULL::<text>
    // must be that cast and nothing else, to one plain type.
    let cast = lone_target(&format!("SELECT NULL::{text}")).map_err(|why| refused(WHAT, text, why))?;
    match cast.node {
        Some(N::TypeCast(c))
            if c.arg.as_deref().and_then(|a| a.node.as_ref()).is_some_and(is_null)
                && c.type_name.as_ref().is_some_and(|t| !t.setof && !t.pct_type) =>
        {
            Ok(text)
        }
        _ => Err(refused(WHAT, text, "more than a type name")),
    }
}

/// Exactly one expression (a default, a generated column's expression, a check): returned
/// in parentheses, ready to stand wherever SQL takes an expression.
pub fn expression(text: &str) -> Result<String, Refused> {
    const WHAT: &str = "an expression";
    no_comment(WHAT, text)?;
    let wrapped = format!("({text})");
    match one_expression(&wrapped) {
        Ok(_) => Ok(wrapped),
        Err(why) => Err(refused(WHAT, text, why)),
    }
}

/// The expression node of `SELECT <wrapped>`, if that is a lone select list of one unnamed
/// item and nothing else.
fn one_expression(wrapped: &str) -> Result<Node, String> {
    lone_target(&format!("SELECT {wrapped}"))
}

/// The one item of a SELECT that is a select list of one unnamed item and nothing else (no
/// FROM, WHERE, set operation...): compared with the parse of a plain `SELECT 1`.
fn lone_target(sql: &str) -> Result<Node, String> {
    let N::SelectStmt(mut select) = one_statement(sql)? else {
        return Err("not an expression".into());
    };
    let mut targets = std::mem::take(&mut select.target_list);
    static TEMPLATE: std::sync::OnceLock<Option<pg_query::protobuf::SelectStmt>> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| match one_statement("SELECT 1") {
        Ok(N::SelectStmt(mut t)) => {
            t.target_list.clear();
            Some(*t)
        }
        _ => None,
    });
    if template.as_ref() != Some(&*select) || targets.len() != 1 {
        return Err("more than one expression".into());
    }
    match targets.pop().and_then(|t| t.node) {
        Some(N::ResTarget(t)) if t.name.is_empty() && t.indirection.is_empty() => {
            t.val.map(|v| *v).ok_or_else(|| "no expression".into())
        }
        _ => Err("more than one expression".into()),
    }
}

/// Exactly one partition bound clause ("FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
/// "FOR VALUES IN (1, 2)", "DEFAULT"), as `pg_get_expr(relpartbound)` writes it.
pub fn partition_bound(text: &str) -> Result<&str, Refused> {
    const WHAT: &str = "a partition bound";
    no_comment(WHAT, text)?;
    let prefix = "CREATE TABLE \"t\" PARTITION OF \"p\" ";
    same_create_stmt(&format!("{prefix}{text}"), &format!("{prefix}DEFAULT"), |c| c.partbound = None)
        .map_err(|why| refused(WHAT, text, why))?;
    Ok(text)
}

/// Exactly one partition key ("RANGE (created)", "LIST (lower(name))"), as
/// `pg_get_partkeydef` writes it.
pub fn partition_key(text: &str) -> Result<&str, Refused> {
    const WHAT: &str = "a partition key";
    no_comment(WHAT, text)?;
    let prefix = "CREATE TABLE \"t\" () PARTITION BY ";
    same_create_stmt(&format!("{prefix}{text}"), &format!("{prefix}LIST (a)"), |c| c.partspec = None)
        .map_err(|why| refused(WHAT, text, why))?;
    Ok(text)
}

/// Does `sql` parse to the CREATE TABLE `template` does, once `clear` took the element
/// under test out of both? (Same prefix, so every other node sits at the same place.)
fn same_create_stmt(
    sql: &str,
    template: &str,
    clear: impl Fn(&mut pg_query::protobuf::CreateStmt),
) -> Result<(), String> {
    let (N::CreateStmt(mut got), N::CreateStmt(mut want)) = (one_statement(sql)?, one_statement(template)?) else {
        return Err("not that clause".into());
    };
    clear(&mut got);
    clear(&mut want);
    if got != want {
        return Err("more than that clause".into());
    }
    Ok(())
}

/// Exactly one collation name ("pg_catalog.\"C\"", "\"de-x-icu\""), quoted again.
pub fn collation(text: &str) -> Result<String, Refused> {
    const WHAT: &str = "a collation name";
    no_comment(WHAT, text)?;
    let names = lone_target(&format!("SELECT NULL COLLATE {text}"))
        .and_then(|node| match node.node {
            Some(N::CollateClause(c)) if c.arg.as_deref().and_then(|a| a.node.as_ref()).is_some_and(is_null) => {
                strings(&c.collname)
            }
            _ => Err("more than a collation".into()),
        })
        .map_err(|why| refused(WHAT, text, why))?;
    match names.as_slice() {
        [name] => Ok(crate::sql::quote_ident(name)),
        [schema, name] => Ok(format!("{}.{}", crate::sql::quote_ident(schema), crate::sql::quote_ident(name))),
        _ => Err(refused(WHAT, text, "too many name parts")),
    }
}

fn is_null(n: &N) -> bool {
    matches!(n, N::AConst(c) if c.isnull)
}

/// The String nodes of a name list.
fn strings(list: &[Node]) -> Result<Vec<String>, String> {
    list.iter()
        .map(|n| match &n.node {
            Some(N::String(s)) => Ok(s.sval.clone()),
            _ => Err("not a name".to_string()),
        })
        .collect()
}

/// A relation name, schema-qualified or not: (schema, name).
pub fn qualified_name(text: &str) -> Result<(Option<String>, String), Refused> {
    const WHAT: &str = "a relation name";
    no_comment(WHAT, text)?;
    let parse = || -> Result<(Option<String>, String), String> {
        let (N::CreateSeqStmt(mut got), N::CreateSeqStmt(mut want)) =
            (one_statement(&format!("CREATE SEQUENCE {text}"))?, one_statement("CREATE SEQUENCE \"s\"")?)
        else {
            return Err("not a name".into());
        };
        let name = got.sequence.take().ok_or("not a name")?;
        want.sequence = None;
        if got != want || !name.catalogname.is_empty() || name.relname.is_empty() {
            return Err("more than a name".into());
        }
        Ok(((!name.schemaname.is_empty()).then_some(name.schemaname), name.relname))
    };
    parse().map_err(|why| refused(WHAT, text, why))
}

/// The sequence a `nextval('seq'::regclass)` default draws from (serial columns), quoted
/// again; `None` for any other default (an expression that is not one is refused).
pub fn nextval_sequence(default: &str) -> Result<Option<String>, Refused> {
    no_comment("an expression", default)?;
    let expr = one_expression(&format!("({default})")).map_err(|why| refused("an expression", default, why))?;
    let Some(N::FuncCall(call)) = expr.node else { return Ok(None) };
    let func = strings(&call.funcname).unwrap_or_default();
    if !matches!(
        func.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
        ["nextval"] | ["pg_catalog", "nextval"]
    ) {
        return Ok(None);
    }
    let [arg] = call.args.as_slice() else { return Ok(None) };
    let Some(N::TypeCast(cast)) = &arg.node else { return Ok(None) };
    let Some(N::AConst(c)) = cast.arg.as_deref().and_then(|a| a.node.as_ref()) else { return Ok(None) };
    let Some(a_const::Val::Sval(name)) = &c.val else { return Ok(None) };
    let (schema, name) = qualified_name(&name.sval)?;
    Ok(Some(match schema {
        Some(s) => format!("{}.{}", crate::sql::quote_ident(&s), crate::sql::quote_ident(&name)),
        None => crate::sql::quote_ident(&name),
    }))
}

/// A constant a default may be: what a target that cannot evaluate PostgreSQL expressions
/// can still give the rows already there.
#[derive(Debug, Clone, PartialEq)]
pub enum Constant {
    /// The digits as written ("-1", "2.50").
    Number(String),
    Text(String),
    Bool(bool),
}

/// The constant a default is (a number, a string with or without a cast, a boolean), or
/// `None` when it is anything else.
pub fn constant(default: &str) -> Option<Constant> {
    no_comment("a constant", default).ok()?;
    let expr = one_expression(&format!("({default})")).ok()?;
    let node = match expr.node? {
        N::TypeCast(cast) => cast.arg?.node?,
        other => other,
    };
    let N::AConst(c) = node else { return None };
    match c.val? {
        a_const::Val::Ival(i) => Some(Constant::Number(i.ival.to_string())),
        a_const::Val::Fval(f) => Some(Constant::Number(f.fval)),
        a_const::Val::Sval(s) => Some(Constant::Text(s.sval)),
        a_const::Val::Boolval(b) => Some(Constant::Bool(b.boolval)),
        a_const::Val::Bsval(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_one_type_name() {
        for ok in
            ["integer", "numeric(10,2)[]", "public.\"My Type\"", "time with time zone", "\"char\"", "bit varying(5)"]
        {
            assert_eq!(type_name(ok), Ok(ok), "{ok}");
        }
        for bad in [
            "int); ALTER ROLE mallory SUPERUSER; --",
            "int default 1",
            "int, b int",
            "",
            "int; select 1",
            "setof int",
            "integer --",
            "int /* */",
        ] {
            assert!(type_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expressions_are_one_expression() {
        assert_eq!(expression("nextval('t_id_seq'::regclass)").unwrap(), "(nextval('t_id_seq'::regclass))");
        assert_eq!(expression("(a * 2)").unwrap(), "((a * 2))");
        assert!(expression("CASE WHEN x THEN 1 END").is_ok());
        for bad in [
            "1); DROP TABLE t; --",
            "1) , extra int DEFAULT (2",
            "1) FROM pg_class WHERE (true",
            "1 --",
            "1 /*",
            "1) AS x, (2",
            "",
            "1) UNION SELECT (2",
            "1) --",
            "1 -- what\n",
            "1 /* c */ + 2",
        ] {
            assert!(expression(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partition_bounds_and_keys_are_that_clause_only() {
        assert!(partition_bound("FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')").is_ok());
        assert!(partition_bound("FOR VALUES IN (1, 2)").is_ok());
        assert!(partition_bound("FOR VALUES WITH (modulus 4, remainder 0)").is_ok());
        assert!(partition_bound("DEFAULT").is_ok());
        assert!(partition_bound("DEFAULT PARTITION BY LIST (a)").is_err());
        assert!(partition_bound("DEFAULT TABLESPACE pg_default").is_err());
        assert!(partition_bound("DEFAULT; DROP TABLE t").is_err());
        assert!(partition_bound("DEFAULT --").is_err());
        assert!(partition_key("RANGE (a) --").is_err());
        assert!(partition_key("RANGE (created)").is_ok());
        assert!(partition_key("LIST (lower(name))").is_ok());
        assert!(partition_key("RANGE (a) WITH (fillfactor = 10)").is_err());
        assert!(partition_key("RANGE (a); DROP TABLE t").is_err());
    }

    #[test]
    fn names_are_taken_apart_and_quoted_again() {
        assert_eq!(collation("pg_catalog.\"C\"").unwrap(), "\"pg_catalog\".\"C\"");
        assert_eq!(collation("\"de-x-icu\"").unwrap(), "\"de-x-icu\"");
        assert!(collation("\"C\" || 'x'").is_err());
        assert!(collation("\"C\"; DROP TABLE t").is_err());
        assert_eq!(qualified_name("public.\"t_id_seq\"").unwrap(), (Some("public".into()), "t_id_seq".into()));
        assert!(qualified_name("s; DROP TABLE t").is_err());
        assert!(qualified_name("s INCREMENT 5").is_err());
        assert_eq!(
            nextval_sequence("nextval('public.\"Mixed Case_id_seq\"'::regclass)").unwrap().as_deref(),
            Some("\"public\".\"Mixed Case_id_seq\"")
        );
        assert_eq!(
            nextval_sequence("nextval('s.\"o''brien_seq\"'::regclass)").unwrap().as_deref(),
            Some("\"s\".\"o'brien_seq\"")
        );
        assert_eq!(nextval_sequence("now()").unwrap(), None);
        assert!(nextval_sequence("nextval('x; drop table y'::regclass)").is_err());
    }

    #[test]
    fn constants_are_recognised_and_nothing_else() {
        assert_eq!(constant("0"), Some(Constant::Number("0".into())));
        assert_eq!(constant("'-1'::integer"), Some(Constant::Text("-1".into())));
        assert_eq!(constant("(-2.50)"), Some(Constant::Number("-2.50".into())));
        assert_eq!(constant("'it''s'::text"), Some(Constant::Text("it's".into())));
        assert_eq!(constant("true"), Some(Constant::Bool(true)));
        assert_eq!(constant("now()"), None);
        assert_eq!(constant("nextval('s'::regclass)"), None);
        assert_eq!(constant("1); DROP TABLE t; --"), None);
        assert_eq!(constant("1 --"), None);
        // A comment-like text inside a string is a string, not a comment.
        assert_eq!(constant("'a -- b'::text"), Some(Constant::Text("a -- b".into())));
    }
}

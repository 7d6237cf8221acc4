//! How a change is named in errors and in the exceptions table: its key and its values.

use crate::model::batch::{key_columns, old_key};
use crate::model::{Change, ChangeKind, Old, RelInfo, Row, Val};
use serde_json::Value as Json;

/// The key columns of the change's row with their values (every column when the table has
/// no key).
fn key_values(c: &Change) -> Vec<(String, Option<String>)> {
    let rel = &c.rel;
    let key_cols = key_columns(rel);
    let (old, new) = match &c.kind {
        ChangeKind::Insert { new } => (&Old::None, Some(new)),
        ChangeKind::Update { old, new } => (old, Some(new)),
        ChangeKind::Delete { old } => (old, None),
    };
    let named = |cols: &[usize], vals: &[Val]| -> Vec<(String, Option<String>)> {
        cols.iter().zip(vals).map(|(&i, v)| (rel.columns[i].name.clone(), v.to_pg_text())).collect()
    };
    if !key_cols.is_empty() {
        return old_key(old, new, &key_cols).map(|k| named(&key_cols, &k)).unwrap_or_default();
    }
    let all: Vec<usize> = (0..rel.columns.len()).collect();
    match old {
        Old::Full(row) => named(&all, row),
        _ => new.map(|r| named(&all, r)).unwrap_or_default(),
    }
}

/// `id=5, region=eu`, for messages.
pub fn describe_key(c: &Change) -> String {
    let kv = key_values(c);
    if kv.is_empty() {
        return "unknown".into();
    }
    kv.iter().map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("NULL"))).collect::<Vec<_>>().join(", ")
}

/// A value as `dump` shows it, so the exceptions table and the stream read alike.
fn text_json(v: &Val) -> Json {
    crate::dump::value_json(&v.as_wire())
}

pub fn key_json(c: &Change) -> Json {
    Json::Object(key_values(c).into_iter().map(|(k, v)| (k, v.map_or(Json::Null, Json::String))).collect())
}

fn row_json(rel: &RelInfo, row: &Row) -> Json {
    Json::Object(rel.columns.iter().zip(row).map(|(c, v)| (c.name.clone(), text_json(v))).collect())
}

/// The whole change, as the exceptions table keeps it.
pub fn change_json(c: &Change) -> Json {
    let old = |o: &Old| match o {
        Old::None => Json::Null,
        Old::Full(r) => row_json(&c.rel, r),
        Old::Key(k) => Json::Object(
            c.rel.key_indices().iter().zip(k).map(|(&i, v)| (c.rel.columns[i].name.clone(), text_json(v))).collect(),
        ),
    };
    match &c.kind {
        ChangeKind::Insert { new } => serde_json::json!({"new": row_json(&c.rel, new)}),
        ChangeKind::Update { old: o, new } => serde_json::json!({"old": old(o), "new": row_json(&c.rel, new)}),
        ChangeKind::Delete { old: o } => serde_json::json!({"old": old(o)}),
    }
}

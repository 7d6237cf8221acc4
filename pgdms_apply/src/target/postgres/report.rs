//! How a change is named in errors and in the exceptions table: its key and its values.

use crate::apply::batch::key_columns;
use crate::apply::change::{Change, ChangeKind, Old, RelInfo, Row, Val};
use serde_json::Value as Json;

/// The key columns of the change's row with their values (every column when the table has
/// no key).
fn key_values(c: &Change) -> Vec<(String, Option<String>)> {
    let rel = &c.rel;
    let key_cols = key_columns(rel);
    let row = match &c.kind {
        ChangeKind::Update { old: Old::Key(k), .. } | ChangeKind::Delete { old: Old::Key(k) } => {
            return key_cols.iter().zip(k).map(|(&i, v)| (rel.columns[i].name.clone(), v.to_pg_text())).collect();
        }
        ChangeKind::Update { old: Old::Full(r), .. } | ChangeKind::Delete { old: Old::Full(r) } => Some(r),
        ChangeKind::Insert { new } | ChangeKind::Update { new, .. } => Some(new),
        ChangeKind::Delete { old: Old::None } => None,
    };
    let cols: Vec<usize> = if key_cols.is_empty() { (0..rel.columns.len()).collect() } else { key_cols };
    row.map(|r| cols.iter().map(|&i| (rel.columns[i].name.clone(), r[i].to_pg_text())).collect()).unwrap_or_default()
}

/// `id=5, region=eu`, for messages.
pub fn describe_key(c: &Change) -> String {
    let kv = key_values(c);
    if kv.is_empty() {
        return "unknown".into();
    }
    kv.iter().map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("NULL"))).collect::<Vec<_>>().join(", ")
}

fn text_json(v: &Val) -> Json {
    match v {
        Val::Unchanged => serde_json::json!({"unchanged_toast": true}),
        v => v.to_pg_text().map_or(Json::Null, Json::String),
    }
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

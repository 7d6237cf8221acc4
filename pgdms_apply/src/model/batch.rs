//! A batch: the net effect of a run of changes, per table and key.
//!
//! Applying each change as its own statement cannot beat PostgreSQL's own apply worker; a
//! batch instead folds every change of a row into one net operation (insert, update,
//! delete, or delete-then-insert), so the target runs one statement per table and
//! operation. Folding is only done where it is exact: a table whose key changes within the
//! batch, or that has no key, is replayed change by change in source order. The raw
//! changes are kept so that a batch whose set-wise form fails (a unique constraint broken
//! mid-way, say) can be replayed change by change.

use super::{Change, ChangeKind, Old, RelInfo, Row, Val};
use pgdms_proto::ReplicaIdentity;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A row's key values, hashable (floats by their bits).
#[derive(Debug, Clone)]
struct Key(Row);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| same(a, b))
    }
}
impl Eq for Key {}

/// Equality of values as stored: floats by their bits, so NaN equals NaN.
fn same(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Float4(x), Val::Float4(y)) => x.to_bits() == y.to_bits(),
        (Val::Float8(x), Val::Float8(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for v in &self.0 {
            std::mem::discriminant(v).hash(state);
            match v {
                Val::Bool(b) => b.hash(state),
                Val::Int2(i) => i.hash(state),
                Val::Int4(i) => i.hash(state),
                Val::Int8(i) => i.hash(state),
                Val::Float4(f) => f.to_bits().hash(state),
                Val::Float8(f) => f.to_bits().hash(state),
                Val::Text(b) | Val::Bytes(b) => b.hash(state),
                Val::Date(d) => d.hash(state),
                Val::Time(t) | Val::Timestamp(t) | Val::TimestampTz(t) => t.hash(state),
                Val::TimeTz { micros, offset_secs } => (micros, offset_secs).hash(state),
                Val::Uuid(u) => u.hash(state),
                Val::Null | Val::Unchanged => {}
            }
        }
    }
}

/// The net operation on one row.
#[derive(Debug, Clone, PartialEq)]
pub enum NetOp {
    /// The row did not exist before the batch.
    Insert(Row),
    /// The row existed; these are its new values (`Unchanged` where untouched).
    Update(Row),
    /// The row existed and is gone.
    Delete,
    /// The row existed, was deleted, and a row with the same key was inserted.
    Replace(Row),
}

/// Folds `next` over `base`: `next`'s values, except where it says unchanged.
fn merge(base: &mut Row, next: Row) {
    for (b, n) in base.iter_mut().zip(next) {
        if n != Val::Unchanged {
            *b = n;
        }
    }
}

/// Net changes of one table.
#[derive(Debug, Default)]
pub struct NetTable {
    /// Ops by key, in first-seen order (`ops[i] = (key, op)`, `None` once folded away).
    index: HashMap<Key, usize>,
    ops: Vec<Option<(Row, NetOp)>>,
    /// Inserts of a table without a key: appended, never folded.
    appended: Vec<Row>,
}

impl NetTable {
    /// Key values (in key-column order) and net operation of each row.
    pub fn ops(&self) -> impl Iterator<Item = (&Row, &NetOp)> {
        self.ops.iter().flatten().map(|(k, op)| (k, op))
    }

    /// Rows inserted into a table without a key.
    pub fn appended(&self) -> &[Row] {
        &self.appended
    }
}

/// How a table's changes in a batch are applied.
#[derive(Debug)]
pub enum TableMode {
    Net(NetTable),
    /// In source order, change by change (the batch's raw changes of this table).
    Sequential,
}

#[derive(Debug)]
pub struct TableBatch {
    pub rel: Arc<RelInfo>,
    /// Indices of the columns that identify a row on the target (empty: none).
    pub key_cols: Vec<usize>,
    pub mode: TableMode,
}

/// The columns that identify a row of `rel` on the target: the replica-identity key, or
/// under REPLICA IDENTITY FULL the primary key.
pub fn key_columns(rel: &RelInfo) -> Vec<usize> {
    let key = rel.key_indices();
    if !key.is_empty() {
        return key;
    }
    if rel.replica_identity == ReplicaIdentity::Full {
        return rel.pk_indices();
    }
    Vec::new()
}

/// The key values (in `key_cols` order) of a change's row before it: from its old key image,
/// its whole old row, or (when nothing old was logged because the key did not change) its
/// new row. `None`: it has no usable old key.
pub fn old_key(old: &Old, new: Option<&Row>, key_cols: &[usize]) -> Option<Row> {
    match old {
        Old::Key(k) if k.len() == key_cols.len() => Some(k.clone()),
        Old::Key(_) => None,
        Old::Full(row) => Some(key_cols.iter().map(|&i| row[i].clone()).collect()),
        Old::None => new.map(|n| key_cols.iter().map(|&i| n[i].clone()).collect()),
    }
}

#[derive(Debug, Default)]
pub struct Batch {
    pub tables: Vec<TableBatch>,
    table_index: HashMap<u32, usize>,
    /// Every change, in source order.
    pub raw: Vec<Change>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// The raw changes of one table, in source order.
    pub fn raw_of(&self, oid: u32) -> impl Iterator<Item = &Change> {
        self.raw.iter().filter(move |c| c.rel.oid == oid)
    }

    pub fn clear(&mut self) {
        self.tables.clear();
        self.table_index.clear();
        self.raw.clear();
    }

    /// Adds a change. A relation whose description changed starts a new table entry only
    /// through the caller flushing first (see `Apply`), so one entry = one description.
    pub fn push(&mut self, change: Change) {
        let oid = change.rel.oid;
        let idx = *self.table_index.entry(oid).or_insert_with(|| {
            let key_cols = key_columns(&change.rel);
            self.tables.push(TableBatch {
                rel: change.rel.clone(),
                key_cols,
                mode: TableMode::Net(NetTable::default()),
            });
            self.tables.len() - 1
        });
        let table = &mut self.tables[idx];
        if let TableMode::Net(net) = &mut table.mode {
            if !fold(net, &table.key_cols, table.rel.replica_identity, &change) {
                table.mode = TableMode::Sequential;
            }
        }
        self.raw.push(change);
    }

    /// Does the batch hold changes of this table under another description?
    pub fn has_other_description(&self, rel: &RelInfo) -> bool {
        self.table_index.get(&rel.oid).is_some_and(|&i| *self.tables[i].rel != *rel)
    }
}

/// Folds one change into a table's net ops; false when netting would not be exact (no
/// key, a changed key, an impossible sequence), and the table must be replayed in order.
fn fold(net: &mut NetTable, key_cols: &[usize], identity: ReplicaIdentity, change: &Change) -> bool {
    if key_cols.is_empty() {
        // Without a key only inserts can be batched.
        return match &change.kind {
            ChangeKind::Insert { new } => {
                net.appended.push(new.clone());
                true
            }
            _ => false,
        };
    }
    let key_of = |row: &Row| Key(key_cols.iter().map(|&i| row[i].clone()).collect());
    match &change.kind {
        ChangeKind::Insert { new } => {
            let key = key_of(new);
            match net.index.get(&key).copied() {
                None => {
                    net.index.insert(key.clone(), net.ops.len());
                    net.ops.push(Some((key.0, NetOp::Insert(new.clone()))));
                }
                Some(i) => match net.ops[i].as_mut() {
                    Some((_, op @ NetOp::Delete)) => *op = NetOp::Replace(new.clone()),
                    _ => return false,
                },
            }
        }
        ChangeKind::Update { old, new } => {
            let new_key = key_of(new);
            let Some(old_key) = old_key(old, Some(new), key_cols).map(Key) else { return false };
            if old_key != new_key {
                return false;
            }
            let mut new = new.clone();
            if let (ReplicaIdentity::Full, Old::Full(old_row)) = (identity, old) {
                // Under REPLICA IDENTITY FULL, set only the columns that differ.
                for (n, o) in new.iter_mut().zip(old_row) {
                    if same(n, o) {
                        *n = Val::Unchanged;
                    }
                }
            }
            match net.index.get(&new_key).copied() {
                None => {
                    net.index.insert(new_key.clone(), net.ops.len());
                    net.ops.push(Some((new_key.0, NetOp::Update(new))));
                }
                Some(i) => match net.ops[i].as_mut() {
                    Some((_, NetOp::Insert(r) | NetOp::Update(r) | NetOp::Replace(r))) => merge(r, new),
                    _ => return false,
                },
            }
        }
        ChangeKind::Delete { old } => {
            let Some(key) = old_key(old, None, key_cols).map(Key) else { return false };
            match net.index.get(&key).copied() {
                None => {
                    net.index.insert(key.clone(), net.ops.len());
                    net.ops.push(Some((key.0, NetOp::Delete)));
                }
                Some(i) => match net.ops[i].as_ref().map(|(_, op)| op) {
                    // Inserted in this batch: as if it never existed.
                    Some(NetOp::Insert(_)) => {
                        net.ops[i] = None;
                        net.index.remove(&key);
                    }
                    Some(NetOp::Update(_) | NetOp::Replace(_)) => {
                        net.ops[i] = Some((key.0, NetOp::Delete));
                    }
                    _ => return false,
                },
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ColumnInfo;
    use bytes::Bytes;
    use pgdms_proto::Lsn;
    use pgdms_proto::{DmsType, Identity};

    fn rel(identity: ReplicaIdentity, key: bool) -> Arc<RelInfo> {
        let col = |name: &str, key: bool| ColumnInfo {
            name: name.into(),
            type_oid: 23,
            type_sql: "integer".into(),
            type_name: "integer".into(),
            type_modifier: -1,
            key,
            primary_key: key,
            generated: false,
            identity: Identity::None,
            not_null: key,
            dms_type: DmsType::Int4,
        };
        Arc::new(RelInfo {
            oid: 1,
            schema: "s".into(),
            name: "t".into(),
            replica_identity: identity,
            columns: vec![col("id", key), col("v", false), col("doc", false)],
        })
    }

    fn change(rel: &Arc<RelInfo>, kind: ChangeKind) -> Change {
        Change { rel: rel.clone(), kind, lsn: Lsn(0), xid: 1 }
    }
    fn r(id: i32, v: i32) -> Row {
        vec![Val::Int4(id), Val::Int4(v), Val::Text(Bytes::from_static(b"doc"))]
    }
    fn ins(rel: &Arc<RelInfo>, id: i32, v: i32) -> Change {
        change(rel, ChangeKind::Insert { new: r(id, v) })
    }
    fn upd(rel: &Arc<RelInfo>, id: i32, v: i32) -> Change {
        let mut new = r(id, v);
        new[2] = Val::Unchanged;
        change(rel, ChangeKind::Update { old: Old::None, new })
    }
    fn del(rel: &Arc<RelInfo>, id: i32) -> Change {
        change(rel, ChangeKind::Delete { old: Old::Key(vec![Val::Int4(id)]) })
    }

    fn ops(b: &Batch) -> Vec<(Row, NetOp)> {
        match &b.tables[0].mode {
            TableMode::Net(n) => n.ops().map(|(k, op)| (k.clone(), op.clone())).collect(),
            TableMode::Sequential => panic!("expected a net table"),
        }
    }

    #[test]
    fn folds_each_rows_changes_into_one_operation() {
        let t = rel(ReplicaIdentity::Default, true);
        let mut b = Batch::default();
        for c in [
            ins(&t, 1, 1),
            upd(&t, 1, 2),
            upd(&t, 2, 5),
            upd(&t, 2, 6),
            ins(&t, 3, 0),
            del(&t, 3),
            del(&t, 4),
            ins(&t, 4, 9),
        ] {
            b.push(c);
        }
        let k = |i| vec![Val::Int4(i)];
        assert_eq!(
            ops(&b),
            vec![
                (k(1), NetOp::Insert(r(1, 2))), // the unchanged doc keeps the inserted value
                (k(2), NetOp::Update(vec![Val::Int4(2), Val::Int4(6), Val::Unchanged])),
                (k(4), NetOp::Replace(r(4, 9))),
            ]
        );
        assert_eq!(b.len(), 8, "raw changes are kept for a replay");
    }

    #[test]
    fn a_changed_key_or_no_key_means_replay_in_order() {
        let t = rel(ReplicaIdentity::Default, true);
        let mut b = Batch::default();
        b.push(ins(&t, 1, 1));
        b.push(change(&t, ChangeKind::Update { old: Old::Key(vec![Val::Int4(1)]), new: r(2, 1) }));
        assert!(matches!(b.tables[0].mode, TableMode::Sequential));

        let nokey = rel(ReplicaIdentity::Default, false);
        let mut b = Batch::default();
        b.push(ins(&nokey, 1, 1));
        b.push(ins(&nokey, 1, 1));
        match &b.tables[0].mode {
            TableMode::Net(n) => assert_eq!(n.appended().len(), 2),
            _ => panic!("inserts of a keyless table batch"),
        }
        b.push(upd(&nokey, 1, 2));
        assert!(matches!(b.tables[0].mode, TableMode::Sequential));
    }

    #[test]
    fn replica_identity_full_updates_set_only_what_differs() {
        let mut t = (*rel(ReplicaIdentity::Full, false)).clone();
        t.columns[0].primary_key = true;
        let t = Arc::new(t);
        let mut b = Batch::default();
        b.push(change(&t, ChangeKind::Update { old: Old::Full(r(1, 1)), new: r(1, 2) }));
        assert_eq!(
            ops(&b),
            vec![(vec![Val::Int4(1)], NetOp::Update(vec![Val::Unchanged, Val::Int4(2), Val::Unchanged]))]
        );
    }
}

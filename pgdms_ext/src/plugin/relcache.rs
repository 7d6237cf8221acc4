//! The relation cache: per table, whether its changes are published, how its columns are
//! converted, and its encoded relation record.
//!
//! Like pgoutput's RelationSyncCache, entries are dropped on invalidation (ALTER TABLE,
//! RENAME, a changed default or replica identity, a renamed schema or type...) and described
//! again at their next use. The relation record is written again only if what it says
//! changed: plain invalidations (VACUUM, ANALYZE, index builds) are frequent.

use crate::ffi::catalog::{RelationDesc, RelationHandle};
use crate::ffi::{take_invalidations, EntryMemory, SessionMemory};
use pgdms_proto::{Column, Record, Relation, RelationRef};
use rustc_hash::{FxHashMap, FxHashSet};

pub struct CachedRelation {
    pub desc: RelationDesc,
    /// The encoded relation record.
    pub record: Vec<u8>,
    /// Written in this session in its current form.
    pub sent: bool,
    /// Holds what the column codecs cache; freed with the entry.
    memory: EntryMemory,
}

pub struct RelationCache {
    /// Parent of the entries' memory.
    memory: SessionMemory,
    entries: FxHashMap<u32, CachedRelation>,
    /// Relations whose changes are not published (not user tables, or ours).
    skipped: FxHashSet<u32>,
    /// Of those, the tables whose inserts vouch for pgdms's messages, with the position of
    /// their digest column.
    vouchers: FxHashMap<u32, usize>,
    /// The relation record last written for relations whose entry was invalidated since.
    sent_before: FxHashMap<u32, Vec<u8>>,
}

impl RelationCache {
    pub fn new(memory: SessionMemory) -> Self {
        RelationCache {
            memory,
            entries: FxHashMap::default(),
            skipped: FxHashSet::default(),
            vouchers: FxHashMap::default(),
            sent_before: FxHashMap::default(),
        }
    }

    fn evict(&mut self, relid: u32) {
        if let Some(entry) = self.entries.remove(&relid) {
            if entry.sent {
                self.sent_before.insert(relid, entry.record);
            }
            entry.memory.free();
        }
        self.skipped.remove(&relid);
        self.vouchers.remove(&relid);
    }

    fn apply_invalidations(&mut self) {
        let Some(inval) = take_invalidations() else { return };
        let relids: Vec<u32> = if inval.all {
            self.entries.keys().copied().chain(self.skipped.iter().copied()).collect()
        } else {
            // A partition's record names its parent: a renamed parent changes it too.
            let children = self
                .entries
                .iter()
                .filter(|(_, e)| e.desc.parent.as_ref().is_some_and(|(p, _, _)| inval.relids.contains(p)))
                .map(|(oid, _)| *oid);
            children.chain(inval.relids.iter().copied()).collect()
        };
        for relid in relids {
            self.evict(relid);
        }
    }

    /// The entry of a published table, described afresh if it was invalidated; `None` for a
    /// table whose changes are not published.
    pub fn get(&mut self, rel: RelationHandle) -> Option<&mut CachedRelation> {
        self.apply_invalidations();
        let oid = rel.oid();
        if self.skipped.contains(&oid) {
            return None;
        }
        if !self.entries.contains_key(&oid) {
            if !rel.is_user_table() || rel.belongs_to_pgdms() {
                self.skipped.insert(oid);
                if let Some(column) = rel.message_digest_column() {
                    self.vouchers.insert(oid, column);
                }
                return None;
            }
            let memory = EntryMemory::new(self.memory);
            let desc = rel.describe(&memory);
            let record = encode_relation(&desc);
            let sent = self.sent_before.remove(&oid).is_some_and(|previous| previous == record);
            self.entries.insert(oid, CachedRelation { desc, record, sent, memory });
        }
        self.entries.get_mut(&oid)
    }
}

impl RelationCache {
    /// For a table whose inserts vouch for pgdms's messages (after [`RelationCache::get`]
    /// said it is not published), the position of its digest column.
    pub fn digest_column(&self, oid: u32) -> Option<usize> {
        self.vouchers.get(&oid).copied()
    }
}

fn encode_relation(d: &RelationDesc) -> Vec<u8> {
    Record::Relation(Relation {
        oid: d.oid,
        schema: &d.schema,
        name: &d.name,
        kind: d.kind,
        replica_identity: d.replica_identity,
        partition_parent: d.parent.as_ref().map(|(oid, schema, name)| RelationRef { oid: *oid, schema, name }),
        columns: d
            .columns
            .iter()
            .map(|c| Column {
                attnum: c.attnum,
                name: &c.name,
                type_oid: c.type_oid,
                type_name: &c.type_name,
                type_sql: &c.type_sql,
                type_modifier: c.typmod,
                not_null: c.not_null,
                default: c.default.as_deref(),
                collation: c.collation.as_deref(),
                generated: c.generated,
                identity: c.identity,
                key: c.key,
                primary_key: c.primary_key,
                dms_type: c.dms_type,
                dms_fallback: c.dms_fallback,
            })
            .collect(),
    })
    .encode()
}

//! The relation cache: per table, whether its changes are published, how its columns are
//! converted, and its encoded relation record.
//!
//! Like pgoutput's RelationSyncCache, entries are invalidated by relcache callbacks
//! (ALTER TABLE, RENAME, a changed default or replica identity...). An invalidated entry is
//! described again at its next use; its relation record is written again only if what it
//! says changed, since plain invalidations (VACUUM, ANALYZE, index builds) are frequent.

use crate::ffi::catalog::{RelationDesc, RelationHandle};
use crate::ffi::take_invalidations;
use pgdms_proto::{Column, Record, Relation, RelationRef};
use pgrx::pg_sys;
use rustc_hash::FxHashMap;

pub struct CachedRelation {
    pub desc: RelationDesc,
    /// The encoded relation record.
    pub record: Vec<u8>,
    /// Written in this session since it last changed.
    pub sent: bool,
}

struct Slot {
    valid: bool,
    /// `None`: the table's changes are not published (not a user table, or ours).
    entry: Option<CachedRelation>,
}

pub struct RelationCache {
    mcxt: pg_sys::MemoryContext,
    slots: FxHashMap<u32, Slot>,
}

impl RelationCache {
    pub fn new(mcxt: pg_sys::MemoryContext) -> Self {
        RelationCache {
            mcxt,
            slots: FxHashMap::default(),
        }
    }

    fn apply_invalidations(&mut self) {
        if let Some(inval) = take_invalidations() {
            if inval.all {
                self.slots.values_mut().for_each(|s| s.valid = false);
            }
            for relid in inval.relids {
                if let Some(slot) = self.slots.get_mut(&relid) {
                    slot.valid = false;
                }
            }
        }
    }

    /// The entry of a published table, described afresh if it was invalidated.
    pub fn get(&mut self, rel: RelationHandle) -> Option<&mut CachedRelation> {
        self.apply_invalidations();
        let mcxt = self.mcxt;
        let slot = self.slots.entry(rel.oid()).or_insert(Slot {
            valid: false,
            entry: None,
        });
        if !slot.valid {
            let previous = slot.entry.take();
            slot.entry = (rel.is_user_table() && !rel.belongs_to_pgdms()).then(|| {
                let desc = rel.describe(mcxt);
                let record = encode_relation(&desc);
                let sent = previous.is_some_and(|p| p.sent && p.record == record);
                CachedRelation { desc, record, sent }
            });
            slot.valid = true;
        }
        slot.entry.as_mut()
    }
}

fn encode_relation(d: &RelationDesc) -> Vec<u8> {
    Record::Relation(Relation {
        oid: d.oid,
        schema: &d.schema,
        name: &d.name,
        kind: d.kind,
        replica_identity: d.replica_identity,
        partition_parent: d.parent.as_ref().map(|(oid, schema, name)| RelationRef {
            oid: *oid,
            schema,
            name,
        }),
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

//! What the catalogs say of a table, read through the historic snapshot logical decoding
//! provides: enough to write its relation record and to convert its tuples.

use super::datum::Codec;
use super::EntryMemory;
use pgdms_proto::{dms, DmsType, Identity, RelKind, ReplicaIdentity};
use pgrx::pg_sys;
use std::ffi::{CStr, CString};

/// One live (not dropped) column.
pub struct ColumnDesc {
    /// Position in the tuple descriptor (attnum - 1).
    pub index: usize,
    pub attnum: i16,
    pub name: String,
    pub type_oid: u32,
    pub type_name: String,
    pub type_sql: String,
    pub typmod: i32,
    pub not_null: bool,
    pub default: Option<String>,
    pub collation: Option<String>,
    pub generated: bool,
    pub identity: Identity,
    pub key: bool,
    pub primary_key: bool,
    pub dms_type: DmsType,
    pub dms_fallback: bool,
    pub codec: Codec,
}

pub struct RelationDesc {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub kind: RelKind,
    pub replica_identity: ReplicaIdentity,
    pub parent: Option<(u32, String, String)>,
    pub columns: Vec<ColumnDesc>,
    /// Attributes in the tuple descriptor, dropped ones included.
    pub natts: usize,
}

/// A relation handed to a decoding callback.
#[derive(Clone, Copy)]
pub struct RelationHandle {
    raw: pg_sys::Relation,
}

// partition.h is not among pgrx's bindings.
#[cfg(feature = "pg13")]
unsafe extern "C-unwind" {
    fn get_partition_parent(relid: pg_sys::Oid) -> pg_sys::Oid;
}
#[cfg(not(feature = "pg13"))]
unsafe extern "C-unwind" {
    fn get_partition_parent(relid: pg_sys::Oid, even_if_detached: bool) -> pg_sys::Oid;
}

/// The partitioned table `relid` is attached to (or being detached from).
fn partition_parent(relid: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: called for a relation with relispartition set; the guard turns an ERROR into
    // a Rust panic like every pg_sys call.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            #[cfg(feature = "pg13")]
            return get_partition_parent(relid);
            #[cfg(not(feature = "pg13"))]
            return get_partition_parent(relid, true);
        })
    }
}

fn cstr_to_string(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: PostgreSQL returns NUL-terminated strings valid for the current context.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn name_to_string(n: &pg_sys::NameData) -> String {
    // SAFETY: NameData is a NUL-padded fixed array.
    cstr_to_string(n.data.as_ptr())
}

/// format_type of a type, schema-qualified unless it is built in ("integer",
/// "public.mood", "public.mood[]").
fn format_type(typid: pg_sys::Oid, typmod: Option<i32>, qualify: bool) -> String {
    let mut flags = 0;
    if qualify {
        flags |= pg_sys::FORMAT_TYPE_FORCE_QUALIFY;
    }
    if typmod.is_some() {
        flags |= pg_sys::FORMAT_TYPE_TYPEMOD_GIVEN;
    }
    // SAFETY: format_type_extended takes any type oid and returns a palloc'd string.
    cstr_to_string(unsafe { pg_sys::format_type_extended(typid, typmod.unwrap_or(-1), flags as u16) })
}

pub struct TypeFacts {
    pub name: String,
    pub typtype: u8,
    pub is_array: bool,
    pub builtin: bool,
}

/// Key columns (attnums) of an index, read from pg_index without opening or locking it.
fn index_key_attnums(index: pg_sys::Oid) -> Vec<i16> {
    if index == pg_sys::InvalidOid {
        return Vec::new();
    }
    // SAFETY: syscache lookup by oid; indkey's first indnkeyatts entries are the key
    // columns (the rest are INCLUDE columns); copied out before the tuple is released.
    unsafe {
        let tup = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::INDEXRELID as i32, pg_sys::Datum::from(index));
        if tup.is_null() {
            pgrx::error!("pgdms: cache lookup failed for index {}", index.to_u32());
        }
        let form = &*pg_sys::GETSTRUCT(tup).cast::<pg_sys::FormData_pg_index>();
        let keys = form.indkey.values.as_slice(form.indnkeyatts as usize).to_vec();
        pg_sys::ReleaseSysCache(tup);
        keys
    }
}

fn type_facts(typid: pg_sys::Oid) -> TypeFacts {
    match type_facts_if_exists(typid) {
        Some(facts) => facts,
        None => pgrx::error!("pgdms: cache lookup failed for type {}", typid.to_u32()),
    }
}

/// What the DMS type map needs of a type, or `None` if there is no such type.
pub fn type_facts_if_exists(typid: pg_sys::Oid) -> Option<TypeFacts> {
    // SAFETY: syscache lookup by oid; the tuple is released before returning and its data
    // copied out first.
    unsafe {
        let tup = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::TYPEOID as i32, pg_sys::Datum::from(typid));
        if tup.is_null() {
            return None;
        }
        let form = &*pg_sys::GETSTRUCT(tup).cast::<pg_sys::FormData_pg_type>();
        let facts = TypeFacts {
            name: name_to_string(&form.typname),
            typtype: form.typtype as u8,
            is_array: form.typcategory as u8 == b'A',
            builtin: form.typnamespace.to_u32() == pg_sys::PG_CATALOG_NAMESPACE,
        };
        pg_sys::ReleaseSysCache(tup);
        Some(facts)
    }
}

impl RelationHandle {
    /// # Safety
    /// `raw` must be an open relation, valid for as long as the handle is used (the duration
    /// of a decoding callback).
    pub unsafe fn from_raw(raw: pg_sys::Relation) -> RelationHandle {
        RelationHandle { raw }
    }

    pub(super) fn raw(&self) -> pg_sys::Relation {
        self.raw
    }

    pub fn oid(&self) -> u32 {
        // SAFETY: valid relation (constructor contract).
        unsafe { (*self.raw).rd_id.to_u32() }
    }

    fn form(&self) -> &pg_sys::FormData_pg_class {
        // SAFETY: rd_rel of an open relation is valid while it is open.
        unsafe { &*(*self.raw).rd_rel }
    }

    /// Would pgoutput publish this relation? Ordinary and partitioned user tables only:
    /// not catalogs, not the objects initdb creates (information_schema), not sequences.
    pub fn is_user_table(&self) -> bool {
        let kind = self.form().relkind as u8;
        (kind == pg_sys::RELKIND_RELATION || kind == pg_sys::RELKIND_PARTITIONED_TABLE)
            && self.oid() >= pg_sys::FirstNormalObjectId
    }

    /// Does the table belong to an extension named `pgdms` (our own audit tables)?
    pub fn belongs_to_pgdms(&self) -> bool {
        // SAFETY: catalog lookups by oid/name inside the decoding transaction.
        unsafe {
            let ext = pg_sys::get_extension_oid(c"pgdms".as_ptr(), true);
            ext != pg_sys::InvalidOid
                && pg_sys::getExtensionOfObject(pg_sys::RelationRelationId, (*self.raw).rd_id) == ext
        }
    }

    /// For one of the tables whose inserts vouch for pgdms's own logical messages
    /// (`pgdms.ddl_audit`, `pgdms.capture_failures`: members of the extension, which only its
    /// owner can write), the position of their `c_digest` column in the tuple.
    pub fn message_digest_column(&self) -> Option<usize> {
        let name = name_to_string(&self.form().relname);
        if !matches!(name.as_str(), "ddl_audit" | "capture_failures") || !self.belongs_to_pgdms() {
            return None;
        }
        // SAFETY: rd_att of an open relation describes its natts attributes.
        let attrs = unsafe {
            let desc = (*self.raw).rd_att;
            (*desc).attrs.as_slice((*desc).natts as usize)
        };
        attrs.iter().position(|a| {
            !a.attisdropped
                && a.atttypid.to_u32() == pgdms_proto::dms::oids::BYTEA
                && name_to_string(&a.attname) == "c_digest"
        })
    }

    /// Reads everything the relation record says. Codec function lookups are cached in
    /// `memory`, which must outlive the returned description.
    pub fn describe(&self, memory: &EntryMemory) -> RelationDesc {
        let form = self.form();
        let oid = self.oid();
        // SAFETY: catalog reads on an open relation inside the decoding transaction; every
        // pointer read is owned by the relcache entry or palloc'd in the current context.
        unsafe {
            let relid = (*self.raw).rd_id;
            let schema = cstr_to_string(pg_sys::get_namespace_name(form.relnamespace));
            let name = name_to_string(&form.relname);
            let parent = if form.relispartition {
                let p = partition_parent(relid);
                let pschema = cstr_to_string(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(p)));
                Some((p.to_u32(), pschema, cstr_to_string(pg_sys::get_rel_name(p))))
            } else {
                None
            };
            // Key columns come from pg_index: RelationGetIndexAttrBitmap would lock every
            // index, and a walsender waiting on a lock held by a TRUNCATE whose commit waits
            // for this walsender (synchronous replication) never wakes up. pgoutput avoids
            // it the same way since PostgreSQL 14.
            pg_sys::list_free(pg_sys::RelationGetIndexList(self.raw));
            let pk = index_key_attnums((*self.raw).rd_pkindex);
            let ident = index_key_attnums(pg_sys::RelationGetReplicaIndex(self.raw));

            let desc = (*self.raw).rd_att;
            let constr = (*desc).constr;
            let defaults: &[pg_sys::AttrDefault] = if constr.is_null() || (*constr).num_defval == 0 {
                &[]
            } else {
                std::slice::from_raw_parts((*constr).defval, usize::from((*constr).num_defval))
            };
            let relname_c = CString::new(name.clone()).unwrap_or_default();
            let mut deparse_ctx: *mut pg_sys::List = std::ptr::null_mut();

            let natts = (*desc).natts as usize;
            let attrs = std::slice::from_raw_parts((*desc).attrs.as_ptr(), natts);
            let mut columns = Vec::with_capacity(natts);
            for (index, att) in attrs.iter().enumerate() {
                if att.attisdropped {
                    continue;
                }
                let type_oid = att.atttypid;
                let facts = type_facts(type_oid);
                let (dms_type, dms_fallback) = dms::dms_type_of(&dms::PgTypeInfo {
                    oid: type_oid.to_u32(),
                    typmod: att.atttypmod,
                    typtype: facts.typtype,
                    is_array: facts.is_array,
                    name: &facts.name,
                });
                let default = defaults.iter().find(|d| d.adnum == att.attnum).map(|d| {
                    if deparse_ctx.is_null() {
                        deparse_ctx = pg_sys::deparse_context_for(relname_c.as_ptr(), relid);
                    }
                    let expr = pg_sys::stringToNode(d.adbin).cast::<pg_sys::Node>();
                    cstr_to_string(pg_sys::deparse_expression(expr, deparse_ctx, false, false))
                });
                let collation = (att.attcollation != pg_sys::InvalidOid
                    && att.attcollation != pg_sys::get_typcollation(type_oid))
                .then(|| cstr_to_string(pg_sys::generate_collation_name(att.attcollation)));
                columns.push(ColumnDesc {
                    index,
                    attnum: att.attnum,
                    name: name_to_string(&att.attname),
                    type_oid: type_oid.to_u32(),
                    type_name: format_type(type_oid, None, !facts.builtin),
                    type_sql: format_type(type_oid, Some(att.atttypmod), !facts.builtin),
                    typmod: att.atttypmod,
                    not_null: att.attnotnull,
                    default,
                    collation,
                    generated: att.attgenerated as u8 == b's',
                    identity: match att.attidentity as u8 {
                        b'a' => Identity::Always,
                        b'd' => Identity::ByDefault,
                        _ => Identity::None,
                    },
                    key: ident.contains(&att.attnum),
                    primary_key: pk.contains(&att.attnum),
                    dms_type,
                    dms_fallback,
                    codec: Codec::for_type(type_oid, memory.context()),
                });
            }
            RelationDesc {
                oid,
                schema,
                name,
                kind: if form.relkind as u8 == pg_sys::RELKIND_PARTITIONED_TABLE {
                    RelKind::PartitionedTable
                } else {
                    RelKind::Table
                },
                replica_identity: match form.relreplident as u8 {
                    b'f' => ReplicaIdentity::Full,
                    b'i' => ReplicaIdentity::Index,
                    b'n' => ReplicaIdentity::Nothing,
                    _ => ReplicaIdentity::Default,
                },
                parent,
                columns,
                natts,
            }
        }
    }
}

/// Has this database, at the point decoding has reached, a pgdms install whose capture
/// vouches for its messages (0.2 and later: the table `pgdms.ddl_audit`)? `None`: there is
/// no pgdms extension at all.
pub fn capture_vouches() -> Option<bool> {
    // SAFETY: catalog lookups by name inside the decoding transaction (its historic snapshot).
    unsafe {
        if pg_sys::get_extension_oid(c"pgdms".as_ptr(), true) == pg_sys::InvalidOid {
            return None;
        }
        let nsp = pg_sys::get_namespace_oid(c"pgdms".as_ptr(), true);
        Some(nsp != pg_sys::InvalidOid && pg_sys::get_relname_relid(c"ddl_audit".as_ptr(), nsp) != pg_sys::InvalidOid)
    }
}

/// A setting's current value (`SHOW name`), empty when unknown.
pub fn setting(name: &CStr) -> String {
    // SAFETY: GetConfigOption with missing_ok returns NULL or a string owned by the GUC system.
    cstr_to_string(unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) })
}

pub fn database_encoding_name() -> String {
    // SAFETY: returns a static string.
    cstr_to_string(unsafe { pg_sys::GetDatabaseEncodingName() })
}

/// The database being decoded; empty outside a transaction (a walsender whose first record
/// is a non-transactional message), where the catalogs cannot be read. pgrx's bindings keep
/// `MyProcPort` opaque, so its database_name is out of reach.
pub fn database_name() -> String {
    // SAFETY: get_database_name reads the catalogs, which IsTransactionState allows.
    unsafe {
        if !pg_sys::IsTransactionState() {
            return String::new();
        }
        cstr_to_string(pg_sys::get_database_name(pg_sys::MyDatabaseId))
    }
}

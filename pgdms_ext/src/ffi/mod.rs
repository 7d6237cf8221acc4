//! The FFI layer between PostgreSQL's logical decoding and the plugin.
//!
//! PostgreSQL calls the `extern "C-unwind"` callbacks below; each wraps its raw pointers in
//! small handles whose methods are safe to call for the duration of the callback, and hands
//! them to [`crate::plugin::Session`]. Every callback is `#[pg_guard]`: a Rust panic becomes
//! a PostgreSQL ERROR instead of unwinding into C.
//!
//! As in PostgreSQL's pgoutput.c: per-change work happens in a memory context reset after
//! every callback, and a relcache invalidation callback tells the relation cache what changed.

pub mod catalog;
pub mod datum;
pub mod event_trigger;

use crate::plugin::{Change, Session};
use catalog::{RelationDesc, RelationHandle};
use datum::ServerEncoding;
use pgdms_proto::Value;
use pgdms_proto::{Begin, Commit, Lsn, Options};
use pgrx::pg_guard;
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;

/// Entry point PostgreSQL looks up in `pgdms.so` when a slot names the plugin `pgdms`.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    // SAFETY: PostgreSQL passes a valid callbacks struct for us to fill in.
    let cb = unsafe { &mut *cb };
    cb.startup_cb = Some(startup);
    cb.begin_cb = Some(begin);
    cb.change_cb = Some(change);
    cb.truncate_cb = Some(truncate);
    cb.commit_cb = Some(commit);
    cb.message_cb = Some(message);
    cb.filter_by_origin_cb = Some(filter_by_origin);
    cb.shutdown_cb = Some(shutdown);
}

/// Writes records to the consumer.
pub struct Output {
    ctx: *mut pg_sys::LogicalDecodingContext,
}

impl Output {
    /// Sends one message holding `bytes`.
    pub fn write(&self, bytes: &[u8], last: bool) {
        // SAFETY: `ctx` is the decoding context of the running callback; `out` is the
        // StringInfo OutputPluginPrepareWrite resets for us.
        unsafe {
            pg_sys::OutputPluginPrepareWrite(self.ctx, last);
            pg_sys::appendBinaryStringInfo((*self.ctx).out, bytes.as_ptr().cast(), bytes.len() as i32);
            pg_sys::OutputPluginWrite(self.ctx, last);
        }
    }

    /// Lets the walsender report progress (and answer keepalives) past a transaction that
    /// produced no output.
    pub fn update_progress(&self, skipped_xact: bool) {
        // SAFETY: valid decoding context of the running callback.
        unsafe {
            #[cfg(any(feature = "pg13", feature = "pg14"))]
            {
                let _ = skipped_xact;
                pg_sys::OutputPluginUpdateProgress(self.ctx);
            }
            #[cfg(not(any(feature = "pg13", feature = "pg14")))]
            pg_sys::OutputPluginUpdateProgress(self.ctx, skipped_xact);
        }
    }
}

/// A heap tuple of a change, with its relation's descriptor. Valid for one callback, during
/// which the change memory context (where detoasted values and output text go) is current.
pub struct TupleHandle {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

/// heap_deform_tuple's outputs, kept between changes to avoid reallocating them.
#[derive(Default)]
pub struct DeformScratch {
    datums: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl TupleHandle {
    /// Deforms the tuple into `scratch`; returns the descriptor's attributes.
    fn deform(&self, scratch: &mut DeformScratch) -> &[pg_sys::FormData_pg_attribute] {
        let DeformScratch { datums, nulls } = scratch;
        // SAFETY: tuple and descriptor are valid for the callback; the vectors are sized to
        // the descriptor's natts before heap_deform_tuple writes that many entries.
        unsafe {
            let natts = (*self.desc).natts as usize;
            datums.clear();
            datums.resize(natts, pg_sys::Datum::from(0usize));
            nulls.clear();
            nulls.resize(natts, true);
            pg_sys::heap_deform_tuple(self.tuple, self.desc, datums.as_mut_ptr(), nulls.as_mut_ptr());
            (*self.desc).attrs.as_slice(natts)
        }
    }

    /// The bytes of the bytea column at `index` (None for NULL, or no such column).
    pub fn bytea_at(&self, index: usize, scratch: &mut DeformScratch) -> Option<Vec<u8>> {
        let attrs = self.deform(scratch);
        if attrs.get(index).map(|a| a.atttypid.to_u32()) != Some(pgdms_proto::dms::oids::BYTEA) {
            return None;
        }
        // SAFETY: the datum was deformed with this tuple's descriptor and is a bytea (checked
        // above); a detoasted copy goes to the change memory context, and the bytes are
        // copied out before the callback ends.
        let value = unsafe {
            datum::to_value(
                &datum::Codec::Bytea,
                scratch.datums[index],
                scratch.nulls[index],
                ServerEncoding::Utf8,
                &|| "c_digest".into(),
            )
        };
        match value {
            Value::Bytes(b) => Some(b.to_vec()),
            _ => None,
        }
    }

    /// The values of the columns of `desc` (every column, or the replica-identity key
    /// columns only), in order. They borrow the tuple and the change memory context, both of
    /// which outlive the handle's borrow.
    pub fn values<'t>(
        &'t self,
        desc: &RelationDesc,
        key_only: bool,
        scratch: &mut DeformScratch,
        encoding: ServerEncoding,
    ) -> Vec<Value<'t>> {
        let attrs = self.deform(scratch);
        let DeformScratch { datums, nulls } = scratch;
        let table = || format!("table \"{}\".\"{}\"", desc.schema, desc.name);
        // A description out of step with the tuple would lose columns, or read a by-value
        // datum as a pointer: refuse rather than send wrong data or crash.
        let stale = attrs.len() != desc.natts
            || desc.columns.iter().any(|c| attrs.get(c.index).map(|a| a.atttypid.to_u32()) != Some(c.type_oid));
        if stale {
            pgrx::error!("pgdms: the cached description of {} is out of date", table());
        }
        desc.columns
            .iter()
            .filter(|c| !key_only || c.key)
            .map(|c| {
                let what = || format!("column \"{}\" of {}", c.name, table());
                // SAFETY: the datum was deformed with a descriptor matching the one the column
                // was described from (checked above), so it has the column's type; the tuple
                // and the change memory context (which receives detoasted copies and output
                // text) live as long as `'t`.
                unsafe { datum::to_value(&c.codec, datums[c.index], nulls[c.index], encoding, &what) }
            })
            .collect()
    }
}

/// The per-change memory context, made current for a callback's work and reset after it.
struct ChangeMemory<'s> {
    previous: pg_sys::MemoryContext,
    context: pg_sys::MemoryContext,
    _session: std::marker::PhantomData<&'s ()>,
}

impl ChangeMemory<'_> {
    fn enter(context: pg_sys::MemoryContext) -> Self {
        // SAFETY: switching CurrentMemoryContext to a live context we own (MemoryContextSwitchTo
        // is an inline function in C, so we do what it does).
        let previous = unsafe {
            let previous = pg_sys::CurrentMemoryContext;
            pg_sys::CurrentMemoryContext = context;
            previous
        };
        ChangeMemory { previous, context, _session: std::marker::PhantomData }
    }
}

impl Drop for ChangeMemory<'_> {
    fn drop(&mut self) {
        // SAFETY: restores the caller's context, then frees what the change allocated (most
        // changes of fixed-size and short values allocate nothing and create no child
        // context: skip the call then). Runs on unwinding too, before pgrx re-raises.
        unsafe {
            pg_sys::CurrentMemoryContext = self.previous;
            if !(*self.context).isReset || !(*self.context).firstchild.is_null() {
                pg_sys::MemoryContextReset(self.context);
            }
        }
    }
}

/// A memory context owned by one relation-cache entry: its output functions cache their
/// lookups here (fn_extra), and it is deleted when the entry is replaced, so rebuilding an
/// entry leaks nothing. Whatever is left goes with the decoding context.
pub struct EntryMemory(pg_sys::MemoryContext);

/// The decoding context's memory, which lives as long as the decoding session. Only this
/// layer makes one (from the context PostgreSQL hands to the startup callback).
#[derive(Clone, Copy)]
pub struct SessionMemory(pg_sys::MemoryContext);

impl EntryMemory {
    pub fn new(parent: SessionMemory) -> EntryMemory {
        // SAFETY: a child of the live decoding context; deleted by `free` or with its parent.
        EntryMemory(unsafe {
            pg_sys::AllocSetContextCreateInternal(
                parent.0,
                c"pgdms relation".as_ptr(),
                pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
                pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            )
        })
    }

    pub(crate) fn context(&self) -> pg_sys::MemoryContext {
        self.0
    }

    /// Deletes the context. Only while the decoding context is alive, i.e. from a callback.
    pub fn free(self) {
        // SAFETY: we created it and nothing else deletes it while the session lives.
        unsafe { pg_sys::MemoryContextDelete(self.0) };
    }
}

/// State kept in `ctx->output_plugin_private`.
struct Private {
    session: Session,
    change_memory: pg_sys::MemoryContext,
}

/// # Safety
/// `ctx` must be the decoding context of a running callback, after `startup`.
unsafe fn private<'a>(ctx: *mut pg_sys::LogicalDecodingContext) -> &'a mut Private {
    // SAFETY: startup stored a leaked Box<Private> there; it lives until shutdown.
    unsafe { &mut *(*ctx).output_plugin_private.cast::<Private>() }
}

fn options_of(ctx: *mut pg_sys::LogicalDecodingContext) -> Vec<(String, Option<String>)> {
    let mut pairs = Vec::new();
    // SAFETY: output_plugin_options is a (possibly NIL) List of DefElem built by the
    // walsender or the SQL decoding functions.
    unsafe {
        let list = (*ctx).output_plugin_options;
        if list.is_null() {
            return pairs;
        }
        let cells = std::slice::from_raw_parts((*list).elements, (*list).length as usize);
        for cell in cells {
            let elem = cell.ptr_value.cast::<pg_sys::DefElem>();
            let name = CStr::from_ptr((*elem).defname).to_string_lossy().into_owned();
            let value = if (*elem).arg.is_null() {
                None
            } else {
                Some(CStr::from_ptr(pg_sys::defGetString(elem)).to_string_lossy().into_owned())
            };
            pairs.push((name, value));
        }
    }
    pairs
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    ctx: *mut pg_sys::LogicalDecodingContext,
    opts: *mut pg_sys::OutputPluginOptions,
    _is_init: bool,
) {
    let pairs = options_of(ctx);
    let options = match Options::parse(pairs.iter().map(|(k, v)| (k.as_str(), v.as_deref()))) {
        Ok(o) => o,
        Err(e) => {
            pgrx::pg_sys::panic::ErrorReport::new(
                pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                e.message,
                "pgdms startup",
            )
            .set_hint(e.hint)
            .report(pgrx::PgLogLevel::ERROR);
            unreachable!("an ERROR report does not return");
        }
    };
    register_invalidation_callbacks();
    // SAFETY: ctx and opts are valid for the startup callback; the memory context is a child
    // of the decoding context and is deleted with it.
    unsafe {
        (*opts).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_BINARY_OUTPUT;
        (*opts).receive_rewrites = false;
        let change_memory = pg_sys::AllocSetContextCreateInternal(
            (*ctx).context,
            c"pgdms change".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        let session = Session::new(options, SessionMemory((*ctx).context));
        let private = Box::into_raw(Box::new(Private { session, change_memory }));
        (*ctx).output_plugin_private = private.cast();
        // The session is freed when the decoding context is deleted: after shutdown, and
        // also when an ERROR ends decoding without shutdown being called (the SQL functions
        // re-throw without freeing the context; its memory goes at transaction abort).
        let callback = pg_sys::MemoryContextAlloc((*ctx).context, std::mem::size_of::<pg_sys::MemoryContextCallback>())
            .cast::<pg_sys::MemoryContextCallback>();
        callback.write(pg_sys::MemoryContextCallback {
            func: Some(free_private),
            arg: private.cast(),
            next: std::ptr::null_mut(),
        });
        pg_sys::MemoryContextRegisterResetCallback((*ctx).context, callback);
    }
    ACTIVE.with(|a| a.set(true));
}

/// Runs when the decoding context is deleted, after its child contexts (the change and
/// entry memory) are gone: only Rust memory is freed here.
#[pg_guard]
unsafe extern "C-unwind" fn free_private(arg: *mut std::ffi::c_void) {
    ACTIVE.with(|a| a.set(false));
    // SAFETY: `arg` is the Box<Private> startup leaked; this callback runs once.
    drop(unsafe { Box::from_raw(arg.cast::<Private>()) });
}

#[pg_guard]
unsafe extern "C-unwind" fn shutdown(_ctx: *mut pg_sys::LogicalDecodingContext) {
    // Nothing to free: free_private runs when the decoding context is deleted right after.
    ACTIVE.with(|a| a.set(false));
}

fn commit_time(txn: *mut pg_sys::ReorderBufferTXN) -> i64 {
    // SAFETY: txn is valid in begin/commit callbacks.
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        return (*txn).commit_time;
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        return (*txn).xact_time.commit_time;
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(ctx: *mut pg_sys::LogicalDecodingContext, txn: *mut pg_sys::ReorderBufferTXN) {
    // SAFETY: valid context and transaction for the callback.
    let (p, begin) = unsafe {
        let txn_ref = &*txn;
        (
            private(ctx),
            Begin {
                xid: txn_ref.xid.into_inner(),
                begin_lsn: Lsn(txn_ref.first_lsn),
                commit_lsn: Lsn(txn_ref.final_lsn),
                commit_time: commit_time(txn),
            },
        )
    };
    p.session.on_begin(begin);
}

#[pg_guard]
unsafe extern "C-unwind" fn commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: valid context and transaction for the callback.
    let (p, commit) = unsafe {
        (
            private(ctx),
            Commit {
                xid: (*txn).xid.into_inner(),
                commit_lsn: Lsn(commit_lsn),
                end_lsn: Lsn((*txn).end_lsn),
                commit_time: commit_time(txn),
            },
        )
    };
    let _memory = ChangeMemory::enter(p.change_memory);
    p.session.on_commit(&Output { ctx }, commit);
}

/// Old and new tuples of a change, whatever the server version's representation.
fn change_tuples(change: *mut pg_sys::ReorderBufferChange) -> (pg_sys::HeapTuple, pg_sys::HeapTuple) {
    // SAFETY: insert/update/delete changes carry `tp`; tuple buffers may be NULL.
    unsafe {
        let tp = (*change).data.tp;
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
        {
            let tuple = |buf: *mut pg_sys::ReorderBufferTupleBuf| {
                if buf.is_null() {
                    std::ptr::null_mut()
                } else {
                    &mut (*buf).tuple as pg_sys::HeapTuple
                }
            };
            (tuple(tp.oldtuple), tuple(tp.newtuple))
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16")))]
        {
            (tp.oldtuple, tp.newtuple)
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: valid context, relation and change for the callback.
    let (p, rel, action, lsn) =
        unsafe { (private(ctx), RelationHandle::from_raw(relation), (*change).action, (*change).lsn) };
    let (old, new) = change_tuples(change);
    // SAFETY: rd_att of the open relation describes its tuples.
    let desc = unsafe { (*rel.raw()).rd_att };
    let handle = |t: pg_sys::HeapTuple| (!t.is_null()).then_some(TupleHandle { tuple: t, desc });
    use pg_sys::ReorderBufferChangeType::*;
    let change = match action {
        REORDER_BUFFER_CHANGE_INSERT => match handle(new) {
            Some(new) => Change::Insert { new },
            None => return,
        },
        REORDER_BUFFER_CHANGE_UPDATE => match handle(new) {
            Some(new) => Change::Update { old: handle(old), new },
            None => return,
        },
        REORDER_BUFFER_CHANGE_DELETE => Change::Delete { old: handle(old) },
        _ => return,
    };
    let _memory = ChangeMemory::enter(p.change_memory);
    p.session.on_change(&Output { ctx }, rel, change, lsn);
}

#[pg_guard]
unsafe extern "C-unwind" fn truncate(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    nrelations: std::ffi::c_int,
    relations: *mut pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: `relations` holds `nrelations` open relations; truncate changes carry `truncate`.
    let (p, rels, restart_identity, cascade, lsn) = unsafe {
        let rels: Vec<RelationHandle> = std::slice::from_raw_parts(relations, nrelations as usize)
            .iter()
            .map(|r| RelationHandle::from_raw(*r))
            .collect();
        let t = (*change).data.truncate;
        (private(ctx), rels, t.restart_seqs, t.cascade, (*change).lsn)
    };
    let _memory = ChangeMemory::enter(p.change_memory);
    p.session.on_truncate(&Output { ctx }, &rels, restart_identity, cascade, lsn);
}

#[pg_guard]
unsafe extern "C-unwind" fn message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const std::ffi::c_char,
    size: pg_sys::Size,
    content: *const std::ffi::c_char,
) {
    // SAFETY: prefix is NUL-terminated and content holds `size` bytes, both valid for the call.
    let (p, prefix, content) = unsafe {
        let content = if size == 0 { &[][..] } else { std::slice::from_raw_parts(content.cast::<u8>(), size) };
        (private(ctx), CStr::from_ptr(prefix).to_string_lossy(), content)
    };
    let _memory = ChangeMemory::enter(p.change_memory);
    if let Some(oid) = p.session.on_message(&Output { ctx }, transactional, lsn, &prefix, content) {
        // SAFETY: opening a relation by oid under the transaction's historic snapshot, as
        // the change callback's relation was opened; NULL if it does not exist (anymore).
        // It is closed before returning, and the handle does not outlive it.
        unsafe {
            let rel = pg_sys::RelationIdGetRelation(pg_sys::Oid::from(oid));
            if !rel.is_null() {
                p.session.after_ddl(RelationHandle::from_raw(rel));
                pg_sys::RelationClose(rel);
            }
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn filter_by_origin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    origin_id: pg_sys::RepOriginId,
) -> bool {
    // SAFETY: valid context for the callback.
    let p = unsafe { private(ctx) };
    p.session.filter_origin(u32::from(origin_id) != pg_sys::InvalidRepOriginId)
}

/// Reserves a settings prefix: PostgreSQL then refuses to create placeholders for unknown
/// `prefix.*` names (PostgreSQL 15 and later; earlier ones only warn about them).
pub fn reserve_setting_prefix(prefix: &'static CStr) {
    // SAFETY: called from _PG_init with a static, NUL-terminated name.
    unsafe {
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        pg_sys::MarkGUCPrefixReserved(prefix.as_ptr());
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        pg_sys::EmitWarningsOnPlaceholders(prefix.as_ptr());
    }
}

// --- catalog invalidation ---------------------------------------------------------------

/// Invalidations received since the session last looked. The callbacks only record them:
/// they may fire in the middle of catalog access, when the cache itself is in use.
#[derive(Default)]
pub struct Invalidations {
    pub all: bool,
    pub relids: Vec<u32>,
}

/// Past this many distinct relations, "everything" is cheaper to track and as correct.
const MAX_PENDING_RELIDS: usize = 1024;

thread_local! {
    /// A decoding session is running in this backend: the callbacks stay registered after
    /// it ends (PostgreSQL cannot unregister them) and must then record nothing.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Set by the callbacks; lets the hot path skip PENDING when nothing happened.
    static DIRTY: Cell<bool> = const { Cell::new(false) };
    /// "Everything", for when PENDING cannot be borrowed.
    static ALL: Cell<bool> = const { Cell::new(false) };
    static PENDING: RefCell<Invalidations> = RefCell::default();
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Takes the invalidations recorded since the last call.
pub fn take_invalidations() -> Option<Invalidations> {
    if !DIRTY.with(|d| d.replace(false)) {
        return None;
    }
    let mut taken = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    taken.all |= ALL.with(|a| a.replace(false));
    Some(taken)
}

/// Records an invalidation (`None`: everything).
fn invalidate(relid: Option<u32>) {
    if !ACTIVE.with(Cell::get) {
        return;
    }
    DIRTY.with(|d| d.set(true));
    PENDING.with(|p| {
        // Never panic here: should the list be borrowed, invalidate everything instead.
        let Ok(mut p) = p.try_borrow_mut() else {
            ALL.with(|a| a.set(true));
            return;
        };
        match relid {
            Some(r) if !p.all && p.relids.len() < MAX_PENDING_RELIDS => {
                if !p.relids.contains(&r) {
                    p.relids.push(r);
                }
            }
            _ => {
                p.all = true;
                p.relids.clear();
            }
        }
    });
}

/// Registers the callbacks once per backend: PostgreSQL has no way to unregister them, so
/// later sessions in the same backend reuse them.
fn register_invalidation_callbacks() {
    PENDING.with(|p| *p.borrow_mut() = Invalidations::default());
    DIRTY.with(|d| d.set(false));
    ALL.with(|a| a.set(false));
    if REGISTERED.with(|r| r.replace(true)) {
        return;
    }
    // SAFETY: registers guarded callbacks that live as long as the loaded library.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_invalidated), pg_sys::Datum::from(0usize));
        // Renaming a schema or a type changes relation records without touching any table.
        for cache in [pg_sys::SysCacheIdentifier::NAMESPACEOID, pg_sys::SysCacheIdentifier::TYPEOID] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(syscache_invalidated),
                pg_sys::Datum::from(0usize),
            );
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_invalidated(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    invalidate((relid != pg_sys::InvalidOid).then(|| relid.to_u32()));
}

#[pg_guard]
unsafe extern "C-unwind" fn syscache_invalidated(_arg: pg_sys::Datum, _cache: std::ffi::c_int, _hash: u32) {
    invalidate(None);
}

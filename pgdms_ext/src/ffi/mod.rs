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

use crate::plugin::{Change, Session};
use catalog::{ColumnDesc, RelationHandle};
use datum::ServerEncoding;
use pgdms_proto::Value;
use pgdms_proto::{Begin, Commit, Options};
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
            pg_sys::appendBinaryStringInfo(
                (*self.ctx).out,
                bytes.as_ptr().cast(),
                bytes.len() as i32,
            );
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
    /// The values of `columns` (columns of this tuple's relation, as described from the same
    /// descriptor), in order. They borrow the tuple and the change memory context, both of
    /// which outlive the handle's borrow.
    pub fn values<'t, 'c>(
        &'t self,
        columns: impl Iterator<Item = &'c ColumnDesc>,
        scratch: &mut DeformScratch,
        encoding: ServerEncoding,
        table: &dyn Fn() -> String,
    ) -> Vec<Value<'t>> {
        let DeformScratch { datums, nulls } = scratch;
        // SAFETY: tuple and descriptor are valid for the callback; the vectors are sized to
        // the descriptor's natts before heap_deform_tuple writes that many entries.
        unsafe {
            let natts = (*self.desc).natts as usize;
            datums.clear();
            datums.resize(natts, pg_sys::Datum::from(0usize));
            nulls.clear();
            nulls.resize(natts, true);
            pg_sys::heap_deform_tuple(
                self.tuple,
                self.desc,
                datums.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
        }
        columns
            .map(|c| {
                let what = || format!("column \"{}\" of {}", c.name, table());
                // SAFETY: the datum was deformed with the descriptor the column was described
                // from, so it has the column's type; the tuple and the change memory context
                // (which receives detoasted copies and output text) live as long as `'t`.
                unsafe {
                    datum::to_value(&c.codec, datums[c.index], nulls[c.index], encoding, &what)
                }
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
        ChangeMemory {
            previous,
            context,
            _session: std::marker::PhantomData,
        }
    }
}

impl Drop for ChangeMemory<'_> {
    fn drop(&mut self) {
        // SAFETY: restores the caller's context, then frees what the change allocated (most
        // changes of fixed-size and short values allocate nothing: skip the call then).
        // Runs on unwinding too, before pgrx re-raises the error.
        unsafe {
            pg_sys::CurrentMemoryContext = self.previous;
            if !(*self.context).isReset {
                pg_sys::MemoryContextReset(self.context);
            }
        }
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
            let name = CStr::from_ptr((*elem).defname)
                .to_string_lossy()
                .into_owned();
            let value = if (*elem).arg.is_null() {
                None
            } else {
                Some(
                    CStr::from_ptr(pg_sys::defGetString(elem))
                        .to_string_lossy()
                        .into_owned(),
                )
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
    register_relcache_callback();
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
        let session = Session::new(options, (*ctx).context);
        (*ctx).output_plugin_private = Box::into_raw(Box::new(Private {
            session,
            change_memory,
        }))
        .cast();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shutdown(ctx: *mut pg_sys::LogicalDecodingContext) {
    // SAFETY: undoes startup's Box::into_raw exactly once; the memory context goes with the
    // decoding context.
    unsafe {
        let p = (*ctx).output_plugin_private;
        if !p.is_null() {
            drop(Box::from_raw(p.cast::<Private>()));
            (*ctx).output_plugin_private = std::ptr::null_mut();
        }
    }
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
unsafe extern "C-unwind" fn begin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
) {
    // SAFETY: valid context and transaction for the callback.
    let (p, begin) = unsafe {
        let txn_ref = &*txn;
        (
            private(ctx),
            Begin {
                xid: txn_ref.xid.into_inner(),
                begin_lsn: txn_ref.first_lsn,
                commit_lsn: txn_ref.final_lsn,
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
                commit_lsn,
                end_lsn: (*txn).end_lsn,
                commit_time: commit_time(txn),
            },
        )
    };
    let _memory = ChangeMemory::enter(p.change_memory);
    p.session.on_commit(&Output { ctx }, commit);
}

/// Old and new tuples of a change, whatever the server version's representation.
fn change_tuples(
    change: *mut pg_sys::ReorderBufferChange,
) -> (pg_sys::HeapTuple, pg_sys::HeapTuple) {
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
    let (p, rel, action) = unsafe {
        (
            private(ctx),
            RelationHandle::from_raw(relation),
            (*change).action,
        )
    };
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
            Some(new) => Change::Update {
                old: handle(old),
                new,
            },
            None => return,
        },
        REORDER_BUFFER_CHANGE_DELETE => Change::Delete { old: handle(old) },
        _ => return,
    };
    let _memory = ChangeMemory::enter(p.change_memory);
    p.session.on_change(&Output { ctx }, rel, change);
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
    let (p, rels, restart_identity, cascade) = unsafe {
        let rels: Vec<RelationHandle> = std::slice::from_raw_parts(relations, nrelations as usize)
            .iter()
            .map(|r| RelationHandle::from_raw(*r))
            .collect();
        let t = (*change).data.truncate;
        (private(ctx), rels, t.restart_seqs, t.cascade)
    };
    let _memory = ChangeMemory::enter(p.change_memory);
    p.session
        .on_truncate(&Output { ctx }, &rels, restart_identity, cascade);
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
        let content = if size == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(content.cast::<u8>(), size)
        };
        (
            private(ctx),
            CStr::from_ptr(prefix).to_string_lossy(),
            content,
        )
    };
    let _memory = ChangeMemory::enter(p.change_memory);
    p.session
        .on_message(&Output { ctx }, transactional, lsn, &prefix, content);
}

#[pg_guard]
unsafe extern "C-unwind" fn filter_by_origin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    origin_id: pg_sys::RepOriginId,
) -> bool {
    // SAFETY: valid context for the callback.
    let p = unsafe { private(ctx) };
    p.session
        .filter_origin(u32::from(origin_id) != pg_sys::InvalidRepOriginId)
}

// --- relcache invalidation -------------------------------------------------------------

/// Invalidations received since the session last looked. The relcache callback only records
/// them: it may fire in the middle of catalog access, when the cache itself is in use.
#[derive(Default)]
pub struct Invalidations {
    pub all: bool,
    pub relids: Vec<u32>,
}

thread_local! {
    static PENDING: RefCell<Invalidations> = RefCell::default();
    /// Set when an invalidation could not be recorded in PENDING (it was borrowed).
    static OVERFLOW: Cell<bool> = const { Cell::new(false) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Takes the invalidations recorded since the last call.
pub fn take_invalidations() -> Option<Invalidations> {
    let overflow = OVERFLOW.with(|o| o.replace(false));
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        p.all |= overflow;
        (p.all || !p.relids.is_empty()).then(|| std::mem::take(&mut *p))
    })
}

/// Registers the relcache callback once per backend: PostgreSQL has no way to unregister
/// one, so later sessions in the same backend reuse it.
fn register_relcache_callback() {
    PENDING.with(|p| *p.borrow_mut() = Invalidations::default());
    OVERFLOW.with(|o| o.set(false));
    if REGISTERED.with(|r| r.replace(true)) {
        return;
    }
    // SAFETY: registers a guarded callback that lives as long as the loaded library.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(relcache_invalidated),
            pg_sys::Datum::from(0usize),
        )
    };
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_invalidated(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    PENDING.with(|p| match p.try_borrow_mut() {
        Ok(mut p) if relid == pg_sys::InvalidOid => p.all = true,
        Ok(mut p) => p.relids.push(relid.to_u32()),
        // Never panic here; invalidating everything is always correct.
        Err(_) => OVERFLOW.with(|o| o.set(true)),
    });
}

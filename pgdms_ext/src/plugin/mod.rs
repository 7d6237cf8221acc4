//! The `pgdms` output plugin: what it writes, and when.
//!
//! * A [`Startup`] record precedes the first record of a decoding session.
//! * BEGIN is held back until a transaction's first published change, so transactions that
//!   touch no published table (catalog-only, our own audit tables, other databases' work)
//!   produce no output at all, as pgoutput does.
//! * A relation record precedes a table's first change in the session, and is written again
//!   when a relcache invalidation changed what it says.
//! * A logical message with a prefix pgdms reserves (`pgdms.`) goes out only when the same
//!   transaction inserted, before it, a row holding its SHA-256 into one of the extension's
//!   own tables (see `sql/ddl_capture.sql`), one message per row: anyone may call
//!   `pg_logical_emit_message`, only the extension's owner may write those tables. Any other
//!   is forged: dropped, logged here, and reported to the consumer as a `Rejected` record.

mod relcache;

use crate::ffi::catalog::{self, RelationHandle};
use crate::ffi::datum::ServerEncoding;
use crate::ffi::{DeformScratch, Output, SessionMemory, TupleHandle};
use pgdms_proto::ddl::DdlObject;
use pgdms_proto::{
    Begin, Commit, Ddl, Delete, Insert, Lsn, Message, OldImage, Options, OriginFilter, Record, Rejected,
    ReplicaIdentity, Startup, Truncate, Update, Value, DDL_MESSAGE_PREFIX, PROTO_VERSION, REJECTED_PREVIEW,
    RESERVED_MESSAGE_PREFIX,
};
use relcache::{CachedRelation, RelationCache};
use sha2::{Digest, Sha256};

/// One change of a row.
pub enum Change {
    Insert { new: TupleHandle },
    Update { old: Option<TupleHandle>, new: TupleHandle },
    Delete { old: Option<TupleHandle> },
}

pub struct Session {
    options: Options,
    encoding: ServerEncoding,
    relations: RelationCache,
    writer: Writer,
    scratch: DeformScratch,
    /// Digests of the messages the current transaction's capture vouched for, not yet seen.
    vouched: Vec<[u8; 32]>,
}

/// A transaction's records go out as one message (large ones in messages of about this
/// size): the walsender sends every message in its own system call, and so does its
/// client read it, so six messages for a small transaction cost far more than one.
const MESSAGE_TARGET: usize = 64 * 1024;

/// Builds messages of records in the order the stream promises: the startup record first,
/// a transaction's BEGIN before its first change (and not at all if it has none).
struct Writer {
    startup_sent: bool,
    /// BEGIN of the current transaction, until its first change writes it.
    pending_begin: Option<Begin>,
    begin_sent: bool,
    /// The message being built.
    message: Vec<u8>,
}

impl Writer {
    fn push(&mut self, record: &Record<'_>) {
        record.encode_into(&mut self.message);
    }

    /// Sends the message built so far; `last`: it ends a transaction (or stands alone).
    fn flush(&mut self, out: &Output, last: bool) {
        if !self.message.is_empty() {
            out.write(&self.message, last);
            self.message.clear();
            if self.message.capacity() > 16 * MESSAGE_TARGET {
                self.message.shrink_to(2 * MESSAGE_TARGET); // after a huge value
            }
        }
    }

    fn flush_if_large(&mut self, out: &Output) {
        if self.message.len() >= MESSAGE_TARGET {
            self.flush(out, false);
        }
    }

    fn ensure_startup(&mut self) {
        if self.startup_sent {
            return;
        }
        self.startup_sent = true;
        let server_version = catalog::setting(c"server_version");
        let date_style = catalog::setting(c"DateStyle");
        let interval_style = catalog::setting(c"IntervalStyle");
        let encoding = catalog::database_encoding_name();
        let database = catalog::database_name();
        self.push(&Record::Startup(Startup {
            proto_version: PROTO_VERSION,
            plugin_version: env!("CARGO_PKG_VERSION"),
            server_version_num: catalog::setting(c"server_version_num").parse().unwrap_or(0),
            server_version: &server_version,
            server_encoding: &encoding,
            database: &database,
            date_style: &date_style,
            interval_style: &interval_style,
            extra_float_digits: catalog::setting(c"extra_float_digits").parse().unwrap_or(1),
        }));
    }

    /// Adds the held-back BEGIN, if this is the transaction's first output.
    fn ensure_begin(&mut self) {
        if self.begin_sent {
            return;
        }
        self.ensure_startup();
        if let Some(begin) = self.pending_begin {
            self.begin_sent = true;
            self.push(&Record::Begin(begin));
        }
    }

    /// A record of a logical message: inside its transaction, or, decoded between
    /// transactions (non-transactional), on its own.
    fn push_message(&mut self, out: &Output, transactional: bool, record: &Record<'_>) {
        if transactional {
            self.ensure_begin();
            self.push(record);
            self.flush_if_large(out);
        } else {
            self.ensure_startup();
            self.push(record);
            self.flush(out, true);
        }
    }

    /// A change's LSN as an offset from its transaction's begin LSN.
    fn lsn_offset(&self, lsn: u64) -> u64 {
        lsn.saturating_sub(self.pending_begin.map_or(lsn, |b| b.begin_lsn.0))
    }

    /// Adds the relation record of `entry` if this session has not seen its current form.
    fn ensure_relation(&mut self, entry: &mut CachedRelation) {
        if !entry.sent {
            entry.sent = true;
            self.message.extend_from_slice(&entry.record);
        }
    }
}

impl Session {
    pub fn new(options: Options, memory: SessionMemory) -> Session {
        Session {
            options,
            encoding: ServerEncoding::current(),
            relations: RelationCache::new(memory),
            writer: Writer {
                startup_sent: false,
                pending_begin: None,
                begin_sent: false,
                message: Vec::with_capacity(2 * MESSAGE_TARGET),
            },
            scratch: DeformScratch::default(),
            vouched: Vec::new(),
        }
    }

    pub fn on_begin(&mut self, begin: Begin) {
        self.writer.pending_begin = Some(begin);
        self.writer.begin_sent = false;
        self.vouched.clear();
    }

    pub fn on_commit(&mut self, out: &Output, commit: Commit) {
        let sent = self.writer.begin_sent;
        out.update_progress(!sent);
        self.writer.pending_begin = None;
        self.writer.begin_sent = false;
        self.vouched.clear();
        if sent {
            self.writer.push(&Record::Commit(commit));
            self.writer.flush(out, true);
        }
    }

    pub fn filter_origin(&self, has_origin: bool) -> bool {
        has_origin && self.options.origin == OriginFilter::None
    }

    pub fn on_change(&mut self, out: &Output, rel: RelationHandle, change: Change, lsn: u64) {
        let Session { relations, writer, scratch, encoding, vouched, .. } = self;
        let Some(entry) = relations.get(rel) else {
            // A row of the capture's own tables vouching for the message that follows it.
            if let (Some(column), Change::Insert { new }) = (relations.digest_column(rel.oid()), &change) {
                if let Some(digest) = new.bytea_at(column, scratch).and_then(|d| <[u8; 32]>::try_from(d).ok()) {
                    vouched.push(digest);
                }
            }
            return;
        };
        writer.ensure_begin();
        writer.ensure_relation(entry);
        let lsn_offset = writer.lsn_offset(lsn);
        let desc = &entry.desc;
        let encoding = *encoding;
        let full = desc.replica_identity == ReplicaIdentity::Full;
        let relation = desc.oid;
        let record = match &change {
            Change::Insert { new } => {
                Record::Insert(Insert { relation, lsn_offset, new: new.values(desc, false, scratch, encoding) })
            }
            Change::Update { old, new } => {
                let old = old.as_ref().map(|o| old_image(o.values(desc, !full, scratch, encoding), full));
                Record::Update(Update { relation, lsn_offset, old, new: new.values(desc, false, scratch, encoding) })
            }
            Change::Delete { old } => Record::Delete(Delete {
                relation,
                lsn_offset,
                old: old.as_ref().map(|o| old_image(o.values(desc, !full, scratch, encoding), full)),
            }),
        };
        writer.push(&record);
        writer.flush_if_large(out);
    }

    pub fn on_truncate(
        &mut self,
        out: &Output,
        rels: &[RelationHandle],
        restart_identity: bool,
        cascade: bool,
        lsn: u64,
    ) {
        let mut relations = Vec::with_capacity(rels.len());
        for rel in rels {
            if let Some(entry) = self.relations.get(*rel) {
                self.writer.ensure_begin();
                self.writer.ensure_relation(entry);
                relations.push(entry.desc.oid);
            }
        }
        if !relations.is_empty() {
            let lsn_offset = self.writer.lsn_offset(lsn);
            self.writer.push(&Record::Truncate(Truncate { lsn_offset, relations, restart_identity, cascade }));
            self.writer.flush_if_large(out);
        }
    }

    /// A logical message; for a DDL record of a table that still exists, returns its oid:
    /// the caller opens it and passes it to [`Session::after_ddl`].
    pub fn on_message(
        &mut self,
        out: &Output,
        transactional: bool,
        lsn: u64,
        prefix: &str,
        content: &[u8],
    ) -> Option<u32> {
        if prefix.starts_with(RESERVED_MESSAGE_PREFIX) && !self.take_vouched(transactional, content) {
            self.reject(out, transactional, lsn, prefix, content);
            return None;
        }
        if transactional && prefix == DDL_MESSAGE_PREFIX {
            // The extension's event triggers wrote it: send it as a DDL record. Should it
            // not parse (a bug), it still goes out as the message it is, for the consumer
            // to report: decoding must not stop on it.
            if let Ok(ddl) = serde_json::from_slice::<Ddl>(content) {
                let table = match &ddl.object {
                    DdlObject::Table { after: Some(after), .. } => Some(after.oid),
                    _ => None,
                };
                self.writer.ensure_begin();
                self.writer.push(&Record::Ddl(ddl));
                self.writer.flush_if_large(out);
                return table;
            }
            pgrx::warning!("pgdms: a DDL message at {lsn:X} does not parse; passing it on as a message");
        }
        self.writer.push_message(
            out,
            transactional,
            &Record::Message(Message { transactional, lsn: Lsn(lsn), prefix, content }),
        );
        None
    }

    /// Whether the capture vouched for this message in its transaction; each vouching row
    /// lets one message through.
    fn take_vouched(&mut self, transactional: bool, content: &[u8]) -> bool {
        if !transactional {
            return false;
        }
        let digest: [u8; 32] = Sha256::digest(content).into();
        match self.vouched.iter().position(|d| *d == digest) {
            Some(i) => {
                self.vouched.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Drops a forged message: says so in the server log and to the consumer.
    fn reject(&mut self, out: &Output, transactional: bool, lsn: u64, prefix: &str, content: &[u8]) {
        let xid = self.writer.pending_begin.filter(|_| transactional).map(|b| b.xid);
        if transactional && prefix == DDL_MESSAGE_PREFIX && catalog::capture_vouches() == Some(false) {
            // Written while the database still had pgdms 0.1 (before ALTER EXTENSION pgdms
            // UPDATE), whose capture vouched for nothing: it may be genuine DDL, and it may be
            // forged. Neither replayed nor passed over without a word: the consumer stops.
            pgrx::warning!(
                "pgdms: a DDL message at {:X}/{:X} was written before pgdms 0.2 and cannot be told from a forged one; \
                 the consumer is told that capture failed",
                lsn >> 32,
                lsn & 0xffff_ffff
            );
            self.writer.ensure_begin();
            self.writer.push(&Record::Ddl(Ddl {
                command_tag: "DDL".into(),
                object_identity: String::new(),
                query: String::from_utf8_lossy(&content[..content.len().min(REJECTED_PREVIEW)]).into_owned(),
                object: DdlObject::CaptureFailed {
                    error:
                        "a DDL message written before pgdms 0.2 (before ALTER EXTENSION pgdms UPDATE), which cannot \
                            be told from a forged one"
                            .into(),
                },
            }));
            self.writer.flush_if_large(out);
            return;
        }
        pgrx::warning!(
            "pgdms: dropped a forged logical message with prefix \"{}\" ({} bytes) at {:X}/{:X}{}: pgdms's DDL capture did not write it",
            prefix.escape_default(),
            content.len(),
            lsn >> 32,
            lsn & 0xffff_ffff,
            xid.map(|x| format!(" in transaction {x}")).unwrap_or_default()
        );
        let record = Record::Rejected(Rejected {
            transactional,
            lsn: Lsn(lsn),
            prefix,
            preview: &content[..content.len().min(REJECTED_PREVIEW)],
            content_len: content.len() as u64,
        });
        self.writer.push_message(out, transactional, &record);
    }

    /// Follows a table's DDL record with its new relation record, as the catalog shows it
    /// at this point of the transaction (if it changed what the consumer was told).
    pub fn after_ddl(&mut self, rel: RelationHandle) {
        if let Some(entry) = self.relations.get(rel) {
            self.writer.ensure_relation(entry);
        }
    }
}

/// Old values as logged: the whole row under REPLICA IDENTITY FULL, else the key columns.
fn old_image(values: Vec<Value<'_>>, full: bool) -> OldImage<'_> {
    if full {
        OldImage::Full(values)
    } else {
        OldImage::Key(values)
    }
}

//! Change data capture: the slot's stream applied to a target, exactly once.
//!
//! Two tasks share the work. The *receiver* reads the replication stream, decodes records
//! into [`Event`]s, hands them over in chunks, and reports progress to the source: as
//! flushed, only what the target has committed, or, with nothing in flight, the WAL end
//! of the latest keepalive. The *applier* folds complete source transactions into batches
//! (see [`crate::model::batch`]) and commits them to the target in groups, each group's target
//! transaction also recording the end LSN of its last source transaction. Groups end at
//! source transaction boundaries, so the target always shows a prefix of the source's
//! history; after a crash the apply resumes after the last recorded end LSN and skips
//! whatever the source sends again.

pub(crate) mod decode;
pub(crate) mod retry;

use crate::error::ErrorKind;
use crate::model::batch::Batch;
use crate::model::{Change, RelInfo};
use crate::pgconn::ConnInfo;
use crate::sink::{OnTableError, Target, TargetError};
use crate::stream::replication::{IDLE_PROBE, STATUS_INTERVAL};
use crate::stream::{ReplicationConnection, ReplicationError, ReplicationStream, StreamMessage};
use decode::{Event, EventDecoder, EventError};
use pgdms_proto::Lsn;
use pgdms_proto::Options;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub slot: String,
    /// Commit a group once it holds this many row changes...
    pub group_max_rows: usize,
    /// ...or is this old, or the stream is idle.
    pub group_max_age: Duration,
    /// Apply to the target every this many row changes, within the group.
    pub batch_max_rows: usize,
    pub plugin_options: Options,
    /// Stop once everything up to this source LSN is applied.
    pub until: Option<Lsn>,
    /// Tables loaded from a later snapshot than the slot's start (reloaded after a crash):
    /// their changes committed before that snapshot are in the copy already and are passed
    /// over, as PostgreSQL's table-sync workers do.
    pub reloaded: Reloaded,
    /// Pass over transactions that committed before this LSN...
    pub start_lsn: Option<Lsn>,
    /// ...or before this time (microseconds since 2000-01-01 UTC).
    pub start_time: Option<i64>,
    /// Table mappings (selection, names, removed columns).
    pub mapping: Option<Arc<crate::mapping::Mapping>>,
    /// A table whose change the target refuses (with `--on-error stop`): stop, or set it
    /// aside and go on.
    pub on_table_error: crate::sink::OnTableError,
}

/// Reloaded tables and the LSN of the snapshot each was copied from, by source oid and by
/// source name ("schema"."name"): a table renamed since keeps its oid, one dropped and
/// created again keeps its name.
#[derive(Debug, Clone, Default)]
pub struct Reloaded {
    pub by_oid: std::collections::HashMap<u32, Lsn>,
    pub by_name: std::collections::HashMap<String, Lsn>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Source(#[from] ReplicationError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{0}")]
    Stream(#[from] EventError),
    /// The slot cannot be streamed from (missing, another plugin's, invalidated, another
    /// database's); the message says what to do.
    #[error("{0}")]
    Slot(String),
}

impl ApplyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApplyError::Source(
                ReplicationError::Io(_) | ReplicationError::Connect { .. } | ReplicationError::StreamEnded,
            ) => ErrorKind::Transient,
            // A walsender terminated, a server restarting, and "slot is active for PID"
            // (55006) while an old walsender goes away.
            ApplyError::Source(ReplicationError::Server(e) | ReplicationError::Rejected { error: e, .. })
                if crate::error::sqlstate_connection_lost(&e.code) || e.code == "55006" =>
            {
                ErrorKind::Transient
            }
            ApplyError::Source(ReplicationError::Protocol(_)) => ErrorKind::Corruption,
            ApplyError::Source(_) | ApplyError::Slot(_) => ErrorKind::Configuration,
            ApplyError::Target(t) => t.kind(),
            ApplyError::Stream(_) => ErrorKind::Corruption,
        }
    }
}

/// How a session ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    /// Shut down on request.
    Interrupted,
    /// Reached `until`.
    Reached,
}

/// Why the receiver task stopped.
enum ReceiverEnd {
    /// The applier went away (it finished or failed).
    ApplierGone,
    Error(ApplyError),
}

/// Checks the slot before streaming from it, with a fix for each way it can be unusable.
async fn check_slot(conn: &mut ReplicationConnection, slot: &str) -> Result<crate::stream::SlotInfo, ApplyError> {
    let Some(info) = conn.slot(slot).await? else {
        return Err(ApplyError::Slot(format!(
            "replication slot \"{slot}\" does not exist; create it with `pgdms-apply slot create --slot {slot}` \
             (or pass --create-slot), then load the target from its snapshot"
        )));
    };
    if info.plugin != pgdms_proto::PLUGIN_NAME {
        return Err(ApplyError::Slot(format!(
            "replication slot \"{slot}\" uses the plugin \"{}\", not pgdms",
            info.plugin
        )));
    }
    if info.wal_status.as_deref() == Some("lost") {
        return Err(ApplyError::Slot(format!(
            "replication slot \"{slot}\" was invalidated by the source (wal_status = lost): the WAL it needed was removed, \
             most likely because it exceeded max_slot_wal_keep_size. Changes are missing and the target can no longer \
             be brought in step by streaming. Drop the slot (pgdms-apply slot drop --slot {slot}), create a new one, \
             and load the target again from its snapshot; consider raising max_slot_wal_keep_size"
        )));
    }
    if !info.this_database {
        return Err(ApplyError::Slot(format!(
            "replication slot \"{slot}\" belongs to another database than --source names"
        )));
    }
    Ok(info)
}

/// Refuses a slot that confirms more than the target recorded as applied: something else
/// consumed or advanced it, and the changes in between are gone for this target. (The apply
/// records every position before confirming it, an idle stream's too, so it cannot be the
/// apply's own doing.)
fn check_not_advanced_behind(slot: &str, confirmed: Option<Lsn>, acked: Option<Lsn>) -> Result<(), ApplyError> {
    let (Some(confirmed), Some(acked)) = (confirmed, acked) else { return Ok(()) };
    if confirmed <= acked {
        return Ok(());
    }
    Err(ApplyError::Slot(format!(
        "replication slot \"{slot}\" was advanced past what the target holds: the source confirms changes up to \
         {confirmed}, the target applied them up to {acked}. Something else consumed or advanced the slot \
         (pgdms-apply dump --ack, pg_logical_slot_get_changes, pg_replication_slot_advance, a second apply); \
         the changes in between never reached this target and cannot be decoded again. Nothing was changed on \
         the target. Load it again with a new migration (pgdms-apply slot drop --slot {slot}; on the target \
         DELETE FROM pgdms_apply.migration and pgdms_apply.apply_progress WHERE slot_name = '{slot}', or on \
         MySQL and SQLite the same in pgdms_migration, pgdms_apply_progress and pgdms_load_progress; then \
         pgdms-apply migrate), or, if you know those changes are on the target, pass --start-lsn {confirmed} \
         to pgdms-apply cdc"
    )))
}

/// One connection's worth of streaming: returns when interrupted, at `until`, or on error.
pub async fn run_session<T: Target>(
    source: &ConnInfo,
    target: &mut T,
    opts: &ApplyOptions,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Finished, ApplyError> {
    let progress = target.start(&opts.slot).await?;
    target.claim(&opts.slot).await?;
    let mut conn = ReplicationConnection::connect(source).await?;
    let system = conn.identify_system().await?;
    let slot = check_slot(&mut conn, &opts.slot).await?;
    if opts.start_lsn.is_none() && opts.start_time.is_none() {
        let acked = target.acknowledged(&opts.slot).await?;
        check_not_advanced_behind(&opts.slot, slot.confirmed_flush_lsn, acked)?;
    }
    let start = progress.unwrap_or_default();
    tracing::info!(
        slot = %opts.slot,
        system_id = %system.system_id,
        timeline = system.timeline,
        source_wal = %system.xlog_pos,
        resume_after = %start,
        "streaming"
    );
    let stream = conn.start_replication(&opts.slot, start, &opts.plugin_options.to_pairs()).await?;

    // Lets the stream keep flowing while the target applies a batch, with at most 32 chunks
    // of CHUNK events in flight (memory stays bounded whatever the backlog).
    let (events_tx, events_rx) = mpsc::channel::<Vec<Event>>(32);
    let (applied_tx, applied_rx) = watch::channel(start);
    let decoder = EventDecoder::with_mapping(opts.mapping.clone()).with_reloaded(opts.reloaded.clone());
    let idle_acks = !target.records_acknowledged();
    let receiver =
        tokio::spawn(receive(stream, decoder, events_tx, applied_rx, start, opts.until.is_some(), idle_acks));
    // Tables set aside (`--on-table-error suspend`): their changes are passed over, counted.
    let suspended = target.suspended_tables(&opts.slot).await?;
    for t in &suspended {
        tracing::warn!(table = %t.name, error = %t.error, "suspended: its changes are passed over until --reload-table");
    }
    let mut applier = Applier::new(target, opts, progress, applied_tx);
    applier.suspended = suspended.iter().map(|t| t.source_oid).collect();
    let result = applier.run(events_rx, shutdown).await;
    let receiver_end = tokio::time::timeout(Duration::from_secs(4), receiver).await;
    match (result, receiver_end) {
        (Err(e), _) => Err(e),
        (Ok(finished), Ok(Ok(ReceiverEnd::ApplierGone))) => Ok(finished),
        (Ok(_), Ok(Ok(ReceiverEnd::Error(e)))) => Err(e),
        (Ok(finished), _) => {
            tracing::warn!("the source connection did not close in time");
            Ok(finished)
        }
    }
}

/// Events per chunk handed to the applier.
const CHUNK: usize = 1024;
/// Least time between two idle positions recorded on the target.
const ADVANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Minimum interval between standby status updates caused by applied progress.
const STATUS_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// What the receiver tells the source it may forget, and when it last said so.
struct Reporter {
    /// Inside a source transaction (between its Begin and Commit).
    in_txn: bool,
    /// End LSN of the last commit received.
    received_end: Lsn,
    /// The latest keepalive WAL end seen between transactions.
    idle_end: Lsn,
    reported: Lsn,
    last_status: Instant,
    /// A report held back by STATUS_MIN_INTERVAL, to send when it passes.
    due: Option<Instant>,
    /// Confirm an idle stream's WAL end directly; else only what the applier published,
    /// which it recorded on the target first (`Target::records_acknowledged`).
    idle_acks: bool,
}

impl Reporter {
    /// As received: what the target committed, or with nothing in flight, the idle WAL end.
    fn received(&self, applied: Lsn) -> Lsn {
        if !self.in_txn && applied >= self.received_end {
            applied.max(self.idle_end)
        } else {
            applied
        }
    }

    /// As flushed: what the source may forget.
    fn position(&self, applied: Lsn) -> Lsn {
        if self.idle_acks {
            self.received(applied)
        } else {
            applied
        }
    }

    async fn report(
        &mut self,
        stream: &mut ReplicationStream,
        applied: Lsn,
        reply: bool,
    ) -> Result<(), ReplicationError> {
        let pos = self.position(applied);
        stream.send_status(self.received(applied), pos, pos, reply).await?;
        self.reported = pos;
        self.last_status = Instant::now();
        self.due = None;
        Ok(())
    }

    /// Reports applied progress now, or soon if a report just went out.
    async fn progress(&mut self, stream: &mut ReplicationStream, applied: Lsn) -> Result<(), ReplicationError> {
        if self.position(applied) <= self.reported {
            return Ok(());
        }
        if self.last_status.elapsed() >= STATUS_MIN_INTERVAL {
            self.report(stream, applied, false).await
        } else {
            self.due = Some(self.last_status + STATUS_MIN_INTERVAL);
            Ok(())
        }
    }
}

/// The receiver task: stream → events, progress → source.
async fn receive(
    mut stream: ReplicationStream,
    mut decoder: EventDecoder,
    events: mpsc::Sender<Vec<Event>>,
    mut applied: watch::Receiver<Lsn>,
    start: Lsn,
    probe_when_idle: bool,
    idle_acks: bool,
) -> ReceiverEnd {
    let mut chunk: Vec<Event> = Vec::with_capacity(CHUNK);
    let mut rep = Reporter {
        in_txn: false,
        received_end: start,
        idle_end: start,
        reported: start,
        last_status: Instant::now(),
        due: None,
        idle_acks,
    };
    let result: Result<(), ApplyError> = async {
        loop {
            let now_applied = *applied.borrow();
            tokio::select! {
                biased;
                _ = events.closed() => {
                    // The applier is done: report what it committed and end the stream.
                    let a = *applied.borrow();
                    rep.report(&mut stream, a, false).await?;
                    stream.finish().await?;
                    return Ok(());
                }
                changed = applied.changed() => {
                    if changed.is_ok() {
                        let a = *applied.borrow();
                        rep.progress(&mut stream, a).await?;
                    }
                }
                _ = async { tokio::time::sleep_until(rep.due.unwrap_or_else(Instant::now).into()).await }, if rep.due.is_some() => {
                    rep.report(&mut stream, now_applied, false).await?;
                }
                msg = stream.recv() => {
                    let Some(msg) = msg? else {
                        return Err(ApplyError::Source(ReplicationError::StreamEnded));
                    };
                    match msg {
                        StreamMessage::XLogData { data, .. } => {
                            let first = chunk.len();
                            decoder.decode(&data, &mut chunk)?;
                            for event in &chunk[first..] {
                                match event {
                                    Event::Begin { .. } => rep.in_txn = true,
                                    Event::Commit { end_lsn, .. } => {
                                        rep.in_txn = false;
                                        rep.received_end = *end_lsn;
                                    }
                                    _ => {}
                                }
                            }
                        }
                        StreamMessage::Keepalive { wal_end, reply_requested } => {
                            if !rep.in_txn {
                                rep.idle_end = rep.idle_end.max(wal_end);
                                chunk.push(Event::Idle(wal_end));
                            }
                            let applied = *applied.borrow();
                            if reply_requested || rep.last_status.elapsed() >= STATUS_INTERVAL || rep.position(applied) > rep.reported {
                                rep.report(&mut stream, applied, false).await?;
                            }
                        }
                    }
                    if !chunk.is_empty() && (chunk.len() >= CHUNK || !stream.has_buffered_message()) {
                        // While the applier is busy (the channel full), stop reading but keep
                        // telling the source we are alive, so wal_sender_timeout does not end
                        // the stream during a long target statement.
                        let permit = loop {
                            tokio::select! {
                                permit = events.reserve() => break permit,
                                _ = tokio::time::sleep(STATUS_INTERVAL) => {
                                    let a = *applied.borrow();
                                    rep.report(&mut stream, a, false).await?
                                }
                            }
                        };
                        match permit {
                            Ok(permit) => permit.send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))),
                            Err(_) => continue, // applier gone: the closed() branch ends the stream
                        }
                    }
                }
                // The server answers a reply request with a keepalive carrying its WAL end.
                _ = tokio::time::sleep(IDLE_PROBE), if probe_when_idle && !rep.in_txn => {
                    rep.report(&mut stream, now_applied, true).await?;
                }
                _ = tokio::time::sleep(STATUS_INTERVAL) => rep.report(&mut stream, now_applied, false).await?,
            }
        }
    }
    .await;
    match result {
        Ok(()) => ReceiverEnd::ApplierGone,
        Err(e) => ReceiverEnd::Error(e),
    }
}

/// An item of the source transaction being received.
enum TxnItem {
    Change(Change),
    Truncate {
        rels: Vec<Arc<RelInfo>>,
        restart_identity: bool,
        lsn: Lsn,
    },
    Ddl {
        ddl: Arc<pgdms_proto::Ddl>,
        lsn: Lsn,
    },
    /// The relation record that follows a table's DDL record: the table's new shape.
    Described {
        rel: Arc<RelInfo>,
        lsn: Lsn,
    },
}

/// The applier: complete transactions → batches → groups on the target.
struct Applier<'t, T: Target> {
    target: &'t mut T,
    opts: &'t ApplyOptions,
    /// Source transactions ending at or before this are on the target already.
    skip_through: Option<Lsn>,
    applied: watch::Sender<Lsn>,
    batch: Batch,
    /// The source transaction being received (not yet committed on the source side).
    txn: Vec<TxnItem>,
    skipping_txn: bool,
    /// The transaction being received holds DDL.
    txn_has_ddl: bool,
    /// ...or describes a table this session had not seen, or saw otherwise.
    txn_describes_anew: bool,
    /// Tables described anew inside transactions passed over (applied before a restart):
    /// the first applied transaction that touches one counts as describing it anew.
    anew_while_skipping: HashSet<u32>,
    /// Tables described in this session (as last described), and those first described in
    /// the current transaction (which may have created them).
    described: HashMap<u32, Arc<RelInfo>>,
    new_in_txn: HashSet<u32>,
    /// The current transaction was too large to hold: its changes are going to the target
    /// as they come, in a group of its own.
    txn_streaming: bool,
    /// The open group: rows, start, and the end LSN / commit time of its last transaction.
    group_rows: usize,
    group_started: Option<Instant>,
    group_end: Option<(Lsn, i64)>,
    /// The stream was idle, with everything applied, at this WAL position.
    caught_up_to: Lsn,
    /// When an idle position was last recorded on the target (`Target::advance`).
    last_advance: Option<Instant>,
    /// Source oids of the tables set aside, and their changes passed over in the open group
    /// and in the transaction being received.
    suspended: HashSet<u32>,
    passed_over: HashMap<u32, i64>,
    txn_passed_over: HashMap<u32, i64>,
    /// Tables without columns named as not migrated (a target that cannot hold them).
    columnless_named: HashSet<u32>,
}

impl<'t, T: Target> Applier<'t, T> {
    fn new(target: &'t mut T, opts: &'t ApplyOptions, progress: Option<Lsn>, applied: watch::Sender<Lsn>) -> Self {
        Applier {
            target,
            opts,
            skip_through: progress,
            applied,
            batch: Batch::default(),
            txn: Vec::new(),
            skipping_txn: false,
            txn_has_ddl: false,
            txn_describes_anew: false,
            anew_while_skipping: HashSet::new(),
            described: HashMap::new(),
            new_in_txn: HashSet::new(),
            txn_streaming: false,
            group_rows: 0,
            group_started: None,
            group_end: None,
            caught_up_to: Lsn(0),
            last_advance: None,
            suspended: HashSet::new(),
            passed_over: HashMap::new(),
            txn_passed_over: HashMap::new(),
            columnless_named: HashSet::new(),
        }
    }

    async fn run(
        &mut self,
        mut events: mpsc::Receiver<Vec<Event>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Finished, ApplyError> {
        loop {
            let deadline = self.group_started.map(|s| s + self.opts.group_max_age);
            let chunk = tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.stop_inside_transaction().await?;
                    self.commit_group().await?;
                    return Ok(Finished::Interrupted);
                }
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()).await }, if deadline.is_some() && self.group_end.is_some() => {
                    self.commit_group().await?;
                    continue;
                }
                chunk = events.recv() => chunk,
            };
            let Some(chunk) = chunk else {
                // The receiver stopped (its error is reported by the session): keep what is
                // complete, drop what is not.
                self.stop_inside_transaction().await?;
                self.commit_group().await?;
                return Ok(Finished::Interrupted);
            };
            // A keepalive says the walsender had caught up when it sent it. One with more of
            // the stream behind it (later in this chunk, or chunks waiting) is stale: the
            // apply is behind, and committing there would keep its groups small, so that it
            // never catches up with bigger ones.
            let last = chunk.len().saturating_sub(1);
            let more_waiting = !events.is_empty();
            for (i, event) in chunk.into_iter().enumerate() {
                if matches!(event, Event::Idle(_)) && (i < last || more_waiting) {
                    continue;
                }
                self.handle(event).await?;
            }
            // Completed transactions may commit even while the next one is half received.
            // A group also ends when the stream goes idle (Event::Idle): the walsender sends
            // a keepalive whenever it has caught up, so a busy stream (a backlog) makes big
            // groups and a quiet one commits each transaction at once. (A full group has
            // committed already, at its last transaction's commit.)
            if self.group_end.is_some()
                && !self.txn_streaming
                && self.group_started.is_some_and(|s| s.elapsed() >= self.opts.group_max_age)
            {
                self.commit_group().await?;
            }
            if let Some(until) = self.opts.until {
                let reached = self.group_end.map_or(*self.applied.borrow(), |(end, _)| end);
                if self.txn.is_empty() && !self.txn_streaming && (reached >= until || self.caught_up_to >= until) {
                    self.commit_group().await?;
                    return Ok(Finished::Reached);
                }
            }
        }
    }

    async fn handle(&mut self, event: Event) -> Result<(), ApplyError> {
        match event {
            Event::Settings(s) => self.target.configure(&s).await?,
            Event::Relation(rel) => {
                let anew = match self.described.insert(rel.oid, rel.clone()) {
                    None => {
                        // A table first described inside the transaction may be one it creates.
                        self.new_in_txn.insert(rel.oid);
                        true
                    }
                    Some(before) => *before != *rel,
                };
                if self.skipping_txn {
                    if anew {
                        self.anew_while_skipping.insert(rel.oid);
                    }
                } else {
                    self.txn_describes_anew |= anew;
                    if let Some(TxnItem::Ddl { ddl, lsn }) = self.txn.last() {
                        if matches!(&ddl.object, pgdms_proto::DdlObject::Table { after: Some(a), .. } if a.oid == rel.oid)
                            && (!rel.writes_no_columns() || self.target.holds_columnless_tables())
                        {
                            let lsn = *lsn;
                            self.txn.push(TxnItem::Described { rel, lsn });
                        }
                    }
                }
            }
            Event::Rejected(r) => {
                // Not applied: only logged (once, not again when a restart skips its
                // transaction). The WAL does not say which role sent it; the source's log
                // line with the same LSN and transaction can (log_line_prefix %u %x).
                if !self.skipping_txn {
                    tracing::warn!(
                        lsn = %r.lsn,
                        xid = %r.xid.map_or_else(|| "none".to_string(), |x| x.to_string()),
                        prefix = %r.prefix.escape_debug(),
                        bytes = r.content_len,
                        content = %r.preview.escape_debug(),
                        "dropped a forged record: the source sent a message claiming to be pgdms's that its DDL capture did not write; nothing was applied"
                    );
                }
            }
            Event::Idle(wal_end) => {
                // Nothing in flight: whatever is complete can go in now (a stale keepalive
                // does not get here, see `run`).
                if self.txn.is_empty() && !self.txn_streaming {
                    self.commit_group().await?;
                    self.caught_up_to = self.caught_up_to.max(wal_end);
                    self.advance_when_idle(wal_end).await?;
                }
            }
            Event::Begin { commit_lsn, commit_time, .. } => {
                // Its end LSN is past commit_lsn, and every earlier transaction ended at or
                // before it: skip exactly the transactions already applied.
                self.skipping_txn = self.skip_through.is_some_and(|p| commit_lsn < p)
                    || self.opts.start_lsn.is_some_and(|s| commit_lsn < s)
                    || self.opts.start_time.is_some_and(|t| commit_time < t);
                self.txn.clear();
                self.txn_passed_over.clear();
                self.txn_has_ddl = false;
                self.txn_describes_anew = false;
                self.new_in_txn.clear();
                self.txn_streaming = false;
            }
            Event::Change(c) if !self.target.holds_columnless_tables() && c.rel.writes_no_columns() => {
                self.columnless_passed_over(&c.rel);
            }
            Event::Change(c) if self.suspended.contains(&c.rel.oid) => {
                if !self.skipping_txn {
                    *self.txn_passed_over.entry(c.rel.oid).or_default() += 1;
                }
            }
            Event::Change(c) => {
                if !self.skipping_txn {
                    if !self.anew_while_skipping.is_empty() && self.anew_while_skipping.remove(&c.rel.oid) {
                        self.txn_describes_anew = true;
                    }
                    self.txn.push(TxnItem::Change(c));
                    if self.txn.len() >= self.opts.batch_max_rows {
                        self.stream_large_transaction().await?;
                    }
                }
            }
            Event::Truncate { mut rels, restart_identity, lsn } => {
                if !self.suspended.is_empty() {
                    for r in rels.iter().filter(|r| self.suspended.contains(&r.oid)) {
                        if !self.skipping_txn {
                            *self.txn_passed_over.entry(r.oid).or_default() += 1;
                        }
                    }
                    rels.retain(|r| !self.suspended.contains(&r.oid));
                }
                if !self.target.holds_columnless_tables() {
                    rels.retain(|r| !r.writes_no_columns());
                }
                if !self.skipping_txn && !rels.is_empty() {
                    for r in &rels {
                        self.txn_describes_anew |= self.anew_while_skipping.remove(&r.oid);
                    }
                    self.txn.push(TxnItem::Truncate { rels, restart_identity, lsn });
                }
            }
            Event::Ddl { ddl, lsn } => {
                if !self.skipping_txn {
                    self.txn.push(TxnItem::Ddl { ddl, lsn });
                    self.txn_has_ddl = true;
                }
            }
            Event::Commit { end_lsn, commit_time } => {
                if self.skipping_txn {
                    self.skipping_txn = false;
                    // A target that records what is confirmed gets this position with the
                    // next idle one (`advance_when_idle`), not confirmed unrecorded.
                    if self.group_end.is_none() && !self.target.records_acknowledged() {
                        self.publish(end_lsn);
                    }
                    return Ok(());
                }
                let mut items = std::mem::take(&mut self.txn);
                // Counted with the group that holds the whole transaction, never with one that
                // committed while it was half received.
                for (oid, n) in self.txn_passed_over.drain() {
                    *self.passed_over.entry(oid).or_default() += n;
                }
                if self.txn_has_ddl {
                    created_before_rows(&mut items);
                }
                // A target whose schema changes commit implicitly (MySQL) gets such a
                // transaction as a group of its own, so that it can record how far into
                // that one transaction it got (see `Target::schema_changes_commit`).
                let alone = self.target.schema_changes_commit() && (self.txn_has_ddl || self.txn_describes_anew);
                if alone && !self.txn_streaming {
                    self.commit_group().await?;
                }
                self.group_rows += items.len();
                self.add_to_batch(items).await?;
                self.group_started.get_or_insert_with(Instant::now);
                self.group_end = Some((end_lsn, commit_time));
                if self.txn_streaming
                    || std::mem::take(&mut self.txn_has_ddl)
                    || alone
                    || self.target.group_per_transaction()
                    || self.group_rows >= self.opts.group_max_rows
                {
                    // A large transaction is its own group: commit it now. So is one with
                    // DDL: an enum label it added can only be used once committed. A group
                    // that is full commits at the transaction that filled it, however much
                    // of the stream arrived in the same chunk.
                    self.txn_streaming = false;
                    self.commit_group().await?;
                }
            }
        }
        Ok(())
    }

    /// A change of a table without columns, which this target cannot hold: passed over,
    /// said once per table and session.
    fn columnless_passed_over(&mut self, rel: &RelInfo) {
        if self.columnless_named.insert(rel.oid) {
            tracing::warn!(table = %rel.qualified(), "not migrated: a table without columns to write (none, or only generated ones), which this target cannot hold; its changes are passed over");
        }
    }

    /// The stream is idle at `wal_end` with everything applied: on a target that records
    /// what is confirmed, record it (at most every ADVANCE_INTERVAL: the source keeps a
    /// little more WAL meanwhile), then let the receiver confirm it.
    async fn advance_when_idle(&mut self, wal_end: Lsn) -> Result<(), ApplyError> {
        if !self.target.records_acknowledged()
            || wal_end <= *self.applied.borrow()
            || self.last_advance.is_some_and(|t| t.elapsed() < ADVANCE_INTERVAL)
        {
            return Ok(());
        }
        self.target.advance(wal_end).await?;
        self.last_advance = Some(Instant::now());
        self.publish(wal_end);
        Ok(())
    }

    fn publish(&mut self, end: Lsn) {
        self.applied.send_if_modified(|a| {
            let advance = end > *a;
            if advance {
                *a = end;
            }
            advance
        });
    }

    /// Moves a transaction's items into the batch, flushing where order demands it.
    async fn add_to_batch(&mut self, items: Vec<TxnItem>) -> Result<(), ApplyError> {
        for item in items {
            match item {
                TxnItem::Change(c) => {
                    if self.batch.has_other_description(&c.rel) || self.batch.len() >= self.opts.batch_max_rows {
                        self.flush_batch().await?;
                    }
                    if self.txn_streaming && self.new_in_txn.remove(&c.rel.oid) {
                        // Rows of a table this transaction created without a DDL record yet
                        // (CREATE TABLE AS writes them first), in a transaction too large to
                        // hold until the record: give the target the table now, from its
                        // relation record.
                        self.flush_batch().await?;
                        self.target.ensure_table(&c.rel, c.lsn).await?;
                    }
                    self.batch.push(c);
                }
                TxnItem::Truncate { rels, restart_identity, lsn } => {
                    self.flush_batch().await?;
                    self.target.truncate(&rels, restart_identity, lsn).await?;
                }
                TxnItem::Ddl { ddl, lsn } => {
                    self.flush_batch().await?;
                    if let pgdms_proto::DdlObject::Table { after: Some(a), .. } = &ddl.object {
                        self.new_in_txn.remove(&a.oid);
                    }
                    self.target.ddl(&ddl, lsn).await?;
                }
                TxnItem::Described { rel, lsn } => {
                    self.flush_batch().await?;
                    self.target.described(&rel, lsn).await?;
                }
            }
        }
        Ok(())
    }

    async fn flush_batch(&mut self) -> Result<(), ApplyError> {
        if !self.batch.is_empty() {
            self.target.apply(&self.batch).await?;
            self.batch.clear();
        }
        Ok(())
    }

    /// The transaction being received outgrew a batch: commit the group of complete
    /// transactions before it, then send its changes to the target as they come.
    async fn stream_large_transaction(&mut self) -> Result<(), ApplyError> {
        if !self.txn_streaming {
            self.commit_group().await?;
            self.txn_streaming = true;
            tracing::info!("a large source transaction: applying it in batches as it arrives");
        }
        let items = std::mem::take(&mut self.txn);
        self.add_to_batch(items).await?;
        self.flush_batch().await
    }

    /// Stopping with a source transaction half received: forget it; if parts of it were
    /// applied already, its group (which holds nothing else) is rolled back.
    async fn stop_inside_transaction(&mut self) -> Result<(), ApplyError> {
        self.txn.clear();
        self.txn_passed_over.clear();
        if self.txn_streaming {
            self.txn_streaming = false;
            self.batch.clear();
            self.passed_over.clear();
            self.target.rollback().await?;
        }
        Ok(())
    }

    async fn commit_group(&mut self) -> Result<(), ApplyError> {
        let Some((end_lsn, commit_time)) = self.group_end.take() else { return Ok(()) };
        self.flush_batch().await?;
        if !self.passed_over.is_empty() {
            let counts: Vec<(u32, i64)> = self.passed_over.drain().collect();
            self.target.passed_over(&counts).await?;
        }
        self.target.commit(end_lsn, commit_time).await?;
        tracing::debug!(end_lsn = %end_lsn, rows = self.group_rows, "group committed");
        self.group_rows = 0;
        self.group_started = None;
        self.skip_through = Some(end_lsn);
        self.publish(end_lsn);
        Ok(())
    }
}

/// CREATE TABLE AS and SELECT INTO write their rows before the event trigger that reports
/// the table runs: move a table's creation ahead of the transaction's first row of it.
fn created_before_rows(items: &mut Vec<TxnItem>) {
    let mut j = 0;
    while j < items.len() {
        let created = match &items[j] {
            TxnItem::Ddl { ddl, .. } => match &ddl.object {
                pgdms_proto::DdlObject::Table { before: None, after: Some(a) } => Some(a.oid),
                _ => None,
            },
            _ => None,
        };
        let first_row = created.and_then(|oid| {
            items[..j].iter().position(|item| match item {
                TxnItem::Change(c) => c.rel.oid == oid,
                TxnItem::Truncate { rels, .. } => rels.iter().any(|r| r.oid == oid),
                TxnItem::Ddl { .. } | TxnItem::Described { .. } => false,
            })
        });
        if let Some(i) = first_row {
            let ddl = items.remove(j);
            items.insert(i, ddl);
        }
        j += 1;
    }
}

/// The source's `"schema"."name"` of table `oid`, if it can be read now.
async fn source_name(source: &ConnInfo, oid: u32) -> Option<String> {
    let conn = crate::pgconn::client::connect(source, "pgdms-apply").await.ok()?;
    let row = conn
        .client
        .query_opt(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .ok()??;
    row.try_get(0).ok()
}

/// Runs CDC until interrupted or `until` is reached, reconnecting with backoff after
/// transient failures of either side. `connect_target` makes a fresh target each time.
pub async fn run<T, F, Fut>(
    source: &ConnInfo,
    mut connect_target: F,
    opts: &ApplyOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Finished, ApplyError>
where
    T: Target,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TargetError>>,
{
    let mut retry = retry::Policy::default();
    loop {
        let attempt = async {
            let mut target = connect_target().await?;
            let result = run_session(source, &mut target, opts, &mut shutdown).await;
            if result.is_err() {
                // Whatever the group held was not committed; say so to the server if it listens.
                let _ = target.rollback().await;
            }
            match result {
                Err(ApplyError::Target(TargetError::Change { source_oid: Some(oid), table, lsn, error, .. }))
                    if opts.on_table_error == OnTableError::Suspend && target.suspends_tables() =>
                {
                    // Set aside, committed on its own, under its source name (what
                    // --reload-table takes); the next session passes over its changes from the
                    // last committed group on.
                    let table = source_name(source, oid).await.unwrap_or(table);
                    target.suspend(oid, &table, lsn, &error).await?;
                    tracing::error!(%table, %lsn, %error, "table suspended: the target refused a change of it; its changes are passed over until --reload-table");
                    Ok(None)
                }
                other => other.map(Some),
            }
        };
        match attempt.await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => continue,
            Err(e) if *shutdown.borrow() => return Err(e),
            Err(e) => {
                let Some(backoff) = retry.after(e.kind()) else { return Err(e) };
                tracing::warn!(error = %e, retry_in = ?backoff, "connection lost; resuming from the last committed group");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(Finished::Interrupted),
                }
            }
        }
    }
}

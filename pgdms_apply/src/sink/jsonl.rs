//! A JSON-lines stream target (stdout or a file): one message per change, in the shape the
//! reference's tool writes to its stream targets,
//!
//! ```json
//! {"data": {"id": 1, "name": "a"}, "before-image": {"id": 1, "name": "b"},
//!  "metadata": {"timestamp": "2026-11-25T10:00:00.000000Z", "record-type": "data",
//!               "operation": "update", "partition-key-type": "schema-table",
//!               "schema-name": "public", "table-name": "t", "transaction-id": 734,
//!               "commit-lsn": "0/1A2B3C4", "change-index": 0}}
//! ```
//!
//! values through the DMS mapping (`typemap`, numerics as strings so no digit is lost,
//! BLOB as base64). `before-image` comes with updates and deletes (the old key, or the old
//! row under REPLICA IDENTITY FULL). `(commit-lsn, change-index)` -- the end LSN of the
//! source transaction and the change's position in it -- is unique and increasing: the
//! stream is at-least-once, and a consumer drops a message whose pair it has seen.
//! Truncates and DDL are `control` records (`truncate`, `create-table`, `drop-table`,
//! `rename-table`, `add-column`, `drop-column`, `rename-column`, `column-type-change`);
//! `add-column` carries `existing-rows-value`, what the rows already there hold in it.
//! The full load writes `load` records, numbered from the snapshot's LSN.
//!
//! A transaction's messages are written at its commit, which gives them their
//! `commit-lsn`; until then they wait in memory, and past 10,000 in a temporary file.
//!
//! Written to a file, the stream keeps its progress in `FILE.progress` (replaced after the
//! file is synced), so a restart resumes after the last transaction written; on stdout
//! the slot's confirmed position is the resume point.

use super::control::{self, ControlError, ControlStore, LoadedTable, MigrationRecord, Phase};
use super::rowsql::added_column_text;
use super::typemap::{cell, json_cell, Cell, Flavor, MapOptions};
use super::{LoadTarget, SourceSettings, Target, TargetError};
use crate::model::batch::Batch;
use crate::model::{ChangeKind, Old, RelInfo, Row, Val};
use pgdms_proto::ddl::DdlObject;
use pgdms_proto::Ddl;
use pgdms_proto::Lsn;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// A cell as JSON (the JSON flavour gives BLOB as base64 text).
fn json_of(c: Cell) -> Value {
    match c {
        Cell::Null | Cell::Blob(_) => Value::Null,
        Cell::Int(i) => json!(i),
        Cell::Real(f) => json!(f),
        Cell::Text(s) => Value::String(s),
    }
}

/// What a file stream remembers across restarts, per slot: the control store's records
/// (`crate::sink::control`), LSNs in their `X/Y` text as in the SQL targets' tables.
#[derive(Serialize, Deserialize, Default, Clone)]
struct SlotProgress {
    /// The control layout's version that wrote it (absent before versioning).
    #[serde(default)]
    version: Option<i64>,
    end_lsn: Option<String>,
    phase: Option<String>,
    consistent_point: Option<String>,
    /// Source oid, source name, snapshot LSN.
    loaded: Vec<(u32, String, String)>,
    /// Load records written so far (their change-index continues from here).
    load_index: u64,
}

pub struct JsonlTarget {
    out: Box<dyn Write + Send>,
    file: Option<std::fs::File>,
    path: Option<PathBuf>,
    progress: BTreeMap<String, SlotProgress>,
    slot: String,
    opts: MapOptions,
    /// The open transaction's messages, without their commit LSN and index yet.
    pending: Pending,
    load_index: u64,
    load_lsn: Lsn,
}

type Message = (Map<String, Value>, Map<String, Value>);

/// The messages of the open source transaction until its commit gives them their
/// `commit-lsn`: the first `SPILL_AFTER` in memory, the rest in a temporary file, so that a
/// transaction of millions of rows does not hold them all in memory.
#[derive(Default)]
struct Pending {
    memory: Vec<Message>,
    spilled: Option<std::io::BufWriter<std::fs::File>>,
}

const SPILL_AFTER: usize = 10_000;

impl Pending {
    fn push(&mut self, m: Message) -> Result<(), TargetError> {
        if self.spilled.is_none() && self.memory.len() < SPILL_AFTER {
            self.memory.push(m);
            return Ok(());
        }
        if self.spilled.is_none() {
            self.spilled = Some(std::io::BufWriter::with_capacity(256 * 1024, tempfile::tempfile().map_err(io)?));
        }
        let out = self.spilled.as_mut().expect("created above");
        serde_json::to_writer(&mut *out, &m).map_err(|e| TargetError::Refused(e.to_string()))?;
        out.write_all(b"\n").map_err(io)
    }

    /// Every message, in order, once: the memory part, then the spilled part read back.
    fn drain(&mut self) -> Result<impl Iterator<Item = Result<Message, TargetError>>, TargetError> {
        use std::io::{BufRead, Seek};
        let memory = std::mem::take(&mut self.memory).into_iter().map(Ok);
        let spilled = match self.spilled.take() {
            None => None,
            Some(w) => {
                let mut f = w.into_inner().map_err(|e| io(e.into_error()))?;
                f.rewind().map_err(io)?;
                Some(std::io::BufReader::with_capacity(256 * 1024, f).lines().map(|line| {
                    let line = line.map_err(io)?;
                    serde_json::from_str::<Message>(&line)
                        .map_err(|e| TargetError::Refused(format!("stream spill: {e}")))
                }))
            }
        };
        Ok(memory.chain(spilled.into_iter().flatten()))
    }

    fn clear(&mut self) {
        self.memory.clear();
        self.spilled = None;
    }
}

fn io(e: std::io::Error) -> TargetError {
    TargetError::Refused(format!("stream: {e}"))
}

/// Microseconds since 2000-01-01 as "2026-11-25T10:00:00.000000Z".
fn iso(micros: i64) -> String {
    let t = Val::Timestamp(micros).to_pg_text().unwrap_or_default();
    let t = t.replacen(' ', "T", 1);
    if t.contains('.') {
        format!("{t:0<26}Z")
    } else {
        format!("{t}.000000Z")
    }
}

fn now_micros() -> i64 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    unix.as_micros() as i64 - 946_684_800_000_000
}

impl JsonlTarget {
    /// `path`: a file (appended to), or None for stdout.
    pub fn open(path: Option<&std::path::Path>, opts: MapOptions) -> Result<Self, TargetError> {
        let (out, file, progress): (Box<dyn Write + Send>, _, _) = match path {
            None => (Box::new(std::io::BufWriter::new(std::io::stdout())), None, BTreeMap::new()),
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| TargetError::Refused(format!("could not open {}: {e}", p.display())))?;
                let progress = match std::fs::read(Self::progress_path(p)) {
                    Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                        TargetError::Refused(format!(
                            "{} is damaged ({e}): remove it to start over",
                            Self::progress_path(p).display()
                        ))
                    })?,
                    Err(_) => BTreeMap::new(),
                };
                let clone = f.try_clone().map_err(io)?;
                (Box::new(std::io::BufWriter::with_capacity(256 * 1024, f)), Some(clone), progress)
            }
        };
        Ok(JsonlTarget {
            out,
            file,
            path: path.map(|p| p.to_path_buf()),
            progress,
            slot: String::new(),
            opts,
            pending: Pending::default(),
            load_index: 0,
            load_lsn: Lsn(0),
        })
    }

    fn progress_path(p: &std::path::Path) -> PathBuf {
        let mut s = p.as_os_str().to_owned();
        s.push(".progress");
        PathBuf::from(s)
    }

    fn values(&self, rel: &RelInfo, cols: &[usize], row: &Row) -> Value {
        let mut m = Map::new();
        for (&i, v) in cols.iter().zip(row) {
            if *v == Val::Unchanged {
                continue; // a TOASTed value the change left as it was: not in the WAL
            }
            let c = &rel.columns[i];
            m.insert(c.name.clone(), json_of(cell(v, c, &self.opts, Flavor::Json).unwrap_or(Cell::Null)));
        }
        Value::Object(m)
    }

    fn metadata(
        &self,
        record_type: &str,
        operation: &str,
        schema: &str,
        table: &str,
        xid: Option<u32>,
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("record-type".into(), json!(record_type));
        m.insert("operation".into(), json!(operation));
        m.insert("partition-key-type".into(), json!("schema-table"));
        m.insert("schema-name".into(), json!(schema));
        m.insert("table-name".into(), json!(table));
        if let Some(x) = xid {
            m.insert("transaction-id".into(), json!(x));
        }
        m
    }

    fn push(&mut self, body: Map<String, Value>, metadata: Map<String, Value>) -> Result<(), TargetError> {
        self.pending.push((body, metadata))
    }

    fn write(
        &mut self,
        mut body: Map<String, Value>,
        mut metadata: Map<String, Value>,
        lsn: Lsn,
        index: u64,
        time: i64,
    ) -> Result<(), TargetError> {
        let mut ordered = Map::new();
        ordered.insert("timestamp".into(), json!(iso(time)));
        ordered.append(&mut metadata);
        ordered.insert("commit-lsn".into(), json!(lsn.to_string()));
        ordered.insert("change-index".into(), json!(index));
        body.insert("metadata".into(), Value::Object(ordered));
        serde_json::to_writer(&mut self.out, &Value::Object(body)).map_err(|e| TargetError::Refused(e.to_string()))?;
        self.out.write_all(b"\n").map_err(io)
    }

    /// Flushes what was written, syncs a file and then its progress.
    fn sync(&mut self) -> Result<(), TargetError> {
        self.out.flush().map_err(io)?;
        if let (Some(f), Some(p)) = (&self.file, &self.path) {
            f.sync_data().map_err(io)?;
            let tmp = Self::progress_path(p).with_extension("progress.tmp");
            std::fs::write(&tmp, serde_json::to_vec(&self.progress).unwrap_or_default()).map_err(io)?;
            std::fs::rename(&tmp, Self::progress_path(p)).map_err(io)?;
        }
        Ok(())
    }

    /// Writes the load records gathered so far, numbered on from the last one written.
    fn write_load(&mut self, snapshot_lsn: Lsn) -> Result<(), TargetError> {
        self.load_lsn = snapshot_lsn;
        let now = now_micros();
        for m in self.pending.drain()? {
            let (body, meta) = m?;
            let index = self.load_index;
            self.load_index += 1;
            self.write(body, meta, snapshot_lsn, index, now)?;
        }
        Ok(())
    }

    /// The progress file's name, for messages.
    fn store_name(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "the stream's progress".to_string(), |p| Self::progress_path(p).display().to_string())
    }

    fn slot_progress(&mut self) -> &mut SlotProgress {
        self.progress.entry(self.slot.clone()).or_default()
    }

    fn control(&mut self, operation: &str, schema: &str, table: &str, data: Value) -> Result<(), TargetError> {
        let meta = self.metadata("control", operation, schema, table, None);
        let mut body = Map::new();
        body.insert("data".into(), data);
        self.push(body, meta)
    }
}

impl Target for JsonlTarget {
    async fn start(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        self.slot = slot.to_string();
        let progress = self.slot_progress();
        match progress.version {
            Some(v) if v > control::CONTROL_VERSION => return Err(ControlError::Newer { found: v }.into()),
            _ => progress.version = Some(control::CONTROL_VERSION),
        }
        let end = progress.end_lsn.clone();
        let store = self.store_name();
        Ok(end.map(|l| control::parse_lsn(&store, "end_lsn", slot, &l)).transpose()?)
    }

    async fn configure(&mut self, _: &SourceSettings) -> Result<(), TargetError> {
        Ok(())
    }

    async fn apply(&mut self, batch: &Batch) -> Result<(), TargetError> {
        for c in &batch.raw {
            let rel = &c.rel;
            let all: Vec<usize> = (0..rel.columns.len()).collect();
            let keys = rel.key_indices();
            let (op, data, before) = match &c.kind {
                ChangeKind::Insert { new } => ("insert", self.values(rel, &all, new), None),
                ChangeKind::Update { old, new } => {
                    let before = match old {
                        Old::Full(r) => Some(self.values(rel, &all, r)),
                        Old::Key(k) => Some(self.values(rel, &keys, k)),
                        Old::None => None,
                    };
                    ("update", self.values(rel, &all, new), before)
                }
                ChangeKind::Delete { old } => {
                    let before = match old {
                        Old::Full(r) => self.values(rel, &all, r),
                        Old::Key(k) => self.values(rel, &keys, k),
                        Old::None => json!({}),
                    };
                    // The reference's delete message carries the row's key in "data".
                    ("delete", before.clone(), Some(before))
                }
            };
            let meta = self.metadata("data", op, &rel.schema, &rel.name, Some(c.xid));
            let mut body = Map::new();
            body.insert("data".into(), data);
            if let Some(b) = before {
                body.insert("before-image".into(), b);
            }
            self.push(body, meta)?;
        }
        Ok(())
    }

    async fn truncate(&mut self, rels: &[Arc<RelInfo>], restart_identity: bool, _lsn: Lsn) -> Result<(), TargetError> {
        for rel in rels {
            self.control("truncate", &rel.schema, &rel.name, json!({"restart-identity": restart_identity}))?;
        }
        Ok(())
    }

    async fn ddl(&mut self, ddl: &Ddl, _lsn: Lsn) -> Result<(), TargetError> {
        let DdlObject::Table { before, after } = &ddl.object else { return Ok(()) };
        let columns = |t: &pgdms_proto::ddl::TableDef| {
            Value::Object(t.columns.iter().map(|c| (c.name.clone(), json!(c.type_sql))).collect())
        };
        match (before, after) {
            (None, Some(a)) => self.control("create-table", &a.schema, &a.name, json!({"columns": columns(a)}))?,
            (Some(b), None) => self.control("drop-table", &b.schema, &b.name, json!({}))?,
            (Some(b), Some(a)) => {
                for bc in &b.columns {
                    match a.columns.iter().find(|ac| ac.attnum == bc.attnum) {
                        None => self.control("drop-column", &b.schema, &b.name, json!({"column": bc.name}))?,
                        Some(ac) if ac.name != bc.name => self.control(
                            "rename-column",
                            &b.schema,
                            &b.name,
                            json!({"column": bc.name, "new-name": ac.name}),
                        )?,
                        Some(ac) if ac.type_sql != bc.type_sql => self.control(
                            "column-type-change",
                            &b.schema,
                            &b.name,
                            json!({"column": ac.name, "old-type": bc.type_sql, "new-type": ac.type_sql}),
                        )?,
                        Some(_) => {}
                    }
                }
                for ac in a.columns.iter().filter(|ac| !b.columns.iter().any(|bc| bc.attnum == ac.attnum)) {
                    // What the rows already there hold in it: the source gave them a value
                    // no later change carries.
                    let existing = added_column_text(ac)
                        .and_then(|text| Val::from_pg_text(ac.type_oid, &text))
                        .map_or(Value::Null, |v| json_of(json_cell(&v, &self.opts)));
                    self.control(
                        "add-column",
                        &b.schema,
                        &b.name,
                        json!({"column": ac.name, "type": ac.type_sql, "not-null": ac.not_null,
                               "existing-rows-value": existing}),
                    )?;
                }
                if (a.schema.as_str(), a.name.as_str()) != (b.schema.as_str(), b.name.as_str()) {
                    self.control(
                        "rename-table",
                        &b.schema,
                        &b.name,
                        json!({"new-schema-name": a.schema, "new-table-name": a.name}),
                    )?;
                }
            }
            (None, None) => {}
        }
        Ok(())
    }

    async fn ensure_table(&mut self, _: &RelInfo, _: Lsn) -> Result<(), TargetError> {
        Ok(())
    }

    async fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), TargetError> {
        // Written as read back: a spilled transaction is never whole in memory.
        for (i, m) in self.pending.drain()?.enumerate() {
            let (body, meta) = m?;
            self.write(body, meta, end_lsn, i as u64, commit_time)?;
        }
        self.slot_progress().end_lsn = Some(end_lsn.to_string());
        self.sync()
    }

    async fn rollback(&mut self) -> Result<(), TargetError> {
        self.pending.clear();
        Ok(())
    }

    fn group_per_transaction(&self) -> bool {
        true
    }
}

impl ControlStore for JsonlTarget {
    async fn migration(&mut self, slot: &str) -> Result<Option<MigrationRecord>, TargetError> {
        let Some(p) = self.progress.get(slot) else { return Ok(None) };
        let Some(phase) = &p.phase else { return Ok(None) };
        let point = p.consistent_point.as_deref().unwrap_or_default();
        Ok(Some(MigrationRecord::parse(&self.store_name(), slot, phase, point)?))
    }

    async fn begin_migration(&mut self, slot: &str, record: MigrationRecord) -> Result<(), TargetError> {
        let p = self.progress.entry(slot.to_string()).or_default();
        p.phase = Some(record.phase.as_str().to_string());
        p.consistent_point = Some(record.consistent_point.to_string());
        self.sync()
    }

    async fn set_phase(&mut self, slot: &str, phase: Phase) -> Result<bool, TargetError> {
        let Some(p) = self.progress.get_mut(slot).filter(|p| p.phase.is_some()) else { return Ok(false) };
        p.phase = Some(phase.as_str().to_string());
        self.sync()?;
        Ok(true)
    }

    async fn forget_migration(&mut self, slot: &str) -> Result<(), TargetError> {
        if let Some(p) = self.progress.get_mut(slot) {
            p.phase = None;
            p.consistent_point = None;
            p.loaded.clear();
        }
        self.sync()
    }

    async fn loaded_tables(&mut self, slot: &str) -> Result<Vec<LoadedTable>, TargetError> {
        let store = self.store_name();
        let Some(p) = self.progress.get(slot) else { return Ok(Vec::new()) };
        self.load_index = p.load_index;
        p.loaded.iter().map(|(oid, name, lsn)| Ok(LoadedTable::parse(&store, slot, *oid, name.clone(), lsn)?)).collect()
    }
}

impl LoadTarget for JsonlTarget {
    async fn load_begin(&mut self, rel: &RelInfo, snapshot_lsn: Lsn) -> Result<(), TargetError> {
        let columns: Map<String, Value> = rel
            .columns
            .iter()
            .map(|c| (c.name.clone(), json!(super::typemap::dms_type(c, &self.opts).to_string())))
            .collect();
        self.control("create-table", &rel.schema, &rel.name, json!({"columns": columns}))?;
        self.write_load(snapshot_lsn)
    }

    async fn load_rows(&mut self, rel: &RelInfo, rows: &[Row]) -> Result<(), TargetError> {
        let all: Vec<usize> = (0..rel.columns.len()).collect();
        for row in rows {
            let meta = self.metadata("data", "load", &rel.schema, &rel.name, None);
            let mut body = Map::new();
            body.insert("data".into(), self.values(rel, &all, row));
            self.push(body, meta)?;
        }
        let lsn = self.load_lsn;
        self.write_load(lsn)
    }

    async fn load_end(
        &mut self,
        rel: &RelInfo,
        source_name: &str,
        slot: &str,
        snapshot_lsn: Lsn,
    ) -> Result<(), TargetError> {
        self.write_load(snapshot_lsn)?;
        let load_index = self.load_index;
        let p = self.progress.entry(slot.to_string()).or_default();
        p.loaded.retain(|(o, _, _)| *o != rel.oid);
        p.loaded.push((rel.oid, source_name.to_string(), snapshot_lsn.to_string()));
        p.load_index = load_index;
        self.sync()
    }
}

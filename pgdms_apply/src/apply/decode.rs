//! Records become events: the plugin's records, decoded from each message, turned into the
//! owned model types (`crate::model`) the apply keeps until their group commits.

use super::Reloaded;
use crate::mapping::Mapping;
use crate::model::{Change, ChangeKind, ColumnInfo, Old, RelInfo, Row, Val};
use crate::sink::postgres::CONTROL_SCHEMA;
use crate::sql::quote_ident;
use bytes::Bytes;
use pgdms_proto::ddl::DdlObject;
use pgdms_proto::Lsn;
use pgdms_proto::{Ddl, Delete, Insert, OldImage, Record, Records, Update, Value};
use std::sync::Arc;

fn row(values: &[Value<'_>], msg: &Bytes) -> Row {
    values.iter().map(|v| Val::from_wire(v, msg)).collect()
}

/// What the apply receives, in stream order.
#[derive(Debug, Clone)]
pub enum Event {
    Begin {
        commit_lsn: Lsn,
        commit_time: i64,
    },
    Change(Change),
    Truncate {
        rels: Vec<Arc<RelInfo>>,
        restart_identity: bool,
        lsn: Lsn,
    },
    Commit {
        end_lsn: Lsn,
        commit_time: i64,
    },
    /// The source described a table anew (its columns may have changed).
    Relation(Arc<RelInfo>),
    /// A DDL command of the current transaction, at its place among the row changes.
    Ddl {
        ddl: Arc<Ddl>,
        lsn: Lsn,
    },
    /// The decoding session's settings that value texts depend on.
    Settings(crate::sink::SourceSettings),
    /// A message that claimed to be pgdms's and was not: dropped by the source's plugin,
    /// reported here.
    Rejected(Rejected),
    /// Between transactions, the source has sent everything up to this WAL position.
    Idle(Lsn),
}

/// A forged message the plugin dropped (see `pgdms_proto::Rejected`).
#[derive(Debug, Clone)]
pub struct Rejected {
    pub lsn: Lsn,
    /// The transaction that sent it (None: sent outside a transaction).
    pub xid: Option<u32>,
    pub prefix: String,
    pub content_len: u64,
    /// Its first bytes, for the log (escaped there).
    pub preview: String,
}

/// Every row of a change has one value per column (key images one per key column): the
/// apply indexes rows by column, so a malformed stream must stop here, not panic later.
fn check_shape(c: &Change) -> Result<(), EventError> {
    let columns = c.rel.columns.len();
    let keys = c.rel.key_indices().len();
    let rows: Vec<(&Row, usize)> = match &c.kind {
        ChangeKind::Insert { new } => vec![(new, columns)],
        ChangeKind::Update { old, new } => {
            let mut v = vec![(new, columns)];
            match old {
                Old::Full(r) => v.push((r, columns)),
                Old::Key(k) => v.push((k, keys)),
                Old::None => {}
            }
            v
        }
        ChangeKind::Delete { old: Old::Full(r) } => vec![(r, columns)],
        ChangeKind::Delete { old: Old::Key(k) } => vec![(k, keys)],
        ChangeKind::Delete { old: Old::None } => vec![],
    };
    match rows.into_iter().find(|(r, want)| r.len() != *want) {
        Some((r, want)) => Err(EventError::Shape { table: c.rel.qualified(), lsn: c.lsn, got: r.len(), want }),
        None => Ok(()),
    }
}

/// Turns records into events, keeping the latest description of each table.
#[derive(Default)]
pub struct EventDecoder {
    relations: std::collections::HashMap<u32, Arc<RelInfo>>,
    xid: u32,
    begin_lsn: u64,
    /// Table mappings: which tables, under which names, with which columns.
    mapping: Option<Arc<Mapping>>,
    /// Tables the mappings leave out.
    excluded: std::collections::HashSet<u32>,
    /// Per table with columns the mappings remove: the indices of those kept.
    kept: std::collections::HashMap<u32, Vec<usize>>,
    /// Tables reloaded from a later snapshot: their rows and DDL committed before it are in
    /// the reloaded copy already (and replaying a DROP and CREATE of it would empty the copy).
    reloaded: Reloaded,
    commit_lsn: Lsn,
    /// Source names of the tables, by oid (a table dropped and created again under the same
    /// name has a new oid).
    source_names: std::collections::HashMap<u32, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Decode(#[from] pgdms_proto::DecodeError),
    #[error("a change at {lsn} names relation {oid}, which no relation record described")]
    UnknownRelation { oid: u32, lsn: Lsn },
    #[error("the stream uses pgdms proto_version {0}, this pgdms-apply speaks {PROTO}", PROTO = pgdms_proto::PROTO_VERSION)]
    Version(u32),
    #[error("a change at {lsn} of {table} carries {got} values where its relation record describes {want}")]
    Shape { table: String, lsn: Lsn, got: usize, want: usize },
    #[error("the relation record of {table}: {refused}")]
    Refused { table: String, refused: crate::sql::checked::Refused },
}

impl EventDecoder {
    pub fn with_mapping(mapping: Option<Arc<Mapping>>) -> Self {
        EventDecoder { mapping: mapping.filter(|m| !m.is_identity()), ..Default::default() }
    }

    /// Tables reloaded from a later snapshot, with the LSN of that snapshot.
    pub fn with_reloaded(mut self, reloaded: Reloaded) -> Self {
        self.reloaded = reloaded;
        self
    }

    /// A row of `oid` without the columns the mappings remove.
    fn project(&self, oid: u32, row: Row) -> Row {
        match self.kept.get(&oid) {
            Some(kept) => kept.iter().map(|&i| row[i].clone()).collect(),
            None => row,
        }
    }

    fn rel(&self, oid: u32, lsn: Lsn) -> Result<Arc<RelInfo>, EventError> {
        self.relations.get(&oid).cloned().ok_or(EventError::UnknownRelation { oid, lsn })
    }

    /// Decodes one message (one or more records) into `out`; records the apply does not
    /// act on are passed over.
    pub fn decode(&mut self, msg: &Bytes, out: &mut Vec<Event>) -> Result<(), EventError> {
        for record in Records::new(msg) {
            if let Some(event) = self.event(msg, record?)? {
                out.push(event);
            }
        }
        Ok(())
    }

    /// A change of a table reloaded from a later snapshot, committed before it: in the copy.
    fn in_reload(&self, oid: u32) -> bool {
        let by_oid = self.reloaded.by_oid.get(&oid);
        let by_name = || self.source_names.get(&oid).and_then(|name| self.reloaded.by_name.get(name));
        by_oid.or_else(by_name).is_some_and(|at| self.commit_lsn < *at)
    }

    fn event(&mut self, msg: &Bytes, record: Record<'_>) -> Result<Option<Event>, EventError> {
        if let Record::Insert(Insert { relation, .. })
        | Record::Update(Update { relation, .. })
        | Record::Delete(Delete { relation, .. }) = &record
        {
            if self.in_reload(*relation) {
                return Ok(None);
            }
        }
        if !self.excluded.is_empty() {
            match &record {
                Record::Insert(Insert { relation, .. })
                | Record::Update(Update { relation, .. })
                | Record::Delete(Delete { relation, .. })
                    if self.excluded.contains(relation) =>
                {
                    return Ok(None)
                }
                _ => {}
            }
        }
        let event = self.event_unchecked(msg, record)?;
        if let Some(Event::Change(c)) = &event {
            check_shape(c)?;
        }
        Ok(event)
    }

    fn event_unchecked(&mut self, msg: &Bytes, record: Record<'_>) -> Result<Option<Event>, EventError> {
        let old = |o: &Option<OldImage<'_>>| match o {
            None => Old::None,
            Some(OldImage::Key(v)) => Old::Key(row(v, msg)),
            Some(OldImage::Full(v)) => Old::Full(row(v, msg)),
        };
        let lsn = |offset: u64| Lsn(self.begin_lsn + offset);
        let change = |rel, kind, offset| Event::Change(Change { rel, kind, lsn: lsn(offset), xid: self.xid });
        Ok(Some(match &record {
            Record::Startup(s) => {
                if s.proto_version != pgdms_proto::PROTO_VERSION {
                    return Err(EventError::Version(s.proto_version));
                }
                Event::Settings(crate::sink::SourceSettings {
                    date_style: Some(s.date_style.to_string()),
                    interval_style: Some(s.interval_style.to_string()),
                })
            }
            Record::Begin(b) => {
                self.xid = b.xid;
                self.begin_lsn = b.begin_lsn.0;
                self.commit_lsn = b.commit_lsn;
                Event::Begin { commit_lsn: b.commit_lsn, commit_time: b.commit_time }
            }
            Record::Commit(c) => Event::Commit { end_lsn: c.end_lsn, commit_time: c.commit_time },
            Record::Relation(r) => {
                if !self.reloaded.by_name.is_empty() {
                    self.source_names.insert(r.oid, format!("{}.{}", quote_ident(r.schema), quote_ident(r.name)));
                }
                let (mut schema, mut name) = (r.schema.to_string(), r.name.to_string());
                let mut kept: Vec<usize> = (0..r.columns.len()).collect();
                let mut names: Vec<String> = r.columns.iter().map(|c| c.name.to_string()).collect();
                if r.schema == CONTROL_SCHEMA {
                    // A source that is a migration's target too keeps that migration's state
                    // here: not data, and never to be written into this target's own.
                    self.excluded.insert(r.oid);
                    self.relations.remove(&r.oid);
                    return Ok(None);
                }
                if let Some(m) = &self.mapping {
                    if !m.includes(r.schema, r.name) {
                        self.excluded.insert(r.oid);
                        self.relations.remove(&r.oid);
                        return Ok(None);
                    }
                    self.excluded.remove(&r.oid);
                    (schema, name) = m.table(r.schema, r.name);
                    kept.clear();
                    for (i, c) in r.columns.iter().enumerate() {
                        match m.column(r.schema, r.name, c.name) {
                            Some(n) => {
                                names[i] = n;
                                kept.push(i);
                            }
                            // A key column identifies rows on the target: it stays.
                            None if c.key => {
                                tracing::warn!(table = %r.name, column = %c.name, "a table mapping removes a key column: kept, updates and deletes need it");
                                kept.push(i);
                            }
                            None => {}
                        }
                    }
                }
                if kept.len() < r.columns.len() {
                    self.kept.insert(r.oid, kept.clone());
                } else {
                    self.kept.remove(&r.oid);
                }
                // Type names go into the target's statements (casts, staging tables): each
                // must be one type name and nothing else.
                for c in &r.columns {
                    for text in [c.type_sql, c.type_name] {
                        crate::sql::checked::type_name(text).map_err(|refused| EventError::Refused {
                            table: format!("{}.{}", quote_ident(r.schema), quote_ident(r.name)),
                            refused,
                        })?;
                    }
                }
                let info = Arc::new(RelInfo {
                    oid: r.oid,
                    schema,
                    name,
                    replica_identity: r.replica_identity,
                    columns: kept
                        .iter()
                        .map(|&i| {
                            let c = &r.columns[i];
                            ColumnInfo {
                                name: names[i].clone(),
                                type_oid: c.type_oid,
                                type_sql: c.type_sql.to_string(),
                                type_name: c.type_name.to_string(),
                                type_modifier: c.type_modifier,
                                key: c.key,
                                primary_key: c.primary_key,
                                generated: c.generated,
                                identity: c.identity,
                                not_null: c.not_null,
                                dms_type: c.dms_type,
                            }
                        })
                        .collect(),
                });
                self.relations.insert(r.oid, info.clone());
                Event::Relation(info)
            }
            Record::Insert(i) => change(
                self.rel(i.relation, lsn(i.lsn_offset))?,
                ChangeKind::Insert { new: self.project(i.relation, row(&i.new, msg)) },
                i.lsn_offset,
            ),
            Record::Update(u) => change(
                self.rel(u.relation, lsn(u.lsn_offset))?,
                ChangeKind::Update {
                    old: match old(&u.old) {
                        Old::Full(r) => Old::Full(self.project(u.relation, r)),
                        other => other,
                    },
                    new: self.project(u.relation, row(&u.new, msg)),
                },
                u.lsn_offset,
            ),
            Record::Delete(d) => {
                let old = match old(&d.old) {
                    Old::Full(r) => Old::Full(self.project(d.relation, r)),
                    other => other,
                };
                change(self.rel(d.relation, lsn(d.lsn_offset))?, ChangeKind::Delete { old }, d.lsn_offset)
            }
            Record::Truncate(t) => {
                let rels: Vec<Arc<RelInfo>> = t
                    .relations
                    .iter()
                    .filter(|oid| !self.excluded.contains(oid) && !self.in_reload(**oid))
                    .map(|oid| self.rel(*oid, lsn(t.lsn_offset)))
                    .collect::<Result<_, _>>()?;
                if rels.is_empty() {
                    return Ok(None);
                }
                Event::Truncate { rels, restart_identity: t.restart_identity, lsn: lsn(t.lsn_offset) }
            }
            Record::Ddl(d) => {
                if in_control_schema(&d.object) {
                    return Ok(None);
                }
                if let DdlObject::Table { before, after } = &d.object {
                    let in_reload = [before.as_ref(), after.as_ref()].into_iter().flatten().any(|def| {
                        let name = format!("{}.{}", quote_ident(&def.schema), quote_ident(&def.name));
                        self.reloaded
                            .by_oid
                            .get(&def.oid)
                            .or(self.reloaded.by_name.get(&name))
                            .is_some_and(|at| self.commit_lsn < *at)
                    });
                    if in_reload {
                        return Ok(None);
                    }
                }
                let mut ddl = d.clone();
                if let (Some(m), DdlObject::Table { before, after }) = (&self.mapping, &mut ddl.object) {
                    let kept = [before.as_mut(), after.as_mut()].into_iter().flatten().all(|def| m.map_table_def(def));
                    if !kept {
                        return Ok(None);
                    }
                }
                Event::Ddl { ddl: Arc::new(ddl), lsn: lsn(0) }
            }
            // A DDL message the plugin could not read: the apply must not pass over it.
            Record::Message(m) if m.transactional && m.prefix == pgdms_proto::DDL_MESSAGE_PREFIX => Event::Ddl {
                ddl: Arc::new(Ddl {
                    command_tag: "DDL".into(),
                    object_identity: String::new(),
                    query: String::from_utf8_lossy(m.content).into_owned(),
                    object: DdlObject::CaptureFailed {
                        error: "the source sent a DDL message its plugin could not read (pgdms versions differ?)"
                            .into(),
                    },
                }),
                lsn: m.lsn,
            },
            Record::Rejected(r) => Event::Rejected(Rejected {
                lsn: r.lsn,
                xid: r.transactional.then_some(self.xid),
                prefix: r.prefix.to_string(),
                content_len: r.content_len,
                preview: String::from_utf8_lossy(r.preview).into_owned(),
            }),
            // Other messages and the reserved kinds carry nothing to apply.
            _ => return Ok(None),
        }))
    }
}

/// DDL on pgdms-apply's control schema (of a source that is also a migration's target).
fn in_control_schema(object: &DdlObject) -> bool {
    let control = |schema: &str| schema == CONTROL_SCHEMA;
    match object {
        DdlObject::Table { before, after } => [before, after].into_iter().flatten().any(|d| control(&d.schema)),
        DdlObject::Type { before, after } => [before, after].into_iter().flatten().any(|d| control(&d.schema)),
        DdlObject::Schema { before, after } => [before, after].into_iter().flatten().any(|d| control(&d.name)),
        DdlObject::Rewrite { schema, .. } => control(schema),
        DdlObject::CaptureFailed { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdms_proto::{Column, DmsType, Identity, Insert, RelKind, Relation, ReplicaIdentity};

    #[test]
    fn a_row_that_does_not_fit_its_relation_is_an_error_not_a_panic() {
        let column = |name| Column {
            attnum: 1,
            name,
            type_oid: 23,
            type_name: "integer",
            type_sql: "integer",
            type_modifier: -1,
            not_null: false,
            default: None,
            collation: None,
            generated: false,
            identity: Identity::None,
            key: false,
            primary_key: false,
            dms_type: DmsType::Int4,
            dms_fallback: false,
        };
        let mut msg = Vec::new();
        Record::Relation(Relation {
            oid: 7,
            schema: "s",
            name: "t",
            kind: RelKind::Table,
            replica_identity: ReplicaIdentity::Default,
            partition_parent: None,
            columns: vec![column("a"), column("b")],
        })
        .encode_into(&mut msg);
        Record::Insert(Insert { relation: 7, lsn_offset: 0, new: vec![Value::Int4(1)] }).encode_into(&mut msg);
        let mut events = Vec::new();
        let err = EventDecoder::default().decode(&Bytes::from(msg), &mut events).unwrap_err();
        assert!(matches!(err, EventError::Shape { got: 1, want: 2, .. }), "{err}");
    }
}

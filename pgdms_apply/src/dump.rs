//! `pgdms-apply dump`: a slot's records as JSON lines.
//!
//! Every value is shown as PostgreSQL's text form of it (what `column::text` gives on the
//! source with `DateStyle = ISO` and `TimeZone = UTC`), NULL as `null`, and an unchanged
//! TOASTed value as `{"unchanged_toast": true}`.

use crate::pgconn::ConnInfo;
use crate::stream::replication::{IDLE_PROBE, STATUS_INTERVAL};
use crate::stream::{ReplicationConnection, StreamMessage};
use anyhow::Context;
use pgdms_proto::Lsn;
use pgdms_proto::{OldImage, Options, Record, Records, Relation, Value};
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

/// What a change needs to know of its table.
struct TableInfo {
    schema: String,
    name: String,
    columns: Vec<String>,
    key_columns: Vec<String>,
}

/// Turns records into JSON, remembering relation records to name tables and columns.
#[derive(Default)]
pub struct JsonRenderer {
    tables: HashMap<u32, TableInfo>,
    xid: Option<u32>,
    begin_lsn: u64,
}

fn lsn(l: Lsn) -> String {
    l.to_string()
}

fn timestamp(t: i64) -> Json {
    Value::TimestampTz(t).to_pg_text().map(|s| Json::String(s.into_owned())).unwrap_or(Json::Null)
}

pub fn value_json(v: &Value<'_>) -> Json {
    match v {
        Value::UnchangedToast => json!({ "unchanged_toast": true }),
        v => v.to_pg_text().map(|s| Json::String(s.into_owned())).unwrap_or(Json::Null),
    }
}

fn row<'a>(names: impl Iterator<Item = &'a String>, values: &[Value<'_>]) -> Json {
    Json::Object(names.zip(values).map(|(n, v)| (n.clone(), value_json(v))).collect::<Map<_, _>>())
}

fn relation_json(r: &Relation<'_>) -> Json {
    let columns: Vec<Json> = r
        .columns
        .iter()
        .map(|c| {
            let mut col = json!({
                "attnum": c.attnum,
                "name": c.name,
                "type": c.type_name,
                "type_sql": c.type_sql,
                "type_oid": c.type_oid,
                "type_modifier": c.type_modifier,
                "not_null": c.not_null,
                "default": c.default,
                "collation": c.collation,
                "generated": c.generated,
                "identity": format!("{:?}", c.identity).to_lowercase(),
                "key": c.key,
                "primary_key": c.primary_key,
                "dms_type": c.dms_type.to_string(),
                "dms_fallback": c.dms_fallback,
            });
            match c.dms_type {
                pgdms_proto::DmsType::Timestamp { utc: true } => col["dms_utc"] = json!(true),
                pgdms_proto::DmsType::Time { with_offset: true } => col["dms_with_offset"] = json!(true),
                _ => {}
            }
            col
        })
        .collect();
    json!({
        "type": "relation",
        "oid": r.oid,
        "schema": r.schema,
        "name": r.name,
        "kind": match r.kind { pgdms_proto::RelKind::Table => "table", pgdms_proto::RelKind::PartitionedTable => "partitioned_table" },
        "replica_identity": format!("{:?}", r.replica_identity).to_lowercase(),
        "partition_parent": r.partition_parent.as_ref().map(|p| json!({"oid": p.oid, "schema": p.schema, "name": p.name})),
        "columns": columns,
    })
}

impl JsonRenderer {
    fn table(&self, oid: u32) -> anyhow::Result<&TableInfo> {
        self.tables.get(&oid).with_context(|| {
            format!("a change names relation {oid} before any relation record described it; is this a pgdms stream?")
        })
    }

    fn old_json(&self, t: &TableInfo, old: &Option<OldImage<'_>>) -> (Json, Json) {
        match old {
            None => (Json::Null, Json::Null),
            Some(OldImage::Key(v)) => (row(t.key_columns.iter(), v), json!("key")),
            Some(OldImage::Full(v)) => (row(t.columns.iter(), v), json!("full")),
        }
    }

    /// The JSON of one record.
    pub fn render(&mut self, record: &Record<'_>) -> anyhow::Result<Json> {
        let begin_lsn = self.begin_lsn;
        let at = |offset: u64| Lsn(begin_lsn + offset).to_string();
        let change = |kind: &str, t: &TableInfo, offset: u64| json!({"type": kind, "lsn": at(offset), "xid": self.xid, "schema": t.schema, "table": t.name});
        Ok(match record {
            Record::Startup(s) => json!({
                "type": "startup",
                "proto_version": s.proto_version,
                "plugin_version": s.plugin_version,
                "server_version": s.server_version,
                "server_version_num": s.server_version_num,
                "server_encoding": s.server_encoding,
                "database": s.database,
                "date_style": s.date_style,
                "interval_style": s.interval_style,
                "extra_float_digits": s.extra_float_digits,
            }),
            Record::Begin(b) => {
                self.xid = Some(b.xid);
                self.begin_lsn = b.begin_lsn.0;
                json!({"type": "begin", "xid": b.xid, "begin_lsn": lsn(b.begin_lsn), "commit_lsn": lsn(b.commit_lsn), "commit_time": timestamp(b.commit_time)})
            }
            Record::Commit(c) => {
                self.xid = None;
                json!({"type": "commit", "xid": c.xid, "commit_lsn": lsn(c.commit_lsn), "end_lsn": lsn(c.end_lsn), "commit_time": timestamp(c.commit_time)})
            }
            Record::Relation(r) => {
                self.tables.insert(
                    r.oid,
                    TableInfo {
                        schema: r.schema.to_string(),
                        name: r.name.to_string(),
                        columns: r.columns.iter().map(|c| c.name.to_string()).collect(),
                        key_columns: r.columns.iter().filter(|c| c.key).map(|c| c.name.to_string()).collect(),
                    },
                );
                relation_json(r)
            }
            Record::Insert(i) => {
                let t = self.table(i.relation)?;
                let mut j = change("insert", t, i.lsn_offset);
                j["new"] = row(t.columns.iter(), &i.new);
                j
            }
            Record::Update(u) => {
                let t = self.table(u.relation)?;
                let mut j = change("update", t, u.lsn_offset);
                let (old, old_kind) = self.old_json(t, &u.old);
                j["old"] = old;
                j["old_kind"] = old_kind;
                j["new"] = row(t.columns.iter(), &u.new);
                j
            }
            Record::Delete(d) => {
                let t = self.table(d.relation)?;
                let mut j = change("delete", t, d.lsn_offset);
                let (old, old_kind) = self.old_json(t, &d.old);
                j["old"] = old;
                j["old_kind"] = old_kind;
                j
            }
            Record::Truncate(tr) => {
                let tables = tr
                    .relations
                    .iter()
                    .map(|oid| self.table(*oid).map(|t| json!({"schema": t.schema, "table": t.name})))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                json!({"type": "truncate", "lsn": at(tr.lsn_offset), "xid": self.xid, "tables": tables, "restart_identity": tr.restart_identity, "cascade": tr.cascade})
            }
            Record::Message(m) => json!({
                "type": "message",
                "lsn": lsn(m.lsn),
                "transactional": m.transactional,
                "prefix": m.prefix,
                "content": String::from_utf8_lossy(m.content),
                "content_hex": m.content.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            }),
            Record::Ddl(d) => {
                // command_tag, object_identity, query, and the object's definitions.
                let mut j = json!({"type": "ddl", "xid": self.xid});
                if let Json::Object(fields) = serde_json::to_value(d)? {
                    if let Some(o) = j.as_object_mut() {
                        o.extend(fields);
                    }
                }
                j
            }
            Record::Rejected(r) => json!({
                "type": "rejected",
                "lsn": lsn(r.lsn),
                "xid": if r.transactional { self.xid } else { None },
                "transactional": r.transactional,
                "prefix": r.prefix,
                "content_len": r.content_len,
                "content_preview": String::from_utf8_lossy(r.preview),
            }),
            other => json!({"type": "reserved", "record": format!("{other:?}")}),
        })
    }
}

pub struct DumpOptions {
    pub slot: String,
    pub create_slot: bool,
    pub temporary_slot: bool,
    pub start_lsn: Lsn,
    pub endpos: Option<Lsn>,
    pub plugin_options: Options,
    /// Confirm what was written to the slot, so that it moves on. Off by default: a slot
    /// is usually a migration's, and changes confirmed here would never reach its target.
    pub ack: bool,
}

/// Streams the slot to `out` until `--endpos`, the end of the stream, or `shutdown`.
pub async fn run(
    source: &ConnInfo,
    opts: &DumpOptions,
    out: &mut impl Write,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut conn = ReplicationConnection::connect(source).await?;
    if opts.create_slot {
        let slot = conn
            .create_slot(&opts.slot, opts.temporary_slot, false)
            .await
            .with_context(|| format!("could not create replication slot \"{}\"", opts.slot))?;
        tracing::info!(slot = %slot.name, consistent_point = %slot.consistent_point, "created replication slot");
    }
    let plugin_options = opts.plugin_options.to_pairs();
    let mut stream = conn
        .start_replication(&opts.slot, opts.start_lsn, &plugin_options)
        .await
        .with_context(|| format!("could not start streaming from slot \"{}\"", opts.slot))?;
    tracing::info!(slot = %opts.slot, "streaming");

    let mut renderer = JsonRenderer::default();
    // Everything up to `flushed` has been written out: with --ack, the server may forget it.
    let mut flushed = opts.start_lsn;
    // What the status updates confirm: `flushed` with --ack; else nothing (an invalid
    // position, which the walsender takes as "no confirmation"), so the slot stays where it
    // was and the changes stay there for their consumer.
    let confirm = |flushed: Lsn| if opts.ack { flushed } else { Lsn(0) };
    let mut in_txn = false;
    let mut last_status = Instant::now();
    let mut line = Vec::with_capacity(4096);
    tokio::pin!(shutdown);
    let reached = |l: Lsn| opts.endpos.is_some_and(|e| l >= e);

    loop {
        let msg = tokio::select! {
            biased;
            _ = &mut shutdown => { tracing::info!("interrupted"); break; }
            msg = stream.recv() => msg?,
            _ = tokio::time::sleep(IDLE_PROBE), if opts.endpos.is_some() && !in_txn => {
                // Ask where the server is; it answers with a keepalive.
                stream.send_status(flushed, confirm(flushed), confirm(flushed), true).await?;
                continue;
            }
        };
        let Some(msg) = msg else { break };
        match msg {
            StreamMessage::XLogData { wal_start, data, .. } => {
                // A message holds a whole transaction (or part of a large one) or a record
                // outside any; it is sent at the position of its last record.
                if !in_txn && opts.endpos.is_some_and(|e| wal_start > e) {
                    break;
                }
                let mut commit_end = None;
                for record in Records::new(&data) {
                    let record = record.with_context(|| format!("at {wal_start}"))?;
                    match &record {
                        Record::Begin(_) => in_txn = true,
                        Record::Commit(c) => {
                            in_txn = false;
                            commit_end = Some(c.end_lsn);
                        }
                        _ => {}
                    }
                    line.clear();
                    serde_json::to_writer(&mut line, &renderer.render(&record)?)?;
                    line.push(b'\n');
                    out.write_all(&line).context("could not write to stdout")?;
                }
                if !in_txn {
                    out.flush().context("could not write to stdout")?;
                }
                if let Some(end) = commit_end {
                    flushed = flushed.max(end);
                    if reached(end) {
                        break;
                    }
                }
            }
            StreamMessage::Keepalive { wal_end, reply_requested } => {
                if !in_txn {
                    // Nothing in flight: all WAL up to here is accounted for.
                    flushed = flushed.max(wal_end);
                    if reached(wal_end) {
                        break;
                    }
                }
                if reply_requested {
                    stream.send_status(flushed, confirm(flushed), confirm(flushed), false).await?;
                    last_status = Instant::now();
                }
            }
        }
        if last_status.elapsed() >= STATUS_INTERVAL {
            stream.send_status(flushed, confirm(flushed), confirm(flushed), false).await?;
            last_status = Instant::now();
        }
    }
    out.flush().context("could not write to stdout")?;
    if in_txn {
        tracing::warn!("stopped inside a transaction; it will be sent again from its start next time");
    }
    stream.send_status(flushed, confirm(flushed), confirm(flushed), false).await?;
    stream.finish().await?;
    match opts.ack {
        true => tracing::info!(confirmed = %flushed, "done"),
        false => tracing::info!(read_up_to = %flushed, "done; the slot was not advanced (--ack would have)"),
    }
    Ok(())
}

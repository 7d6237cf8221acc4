//! Rows on a MySQL target: a batch netted into multi-row statements, or applied in source
//! order where netting is not exact or the target refused the netted form; values it cannot
//! hold and changes it refuses are recorded.

use super::sql::{inline, statement_chunks, text};
use super::{MySqlTarget, D, STATEMENT_BYTES, STATEMENT_ROWS};
use crate::model::batch::{Batch, NetOp, TableMode};
use crate::model::{Change, ChangeKind, Row, Val};
use crate::sink::rowsql::{Converter, ValueException};
use crate::sink::{OnError, TargetError};
use pgdms_proto::Lsn;
use std::sync::Arc;

impl MySqlTarget {
    pub(super) async fn record_exceptions(
        &mut self,
        exceptions: Vec<ValueException>,
        lsn: Lsn,
    ) -> Result<(), TargetError> {
        for e in exceptions {
            tracing::warn!(table = %e.table, column = %e.column, key = %e.key, value = %e.source_text, %lsn,
                "a value MySQL cannot hold: written as NULL, recorded in pgdms_value_exceptions");
            let sql = format!(
                "INSERT INTO {} (slot_name, lsn, table_name, column_name, row_key, source_value) VALUES ({}, {}, {}, {}, {}, {})",
                self.control_place("pgdms_value_exceptions"),
                text(&self.slot),
                text(&lsn.to_string()),
                text(&e.table),
                text(&e.column),
                text(&e.key),
                text(&e.source_text)
            );
            self.run(&sql).await?;
        }
        Ok(())
    }

    /// A change the target refused: stop, or (--on-error=log) record it and go on.
    pub(super) async fn refused(&mut self, c: &Change, error: TargetError) -> Result<(), TargetError> {
        let TargetError::Refused(message) = error else { return Err(error) };
        let error = TargetError::Change {
            table: c.rel.qualified(),
            source_oid: Some(c.rel.oid),
            operation: c.operation(),
            lsn: c.lsn,
            key: crate::sink::rowsql::key_text(c),
            error: message,
        };
        if self.on_error == OnError::Stop {
            return Err(error);
        }
        tracing::warn!(%error, "change passed over, recorded in pgdms_apply_exceptions");
        let sql = format!(
            "INSERT INTO {} (slot_name, lsn, table_name, operation, error) VALUES ({}, {}, {}, {}, {})",
            self.control_place("pgdms_apply_exceptions"),
            text(&self.slot),
            text(&c.lsn.to_string()),
            text(&c.rel.qualified()),
            text(c.operation()),
            text(&error.to_string())
        );
        self.run(&sql).await
    }

    /// Applies changes one by one in source order (a run of inserts into one table is one
    /// statement). Their tables have their shape already (see `apply`).
    pub(super) async fn apply_in_order(&mut self, changes: &[&Change]) -> Result<(), TargetError> {
        let mut i = 0;
        while i < changes.len() {
            let c = changes[i];
            let place = self.place(&c.rel.schema, &c.rel.name);
            let mut conv = Converter { dialect: D, opts: &self.opts, table: Self::quoted(&place), exceptions: vec![] };
            let mut run_end = i + 1;
            let stmt = if let ChangeKind::Insert { new } = &c.kind {
                let mut rows: Vec<&Row> = vec![new];
                let mut bytes: usize = new.iter().map(|v| v.approx_len()).sum();
                while run_end < changes.len() && rows.len() < STATEMENT_ROWS && bytes < STATEMENT_BYTES {
                    let next = changes[run_end];
                    let ChangeKind::Insert { new } = &next.kind else { break };
                    if !Arc::ptr_eq(&next.rel, &c.rel) && *next.rel != *c.rel {
                        break;
                    }
                    bytes += new.iter().map(|v| v.approx_len()).sum::<usize>();
                    rows.push(new);
                    run_end += 1;
                }
                Some(conv.insert_rows(&c.rel, &rows))
            } else {
                conv.change(c)
            };
            let exceptions = std::mem::take(&mut conv.exceptions);
            let last = changes[run_end - 1];
            match stmt {
                None if self.on_error == OnError::Log => {
                    tracing::warn!(table = %c.rel.qualified(), lsn = %c.lsn, "change without a key passed over");
                }
                None => {
                    return Err(TargetError::NoIdentity {
                        table: c.rel.qualified(),
                        operation: c.operation(),
                        lsn: c.lsn,
                    })
                }
                Some(s) if s.sql.is_empty() => {}
                Some(s) => {
                    if let Err(e) = self.run(&inline(s)).await {
                        // Only a refused statement is looked into; anything else (a lost
                        // connection, a deadlock that rolled the transaction back) ends here.
                        let TargetError::Refused(_) = e else { return Err(e) };
                        if run_end - i > 1 {
                            // Find the refused row: one statement each.
                            for &one in &changes[i..run_end] {
                                let mut conv = Converter {
                                    dialect: D,
                                    opts: &self.opts,
                                    table: Self::quoted(&place),
                                    exceptions: vec![],
                                };
                                let s = conv.change(one).expect("an insert always has a statement");
                                if let Err(e) = self.run(&inline(s)).await {
                                    let TargetError::Refused(_) = e else { return Err(e) };
                                    self.refused(one, e).await?;
                                }
                            }
                        } else {
                            self.refused(c, e).await?;
                        }
                    }
                    self.record_exceptions(exceptions, last.lsn).await?;
                }
            }
            i = run_end;
        }
        Ok(())
    }

    /// Applies a batch's net change set-wise, per table: the keys deleted in one statement,
    /// the rows inserted or updated in multi-row upserts, updates that leave a TOASTed value
    /// untouched one by one, rows of keyless tables appended; tables the batch could not net
    /// (a key changed, no key) in source order.
    pub(super) async fn apply_net(&mut self, batch: &Batch) -> Result<(), TargetError> {
        for t in &batch.tables {
            let TableMode::Net(net) = &t.mode else {
                let changes: Vec<&Change> = batch.raw_of(t.rel.oid).collect();
                self.apply_in_order(&changes).await?;
                continue;
            };
            let rel = &t.rel;
            let place = self.place(&rel.schema, &rel.name);
            let lsn = batch.raw.last().map(|c| c.lsn).unwrap_or_default();
            let mut conv = Converter { dialect: D, opts: &self.opts, table: Self::quoted(&place), exceptions: vec![] };
            let mut statements = Vec::new();
            let deleted: Vec<&Row> =
                net.ops().filter(|(_, op)| matches!(op, NetOp::Delete | NetOp::Replace(_))).map(|(k, _)| k).collect();
            for keys in deleted.chunks(STATEMENT_ROWS) {
                statements.push(conv.delete_keys(rel, &t.key_cols, keys));
            }
            let mut upserted: Vec<&Row> = Vec::new();
            for (key, op) in net.ops() {
                match op {
                    NetOp::Insert(r) | NetOp::Replace(r) => upserted.push(r),
                    NetOp::Update(r) if !r.contains(&Val::Unchanged) => upserted.push(r),
                    NetOp::Update(r) => statements.push(conv.update_key(rel, &t.key_cols, key, r)),
                    NetOp::Delete => {}
                }
            }
            let appended: Vec<&Row> = net.appended().iter().collect();
            for chunk in statement_chunks(&upserted).into_iter().chain(statement_chunks(&appended)) {
                statements.push(conv.insert_rows(rel, chunk));
            }
            let exceptions = std::mem::take(&mut conv.exceptions);
            for s in statements {
                if !s.sql.is_empty() {
                    self.run(&inline(s)).await?;
                }
            }
            self.record_exceptions(exceptions, lsn).await?;
        }
        Ok(())
    }
}

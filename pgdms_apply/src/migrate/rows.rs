//! The full load of a row-wise target (MySQL, SQLite, JSON lines): every table read row by
//! row in the snapshot and written through the DMS mapping, one table at a time, each in a
//! target transaction of its own where the target has them, and recorded as loaded with it.

use super::{MigrateError, MigrateOptions, Snapshot};
use crate::load::rows::{mapped, source_relations, TableReader};
use crate::load::{self, LoadError};
use crate::model::Row;
use crate::pgconn::ConnInfo;
use crate::sink::control::LoadedTable;
use crate::sink::LoadTarget;

/// Loads every selected table not in `loaded`, one after the other, each in a target
/// transaction of its own (where the target has transactions).
pub(super) async fn load<T: LoadTarget>(
    source: &ConnInfo,
    target: &mut T,
    opts: &MigrateOptions,
    snapshot: Snapshot,
    loaded: &[LoadedTable],
) -> Result<(), MigrateError> {
    // The exporter stays open until the session imported the snapshot; a full-load-only
    // slot is temporary and goes once the load is done.
    let session = load::snapshot_session(source, &snapshot.name).await?;
    let src = &session.client;
    let snapshot_lsn = snapshot.lsn;
    let rels = source_relations(src).await.map_err(load::sql_error("could not list the source's tables"))?;
    let started = std::time::Instant::now();
    let (mut tables, mut total) = (0usize, 0u64);
    for rel in rels {
        if loaded.iter().any(|t| t.source_oid == rel.oid) {
            continue;
        }
        let Some((target_rel, kept)) = mapped(&rel, &opts.mapping) else { continue };
        let source_name = rel.qualified();
        if target_rel.writes_no_columns() && !target.holds_columnless_tables() {
            tracing::warn!(
                table = %source_name,
                why = "no columns to write (none, or only generated ones): a table of this target needs at least one",
                "not migrated"
            );
            continue;
        }
        target.load_begin(&target_rel, snapshot_lsn).await?;
        let mut reader = TableReader::open(src, &rel, 1000)
            .await
            .map_err(|error| LoadError::Table { table: source_name.clone(), error })?;
        let mut rows = 0u64;
        loop {
            let chunk =
                reader.next_chunk().await.map_err(|error| LoadError::Table { table: source_name.clone(), error })?;
            if chunk.is_empty() {
                break;
            }
            rows += chunk.len() as u64;
            let chunk: Vec<Row> = if kept.len() == rel.columns.len() {
                chunk
            } else {
                chunk.into_iter().map(|r| kept.iter().map(|&i| r[i].clone()).collect()).collect()
            };
            target.load_rows(&target_rel, &chunk).await?;
        }
        target.load_end(&target_rel, &source_name, &opts.apply.slot, snapshot_lsn).await?;
        tracing::info!(table = %source_name, rows, "table loaded");
        tables += 1;
        total += rows;
    }
    tracing::info!(tables, rows = total, seconds = format!("{:.1}", started.elapsed().as_secs_f64()), "full load done");
    drop(snapshot);
    Ok(())
}

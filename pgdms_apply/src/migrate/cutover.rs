//! The end of a migration: catch up with the source, set the sequences, validate, and drop
//! the slot if asked. The source should be quiet (applications stopped or read-only).
//!
//! Every target kind catches up the same way. Setting sequences and validating need the
//! target to be PostgreSQL (the heterogeneous targets keep no sequences, and their
//! validation is to come): for another kind, cutover asks for `--skip-validate` before it
//! starts rather than after.

use super::{set_reloaded_tables, MigrateError};
use crate::apply::{self, ApplyOptions, Finished};
use crate::load;
use crate::pgconn::client::connect;
use crate::pgconn::ConnInfo;
use crate::sink::control::{ControlStore, Phase};
use crate::sink::postgres::open_session;
use crate::sink::spec::SinkFactory;
use crate::sink::{LoadTarget, Target};
use crate::stream::ReplicationConnection;
use crate::validate::{self, TableReport};
use tokio::sync::watch;

pub struct CutoverOptions {
    pub drop_slot: bool,
    pub skip_validate: bool,
}

/// The next transaction id the source's server will assign: it moves only when a
/// transaction writes (in any database of the server).
async fn next_xid(client: &tokio_postgres::Client) -> Result<u64, MigrateError> {
    let row = client
        .query_one("SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text", &[])
        .await
        .map_err(load::sql_error("source"))?;
    let text: String = row.try_get(0).map_err(load::sql_error("source"))?;
    text.parse().map_err(|_| MigrateError::Refused(format!("the source's next transaction id is \"{text}\"")))
}

pub async fn cutover(
    source: &ConnInfo,
    sink: &SinkFactory,
    apply_opts: &ApplyOptions,
    cut: &CutoverOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<TableReport>, MigrateError> {
    let slot = apply_opts.slot.clone();
    super::refuse_same_database(source, sink).await?;
    let mut target = sink.connect().await?;
    target.start(&slot).await?;
    let copy = target.copy_path();
    if copy.is_none() && !cut.skip_validate {
        return Err(MigrateError::Refused(format!(
            "validating a {} target is not available yet: run cutover with --skip-validate (it catches up \
             and drops the slot if asked; compare the tables yourself)",
            sink.spec.kind()
        )));
    }
    let src = connect(source, "pgdms-apply cutover").await?;
    let until: String = src
        .client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(load::sql_error("source"))?;
    let until = until
        .parse()
        .map_err(|_| MigrateError::Refused(format!("the source's pg_current_wal_lsn() is \"{until}\", not an LSN")))?;
    let xids_before = next_xid(&src.client).await?;
    tracing::info!(%slot, %until, "catching up to the source's current position");
    let mut opts = apply_opts.clone();
    opts.until = Some(until);
    set_reloaded_tables(&mut target, &slot, &mut opts).await?;
    drop(target);
    match apply::run(source, || sink.connect(), &opts, shutdown).await? {
        Finished::Reached => {}
        Finished::Interrupted => return Err(MigrateError::Refused("cutover interrupted before catching up".into())),
    }
    // Even with --skip-validate: a suspended table is not in step, whatever its rows show.
    super::check_suspended(sink, &slot).await?;
    let mut reports = Vec::new();
    if let Some(copy) = &copy {
        let (tgt, _) = open_session(&copy.target, copy.role.as_deref(), "pgdms-apply cutover", false).await?;
        let n = load::sequences::sync(&src.client, &tgt.client).await?;
        tracing::info!(sequences = n, "sequences set to the source's values");
        if !cut.skip_validate {
            let mapping = apply_opts.mapping.as_deref().cloned().unwrap_or_default();
            reports = validate::validate_all(&src.client, &tgt.client, &mapping).await?;
        }
    }
    if reports.iter().any(|r| !r.ok()) {
        // Writes after the cutover point are on the source and not (yet) on the target: the
        // differences may be theirs, which is not the target's fault.
        let written = next_xid(&src.client).await?.saturating_sub(xids_before);
        if written > 0 {
            tracing::warn!(
                %slot, cutover_point = %until, transactions = written,
                "the source was written while the cutover ran: the differences may be those writes, not the \
                 target's. Stop the writers (or make the source read-only) and run cutover again"
            );
        }
        tracing::warn!(%slot, "tables differ: the slot is kept, to stream again after fixing the target");
        return Ok(reports);
    }
    if cut.drop_slot {
        let mut repl = ReplicationConnection::connect(source).await?;
        repl.drop_slot(&slot, true).await?;
        tracing::info!(%slot, "slot dropped");
    }
    let mut target = sink.connect().await?;
    target.start(&slot).await?;
    // A stream started by `cdc` has no migration record to mark.
    target.set_phase(&slot, Phase::Done).await?;
    Ok(reports)
}

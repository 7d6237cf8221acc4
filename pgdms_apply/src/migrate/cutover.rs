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
    let until: String =
        src.client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(load::sql_error("source"))?.get(0);
    let until = until
        .parse()
        .map_err(|_| MigrateError::Refused(format!("the source's pg_current_wal_lsn() is \"{until}\", not an LSN")))?;
    tracing::info!(%slot, %until, "catching up to the source's current position");
    let mut opts = apply_opts.clone();
    opts.until = Some(until);
    set_reloaded_tables(&mut target, &slot, &mut opts).await?;
    drop(target);
    match apply::run(source, || sink.connect(), &opts, shutdown).await? {
        Finished::Reached => {}
        Finished::Interrupted => return Err(MigrateError::Refused("cutover interrupted before catching up".into())),
    }
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

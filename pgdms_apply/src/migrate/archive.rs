//! The schema archive of a PostgreSQL migration: pg_dump's custom-format dump of the load's
//! snapshot, whose pre-data is restored before the load and post-data after it. It is kept
//! on the target (`pgdms_apply.migration_schema`), so a run resumed after a crash builds the
//! post-data of the schema its tables were created with.

use super::MigrateError;
use crate::load::{self, schema, CONTROL_SCHEMA};
use crate::pgconn::client::connect;
use crate::pgconn::ConnInfo;
use std::path::PathBuf;

/// A schema archive in a temporary directory (removed with it).
pub(super) struct Archive {
    pub(super) _dir: tempfile::TempDir,
    pub(super) path: PathBuf,
}

/// A temporary directory for a schema archive (removed when dropped).
pub(super) fn schema_workdir() -> Result<tempfile::TempDir, MigrateError> {
    tempfile::Builder::new()
        .prefix("pgdms-schema-")
        .tempdir()
        .map_err(|e| MigrateError::Local(format!("could not create a temporary directory for the schema dump: {e}")))
}

/// Keeps the schema archive of a migration on the target.
pub(super) async fn store_archive(
    tgt: &tokio_postgres::Client,
    slot: &str,
    archive: &Archive,
) -> Result<(), MigrateError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| MigrateError::Local(format!("could not read {}: {e}", p.display())))
    };
    let dump = read(&archive.path)?;
    let list = read(&archive.path.with_file_name("schema.list"))?;
    tgt.execute(
        &format!(
            "INSERT INTO {CONTROL_SCHEMA}.migration_schema (slot_name, archive, list) VALUES ($1, $2, $3)
             ON CONFLICT (slot_name) DO UPDATE SET archive = excluded.archive, list = excluded.list"
        ),
        &[&slot, &dump, &list],
    )
    .await
    .map_err(load::sql_error("could not keep the schema archive on the target"))?;
    Ok(())
}

/// The schema archive kept on the target, in a temporary directory.
pub(super) async fn stored_archive(tgt: &tokio_postgres::Client, slot: &str) -> Result<Option<Archive>, MigrateError> {
    let Some(row) = tgt
        .query_opt(
            &format!("SELECT archive, list FROM {CONTROL_SCHEMA}.migration_schema WHERE slot_name = $1"),
            &[&slot],
        )
        .await
        .map_err(load::sql_error("could not read the kept schema archive"))?
    else {
        return Ok(None);
    };
    let dir = schema_workdir()?;
    let path = dir.path().join("schema.dump");
    let write = |p: &std::path::Path, bytes: &[u8]| {
        std::fs::write(p, bytes).map_err(|e| MigrateError::Local(format!("could not write {}: {e}", p.display())))
    };
    let read = "could not read the kept schema archive";
    write(&path, row.try_get::<_, &[u8]>(0).map_err(load::sql_error(read))?)?;
    write(&dir.path().join("schema.list"), row.try_get::<_, &[u8]>(1).map_err(load::sql_error(read))?)?;
    Ok(Some(Archive { _dir: dir, path }))
}

/// A schema archive of the source as it is now.
pub(super) async fn dump_current(pg_bin: &std::path::Path, source: &ConnInfo) -> Result<Archive, MigrateError> {
    let dir = schema_workdir()?;
    let src = connect(source, "pgdms-apply migrate").await?;
    src.client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(load::sql_error("source"))?;
    let snapshot: String = src
        .client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(load::sql_error("could not export a snapshot of the source"))?
        .try_get(0)
        .map_err(load::sql_error("could not export a snapshot of the source"))?;
    let path = schema::dump(pg_bin, source, &snapshot, dir.path()).await?;
    drop(src);
    Ok(Archive { _dir: dir, path })
}

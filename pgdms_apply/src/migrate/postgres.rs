//! A PostgreSQL target's own load path: the schema's pre-data restored from the snapshot's
//! archive (`archive`), the tables copied by parallel COPY sessions (`crate::load`), the
//! post-data built in parallel, the sequences set, and the table mappings applied to the
//! schema.

use super::archive::{dump_current, schema_workdir, store_archive, stored_archive, Archive};
use super::{MigrateError, MigrateOptions, Prep, Snapshot};
use crate::load::plan::SourceTable;
use crate::load::{self, schema, LoadOptions};
use crate::mapping::Mapping;
use crate::pgconn::client::connect;
use crate::pgconn::ConnInfo;
use crate::sink::control::{LoadedTable, Phase};
use crate::sink::postgres::control::PgControl;
use crate::sink::postgres::open_session;
use crate::sink::CopyPath;
use crate::sql::quote_ident;

/// The first run (`loaded` is None): schema, then every table, as of the slot's snapshot.
/// A resumed run: the tables not in `loaded`, as of a temporary slot's snapshot. Returns the
/// snapshot's schema archive (first run, drop-and-create), for the post-data.
pub(super) async fn copy_phase(
    source: &ConnInfo,
    copy: &CopyPath,
    opts: &MigrateOptions,
    pg_bin: &std::path::Path,
    snapshot: Snapshot,
    loaded: Option<&[LoadedTable]>,
) -> Result<Option<Archive>, MigrateError> {
    let (target, role) = (&copy.target, copy.role.as_deref());
    let (session, _) = open_session(target, role, "pgdms-apply migrate", false).await?;
    let tgt = &session.client;
    let Snapshot { exporter, name: snapshot, lsn: snapshot_lsn } = snapshot;
    let snapshot = snapshot.as_str();
    let with_schema = loaded.is_none();
    let slot = &opts.apply.slot;
    let jobs = opts.jobs.max(1);
    let mut sessions = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        sessions.push(load::snapshot_session(source, snapshot).await?);
    }
    let workdir = schema_workdir()?;
    // The first snapshot's schema is dumped once and kept on the target: a resumed run
    // builds the post-data of the schema its tables were created with.
    let archive = match (opts.prep, with_schema) {
        (Prep::DropAndCreate, true) => {
            let path = schema::dump(pg_bin, source, snapshot, workdir.path()).await?;
            let archive = Archive { _dir: workdir, path };
            store_archive(tgt, slot, &archive).await?;
            Some(archive)
        }
        _ => None,
    };
    // Every session holds the snapshot now.
    drop(exporter);
    if let (true, Some(archive)) = (with_schema, &archive) {
        let not_migrated = schema::restore(pg_bin, target, role, &archive.path, "pre-data", 1, true).await?;
        report_not_migrated(&not_migrated);
    }
    set_phase(tgt, slot, Phase::Load).await?;
    let load_opts = LoadOptions {
        split_bytes: opts.split_bytes,
        slot: slot.clone(),
        snapshot_lsn,
        // Only tables this migration created: TRUNCATE would fail on a table another one's
        // foreign key references, and must never empty a table the user keeps.
        freeze: opts.prep == Prep::DropAndCreate,
        on_table_error: opts.apply.on_table_error,
    };
    // With drop-and-create the tables are loaded under the source's names and renamed (and
    // their removed columns dropped) once the post-data is built on them; otherwise the
    // target already has the mapped tables.
    let keep = |t: SourceTable| -> Option<SourceTable> {
        if loaded.is_some_and(|l| l.iter().any(|done| done.source_oid == t.oid)) {
            return None;
        }
        if opts.prep == Prep::DropAndCreate {
            opts.mapping.includes(&t.schema, &t.name).then_some(t)
        } else {
            t.mapped(&opts.mapping)
        }
    };
    // Resuming: a table not recorded as loaded may hold part of an interrupted copy.
    let truncate_first = opts.prep == Prep::Truncate || loaded.is_some();
    load::load(sessions, target, role, &load_opts, keep, truncate_first).await?;
    set_phase(tgt, slot, Phase::PostData).await?;
    Ok(archive)
}

/// Renames the loaded tables, schemas and columns as the table mappings say, drops the
/// columns they remove and the tables they leave out. Runs in the caller's transaction;
/// tables already renamed are passed over.
pub(super) async fn map_schema(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    m: &Mapping,
) -> Result<(), MigrateError> {
    let tables = source
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    -- The replica identity's key, which changes carry whatever the mappings say.
                    coalesce((SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a
                                ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                               WHERE i.indrelid = c.oid
                                 AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))),
                             '{}')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname !~ '^pg_toast'
                AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                   AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e')
              ORDER BY c.relkind = 'p' DESC, c.relispartition, 1, 2",
            &[&crate::sink::postgres::CONTROL_SCHEMA],
        )
        .await
        .map_err(load::sql_error("could not list the source's tables"))?;
    let run = |stmt: String| async move {
        tracing::info!(statement = %stmt, "table mapping");
        target
            .batch_execute(&stmt)
            .await
            .map_err(|e| MigrateError::Refused(format!("{stmt}: {}", crate::pgconn::client::error_text(&e))))
    };
    for r in tables {
        let read = || load::sql_error("could not list the source's tables");
        let (schema, name, key): (String, String, Vec<String>) =
            (r.try_get(0).map_err(read())?, r.try_get(1).map_err(read())?, r.try_get(2).map_err(read())?);
        let q = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let exists: bool = target
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&q])
            .await
            .map_err(load::sql_error("target"))?
            .try_get(0)
            .map_err(load::sql_error("target"))?;
        if !exists {
            continue;
        }
        if !m.includes(&schema, &name) {
            run(format!("DROP TABLE IF EXISTS {q} CASCADE")).await?;
            continue;
        }
        // The target's own columns (as loaded, under the source's names); inherited ones
        // follow their parent's, mapped first.
        let own: Vec<String> = target
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0
                    AND NOT attisdropped AND attinhcount = 0 ORDER BY attnum",
                &[&q],
            )
            .await
            .map_err(load::sql_error("target"))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(load::sql_error("target"))?;
        for c in &own {
            match m.column(&schema, &name, c) {
                // Key columns stay: updates and deletes find their rows by them.
                None if !key.contains(c) => {
                    run(format!("ALTER TABLE {q} DROP COLUMN IF EXISTS {}", quote_ident(c))).await?
                }
                Some(n) if n != *c => {
                    run(format!("ALTER TABLE {q} RENAME COLUMN {} TO {}", quote_ident(c), quote_ident(&n))).await?
                }
                _ => {}
            }
        }
        let (ts, tn) = m.table(&schema, &name);
        if tn != name {
            run(format!("ALTER TABLE {q} RENAME TO {}", quote_ident(&tn))).await?;
        }
        if ts != schema {
            run(format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&ts))).await?;
            run(format!("ALTER TABLE {}.{} SET SCHEMA {}", quote_ident(&schema), quote_ident(&tn), quote_ident(&ts)))
                .await?;
        }
    }
    Ok(())
}

/// Owner and privilege statements of the schema the target role could not run (roles it
/// lacks or may not become): one line naming the roles, each statement at debug level.
fn report_not_migrated(lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let mut roles: Vec<String> = lines.iter().filter_map(|l| role_named(l)).collect();
    roles.sort();
    roles.dedup();
    for l in lines {
        tracing::debug!(statement = %l, "not migrated");
    }
    tracing::info!(
        statements = lines.len(),
        roles = %roles.join(", "),
        "owners and privileges not migrated: the target lacks these roles or the target role may not act for them; \
         the objects are the target role's (see README, \"Target role\")"
    );
}

/// The role a pg_restore error is about: `role "x" does not exist`, `SET ROLE "x"`...
fn role_named(error: &str) -> Option<String> {
    let lower = error.to_ascii_lowercase();
    let at = lower.find("role \"")? + "role \"".len();
    let rest = &error[at..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Indexes, constraints, triggers (after the load, in parallel), and the sequences; then
/// the table mappings and the `next` phase, in one transaction: a crash leaves both or
/// neither.
pub(super) async fn post_data(
    source: &ConnInfo,
    copy: &CopyPath,
    opts: &MigrateOptions,
    pg_bin: &std::path::Path,
    archive: Option<&Archive>,
    next: Phase,
) -> Result<(), MigrateError> {
    let (target, role) = (&copy.target, copy.role.as_deref());
    let (session, _) = open_session(target, role, "pgdms-apply migrate", false).await?;
    let tgt = &session.client;
    let stored = match archive {
        Some(_) => None,
        None => stored_archive(tgt, &opts.apply.slot).await?,
    };
    let archive = archive.or(stored.as_ref());
    if opts.prep == Prep::DropAndCreate {
        // The snapshot's archive; when resuming after a crash in this phase it is gone, and
        // the source's schema as it is now stands in (DDL since the snapshot is captured and
        // replayed by CDC, which has not started yet).
        let current;
        let path = match archive {
            Some(a) => &a.path,
            None => {
                current = dump_current(pg_bin, source).await?;
                &current.path
            }
        };
        tracing::info!(jobs = opts.jobs, "building indexes and constraints");
        let not_migrated = schema::restore(pg_bin, target, role, path, "post-data", opts.jobs, true).await?;
        report_not_migrated(&not_migrated);
    }
    let src = connect(source, "pgdms-apply migrate").await?;
    let n = load::sequences::sync(&src.client, tgt).await?;
    tracing::info!(sequences = n, "sequences set to the source's values");
    tgt.batch_execute("BEGIN").await.map_err(load::sql_error("target"))?;
    if opts.prep == Prep::DropAndCreate && !opts.mapping.is_identity() {
        map_schema(&src.client, tgt, &opts.mapping).await?;
    }
    set_phase(tgt, &opts.apply.slot, next).await?;
    tgt.batch_execute("COMMIT").await.map_err(load::sql_error("target"))?;
    Ok(())
}

/// Records the migration's phase, in the session's transaction if it has one.
async fn set_phase(tgt: &tokio_postgres::Client, slot: &str, phase: Phase) -> Result<(), MigrateError> {
    if !PgControl(tgt).set_phase(slot, phase).await? {
        return Err(MigrateError::Refused(format!("the target lost the record of migration \"{slot}\"")));
    }
    tracing::info!(slot, %phase, "migration phase");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::role_named;

    #[test]
    fn refused_owner_statements_name_their_role() {
        assert_eq!(
            role_named("must be able to SET ROLE \"postgres\" | Command was: ALTER TABLE t OWNER TO postgres;")
                .as_deref(),
            Some("postgres")
        );
        assert_eq!(role_named("could not execute query: ERROR:  role \"app\" does not exist").as_deref(), Some("app"));
        assert_eq!(role_named("permission denied for schema x"), None);
    }
}

//! `migrate --reload-table`: tables copied again, from a new snapshot, into a migration
//! that has loaded them before, and handed over to CDC exactly as a resumed load's tables
//! are: the stream passes over their changes committed before the new snapshot (they are
//! in the copy) and applies the rest. This is how a suspended table comes back, or one a
//! rewrite on the source flagged for reload.
//!
//! The migration's slot must be idle (no other `pgdms-apply` streaming from it): while the
//! table is emptied and copied, no change of it may be applied. Before emptying, each table
//! is recorded as suspended ("reloading"), so a crash in between leaves it set aside (its
//! changes passed over, the summary naming it), never half loaded and written to: the
//! same command then reloads it again.

use super::{MigrateError, MigrateOptions, Snapshot};
use crate::load::plan::SourceTable;
use crate::load::{self, LoadOptions};
use crate::pgconn::ConnInfo;
use crate::sink::postgres::control::PgControl;
use crate::sink::postgres::open_session;
use crate::sink::CopyPath;
use std::collections::HashSet;

/// A table to reload: `schema.name`, either part double-quoted when it holds a dot or a
/// quote (`"my.schema"."Orders"`), `%` matching any run of characters (`public.order%`).
/// A partitioned table stands for its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    schema: String,
    name: String,
}

impl std::str::FromStr for TablePattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "\"{s}\" is not a table: write SCHEMA.NAME (public.orders), quoting a part that holds a dot or a \
                 quote (\"my.schema\".\"Orders\"); % matches any run of characters (public.order%)"
            )
        };
        let (schema, rest) = ident(s).ok_or_else(bad)?;
        let rest = rest.strip_prefix('.').ok_or_else(bad)?;
        let (name, rest) = ident(rest).ok_or_else(bad)?;
        if !rest.is_empty() || schema.is_empty() || name.is_empty() {
            return Err(bad());
        }
        Ok(TablePattern { schema, name })
    }
}

/// One identifier at the start of `s`: quoted (`""` for a quote inside) or up to the next
/// dot; and what follows it.
fn ident(s: &str) -> Option<(String, &str)> {
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s.find('.').unwrap_or(s.len());
        return Some((s[..end].to_string(), &s[end..]));
    };
    let mut out = String::new();
    let mut chars = quoted.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        if chars.peek().is_some_and(|&(_, next)| next == '"') {
            chars.next();
            out.push('"');
            continue;
        }
        return Some((out, &quoted[i + 1..]));
    }
    None
}

impl TablePattern {
    fn matches(&self, schema: &str, name: &str) -> bool {
        crate::mapping::like(&self.schema, schema) && crate::mapping::like(&self.name, name)
    }
}

impl std::fmt::Display for TablePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", crate::sql::quote_ident(&self.schema), crate::sql::quote_ident(&self.name))
    }
}

/// The leaf tables the patterns name, as the snapshot shows the source: each table that
/// matches, and the partitions of each partitioned table that matches. A pattern that
/// names nothing is refused: a typing slip must not pass for a reload.
async fn resolve(
    source: &tokio_postgres::Client,
    patterns: &[TablePattern],
    tables: &[SourceTable],
) -> Result<HashSet<u32>, MigrateError> {
    let read = |e: tokio_postgres::Error| {
        MigrateError::Refused(format!(
            "source: could not list the tables to reload: {}",
            crate::pgconn::client::error_text(&e)
        ))
    };
    let partitioned = source
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    coalesce((SELECT array_agg(t.relid::oid) FROM pg_catalog.pg_partition_tree(c.oid) t WHERE t.isleaf),
                             '{}')
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'p'",
            &[],
        )
        .await
        .map_err(read)?;
    let mut chosen = HashSet::new();
    for p in patterns {
        let mut found = false;
        for t in tables.iter().filter(|t| p.matches(&t.schema, &t.name)) {
            chosen.insert(t.oid);
            found = true;
        }
        for row in &partitioned {
            let (schema, name, leaves): (String, String, Vec<u32>) =
                (row.try_get(0).map_err(read)?, row.try_get(1).map_err(read)?, row.try_get(2).map_err(read)?);
            if p.matches(&schema, &name) {
                for oid in leaves.into_iter().filter(|oid| tables.iter().any(|t| t.oid == *oid)) {
                    chosen.insert(oid);
                    found = true;
                }
            }
        }
        if !found {
            return Err(MigrateError::Refused(format!(
                "--reload-table {p}: the source has no table of that name that this migration carries \
                 (names are case-sensitive; quote a part with capitals or dots: \"Schema\".\"Table\"). Nothing was reloaded"
            )));
        }
    }
    Ok(chosen)
}

/// Reloads the tables `patterns` name into a PostgreSQL target, from a new snapshot of
/// the source: each emptied (TRUNCATE, or DELETE when another table's foreign key
/// references it; no trigger fires) and copied, then recorded as loaded from that
/// snapshot, which lets CDC take it over exactly.
pub(super) async fn reload(
    source: &ConnInfo,
    copy: &CopyPath,
    opts: &MigrateOptions,
    patterns: &[TablePattern],
    snapshot: Snapshot,
) -> Result<(), MigrateError> {
    let (target, role) = (&copy.target, copy.role.as_deref());
    let slot = &opts.apply.slot;
    let Snapshot { exporter, name: snapshot_name, lsn: snapshot_lsn } = snapshot;
    let mut sessions = Vec::with_capacity(opts.jobs.max(1));
    for _ in 0..opts.jobs.max(1) {
        sessions.push(load::snapshot_session(source, &snapshot_name).await?);
    }
    drop(exporter);
    let tables: Vec<SourceTable> = load::plan::source_tables(&sessions[0].client)
        .await
        .map_err(load::sql_error("could not list the source's tables"))?
        .into_iter()
        .filter(|t| opts.mapping.includes(&t.schema, &t.name))
        .collect();
    let chosen = resolve(&sessions[0].client, patterns, &tables).await?;
    // Set aside first, committed: from here until each is loaded, its changes are passed
    // over, whatever stops this run.
    let (session, _) = open_session(target, role, "pgdms-apply migrate", false).await?;
    // Held until the reload is done: no apply session starts meanwhile.
    if !PgControl(&session.client).claim(slot).await? {
        return Err(MigrateError::Refused(format!(
            "--reload-table: another pgdms-apply applies migration \"{slot}\" to this target. Stop it (Ctrl-C or \
             SIGTERM), then run this command: it reloads the tables and streams on"
        )));
    }
    for t in tables.iter().filter(|t| chosen.contains(&t.oid)) {
        PgControl(&session.client)
            .suspend(slot, t.oid, &t.qualified(), "reload", snapshot_lsn, "reloading (--reload-table)")
            .await?;
        tracing::info!(table = %t.qualified(), snapshot_lsn = %snapshot_lsn, "reloading");
    }
    let load_opts = LoadOptions {
        split_bytes: opts.split_bytes,
        slot: slot.clone(),
        snapshot_lsn,
        // The table has its indexes and other tables' foreign keys now: emptied apart, then
        // copied without FREEZE.
        freeze: false,
        on_table_error: opts.apply.on_table_error,
    };
    let keep = |t: SourceTable| chosen.contains(&t.oid).then(|| t.mapped(&opts.mapping)).flatten();
    let chosen_tables: Vec<SourceTable> = tables.iter().cloned().filter_map(keep).collect();
    load::load(sessions, target, role, &load_opts, keep, true).await?;
    let still_suspended = PgControl(&session.client).suspended(Some(slot)).await?;
    let reloaded: Vec<String> = chosen_tables
        .iter()
        .filter(|t| !still_suspended.iter().any(|s| s.source_oid == t.oid))
        .map(|t| t.target_qualified())
        .collect();
    // A reload is what a table flagged by a rewrite on the source needed.
    session
        .client
        .execute(
            &format!(
                "DELETE FROM {}.apply_reload_needed WHERE slot_name = $1 AND table_name = ANY ($2)",
                crate::sink::postgres::CONTROL_SCHEMA
            ),
            &[slot, &reloaded],
        )
        .await
        .map_err(load::sql_error("could not clear the reloaded tables' flags in pgdms_apply.apply_reload_needed"))?;
    // The stream takes the migration's lock next, in a session of its own.
    session
        .client
        .batch_execute("SELECT pg_catalog.pg_advisory_unlock_all()")
        .await
        .map_err(load::sql_error("target"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_patterns_parse_with_quotes_and_wildcards() {
        let p: TablePattern = "public.orders".parse().unwrap();
        assert!(p.matches("public", "orders") && !p.matches("public", "orders2"));
        let p: TablePattern = "\"my.schema\".\"Or\"\"ders\"".parse().unwrap();
        assert!(p.matches("my.schema", "Or\"ders"));
        let p: TablePattern = "public.order%".parse().unwrap();
        assert!(p.matches("public", "orders_2024") && !p.matches("sales", "orders"));
        for bad in ["orders", "public.", ".orders", "\"unclosed.t", "a.b.c", "\"a\"x.t"] {
            assert!(bad.parse::<TablePattern>().is_err(), "{bad}");
        }
    }
}

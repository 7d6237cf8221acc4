//! `validate`: source and target compared table by table, as the reference's data
//! validation does.
//!
//! Both sides hash every row (its text form, under the same session settings) and sum the
//! hashes per bucket of the key (64 buckets by the key's hash), with the row counts. Equal
//! buckets are equal with overwhelming probability; for a bucket that differs, the keys of
//! both sides are compared row by row, and the differing keys are reported (missing on the
//! target, extra on the target, different). Meaningful when the source is quiet and the
//! apply has caught up (as at cutover).

use crate::load::plan::SourceTable;
use crate::mapping::Mapping;
use crate::pgconn::client::error_text;
use crate::sql::quote_ident;
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// Session settings under which both sides write values as the same text.
pub const SAME_TEXT: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres';
     SET extra_float_digits = 3; SET bytea_output = 'hex'; SET lc_monetary = 'C'";

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("{context}: {}", error_text(source))]
    Sql { context: &'static str, source: tokio_postgres::Error },
    #[error("could not validate {table}: {error}")]
    Table { table: String, error: String },
}

fn sql(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ValidateError {
    move |source| ValidateError::Sql { context, source }
}

/// Compares every table of the source with the target's.
pub async fn validate_all(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    mapping: &Mapping,
) -> Result<Vec<TableReport>, ValidateError> {
    source.batch_execute(SAME_TEXT).await.map_err(sql("source"))?;
    target.batch_execute(SAME_TEXT).await.map_err(sql("target"))?;
    source.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(sql("source"))?;
    let tables: Vec<SourceTable> = crate::load::plan::source_tables(source)
        .await
        .map_err(sql("could not list the source's tables"))?
        .into_iter()
        .filter_map(|t| t.mapped(mapping))
        .collect();
    let suspended = suspended_tables(target).await?;
    let mut reports = Vec::with_capacity(tables.len());
    for t in &tables {
        let mut r = compare(source, target, t)
            .await
            .map_err(|e| ValidateError::Table { table: t.qualified(), error: e.to_string() })?;
        r.suspended = suspended.iter().find(|s| s.source_oid == t.oid).cloned();
        reports.push(r);
    }
    let left_out = crate::load::skipped::not_migrated(source).await.map_err(sql("source"))?;
    for t in left_out.into_iter().filter(|t| mapping.includes(&t.schema, &t.name)) {
        reports.push(TableReport {
            table: t.qualified(),
            source_rows: 0,
            target_rows: None,
            missing: Vec::new(),
            extra: Vec::new(),
            different: Vec::new(),
            truncated: false,
            not_migrated: Some(t.why),
            suspended: None,
        });
    }
    let _ = source.batch_execute("COMMIT").await;
    Ok(reports)
}

const BUCKETS: i64 = 64;
/// Differing keys listed per table at most.
const MAX_KEYS: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    pub source_rows: i64,
    pub target_rows: Option<i64>,
    /// Keys only on the source, only on the target, and with different rows.
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub different: Vec<String>,
    /// More differing keys than listed.
    pub truncated: bool,
    /// Not compared: the migration does not carry this table, for this reason.
    pub not_migrated: Option<&'static str>,
    /// Set aside by `--on-table-error suspend` (any migration into this target): not in
    /// step with the source, whatever its rows show.
    pub suspended: Option<crate::sink::control::SuspendedTable>,
}

/// The tables set aside on the target, by any migration into it (none when the target has
/// no control tables).
async fn suspended_tables(target: &Client) -> Result<Vec<crate::sink::control::SuspendedTable>, ValidateError> {
    let table = format!("{}.suspended_table", crate::sink::postgres::CONTROL_SCHEMA);
    let exists: bool = target
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(sql("target"))?
        .try_get(0)
        .map_err(sql("target"))?;
    if !exists {
        return Ok(Vec::new());
    }
    crate::sink::postgres::control::PgControl(target)
        .suspended(None)
        .await
        .map_err(|e| ValidateError::Table { table, error: e.to_string() })
}

impl TableReport {
    /// No difference found. A table the migration does not carry is not a difference: it
    /// is reported as such, and was named when the migration began.
    pub fn ok(&self) -> bool {
        self.not_migrated.is_some()
            || self.suspended.is_none()
                && self.target_rows == Some(self.source_rows)
                && self.missing.is_empty()
                && self.extra.is_empty()
                && self.different.is_empty()
    }
}

/// The key columns of a table (its primary key, else every column), from the source.
async fn key_columns(source: &Client, t: &SourceTable) -> Result<Vec<String>, String> {
    let rows = source
        .query(
            "SELECT a.attname::text FROM pg_index i
               JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n",
            &[&t.oid],
        )
        .await
        .map_err(|e| error_text(&e))?;
    let key: Vec<String> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().map_err(|e| error_text(&e))?;
    Ok(if key.is_empty() { t.columns.clone() } else { key })
}

fn row_expr(cols: &[String]) -> String {
    format!("ROW({})::text", cols.iter().map(|c| format!("t.{}", quote_ident(c))).collect::<Vec<_>>().join(", "))
}

type Buckets = BTreeMap<i32, (i64, String)>;

async fn buckets(client: &Client, table: &str, key: &str, row: &str) -> Result<Option<Buckets>, String> {
    let exists = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table]).await.map_err(|e| error_text(&e))?;
    let exists: bool = exists.try_get(0).map_err(|e| error_text(&e))?;
    if !exists {
        return Ok(None);
    }
    let sql = format!(
        "SELECT (hashtextextended({key}, 0) & {mask})::int, count(*), sum(hashtextextended({row}, 0)::numeric)::text
           FROM ONLY {table} t GROUP BY 1",
        mask = BUCKETS - 1
    );
    let rows = client.query(&sql, &[]).await.map_err(|e| error_text(&e))?;
    let read = |r: &tokio_postgres::Row| -> Result<(i32, (i64, String)), tokio_postgres::Error> {
        Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?)))
    };
    Ok(Some(rows.iter().map(read).collect::<Result<_, _>>().map_err(|e| error_text(&e))?))
}

async fn bucket_rows(
    client: &Client,
    table: &str,
    key: &str,
    row: &str,
    bucket: i32,
) -> Result<BTreeMap<String, String>, String> {
    let sql = format!(
        "SELECT {key}, md5({row}) FROM ONLY {table} t WHERE (hashtextextended({key}, 0) & {mask})::int = $1",
        mask = BUCKETS - 1
    );
    let rows = client.query(&sql, &[&bucket]).await.map_err(|e| error_text(&e))?;
    let read = |r: &tokio_postgres::Row| -> Result<(String, String), tokio_postgres::Error> {
        Ok((r.try_get(0)?, r.try_get(1)?))
    };
    rows.iter().map(read).collect::<Result<_, _>>().map_err(|e| error_text(&e))
}

/// Compares one table. Both clients must run under [`SAME_TEXT`].
/// Both sides' columns by name: the source's, and the target's (table mappings may rename
/// or remove columns; `t.columns` and `t.target_columns` correspond).
pub async fn compare(source: &Client, target: &Client, t: &SourceTable) -> Result<TableReport, String> {
    let (table, target_table) = (t.qualified(), t.target_qualified());
    let on_target = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter_map(|n| t.columns.iter().position(|c| c == n).map(|i| t.target_columns[i].clone()))
            .collect()
    };
    let mut key_s = key_columns(source, t).await?;
    key_s.retain(|k| t.columns.contains(k));
    if key_s.is_empty() {
        key_s = t.columns.clone();
    }
    let (key, key_t) = (row_expr(&key_s), row_expr(&on_target(&key_s)));
    let (row, row_t) = (row_expr(&t.columns), row_expr(&t.target_columns));
    let s = buckets(source, &table, &key, &row).await?.unwrap_or_default();
    let d = buckets(target, &target_table, &key_t, &row_t).await?;
    let mut report = TableReport {
        table: if table == target_table { table.clone() } else { format!("{table} -> {target_table}") },
        source_rows: s.values().map(|(n, _)| n).sum(),
        target_rows: d.as_ref().map(|d| d.values().map(|(n, _)| n).sum()),
        missing: Vec::new(),
        extra: Vec::new(),
        different: Vec::new(),
        truncated: false,
        not_migrated: None,
        suspended: None,
    };
    let Some(d) = d else { return Ok(report) };
    let differing: Vec<i32> = (0..BUCKETS as i32).filter(|b| s.get(b) != d.get(b)).collect();
    for b in differing {
        let sr = bucket_rows(source, &table, &key, &row, b).await?;
        let dr = bucket_rows(target, &target_table, &key_t, &row_t, b).await?;
        for (k, h) in &sr {
            match dr.get(k) {
                None => report.missing.push(k.clone()),
                Some(h2) if h2 != h => report.different.push(k.clone()),
                Some(_) => {}
            }
        }
        report.extra.extend(dr.keys().filter(|k| !sr.contains_key(*k)).cloned());
        if report.missing.len() + report.extra.len() + report.different.len() > MAX_KEYS {
            report.truncated = true;
            break;
        }
    }
    for list in [&mut report.missing, &mut report.extra, &mut report.different] {
        if list.len() > MAX_KEYS {
            list.truncate(MAX_KEYS);
            report.truncated = true;
        }
    }
    Ok(report)
}

/// One line of the report.
pub fn describe(r: &TableReport) -> String {
    if let Some(why) = r.not_migrated {
        return format!("NOT MIGRATED  {}: {why}", r.table);
    }
    if let Some(s) = &r.suspended {
        return format!(
            "SUSPENDED  {}: set aside by --on-table-error suspend ({}), {} changes passed over since; \
             bring it back with migrate --reload-table",
            r.table, s.error, s.passed_over
        );
    }
    if r.ok() {
        return format!("ok       {} ({} rows)", r.table, r.source_rows);
    }
    let Some(target_rows) = r.target_rows else {
        return format!("MISSING  {}: not on the target ({} rows on the source)", r.table, r.source_rows);
    };
    let mut parts = vec![format!("{} rows on the source, {} on the target", r.source_rows, target_rows)];
    if !r.missing.is_empty() {
        parts.push(format!("missing on the target: {}", r.missing.join(" ")));
    }
    if !r.extra.is_empty() {
        parts.push(format!("only on the target: {}", r.extra.join(" ")));
    }
    if !r.different.is_empty() {
        parts.push(format!("different: {}", r.different.join(" ")));
    }
    if r.truncated {
        parts.push("(more differences not listed)".into());
    }
    format!("DIFFERS  {}: {}", r.table, parts.join("; "))
}

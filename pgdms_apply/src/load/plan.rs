//! What the full load copies: the source's tables, as its snapshot shows them, cut into
//! units of work.
//!
//! Partitioned tables are loaded per partition (leaf tables), as changes are decoded per
//! partition: the target has the same partitions (the schema step creates them), and a
//! partition's rows go straight into it. A table larger than the split size is cut into
//! ranges of heap blocks (`ctid` ranges, which PostgreSQL 14+ scans directly), loaded in
//! parallel like separate tables.

use crate::sql::quote_ident;
use tokio_postgres::Client;

/// A source table to load.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// Columns written by COPY (generated columns are computed by the target).
    pub columns: Vec<String>,
    /// Every column's type has binary send/receive functions.
    pub binary: bool,
    pub bytes: u64,
    pub pages: u64,
    /// Where its rows go on the target: schema, table, and a name per column of `columns`
    /// (the source's own names unless table mappings say otherwise).
    pub target_schema: String,
    pub target_name: String,
    pub target_columns: Vec<String>,
}

impl SourceTable {
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    pub fn column_list(&self) -> String {
        self.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
    }

    pub fn target_qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.target_schema), quote_ident(&self.target_name))
    }

    /// ` (a, b)`: the target columns as a COPY or INSERT names them; nothing for a table
    /// that has none to write (no columns, or only generated ones), which SQL cannot spell
    /// as `()` and which then means the same: every column that is not generated.
    pub fn target_column_clause(&self) -> String {
        if self.target_columns.is_empty() {
            return String::new();
        }
        format!(" ({})", self.target_columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", "))
    }

    /// Applies table mappings: target names, and removed columns left out. `None` when the
    /// mappings do not select the table.
    pub fn mapped(mut self, m: &crate::mapping::Mapping) -> Option<SourceTable> {
        if !m.includes(&self.schema, &self.name) {
            return None;
        }
        (self.target_schema, self.target_name) = m.table(&self.schema, &self.name);
        let (mut columns, mut targets) = (Vec::new(), Vec::new());
        for c in &self.columns {
            if let Some(t) = m.column(&self.schema, &self.name, c) {
                columns.push(c.clone());
                targets.push(t);
            }
        }
        (self.columns, self.target_columns) = (columns, targets);
        Some(self)
    }
}

/// One unit of work: a table, or a block range of one.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Index into the plan's tables.
    pub table: usize,
    /// Heap blocks [from, to) (None: the whole table).
    pub blocks: Option<(u64, u64)>,
}

#[derive(Debug)]
pub struct Plan {
    pub tables: Vec<SourceTable>,
    /// Largest first, so the long ones start early.
    pub units: Vec<Unit>,
}

/// The tables to load: every permanent user table (partitions included, partitioned
/// parents excluded: they hold no rows), outside extensions.
pub async fn source_tables(client: &Client) -> Result<Vec<SourceTable>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text,
                    coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
                             '{}'),
                    -- Binary COPY only for built-in types: arrays and records carry their
                    -- element types' oids, which differ on the target for user types, and
                    -- reg* types travel as raw oids.
                    coalesce((SELECT bool_and(t.oid < 16384 AND coalesce(e.oid, 0) < 16384
                                              AND t.typtype = 'b' AND coalesce(e.typtype, 'b') = 'b'
                                              AND t.typname !~ '^_?reg' AND t.oid NOT IN (2249, 2287))
                                FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                                LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
                               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), true),
                    -- NULL for a table dropped since the snapshot's catalog was read.
                    coalesce(pg_relation_size(c.oid), 0)::bigint, c.relpages::bigint
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname !~ '^pg_toast'
                AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                   AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e')
              ORDER BY 1",
            &[&crate::sink::postgres::CONTROL_SCHEMA],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let (schema, name, columns): (String, String, Vec<String>) = (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            Ok(SourceTable {
                oid: r.try_get::<_, u32>(0)?,
                target_schema: schema.clone(),
                target_name: name.clone(),
                target_columns: columns.clone(),
                schema,
                name,
                columns,
                binary: r.try_get(4)?,
                bytes: r.try_get::<_, i64>(5)?.max(0) as u64,
                pages: r.try_get::<_, i64>(6)?.max(0) as u64,
            })
        })
        .collect()
}

/// Cuts tables larger than `split_bytes` into block ranges of about that size.
/// `can_split`: the source scans ctid ranges (PostgreSQL 14+).
pub fn plan(tables: Vec<SourceTable>, split_bytes: u64, can_split: bool) -> Plan {
    let mut units: Vec<(u64, Unit)> = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let parts = if can_split && split_bytes > 0 && t.bytes > split_bytes && t.pages > 1 {
            t.bytes.div_ceil(split_bytes)
        } else {
            1
        };
        if parts <= 1 {
            units.push((t.bytes, Unit { table: i, blocks: None }));
            continue;
        }
        // The size in pages may be stale (relpages): the last range is open-ended.
        let pages = (t.bytes / 8192).max(t.pages).max(1);
        let step = pages.div_ceil(parts);
        for p in 0..parts {
            let from = p * step;
            let to = if p + 1 == parts { u64::MAX } else { (p + 1) * step };
            units.push((t.bytes / parts, Unit { table: i, blocks: Some((from, to)) }));
        }
    }
    units.sort_by_key(|u| std::cmp::Reverse(u.0));
    Plan { tables, units: units.into_iter().map(|(_, u)| u).collect() }
}

/// The SELECT a unit copies out.
pub fn unit_query(t: &SourceTable, blocks: Option<(u64, u64)>) -> String {
    let mut sql = format!("SELECT {} FROM ONLY {}", t.column_list(), t.qualified());
    if let Some((from, to)) = blocks {
        sql += &format!(" WHERE ctid >= '({from},0)'::tid");
        if to != u64::MAX {
            sql += &format!(" AND ctid < '({to},0)'::tid");
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(bytes: u64) -> SourceTable {
        SourceTable {
            oid: 1,
            schema: "s".into(),
            name: "T".into(),
            columns: vec!["a".into(), "B c".into()],
            target_schema: "s".into(),
            target_name: "T".into(),
            target_columns: vec!["a".into(), "B c".into()],
            binary: true,
            bytes,
            pages: bytes / 8192,
        }
    }

    #[test]
    fn large_tables_are_cut_into_block_ranges_that_cover_the_table() {
        let p = plan(vec![table(10 << 20), table(1000 << 20)], 100 << 20, true);
        assert_eq!(p.units.len(), 1 + 10);
        let ranges: Vec<(u64, u64)> = p.units.iter().filter_map(|u| u.blocks).collect();
        assert_eq!(ranges.len(), 10);
        let mut sorted = ranges.clone();
        sorted.sort();
        assert_eq!(sorted[0].0, 0);
        assert_eq!(sorted.last().unwrap().1, u64::MAX);
        for w in sorted.windows(2) {
            assert_eq!(w[0].1, w[1].0, "ranges must neither overlap nor leave gaps");
        }
        // Without ctid range scans a table is one unit.
        assert_eq!(plan(vec![table(1000 << 20)], 100 << 20, false).units.len(), 1);
    }

    #[test]
    fn unit_queries_quote_names() {
        let t = table(0);
        assert_eq!(unit_query(&t, None), "SELECT \"a\", \"B c\" FROM ONLY \"s\".\"T\"");
        assert_eq!(
            unit_query(&t, Some((10, 20))),
            "SELECT \"a\", \"B c\" FROM ONLY \"s\".\"T\" WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid"
        );
    }
}

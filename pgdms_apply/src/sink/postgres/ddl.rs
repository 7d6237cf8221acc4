//! DDL replay: a DDL record's before/after definitions turned into the target's DDL.
//!
//! The source's query text is never replayed (see `pgdms_proto::ddl`). Instead each step
//! compares what the source's object became with what the target has now and issues only
//! what is missing, so that a step already done (a partition's column, added through its
//! parent; an object the initial schema copy already had) is not done twice. Columns are
//! matched across renames by attnum, through `before`.
//!
//! A DDL record is untrusted input. Names are quoted here; types are resolved on the
//! target (`to_regtype` of the source's type name, then `format_type` with its modifier)
//! and refused unless they name one type there; expressions, partition keys and bounds,
//! collations and sequence names pass [`crate::sql::checked`] first; and each statement
//! goes out on its own through the extended protocol, which runs exactly one.

use crate::model::RelInfo;
use crate::sql::checked::{self, Refused};
use crate::sql::{quote_ident, quote_literal};
use pgdms_proto::ddl::{ColumnDef, DdlObject, SchemaDef, TableDef, TypeDef, TypeKind};
use pgdms_proto::{Ddl, Identity};
use std::collections::HashMap;
use tokio_postgres::Client;

/// What replaying a DDL record did besides its statements.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Statements run, in order.
    pub statements: Vec<String>,
    /// The table must be reloaded: its rows on the target no longer match the source's.
    pub reload: Option<(String, String)>,
    /// Things not replicated, to report.
    pub warnings: Vec<String>,
}

/// A statement the target refused, a query about its catalog that failed, or text from
/// the record that is not what it claims to be.
#[derive(Debug)]
pub struct DdlFailed {
    pub statement: String,
    pub error: DdlError,
}

#[derive(Debug, thiserror::Error)]
pub enum DdlError {
    #[error("{0}")]
    Target(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("type {0} does not exist on the target: create it there (or its extension), then run again")]
    NoSuchType(String),
    #[error(
        "the gate that replays DDL as the object's owner was altered (it is no longer that owner's SECURITY DEFINER \
         function with pgdms's settings): refused"
    )]
    GateAltered,
}

impl DdlFailed {
    fn refused(statement: &str, refused: Refused) -> DdlFailed {
        DdlFailed { statement: statement.to_string(), error: DdlError::Refused(refused) }
    }
}

/// The `refused` of a check, as a replay failure.
trait OrFailed<T> {
    fn or_failed(self, statement: &str) -> Result<T, DdlFailed>;
}

impl<T> OrFailed<T> for Result<T, Refused> {
    fn or_failed(self, statement: &str) -> Result<T, DdlFailed> {
        self.map_err(|r| DdlFailed::refused(statement, r))
    }
}

/// Column `i` of a catalog query's row, read without trusting the reply (a NULL or another
/// type is an error, not a panic).
fn column<'r, T: tokio_postgres::types::FromSql<'r>>(
    row: &'r tokio_postgres::Row,
    i: usize,
    statement: &str,
) -> Result<T, DdlFailed> {
    row.try_get(i).map_err(|error| DdlFailed { statement: statement.to_string(), error: error.into() })
}

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// A target column as its catalog describes it (types and defaults written with
/// search_path = pg_catalog, as the source's definitions are).
#[derive(Debug)]
struct TargetColumn {
    name: String,
    type_sql: String,
    not_null: bool,
    default: Option<String>,
    identity: Identity,
    /// Inherited from a parent (every column of a partition).
    inherited: bool,
}

struct Replay<'c> {
    client: &'c Client,
    /// The gate of the object's owner to run statements through (see `roles`), if not the
    /// target role.
    gate: Option<&'c str>,
    done: Replayed,
    /// Source type (name, modifier) → the target's spelling of it.
    types: HashMap<(String, i32), String>,
}

impl<'c> Replay<'c> {
    fn new(client: &'c Client, gate: Option<&'c str>) -> Self {
        Replay { client, gate, done: Replayed::default(), types: HashMap::new() }
    }

    /// Runs one statement: the extended protocol runs exactly one, whatever the text holds
    /// (and so does a gate's EXECUTE).
    async fn run(&mut self, sql: String) -> Result<(), DdlFailed> {
        let outcome = match self.gate {
            None => self.client.execute(sql.as_str(), &[]).await.map(drop).map_err(DdlError::from),
            Some(gate) => match self.client.query(gate, &[&sql, &"{}"]).await {
                Ok(rows) if rows.is_empty() => Err(DdlError::GateAltered),
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            },
        };
        match outcome {
            Ok(()) => {
                self.done.statements.push(sql);
                Ok(())
            }
            Err(error) => Err(DdlFailed { statement: sql, error }),
        }
    }

    async fn query(&self, sql: &str, param: &str) -> Result<Vec<tokio_postgres::Row>, DdlFailed> {
        self.client
            .query(sql, &[&param])
            .await
            .map_err(|error| DdlFailed { statement: sql.to_string(), error: error.into() })
    }

    /// The single row of `sql` (any other number of rows is an error).
    async fn query_one(&self, sql: &str, param: &str) -> Result<tokio_postgres::Row, DdlFailed> {
        self.client
            .query_one(sql, &[&param])
            .await
            .map_err(|error| DdlFailed { statement: sql.to_string(), error: error.into() })
    }

    /// The target's spelling of the source's type `name` with modifier `typmod`: one type
    /// name, resolved on the target, or refused.
    async fn target_type(&mut self, name: &str, typmod: i32) -> Result<String, DdlFailed> {
        if let Some(t) = self.types.get(&(name.to_string(), typmod)) {
            return Ok(t.clone());
        }
        const RESOLVE: &str = "SELECT format_type(to_regtype($1), $2)";
        checked::type_name(name).or_failed(RESOLVE)?;
        let row = self
            .client
            .query_one(RESOLVE, &[&name, &typmod])
            .await
            .map_err(|error| DdlFailed { statement: RESOLVE.into(), error: error.into() })?;
        let Some(spelled) = column::<Option<String>>(&row, 0, RESOLVE)? else {
            return Err(DdlFailed { statement: RESOLVE.into(), error: DdlError::NoSuchType(name.into()) });
        };
        self.types.insert((name.to_string(), typmod), spelled.clone());
        Ok(spelled)
    }

    async fn exists(&self, regclass_or_type: &str, qualified: &str) -> Result<bool, DdlFailed> {
        let sql = format!("SELECT {regclass_or_type}($1) IS NOT NULL");
        column(&self.query_one(&sql, qualified).await?, 0, &sql)
    }

    async fn columns(&self, table: &str) -> Result<Vec<TargetColumn>, DdlFailed> {
        const COLUMNS: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                        CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END, \
                        a.attidentity::text, a.attinhcount > 0 \
                   FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";
        let rows = self.query(COLUMNS, table).await?;
        rows.iter()
            .map(|r| {
                Ok(TargetColumn {
                    name: column(r, 0, COLUMNS)?,
                    type_sql: column(r, 1, COLUMNS)?,
                    not_null: column(r, 2, COLUMNS)?,
                    default: column(r, 3, COLUMNS)?,
                    identity: match column::<&str>(r, 4, COLUMNS)? {
                        "a" => Identity::Always,
                        "d" => Identity::ByDefault,
                        _ => Identity::None,
                    },
                    inherited: column(r, 5, COLUMNS)?,
                })
            })
            .collect()
    }

    /// Sequences a default draws from (`serial` columns) must exist before the default.
    async fn default_sequences(&mut self, columns: &[&ColumnDef]) -> Result<(), DdlFailed> {
        for c in columns {
            let Some(default) = c.default.as_deref() else { continue };
            if let Some(seq) = checked::nextval_sequence(default).or_failed(default)? {
                self.run(format!("CREATE SEQUENCE IF NOT EXISTS {seq}")).await?;
            }
        }
        Ok(())
    }

    /// `"id" integer GENERATED BY DEFAULT AS IDENTITY NOT NULL`, as CREATE TABLE and ADD
    /// COLUMN take it, with the type resolved on the target and the expressions checked.
    async fn column_definition(&mut self, c: &ColumnDef) -> Result<String, DdlFailed> {
        let ty = self.target_type(&c.type_name, c.type_modifier).await?;
        let collation = c.collation.as_deref().map(|coll| checked::collation(coll).or_failed(coll)).transpose()?;
        let generated = c.generated.as_deref().map(|g| checked::expression(g).or_failed(g)).transpose()?;
        let default = c.default.as_deref().map(|d| checked::expression(d).or_failed(d)).transpose()?;
        Ok(column_sql(
            &c.name,
            &ty,
            collation.as_deref(),
            generated.as_deref(),
            c.identity,
            default.as_deref(),
            c.not_null,
        ))
    }

    async fn table(&mut self, before: Option<&TableDef>, after: Option<&TableDef>) -> Result<(), DdlFailed> {
        match (before, after) {
            (_, None) => {
                if let Some(b) = before {
                    // CASCADE: what depended on it on the source went with it there.
                    self.run(format!("DROP TABLE IF EXISTS {} CASCADE", qualified(&b.schema, &b.name))).await?;
                }
                Ok(())
            }
            (None, Some(a)) => self.create_table(a).await,
            (Some(b), Some(a)) => self.alter_table(b, a).await,
        }
    }

    async fn create_table(&mut self, a: &TableDef) -> Result<(), DdlFailed> {
        let name = qualified(&a.schema, &a.name);
        if self.exists("to_regclass", &name).await? {
            // Already there (from the schema copy, or made from its relation record): bring
            // it to the source's definition.
            return Box::pin(self.alter_table(a, a)).await;
        }
        self.default_sequences(&a.columns.iter().collect::<Vec<_>>()).await?;
        let partition_by = match a.partition_key.as_deref() {
            Some(k) => format!(" PARTITION BY {}", checked::partition_key(k).or_failed(k)?),
            None => String::new(),
        };
        let sql = match &a.partition_of {
            Some(p) => format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {} {}{partition_by}",
                qualified(&p.schema, &p.name),
                checked::partition_bound(&p.bound).or_failed(&p.bound)?
            ),
            None => {
                let mut parts = Vec::with_capacity(a.columns.len() + 1);
                for c in &a.columns {
                    parts.push(self.column_definition(c).await?);
                }
                if let Some(pk) = &a.primary_key {
                    parts.push(format!(
                        "CONSTRAINT {} PRIMARY KEY ({})",
                        quote_ident(&pk.name),
                        key_names(a, &pk.columns).join(", ")
                    ));
                }
                format!("CREATE TABLE IF NOT EXISTS {name} ({}){partition_by}", parts.join(", "))
            }
        };
        self.run(sql).await
    }

    async fn alter_table(&mut self, b: &TableDef, a: &TableDef) -> Result<(), DdlFailed> {
        let old_name = qualified(&b.schema, &b.name);
        let mut name = old_name.clone();
        if (&b.schema, &b.name) != (&a.schema, &a.name) && self.exists("to_regclass", &old_name).await? {
            if b.name != a.name {
                self.run(format!("ALTER TABLE {old_name} RENAME TO {}", quote_ident(&a.name))).await?;
                name = qualified(&b.schema, &a.name);
            }
            if b.schema != a.schema {
                self.run(format!("ALTER TABLE {name} SET SCHEMA {}", quote_ident(&a.schema))).await?;
            }
        }
        let name = qualified(&a.schema, &a.name);
        if !self.exists("to_regclass", &name).await? {
            // The target never had it (created before the schema copy, or by hand): create
            // it as the source has it now.
            self.done.warnings.push(format!("{name} was missing on the target: created from the source's definition"));
            return self.create_table(a).await;
        }
        let alter = |action: String| format!("ALTER TABLE {name} {action}");
        // Columns a partition (or child) inherits change through its parent, whose record
        // comes first; they cannot be dropped, renamed or retyped on their own.
        let mut target = self.columns(&name).await?;
        let own = |target: &[TargetColumn], n: &str| target.iter().any(|c| c.name == n && !c.inherited);
        let has = |target: &[TargetColumn], n: &str| target.iter().any(|c| c.name == n);

        for gone in b.columns.iter().filter(|c| a.column(c.attnum).is_none()) {
            if own(&target, &gone.name) {
                self.run(alter(format!("DROP COLUMN {}", quote_ident(&gone.name)))).await?;
            }
        }
        for now in &a.columns {
            if let Some(was) = b.column(now.attnum) {
                if was.name != now.name && own(&target, &was.name) && !has(&target, &now.name) {
                    self.run(alter(format!("RENAME COLUMN {} TO {}", quote_ident(&was.name), quote_ident(&now.name))))
                        .await?;
                }
            }
        }
        target = self.columns(&name).await?;
        let added: Vec<&ColumnDef> = a.columns.iter().filter(|c| !has(&target, &c.name)).collect();
        self.default_sequences(&added).await?;
        for c in &added {
            let Some(missing) = c.missing.as_deref().filter(|_| c.generated.is_none() && c.identity == Identity::None)
            else {
                let definition = self.column_definition(c).await?;
                self.run(alter(format!("ADD COLUMN IF NOT EXISTS {definition}"))).await?;
                continue;
            };
            // The rows already there get the value the source gave its rows, not the
            // default evaluated again here (now() would be the target's): added with that
            // value as its default, then given the source's default.
            let ty = self.target_type(&c.type_name, c.type_modifier).await?;
            let collation = c.collation.as_deref().map(|coll| checked::collation(coll).or_failed(coll)).transpose()?;
            let value = format!("{}::{ty}", quote_literal(missing));
            let definition =
                column_sql(&c.name, &ty, collation.as_deref(), None, Identity::None, Some(&value), c.not_null);
            self.run(alter(format!("ADD COLUMN IF NOT EXISTS {definition}"))).await?;
            let col = quote_ident(&c.name);
            match c.default.as_deref() {
                Some(d) => {
                    let d = checked::expression(d).or_failed(d)?;
                    self.run(alter(format!("ALTER COLUMN {col} SET DEFAULT {d}"))).await?;
                }
                None => self.run(alter(format!("ALTER COLUMN {col} DROP DEFAULT"))).await?,
            }
        }

        // What stands in the way goes first: a primary key that changes, defaults that
        // change (an old default may not cast to a new type), NOT NULL that goes; then
        // types; then the new defaults, identities, NOT NULL and primary key.
        let pk_changes = self.primary_key_changes(&name, a).await?;
        if let Some((Some(conname), _)) = &pk_changes {
            self.run(alter(format!("DROP CONSTRAINT {}", quote_ident(conname)))).await?;
        }
        let columns: Vec<(&ColumnDef, &TargetColumn)> = a
            .columns
            .iter()
            .filter(|c| c.generated.is_none() && !added.iter().any(|n| n.name == c.name))
            .filter_map(|c| target.iter().find(|t| t.name == c.name).map(|t| (c, t)))
            .collect();
        for (now, t) in &columns {
            let col = quote_ident(&now.name);
            if t.default.is_some() && t.default != now.default {
                self.run(alter(format!("ALTER COLUMN {col} DROP DEFAULT"))).await?;
            }
            if t.not_null && !now.not_null {
                self.run(alter(format!("ALTER COLUMN {col} DROP NOT NULL"))).await?;
            }
            if t.identity != Identity::None && now.identity == Identity::None {
                self.run(alter(format!("ALTER COLUMN {col} DROP IDENTITY IF EXISTS"))).await?;
            }
        }
        for (now, t) in &columns {
            let ty = self.target_type(&now.type_name, now.type_modifier).await?;
            if t.type_sql != ty && !t.inherited {
                let col = quote_ident(&now.name);
                self.run(alter(format!("ALTER COLUMN {col} TYPE {ty} USING {col}::{ty}"))).await?;
            }
        }
        for (now, t) in &columns {
            let col = quote_ident(&now.name);
            if let Some(d) = now.default.as_ref().filter(|d| t.default.as_ref() != Some(*d)) {
                self.default_sequences(&[now]).await?;
                let d = checked::expression(d).or_failed(d)?;
                self.run(alter(format!("ALTER COLUMN {col} SET DEFAULT {d}"))).await?;
            }
            match (t.identity, now.identity) {
                (from, to) if from == to || to == Identity::None => {}
                (Identity::None, to) => {
                    if !now.not_null {
                        self.run(alter(format!("ALTER COLUMN {col} SET NOT NULL"))).await?;
                    }
                    self.run(alter(format!("ALTER COLUMN {col} ADD GENERATED {} AS IDENTITY", generated(to)))).await?
                }
                (_, to) => self.run(alter(format!("ALTER COLUMN {col} SET GENERATED {}", generated(to)))).await?,
            }
            if now.not_null && !t.not_null {
                self.run(alter(format!("ALTER COLUMN {col} SET NOT NULL"))).await?;
            }
        }
        if let Some((_, true)) = pk_changes {
            if let Some(pk) = &a.primary_key {
                self.run(alter(format!(
                    "ADD CONSTRAINT {} PRIMARY KEY ({})",
                    quote_ident(&pk.name),
                    key_names(a, &pk.columns).join(", ")
                )))
                .await?;
            }
        }
        self.partition_membership(&name, a).await
    }

    /// Whether the target's primary key differs from the source's: the constraint to drop
    /// (if the target has one) and whether to add the source's.
    async fn primary_key_changes(
        &mut self,
        name: &str,
        a: &TableDef,
    ) -> Result<Option<(Option<String>, bool)>, DdlFailed> {
        const KEY: &str =
            "SELECT c.conname::text, array(SELECT attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i) \
                        JOIN pg_attribute ON attrelid = c.conrelid AND attnum = k.n ORDER BY k.i) \
                   FROM pg_constraint c WHERE c.conrelid = to_regclass($1) AND c.contype = 'p'";
        let rows = self.query(KEY, name).await?;
        let current: Option<(String, Vec<String>)> = match rows.first() {
            Some(r) => Some((column(r, 0, KEY)?, column(r, 1, KEY)?)),
            None => None,
        };
        let wanted: Option<Vec<String>> = a
            .primary_key
            .as_ref()
            .map(|pk| pk.columns.iter().filter_map(|n| a.column(*n)).map(|c| c.name.clone()).collect());
        if current.as_ref().map(|(_, cols)| cols) == wanted.as_ref() {
            return Ok(None);
        }
        Ok(Some((current.map(|(conname, _)| conname), wanted.is_some())))
    }

    async fn partition_membership(&mut self, name: &str, a: &TableDef) -> Result<(), DdlFailed> {
        const PARENT: &str =
            "SELECT n.nspname::text, c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE i.inhrelid = to_regclass($1) AND c.relkind = 'p'";
        let rows = self.query(PARENT, name).await?;
        let current: Option<(String, String)> = match rows.first() {
            Some(r) => Some((column(r, 0, PARENT)?, column(r, 1, PARENT)?)),
            None => None,
        };
        let wanted = a.partition_of.as_ref().map(|p| (p.schema.clone(), p.name.clone()));
        if current == wanted {
            return Ok(());
        }
        if let Some((schema, parent)) = &current {
            self.run(format!("ALTER TABLE {} DETACH PARTITION {name}", qualified(schema, parent))).await?;
        }
        if let Some(p) = &a.partition_of {
            let bound = checked::partition_bound(&p.bound).or_failed(&p.bound)?;
            self.run(format!("ALTER TABLE {} ATTACH PARTITION {name} {bound}", qualified(&p.schema, &p.name))).await?;
        }
        Ok(())
    }

    async fn type_(&mut self, before: Option<&TypeDef>, after: Option<&TypeDef>) -> Result<(), DdlFailed> {
        let Some(a) = after else {
            if let Some(b) = before {
                let kind = if b.kind == TypeKind::Domain { "DOMAIN" } else { "TYPE" };
                self.run(format!("DROP {kind} IF EXISTS {} CASCADE", qualified(&b.schema, &b.name))).await?;
            }
            return Ok(());
        };
        if a.kind == TypeKind::Other {
            self.done.warnings.push(format!(
                "type {}.{} is not an enum, composite or domain: create it on the target by hand",
                a.schema, a.name
            ));
            return Ok(());
        }
        let kind = if a.kind == TypeKind::Domain { "DOMAIN" } else { "TYPE" };
        if let Some(b) = before {
            let old = qualified(&b.schema, &b.name);
            if (&b.schema, &b.name) != (&a.schema, &a.name) && self.exists("to_regtype", &old).await? {
                if b.name != a.name {
                    self.run(format!("ALTER {kind} {old} RENAME TO {}", quote_ident(&a.name))).await?;
                }
                if b.schema != a.schema {
                    let renamed = qualified(&b.schema, &a.name);
                    self.run(format!("ALTER {kind} {renamed} SET SCHEMA {}", quote_ident(&a.schema))).await?;
                }
            }
        }
        let name = qualified(&a.schema, &a.name);
        if !self.exists("to_regtype", &name).await? {
            let sql = match a.kind {
                TypeKind::Enum => format!(
                    "CREATE TYPE {name} AS ENUM ({})",
                    a.labels.iter().map(|l| quote_literal(l)).collect::<Vec<_>>().join(", ")
                ),
                TypeKind::Composite => {
                    let mut attributes = Vec::with_capacity(a.attributes.len());
                    for at in &a.attributes {
                        let ty = self.target_type(&at.type_name, at.type_modifier).await?;
                        attributes.push(format!("{} {ty}", quote_ident(&at.name)));
                    }
                    format!("CREATE TYPE {name} AS ({})", attributes.join(", "))
                }
                _ => {
                    let base = a.base_type_name.as_deref().unwrap_or("text");
                    let mut sql =
                        format!("CREATE DOMAIN {name} AS {}", self.target_type(base, a.base_type_modifier).await?);
                    if let Some(d) = &a.default {
                        sql += &format!(" DEFAULT {}", checked::expression(d).or_failed(d)?);
                    }
                    if a.not_null {
                        sql += " NOT NULL";
                    }
                    for check in &a.checks {
                        sql += &format!(" CONSTRAINT {} {}", quote_ident(&check.name), domain_check(check)?);
                    }
                    sql
                }
            };
            return self.run(sql).await;
        }
        match a.kind {
            TypeKind::Enum => self.enum_labels(&name, before, a).await,
            TypeKind::Composite => self.composite_attributes(&name, before, a).await,
            _ => {
                if let Some(b) = before {
                    if b.default != a.default {
                        match &a.default {
                            Some(d) => {
                                let d = checked::expression(d).or_failed(d)?;
                                self.run(format!("ALTER DOMAIN {name} SET DEFAULT {d}")).await?
                            }
                            None => self.run(format!("ALTER DOMAIN {name} DROP DEFAULT")).await?,
                        }
                    }
                    if b.not_null != a.not_null {
                        let action = if a.not_null { "SET" } else { "DROP" };
                        self.run(format!("ALTER DOMAIN {name} {action} NOT NULL")).await?;
                    }
                    for check in b.checks.iter().filter(|c| !a.checks.contains(c)) {
                        self.run(format!("ALTER DOMAIN {name} DROP CONSTRAINT IF EXISTS {}", quote_ident(&check.name)))
                            .await?;
                    }
                    for check in a.checks.iter().filter(|c| !b.checks.contains(c)) {
                        let condition = domain_check(check)?;
                        self.run(format!(
                            "ALTER DOMAIN {name} ADD CONSTRAINT {} {condition}",
                            quote_ident(&check.name)
                        ))
                        .await?;
                    }
                }
                Ok(())
            }
        }
    }

    /// A composite type's attributes, matched across renames by attnum through `before`:
    /// dropped, renamed, added, retyped, each only if the target still needs it.
    async fn composite_attributes(
        &mut self,
        name: &str,
        before: Option<&TypeDef>,
        a: &TypeDef,
    ) -> Result<(), DdlFailed> {
        let attrs_sql = "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                          WHERE attrelid = (SELECT typrelid FROM pg_type WHERE oid = to_regtype($1)) \
                            AND attnum > 0 AND NOT attisdropped ORDER BY attnum";
        let read = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<(String, String)>, DdlFailed> {
            rows.iter().map(|r| Ok((column(r, 0, attrs_sql)?, column(r, 1, attrs_sql)?))).collect()
        };
        let mut have = read(self.query(attrs_sql, name).await?)?;
        let has = |have: &[(String, String)], n: &str| have.iter().any(|(h, _)| h == n);
        if let Some(b) = before {
            for gone in b.attributes.iter().filter(|o| !a.attributes.iter().any(|n| n.attnum == o.attnum)) {
                if has(&have, &gone.name) {
                    self.run(format!("ALTER TYPE {name} DROP ATTRIBUTE {}", quote_ident(&gone.name))).await?;
                }
            }
            for now in &a.attributes {
                if let Some(was) = b.attributes.iter().find(|o| o.attnum == now.attnum && o.name != now.name) {
                    if has(&have, &was.name) && !has(&have, &now.name) {
                        self.run(format!(
                            "ALTER TYPE {name} RENAME ATTRIBUTE {} TO {}",
                            quote_ident(&was.name),
                            quote_ident(&now.name)
                        ))
                        .await?;
                    }
                }
            }
            have = read(self.query(attrs_sql, name).await?)?;
        }
        for now in &a.attributes {
            let want = self.target_type(&now.type_name, now.type_modifier).await?;
            match have.iter().find(|(h, _)| *h == now.name) {
                None => self.run(format!("ALTER TYPE {name} ADD ATTRIBUTE {} {want}", quote_ident(&now.name))).await?,
                Some((_, ty)) if *ty != want => {
                    self.run(format!(
                        "ALTER TYPE {name} ALTER ATTRIBUTE {} TYPE {want} CASCADE",
                        quote_ident(&now.name)
                    ))
                    .await?
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Renamed labels (same position, new text) and added ones, each added next to a label
    /// the target has, so the sort order is the source's.
    async fn enum_labels(&mut self, name: &str, before: Option<&TypeDef>, a: &TypeDef) -> Result<(), DdlFailed> {
        let labels_sql = "SELECT enumlabel::text FROM pg_enum WHERE enumtypid = to_regtype($1) ORDER BY enumsortorder";
        let read = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<String>, DdlFailed> {
            rows.iter().map(|r| column(r, 0, labels_sql)).collect()
        };
        let mut have: Vec<String> = read(self.query(labels_sql, name).await?)?;
        if let Some(b) = before.filter(|b| b.labels.len() == a.labels.len()) {
            for (old, new) in b.labels.iter().zip(&a.labels).filter(|(o, n)| o != n) {
                if have.contains(old) && !have.contains(new) {
                    self.run(format!(
                        "ALTER TYPE {name} RENAME VALUE {} TO {}",
                        quote_literal(old),
                        quote_literal(new)
                    ))
                    .await?;
                }
            }
            have = read(self.query(labels_sql, name).await?)?;
        }
        for (i, label) in a.labels.iter().enumerate() {
            if have.contains(label) {
                continue;
            }
            let place = match a.labels[i + 1..].iter().find(|l| have.contains(l)) {
                Some(next) => format!(" BEFORE {}", quote_literal(next)),
                None => String::new(),
            };
            self.run(format!("ALTER TYPE {name} ADD VALUE IF NOT EXISTS {}{place}", quote_literal(label))).await?;
            let at = a.labels[i + 1..].iter().find_map(|l| have.iter().position(|h| h == l)).unwrap_or(have.len());
            have.insert(at, label.clone());
        }
        Ok(())
    }

    async fn schema(&mut self, before: Option<&SchemaDef>, after: Option<&SchemaDef>) -> Result<(), DdlFailed> {
        match (before, after) {
            (Some(b), None) => self.run(format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&b.name))).await,
            (None, Some(a)) => self.run(format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&a.name))).await,
            (Some(b), Some(a)) if b.name != a.name => {
                const FOUND: &str = "SELECT to_regnamespace($1) IS NOT NULL";
                if column(&self.query_one(FOUND, &quote_ident(&b.name)).await?, 0, FOUND)? {
                    self.run(format!("ALTER SCHEMA {} RENAME TO {}", quote_ident(&b.name), quote_ident(&a.name)))
                        .await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A column's definition from its checked pieces: the type as the target spells it, the
/// collation quoted, expressions parenthesised by [`checked`].
fn column_sql(
    name: &str,
    ty: &str,
    collation: Option<&str>,
    generated_as: Option<&str>,
    identity: Identity,
    default: Option<&str>,
    not_null: bool,
) -> String {
    let mut sql = format!("{} {ty}", quote_ident(name));
    if let Some(coll) = collation {
        sql += &format!(" COLLATE {coll}");
    }
    match (generated_as, identity, default) {
        (Some(expr), _, _) => sql += &format!(" GENERATED ALWAYS AS {expr} STORED"),
        (None, Identity::Always | Identity::ByDefault, _) => {
            sql += &format!(" GENERATED {} AS IDENTITY", generated(identity))
        }
        (None, Identity::None, Some(d)) => sql += &format!(" DEFAULT {d}"),
        (None, Identity::None, None) => {}
    }
    if not_null {
        sql += " NOT NULL";
    }
    sql
}

/// A domain's CHECK from its condition alone (the definition text is for information).
fn domain_check(check: &pgdms_proto::ddl::DomainCheck) -> Result<String, DdlFailed> {
    let Some(condition) = check.expression.as_deref() else {
        return Err(DdlFailed::refused(&check.definition, Refused::missing("a domain check's condition")));
    };
    Ok(format!("CHECK {}", checked::expression(condition).or_failed(condition)?))
}

/// The GENERATED clause of an identity column.
fn generated(identity: Identity) -> &'static str {
    if identity == Identity::Always {
        "ALWAYS"
    } else {
        "BY DEFAULT"
    }
}

fn key_names(t: &TableDef, attnums: &[i16]) -> Vec<String> {
    attnums.iter().filter_map(|n| t.column(*n)).map(|c| quote_ident(&c.name)).collect()
}

/// Creates a table the target lacks from its relation record: for rows that arrive before
/// their table's DDL record (CREATE TABLE AS, SELECT INTO, in a transaction too large to
/// reorder). The DDL record that follows completes the definition. Returns whether it
/// created the table.
pub async fn ensure_table(client: &Client, rel: &RelInfo, gate: Option<&str>) -> Result<bool, DdlFailed> {
    let mut r = Replay::new(client, gate);
    let name = qualified(&rel.schema, &rel.name);
    if r.exists("to_regclass", &name).await? {
        return Ok(false);
    }
    let mut parts = Vec::with_capacity(rel.columns.len() + 1);
    for c in &rel.columns {
        let ty = r.target_type(&c.type_name, c.type_modifier).await?;
        parts.push(column_sql(&c.name, &ty, None, None, Identity::None, None, c.not_null));
    }
    let pk: Vec<String> = rel.columns.iter().filter(|c| c.primary_key).map(|c| quote_ident(&c.name)).collect();
    if !pk.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", pk.join(", ")));
    }
    r.run(format!("CREATE TABLE IF NOT EXISTS {name} ({})", parts.join(", "))).await?;
    Ok(true)
}

/// Replays one DDL record on the target, inside the open transaction; its statements run
/// through `gate` (as the object's owner) when given.
pub async fn replay(client: &Client, ddl: &Ddl, gate: Option<&str>) -> Result<Replayed, DdlFailed> {
    let mut r = Replay::new(client, gate);
    match &ddl.object {
        DdlObject::Table { before, after } => r.table(before.as_ref(), after.as_ref()).await?,
        DdlObject::Type { before, after } => r.type_(before.as_ref(), after.as_ref()).await?,
        DdlObject::Schema { before, after } => r.schema(before.as_ref(), after.as_ref()).await?,
        DdlObject::Rewrite { schema, name, reason, .. } => {
            r.done.reload = Some((qualified(schema, name), pgdms_proto::ddl::rewrite_reason::describe(*reason)));
        }
        // The caller reports it: there is nothing to run.
        DdlObject::CaptureFailed { .. } => {}
    }
    Ok(r.done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_definitions() {
        assert_eq!(
            column_sql("Id", "integer", None, None, Identity::ByDefault, None, true),
            "\"Id\" integer GENERATED BY DEFAULT AS IDENTITY NOT NULL"
        );
        assert_eq!(
            column_sql("g", "numeric(10,2)", None, Some("((a * 2))"), Identity::None, None, false),
            "\"g\" numeric(10,2) GENERATED ALWAYS AS ((a * 2)) STORED"
        );
        assert_eq!(
            column_sql("t", "text", Some("\"pg_catalog\".\"C\""), None, Identity::None, Some("('x'::text)"), false),
            "\"t\" text COLLATE \"pg_catalog\".\"C\" DEFAULT ('x'::text)"
        );
    }

    #[test]
    fn a_domain_check_without_its_condition_is_refused() {
        let check =
            pgdms_proto::ddl::DomainCheck { name: "c".into(), definition: "CHECK (true)".into(), expression: None };
        assert!(domain_check(&check).is_err());
        let check = pgdms_proto::ddl::DomainCheck { expression: Some("(VALUE > 0)".into()), ..check };
        assert_eq!(domain_check(&check).unwrap(), "CHECK ((VALUE > 0))");
    }
}

//! Who the apply acts as on a PostgreSQL target.
//!
//! The source's owners control code that runs when their tables are written or altered on
//! the target: defaults, checks and generated columns, domains, triggers they marked
//! `ENABLE ALWAYS` or `ENABLE REPLICA` (which fire under `session_replication_role =
//! replica`), index expressions. None of it may run with more than its owner's rights. So,
//! as PostgreSQL 16's subscriptions do:
//!
//! * every session runs as the *target role*: `--target-role`, or else the login role. It
//!   must not be a superuser, nor able to become one or to run programs or touch files on
//!   the server (a superuser login sets `session_replication_role`, then `SET ROLE`s to it);
//!   the schemas on its search_path must be ones only it (or superusers) may create in, and
//!   `pg_temp` goes last on it;
//! * a table's rows are written, and an object's DDL replayed, as the object's owner on the
//!   target. An owner that is the target role or a superuser: as the target role (which needs
//!   the rights); any other owner the target role must be able to become, or the apply stops.
//!
//! A plain `SET ROLE` would not contain the owner's code: it could `RESET ROLE` (or
//! `set_config('role', ...)`) back to the target role, and reach every other owner through
//! it. PostgreSQL 16's apply worker runs such code as a "security-restricted operation";
//! from outside the server the nearest is a SECURITY DEFINER function, inside which
//! PostgreSQL refuses every change of role. So what runs as another owner goes through that
//! owner's *gate*: `pgdms_gate."as_<oid>"(statement, arguments)`, owned by the owner,
//! executing one statement with `$1[n]` for its arguments. What a SECURITY DEFINER function
//! does not stop, the gate checks after the statement, and fails if the owner's code left
//! anything in the session that the target role's later statements or its COMMIT could pick
//! up: a prepared statement made with SQL (which could replace one of ours by name), an
//! object in the session's temporary schema that is not the target role's, a cursor WITH
//! HOLD (its query goes on at COMMIT), before PostgreSQL 18 a deferrable trigger that fires
//! under replica on another owner's table (it runs at COMMIT as the role current then), or
//! a changed setting our statements depend on. Such a failure ends the session
//! (`GATE_ALARM`). A gate serves only the statement pgdms-apply sends to call it
//! (`current_query()`), so code running as the target role cannot act as an owner through
//! it. The gate's schema is
//! the target role's, and each call checks, in the same statement, that the gate is still
//! the owner's SECURITY DEFINER function with its body and search_path (the owner owns it),
//! and refuses otherwise.

use crate::sql::{quote_ident, quote_literal};
use std::collections::HashMap;
use tokio_postgres::Client;

/// What kind of object a role is looked up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Object {
    /// A table, by its qualified name.
    Table,
    Type,
    Schema,
}

impl Object {
    /// The owner of the object named `$1`, whether it is a superuser, and whether the
    /// current role may become it (`$2`: 'SET' on PostgreSQL 16+, 'MEMBER' before: needed to
    /// give it its gate) and has its privileges (USAGE: the target role makes the staging
    /// tables the owner's statements read). An object of pg_database_owner (PostgreSQL 15's
    /// `public`) is the database owner's.
    fn owner_query(self) -> String {
        let owner = match self {
            Object::Table => "SELECT relowner FROM pg_class WHERE oid = to_regclass($1)",
            Object::Type => "SELECT typowner FROM pg_type WHERE oid = to_regtype($1)",
            Object::Schema => "SELECT nspowner FROM pg_namespace WHERE oid = to_regnamespace($1)",
        };
        format!(
            "SELECT r.rolname::text, r.rolsuper, pg_has_role(r.oid, $2) AND pg_has_role(r.oid, 'USAGE')
               FROM ({owner}) o(owner)
               JOIN pg_roles r ON r.oid = CASE WHEN o.owner = to_regrole('pg_database_owner')
                                               THEN (SELECT datdba FROM pg_database WHERE datname = current_database())
                                               ELSE o.owner END"
        )
    }
}

/// The target role has, or can take, a superuser's power: refused.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(
        "the target role \"{0}\" is a superuser: pgdms-apply does not replay the source's DDL or write its rows with \
         superuser rights (the source's table owners control defaults, checks and triggers that run then). Connect to \
         the target as a role without superuser, or pass --target-role ROLE (see README, \"Target role\")"
    )]
    Superuser(String),
    #[error(
        "the target role \"{role}\" may become {powerful}, which have a superuser's power (or run programs and \
         read and write files on the server): code of the source's owners running as the target role could take it. \
         Use a target role without those memberships (see README, \"Target role\")"
    )]
    Powerful { role: String, powerful: String },
    #[error(
        "the target role \"{0}\" has CREATEROLE, which before PostgreSQL 16 lets it grant itself roles that run \
         programs and read and write files on the server: use a target role without it (see README, \"Target role\")"
    )]
    CreateRole(String),
    #[error(
        "the target role \"{role}\" may not act as \"{owner}\", the owner of {object} on the target: GRANT \"{owner}\" \
         TO \"{role}\" (pgdms-apply writes each table as its owner, as PostgreSQL 16's subscriptions do), or make \
         the target role its owner"
    )]
    CannotBecome { role: String, owner: String, object: String },
    #[error(
        "schema {schema} on the target role's search_path is {why}: code of the source's owners could put functions or \
         types there that pgdms-apply's statements would pick up. Revoke that (REVOKE CREATE ON SCHEMA {schema} FROM \
         PUBLIC...), or give the target role a search_path of schemas only it controls (ALTER ROLE ... SET \
         search_path)"
    )]
    UnsafeSearchPath { schema: String, why: String },
    #[error(
        "schema pgdms_gate on the target is not the target role's: it holds the functions pgdms-apply writes other \
         owners' tables through. Drop it (or give it to the target role) and run again"
    )]
    GateSchema,
    #[error("{0}")]
    Sql(#[from] tokio_postgres::Error),
}

/// The roles of one target session.
#[derive(Debug)]
pub struct Roles {
    /// The target role, as it is named, and its oid.
    target: String,
    target_oid: i64,
    /// The privilege pg_has_role checks for SET ROLE.
    may_become: &'static str,
    /// The server's `server_version_num`.
    server_version: i32,
    /// Per object looked up: None when there is no such object, else the role to become
    /// (None: the target role).
    owners: HashMap<(Object, String), Option<Option<String>>>,
    /// Per owner, the statement that calls its gate (see the module's doc).
    gates: HashMap<String, String>,
}

impl Roles {
    /// Makes the session act as `requested` (or the login role) and checks it is no
    /// superuser. Settings only a privileged login may set (`session_replication_role`)
    /// come before.
    pub async fn assume(client: &Client, requested: Option<&str>) -> Result<Roles, RoleError> {
        if let Some(role) = requested {
            client.batch_execute(&format!("SET ROLE {}", quote_ident(role))).await?;
        }
        let row = client
            .query_one(
                "SELECT current_user::text, r.rolsuper, current_setting('server_version_num')::int,
                        (SELECT string_agg(quote_ident(b.rolname), ', ' ORDER BY b.rolname) FROM pg_roles b
                          WHERE b.oid <> r.oid AND pg_has_role(r.oid, b.oid, 'MEMBER')
                            AND (b.rolsuper OR b.rolname IN ('pg_execute_server_program', 'pg_write_server_files',
                                                             'pg_read_server_files'))),
                        r.rolcreaterole,
                        (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
                   FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await?;
        let target: String = row.try_get(0)?;
        let version: i32 = row.try_get(2)?;
        if row.try_get::<_, bool>(1)? {
            return Err(RoleError::Superuser(target));
        }
        if let Some(powerful) = row.try_get::<_, Option<String>>(3)? {
            return Err(RoleError::Powerful { role: target, powerful });
        }
        if row.try_get::<_, bool>(4)? && version < 160000 {
            return Err(RoleError::CreateRole(target));
        }
        static WARNED: std::sync::Once = std::sync::Once::new();
        // NULL when the session user was dropped meanwhile: no superuser then.
        if row.try_get::<_, Option<bool>>(5)?.unwrap_or(false) {
            WARNED.call_once(|| tracing::warn!(
                role = %target,
                "logged in to the target as a superuser: code of the source's owners that runs while pgdms-apply writes \
                 could take the login's rights back (RESET ROLE); log in as the target role itself for a hard boundary"
            ));
        }
        // pg_temp last (else it is searched first for types), and no schema on the path that
        // another role could put objects in.
        client
            .batch_execute(
                "SELECT pg_catalog.set_config('search_path', pg_catalog.current_setting('search_path') || ', pg_temp', false)
                  WHERE NOT 'pg_temp' = ANY (pg_catalog.string_to_array(pg_catalog.replace(
                            pg_catalog.current_setting('search_path'), ' ', ''), ','))",
            )
            .await?;
        let unsafe_schema = client
            .query_opt(
                "WITH me AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user),
                      db AS (SELECT datdba FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()),
                      who AS (
                        SELECT n.nspname, 'owned by' AS how,
                               CASE WHEN n.nspowner = pg_catalog.to_regrole('pg_database_owner') THEN (SELECT datdba FROM db)
                                    ELSE n.nspowner END AS role
                          FROM pg_catalog.pg_namespace n
                         WHERE n.nspname = ANY (pg_catalog.current_schemas(false)) AND n.nspname <> 'pg_catalog'
                        UNION ALL
                        SELECT n.nspname, 'open to CREATE by',
                               CASE WHEN a.grantee = pg_catalog.to_regrole('pg_database_owner') THEN (SELECT datdba FROM db)
                                    ELSE a.grantee END
                          FROM pg_catalog.pg_namespace n,
                               pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a
                         WHERE n.nspname = ANY (pg_catalog.current_schemas(false)) AND n.nspname <> 'pg_catalog'
                           AND a.privilege_type = 'CREATE')
                 SELECT pg_catalog.quote_ident(w.nspname),
                        w.how || ' ' || CASE WHEN w.role = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END
                   FROM who w LEFT JOIN pg_catalog.pg_roles r ON r.oid = w.role
                  WHERE w.role <> (SELECT oid FROM me) AND (w.role = 0 OR NOT coalesce(r.rolsuper, false))
                  LIMIT 1",
                &[],
            )
            .await?;
        if let Some(row) = unsafe_schema {
            return Err(RoleError::UnsafeSearchPath { schema: row.try_get(0)?, why: row.try_get(1)? });
        }
        let target_oid: i64 = client
            .query_one("SELECT oid::bigint FROM pg_catalog.pg_roles WHERE rolname = current_user", &[])
            .await?
            .try_get(0)?;
        let may_become = if version >= 160000 { "SET" } else { "MEMBER" };
        Ok(Roles {
            target,
            target_oid,
            may_become,
            server_version: version,
            owners: HashMap::new(),
            gates: HashMap::new(),
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// For the object `name`: None when there is none, else the role to act as (None: the
    /// target role, for an owner that is the target role or a superuser). Another owner that
    /// the target role may not become is refused, as PostgreSQL 16 refuses it.
    pub async fn lookup(
        &mut self,
        client: &Client,
        kind: Object,
        name: &str,
    ) -> Result<Option<Option<String>>, RoleError> {
        if let Some(known) = self.owners.get(&(kind, name.to_string())) {
            return Ok(known.clone());
        }
        let rows = client.query(&kind.owner_query(), &[&name, &self.may_become]).await?;
        let found = match rows.first() {
            None => None,
            Some(r) => {
                let (owner, superuser, may): (String, bool, bool) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                if owner == self.target {
                    Some(None)
                } else if superuser {
                    tracing::warn!(object = %name, owner = %owner, role = %self.target, "owned by a superuser on the target: written and altered as the target role");
                    Some(None)
                } else if may {
                    Some(Some(owner))
                } else {
                    return Err(RoleError::CannotBecome { role: self.target.clone(), owner, object: name.to_string() });
                }
            }
        };
        self.owners.insert((kind, name.to_string()), found.clone());
        Ok(found)
    }

    /// The role to act as for `name` (None: the target role, or no such object).
    pub async fn owner(&mut self, client: &Client, kind: Object, name: &str) -> Result<Option<String>, RoleError> {
        Ok(self.lookup(client, kind, name).await?.flatten())
    }

    /// The role looked up before for a table (see [`Roles::owner`]).
    pub fn known_table_owner(&self, name: &str) -> Option<&str> {
        self.owners.get(&(Object::Table, name.to_string())).and_then(|r| r.as_ref()).and_then(|r| r.as_deref())
    }

    /// Objects may have been created, dropped or renamed: look owners up again.
    pub fn forget(&mut self) {
        self.owners.clear();
    }

    /// The statement calling `owner`'s gate, if this session made it (see [`Roles::gate`]).
    pub fn known_gate(&self, owner: &str) -> Option<String> {
        self.gates.get(owner).cloned()
    }

    /// The transaction that made gates was rolled back: make them again when needed.
    pub fn forget_gates(&mut self) {
        self.gates.clear();
    }

    /// The statement calling `owner`'s gate (`$1`: the statement, `$2`: its arguments as a
    /// text array; it returns the rows the statement affected, and no row at all when the
    /// gate is not what pgdms made). Made or made again when missing or altered, in a
    /// transaction of its own when `own_transaction`, else in the caller's. Its search_path
    /// is the session's (set by [`Roles::assume`]).
    pub async fn gate(&mut self, client: &Client, owner: &str, own_transaction: bool) -> Result<String, RoleError> {
        if let Some(call) = self.gates.get(owner) {
            return Ok(call.clone());
        }
        let row = client.query_one("SELECT oid::bigint FROM pg_catalog.pg_roles WHERE rolname = $1", &[&owner]).await?;
        let owner_oid: i64 = row.try_get(0)?;
        let function = format!("pgdms_gate.{}", quote_ident(&format!("as_{owner_oid}")));
        let signature = format!("{function}(text, text[])");
        let body = gate_body(&function, self.target_oid, self.server_version);
        // What the gate must be: the owner's volatile SECURITY DEFINER function with pgdms's
        // body and the session's search_path (its proconfig), in the target role's schema.
        let valid = format!(
            "SELECT p.oid::bigint, p.proconfig::text FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
              WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure({sig}) AND p.prosecdef
                AND p.provolatile OPERATOR(pg_catalog.=) 'v' AND p.proowner OPERATOR(pg_catalog.=) {owner_oid}::pg_catalog.oid
                AND n.nspowner OPERATOR(pg_catalog.=) {target}::pg_catalog.oid
                AND p.prosrc OPERATOR(pg_catalog.=) {body}
                AND p.proconfig OPERATOR(pg_catalog.=) ARRAY['search_path=' OPERATOR(pg_catalog.||) pg_catalog.current_setting('search_path')]",
            sig = quote_literal(&signature),
            target = self.target_oid,
            body = quote_literal(&body),
        );
        // Made by another session already: nothing to wait for.
        if let Some(row) = client.query_opt(&valid, &[]).await? {
            return self.remember(owner, &function, owner_oid, &body, row);
        }
        let run = |sql: String| async move { client.batch_execute(&sql).await };
        if own_transaction {
            run("BEGIN".into()).await?;
        }
        let made = async {
            // One session at a time makes a gate (load jobs may want the same one).
            client
                .execute("SELECT pg_catalog.pg_advisory_xact_lock(1885693011, $1::int)", &[&(owner_oid as i32)])
                .await?;
            if client.query_opt(&valid, &[]).await?.is_none() {
                let owner_q = quote_ident(owner);
                let target_q = quote_ident(&self.target);
                // Sessions making the gates of different owners would race for a schema yet to make.
                client
                    .execute(
                        "SELECT pg_catalog.pg_advisory_xact_lock(1885693011, 0)
                          WHERE pg_catalog.to_regnamespace('pgdms_gate') IS NULL",
                        &[],
                    )
                    .await?;
                run("CREATE SCHEMA IF NOT EXISTS pgdms_gate".into()).await?;
                let schema_owner: i64 = client
                    .query_one("SELECT nspowner::bigint FROM pg_catalog.pg_namespace WHERE nspname = 'pgdms_gate'", &[])
                    .await?
                    .try_get(0)?;
                if schema_owner != self.target_oid {
                    return Ok(None);
                }
                run(format!("DROP FUNCTION IF EXISTS {signature}")).await?;
                run(format!(
                    "CREATE FUNCTION {function}(statement text, args text[]) RETURNS bigint LANGUAGE plpgsql VOLATILE \
                     SECURITY DEFINER SET search_path FROM CURRENT AS {}",
                    quote_literal(&body)
                ))
                .await?;
                run(format!("REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")).await?;
                // Giving it away needs the new owner to have CREATE on the schema for a moment.
                run(format!("GRANT CREATE, USAGE ON SCHEMA pgdms_gate TO {owner_q}")).await?;
                run(format!("ALTER FUNCTION {signature} OWNER TO {owner_q}")).await?;
                run(format!("REVOKE CREATE ON SCHEMA pgdms_gate FROM {owner_q}")).await?;
                run(format!(
                    "SET ROLE {owner_q}; GRANT EXECUTE ON FUNCTION {signature} TO {target_q}; SET ROLE {target_q}"
                ))
                .await?;
            }
            client.query_opt(&valid, &[]).await
        }
        .await;
        if own_transaction {
            run(if matches!(made, Ok(Some(_))) { "COMMIT" } else { "ROLLBACK" }.into()).await?;
        }
        let row = made?.ok_or(RoleError::GateSchema)?;
        self.remember(owner, &function, owner_oid, &body, row)
    }

    /// The call of a gate found valid (`row`: its oid and proconfig), kept for the session.
    fn remember(
        &mut self,
        owner: &str,
        function: &str,
        owner_oid: i64,
        body: &str,
        row: tokio_postgres::Row,
    ) -> Result<String, RoleError> {
        let (oid, config): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
        // Checked again at every call, in the statement that calls it (the owner owns the
        // gate and could make it run as its caller, or set another search_path on it).
        let call = format!(
            "{}($1::pg_catalog.text, $2::pg_catalog.text::pg_catalog.text[]) FROM pg_catalog.pg_proc p
              WHERE p.oid OPERATOR(pg_catalog.=) {oid}::pg_catalog.oid AND p.prosecdef
                AND p.provolatile OPERATOR(pg_catalog.=) 'v'
                AND p.proowner OPERATOR(pg_catalog.=) {owner_oid}::pg_catalog.oid
                AND p.proconfig::pg_catalog.text OPERATOR(pg_catalog.=) {}
                AND p.prosrc OPERATOR(pg_catalog.=) {}",
            gate_call_prefix(function),
            quote_literal(&config),
            quote_literal(body),
        );
        self.gates.insert(owner.to_string(), call.clone());
        Ok(call)
    }
}

/// SQLSTATE of a gate that found the session tampered with: the session must end.
pub const GATE_ALARM: &str = "PGDMS";

/// The settings our statements and the session depend on, whose values the owner's code
/// may not change: how texts parse and values print, what names resolve to, how rows are
/// seen and commits made durable, and what would make the apply's later statements or
/// transactions fail (read-only defaults, timeouts, exit_on_error).
const PINNED_SETTINGS: &str = "'array_nulls', 'backslash_quote', 'bytea_output', 'client_encoding', 'DateStyle', \
    'default_transaction_deferrable', 'default_transaction_isolation', 'default_transaction_read_only', \
    'exit_on_error', 'extra_float_digits', 'gin_fuzzy_search_limit', 'idle_in_transaction_session_timeout', \
    'IntervalStyle', 'lc_monetary', 'lc_numeric', 'lock_timeout', 'row_security', 'search_path', \
    'session_replication_role', 'standard_conforming_strings', 'statement_timeout', 'synchronous_commit', \
    'TimeZone', 'transaction_read_only', 'transform_null_equals', 'xmlbinary', 'xmloption'";

/// A gate's body: one statement, its arguments in `$1` (a text array), the rows it affected;
/// then the checks a SECURITY DEFINER function does not make for itself (see the module's
/// doc). `function` is the gate's name as [`Roles::remember`] calls it, `target` the target
/// role's oid, `server_version` the server's `server_version_num`.
fn gate_body(function: &str, target: i64, server_version: i32) -> String {
    // Before PostgreSQL 18 a deferred trigger runs as the role current at COMMIT, the target
    // role, not as the one that queued its event inside the gate. Refused when one could fire
    // (session_replication_role = replica fires only ALWAYS and REPLICA triggers) on a table
    // whose owner has a gate (neither the target role nor a superuser): once its events are
    // queued, the trigger can be neither dropped nor disabled, so what the catalog says after
    // the statement holds until COMMIT.
    let deferred_triggers = if server_version < 180000 {
        format!(
            "
    SELECT pg_catalog.format('trigger %I on %s', t.tgname, t.tgrelid::pg_catalog.regclass) INTO deferred
      FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid
     WHERE t.tgdeferrable AND t.tgenabled OPERATOR(pg_catalog.=) ANY ('{{A,R}}'::pg_catalog.\"char\"[])
       AND c.relowner OPERATOR(pg_catalog.<>) {target}::pg_catalog.oid
       AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) c.relowner)
     LIMIT 1;
    IF deferred IS NOT NULL THEN
        RAISE EXCEPTION 'pgdms: % is deferrable and would fire during the apply (ENABLE ALWAYS or REPLICA): before \
PostgreSQL 18 it would run at COMMIT as the target role instead of its owner, so pgdms-apply does not write as that \
table''s owner while it exists. Make it NOT DEFERRABLE, or ENABLE it (origin only) on the target', deferred
            USING ERRCODE = '{GATE_ALARM}';
    END IF;"
        )
    } else {
        String::new()
    };
    format!(
        "
DECLARE
    affected bigint;
    deferred text;
    settings_before text := (SELECT pg_catalog.string_agg(name OPERATOR(pg_catalog.||) '=' OPERATOR(pg_catalog.||) setting, ',' ORDER BY name)
                               FROM pg_catalog.pg_settings WHERE name IN ({PINNED_SETTINGS}));
BEGIN
    -- Only pgdms-apply's own call, as the statement it sends: code running as the target role
    -- (at COMMIT, or on the target role's own tables) could otherwise act as this owner.
    -- (No statement text at all, as at the COMMIT of a Sync, is no call of pgdms-apply's.)
    IF NOT coalesce(pg_catalog.starts_with(pg_catalog.current_query(), {own_call}), false) THEN
        RAISE EXCEPTION 'pgdms: % may be called only by pgdms-apply, as the statement it sends', {own_name}
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    EXECUTE statement USING args;
    GET DIAGNOSTICS affected = ROW_COUNT;
    IF EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql)
       OR EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()
                     AND relowner OPERATOR(pg_catalog.<>) {target}::pg_catalog.oid)
       OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()
                     AND typowner OPERATOR(pg_catalog.<>) {target}::pg_catalog.oid)
       OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())
       -- A cursor WITH HOLD runs the rest of its query at COMMIT, as the target role.
       OR EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable)
       OR settings_before IS DISTINCT FROM
          (SELECT pg_catalog.string_agg(name OPERATOR(pg_catalog.||) '=' OPERATOR(pg_catalog.||) setting, ',' ORDER BY name)
             FROM pg_catalog.pg_settings WHERE name IN ({PINNED_SETTINGS}))
    THEN
        RAISE EXCEPTION 'pgdms: code of the table''s owner left a prepared statement, a temporary object, a cursor \
WITH HOLD or a changed setting in the session, which pgdms-apply''s later statements or its COMMIT could pick up: refused'
            USING ERRCODE = '{GATE_ALARM}';
    END IF;{deferred_triggers}
    RETURN affected;
END
",
        own_call = quote_literal(&format!("{}(", gate_call_prefix(function))),
        own_name = quote_literal(function),
    )
}

/// How [`Roles::remember`]'s call of the gate `function` begins.
fn gate_call_prefix(function: &str) -> String {
    format!("SELECT {function}")
}

/// `statement` for a gate: each parameter `$n` becomes `($1[n])`, the n-th element of the
/// gate's argument array (found by PostgreSQL's own scanner, not by text search).
pub fn for_gate(statement: &str) -> Result<String, String> {
    use pg_query::protobuf::Token;
    let tokens = pg_query::scan(statement).map_err(|e| e.to_string())?.tokens;
    let mut out = String::with_capacity(statement.len() + 16);
    let mut at = 0;
    for t in tokens.iter().filter(|t| t.token == Token::Param as i32) {
        let (start, end) = (t.start as usize, t.end as usize);
        let n = statement.get(start + 1..end).ok_or("a parameter out of place")?;
        out.push_str(&statement[at..start]);
        out.push_str(&format!("($1[{n}])"));
        at = end;
    }
    out.push_str(&statement[at..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::for_gate;

    #[test]
    fn parameters_become_elements_of_the_gates_argument() {
        assert_eq!(
            for_gate("UPDATE \"a$1\" SET \"$2\" = $2::integer WHERE k = $1 AND t = '$3'").unwrap(),
            "UPDATE \"a$1\" SET \"$2\" = ($1[2])::integer WHERE k = ($1[1]) AND t = '$3'"
        );
        assert_eq!(for_gate("TRUNCATE t").unwrap(), "TRUNCATE t");
    }
}

//! Who the apply acts as on a PostgreSQL target.
//!
//! The source's owners control code that runs when their tables are written or altered on
//! the target: defaults, checks and generated columns, triggers they marked `ENABLE ALWAYS`
//! or `ENABLE REPLICA` (which fire under `session_replication_role = replica`), index
//! expressions. None of it may run with more than its owner's rights. So, as PostgreSQL 16's
//! subscriptions do:
//!
//! * every session runs as the *target role*: `--target-role`, or else the login role. It
//!   must not be a superuser, nor able to become one or to run programs or touch files on
//!   the server (a superuser login sets `session_replication_role`, then `SET ROLE`s to it);
//! * a table's rows are written, and an object's DDL replayed, as the object's owner on the
//!   target when the target role may become it, and as the target role otherwise (also when
//!   the owner is a superuser: the target role then needs the rights itself).
//!
//! A plain `SET ROLE` would not contain the owner's code: it could `RESET ROLE` (or
//! `set_config('role', ...)`) back to the target role, and reach every other owner through
//! it. PostgreSQL 16's apply worker runs such code as a "security-restricted operation";
//! from outside the server the equivalent is a SECURITY DEFINER function, inside which
//! PostgreSQL refuses every change of role and undoes every setting the code changes. So
//! what runs as another owner goes through that owner's *gate*: `pgdms_gate."as_<oid>"
//! (statement, arguments)`, owned by the owner, executing one statement with `$1[n]` for its
//! arguments. The gate's schema is the target role's; each call checks, in the same
//! statement, that the gate is still the owner's SECURITY DEFINER function with its pinned
//! search_path (the owner's code, which owns the gate, could otherwise make it run as its
//! caller), and refuses otherwise.

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
    #[error("{0}")]
    Sql(#[from] tokio_postgres::Error),
}

/// The roles of one target session.
#[derive(Debug)]
pub struct Roles {
    /// The target role, as it is named.
    target: String,
    /// The privilege pg_has_role checks for SET ROLE.
    may_become: &'static str,
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
        let target: String = row.get(0);
        let version: i32 = row.get(2);
        if row.get::<_, bool>(1) {
            return Err(RoleError::Superuser(target));
        }
        if let Some(powerful) = row.get::<_, Option<String>>(3) {
            return Err(RoleError::Powerful { role: target, powerful });
        }
        if row.get::<_, bool>(4) && version < 160000 {
            return Err(RoleError::CreateRole(target));
        }
        static WARNED: std::sync::Once = std::sync::Once::new();
        if row.get::<_, bool>(5) {
            WARNED.call_once(|| tracing::warn!(
                role = %target,
                "logged in to the target as a superuser: code of the source's owners that runs while pgdms-apply writes \
                 could take the login's rights back (RESET ROLE); log in as the target role itself for a hard boundary"
            ));
        }
        let may_become = if version >= 160000 { "SET" } else { "MEMBER" };
        Ok(Roles { target, may_become, owners: HashMap::new(), gates: HashMap::new() })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// For the object `name`: None when there is none, else the role to become (None: stay
    /// the target role, for an owner that is the target role, a superuser, or a role the
    /// target role may not become).
    pub async fn lookup(
        &mut self,
        client: &Client,
        kind: Object,
        name: &str,
    ) -> Result<Option<Option<String>>, tokio_postgres::Error> {
        if let Some(known) = self.owners.get(&(kind, name.to_string())) {
            return Ok(known.clone());
        }
        let rows = client.query(&kind.owner_query(), &[&name, &self.may_become]).await?;
        let found = rows.first().map(|r| {
            let (owner, superuser, may): (String, bool, bool) = (r.get(0), r.get(1), r.get(2));
            if superuser && owner != self.target {
                tracing::warn!(object = %name, owner = %owner, role = %self.target, "owned by a superuser on the target: written and altered as the target role");
            }
            (owner != self.target && !superuser && may).then_some(owner)
        });
        self.owners.insert((kind, name.to_string()), found.clone());
        Ok(found)
    }

    /// The role to become for `name` (None: stay the target role, or no such object).
    pub async fn owner(
        &mut self,
        client: &Client,
        kind: Object,
        name: &str,
    ) -> Result<Option<String>, tokio_postgres::Error> {
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
    /// is the session's as it is now.
    pub async fn gate(
        &mut self,
        client: &Client,
        owner: &str,
        own_transaction: bool,
    ) -> Result<String, tokio_postgres::Error> {
        if let Some(call) = self.gates.get(owner) {
            return Ok(call.clone());
        }
        let row = client.query_one("SELECT oid::bigint FROM pg_roles WHERE rolname = $1", &[&owner]).await?;
        let owner_oid: i64 = row.get(0);
        let function = format!("pgdms_gate.{}", quote_ident(&format!("as_{owner_oid}")));
        let signature = format!("{function}(text, text[])");
        // What the gate must be: the owner's SECURITY DEFINER function with the session's
        // search_path pinned (its proconfig), which nothing else can give it.
        let valid = format!(
            "SELECT p.oid::bigint, p.proconfig::text FROM pg_catalog.pg_proc p \
              WHERE p.oid = pg_catalog.to_regprocedure({sig}) AND p.prosecdef AND p.proowner = {owner_oid} \
                AND p.prosrc = {body} AND p.proconfig = ARRAY['search_path=' || pg_catalog.current_setting('search_path')]",
            sig = quote_literal(&signature),
            body = quote_literal(GATE_BODY),
        );
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
                run("CREATE SCHEMA IF NOT EXISTS pgdms_gate".into()).await?;
                run(format!("DROP FUNCTION IF EXISTS {signature}")).await?;
                run(format!(
                    "CREATE FUNCTION {function}(statement text, args text[]) RETURNS bigint LANGUAGE plpgsql \
                     SECURITY DEFINER SET search_path FROM CURRENT AS {}",
                    quote_literal(GATE_BODY)
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
            client.query_one(&valid, &[]).await
        }
        .await;
        if own_transaction {
            run(if made.is_ok() { "COMMIT" } else { "ROLLBACK" }.into()).await?;
        }
        let row = made?;
        let (oid, config): (i64, String) = (row.get(0), row.get(1));
        let call = format!(
            "SELECT {function}($1::text, $2::text::text[]) FROM pg_catalog.pg_proc p WHERE p.oid = {oid} AND p.prosecdef \
               AND p.proowner = {owner_oid} AND p.proconfig::text = {}",
            quote_literal(&config)
        );
        self.gates.insert(owner.to_string(), call.clone());
        Ok(call)
    }
}

/// A gate's body: one statement, its arguments in `$1` (a text array), the rows it affected.
const GATE_BODY: &str = "
DECLARE
    affected bigint;
BEGIN
    EXECUTE statement USING args;
    GET DIAGNOSTICS affected = ROW_COUNT;
    RETURN affected;
END
";

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

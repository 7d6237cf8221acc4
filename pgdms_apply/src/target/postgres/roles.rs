//! Who the apply acts as on a PostgreSQL target.
//!
//! The source's owners control code that runs when their tables are written or altered on
//! the target: defaults, checks and generated columns, triggers they marked `ENABLE ALWAYS`
//! or `ENABLE REPLICA` (which fire under `session_replication_role = replica`), index
//! expressions. None of it may run with more than its owner's rights. So, as PostgreSQL 16's
//! subscriptions do:
//!
//! * every session runs as the *target role*: `--target-role`, or else the login role. It
//!   must not be a superuser (a superuser login sets `session_replication_role`, then `SET
//!   ROLE`s to it);
//! * a table's rows are written, and an object's DDL replayed, as the object's owner on the
//!   target when the target role may become it (`SET ROLE`), and as the target role
//!   otherwise. An owner that is a superuser is never become: the target role acts instead,
//!   and needs the rights for it.
//!
//! Between tables the session is always back at the target role, so a statement that fails
//! and is rolled back to a savepoint leaves it there too.

use crate::sql::quote_ident;
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
    /// current role may become it (`$2`: 'SET' on PostgreSQL 16+, 'MEMBER' before).
    fn owner_query(self) -> &'static str {
        match self {
            Object::Table => {
                "SELECT r.rolname::text, r.rolsuper, pg_has_role(r.oid, $2) FROM pg_class c \
                 JOIN pg_roles r ON r.oid = c.relowner WHERE c.oid = to_regclass($1)"
            }
            Object::Type => {
                "SELECT r.rolname::text, r.rolsuper, pg_has_role(r.oid, $2) FROM pg_type t \
                 JOIN pg_roles r ON r.oid = t.typowner WHERE t.oid = to_regtype($1)"
            }
            Object::Schema => {
                "SELECT r.rolname::text, r.rolsuper, pg_has_role(r.oid, $2) FROM pg_namespace n \
                 JOIN pg_roles r ON r.oid = n.nspowner WHERE n.oid = to_regnamespace($1)"
            }
        }
    }
}

/// The target role is a superuser: refused.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(
        "the target role \"{0}\" is a superuser: pgdms-apply does not replay the source's DDL or write its rows with \
         superuser rights (the source's table owners control defaults, checks and triggers that run then). Connect to \
         the target as a role without superuser, or pass --target-role ROLE (see README, \"Target role\")"
    )]
    Superuser(String),
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
                "SELECT current_user::text, r.rolsuper, current_setting('server_version_num')::int \
                   FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await?;
        let (target, superuser, version): (String, bool, i32) = (row.get(0), row.get(1), row.get(2));
        if superuser {
            return Err(RoleError::Superuser(target));
        }
        let may_become = if version >= 160000 { "SET" } else { "MEMBER" };
        Ok(Roles { target, may_become, owners: HashMap::new() })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// `SET ROLE` back to the target role.
    pub fn back(&self) -> String {
        set_role(&self.target)
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
        let rows = client.query(kind.owner_query(), &[&name, &self.may_become]).await?;
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
}

/// `SET ROLE "name"`.
pub fn set_role(role: &str) -> String {
    format!("SET ROLE {}", quote_ident(role))
}

-- pgdms: the schema of the extension's objects, and the rule that keeps it out of reach.
--
-- Everything of pgdms lives in the schema "pgdms": preflight(), slots(), the DDL capture's
-- tables (ddl_audit, ddl_state, capture_failures) and its functions. Created here, by the
-- extension script, it is a member of the extension and DROP EXTENSION removes it; a schema
-- of that name that already existed (CREATE SCHEMA pgdms; CREATE EXTENSION pgdms SCHEMA
-- pgdms) is used as it is and stays.
--
-- The capture's event triggers run as the extension's owner (a superuser) whatever role
-- runs the DDL, and they name their tables and helpers by schema. A role that could rename
-- that schema, or create objects in it, could put look-alikes in their place and have them
-- run as the superuser (PostgreSQL 15 gives "public" to the database owner). So the schema
-- "pgdms" must be one only superusers control, and so must the extension's own schema
-- (@extschema@: the first schema of the search_path, or CREATE EXTENSION pgdms SCHEMA x),
-- which holds the view pgdms_ddl_audit that people and migration roles read. Where either
-- is not, CREATE EXTENSION is refused, saying why.
DO $$
BEGIN
    IF to_regnamespace('pgdms') IS NULL THEN
        CREATE SCHEMA pgdms;
        -- Anyone may run the checks; what each function lets a role do is its own matter.
        GRANT USAGE ON SCHEMA pgdms TO PUBLIC;
    END IF;
END
$$;

-- Why a schema is not safe for objects a superuser's code reaches by name, or NULL when it
-- is: its owner, or a role that may create objects in it, is not a superuser.
-- pg_database_owner (PostgreSQL 14 and later) stands for the database's owner.
CREATE FUNCTION pgdms.schema_unsafe_because(nsp oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH n AS (
        SELECT nspname, nspowner, coalesce(nspacl, acldefault('n', nspowner)) AS acl
          FROM pg_namespace WHERE oid = nsp
    ), db_owner AS (
        SELECT datdba FROM pg_database WHERE datname = current_database()
    ), who AS (
        -- The owner, and every role granted CREATE (0: PUBLIC), as the role that acts.
        SELECT 'owned by' AS how, CASE WHEN n.nspowner = to_regrole('pg_database_owner')
                                       THEN (SELECT datdba FROM db_owner) ELSE n.nspowner END AS role
          FROM n
        UNION ALL
        SELECT 'open to CREATE by', CASE WHEN a.grantee = to_regrole('pg_database_owner')
                                         THEN (SELECT datdba FROM db_owner) ELSE a.grantee END
          FROM n, aclexplode(n.acl) a
         WHERE a.privilege_type = 'CREATE'
    )
    SELECT string_agg(format('%s %s', how, CASE WHEN role = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END), ', '
                      ORDER BY how DESC, r.rolname)
      FROM who LEFT JOIN pg_roles r ON r.oid = who.role
     WHERE who.role = 0 OR NOT coalesce(r.rolsuper, false)
$$;
COMMENT ON FUNCTION pgdms.schema_unsafe_because(oid) IS
    'pgdms: why roles other than superusers could replace objects in a schema (NULL: they cannot)';

DO $$
DECLARE
    why text;
BEGIN
    why := pgdms.schema_unsafe_because('pgdms'::regnamespace);
    IF why IS NOT NULL THEN
        RAISE EXCEPTION 'pgdms: the schema "pgdms" that exists here is not safe for the extension: it is %', why
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'pgdms''s DDL capture runs as a superuser and reaches its objects in schema "pgdms" by name: '
                           'a role that may rename that schema or create objects in it could make it run code of theirs.',
                  HINT = 'As a superuser: ALTER SCHEMA pgdms OWNER TO a superuser and REVOKE CREATE ON SCHEMA pgdms from '
                         'the others, or rename that schema and let CREATE EXTENSION pgdms make its own.';
    END IF;
    why := pgdms.schema_unsafe_because('@extschema@'::regnamespace);
    IF why IS NOT NULL THEN
        RAISE EXCEPTION 'pgdms: schema @extschema@ is not safe for the extension''s objects: it is %', why
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'The view pgdms_ddl_audit goes there, and superusers read it: a role that may rename that schema '
                           'or create objects in it could put a look-alike there, whose functions would run as the reader.',
                  HINT = 'Install pgdms into a schema only superusers control, as a superuser: '
                         'CREATE SCHEMA pgdms_audit; CREATE EXTENSION pgdms SCHEMA pgdms_audit;';
    END IF;
END
$$;

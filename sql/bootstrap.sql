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
-- The script itself resolves no name through a schema such a role could control. An
-- extension script runs with search_path = @extschema@, pg_temp, and pg_catalog searched
-- first only among equals: a function or operator in @extschema@ that takes the argument
-- types exactly (an `=` of oid and regclass, say) would be chosen over pg_catalog's and run
-- as the superuser installing (CVE-2018-1058's pattern). Every object below is named with
-- its schema; the setting ends with the script.
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
BEGIN
    IF to_regnamespace('pgdms') IS NULL THEN
        CREATE SCHEMA pgdms;
        -- Anyone may run the checks; what each function lets a role do is its own matter.
        GRANT USAGE ON SCHEMA pgdms TO PUBLIC;
    -- Before anything goes into a schema of that name that exists already: a role that owns
    -- it, or may create in it, could rename it while this runs and put another in its place.
    -- (The full check, with the reasons, follows below.)
    ELSIF NOT (SELECT bool_and(coalesce(r.rolsuper, false))
                 FROM (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'pgdms'
                       UNION ALL
                       SELECT a.grantee FROM pg_namespace n, aclexplode(n.nspacl) a
                        WHERE n.nspname = 'pgdms' AND a.privilege_type = 'CREATE') w(role)
                 LEFT JOIN pg_roles r ON r.oid = w.role) THEN
        RAISE EXCEPTION 'pgdms: the schema "pgdms" that exists here is not safe for the extension: a role that is not a superuser owns it or may create objects in it'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'As a superuser: rename that schema (ALTER SCHEMA pgdms RENAME TO ...) and let CREATE EXTENSION '
                         'pgdms make its own; or give it to a superuser (ALTER SCHEMA pgdms OWNER TO), REVOKE CREATE ON '
                         'SCHEMA pgdms from the others and drop what they own in it.';
    END IF;
END
$$;

-- Why a schema is not safe for objects a superuser's code reaches by name, or NULL when it
-- is: its owner, or a role that may create objects in it, is not a superuser; with
-- with_contents, also an object in it that is not a superuser's (one left there before a
-- superuser took the schema over: a function taking the argument types exactly, or a table
-- of the capture's names, would stand in for pgdms's own).
-- pg_database_owner (PostgreSQL 14 and later) stands for the database's owner.
CREATE FUNCTION pgdms.schema_unsafe_because(nsp oid, with_contents boolean) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH n AS (
        SELECT nspname, nspowner, coalesce(nspacl, acldefault('n', nspowner)) AS acl
          FROM pg_namespace WHERE oid = nsp
    ), db_owner AS (
        SELECT datdba FROM pg_database WHERE datname = current_database()
    ), contents AS (
        -- Everything that has a schema and an owner.
        SELECT 'pg_class'::regclass AS classid, oid AS objid, relowner AS owner FROM pg_class WHERE relnamespace = nsp
        UNION ALL SELECT 'pg_proc'::regclass, oid, proowner FROM pg_proc WHERE pronamespace = nsp
        UNION ALL SELECT 'pg_type'::regclass, oid, typowner FROM pg_type WHERE typnamespace = nsp
        UNION ALL SELECT 'pg_operator'::regclass, oid, oprowner FROM pg_operator WHERE oprnamespace = nsp
        UNION ALL SELECT 'pg_collation'::regclass, oid, collowner FROM pg_collation WHERE collnamespace = nsp
        UNION ALL SELECT 'pg_conversion'::regclass, oid, conowner FROM pg_conversion WHERE connamespace = nsp
        UNION ALL SELECT 'pg_opfamily'::regclass, oid, opfowner FROM pg_opfamily WHERE opfnamespace = nsp
        UNION ALL SELECT 'pg_opclass'::regclass, oid, opcowner FROM pg_opclass WHERE opcnamespace = nsp
        UNION ALL SELECT 'pg_ts_config'::regclass, oid, cfgowner FROM pg_ts_config WHERE cfgnamespace = nsp
        UNION ALL SELECT 'pg_ts_dict'::regclass, oid, dictowner FROM pg_ts_dict WHERE dictnamespace = nsp
        UNION ALL SELECT 'pg_statistic_ext'::regclass, oid, stxowner FROM pg_statistic_ext WHERE stxnamespace = nsp
    ), who AS (
        -- The owner, every role granted CREATE (0: PUBLIC), and the owners of what is in it,
        -- as the role that acts.
        SELECT 'owned by' AS how, CASE WHEN n.nspowner = to_regrole('pg_database_owner')
                                       THEN (SELECT datdba FROM db_owner) ELSE n.nspowner END AS role
          FROM n
        UNION ALL
        SELECT 'open to CREATE by', CASE WHEN a.grantee = to_regrole('pg_database_owner')
                                         THEN (SELECT datdba FROM db_owner) ELSE a.grantee END
          FROM n, aclexplode(n.acl) a
         WHERE a.privilege_type = 'CREATE'
        UNION ALL
        SELECT format('holding %s owned by', pg_describe_object(c.classid, c.objid, 0)), c.owner
          FROM contents c
         WHERE with_contents
    )
    SELECT string_agg(format('%s %s', how, CASE WHEN role = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END), ', '
                      ORDER BY how DESC, r.rolname)
      FROM who LEFT JOIN pg_roles r ON r.oid = who.role
     WHERE who.role = 0 OR NOT coalesce(r.rolsuper, false)
$$;
COMMENT ON FUNCTION pgdms.schema_unsafe_because(oid, boolean) IS
    'pgdms: why roles other than superusers could replace objects in a schema (NULL: they cannot)';

DO $$
DECLARE
    why text;
BEGIN
    -- The check is called by name: the name must mean the function just made. A role that
    -- made schema "pgdms" beforehand could have left one there that takes regnamespace, or
    -- more arguments with defaults, which the call would choose and run as this superuser.
    IF (SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgdms'::regnamespace AND proname = 'schema_unsafe_because') <> 1 THEN
        RAISE EXCEPTION 'pgdms: the schema "pgdms" that exists here holds a function pgdms.schema_unsafe_because that is not pgdms''s'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'pgdms''s DDL capture runs as a superuser and reaches its objects in schema "pgdms" by name.',
                  HINT = 'As a superuser: rename that schema (ALTER SCHEMA pgdms RENAME TO ...) and let CREATE EXTENSION '
                         'pgdms make its own.';
    END IF;
    why := pgdms.schema_unsafe_because('pgdms'::regnamespace::oid, true);
    IF why IS NOT NULL THEN
        RAISE EXCEPTION 'pgdms: the schema "pgdms" that exists here is not safe for the extension: it is %', why
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'pgdms''s DDL capture runs as a superuser and reaches its objects in schema "pgdms" by name: '
                           'a role that may rename that schema or create objects in it could make it run code of theirs.',
                  HINT = 'As a superuser: rename that schema (ALTER SCHEMA pgdms RENAME TO ...) and let CREATE EXTENSION '
                         'pgdms make its own; or give it to a superuser (ALTER SCHEMA pgdms OWNER TO), REVOKE CREATE ON '
                         'SCHEMA pgdms from the others and drop what they own in it.';
    END IF;
    why := pgdms.schema_unsafe_because('@extschema@'::regnamespace::oid, false);
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

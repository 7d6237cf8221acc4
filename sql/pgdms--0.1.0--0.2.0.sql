-- pgdms 0.1.0 -> 0.2.0: the security fixes of DDL capture, for installs made before them.
--
-- * Everything the capture's SECURITY DEFINER code reaches now lives in schema "pgdms",
--   which only superusers control: the audit and state tables move there (as
--   pgdms.ddl_audit and pgdms.ddl_state; the extension's schema keeps a view
--   pgdms_ddl_audit), and so do the event trigger functions. Before, a role that could
--   rename the extension's schema (PostgreSQL 15 gives "public" to the database owner) could
--   put look-alike tables there and have their triggers run as the superuser.
-- * Each captured DDL message is vouched for by its audit row (the SHA-256 of the message),
--   written first; failures to capture go to pgdms.capture_failures. The 0.2.0 output
--   plugin passes on only the messages so vouched for: pg_logical_emit_message is anyone's
--   to call. (A DDL message written before this update carries no digest and is dropped by
--   the new plugin: update with the migration caught up, or check its DDL by hand.)
-- * Definitions carry type names and modifiers apart, and domain checks their condition:
--   the consumer resolves types on its side instead of pasting SQL text.
--
-- Generated from sql/*.sql of 0.2.0: the functions below are those files' definitions.

-- As in a new install (sql/bootstrap.sql), the script resolves no name through a schema a
-- role other than superusers may control. This matters most here: a 0.1.0 install's schema
-- is usually "public", which PostgreSQL gives to the database owner (and before 15 to
-- everyone), and an `=` of oid and regclass left there would otherwise run as the
-- superuser updating.
SET LOCAL search_path = pg_catalog, pg_temp;

-- Before anything goes into schema "pgdms" (0.1.0 made it, or found it): a role that owns
-- it, or may create in it, could rename it while this runs and put another in its place.
DO $$
BEGIN
    IF NOT (SELECT bool_and(coalesce(r.rolsuper, false))
              FROM (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'pgdms'
                    UNION ALL
                    SELECT a.grantee FROM pg_namespace n, aclexplode(n.nspacl) a
                     WHERE n.nspname = 'pgdms' AND a.privilege_type = 'CREATE') w(role)
              LEFT JOIN pg_roles r ON r.oid = w.role) THEN
        RAISE EXCEPTION 'pgdms: the schema "pgdms" is not safe for the extension: a role that is not a superuser owns it or may create objects in it'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'As a superuser: ALTER SCHEMA pgdms OWNER TO a superuser, REVOKE CREATE ON SCHEMA pgdms from '
                         'the others and drop what they own in it; then run ALTER EXTENSION pgdms UPDATE again.';
    END IF;
END
$$;

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


-- As CREATE EXTENSION checks (sql/bootstrap.sql), except that an unsafe extension schema
-- only warns here: after this update it holds the view alone, and refusing would leave the
-- capture as it was.
DO $$
DECLARE
    why text;
BEGIN
    -- The check is called by name: the name must mean the function just made (see
    -- sql/bootstrap.sql).
    IF (SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgdms'::regnamespace AND proname = 'schema_unsafe_because') <> 1 THEN
        RAISE EXCEPTION 'pgdms: the schema "pgdms" holds a function pgdms.schema_unsafe_because that is not pgdms''s'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'As a superuser: drop that function; then run ALTER EXTENSION pgdms UPDATE again.';
    END IF;
    why := pgdms.schema_unsafe_because('pgdms'::regnamespace::oid, true);
    IF why IS NOT NULL THEN
        RAISE EXCEPTION 'pgdms: the schema "pgdms" is not safe for the extension: it is %', why
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'As a superuser: ALTER SCHEMA pgdms OWNER TO a superuser, REVOKE CREATE ON SCHEMA pgdms from '
                         'the others and drop what they own in it; then run ALTER EXTENSION pgdms UPDATE again.';
    END IF;
    why := pgdms.schema_unsafe_because('@extschema@'::regnamespace::oid, false);
    IF why IS NOT NULL THEN
        RAISE WARNING 'pgdms: schema @extschema@, where the view pgdms_ddl_audit stays, is %', why
            USING HINT = 'Superusers reading that view could be given a look-alike; read pgdms.ddl_audit instead, or '
                         'reinstall pgdms in a schema only superusers control (CREATE SCHEMA pgdms_audit; '
                         'CREATE EXTENSION pgdms SCHEMA pgdms_audit).';
    END IF;
END
$$;

-- The event triggers go first: nothing is captured halfway through the update.
DROP EVENT TRIGGER pgdms_intercept_ddl;
DROP EVENT TRIGGER pgdms_intercept_drop;
DROP EVENT TRIGGER pgdms_intercept_rewrite;
DROP FUNCTION @extschema@.pgdms_intercept_ddl();
DROP FUNCTION @extschema@.pgdms_intercept_drop();
DROP FUNCTION @extschema@.pgdms_intercept_rewrite();

-- The tables, into schema "pgdms" under their new names (the extension's schema may be
-- "pgdms" already).
DO $$
BEGIN
    IF to_regclass('pgdms.pgdms_ddl_audit') IS NULL THEN
        ALTER TABLE @extschema@.pgdms_ddl_audit SET SCHEMA pgdms;
        ALTER TABLE @extschema@.pgdms_ddl_state SET SCHEMA pgdms;
    END IF;
END
$$;
ALTER TABLE pgdms.pgdms_ddl_audit RENAME TO ddl_audit;
ALTER SEQUENCE pgdms.pgdms_ddl_audit_c_key_seq RENAME TO ddl_audit_c_key_seq;
ALTER INDEX pgdms.pgdms_ddl_audit_pkey RENAME TO ddl_audit_pkey;
ALTER TABLE pgdms.ddl_audit ADD COLUMN c_digest bytea;
ALTER TABLE pgdms.pgdms_ddl_state RENAME TO ddl_state;
ALTER INDEX pgdms.pgdms_ddl_state_pkey RENAME TO ddl_state_pkey;

COMMENT ON TABLE pgdms.ddl_audit IS 'pgdms: DDL captured for replication (history; safe to prune)';

-- DDL that could not be captured (the command itself went through): each row goes with a
-- CaptureFailed message that stops the consumer. A table of its own: whatever made the
-- capture fail may be the audit table.
CREATE TABLE pgdms.capture_failures (
    c_key    bigserial PRIMARY KEY,
    c_time   timestamptz NOT NULL DEFAULT clock_timestamp(),
    c_user   text NOT NULL DEFAULT session_user,
    c_txn    xid8 NOT NULL DEFAULT pg_current_xact_id(),
    c_tag    text NOT NULL,
    c_ddlqry text,
    c_error  text NOT NULL,
    c_digest bytea NOT NULL
);
COMMENT ON TABLE pgdms.capture_failures IS 'pgdms: DDL that could not be captured for replication';

-- The reference's artifact in the extension's schema (its DdlArtifactsSchema): the audit
-- history under the name people look for. Rows can be pruned through it.
CREATE VIEW @extschema@.pgdms_ddl_audit AS
    SELECT c_key, c_time, c_user, c_txn, c_tag, c_oid, c_name, c_schema, c_ddlqry, c_object_type, c_identity,
           c_before, c_after
      FROM pgdms.ddl_audit;
COMMENT ON VIEW @extschema@.pgdms_ddl_audit IS 'pgdms: DDL captured for replication (pgdms.ddl_audit)';

-- Only superusers write these tables. The plugin takes an insert into pgdms.ddl_audit or
-- pgdms.capture_failures as the voucher of a DDL message, and the "before" of the next
-- change comes from pgdms.ddl_state: a role that could write them could forge DDL. Their
-- owner alone is granted anything on them, but grants are not all there is: members of
-- pg_write_all_data (PostgreSQL 14 and later) write every table. This trigger refuses
-- every writer that is not a superuser; it fires whatever session_replication_role says
-- (ENABLE ALWAYS), and only the tables' owner could drop or disable it. Deleting audit and
-- failure rows (pruning) stays with whom a superuser grants DELETE.
CREATE FUNCTION pgdms.refuse_writers_but_superusers() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) THEN
        RAISE EXCEPTION '%', format('pgdms: only superusers may write %I.%I (%s refused)', tg_table_schema, tg_table_name, tg_op)
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'pgdms''s DDL capture alone writes this table: what is in it decides which DDL reaches the targets.';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER pgdms_superusers_only BEFORE INSERT OR UPDATE ON pgdms.ddl_audit
    FOR EACH STATEMENT EXECUTE FUNCTION pgdms.refuse_writers_but_superusers();
CREATE TRIGGER pgdms_superusers_only BEFORE INSERT OR UPDATE ON pgdms.capture_failures
    FOR EACH STATEMENT EXECUTE FUNCTION pgdms.refuse_writers_but_superusers();
CREATE TRIGGER pgdms_superusers_only BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgdms.ddl_state
    FOR EACH STATEMENT EXECUTE FUNCTION pgdms.refuse_writers_but_superusers();
ALTER TABLE pgdms.ddl_audit ENABLE ALWAYS TRIGGER pgdms_superusers_only;
ALTER TABLE pgdms.capture_failures ENABLE ALWAYS TRIGGER pgdms_superusers_only;
ALTER TABLE pgdms.ddl_state ENABLE ALWAYS TRIGGER pgdms_superusers_only;

-- Who could read the audit table may read what goes with it now. The state table and the
-- audit sequence were readable by migration roles only because they sat in the extension's
-- schema (grant_migration_role grants SELECT on every table there): no longer.
DO $$
DECLARE
    grantee name;
BEGIN
    FOR grantee IN SELECT DISTINCT r.rolname FROM pg_class c, aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee
                    WHERE c.oid = 'pgdms.ddl_audit'::regclass AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT SELECT ON pgdms.capture_failures, @extschema@.pgdms_ddl_audit TO %I', grantee);
    END LOOP;
    FOR grantee IN SELECT DISTINCT r.rolname FROM pg_class c, aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee
                    WHERE c.oid IN ('pgdms.ddl_state'::regclass, 'pgdms.ddl_audit_c_key_seq'::regclass)
                      AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE ALL ON TABLE pgdms.ddl_state FROM %I', grantee);
        EXECUTE format('REVOKE ALL ON SEQUENCE pgdms.ddl_audit_c_key_seq FROM %I', grantee);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION pgdms.table_definition(relid oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'oid', c.oid::bigint,
        'schema', n.nspname::text,
        'name', c.relname::text,
        'kind', CASE c.relkind WHEN 'p' THEN 'PartitionedTable' ELSE 'Table' END,
        'persistence', c.relpersistence::text,
        'replica_identity', CASE c.relreplident
            WHEN 'f' THEN 'Full' WHEN 'i' THEN 'Index' WHEN 'n' THEN 'Nothing' ELSE 'Default' END,
        'columns', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                'attnum', a.attnum,
                'name', a.attname::text,
                'type_oid', a.atttypid::bigint,
                'type_sql', format_type(a.atttypid, a.atttypmod),
                'type_name', format_type(a.atttypid, NULL),
                'type_modifier', a.atttypmod,
                'not_null', a.attnotnull,
                'default', CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
                'generated', CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END,
                'identity', CASE a.attidentity WHEN 'a' THEN 'Always' WHEN 'd' THEN 'ByDefault' ELSE 'None' END,
                'collation', (SELECT format('%I.%I', cn.nspname, co.collname)
                                FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
                               WHERE co.oid = a.attcollation AND a.attcollation <> t.typcollation)
            ) ORDER BY a.attnum)
              FROM pg_attribute a
              JOIN pg_type t ON t.oid = a.atttypid
              LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'::jsonb),
        'primary_key', (
            SELECT jsonb_build_object('name', con.conname::text, 'columns', to_jsonb(con.conkey))
              FROM pg_constraint con
             WHERE con.conrelid = c.oid AND con.contype = 'p'),
        'partition_key', CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
        'partition_of', (
            SELECT jsonb_build_object('oid', p.oid::bigint, 'schema', pn.nspname::text, 'name', p.relname::text,
                                      'bound', pg_get_expr(c.relpartbound, c.oid))
              FROM pg_inherits i
              JOIN pg_class p ON p.oid = i.inhparent
              JOIN pg_namespace pn ON pn.oid = p.relnamespace
             WHERE i.inhrelid = c.oid AND c.relispartition))
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = relid AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
$$;

CREATE OR REPLACE FUNCTION pgdms.type_definition(typid oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'oid', t.oid::bigint,
        'schema', n.nspname::text,
        'name', t.typname::text,
        'kind', CASE t.typtype WHEN 'e' THEN 'Enum' WHEN 'c' THEN 'Composite' WHEN 'd' THEN 'Domain' ELSE 'Other' END,
        'labels', coalesce((SELECT jsonb_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                              FROM pg_enum e WHERE e.enumtypid = t.oid), '[]'::jsonb),
        'attributes', coalesce((SELECT jsonb_agg(jsonb_build_object('attnum', a.attnum, 'name', a.attname::text,
                                                                    'type_sql', format_type(a.atttypid, a.atttypmod),
                                                                    'type_name', format_type(a.atttypid, NULL),
                                                                    'type_modifier', a.atttypmod)
                                                 ORDER BY a.attnum)
                                  FROM pg_attribute a
                                 WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '[]'::jsonb),
        'base_type', CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
        'base_type_name', CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, NULL) END,
        'base_type_modifier', t.typtypmod,
        'not_null', t.typnotnull,
        'default', pg_get_expr(t.typdefaultbin, 0),
        -- Validated CHECK constraints (a NOT VALID one cannot be part of CREATE DOMAIN).
        'checks', coalesce((SELECT jsonb_agg(jsonb_build_object('name', con.conname::text,
                                                                'definition', pg_get_constraintdef(con.oid),
                                                                'expression', pg_get_expr(con.conbin, 0))
                                             ORDER BY con.conname)
                              FROM pg_constraint con
                             WHERE con.contypid = t.oid AND con.contype = 'c' AND con.convalidated), '[]'::jsonb))
      FROM pg_type t
      JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.oid = typid
       -- A table's row type and array types follow their table or element type.
       AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
       AND t.typcategory <> 'A'
$$;

-- Functions of 0.1.0 whose bodies named the tables in the extension's schema.
CREATE OR REPLACE FUNCTION pgdms.record_ddl(tag text, identity text, object_type text, object jsonb,
                                 oid oid, name text, schema text, before jsonb, after jsonb)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    query text := current_query();
    message bytea := convert_to(jsonb_build_object(
        'command_tag', tag,
        'object_identity', coalesce(identity, ''),
        'query', coalesce(query, ''),
        'object', object)::text, 'UTF8');
BEGIN
    INSERT INTO pgdms.ddl_audit (c_tag, c_oid, c_name, c_schema, c_ddlqry, c_object_type,
                                 c_identity, c_before, c_after, c_digest)
    VALUES (tag, oid, name, schema, query, object_type, identity, before, after, sha256(message));
    -- Without logical WAL nothing decodes the message, and emitting it would fail.
    IF current_setting('wal_level') = 'logical' THEN
        PERFORM pg_logical_emit_message(true, 'pgdms.ddl', message);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pgdms.capture(kind text, objid oid, tag text, identity text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    before jsonb;
    after jsonb;
BEGIN
    SELECT s.definition INTO before FROM pgdms.ddl_state s WHERE s.kind = $1 AND s.objid = $2;
    IF pgdms.is_captured(kind, objid) THEN
        after := pgdms.definition(kind, objid);
    END IF;
    IF before IS NOT DISTINCT FROM after THEN
        RETURN;
    END IF;
    IF after IS NULL THEN
        DELETE FROM pgdms.ddl_state s WHERE s.kind = $1 AND s.objid = $2;
    ELSE
        INSERT INTO pgdms.ddl_state VALUES (kind, objid, after)
        ON CONFLICT ON CONSTRAINT ddl_state_pkey DO UPDATE SET definition = excluded.definition;
    END IF;
    PERFORM pgdms.record_ddl(tag, identity, kind,
        jsonb_build_object(initcap(kind), jsonb_build_object('before', before, 'after', after)),
        objid, coalesce(after, before)->>'name', coalesce(after, before)->>'schema', before, after);
END
$$;

CREATE OR REPLACE FUNCTION pgdms.capture_table(relid oid, tag text, identity text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    child oid;
BEGIN
    PERFORM pgdms.capture('table', relid, tag, identity);
    FOR child IN
        SELECT inhrelid FROM pg_inherits WHERE inhparent = relid
        UNION
        SELECT s.objid FROM pgdms.ddl_state s
         WHERE s.kind = 'table' AND (s.definition->'partition_of'->>'oid')::oid = relid
    LOOP
        -- Sub-partitions too: parents always come before their children.
        PERFORM pgdms.capture_table(child, tag, coalesce(to_regclass(child::text)::text, child::text));
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION pgdms.refresh_state() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE pgdms.ddl_state s SET definition = now.definition
      FROM (SELECT kind, objid, pgdms.definition(kind, objid) AS definition
              FROM pgdms.ddl_state WHERE kind IN ('table', 'type')) now
     WHERE s.kind = now.kind AND s.objid = now.objid
       AND now.definition IS NOT NULL AND s.definition IS DISTINCT FROM now.definition
$$;

CREATE OR REPLACE FUNCTION pgdms.capture_failed(tag text, error text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    message bytea := convert_to(jsonb_build_object(
        'command_tag', tag, 'object_identity', '', 'query', coalesce(current_query(), ''),
        'object', jsonb_build_object('CaptureFailed', jsonb_build_object('error', error)))::text, 'UTF8');
BEGIN
    RAISE WARNING 'pgdms: could not capture % for replication: %', tag, error
        USING HINT = 'The migration reading this database stops on it; check pgdms.preflight() and pgdms.capture_failures.';
    BEGIN
        INSERT INTO pgdms.capture_failures (c_tag, c_ddlqry, c_error, c_digest)
        VALUES (tag, current_query(), error, sha256(message));
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'pgdms: could not capture % for replication (%), nor record that it could not (%)', tag, error, SQLERRM
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The command was not run. Repair pgdms.ddl_audit and pgdms.capture_failures (or DROP EXTENSION pgdms; '
                         'CREATE EXTENSION pgdms); a superuser can run it uncaptured after SET pgdms.capture_ddl = off, '
                         'and must then bring the migration''s target in step by hand.';
    END;
    IF current_setting('wal_level') = 'logical' THEN
        PERFORM pg_logical_emit_message(true, 'pgdms.ddl', message);
    END IF;
END
$$;

CREATE FUNCTION pgdms.intercept_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd record;
    renamed boolean := false;
BEGIN
    IF NOT pgdms.capture_ddl_enabled() THEN
        RETURN;
    END IF;
    BEGIN
        FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE NOT in_extension LOOP
            IF cmd.classid = 'pg_class'::regclass AND cmd.object_type IN ('table', 'table column') THEN
                PERFORM pgdms.capture_table(cmd.objid, tg_tag, cmd.object_identity);
            ELSIF cmd.classid = 'pg_class'::regclass AND cmd.object_type IN ('composite type', 'composite type column') THEN
                -- ALTER TYPE ... ADD/DROP/ALTER/RENAME ATTRIBUTE names the type's relation.
                PERFORM pgdms.capture('type', (SELECT reltype FROM pg_class WHERE oid = cmd.objid), tg_tag,
                                      cmd.object_identity);
            ELSIF cmd.classid = 'pg_type'::regclass THEN
                PERFORM pgdms.capture('type', cmd.objid, tg_tag, cmd.object_identity);
                renamed := renamed OR tg_tag = 'ALTER TYPE' OR tg_tag = 'ALTER DOMAIN';
            ELSIF cmd.classid = 'pg_namespace'::regclass THEN
                PERFORM pgdms.capture('schema', cmd.objid, tg_tag, cmd.object_identity);
                renamed := renamed OR tg_tag = 'ALTER SCHEMA';
            END IF;
        END LOOP;
        IF renamed THEN
            PERFORM pgdms.refresh_state();
        END IF;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgdms.capture_failed(tg_tag, SQLERRM);
    END;
END
$$;

CREATE FUNCTION pgdms.intercept_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    obj record;
BEGIN
    IF NOT pgdms.capture_ddl_enabled() THEN
        RETURN;
    END IF;
    BEGIN
        -- In replay order: columns leave their tables before the types they used go, and
        -- schemas go after what they contained.
        -- Parents before their partitions: a partition's inherited column goes with its parent's.
        FOR obj IN SELECT d.objid FROM pg_event_trigger_dropped_objects() d
                    WHERE d.object_type = 'table column' AND NOT d.is_temporary
                    GROUP BY d.objid
                    ORDER BY (SELECT count(*) FROM pg_partition_ancestors(d.objid))
        LOOP
            PERFORM pgdms.capture('table', obj.objid, tg_tag, obj.objid::regclass::text);
        END LOOP;
        FOR obj IN SELECT DISTINCT c.reltype FROM pg_event_trigger_dropped_objects() d JOIN pg_class c ON c.oid = d.objid
                    WHERE d.object_type = 'composite type column'
        LOOP
            PERFORM pgdms.capture('type', obj.reltype, tg_tag, obj.reltype::regtype::text);
        END LOOP;
        FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects()
                    WHERE NOT is_temporary AND object_type IN ('table', 'type', 'domain', 'schema')
                    ORDER BY object_type = 'schema'
        LOOP
            PERFORM pgdms.capture(CASE obj.object_type WHEN 'domain' THEN 'type' ELSE obj.object_type END,
                                  obj.objid, tg_tag, obj.object_identity);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgdms.capture_failed(tg_tag, SQLERRM);
    END;
END
$$;

CREATE FUNCTION pgdms.intercept_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    relid oid := pg_event_trigger_table_rewrite_oid();
    reason int := pg_event_trigger_table_rewrite_reason();
    rel record;
BEGIN
    IF NOT pgdms.capture_ddl_enabled() OR NOT pgdms.is_captured('table', relid) THEN
        RETURN;
    END IF;
    BEGIN
        SELECT c.relname::text AS name, n.nspname::text AS schema INTO rel
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relid;
        PERFORM pgdms.record_ddl(tg_tag, format('%I.%I', rel.schema, rel.name), 'rewrite',
            jsonb_build_object('Rewrite', jsonb_build_object('oid', relid::bigint, 'schema', rel.schema,
                                                             'name', rel.name, 'reason', reason)),
            relid, rel.name, rel.schema, NULL, jsonb_build_object('reason', reason));
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgdms.capture_failed(tg_tag, SQLERRM);
    END;
END
$$;

-- What was recorded is brought to the new form (type names and modifiers, domain
-- conditions), so that an object's next change is not mistaken for a change of all of it.
UPDATE pgdms.ddl_state s SET definition = now.definition
  FROM (SELECT kind, objid, pgdms.definition(kind, objid) AS definition FROM pgdms.ddl_state) now
 WHERE s.kind = now.kind AND s.objid = now.objid AND now.definition IS NOT NULL;

CREATE EVENT TRIGGER pgdms_intercept_ddl ON ddl_command_end
    EXECUTE FUNCTION pgdms.intercept_ddl();
CREATE EVENT TRIGGER pgdms_intercept_drop ON sql_drop
    EXECUTE FUNCTION pgdms.intercept_drop();
CREATE EVENT TRIGGER pgdms_intercept_rewrite ON table_rewrite
    EXECUTE FUNCTION pgdms.intercept_rewrite();

CREATE OR REPLACE FUNCTION pgdms.grant_migration_role(role_name name) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
    owner name;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'pgdms.grant_migration_role() must be run by a superuser'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Connect as a superuser (on a managed service: its administrator role) and run it again.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
        RAISE EXCEPTION 'role "%" does not exist', role_name
            USING ERRCODE = 'undefined_object',
                  HINT = format('CREATE ROLE %I LOGIN PASSWORD ''...''; then run this again.', role_name);
    END IF;
    IF NOT (SELECT rolreplication FROM pg_roles WHERE rolname = role_name) THEN
        EXECUTE format('ALTER ROLE %I REPLICATION', role_name);
        RETURN NEXT format('ALTER ROLE %I REPLICATION', role_name);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA pgdms TO %I', role_name);
    RETURN NEXT format('GRANT USAGE ON SCHEMA pgdms TO %I', role_name);
    EXECUTE format('GRANT SELECT ON pgdms.ddl_audit, pgdms.capture_failures, @extschema@.pgdms_ddl_audit TO %I', role_name);
    RETURN NEXT format('GRANT SELECT ON pgdms.ddl_audit, pgdms.capture_failures, @extschema@.pgdms_ddl_audit TO %I', role_name);
    FOR s IN SELECT n.oid, n.nspname FROM pg_namespace n
              WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgdms')
                AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp'
              ORDER BY n.nspname
    LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s.nspname, role_name);
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', s.nspname, role_name);
        EXECUTE format('GRANT SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', s.nspname, role_name);
        RETURN NEXT format('GRANT USAGE, SELECT ON ALL TABLES AND SEQUENCES IN SCHEMA %I TO %I', s.nspname, role_name);
        -- Tables created later (and replicated by DDL capture) must be readable too, for a
        -- reload: default privileges of every role that owns something in the schema.
        FOR owner IN SELECT DISTINCT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
                      WHERE c.relnamespace = s.oid
                     UNION SELECT r.rolname FROM pg_roles r JOIN pg_namespace n ON n.nspowner = r.oid WHERE n.oid = s.oid
        LOOP
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %I',
                           owner, s.nspname, role_name);
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON SEQUENCES TO %I',
                           owner, s.nspname, role_name);
            RETURN NEXT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES, SEQUENCES TO %I',
                               owner, s.nspname, role_name);
        END LOOP;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION pgdms.preflight(long_transaction_age interval DEFAULT interval '5 minutes')
RETURNS TABLE (name text, status text, finding text, fix text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me name := current_user;
    is_super boolean := (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
    can_replicate boolean := (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user);
    sees_all_activity boolean := is_super OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE');
    val text;
    cnt bigint;
    lim bigint;
    list text;
BEGIN
    -- wal_level
    val := current_setting('wal_level');
    name := 'wal_level';
    IF val = 'logical' THEN
        status := 'ok'; finding := 'logical'; fix := NULL;
    ELSE
        status := 'fail'; finding := val;
        fix := 'ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL';
    END IF;
    RETURN NEXT;

    -- rds.logical_replication, where it exists (Amazon RDS and Aurora)
    val := current_setting('rds.logical_replication', true);
    name := 'rds.logical_replication';
    IF val IS NULL THEN
        status := 'ok'; finding := 'not an Amazon RDS server (no such setting)'; fix := NULL;
    ELSIF val IN ('on', '1') THEN
        status := 'ok'; finding := val; fix := NULL;
    ELSE
        status := 'fail'; finding := val;
        fix := 'set rds.logical_replication = 1 in the DB parameter group, then reboot the instance';
    END IF;
    RETURN NEXT;

    -- max_replication_slots against the slots in use
    lim := current_setting('max_replication_slots')::bigint;
    cnt := (SELECT count(*) FROM pg_replication_slots);
    name := 'max_replication_slots';
    finding := format('%s of %s in use', cnt, lim);
    IF lim - cnt >= 2 THEN
        status := 'ok'; fix := NULL;
    ELSIF lim - cnt = 1 THEN
        status := 'warn';
        fix := 'one slot is free: enough for CDC, none left for reloading a table; raise max_replication_slots (restart) or drop unused slots';
    ELSE
        status := 'fail';
        fix := 'no free slot: raise max_replication_slots (restart) or drop an unused slot (SELECT * FROM pg_replication_slots)';
    END IF;
    RETURN NEXT;

    -- max_wal_senders against the walsenders running
    lim := current_setting('max_wal_senders')::bigint;
    cnt := (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender');
    name := 'max_wal_senders';
    finding := format('%s of %s in use', cnt, lim);
    IF lim - cnt >= 2 THEN
        status := 'ok'; fix := NULL;
    ELSIF lim - cnt = 1 THEN
        status := 'warn'; fix := 'one walsender is free: raise max_wal_senders (restart) to allow a reconnect while the old one exits';
    ELSE
        status := 'fail'; fix := 'no walsender is free: raise max_wal_senders (restart)';
    END IF;
    RETURN NEXT;

    -- wal_sender_timeout
    lim := (SELECT setting::bigint FROM pg_settings WHERE pg_settings.name = 'wal_sender_timeout');
    name := 'wal_sender_timeout';
    finding := CASE WHEN lim = 0 THEN '0 (disabled)' ELSE format('%s ms', lim) END;
    IF lim = 0 THEN
        status := 'warn';
        fix := 'a dead migration connection then holds its slot until TCP gives up: ALTER SYSTEM SET wal_sender_timeout = ''60s''; SELECT pg_reload_conf()';
    ELSIF lim < 30000 THEN
        status := 'warn';
        fix := 'pgdms-apply reports every 10 s; below 30 s a busy target can get the stream cut: ALTER SYSTEM SET wal_sender_timeout = ''60s''; SELECT pg_reload_conf()';
    ELSE
        status := 'ok'; fix := NULL;
    END IF;
    RETURN NEXT;

    -- output_plugin_libraries (PostgreSQL builds that restrict output plugins)
    name := 'output_plugin_libraries';
    BEGIN
        val := current_setting('output_plugin_libraries', true);
    EXCEPTION WHEN insufficient_privilege THEN
        val := '(unreadable)';
    END;
    IF val = '(unreadable)' THEN
        status := 'warn'; finding := format('%I may not read this superuser-only setting', me);
        fix := format('a superuser can check it (SHOW output_plugin_libraries) or GRANT pg_read_all_settings TO %I', me);
    ELSIF val IS NULL THEN
        status := 'ok'; finding := 'output plugins are not restricted on this server'; fix := NULL;
    ELSIF 'pgdms' = ANY (SELECT trim(both ' "' FROM x) FROM unnest(string_to_array(val, ',')) x) THEN
        status := 'ok'; finding := val; fix := NULL;
    ELSE
        status := 'fail'; finding := coalesce(nullif(val, ''), '(empty)');
        fix := format('ALTER SYSTEM SET output_plugin_libraries = %s; SELECT pg_reload_conf()',
                      (SELECT string_agg(quote_literal(x), ', ')
                         FROM (SELECT trim(both ' "' FROM x) AS x FROM unnest(string_to_array(val, ',')) x
                               UNION SELECT 'pgdms') l WHERE x <> ''));
    END IF;
    RETURN NEXT;

    -- replication rights of the role running the migration
    name := 'replication privilege';
    IF can_replicate THEN
        status := 'ok'; finding := format('%I may replicate (%s)', me, CASE WHEN is_super THEN 'superuser' ELSE 'REPLICATION' END);
        fix := NULL;
    ELSE
        status := 'fail'; finding := format('%I has neither REPLICATION nor superuser', me);
        fix := format('as a superuser: SELECT * FROM pgdms.grant_migration_role(%L)', me);
    END IF;
    RETURN NEXT;

    -- read access to every table to migrate
    RETURN QUERY SELECT * FROM pgdms.listing_check('select privilege',
        ARRAY(SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND pgdms.is_captured('table', c.oid)
                 AND NOT (has_schema_privilege(c.relnamespace, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'))
               ORDER BY 1),
        format('%I can read every table', me), '%s tables ' || replace(format('%I', me), '%', '%%') || ' cannot read: %s',
        format('as a superuser: SELECT * FROM pgdms.grant_migration_role(%L)', me), 'fail');

    -- tables whose UPDATE and DELETE cannot be applied (no key logged)
    RETURN QUERY SELECT * FROM pgdms.listing_check('tables without a key',
        ARRAY(SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND pgdms.is_captured('table', c.oid)
                 AND (c.relreplident = 'n'
                      OR (c.relreplident = 'd'
                          AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
               ORDER BY 1),
        'every table has a primary key or a replica identity',
        '%s tables log no key, their UPDATE and DELETE cannot be applied: %s',
        'add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL (or USING INDEX a unique index)');

    -- partitioned tables
    RETURN QUERY SELECT * FROM pgdms.listing_check('partitioned tables',
        ARRAY(SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'p' AND pgdms.is_captured('table', c.oid) ORDER BY 1),
        'none', '%s partitioned tables: %s',
        'replicated by pgdms (changes are decoded per partition); the target needs the same partitions, which DDL capture keeps up (ATTACH/DETACH included)');

    -- names that differ only by case
    RETURN QUERY SELECT * FROM pgdms.listing_check('names differing only by case',
        ARRAY(SELECT string_agg(format('%I.%I', n.nspname, c.relname), ' / ' ORDER BY c.relname)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p') AND pgdms.is_captured('table', c.oid)
               GROUP BY lower(n.nspname), lower(c.relname) HAVING count(*) > 1 ORDER BY 1),
        'none', '%s sets of tables: %s',
        'replicated as they are to PostgreSQL; on a case-insensitive target (MySQL on Windows/macOS, SQLite) rename one of each set with a transformation rule');

    -- columns whose type is outside the DMS table
    RETURN QUERY SELECT * FROM pgdms.listing_check('text fallback types',
        ARRAY(SELECT format('%I.%I.%I (%s)', n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod))
                FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p') AND pgdms.is_captured('table', c.oid)
                 AND a.attnum > 0 AND NOT a.attisdropped AND pgdms.dms_text_fallback(a.atttypid)
               ORDER BY n.nspname, c.relname, a.attnum),
        'every column has a DMS type', '%s columns travel as text (DMS type NCLOB): %s',
        'lossless into PostgreSQL; other targets store these values as text');

    -- unlogged tables (never decoded)
    RETURN QUERY SELECT * FROM pgdms.listing_check('unlogged tables',
        ARRAY(SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'u' AND pgdms.is_captured('table', c.oid)
               ORDER BY 1),
        'none', '%s unlogged tables, whose changes are not decoded: %s',
        'ALTER TABLE ... SET LOGGED to replicate them, or leave them out of the migration');

    -- large objects (never decoded)
    cnt := (SELECT count(*) FROM pg_largeobject_metadata);
    name := 'large objects';
    IF cnt = 0 THEN
        status := 'ok'; finding := 'none'; fix := NULL;
    ELSE
        status := 'warn'; finding := format('%s large objects, which logical decoding does not carry', cnt);
        fix := 'copy them separately (pg_dump --large-objects) or store them in bytea columns';
    END IF;
    RETURN NEXT;

    -- materialized views (never decoded)
    RETURN QUERY SELECT * FROM pgdms.listing_check('materialized views',
        ARRAY(SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'm' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1),
        'none', '%s materialized views, not decoded: %s',
        'REFRESH MATERIALIZED VIEW on the target after cutover');

    -- sequences (not decoded)
    RETURN QUERY SELECT * FROM pgdms.listing_check('sequences',
        ARRAY(SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND NOT EXISTS (SELECT FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                                  WHERE d.objid = c.oid AND d.deptype = 'e' AND e.extname = 'pgdms')
               ORDER BY 1),
        'none', '%s sequences, whose values are not decoded: %s',
        'pgdms-apply sets them on the target at the end of the full load and at cutover');

    -- inactive slots and the WAL they hold back
    RETURN QUERY SELECT * FROM pgdms.listing_check('inactive slots',
        ARRAY(SELECT format('%I (%s, retains %s)', s.slot_name, coalesce(s.plugin, 'physical'),
                            pg_size_pretty(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                                                ELSE pg_current_wal_lsn() END, s.restart_lsn)))
                FROM pg_replication_slots s WHERE NOT s.active ORDER BY s.slot_name),
        'none', '%s inactive slots keep WAL on disk: %s',
        'drop those no longer needed: SELECT pgdms.drop_slot(''name'') (pgdms slots), pg_drop_replication_slot(''name''), or pgdms-apply slot drop --slot name');

    -- max_slot_wal_keep_size, and slots it already put at risk
    lim := (SELECT setting::bigint FROM pg_settings WHERE pg_settings.name = 'max_slot_wal_keep_size');
    SELECT count(*), string_agg(format('%I (%s)', s.slot_name, s.wal_status), ', ')
      INTO cnt, list
      FROM pg_replication_slots s WHERE s.wal_status IN ('unreserved', 'lost');
    name := 'max_slot_wal_keep_size';
    IF cnt > 0 THEN
        status := 'fail'; finding := format('slots past the limit: %s', list);
        fix := 'a lost slot cannot be resumed: drop it and start the migration again; raise max_slot_wal_keep_size or keep the consumer running';
    ELSIF lim = -1 THEN
        status := 'ok'; finding := 'unlimited: a stalled migration keeps WAL until the disk fills (watch pgdms.slots())'; fix := NULL;
    ELSIF lim < 1024 THEN
        status := 'warn'; finding := format('%s MB', lim);
        fix := 'a migration slot that falls this far behind is invalidated and must start over: ALTER SYSTEM SET max_slot_wal_keep_size = ''10GB'' (or -1); SELECT pg_reload_conf()';
    ELSE
        status := 'ok'; finding := format('%s MB', lim); fix := NULL;
    END IF;
    RETURN NEXT;

    -- long-running transactions (creating a slot waits for them)
    name := 'long-running transactions';
    SELECT count(*), string_agg(format('pid %s (%s, open %s)', a.pid, a.usename, date_trunc('second', now() - a.xact_start)), ', ')
      INTO cnt, list
      FROM pg_stat_activity a
     WHERE a.xact_start <= now() - long_transaction_age AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend';
    IF cnt > 0 THEN
        status := 'warn'; finding := format('%s transactions open for more than %s: %s', cnt, long_transaction_age, list);
        fix := 'creating a slot waits for them to end, and they hold back WAL removal: let them finish or pg_terminate_backend(pid)';
    ELSIF NOT sees_all_activity THEN
        status := 'warn'; finding := format('%I cannot see other roles'' sessions', me);
        fix := format('GRANT pg_read_all_stats TO %I, or run preflight as a superuser', me);
    ELSE
        status := 'ok'; finding := format('none open for more than %s', long_transaction_age); fix := NULL;
    END IF;
    RETURN NEXT;

    -- prepared transactions
    RETURN QUERY SELECT * FROM pgdms.listing_check('prepared transactions',
        ARRAY(SELECT format('%L (prepared %s ago)', gid, date_trunc('second', now() - prepared))
                FROM pg_prepared_xacts ORDER BY prepared),
        'none', '%s prepared transactions: %s',
        'creating a slot waits for them: COMMIT PREPARED or ROLLBACK PREPARED each');

    -- the database encoding
    val := pg_encoding_to_char((SELECT encoding FROM pg_database WHERE datname = current_database()));
    name := 'database encoding';
    finding := val;
    IF val = 'UTF8' THEN
        status := 'ok'; fix := NULL;
    ELSIF val = 'SQL_ASCII' THEN
        status := 'fail';
        fix := 'SQL_ASCII text has no known encoding and cannot be converted to UTF-8 reliably: convert the database to UTF8 first (dump and restore with -E UTF8)';
    ELSE
        status := 'warn'; fix := 'text is converted to UTF-8 on the way; a target in another encoding converts again';
    END IF;
    RETURN NEXT;

    -- DDL capture: event triggers enabled, and the switch
    SELECT count(*), string_agg(format('%s (%s)', evtname,
                                       CASE evtenabled WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'replica only' ELSE 'enabled' END),
                                ', ' ORDER BY evtname)
      INTO cnt, list
      FROM pg_event_trigger
     WHERE evtname IN ('pgdms_intercept_ddl', 'pgdms_intercept_drop', 'pgdms_intercept_rewrite')
       AND evtenabled IN ('O', 'A');
    name := 'DDL capture';
    IF cnt < 3 THEN
        status := 'fail';
        finding := coalesce((SELECT string_agg(format('%s (%s)', evtname,
                                   CASE evtenabled WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'replica only' ELSE 'enabled' END),
                                   ', ' ORDER BY evtname)
                             FROM pg_event_trigger WHERE evtname LIKE 'pgdms\_intercept\_%'), 'no pgdms event triggers');
        fix := 'ALTER EVENT TRIGGER pgdms_intercept_ddl ENABLE (and pgdms_intercept_drop, pgdms_intercept_rewrite), or DROP EXTENSION pgdms; CREATE EXTENSION pgdms';
    ELSIF NOT pgdms.capture_ddl_enabled() THEN
        status := 'warn'; finding := 'event triggers enabled, but pgdms.capture_ddl is off in this session';
        fix := 'ALTER SYSTEM RESET pgdms.capture_ddl (or ALTER DATABASE/ROLE ... RESET pgdms.capture_ddl); SELECT pg_reload_conf()';
    ELSE
        status := 'ok'; finding := list; fix := NULL;
    END IF;
    RETURN NEXT;

    -- The capture's schemas: still out of reach of roles that are not superusers (an owner
    -- or a grant may have changed since CREATE EXTENSION checked them).
    SELECT string_agg(format('schema %I is %s', n.nspname, u.why), '; ' ORDER BY n.nspname)
      INTO list
      FROM pg_namespace n, pgdms.schema_unsafe_because(n.oid, n.nspname = 'pgdms') AS u(why)
     WHERE n.oid IN (SELECT extnamespace FROM pg_extension WHERE extname = 'pgdms' UNION SELECT 'pgdms'::regnamespace)
       AND u.why IS NOT NULL;
    name := 'capture schemas';
    IF list IS NULL THEN
        status := 'ok'; finding := 'pgdms and the extension''s schema are controlled by superusers only'; fix := NULL;
    ELSE
        status := 'fail'; finding := list;
        fix := 'as a superuser: give the schema to a superuser (ALTER SCHEMA ... OWNER TO), REVOKE CREATE ON it from the others '
               'and drop what they own in schema pgdms; '
               'the capture runs as a superuser and reaches its objects there by name';
    END IF;
    RETURN NEXT;
END
$$;

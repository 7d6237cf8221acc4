-- pgdms DDL capture: the reference's awsdms_ddl_audit table, awsdms_intercept_ddl()
-- function and event trigger, under pgdms names and done so that a consumer can replay
-- what changed without the query text.
--
-- For every table, type or schema a DDL command touched, the triggers describe the object
-- (pgdms.table_definition() and friends), compare that with the description recorded last
-- time (pgdms.ddl_state), and when it differs:
--   * append a row to the audit table pgdms.ddl_audit, which keeps the history;
--   * emit a transactional logical message 'pgdms.ddl' holding the command tag, the
--     object's identity, and its definition before and after, as JSON (UTF-8). The output
--     plugin turns it into a DDL record, in order with the row changes of the transaction.
-- This works the same for DDL run inside functions and DO blocks, where current_query()
-- is the caller's statement (kept for information only, never replayed).
--
-- Authentic records only: pg_logical_emit_message is anyone's to call, so anyone could
-- write a message with the prefix 'pgdms.ddl'. The audit row is written first and carries
-- the SHA-256 of the message; the plugin passes a 'pgdms.ddl' message on only after it has
-- decoded, in the same transaction, an insert into pgdms.ddl_audit (or, for a failure to
-- capture, pgdms.capture_failures) with that digest, and only one message per such row.
-- Only the extension's owner can write those tables; every other message is dropped as
-- forged, logged on the source and reported to the consumer.
--
-- Audit, state and failure tables are members of the extension: the plugin never decodes
-- them as row changes.

-- What a table is, as a consumer needs it to create it or follow its changes. The JSON
-- keys are those of pgdms_proto::TableDef. Names and types are written with
-- search_path = pg_catalog, so everything outside pg_catalog comes schema-qualified.
-- Values (a column's `missing`: what the rows there when it was added got; constants in
-- defaults and partition bounds) are written in the form the plugin's text has, whatever
-- the session that ran the DDL had set: ISO dates, UTC, hex bytea, exact floats.
CREATE FUNCTION pgdms.table_definition(relid oid) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET DateStyle = 'ISO, MDY' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres'
SET bytea_output = 'hex' SET extra_float_digits = 1
AS $$
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
                -- ADD COLUMN with a default the source evaluated once (a constant, now()):
                -- the value the rows already there got, as the type's text. The default's
                -- expression cannot stand in for it (a target would evaluate it again).
                'missing', CASE WHEN a.atthasmissing THEN array_to_string(a.attmissingval, '') END,
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

-- What a user-defined type is (pgdms_proto::TypeDef): enum labels, composite attributes,
-- or a domain's base type and constraints.
CREATE FUNCTION pgdms.type_definition(typid oid) RETURNS jsonb
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

CREATE FUNCTION pgdms.schema_definition(nspid oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('oid', oid::bigint, 'name', nspname::text) FROM pg_namespace WHERE oid = nspid
$$;

-- The audit table: the reference's columns, plus what a consumer needs to replay the change.
CREATE TABLE pgdms.ddl_audit (
    c_key         bigserial PRIMARY KEY,
    c_time        timestamptz NOT NULL DEFAULT clock_timestamp(),
    c_user        text NOT NULL DEFAULT session_user, -- the login role (the trigger runs as the extension's owner)
    c_txn         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    c_tag         text NOT NULL,        -- the command tag: CREATE TABLE, ALTER TABLE, ALTER TYPE...
    c_oid         oid,                  -- the object's oid
    c_name        text,                 -- the object's name
    c_schema      text,                 -- the object's schema
    c_ddlqry      text,                 -- the top-level statement (informational)
    c_object_type text NOT NULL,        -- table, type, schema, rewrite
    c_identity    text,                 -- pg_identify_object's identity
    c_before      jsonb,                -- the definition before the command (NULL: created)
    c_after       jsonb,                -- the definition after it (NULL: dropped)
    c_digest      bytea                 -- SHA-256 of the logical message sent with it
);
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

-- The last definition recorded of every captured object: the "before" of its next change.
CREATE TABLE pgdms.ddl_state (
    kind       text NOT NULL,   -- table, type, schema
    objid      oid NOT NULL,
    definition jsonb NOT NULL,
    PRIMARY KEY (kind, objid)
);

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

-- The objects whose DDL is captured: user tables (not temporary), types and schemas,
-- outside the system schemas and not belonging to an extension (pgdms's own, or another
-- extension's, which CREATE EXTENSION on the target provides).
CREATE FUNCTION pgdms.is_captured(kind text, objid oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT NOT EXISTS (SELECT FROM pg_depend d
                        WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND d.objid = $2
                          AND d.classid = CASE kind WHEN 'table' THEN 'pg_class'::regclass
                                                    WHEN 'type' THEN 'pg_type'::regclass
                                                    ELSE 'pg_namespace'::regclass END)
       AND CASE kind
           WHEN 'table' THEN EXISTS (
               SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = $2 AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast')
           WHEN 'type' THEN EXISTS (
               SELECT FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                WHERE t.oid = $2 AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                  AND n.nspname !~ '^pg_temp' AND n.nspname !~ '^pg_toast')
           WHEN 'schema' THEN EXISTS (
               SELECT FROM pg_namespace n WHERE n.oid = $2
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                  AND n.nspname !~ '^pg_temp' AND n.nspname !~ '^pg_toast')
           ELSE false END
$$;

CREATE FUNCTION pgdms.definition(kind text, objid oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE kind
        WHEN 'table' THEN pgdms.table_definition(objid)
        WHEN 'type' THEN pgdms.type_definition(objid)
        WHEN 'schema' THEN pgdms.schema_definition(objid)
    END
$$;

-- Writes one captured change: the audit row, with the digest of the logical message that
-- follows it in the same transaction (see "Authentic records only" above).
CREATE FUNCTION pgdms.record_ddl(tag text, identity text, object_type text, object jsonb,
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

-- Compares an object with its recorded state; records the change if there is one.
CREATE FUNCTION pgdms.capture(kind text, objid oid, tag text, identity text) RETURNS void
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

-- A table and the tables whose partition membership it may have changed (ATTACH/DETACH
-- name the parent; ALTER of a parent changes its partitions too).
CREATE FUNCTION pgdms.capture_table(relid oid, tag text, identity text) RETURNS void
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

-- Renaming a schema or a type changes how the definitions of tables and types name them,
-- without a command on those: bring the recorded state up to date, so that their next
-- change is not mistaken for a type change (or a drop sent under the old name).
CREATE FUNCTION pgdms.refresh_state() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE pgdms.ddl_state s SET definition = now.definition
      FROM (SELECT kind, objid, pgdms.definition(kind, objid) AS definition
              FROM pgdms.ddl_state WHERE kind IN ('table', 'type')) now
     WHERE s.kind = now.kind AND s.objid = now.objid
       AND now.definition IS NOT NULL AND s.definition IS DISTINCT FROM now.definition
$$;

-- Reports a failure to capture on the stream: the user's command still succeeds, and the
-- consumer stops on the CaptureFailed record. Should even the failure not be recordable,
-- the command is refused: going on would leave the migration behind without a word.
CREATE FUNCTION pgdms.capture_failed(tag text, error text) RETURNS void
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

-- ddl_command_end: tables, types and schemas created or altered.
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

-- sql_drop: dropped tables, types and schemas, and columns dropped from tables that remain
-- (ALTER TABLE ... DROP COLUMN, DROP TYPE ... CASCADE).
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

-- table_rewrite: the rows a rewrite produces are not decoded; say so on the stream.
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

-- What exists now is the baseline: the first change of each object has a "before".
INSERT INTO pgdms.ddl_state (kind, objid, definition)
SELECT 'table', c.oid, pgdms.table_definition(c.oid)
  FROM pg_class c
 WHERE c.relkind IN ('r', 'p') AND pgdms.is_captured('table', c.oid)
UNION ALL
SELECT 'type', t.oid, pgdms.type_definition(t.oid)
  FROM pg_type t
 WHERE t.typtype IN ('e', 'c', 'd') AND pgdms.is_captured('type', t.oid) AND pgdms.type_definition(t.oid) IS NOT NULL
UNION ALL
SELECT 'schema', n.oid, pgdms.schema_definition(n.oid)
  FROM pg_namespace n
 WHERE pgdms.is_captured('schema', n.oid) AND n.nspname <> 'pgdms';

CREATE EVENT TRIGGER pgdms_intercept_ddl ON ddl_command_end
    EXECUTE FUNCTION pgdms.intercept_ddl();
CREATE EVENT TRIGGER pgdms_intercept_drop ON sql_drop
    EXECUTE FUNCTION pgdms.intercept_drop();
CREATE EVENT TRIGGER pgdms_intercept_rewrite ON table_rewrite
    EXECUTE FUNCTION pgdms.intercept_rewrite();
-- Also in sessions with session_replication_role = replica, as a replication apply runs: a
-- database that is a migration's target and a source at once (B in A -> B -> C) must pass
-- on the DDL it receives, or C would get B's rows in a shape it was never told of.
ALTER EVENT TRIGGER pgdms_intercept_ddl ENABLE ALWAYS;
ALTER EVENT TRIGGER pgdms_intercept_drop ENABLE ALWAYS;
ALTER EVENT TRIGGER pgdms_intercept_rewrite ENABLE ALWAYS;

-- pgdms 0.3.0 -> 0.3.1: a column's DDL record carries the value the rows already there got.
--
-- ADD COLUMN ... DEFAULT with a default PostgreSQL evaluates once (a constant, now(),
-- a stable function) gives the existing rows that value without rewriting the table
-- (pg_attribute.attmissingval). A consumer that evaluated the default itself would give
-- them another value (its own now()), and one that cannot evaluate PostgreSQL expressions
-- (MySQL, SQLite) none at all. The table description now carries it as `missing`, written
-- with the output settings pinned (ISO dates, UTC, hex bytea), as are the constants of
-- defaults and partition bounds.
--
-- Only pgdms's own function is replaced; nothing is resolved through a schema another
-- role controls.
SET LOCAL search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION pgdms.table_definition(relid oid) RETURNS jsonb
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

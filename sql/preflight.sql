-- One check's row from the objects it found: ok when there are none, else `problem` (warn
-- by default) with the count and the list, formatted by `found`.
CREATE FUNCTION pgdms.listing_check(check_name text, items text[], none_found text, found text, fix text,
                                    problem text DEFAULT 'warn')
RETURNS TABLE (name text, status text, finding text, fix text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT check_name,
           CASE WHEN cardinality(items) = 0 THEN 'ok' ELSE problem END,
           CASE WHEN cardinality(items) = 0 THEN none_found
                ELSE format(found, cardinality(items), array_to_string(items, ', ')) END,
           CASE WHEN cardinality(items) = 0 THEN NULL ELSE fix END
$$;

-- pgdms.preflight(): is this database ready to be migrated by pgdms, and if not, what to do.
--
-- One row per check: name, status ('ok', 'warn' or 'fail'), finding (what was found), fix.
-- 'fail' stops a migration; 'warn' is something to know or decide. It runs for any role:
-- what the role cannot see is reported as such, never as an error. Transactions open longer
-- than long_transaction_age are reported.
CREATE FUNCTION pgdms.preflight(long_transaction_age interval DEFAULT interval '5 minutes')
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
COMMENT ON FUNCTION pgdms.preflight(interval) IS 'pgdms: checks this database is ready to be migrated; one row per check with the fix';

-- pgdms slots, removal, and the least-privilege setup.

-- The replication slots that use the pgdms plugin, with the WAL each keeps on the server.
CREATE FUNCTION pgdms.slots()
RETURNS TABLE (slot_name name, database name, active boolean, active_pid integer, temporary boolean,
               restart_lsn pg_lsn, confirmed_flush_lsn pg_lsn, retained_wal_bytes numeric, retained_wal text,
               wal_status text, safe_wal_size bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.slot_name, s.database, s.active, s.active_pid, s.temporary, s.restart_lsn, s.confirmed_flush_lsn,
           w.bytes, pg_size_pretty(w.bytes), s.wal_status, s.safe_wal_size
      FROM pg_replication_slots s,
           LATERAL (SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                                ELSE pg_current_wal_lsn() END, s.restart_lsn) AS bytes) w
     WHERE s.plugin = 'pgdms'
     ORDER BY s.slot_name
$$;
COMMENT ON FUNCTION pgdms.slots() IS 'pgdms: the replication slots using the pgdms plugin and the WAL each retains';

-- Drops a pgdms slot (and only a pgdms slot), saying why it cannot when it cannot.
CREATE FUNCTION pgdms.drop_slot(slot name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM pg_replication_slots r WHERE r.slot_name = slot;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'replication slot "%" does not exist', slot
            USING ERRCODE = 'undefined_object', HINT = 'SELECT * FROM pgdms.slots() lists the pgdms slots.';
    END IF;
    IF s.plugin IS DISTINCT FROM 'pgdms' THEN
        RAISE EXCEPTION 'replication slot "%" does not use the pgdms plugin (its plugin is %)', slot,
                        coalesce(s.plugin, 'none: a physical slot')
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'pgdms.drop_slot() drops pgdms slots only; pg_drop_replication_slot() drops any slot.';
    END IF;
    IF s.active THEN
        RAISE EXCEPTION 'replication slot "%" is in use by process %', slot, s.active_pid
            USING ERRCODE = 'object_in_use',
                  HINT = format('Stop the pgdms-apply reading it (or SELECT pg_terminate_backend(%s)) and try again.',
                                s.active_pid);
    END IF;
    PERFORM pg_drop_replication_slot(slot);
END
$$;
COMMENT ON FUNCTION pgdms.drop_slot(name) IS 'pgdms: drops a replication slot that uses the pgdms plugin';

-- ddl_command_start of DROP EXTENSION: names the pgdms slots of this database that would
-- keep running without DDL capture (pgdms_ext/src/ffi/event_trigger.rs).
CREATE FUNCTION pgdms.warn_drop_extension() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'pgdms_warn_drop_extension';
CREATE EVENT TRIGGER pgdms_warn_drop_extension ON ddl_command_start WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION pgdms.warn_drop_extension();

-- The least-privilege path: a superuser runs this once for the role the migration runs as.
-- The role gets REPLICATION and read access to the data, nothing else: the DDL capture
-- runs as the extension's owner (SECURITY DEFINER), whoever issues the DDL.
CREATE FUNCTION pgdms.grant_migration_role(role_name name) RETURNS SETOF text
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
COMMENT ON FUNCTION pgdms.grant_migration_role(name) IS
    'pgdms: gives a role what a migration needs (REPLICATION, SELECT on the data), as a superuser, once';

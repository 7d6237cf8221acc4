-- pgdms 0.2.0 -> 0.3.0: DDL capture in replica sessions too.
--
-- A database that is a migration's target and also a source (B in A -> B -> C, or the way
-- back after a cutover) receives its DDL from a replication apply, which runs with
-- session_replication_role = replica. Event triggers enabled the default way (ORIGIN) do
-- not fire there, so B's stream carried B's rows in a shape its consumer was never told
-- of. The capture triggers now fire ALWAYS, as a new install sets them.
--
-- Event trigger names are global and only superusers create event triggers: the
-- statements below resolve nothing through a schema another role controls.
SET LOCAL search_path = pg_catalog, pg_temp;

ALTER EVENT TRIGGER pgdms_intercept_ddl ENABLE ALWAYS;
ALTER EVENT TRIGGER pgdms_intercept_drop ENABLE ALWAYS;
ALTER EVENT TRIGGER pgdms_intercept_rewrite ENABLE ALWAYS;

-- pgdms: the schema of the extension's functions.
--
-- pgdms.preflight(), pgdms.slots(), pgdms.drop_slot() and the helpers of DDL capture live
-- in the schema "pgdms". Created here, by the extension script, it is a member of the
-- extension and DROP EXTENSION removes it; a schema of that name that already existed
-- (CREATE SCHEMA pgdms; CREATE EXTENSION pgdms SCHEMA pgdms) is used as it is and stays.
--
-- The DDL capture artifacts (audit table, intercepting functions) go into the extension's
-- own schema, @extschema@: the first schema of the search_path, or the one named by
-- CREATE EXTENSION pgdms SCHEMA x (the reference's DdlArtifactsSchema).
DO $$
BEGIN
    IF to_regnamespace('pgdms') IS NULL THEN
        CREATE SCHEMA pgdms;
        -- Anyone may run the checks; what each function lets a role do is its own matter.
        GRANT USAGE ON SCHEMA pgdms TO PUBLIC;
    END IF;
END
$$;

-- The extension's functions written in Rust (pgdms_ext/src/sql.rs).

-- Is DDL capture on (pgdms.capture_ddl)? Calling it loads pgdms.so, which defines the
-- superuser-only setting before it is read.
CREATE FUNCTION pgdms.capture_ddl_enabled() RETURNS boolean
STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'capture_ddl_enabled_wrapper';

-- The version of the installed pgdms library.
CREATE FUNCTION pgdms.version() RETURNS text
STRICT IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'version_wrapper';

-- The DMS type of a column of this type and modifier: 'INT4', 'NUMERIC(10,2)', 'WSTRING(20)'...
CREATE FUNCTION pgdms.dms_type(type_oid oid, typmod integer DEFAULT -1) RETURNS text
STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dms_type_wrapper';

-- True for a type outside the DMS type table (its values travel as text, DMS type NCLOB).
CREATE FUNCTION pgdms.dms_text_fallback(type_oid oid) RETURNS boolean
STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dms_text_fallback_wrapper';

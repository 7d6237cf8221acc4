//! A table with a column of every type of the DMS guide's table, and rows of edge values.

use crate::Cluster;

/// (column, type, DMS type, how to read the source's own text of it)
pub const MATRIX: &[(&str, &str, &str, &str)] = &[
    ("c_int2", "smallint", "INT2", ""),
    ("c_int4", "integer", "INT4", ""),
    ("c_int8", "bigint", "INT8", ""),
    ("c_num", "numeric(10,2)", "NUMERIC(10,2)", ""),
    ("c_num38", "decimal(38,0)", "NUMERIC(38,0)", ""),
    ("c_num50", "numeric(50,10)", "STRING", ""),
    ("c_numfree", "numeric", "STRING", ""),
    ("c_real", "real", "REAL4", ""),
    ("c_double", "double precision", "REAL8", ""),
    ("c_smallserial", "smallserial", "INT2", ""),
    ("c_serial", "serial", "INT4", ""),
    ("c_bigserial", "bigserial", "INT8", ""),
    ("c_money", "money", "NUMERIC(38,4)", "::numeric"),
    ("c_char", "char", "WSTRING(1)", ""),
    ("c_charn", "char(10)", "WSTRING(10)", ""),
    ("c_varchar", "varchar(20)", "WSTRING(20)", ""),
    ("c_varchar_free", "varchar", "NCLOB", ""),
    ("c_text", "text", "NCLOB", ""),
    ("c_bytea", "bytea", "BLOB", ""),
    ("c_ts", "timestamp", "TIMESTAMP", ""),
    ("c_ts3", "timestamp(3)", "TIMESTAMP", ""),
    ("c_tstz", "timestamptz", "TIMESTAMP", ""),
    ("c_date", "date", "DATE", ""),
    ("c_time", "time", "TIME", ""),
    ("c_timetz", "timetz", "TIME", ""),
    ("c_interval", "interval", "STRING(128)", ""),
    ("c_bool", "boolean", "BOOLEAN", ""),
    ("c_enum", "mood", "STRING(64)", ""),
    ("c_cidr", "cidr", "STRING(50)", ""),
    ("c_inet", "inet", "STRING(50)", ""),
    ("c_macaddr", "macaddr", "STRING(18)", ""),
    ("c_bit", "bit(8)", "STRING(8)", ""),
    ("c_varbit", "bit varying(16)", "STRING(16)", ""),
    ("c_uuid", "uuid", "STRING(36)", ""),
    ("c_tsvector", "tsvector", "CLOB", ""),
    ("c_tsquery", "tsquery", "CLOB", ""),
    ("c_xml", "xml", "CLOB", ""),
    ("c_point", "point", "STRING(255)", ""),
    ("c_line", "line", "STRING(255)", ""),
    ("c_lseg", "lseg", "STRING(255)", ""),
    ("c_box", "box", "STRING(255)", ""),
    ("c_path", "path", "CLOB", ""),
    ("c_polygon", "polygon", "CLOB", ""),
    ("c_circle", "circle", "STRING(255)", ""),
    ("c_json", "json", "NCLOB", ""),
    ("c_jsonb", "jsonb", "NCLOB", ""),
    ("c_int_arr", "integer[]", "NCLOB", ""),
    ("c_text_arr", "text[]", "NCLOB", ""),
    ("c_ts_arr", "timestamp[]", "NCLOB", ""),
    ("c_composite", "pair", "NCLOB", ""),
    ("c_hstore", "hstore", "NCLOB", ""),
    ("c_int4range", "int4range", "STRING(255)", ""),
    ("c_int8range", "int8range", "STRING(255)", ""),
    ("c_numrange", "numrange", "STRING(255)", ""),
    ("c_tsrange", "tsrange", "STRING(255)", ""),
    ("c_domain", "posint", "NCLOB", ""),
];

/// Rows of the matrix, each a VALUES list in MATRIX order (after the id).
pub const ROWS: &[&str] = &[
    // Ordinary values.
    "1, 1, 2, 3, 12345678.90, 12345678901234567890123456789012345678, 1234567890123456789012345678901234567890.0123456789,
     3.14159, 1.5, 2.25, 1, 2, 3, 12.34, 'a', 'abc', 'hello', 'free', 'some text', '\\xdeadbeef',
     '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.123', '2024-02-29 13:14:15.5+05:30', '2024-02-29', '13:14:15',
     '13:14:15.25-08', '1 year 2 mons 3 days 04:05:06', true, 'happy', '192.168.0.0/16', '10.1.2.3/8', '08:00:2b:01:02:03',
     B'10101010', B'1101', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'a fat cat sat', 'fat & rat', '<a>b</a>',
     '(1,2)', '{1,2,3}', '[(1,2),(3,4)]', '((1,2),(3,4))', '[(1,2),(3,4),(5,6)]', '((0,0),(1,0),(1,1))', '<(1,2),3>',
     '{\"a\": 1}', '{\"b\": [1, 2, {\"c\": null}]}', '{1,2,3}', '{a,b}', '{\"2024-01-01 00:00:00\"}', '(1,x)',
     'a=>1, b=>NULL', '[1,10)', '[1,100)', '[1.5,2.5]', '[2024-01-01,2024-02-01)', 42",
    // NULL in every column.
    "2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 0,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL",
    // Edges: extremes, special floats and numerics, empty strings, unicode, infinities, BC, NULL elements.
    "3, -32768, -2147483648, -9223372036854775808, -99999999.99, 0, -0.0000000001,
     'NaN', 'Infinity', '-Infinity', 32767, 2147483647, 9223372036854775807, -92233720368547758.08, ' ', '',
     '', 'ünïcødé ✓ 🐘', E'tab\\there\\nnewline \"quotes\" ''single'' back\\\\slash', '\\x00ff0000',
     'infinity', '-infinity', '4713-01-01 00:00:00 BC', '0044-03-15 BC', '24:00:00', '00:00:00+14:59',
     '-178000000 years', false, 'sad', '::1/128', '2001:db8::1', 'ff:ff:ff:ff:ff:ff', B'00000000', B'',
     '00000000-0000-0000-0000-000000000000', '', '', '<!-- c -->', '(-1.5e+300,0)', '{1,-1,0}', '[(0,0),(0,0)]',
     '((0,0),(0,0))', '((0,0))', '((0,0),(0,0),(0,0))', '<(0,0),0>', '\"\"', '{\"deep\": {\"er\": {\"est\": [[], {}, \"ü\"]}}}',
     '{NULL,1,NULL}', '{\"\",NULL,\"a,b\",\"}\"}', '{NULL}', '(,)', '', 'empty', '(,)', '(,)', '(,)', 1",
];

/// Creates the types and the `matrix` table in the `postgres` database.
pub fn setup_matrix(db: &Cluster) {
    let columns: Vec<String> = MATRIX.iter().map(|(c, t, _, _)| format!("{c} {t}")).collect();
    db.execute(&format!(
        "create extension hstore;
         create type mood as enum ('sad', 'ok', 'happy');
         create type pair as (a int, b text);
         create domain posint as integer check (value > 0);
         create table matrix (id int primary key, {});",
        columns.join(", ")
    ));
}

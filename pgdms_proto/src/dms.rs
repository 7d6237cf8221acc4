//! DMS data types and the mapping from PostgreSQL types.
//!
//! The mapping is the table "Source Data Types for PostgreSQL" of the AWS DMS guide, with
//! its gaps closed:
//!
//! | PostgreSQL | DMS |
//! |---|---|
//! | smallint, integer, bigint (and their serials) | INT2, INT4, INT8 |
//! | numeric(p,s) / decimal(p,s), p <= 38 | NUMERIC(p,s) |
//! | numeric(p,s), p > 38, and numeric without a precision | STRING (it may hold 1000 digits) |
//! | real, double precision | REAL4, REAL8 |
//! | money | NUMERIC(38,4), carried as its numeric value |
//! | char, char(n), varchar(n) | WSTRING(1), WSTRING(n), WSTRING(n) |
//! | varchar and char without a length, text | NCLOB |
//! | bytea | BLOB |
//! | timestamp | TIMESTAMP |
//! | timestamp with time zone | TIMESTAMP, normalised to UTC (`utc`) -- unsupported by DMS |
//! | date, time | DATE, TIME |
//! | time with time zone | TIME, keeping its offset (`with_offset`) |
//! | interval | STRING(128) |
//! | boolean | BOOLEAN (a target without booleans writes CHAR(5) 'true'/'false') |
//! | enum types | STRING(64) |
//! | cidr, inet | STRING(50) |
//! | macaddr | STRING(18) |
//! | bit(n), bit varying(n) | STRING(n); bit varying without a length: CLOB |
//! | uuid | STRING(36) |
//! | tsvector, tsquery, xml | CLOB |
//! | point, line, lseg, box, circle | STRING(255) |
//! | path, polygon | CLOB |
//! | json, jsonb, hstore, arrays, composite types | NCLOB |
//! | range types | STRING(255) |
//! | anything else (domains, multiranges, extension and other built-in types) | NCLOB, as its text output (`dms_fallback`) |

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmsType {
    Boolean,
    Int2,
    Int4,
    Int8,
    Numeric {
        precision: u8,
        scale: i16,
    },
    Real4,
    Real8,
    /// A single-byte string; no length means unbounded.
    String {
        length: Option<u32>,
    },
    /// A multi-byte (Unicode) string of at most `length` characters.
    WString {
        length: u32,
    },
    Nclob,
    Clob,
    Blob,
    Date,
    /// `with_offset`: values keep their UTC offset (time with time zone).
    Time {
        with_offset: bool,
    },
    /// `utc`: values are instants normalised to UTC (timestamp with time zone).
    Timestamp {
        utc: bool,
    },
}

impl fmt::Display for DmsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmsType::Boolean => f.write_str("BOOLEAN"),
            DmsType::Int2 => f.write_str("INT2"),
            DmsType::Int4 => f.write_str("INT4"),
            DmsType::Int8 => f.write_str("INT8"),
            DmsType::Numeric { precision, scale } => write!(f, "NUMERIC({precision},{scale})"),
            DmsType::Real4 => f.write_str("REAL4"),
            DmsType::Real8 => f.write_str("REAL8"),
            DmsType::String { length: Some(n) } => write!(f, "STRING({n})"),
            DmsType::String { length: None } => f.write_str("STRING"),
            DmsType::WString { length } => write!(f, "WSTRING({length})"),
            DmsType::Nclob => f.write_str("NCLOB"),
            DmsType::Clob => f.write_str("CLOB"),
            DmsType::Blob => f.write_str("BLOB"),
            DmsType::Date => f.write_str("DATE"),
            DmsType::Time { .. } => f.write_str("TIME"),
            DmsType::Timestamp { .. } => f.write_str("TIMESTAMP"),
        }
    }
}

/// What the mapping needs to know of a column's type.
#[derive(Debug, Clone, Copy)]
pub struct PgTypeInfo<'a> {
    pub oid: u32,
    /// `atttypmod`; -1 when the column has none.
    pub typmod: i32,
    /// `pg_type.typtype`: b(ase), c(omposite), d(omain), e(num), p(seudo), r(ange), m(ultirange).
    pub typtype: u8,
    /// The type is an array type (`typcategory = 'A'`).
    pub is_array: bool,
    /// `pg_type.typname`, used only to recognise extension types the table names (hstore).
    pub name: &'a str,
}

/// Oids of the built-in types the table names. Built-in oids are fixed across clusters and
/// versions (`pg_type.dat`).
pub mod oids {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const POINT: u32 = 600;
    pub const LSEG: u32 = 601;
    pub const PATH: u32 = 602;
    pub const BOX: u32 = 603;
    pub const POLYGON: u32 = 604;
    pub const LINE: u32 = 628;
    pub const CIDR: u32 = 650;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const CIRCLE: u32 = 718;
    pub const MACADDR8: u32 = 774;
    pub const MONEY: u32 = 790;
    pub const MACADDR: u32 = 829;
    pub const INET: u32 = 869;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const BIT: u32 = 1560;
    pub const VARBIT: u32 = 1562;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const TSVECTOR: u32 = 3614;
    pub const TSQUERY: u32 = 3615;
    pub const JSONB: u32 = 3802;
}

/// `VARHDRSZ`: the offset of length-typed modifiers (char(n), varchar(n), numeric(p,s)).
const VARHDRSZ: i32 = 4;

/// The DMS type of a column, and whether it is the text fallback for a type the table does
/// not name.
pub fn dms_type_of(t: &PgTypeInfo<'_>) -> (DmsType, bool) {
    use oids::*;
    let listed = |d| (d, false);
    let string = |n| listed(DmsType::String { length: Some(n) });
    match t.oid {
        BOOL => listed(DmsType::Boolean),
        INT2 => listed(DmsType::Int2),
        INT4 => listed(DmsType::Int4),
        INT8 => listed(DmsType::Int8),
        NUMERIC => listed(numeric(t.typmod)),
        FLOAT4 => listed(DmsType::Real4),
        FLOAT8 => listed(DmsType::Real8),
        MONEY => listed(DmsType::Numeric { precision: 38, scale: 4 }),
        BPCHAR | VARCHAR if t.typmod >= VARHDRSZ => listed(DmsType::WString { length: (t.typmod - VARHDRSZ) as u32 }),
        BPCHAR | VARCHAR | TEXT => listed(DmsType::Nclob),
        BYTEA => listed(DmsType::Blob),
        TIMESTAMP => listed(DmsType::Timestamp { utc: false }),
        TIMESTAMPTZ => listed(DmsType::Timestamp { utc: true }),
        DATE => listed(DmsType::Date),
        TIME => listed(DmsType::Time { with_offset: false }),
        TIMETZ => listed(DmsType::Time { with_offset: true }),
        INTERVAL => string(128),
        CIDR | INET => string(50),
        MACADDR => string(18),
        BIT | VARBIT if t.typmod > 0 => string(t.typmod as u32),
        VARBIT => listed(DmsType::Clob),
        UUID => string(36),
        TSVECTOR | TSQUERY | XML | PATH | POLYGON => listed(DmsType::Clob),
        POINT | LINE | LSEG | BOX | CIRCLE => string(255),
        JSON | JSONB => listed(DmsType::Nclob),
        _ if t.is_array => listed(DmsType::Nclob),
        _ => match t.typtype {
            b'e' => string(64),
            b'c' => listed(DmsType::Nclob),
            b'r' => string(255),
            _ if t.name == "hstore" => listed(DmsType::Nclob),
            _ => (DmsType::Nclob, true),
        },
    }
}

/// NUMERIC(p,s) up to 38 digits of precision, STRING beyond (and without a declared
/// precision, since such a column holds up to 131072 digits).
fn numeric(typmod: i32) -> DmsType {
    if typmod < VARHDRSZ {
        return DmsType::String { length: None };
    }
    let m = typmod - VARHDRSZ;
    let precision = (m >> 16) & 0xffff;
    // The scale is an 11-bit two's complement field (PostgreSQL 15 allows negative scales).
    let scale = (((m & 0x7ff) ^ 1024) - 1024) as i16;
    if (1..=38).contains(&precision) {
        DmsType::Numeric { precision: precision as u8, scale }
    } else {
        DmsType::String { length: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(oid: u32, typmod: i32) -> (DmsType, bool) {
        dms_type_of(&PgTypeInfo { oid, typmod, typtype: b'b', is_array: false, name: "" })
    }

    #[test]
    fn the_reference_table() {
        use oids::*;
        let cases: &[(u32, i32, &str)] = &[
            (INT4, -1, "INT4"),
            (INT2, -1, "INT2"),
            (INT8, -1, "INT8"),
            (NUMERIC, ((10 << 16) | 2) + 4, "NUMERIC(10,2)"),
            (NUMERIC, (38 << 16) + 4, "NUMERIC(38,0)"),
            (NUMERIC, ((39 << 16) | 5) + 4, "STRING"),
            (NUMERIC, -1, "STRING"),
            (FLOAT4, -1, "REAL4"),
            (FLOAT8, -1, "REAL8"),
            (MONEY, -1, "NUMERIC(38,4)"),
            (BPCHAR, 5, "WSTRING(1)"),
            (BPCHAR, 14, "WSTRING(10)"),
            (VARCHAR, 24, "WSTRING(20)"),
            (VARCHAR, -1, "NCLOB"),
            (TEXT, -1, "NCLOB"),
            (BYTEA, -1, "BLOB"),
            (TIMESTAMP, -1, "TIMESTAMP"),
            (TIMESTAMPTZ, 3, "TIMESTAMP"),
            (DATE, -1, "DATE"),
            (TIME, -1, "TIME"),
            (TIMETZ, -1, "TIME"),
            (INTERVAL, -1, "STRING(128)"),
            (BOOL, -1, "BOOLEAN"),
            (CIDR, -1, "STRING(50)"),
            (INET, -1, "STRING(50)"),
            (MACADDR, -1, "STRING(18)"),
            (BIT, 8, "STRING(8)"),
            (VARBIT, 12, "STRING(12)"),
            (UUID, -1, "STRING(36)"),
            (TSVECTOR, -1, "CLOB"),
            (TSQUERY, -1, "CLOB"),
            (XML, -1, "CLOB"),
            (POINT, -1, "STRING(255)"),
            (LINE, -1, "STRING(255)"),
            (LSEG, -1, "STRING(255)"),
            (BOX, -1, "STRING(255)"),
            (PATH, -1, "CLOB"),
            (POLYGON, -1, "CLOB"),
            (CIRCLE, -1, "STRING(255)"),
            (JSON, -1, "NCLOB"),
            (JSONB, -1, "NCLOB"),
        ];
        for &(oid, typmod, want) in cases {
            let (got, fallback) = map(oid, typmod);
            assert_eq!(got.to_string(), want, "oid {oid} typmod {typmod}");
            assert!(!fallback, "oid {oid} is in the table");
        }
        assert_eq!(map(TIMESTAMPTZ, -1).0, DmsType::Timestamp { utc: true });
        assert_eq!(map(TIMETZ, -1).0, DmsType::Time { with_offset: true });
        assert_eq!(map(NUMERIC, ((5 << 16) | (-2i32 & 0x7ff)) + 4).0, DmsType::Numeric { precision: 5, scale: -2 });
    }

    #[test]
    fn non_builtin_types() {
        let t = |typtype, is_array, name| dms_type_of(&PgTypeInfo { oid: 50_000, typmod: -1, typtype, is_array, name });
        assert_eq!(t(b'e', false, "mood"), (DmsType::String { length: Some(64) }, false));
        assert_eq!(t(b'c', false, "pair"), (DmsType::Nclob, false));
        assert_eq!(t(b'b', true, "_mood"), (DmsType::Nclob, false));
        assert_eq!(t(b'r', false, "floatrange"), (DmsType::String { length: Some(255) }, false));
        assert_eq!(t(b'b', false, "hstore"), (DmsType::Nclob, false));
        assert_eq!(t(b'd', false, "posint"), (DmsType::Nclob, true));
        assert_eq!(t(b'b', false, "citext"), (DmsType::Nclob, true));
        assert_eq!(t(b'm', false, "int4multirange"), (DmsType::Nclob, true));
        assert_eq!(map(oids::OID, -1), (DmsType::Nclob, true));
    }
}

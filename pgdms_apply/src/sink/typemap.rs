//! The DMS type mapping of the heterogeneous targets: one table, from the DMS type a
//! column carries (see `pgdms_proto::dms`) to the column type of each target and the form
//! its values take there.
//!
//! | DMS type | MySQL / MariaDB | SQLite | JSON stream |
//! |---|---|---|---|
//! | BOOLEAN | CHAR(5) 'true'/'false'; BOOLEAN (TINYINT(1)) with `--map-boolean-as-boolean` | TEXT 'true'/'false'; INTEGER 0/1 with the flag | "true"/"false"; true/false with the flag |
//! | INT2, INT4, INT8 | SMALLINT, INT, BIGINT | INTEGER | number |
//! | NUMERIC(p,s) | DECIMAL(p,s) (LONGTEXT unless p <= 65 and 0 <= s <= min(p, 30)) | TEXT ('1.10' stays '1.10') | string |
//! | REAL4, REAL8 | FLOAT, DOUBLE | REAL | number ("NaN", "Infinity", "-Infinity" as strings) |
//! | STRING(n), WSTRING(n) | VARCHAR(n) utf8mb4; LONGTEXT when n > 16383 or the row's VARCHARs pass 65,535 bytes | TEXT | string |
//! | STRING, CLOB, NCLOB | LONGTEXT utf8mb4 | TEXT | string |
//! | BLOB | LONGBLOB | BLOB | string, base64 |
//! | DATE | DATE | TEXT 'YYYY-MM-DD' | string |
//! | TIME | TIME(6) (time with time zone: converted to UTC) | TEXT (PostgreSQL's text, offset kept) | string |
//! | TIMESTAMP | DATETIME(6) (timestamptz: UTC) | TEXT (PostgreSQL's ISO text; timestamptz in UTC, '+00') | string |
//!
//! Options, as the reference's endpoint settings: `--map-boolean-as-boolean`,
//! `--map-jsonb-as-clob` (json, jsonb and hstore become CLOB rather than NCLOB), and
//! `--map-long-varchar-as wstring|clob|nclob` (varchar without a length; default nclob).
//!
//! MySQL key columns: a primary-key column that would be LONGTEXT or LONGBLOB is a VARCHAR
//! or VARBINARY within InnoDB's 3072 key bytes (VARCHAR(768) for a lone text key).
//!
//! Values MySQL cannot hold -- dates and timestamps BC, past year 9999 or +-infinity, NaN
//! and +-Infinity in DECIMAL, FLOAT and DOUBLE -- follow one rule: `cell` refuses them
//! (`Unrepresentable`), the column gets NULL and the occurrence is reported (`rowsql`
//! collects them, the MySQL target records each in `pgdms_value_exceptions` and logs it).
//! SQLite and the JSON stream hold every value.

use crate::model::{ColumnInfo, Val};
use base64::Engine as _;
use pgdms_proto::dms::oids;
use pgdms_proto::DmsType;

/// How varchar without a length maps (the reference's MapLongVarcharAs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LongVarchar {
    Wstring,
    Clob,
    #[default]
    Nclob,
}

/// The reference's data type mapping settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct MapOptions {
    pub boolean_as_boolean: bool,
    pub jsonb_as_clob: bool,
    pub long_varchar_as: LongVarchar,
}

/// The widest VARCHAR MySQL takes in utf8mb4 (65,535 bytes / 4).
pub const MYSQL_MAX_VARCHAR: u32 = 16_383;
/// The bytes MySQL allows for a row's inline columns.
const MYSQL_ROW_BYTES: u64 = 65_535;

/// The DMS type a column gets, the mapping options applied.
pub fn dms_type(col: &ColumnInfo, opts: &MapOptions) -> DmsType {
    let json_like = matches!(col.type_oid, oids::JSON | oids::JSONB) || col.type_sql == "hstore";
    if json_like && opts.jsonb_as_clob {
        return DmsType::Clob;
    }
    if col.type_oid == oids::VARCHAR && col.dms_type == DmsType::Nclob {
        return match opts.long_varchar_as {
            LongVarchar::Wstring => DmsType::WString { length: MYSQL_MAX_VARCHAR },
            LongVarchar::Clob => DmsType::Clob,
            LongVarchar::Nclob => DmsType::Nclob,
        };
    }
    col.dms_type
}

/// Is this column json, jsonb or hstore (nullable during the full load, as the reference requires)?
pub fn is_json_like(col: &ColumnInfo) -> bool {
    matches!(col.type_oid, oids::JSON | oids::JSONB) || col.type_sql == "hstore"
}

/// The bytes InnoDB allows for an index key (DYNAMIC rows): a primary key's text and binary
/// columns share them.
const MYSQL_KEY_BYTES: u32 = 3072;

/// Is this DMS type a DECIMAL in MySQL (else its values go as text)?
fn mysql_decimal(d: DmsType) -> bool {
    matches!(d, DmsType::Numeric { precision, scale } if precision <= 65 && scale >= 0 && scale <= i16::from(precision).min(30))
}

/// The MySQL column types of a table's columns (the row-size rule needs all of them);
/// `key` are the indices of the primary key's columns.
///
/// A key column that would be LONGTEXT or LONGBLOB (MySQL cannot index those whole) is a
/// VARCHAR or VARBINARY sharing InnoDB's 3072 key bytes with the key's other text and binary
/// columns (VARCHAR(768) for a single text key); a longer key value is refused by the
/// server (strict mode), never cut.
pub fn mysql_types(cols: &[&ColumnInfo], key: &[usize], opts: &MapOptions) -> Vec<String> {
    let dms: Vec<DmsType> = cols.iter().map(|c| dms_type(c, opts)).collect();
    let varlen_key: Vec<usize> = key
        .iter()
        .copied()
        .filter(|&i| {
            matches!(
                dms[i],
                DmsType::String { .. } | DmsType::WString { .. } | DmsType::Nclob | DmsType::Clob | DmsType::Blob
            ) || matches!(dms[i], DmsType::Numeric { .. } if !mysql_decimal(dms[i]))
        })
        .collect();
    let key_bytes = MYSQL_KEY_BYTES / (varlen_key.len().max(1) as u32);
    // VARCHARs take 4 bytes a character inline; the longest become LONGTEXT until the row
    // fits (key columns stay VARCHAR: they must).
    let mut varchar: Vec<Option<u32>> = dms
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let declared = match *d {
                DmsType::String { length } => length,
                DmsType::WString { length } => Some(length),
                _ => None,
            };
            if varlen_key.contains(&i) {
                return Some(declared.unwrap_or(u32::MAX).min(key_bytes / 4));
            }
            declared.filter(|&n| n <= MYSQL_MAX_VARCHAR)
        })
        .collect();
    let fixed: u64 =
        dms.iter().map(|d| if matches!(d, DmsType::Blob | DmsType::Nclob | DmsType::Clob) { 12 } else { 16 }).sum();
    loop {
        let inline: u64 = varchar.iter().flatten().map(|&n| u64::from(n) * 4 + 2).sum::<u64>() + fixed;
        if inline <= MYSQL_ROW_BYTES {
            break;
        }
        let Some((i, _)) = varchar
            .iter()
            .enumerate()
            .filter(|(i, _)| !varlen_key.contains(i))
            .filter_map(|(i, n)| n.map(|n| (i, n)))
            .max_by_key(|&(_, n)| n)
        else {
            break;
        };
        varchar[i] = None;
    }
    dms.iter()
        .zip(&varchar)
        .enumerate()
        .map(|(i, (d, v))| match (*d, v) {
            (DmsType::Blob, _) if varlen_key.contains(&i) => format!("VARBINARY({key_bytes})"),
            (_, Some(n)) if varlen_key.contains(&i) => format!("VARCHAR({n})"),
            (DmsType::Boolean, _) if opts.boolean_as_boolean => "BOOLEAN".into(),
            (DmsType::Boolean, _) => "CHAR(5)".into(),
            (DmsType::Int2, _) => "SMALLINT".into(),
            (DmsType::Int4, _) => "INT".into(),
            (DmsType::Int8, _) => "BIGINT".into(),
            (DmsType::Numeric { precision, scale }, _) if mysql_decimal(*d) => format!("DECIMAL({precision},{scale})"),
            (DmsType::Numeric { .. }, _) => "LONGTEXT".into(),
            (DmsType::Real4, _) => "FLOAT".into(),
            (DmsType::Real8, _) => "DOUBLE".into(),
            (DmsType::String { .. } | DmsType::WString { .. }, Some(n)) => format!("VARCHAR({n})"),
            (DmsType::String { .. } | DmsType::WString { .. } | DmsType::Nclob | DmsType::Clob, _) => "LONGTEXT".into(),
            (DmsType::Blob, _) => "LONGBLOB".into(),
            (DmsType::Date, _) => "DATE".into(),
            (DmsType::Time { .. }, _) => "TIME(6)".into(),
            (DmsType::Timestamp { .. }, _) => "DATETIME(6)".into(),
        })
        .collect()
}

/// The SQLite column type (its storage class affinity).
pub fn sqlite_type(col: &ColumnInfo, opts: &MapOptions) -> &'static str {
    match dms_type(col, opts) {
        DmsType::Boolean if opts.boolean_as_boolean => "INTEGER",
        DmsType::Int2 | DmsType::Int4 | DmsType::Int8 => "INTEGER",
        DmsType::Real4 | DmsType::Real8 => "REAL",
        DmsType::Blob => "BLOB",
        // Numerics as TEXT: NUMERIC affinity would turn '1.10' into 1.1.
        _ => "TEXT",
    }
}

/// A value in the form a heterogeneous target stores.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Which target a value is converted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MySql,
    Sqlite,
    Json,
}

/// A value the target cannot hold: the column gets NULL, and this is reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Unrepresentable {
    /// The source's text of the value.
    pub source_text: String,
}

/// Converts one value of `col` for `flavor`. `Val::Unchanged` is the caller's to handle
/// (it is not a value); it converts to NULL here.
pub fn cell(val: &Val, col: &ColumnInfo, opts: &MapOptions, flavor: Flavor) -> Result<Cell, Unrepresentable> {
    convert(val, || mysql_decimal(dms_type(col, opts)), opts, flavor)
}

/// A value's form in the JSON stream, which depends on its type alone (not on the length
/// or precision of the column's DMS type).
pub fn json_cell(val: &Val, opts: &MapOptions) -> Cell {
    convert(val, || false, opts, Flavor::Json).unwrap_or(Cell::Null)
}

fn convert(
    val: &Val,
    mysql_decimal_column: impl FnOnce() -> bool,
    opts: &MapOptions,
    flavor: Flavor,
) -> Result<Cell, Unrepresentable> {
    let text = || val.to_pg_text().unwrap_or_default();
    let out_of_range = |t: String| Err(Unrepresentable { source_text: t });
    Ok(match val {
        Val::Null | Val::Unchanged => Cell::Null,
        Val::Bool(b) if opts.boolean_as_boolean => Cell::Int(i64::from(*b)),
        Val::Bool(b) => Cell::Text(if *b { "true" } else { "false" }.into()),
        Val::Int2(i) => Cell::Int(i64::from(*i)),
        Val::Int4(i) => Cell::Int(i64::from(*i)),
        Val::Int8(i) => Cell::Int(*i),
        Val::Float4(_) | Val::Float8(_) => {
            let f = match val {
                Val::Float4(f) => f64::from(*f),
                Val::Float8(f) => *f,
                _ => unreachable!(),
            };
            if f.is_finite() {
                // JSON: the float4's own shortest text, so 0.1::real stays 0.1, not
                // 0.10000000149. MySQL: the exact value, which its FLOAT stores as it was
                // and compares equal (the shortest text, read as a double, would not).
                match (val, flavor) {
                    (Val::Float4(_), Flavor::Json) => Cell::Real(text().parse::<f64>().unwrap_or(f)),
                    _ => Cell::Real(f),
                }
            } else if flavor == Flavor::MySql {
                return out_of_range(text());
            } else {
                // SQLite keeps them as text (a REAL column would read NaN as NULL); JSON has no such numbers.
                Cell::Text(text())
            }
        }
        Val::Text(b) => {
            let s = String::from_utf8_lossy(b).into_owned();
            if flavor == Flavor::MySql
                && matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity")
                && mysql_decimal_column()
            {
                return out_of_range(s);
            }
            Cell::Text(s)
        }
        Val::Bytes(b) if flavor == Flavor::Json => Cell::Text(base64::engine::general_purpose::STANDARD.encode(b)),
        Val::Bytes(b) => Cell::Blob(b.to_vec()),
        Val::Uuid(_) => Cell::Text(text()),
        Val::Date(_) | Val::Timestamp(_) | Val::TimestampTz(_) => {
            let t = text();
            if flavor != Flavor::MySql {
                return Ok(Cell::Text(t));
            }
            // MySQL: years 0000-9999, no era, no infinity; no zone (timestamptz is UTC).
            let plain = t.strip_suffix("+00").unwrap_or(&t);
            let year_digits = plain.find('-').unwrap_or(0);
            if t.ends_with(" BC") || t.contains("infinity") || year_digits != 4 {
                return out_of_range(t);
            }
            Cell::Text(plain.to_string())
        }
        Val::Time(_) => Cell::Text(text()),
        Val::TimeTz { micros, offset_secs } => {
            if flavor != Flavor::MySql {
                return Ok(Cell::Text(text()));
            }
            // MySQL's TIME has no zone: the time in UTC.
            const DAY: i64 = 86_400_000_000;
            let utc = (micros - i64::from(*offset_secs) * 1_000_000).rem_euclid(DAY);
            Cell::Text(Val::Time(utc).to_pg_text().unwrap_or_default())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdms_proto::Identity;

    fn col(type_oid: u32, type_sql: &str, dms_type: DmsType) -> ColumnInfo {
        ColumnInfo {
            name: "c".into(),
            type_oid,
            type_sql: type_sql.into(),
            type_name: type_sql.into(),
            type_modifier: -1,
            key: false,
            primary_key: false,
            generated: false,
            identity: Identity::None,
            not_null: false,
            dms_type,
        }
    }

    #[test]
    fn mysql_types_follow_the_table_and_the_row_size_limit() {
        let opts = MapOptions::default();
        let a = col(oids::INT4, "integer", DmsType::Int4);
        let n = col(oids::NUMERIC, "numeric(10,2)", DmsType::Numeric { precision: 10, scale: 2 });
        let neg = col(oids::NUMERIC, "numeric(5,-2)", DmsType::Numeric { precision: 5, scale: -2 });
        let b = col(oids::BOOL, "boolean", DmsType::Boolean);
        let v1 = col(oids::VARCHAR, "varchar(10000)", DmsType::WString { length: 10000 });
        let v2 = col(oids::VARCHAR, "varchar(9000)", DmsType::WString { length: 9000 });
        let j = col(oids::JSONB, "jsonb", DmsType::Nclob);
        let t = mysql_types(&[&a, &n, &neg, &b, &v1, &v2, &j], &[], &opts);
        assert_eq!(t, ["INT", "DECIMAL(10,2)", "LONGTEXT", "CHAR(5)", "LONGTEXT", "VARCHAR(9000)", "LONGTEXT"]);
        let t = mysql_types(&[&b], &[], &MapOptions { boolean_as_boolean: true, ..opts });
        assert_eq!(t, ["BOOLEAN"]);
        // Keys: text within InnoDB's key bytes, kept inline; numeric without DECIMAL as text.
        let text = col(oids::TEXT, "text", DmsType::Nclob);
        let bytes = col(oids::BYTEA, "bytea", DmsType::Blob);
        assert_eq!(mysql_types(&[&text, &a], &[0], &opts), ["VARCHAR(768)", "INT"]);
        assert_eq!(
            mysql_types(&[&text, &bytes, &v1], &[0, 1], &opts),
            ["VARCHAR(384)", "VARBINARY(1536)", "VARCHAR(10000)"]
        );
        assert_eq!(mysql_types(&[&neg], &[0], &opts), ["VARCHAR(768)"]);
    }

    #[test]
    fn values_mysql_cannot_hold_are_reported_not_altered() {
        let opts = MapOptions::default();
        let d = col(oids::DATE, "date", DmsType::Date);
        assert!(cell(&Val::Date(i32::MAX), &d, &opts, Flavor::MySql).is_err()); // infinity
        assert!(cell(&Val::Date(-800_000), &d, &opts, Flavor::MySql).is_err()); // BC
        assert_eq!(cell(&Val::Date(0), &d, &opts, Flavor::MySql), Ok(Cell::Text("2000-01-01".into())));
        let f = col(oids::FLOAT8, "double precision", DmsType::Real8);
        assert!(cell(&Val::Float8(f64::NAN), &f, &opts, Flavor::MySql).is_err());
        assert_eq!(cell(&Val::Float8(f64::NAN), &f, &opts, Flavor::Sqlite), Ok(Cell::Text("NaN".into())));
        let n = col(oids::NUMERIC, "numeric", DmsType::String { length: None });
        // Unconstrained numeric is text (LONGTEXT) in MySQL, which holds 'NaN'; DECIMAL cannot.
        assert_eq!(cell(&Val::Text("NaN".into()), &n, &opts, Flavor::MySql), Ok(Cell::Text("NaN".into())));
        let dec = col(oids::NUMERIC, "numeric(10,2)", DmsType::Numeric { precision: 10, scale: 2 });
        assert!(cell(&Val::Text("NaN".into()), &dec, &opts, Flavor::MySql).is_err());
        assert_eq!(cell(&Val::Text("1.10".into()), &n, &opts, Flavor::Sqlite), Ok(Cell::Text("1.10".into())));
        let tz = col(oids::TIMESTAMPTZ, "timestamp with time zone", DmsType::Timestamp { utc: true });
        assert_eq!(cell(&Val::TimestampTz(0), &tz, &opts, Flavor::MySql), Ok(Cell::Text("2000-01-01 00:00:00".into())));
        let ttz = col(oids::TIMETZ, "time with time zone", DmsType::Time { with_offset: true });
        let v = Val::TimeTz { micros: 3_600_000_000, offset_secs: 7200 };
        assert_eq!(cell(&v, &ttz, &opts, Flavor::MySql), Ok(Cell::Text("23:00:00".into())));
    }
}

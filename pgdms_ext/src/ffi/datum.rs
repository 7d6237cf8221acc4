//! Column values: from a heap tuple's datums to wire [`Value`]s.
//!
//! Each column gets a [`Codec`] when its table is described; the hot path then reads
//! fixed-size datums and uncompressed varlenas directly, and calls into PostgreSQL only to
//! detoast, to convert encodings, or to run a type's output function.

use pgdms_proto::dms::oids;
use pgdms_proto::Value;
use pgrx::pg_sys;
use pgrx::varlena;
use std::ffi::CStr;

/// How one column's values become wire values.
pub enum Codec {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// text, varchar, char(n): the content, as UTF-8.
    Text,
    Bytea,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Uuid,
    /// money, as the text of its numeric value (cash_numeric, then numeric_out): money's own
    /// output depends on lc_monetary.
    Money {
        to_numeric: Box<pg_sys::FmgrInfo>,
        numeric_out: Box<pg_sys::FmgrInfo>,
    },
    /// Any other type: its text output function. `varlena`: values may be TOASTed.
    Output {
        out: Box<pg_sys::FmgrInfo>,
        varlena: bool,
    },
}

/// `numeric(money)` in pg_proc, i.e. cash_numeric; and numeric_out.
const F_NUMERIC_MONEY: u32 = 3823;
const F_NUMERIC_OUT: u32 = 1702;

impl Codec {
    /// The codec of a column of type `typid`. Function lookups are cached in `mcxt`, which
    /// must outlive the codec (the decoding context's memory).
    pub(crate) fn for_type(typid: pg_sys::Oid, mcxt: pg_sys::MemoryContext) -> Codec {
        match typid.to_u32() {
            oids::BOOL => Codec::Bool,
            oids::INT2 => Codec::Int2,
            oids::INT4 => Codec::Int4,
            oids::INT8 => Codec::Int8,
            oids::FLOAT4 => Codec::Float4,
            oids::FLOAT8 => Codec::Float8,
            oids::TEXT | oids::VARCHAR | oids::BPCHAR => Codec::Text,
            oids::BYTEA => Codec::Bytea,
            oids::DATE => Codec::Date,
            oids::TIME => Codec::Time,
            oids::TIMETZ => Codec::TimeTz,
            oids::TIMESTAMP => Codec::Timestamp,
            oids::TIMESTAMPTZ => Codec::TimestampTz,
            oids::UUID => Codec::Uuid,
            oids::MONEY => Codec::Money {
                to_numeric: fmgr_info(F_NUMERIC_MONEY.into(), mcxt),
                numeric_out: fmgr_info(F_NUMERIC_OUT.into(), mcxt),
            },
            _ => {
                let mut func = pg_sys::InvalidOid;
                let mut varlena = false;
                // SAFETY: both out-pointers are valid locals; getTypeOutputInfo raises an
                // ERROR (turned into a Rust panic by pgrx's guard) for an unknown type.
                unsafe { pg_sys::getTypeOutputInfo(typid, &mut func, &mut varlena) };
                Codec::Output { out: fmgr_info(func, mcxt), varlena }
            }
        }
    }

    /// May values of this codec be TOASTed (and so arrive as "unchanged")?
    fn is_varlena(&self) -> bool {
        match self {
            Codec::Text | Codec::Bytea => true,
            Codec::Output { varlena, .. } => *varlena,
            _ => false,
        }
    }
}

fn fmgr_info(func: pg_sys::Oid, mcxt: pg_sys::MemoryContext) -> Box<pg_sys::FmgrInfo> {
    let mut info = Box::<pg_sys::FmgrInfo>::default();
    // SAFETY: `info` is a valid FmgrInfo to fill in; `mcxt` outlives it (caller's contract).
    unsafe { pg_sys::fmgr_info_cxt(func, info.as_mut(), mcxt) };
    info
}

/// The database encoding, for text conversion to UTF-8.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ServerEncoding {
    Utf8,
    /// Bytes are passed on as they are, and must be valid UTF-8.
    SqlAscii,
    Other(i32),
}

impl ServerEncoding {
    pub fn current() -> ServerEncoding {
        // SAFETY: reads a backend global set at connection start.
        let enc = unsafe { pg_sys::GetDatabaseEncoding() };
        match enc as u32 {
            pg_sys::pg_enc::PG_UTF8 => ServerEncoding::Utf8,
            pg_sys::pg_enc::PG_SQL_ASCII => ServerEncoding::SqlAscii,
            _ => ServerEncoding::Other(enc),
        }
    }

    /// `bytes` (in the server encoding, valid for `'v`) as UTF-8. A conversion allocates in
    /// the current memory context, which the caller keeps alive for `'v`.
    pub fn to_utf8<'v>(self, bytes: &'v [u8], what: &dyn Fn() -> String) -> &'v str {
        let utf8: &'v [u8] = match self {
            ServerEncoding::Utf8 | ServerEncoding::SqlAscii => bytes,
            ServerEncoding::Other(_) => {
                // SAFETY: pg_server_to_any reads `len` bytes and returns either its input or a
                // NUL-terminated palloc'd copy in the current context, valid for `'v`.
                unsafe {
                    let out = pg_sys::pg_server_to_any(
                        bytes.as_ptr().cast(),
                        bytes.len() as i32,
                        pg_sys::pg_enc::PG_UTF8 as i32,
                    );
                    if out as *const u8 == bytes.as_ptr() {
                        bytes
                    } else {
                        CStr::from_ptr(out).to_bytes()
                    }
                }
            }
        };
        match std::str::from_utf8(utf8) {
            Ok(s) => s,
            Err(e) => pgrx::error!(
                "pgdms: {} is not valid UTF-8 ({e}); a SQL_ASCII database must hold UTF-8 text to be decoded by pgdms",
                what()
            ),
        }
    }
}

/// Is this varlena datum an on-disk TOAST pointer? Logical decoding leaves those in place
/// for a value an UPDATE did not change (pgoutput's 'u').
///
/// # Safety
/// `datum` must be a valid varlena datum.
unsafe fn is_unchanged_toast(datum: pg_sys::Datum) -> bool {
    let ptr = datum.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: caller guarantees a valid varlena; the pgrx helpers only read its header.
    unsafe { varlena::varatt_is_1b_e(ptr) && varlena::vartag_1b_e(ptr) == pg_sys::vartag_external::VARTAG_ONDISK as u8 }
}

/// A varlena datum's content bytes, detoasted only when compressed or indirect.
///
/// # Safety
/// `datum` must be a varlena datum (not an on-disk pointer) valid for `'v`; a detoasted copy
/// goes to the current memory context, which must live for `'v`.
unsafe fn varlena_bytes<'v>(datum: pg_sys::Datum) -> &'v [u8] {
    let ptr = datum.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: caller's contract; inline uncompressed values are read in place.
    unsafe {
        let plain = varlena::varatt_is_4b_u(ptr) || (varlena::varatt_is_1b(ptr) && !varlena::varatt_is_1b_e(ptr));
        let ptr = if plain { ptr } else { pg_sys::pg_detoast_datum_packed(ptr) };
        std::slice::from_raw_parts(varlena::vardata_any(ptr).cast::<u8>(), varlena::varsize_any_exhdr(ptr))
    }
}

/// Converts one column's datum.
///
/// # Safety
/// `datum` must be a datum of the codec's type (when `isnull` is false) valid for `'v`, and
/// the current memory context must live for `'v` (it receives detoasted and output copies).
pub unsafe fn to_value<'v>(
    codec: &Codec,
    datum: pg_sys::Datum,
    isnull: bool,
    encoding: ServerEncoding,
    column: &dyn Fn() -> String,
) -> Value<'v> {
    if isnull {
        return Value::Null;
    }
    // SAFETY: the codec says the type is a varlena; validity is the caller's contract.
    if codec.is_varlena() && unsafe { is_unchanged_toast(datum) } {
        return Value::UnchangedToast;
    }
    let bits = datum.value();
    match codec {
        Codec::Bool => Value::Bool(bits != 0),
        Codec::Int2 => Value::Int2(bits as i16),
        Codec::Int4 => Value::Int4(bits as i32),
        Codec::Int8 => Value::Int8(bits as i64),
        Codec::Float4 => Value::Float4(f32::from_bits(bits as u32)),
        Codec::Float8 => Value::Float8(f64::from_bits(bits as u64)),
        Codec::Date => Value::Date(bits as i32),
        Codec::Time => Value::Time(bits as i64),
        Codec::Timestamp => Value::Timestamp(bits as i64),
        Codec::TimestampTz => Value::TimestampTz(bits as i64),
        Codec::TimeTz => {
            // SAFETY: a timetz datum points at a TimeTzADT valid for `'v`.
            let t = unsafe { &*datum.cast_mut_ptr::<pg_sys::TimeTzADT>() };
            // PostgreSQL stores the zone in seconds west of UTC.
            Value::TimeTz { micros: t.time, offset_secs: -t.zone }
        }
        // SAFETY: a uuid datum points at its 16 bytes.
        Codec::Uuid => Value::Uuid(unsafe { *datum.cast_mut_ptr::<[u8; 16]>() }),
        // SAFETY: text and bytea are varlenas, not on-disk pointers (checked above).
        Codec::Text => Value::Text(encoding.to_utf8(unsafe { varlena_bytes(datum) }, column)),
        // SAFETY: as for text.
        Codec::Bytea => Value::Bytes(unsafe { varlena_bytes(datum) }),
        Codec::Money { to_numeric, numeric_out } => {
            // SAFETY: FmgrInfos of cash_numeric and numeric_out, built for these types.
            let text = unsafe {
                let numeric = pg_sys::FunctionCall1Coll(
                    (to_numeric.as_ref() as *const pg_sys::FmgrInfo).cast_mut(),
                    pg_sys::InvalidOid,
                    datum,
                );
                let cstr =
                    pg_sys::OutputFunctionCall((numeric_out.as_ref() as *const pg_sys::FmgrInfo).cast_mut(), numeric);
                CStr::from_ptr(cstr).to_bytes()
            };
            Value::Text(encoding.to_utf8(text, column))
        }
        Codec::Output { out, .. } => {
            // SAFETY: the type's own output function, on a datum of that type; the result is
            // palloc'd in the current context.
            let text = unsafe {
                let cstr = pg_sys::OutputFunctionCall((out.as_ref() as *const pg_sys::FmgrInfo).cast_mut(), datum);
                CStr::from_ptr(cstr).to_bytes()
            };
            Value::Text(encoding.to_utf8(text, column))
        }
    }
}

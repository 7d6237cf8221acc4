//! COPY's text format: how rows are written for `COPY ... FROM STDIN`.

use crate::model::Val;
use bytes::{BufMut, BytesMut};

/// Appends `bytes` with COPY's escapes for backslash, tab, newline and carriage return.
fn escape(buf: &mut BytesMut, bytes: &[u8]) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        buf.put_slice(&bytes[start..i]);
        buf.put_slice(esc);
        start = i + 1;
    }
    buf.put_slice(&bytes[start..]);
}

/// One value in COPY's text format (NULL and unchanged values as `\N`).
pub fn write_value(buf: &mut BytesMut, v: &Val) {
    match v {
        Val::Null | Val::Unchanged => buf.put_slice(b"\\N"),
        Val::Text(t) => escape(buf, t),
        Val::Int2(i) => buf.put_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Val::Int4(i) => buf.put_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Val::Int8(i) => buf.put_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Val::Bool(b) => buf.put_u8(if *b { b't' } else { b'f' }),
        // The hex form of bytea has a backslash, which COPY needs doubled.
        other => escape(buf, other.to_pg_text().unwrap_or_default().as_bytes()),
    }
}

/// One row: values separated by tabs, ended by a newline.
pub fn write_row<'v>(buf: &mut BytesMut, row: impl IntoIterator<Item = &'v Val>) {
    for (i, v) in row.into_iter().enumerate() {
        if i > 0 {
            buf.put_u8(b'\t');
        }
        write_value(buf, v);
    }
    buf.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn escapes_and_nulls() {
        let mut b = BytesMut::new();
        let row = [
            Val::Text(Bytes::from_static(b"a\tb\\c\nd\re")),
            Val::Null,
            Val::Bytes(Bytes::from_static(&[0, 255])),
            Val::Int8(-42),
            Val::Unchanged,
        ];
        write_row(&mut b, &row);
        assert_eq!(&b[..], b"a\\tb\\\\c\\nd\\re\t\\N\t\\\\x00ff\t-42\t\\N\n");
    }
}

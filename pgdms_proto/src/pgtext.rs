//! PostgreSQL's text form of values that travel in binary.
//!
//! `Value::to_pg_text` writes exactly what the source's output function would have written
//! in a session with `DateStyle = ISO`, `TimeZone = UTC`, `bytea_output = hex` and
//! `extra_float_digits >= 1` (the defaults, except the zone): the form consumers show and
//! non-PostgreSQL targets store.

use crate::Value;
use std::borrow::Cow;
use std::fmt::Write;

impl Value<'_> {
    /// The value's text, or `None` for NULL and for an unchanged TOASTed value.
    pub fn to_pg_text(&self) -> Option<Cow<'_, str>> {
        let owned = |s: String| Some(Cow::Owned(s));
        match *self {
            Value::Null | Value::UnchangedToast => None,
            Value::Text(s) => Some(Cow::Borrowed(s)),
            Value::Bool(b) => Some(Cow::Borrowed(if b { "t" } else { "f" })),
            Value::Int2(v) => owned(v.to_string()),
            Value::Int4(v) => owned(v.to_string()),
            Value::Int8(v) => owned(v.to_string()),
            Value::Float4(v) => {
                owned(float_text(v.is_nan(), v.is_infinite(), v.is_sign_negative(), format!("{v:e}"), 6))
            }
            Value::Float8(v) => {
                owned(float_text(v.is_nan(), v.is_infinite(), v.is_sign_negative(), format!("{v:e}"), 15))
            }
            Value::Bytes(b) => {
                let mut s = String::with_capacity(2 + 2 * b.len());
                s.push_str("\\x");
                for byte in b {
                    let _ = write!(s, "{byte:02x}");
                }
                owned(s)
            }
            Value::Date(d) => owned(date_text(d)),
            Value::Time(t) => owned(time_text(t)),
            Value::TimeTz { micros, offset_secs } => {
                let mut s = time_text(micros);
                push_offset(&mut s, offset_secs);
                owned(s)
            }
            Value::Timestamp(ts) => owned(timestamp_text(ts, false)),
            Value::TimestampTz(ts) => owned(timestamp_text(ts, true)),
            Value::Uuid(u) => {
                let mut s = String::with_capacity(36);
                for (i, byte) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        s.push('-');
                    }
                    let _ = write!(s, "{byte:02x}");
                }
                owned(s)
            }
        }
    }
}

/// float4out / float8out with their shortest-exact output: Rust's `{:e}` gives the same
/// shortest round-trip digits; PostgreSQL prints them in fixed notation when the decimal
/// exponent is in [-4, `fixed_below`) and as `d.ddde+XX` otherwise.
fn float_text(nan: bool, inf: bool, negative: bool, sci: String, fixed_below: i32) -> String {
    if nan {
        return "NaN".into();
    }
    if inf {
        return if negative { "-Infinity".into() } else { "Infinity".into() };
    }
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if digits == "0" {
        return format!("{sign}0");
    }
    if !(-4..fixed_below).contains(&exp) {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs());
    }
    let n = digits.len() as i32;
    let s = if exp < 0 {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    } else if exp + 1 >= n {
        format!("{digits}{}", "0".repeat((exp + 1 - n) as usize))
    } else {
        let (int, frac) = digits.split_at((exp + 1) as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{s}")
}

const USECS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const UNIX_TO_PG_DAYS: i64 = 10_957;

/// Days since 2000-01-01 of a proleptic Gregorian date (Howard Hinnant's days-from-civil).
fn pg_days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 - UNIX_TO_PG_DAYS
}

/// An RFC 3339 time ("2026-11-24T10:00:00Z", "2026-11-24 12:00:00.5+02:00") as
/// microseconds since 2000-01-01 UTC (PostgreSQL's timestamp epoch); `None` if malformed.
pub fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok()).flatten()
    };
    let (date, rest) = (s.get(..10)?, s.get(10..)?);
    let sep = rest.chars().next()?;
    if !(sep == 'T' || sep == 't' || sep == ' ') || date.as_bytes()[4] != b'-' || date.as_bytes()[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(&date[..4])?, num(&date[5..7])? as u32, num(&date[8..10])? as u32);
    let rest = &rest[1..];
    let zone_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(zone_at);
    let mut parts = time.splitn(3, ':');
    let (h, mi) = (num(parts.next()?)?, num(parts.next()?)?);
    let sec = parts.next().unwrap_or("0");
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let secs = num(whole)?;
    let micros_frac = if frac.is_empty() { 0 } else { num(&format!("{:0<6}", &frac[..frac.len().min(6)]))? };
    let offset = match zone {
        "" | "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (oh, om) = z[1..].split_once(':').unwrap_or((&z[1..], "0"));
            sign * (num(oh)? * 3600 + num(om)? * 60)
        }
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || mi > 59 || secs > 60 {
        return None;
    }
    let days = pg_days_from_civil(y, m, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + secs - offset) * 1_000_000) + micros_frac)
}

/// Proleptic Gregorian (year, month, day) of a day count from 2000-01-01; year 0 is 1 BC.
fn civil_from_pg_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm, counted from 1970-01-01.
    let z = days + UNIX_TO_PG_DAYS + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn push_date(s: &mut String, days: i64) -> bool {
    let (y, m, d) = civil_from_pg_days(days);
    let bc = y <= 0;
    let year = if bc { 1 - y } else { y };
    let _ = write!(s, "{year:04}-{m:02}-{d:02}");
    bc
}

fn date_text(d: i32) -> String {
    match d {
        i32::MIN => "-infinity".into(),
        i32::MAX => "infinity".into(),
        _ => {
            let mut s = String::with_capacity(16);
            if push_date(&mut s, i64::from(d)) {
                s.push_str(" BC");
            }
            s
        }
    }
}

/// HH:MM:SS with the fraction's trailing zeros removed, as PostgreSQL's AppendSeconds does.
fn push_time(s: &mut String, micros: i64) {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let _ = write!(s, "{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
}

fn time_text(micros: i64) -> String {
    let mut s = String::with_capacity(15);
    push_time(&mut s, micros);
    s
}

/// +HH, +HH:MM or +HH:MM:SS, as EncodeTimezone writes an offset east of UTC.
fn push_offset(s: &mut String, offset_secs: i32) {
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let a = offset_secs.unsigned_abs();
    let (h, m, sec) = (a / 3600, a / 60 % 60, a % 60);
    let _ = write!(s, "{sign}{h:02}");
    if m != 0 || sec != 0 {
        let _ = write!(s, ":{m:02}");
    }
    if sec != 0 {
        let _ = write!(s, ":{sec:02}");
    }
}

fn timestamp_text(ts: i64, utc: bool) -> String {
    match ts {
        i64::MIN => return "-infinity".into(),
        i64::MAX => return "infinity".into(),
        _ => {}
    }
    let mut s = String::with_capacity(32);
    let days = ts.div_euclid(USECS_PER_DAY);
    let bc = push_date(&mut s, days);
    s.push(' ');
    push_time(&mut s, ts.rem_euclid(USECS_PER_DAY));
    if utc {
        s.push_str("+00");
    }
    if bc {
        s.push_str(" BC");
    }
    s
}

/// The inverse of the text forms above, for the types that travel in binary (as their
/// output functions write them with DateStyle ISO and TimeZone UTC). `None` if malformed.
pub mod parse {
    use super::{pg_days_from_civil, USECS_PER_DAY};

    fn digits(t: &str) -> Option<i64> {
        (!t.is_empty() && t.len() <= 18 && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok()).flatten()
    }

    fn strip_era(s: &str) -> (&str, bool) {
        match s.strip_suffix(" BC") {
            Some(rest) => (rest, true),
            None => (s, false),
        }
    }

    fn days(s: &str, bc: bool) -> Option<i64> {
        let mut parts = s.rsplitn(3, '-');
        let (d, m, y) = (digits(parts.next()?)?, digits(parts.next()?)?, digits(parts.next()?)?);
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y == 0 {
            return None;
        }
        let year = if bc { 1 - y } else { y };
        Some(pg_days_from_civil(year, m as u32, d as u32))
    }

    /// Days since 2000-01-01 of "YYYY-MM-DD[ BC]", "infinity" or "-infinity".
    pub fn date(s: &str) -> Option<i32> {
        match s {
            "infinity" => Some(i32::MAX),
            "-infinity" => Some(i32::MIN),
            _ => {
                let (s, bc) = strip_era(s);
                i32::try_from(days(s, bc)?).ok()
            }
        }
    }

    /// Microseconds since midnight of "HH:MM:SS[.ffffff]".
    pub fn time(s: &str) -> Option<i64> {
        let mut parts = s.splitn(3, ':');
        let (h, m) = (digits(parts.next()?)?, digits(parts.next()?)?);
        let sec = parts.next()?;
        let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
        let whole = digits(whole)?;
        let frac = match frac.len() {
            0 => 0,
            1..=6 => digits(&format!("{frac:0<6}"))?,
            _ => return None,
        };
        let micros = ((h * 60 + m) * 60 + whole) * 1_000_000 + frac;
        (m < 60 && whole < 60 && micros <= USECS_PER_DAY).then_some(micros)
    }

    /// Seconds east of UTC of "+HH", "+HH:MM" or "+HH:MM:SS" (or "-...").
    fn offset(s: &str) -> Option<i32> {
        let sign = match s.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let mut secs = 0;
        for (i, part) in s[1..].split(':').enumerate() {
            if i > 2 || part.len() != 2 {
                return None;
            }
            secs += digits(part)? * [3600, 60, 1][i];
        }
        i32::try_from(sign * secs).ok()
    }

    /// "HH:MM:SS[.ffffff]+HH[:MM[:SS]]" as (microseconds since local midnight, offset east).
    pub fn time_tz(s: &str) -> Option<(i64, i32)> {
        let at = s.find(['+', '-'])?;
        Some((time(&s[..at])?, offset(&s[at..])?))
    }

    /// Microseconds since 2000-01-01 of "YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]][ BC]"
    /// ("infinity", "-infinity"); an offset, when there is one, is taken away (UTC).
    pub fn timestamp(s: &str) -> Option<i64> {
        match s {
            "infinity" => return Some(i64::MAX),
            "-infinity" => return Some(i64::MIN),
            _ => {}
        }
        let (s, bc) = strip_era(s);
        let (date, time_part) = s.split_once(' ')?;
        let (clock, offset_secs) = match time_part.find(['+', '-']) {
            Some(at) => (&time_part[..at], offset(&time_part[at..])?),
            None => (time_part, 0),
        };
        let micros = days(date, bc)?.checked_mul(USECS_PER_DAY)?.checked_add(time(clock)?)?;
        micros.checked_sub(i64::from(offset_secs) * 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: Value<'_>) -> String {
        v.to_pg_text().unwrap().into_owned()
    }

    #[test]
    fn floats_like_float8out() {
        for (v, want) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.5, "1.5"),
            (100.0, "100"),
            (1e14, "100000000000000"),
            (1e15, "1e+15"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (-1.25e-300, "-1.25e-300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            assert_eq!(text(Value::Float8(v)), want, "{v:e}");
        }
        assert_eq!(text(Value::Float4(100000.0)), "100000");
        assert_eq!(text(Value::Float4(1e6)), "1e+06");
        assert_eq!(text(Value::Float4(0.1)), "0.1");
        assert_eq!(text(Value::Float4(f32::INFINITY)), "Infinity");
    }

    #[test]
    fn dates_and_times_like_iso_datestyle() {
        assert_eq!(text(Value::Date(0)), "2000-01-01");
        assert_eq!(text(Value::Date(-1)), "1999-12-31");
        assert_eq!(text(Value::Date(i32::MAX)), "infinity");
        // 0001-01-01 is 730119 days before 2000-01-01; 1 BC (year 0) is a leap year.
        assert_eq!(text(Value::Date(-730_119)), "0001-01-01");
        assert_eq!(text(Value::Date(-730_119 - 366)), "0001-01-01 BC");
        assert_eq!(text(Value::Time(0)), "00:00:00");
        assert_eq!(text(Value::Time(USECS_PER_DAY)), "24:00:00");
        assert_eq!(text(Value::Time(3_723_500_000)), "01:02:03.5");
        assert_eq!(text(Value::TimeTz { micros: 1, offset_secs: 19_800 }), "00:00:00.000001+05:30");
        assert_eq!(text(Value::TimeTz { micros: 0, offset_secs: -3600 }), "00:00:00-01");
        assert_eq!(text(Value::Timestamp(0)), "2000-01-01 00:00:00");
        assert_eq!(text(Value::Timestamp(-1)), "1999-12-31 23:59:59.999999");
        assert_eq!(text(Value::TimestampTz(86_400_000_000 + 120_000)), "2000-01-02 00:00:00.12+00");
        assert_eq!(text(Value::TimestampTz(i64::MIN)), "-infinity");
        assert_eq!(text(Value::Timestamp((-730_119 - 366) * USECS_PER_DAY)), "0001-01-01 00:00:00 BC");
    }

    #[test]
    fn other_binary_forms() {
        assert_eq!(text(Value::Bytes(&[0, 0xab, 0x10])), "\\x00ab10");
        assert_eq!(text(Value::Bool(true)), "t");
        assert_eq!(
            text(Value::Uuid([
                0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11
            ])),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert!(Value::Null.to_pg_text().is_none());
        assert!(Value::UnchangedToast.to_pg_text().is_none());
    }
}

#[cfg(test)]
mod time_parse_tests {
    use super::*;

    #[test]
    fn text_forms_parse_back_to_their_values() {
        for d in [0, -1, 1, -730_119, -730_119 - 366, 2_914_000, -2_451_545, i32::MAX, i32::MIN] {
            assert_eq!(parse::date(&date_text(d)), Some(d), "{}", date_text(d));
        }
        for t in [0, 1, 3_723_500_000, USECS_PER_DAY - 1, USECS_PER_DAY] {
            assert_eq!(parse::time(&time_text(t)), Some(t));
        }
        for (micros, offset_secs) in [(1, 19_800), (0, -3600), (5, 50_430), (86_399_999_999, -43_200)] {
            let v = Value::TimeTz { micros, offset_secs };
            assert_eq!(parse::time_tz(&v.to_pg_text().unwrap()), Some((micros, offset_secs)));
        }
        for ts in [0, -1, 86_400_000_120_000, (-730_119 - 366) * USECS_PER_DAY + 7, 9_000_000_000_000_000, i64::MIN] {
            assert_eq!(parse::timestamp(&timestamp_text(ts, false)), Some(ts), "{}", timestamp_text(ts, false));
            assert_eq!(parse::timestamp(&timestamp_text(ts, true)), Some(ts), "{}", timestamp_text(ts, true));
        }
        assert_eq!(parse::timestamp("2000-01-01 02:00:00+02"), Some(0));
        for bad in ["", "2000-13-01", "2000-01-01 25:00:00", "12:60:00", "2000-01-01 00:00:00+2", "today"] {
            assert_eq!(parse::date(bad).or(parse::timestamp(bad).map(|_| 0)), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_times_become_postgres_microseconds() {
        assert_eq!(parse_rfc3339_micros("2000-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_micros("2000-01-01T02:00:00+02:00"), Some(0));
        assert_eq!(parse_rfc3339_micros("2000-01-02 00:00:00.5Z"), Some(86_400_000_000 + 500_000));
        assert_eq!(parse_rfc3339_micros("1999-12-31T23:59:59Z"), Some(-1_000_000));
        // Round trip through the text form.
        let t = parse_rfc3339_micros("2026-11-24T10:11:12.345678Z").unwrap();
        assert_eq!(timestamp_text(t, true), "2026-11-24 10:11:12.345678+00");
        assert_eq!(parse_rfc3339_micros("yesterday"), None);
        assert_eq!(parse_rfc3339_micros("2026-13-01T00:00:00Z"), None);
    }
}

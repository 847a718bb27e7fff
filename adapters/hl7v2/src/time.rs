//! HL7 timestamps (TS/DTM: `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`) to instants.
//!
//! With an offset, the offset is used. Without one, the time is local time in the
//! configured zone (Europe/Paris by default), DST-correct: a time in the spring-forward gap
//! is moved forward, a time in the autumn fold takes the earlier (summer-time) instant
//! (jiff's "compatible" disambiguation, as RFC 5545 does). Missing parts are the start of
//! the period (`20240315` is midnight local time).

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};

/// Why a timestamp was refused (never the value itself).
pub(crate) type TsError = &'static str;

fn digits(s: &str) -> Option<i32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse an HL7 timestamp (the first component of a TS, or a DTM).
pub(crate) fn parse_ts(raw: &str, tz: &TimeZone) -> Result<Timestamp, TsError> {
    let raw = raw.trim();
    // The offset sign can only follow the year.
    let (body, offset) = match raw.get(4..).and_then(|r| r.find(['+', '-'])) {
        Some(i) => (&raw[..4 + i], Some(&raw[4 + i..])),
        None => (raw, None),
    };
    let (main, fraction) = match body.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (body, None),
    };
    if !main.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not an HL7 date/time (digits expected)");
    }
    if !matches!(main.len(), 4 | 6 | 8 | 10 | 12 | 14) {
        return Err("not an HL7 date/time (YYYY[MM[DD[HH[MM[SS]]]]])");
    }
    let part = |from: usize, to: usize, default: i32| -> Result<i32, TsError> {
        match main.get(from..to) {
            Some(s) => digits(s).ok_or("not an HL7 date/time (digits expected)"),
            None => Ok(default),
        }
    };
    let year = part(0, 4, 0)?;
    let month = part(4, 6, 1)?;
    let day = part(6, 8, 1)?;
    let hour = part(8, 10, 0)?;
    let minute = part(10, 12, 0)?;
    let second = part(12, 14, 0)?;
    let nanos = match fraction {
        None => 0,
        Some(f) if main.len() == 14 && (1..=4).contains(&f.len()) => {
            let v = digits(f).ok_or("fractional seconds are not digits")?;
            v * 10i32.pow(9 - f.len() as u32)
        }
        Some(_) => return Err("fractional seconds only follow full seconds, 1 to 4 digits"),
    };
    let narrow = |v: i32| i8::try_from(v).map_err(|_| "a date or time part is out of range");
    let dt = DateTime::new(
        i16::try_from(year).map_err(|_| "year out of range")?,
        narrow(month)?,
        narrow(day)?,
        narrow(hour)?,
        narrow(minute)?,
        narrow(second)?,
        nanos,
    )
    .map_err(|_| "not a valid calendar date and time")?;
    match offset {
        None => tz
            .to_timestamp(dt)
            .map_err(|_| "not representable in the time zone"),
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let hhmm = &o[1..];
            if hhmm.len() != 4 || !hhmm.bytes().all(|b| b.is_ascii_digit()) {
                return Err("time zone offset is not +/-HHMM");
            }
            let h = digits(&hhmm[..2]).ok_or("time zone offset is not +/-HHMM")?;
            let m = digits(&hhmm[2..]).ok_or("time zone offset is not +/-HHMM")?;
            if h > 23 || m > 59 {
                return Err("time zone offset out of range");
            }
            let off = Offset::from_seconds(sign * (h * 3600 + m * 60))
                .map_err(|_| "time zone offset out of range")?;
            off.to_timestamp(dt)
                .map_err(|_| "not representable with this offset")
        }
    }
}

/// The time zone parcours assumes for HL7 timestamps without an offset.
pub(crate) fn paris() -> TimeZone {
    TimeZone::get("Europe/Paris").unwrap_or(TimeZone::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> String {
        parse_ts(s, &paris()).map_or_else(|e| format!("error: {e}"), |t| t.to_string())
    }

    #[test]
    fn local_times_are_paris_and_dst_correct() {
        assert_eq!(ts("20240115103000"), "2024-01-15T09:30:00Z");
        assert_eq!(ts("20240715103000"), "2024-07-15T08:30:00Z");
        // Spring forward: 02:30 does not exist on 2024-03-31; it moves to 03:30 CEST.
        assert_eq!(ts("202403310230"), "2024-03-31T01:30:00Z");
        // Fall back: 02:30 happens twice on 2024-10-27; the first (CEST) is taken.
        assert_eq!(ts("202410270230"), "2024-10-27T00:30:00Z");
        assert_eq!(ts("20240315"), "2024-03-14T23:00:00Z");
        assert_eq!(ts("2024"), "2023-12-31T23:00:00Z");
    }

    #[test]
    fn offsets_and_fractions() {
        assert_eq!(ts("20141006083000+0700"), "2014-10-06T01:30:00Z");
        assert_eq!(ts("20210817151943.4+0200"), "2021-08-17T13:19:43.4Z");
        assert_eq!(ts("198908181126+0215"), "1989-08-18T09:11:00Z");
        assert_eq!(ts("20240101120000-0500"), "2024-01-01T17:00:00Z");
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "2024011",
            "20241301",
            "20240230",
            "2024010125",
            "abcd",
            "20240101+01",
            "1994050216163360",
            "20240101120000.12345",
            "２０２４",
            "20240101+1é1",
        ] {
            assert!(ts(bad).starts_with("error"), "{bad}");
        }
    }
}

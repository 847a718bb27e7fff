//! FHIR `dateTime` and `instant` strings to instants.
//!
//! The FHIR grammar is `YYYY(-MM(-DD(Thh:mm:ss(.fff)?(Z|±hh:mm)?)?)?)?`. A clinical time
//! needs at least a day: a bare year or year-month is refused as too imprecise. A date
//! alone is the start of that day, and a date-time without an offset (FHIR requires one,
//! some French systems omit it) is read in the source's zone (Europe/Paris by default).

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};

/// Why a string is not a usable clinical time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeError {
    /// Not a FHIR `dateTime`.
    Malformed,
    /// A year or a year and month only.
    TooImprecise,
}

impl TimeError {
    /// Fixed wording for diagnostics (the value itself is never echoed).
    pub(crate) fn describe(self) -> &'static str {
        match self {
            TimeError::Malformed => {
                "not a fhir dateTime (YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with an offset)"
            }
            TimeError::TooImprecise => "a clinical time needs at least a day (YYYY-MM-DD)",
        }
    }
}

/// The instant a FHIR `dateTime` designates.
pub(crate) fn parse(text: &str, zone: &TimeZone) -> Result<Timestamp, TimeError> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, TimeError> {
        let digits = b.get(from..from + len).ok_or(TimeError::Malformed)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(TimeError::Malformed);
        }
        Ok(digits
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    let expect = |at: usize, c: u8| -> Result<(), TimeError> {
        (b.get(at) == Some(&c))
            .then_some(())
            .ok_or(TimeError::Malformed)
    };
    let year = num(0, 4)?;
    if b.len() == 4 {
        return Err(TimeError::TooImprecise);
    }
    expect(4, b'-')?;
    let month = num(5, 2)?;
    if b.len() == 7 {
        return Err(TimeError::TooImprecise);
    }
    expect(7, b'-')?;
    let day = num(8, 2)?;
    let (mut hour, mut minute, mut second, mut nanos) = (0, 0, 0, 0);
    let mut offset = None;
    if b.len() > 10 {
        expect(10, b'T')?;
        hour = num(11, 2)?;
        expect(13, b':')?;
        minute = num(14, 2)?;
        expect(16, b':')?;
        second = num(17, 2)?;
        let mut at = 19;
        if b.get(at) == Some(&b'.') {
            let digits = b[at + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if digits == 0 || digits > 9 {
                return Err(TimeError::Malformed);
            }
            let frac = num(at + 1, digits)?;
            nanos = frac * 10i64.pow(9 - digits as u32);
            at += 1 + digits;
        }
        match b.get(at) {
            None => {}
            Some(b'Z') if b.len() == at + 1 => offset = Some(0),
            Some(&sign @ (b'+' | b'-')) if b.len() == at + 6 => {
                let oh = num(at + 1, 2)?;
                expect(at + 3, b':')?;
                let om = num(at + 4, 2)?;
                if oh > 14 || om > 59 {
                    return Err(TimeError::Malformed);
                }
                let secs = (oh * 3600 + om * 60) as i32;
                offset = Some(if sign == b'-' { -secs } else { secs });
            }
            Some(_) => return Err(TimeError::Malformed),
        }
    }
    let small = |v: i64| i8::try_from(v).map_err(|_| TimeError::Malformed);
    let civil = DateTime::new(
        i16::try_from(year).map_err(|_| TimeError::Malformed)?,
        small(month)?,
        small(day)?,
        small(hour)?,
        small(minute)?,
        small(second)?,
        i32::try_from(nanos).map_err(|_| TimeError::Malformed)?,
    )
    .map_err(|_| TimeError::Malformed)?;
    match offset {
        Some(secs) => Offset::from_seconds(secs)
            .and_then(|o| o.to_timestamp(civil))
            .map_err(|_| TimeError::Malformed),
        None => zone.to_timestamp(civil).map_err(|_| TimeError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paris() -> TimeZone {
        parcours_core::calendar::paris()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn full_date_times_with_offsets() {
        let z = paris();
        assert_eq!(
            parse("2016-04-03T06:58:56+00:00", &z),
            Ok(ts("2016-04-03T06:58:56Z"))
        );
        assert_eq!(
            parse("2017-02-01T07:15:00+10:00", &z),
            Ok(ts("2017-01-31T21:15:00Z"))
        );
        assert_eq!(
            parse("2013-04-03T15:30:10Z", &z),
            Ok(ts("2013-04-03T15:30:10Z"))
        );
        assert_eq!(
            parse("2006-12-10T06:58:56.865+00:00", &z),
            Ok(ts("2006-12-10T06:58:56.865Z"))
        );
        assert_eq!(
            parse("2020-01-01T00:00:00-05:30", &z),
            Ok(ts("2020-01-01T05:30:00Z"))
        );
    }

    #[test]
    fn dates_and_local_times_are_read_in_the_zone() {
        let z = paris();
        // Winter: UTC+1; summer: UTC+2.
        assert_eq!(parse("2013-03-20", &z), Ok(ts("2013-03-19T23:00:00Z")));
        assert_eq!(parse("2016-03-28", &z), Ok(ts("2016-03-27T22:00:00Z")));
        assert_eq!(
            parse("2024-07-01T10:00:00", &z),
            Ok(ts("2024-07-01T08:00:00Z"))
        );
        assert_eq!(
            parse("2024-07-01", &TimeZone::UTC),
            Ok(ts("2024-07-01T00:00:00Z"))
        );
    }

    #[test]
    fn imprecise_and_malformed_times_are_refused() {
        let z = paris();
        assert_eq!(parse("2013", &z), Err(TimeError::TooImprecise));
        assert_eq!(parse("2013-03", &z), Err(TimeError::TooImprecise));
        for bad in [
            "",
            "13-03-20",
            "2013-3-20",
            "2013-02-30",
            "2013-03-20T25:00:00Z",
            "2013-03-20T10:00Z",
            "2013-03-20 10:00:00Z",
            "2013-03-20T10:00:00+1:00",
            "2013-03-20T10:00:00+15:00",
            "2013-03-20T10:00:00.Z",
            "2013-03-20T10:00:00.1234567890Z",
            "2013-03-20T10:00:00Zjunk",
            "2013-03-20T10:00:60Z",
            "٢٠١٣-03-20",
            "2013-03-20T10:00:00[Europe/Paris]",
        ] {
            assert!(parse(bad, &z).is_err(), "{bad:?}");
        }
    }
}

//! TEMPORARY stub (replaced by the real module).
#![allow(missing_docs, unreachable_pub)]
use jiff::{Timestamp, ToSpan, tz::TimeZone};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DurationUnit {
    Minutes,
    Hours,
    Days,
    Weeks,
    Months,
    Years,
    WorkingDays,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClinicalDuration {
    pub amount: u32,
    pub unit: DurationUnit,
}
#[derive(Debug, thiserror::Error)]
#[error("bad duration")]
pub struct DurationError;
impl FromStr for ClinicalDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, DurationError> {
        let i = s.find(|c: char| !c.is_ascii_digit()).ok_or(DurationError)?;
        let amount: u32 = s[..i].parse().map_err(|_| DurationError)?;
        let unit = match &s[i..] {
            "min" => DurationUnit::Minutes,
            "h" => DurationUnit::Hours,
            "d" => DurationUnit::Days,
            "w" => DurationUnit::Weeks,
            "mo" => DurationUnit::Months,
            "y" => DurationUnit::Years,
            "wd" => DurationUnit::WorkingDays,
            _ => return Err(DurationError),
        };
        Ok(ClinicalDuration { amount, unit })
    }
}
impl TryFrom<String> for ClinicalDuration {
    type Error = DurationError;
    fn try_from(s: String) -> Result<Self, DurationError> {
        s.parse()
    }
}
impl From<ClinicalDuration> for String {
    fn from(d: ClinicalDuration) -> String {
        d.to_string()
    }
}
impl fmt::Display for ClinicalDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = match self.unit {
            DurationUnit::Minutes => "min",
            DurationUnit::Hours => "h",
            DurationUnit::Days => "d",
            DurationUnit::Weeks => "w",
            DurationUnit::Months => "mo",
            DurationUnit::Years => "y",
            DurationUnit::WorkingDays => "wd",
        };
        write!(f, "{}{}", self.amount, u)
    }
}
impl ClinicalDuration {
    pub fn nominal_seconds(&self) -> i64 {
        let m: i64 = match self.unit {
            DurationUnit::Minutes => 60,
            DurationUnit::Hours => 3600,
            DurationUnit::Days | DurationUnit::WorkingDays => 86400,
            DurationUnit::Weeks => 7 * 86400,
            DurationUnit::Months => 30 * 86400,
            DurationUnit::Years => 365 * 86400,
        };
        m * i64::from(self.amount)
    }
}
pub fn paris() -> TimeZone {
    TimeZone::get("Europe/Paris").unwrap_or(TimeZone::UTC)
}
pub fn add(at: Timestamp, d: ClinicalDuration) -> Timestamp {
    let z = at.to_zoned_datetime(paris());
    let a = i64::from(d.amount);
    let r = match d.unit {
        DurationUnit::Minutes => z.checked_add(a.minutes()),
        DurationUnit::Hours => z.checked_add(a.hours()),
        DurationUnit::Days | DurationUnit::WorkingDays => z.checked_add(a.days()),
        DurationUnit::Weeks => z.checked_add(a.weeks()),
        DurationUnit::Months => z.checked_add(a.months()),
        DurationUnit::Years => z.checked_add(a.years()),
    };
    r.map(|z| z.timestamp()).unwrap_or(Timestamp::MAX)
}
pub fn sub(at: Timestamp, d: ClinicalDuration) -> Timestamp {
    let z = at.to_zoned_datetime(paris());
    let a = -i64::from(d.amount);
    let r = match d.unit {
        DurationUnit::Minutes => z.checked_add(a.minutes()),
        DurationUnit::Hours => z.checked_add(a.hours()),
        DurationUnit::Days | DurationUnit::WorkingDays => z.checked_add(a.days()),
        DurationUnit::Weeks => z.checked_add(a.weeks()),
        DurationUnit::Months => z.checked_add(a.months()),
        DurationUnit::Years => z.checked_add(a.years()),
    };
    r.map(|z| z.timestamp()).unwrap_or(Timestamp::MIN)
}

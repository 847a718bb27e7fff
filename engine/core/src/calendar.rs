//! Clinical time in Europe/Paris: durations, DST-aware arithmetic, French public holidays.
//!
//! Every function here is pure: the current time is never read, it always comes from the
//! caller. Durations are written `<n><unit>` (`30min`, `12h`, `7d`, `2w`, `3mo`, `1y`, `5wd`),
//! or as several parts, largest unit first (`6mo1d`, `1d12h`, `1h30min`).
//!
//! - minutes and hours are exact elapsed time;
//! - days, weeks, months and years are civil arithmetic in Europe/Paris: the wall-clock time
//!   is kept across DST changes, month ends are clamped (31 Jan + 1mo = 28/29 Feb), and a
//!   wall-clock time that falls in a DST gap or fold is resolved with jiff's *compatible*
//!   disambiguation (gap: shifted forward by the gap length; fold: the earlier instant);
//! - working days skip Saturdays, Sundays and French public holidays (metropolitan France,
//!   Code du travail L3133-1), keeping the wall-clock time;
//! - a combined duration applies its civil parts together (largest first: `1mo1d` after
//!   30 January is 28 February + 1 day = 1 March), then its exact parts; subtraction undoes
//!   it in the opposite order. Working days stand alone.
//!
//! Arithmetic never panics: [`add`] saturates to [`Timestamp::MAX`] and [`sub`] to
//! [`Timestamp::MIN`] when the result is out of range.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, Weekday};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Span, Timestamp};

/// IANA name of the time zone all civil arithmetic is done in.
pub const ZONE_NAME: &str = "Europe/Paris";

/// Accepted duration units, as listed in error messages.
const ACCEPTED_UNITS: &str = "min, h, d, w, mo, y, wd";

/// The unit of one part of a [`ClinicalDuration`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DurationUnit {
    /// Exact minutes of elapsed time (`min`).
    Minutes,
    /// Exact hours of elapsed time (`h`).
    Hours,
    /// Civil days in Europe/Paris, keeping the wall-clock time (`d`).
    Days,
    /// Civil weeks (7 civil days) in Europe/Paris (`w`).
    Weeks,
    /// Civil months in Europe/Paris, clamped to the month end (`mo`).
    Months,
    /// Civil years in Europe/Paris, clamped to the month end (`y`).
    Years,
    /// French working days: not Saturday, Sunday or a public holiday (`wd`).
    WorkingDays,
}

impl DurationUnit {
    /// Every unit, largest first (the order parts are written in); working days last.
    pub const ALL: [DurationUnit; 7] = [
        Self::Years,
        Self::Months,
        Self::Weeks,
        Self::Days,
        Self::Hours,
        Self::Minutes,
        Self::WorkingDays,
    ];

    /// Position in [`DurationUnit::ALL`].
    const fn slot(self) -> usize {
        match self {
            Self::Years => 0,
            Self::Months => 1,
            Self::Weeks => 2,
            Self::Days => 3,
            Self::Hours => 4,
            Self::Minutes => 5,
            Self::WorkingDays => 6,
        }
    }

    /// The suffix of this unit in the `<n><unit>` text syntax.
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Minutes => "min",
            Self::Hours => "h",
            Self::Days => "d",
            Self::Weeks => "w",
            Self::Months => "mo",
            Self::Years => "y",
            Self::WorkingDays => "wd",
        }
    }

    /// The unit written with the given suffix (case-sensitive), if any.
    pub fn from_suffix(suffix: &str) -> Option<Self> {
        match suffix {
            "min" => Some(Self::Minutes),
            "h" => Some(Self::Hours),
            "d" => Some(Self::Days),
            "w" => Some(Self::Weeks),
            "mo" => Some(Self::Months),
            "y" => Some(Self::Years),
            "wd" => Some(Self::WorkingDays),
            _ => None,
        }
    }

    /// Approximate length of one unit in seconds (month 30 days, year 365 days, working day 1 day).
    const fn nominal_unit_seconds(self) -> i64 {
        match self {
            Self::Minutes => 60,
            Self::Hours => 3_600,
            Self::Days | Self::WorkingDays => 86_400,
            Self::Weeks => 7 * 86_400,
            Self::Months => 30 * 86_400,
            Self::Years => 365 * 86_400,
        }
    }
}

impl fmt::Display for DurationUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// A clinical delay such as `7d`, `5wd` or `6mo1d`: one or more non-negative amounts of
/// distinct [`DurationUnit`]s, written largest unit first.
///
/// A combined duration is applied largest unit first, the civil units (years, months,
/// weeks, days) together on the Europe/Paris wall clock, then the exact ones (hours,
/// minutes): `6mo1d` after 30 January 09:00 is 30 July 09:00 plus one day, 31 July 09:00;
/// `1d12h` is the next day at the same wall-clock time, then 12 elapsed hours. Working
/// days (`wd`) stand alone: they cannot be combined with other units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClinicalDuration {
    /// Amount per unit, indexed like [`DurationUnit::ALL`]; 0 where absent.
    amounts: [u32; 7],
    /// Which units were written (bit = slot), so `0d` and `0min` stay distinct.
    present: u8,
}

impl ClinicalDuration {
    /// Builds a duration of `amount` `unit`s.
    pub const fn new(amount: u32, unit: DurationUnit) -> Self {
        let mut amounts = [0; 7];
        amounts[unit.slot()] = amount;
        Self {
            amounts,
            present: 1 << unit.slot(),
        }
    }

    /// The parts, largest unit first: `6mo1d` gives `[(6, Months), (1, Days)]`.
    pub fn parts(&self) -> impl Iterator<Item = (u32, DurationUnit)> + '_ {
        DurationUnit::ALL
            .iter()
            .filter(|u| self.present & (1 << u.slot()) != 0)
            .map(|u| (self.amounts[u.slot()], *u))
    }

    /// The amount of `unit` (0 if the duration has no such part).
    pub const fn amount(&self, unit: DurationUnit) -> u32 {
        self.amounts[unit.slot()]
    }

    /// Whether every part is zero (`0d`, `0min`; `0wd` is zero too, though adding it moves
    /// a weekend instant to the next working day).
    pub fn is_zero(&self) -> bool {
        self.amounts.iter().all(|a| *a == 0)
    }

    /// Whether this is a number of working days.
    pub const fn is_working_days(&self) -> bool {
        self.present == 1 << DurationUnit::WorkingDays.slot()
    }

    /// `k` times this duration, part by part (saturating): `times(3)` of `1mo` is `3mo`.
    /// Used for recurring timers, whose occurrences lie on the grid anchor + k × interval.
    pub fn times(&self, k: u32) -> Self {
        let mut out = *self;
        for a in &mut out.amounts {
            *a = a.saturating_mul(k);
        }
        out
    }

    /// Approximate length in seconds, for static ordering checks only (mo = 30d, y = 365d, wd = 1d).
    pub fn nominal_seconds(&self) -> i64 {
        self.parts().fold(0i64, |acc, (amount, unit)| {
            acc.saturating_add(i64::from(amount).saturating_mul(unit.nominal_unit_seconds()))
        })
    }
}

impl fmt::Display for ClinicalDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (amount, unit) in self.parts() {
            write!(f, "{amount}{}", unit.suffix())?;
        }
        Ok(())
    }
}

/// A hint for a unit that is not accepted (`m` is ambiguous; `days` is spelt `d`).
fn unit_hint(unit: &str) -> String {
    let known = match unit {
        "m" => return " (write `min` for minutes or `mo` for months)".to_string(),
        "s" | "sec" => return " (the shortest unit is `min`)".to_string(),
        "day" | "days" | "j" | "jours" | "D" => "d",
        "hour" | "hours" | "H" => "h",
        "week" | "weeks" | "sem" => "w",
        "month" | "months" | "mois" | "M" => "mo",
        "year" | "years" | "an" | "ans" | "Y" => "y",
        "mn" | "mins" | "minutes" => "min",
        _ => return String::new(),
    };
    format!(" (did you mean `{known}`?)")
}

/// Why a duration text such as `7d` could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is empty.
    #[error(
        "empty duration: expected <number><unit> such as `7d`; accepted units: min, h, d, w, mo, y, wd"
    )]
    Empty,
    /// The text contains whitespace.
    #[error(
        "duration `{input}` contains whitespace: write <number><unit> with no spaces, such as `7d` or `6mo1d`; accepted units: min, h, d, w, mo, y, wd"
    )]
    Whitespace {
        /// The text as given.
        input: String,
    },
    /// The text (or one of its parts) does not start with a non-negative whole number.
    #[error(
        "duration `{input}` does not start with a number: expected a non-negative whole number then a unit, such as `7d`; accepted units: min, h, d, w, mo, y, wd"
    )]
    MissingNumber {
        /// The text as given.
        input: String,
    },
    /// A number is not followed by a unit.
    #[error(
        "duration `{input}` has no unit after the number; accepted units: min, h, d, w, mo, y, wd"
    )]
    MissingUnit {
        /// The text as given.
        input: String,
    },
    /// A unit is not one of the accepted units.
    #[error(
        "duration `{input}` has unknown unit `{unit}`{hint}; accepted units: min, h, d, w, mo, y, wd", hint = unit_hint(unit)
    )]
    UnknownUnit {
        /// The text as given.
        input: String,
        /// The unrecognised unit.
        unit: String,
    },
    /// A number has a decimal point.
    #[error(
        "duration `{input}` has a fraction: write whole numbers, combining units if needed, such as `1h30min` or `1d12h` (units: min, h, d, w, mo, y, wd)"
    )]
    Fraction {
        /// The text as given.
        input: String,
    },
    /// The parts are not written largest unit first.
    #[error(
        "duration `{input}` lists its units out of order: write the largest unit first, `{fixed}` (units from largest: y, mo, w, d, h, min)"
    )]
    OutOfOrder {
        /// The text as given.
        input: String,
        /// The same duration, written in order.
        fixed: String,
    },
    /// The same unit is written twice.
    #[error("duration `{input}` has the unit `{unit}` twice: write it once, adding the numbers")]
    Repeated {
        /// The text as given.
        input: String,
        /// The repeated unit.
        unit: String,
    },
    /// Working days combined with other units.
    #[error(
        "duration `{input}` combines working days with other units: `wd` stands alone (such as `5wd`)"
    )]
    WorkingDaysCombined {
        /// The text as given.
        input: String,
    },
    /// A number does not fit in 32 bits.
    #[error(
        "duration `{input}` is too large: the number must be at most 4294967295 (units: min, h, d, w, mo, y, wd)"
    )]
    Overflow {
        /// The text as given.
        input: String,
    },
    /// Longer than [`MAX_YEARS`] years: a slip (`100000y`), and each year of a timer's
    /// ladder costs time to compute.
    #[error(
        "duration `{input}` is longer than {MAX_YEARS} years: clinical deadlines and intervals are shorter (units: min, h, d, w, mo, y, wd)"
    )]
    TooLong {
        /// The text as given.
        input: String,
    },
}

/// The longest duration a pathway may write, in years (a century).
pub const MAX_YEARS: u64 = 100;

impl FromStr for ClinicalDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(DurationError::Empty);
        }
        let input = || s.to_owned();
        if s.chars().any(char::is_whitespace) {
            return Err(DurationError::Whitespace { input: input() });
        }
        // Split into <digits><unit> parts.
        let mut parts: Vec<(u32, DurationUnit)> = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let split = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let (digits, after) = rest.split_at(split);
            if digits.is_empty() {
                return Err(DurationError::MissingNumber { input: input() });
            }
            if after.is_empty() {
                return Err(DurationError::MissingUnit { input: input() });
            }
            let end = after
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(after.len());
            let suffix = &after[..end];
            if suffix.starts_with(['.', ',']) {
                return Err(DurationError::Fraction { input: input() });
            }
            let unit =
                DurationUnit::from_suffix(suffix).ok_or_else(|| DurationError::UnknownUnit {
                    input: input(),
                    unit: suffix.to_owned(),
                })?;
            // `digits` is non-empty ASCII digits, so the only possible failure is overflow.
            let amount = digits
                .parse::<u32>()
                .map_err(|_| DurationError::Overflow { input: input() })?;
            parts.push((amount, unit));
            rest = &after[end..];
        }
        if parts.len() > 1 && parts.iter().any(|(_, u)| *u == DurationUnit::WorkingDays) {
            return Err(DurationError::WorkingDaysCombined { input: input() });
        }
        let mut out = ClinicalDuration {
            amounts: [0; 7],
            present: 0,
        };
        for (amount, unit) in &parts {
            if out.present & (1 << unit.slot()) != 0 {
                return Err(DurationError::Repeated {
                    input: input(),
                    unit: unit.suffix().to_owned(),
                });
            }
            out.amounts[unit.slot()] = *amount;
            out.present |= 1 << unit.slot();
        }
        // About the duration in minutes (a year 366 days, a month 31, a working day a
        // calendar day and a half at most: a week-end or a holiday in between).
        let minutes: u64 = parts
            .iter()
            .map(|(n, u)| {
                u64::from(*n)
                    * match u {
                        DurationUnit::Minutes => 1,
                        DurationUnit::Hours => 60,
                        DurationUnit::Days => 1_440,
                        DurationUnit::WorkingDays => 2_160,
                        DurationUnit::Weeks => 10_080,
                        DurationUnit::Months => 44_640,
                        DurationUnit::Years => 527_040,
                    }
            })
            .sum();
        if minutes > MAX_YEARS * 527_040 {
            return Err(DurationError::TooLong { input: input() });
        }
        if parts.windows(2).any(|w| w[0].1.slot() > w[1].1.slot()) {
            return Err(DurationError::OutOfOrder {
                input: input(),
                fixed: out.to_string(),
            });
        }
        Ok(out)
    }
}

impl serde::Serialize for ClinicalDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ClinicalDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// Serde visitor reading a [`ClinicalDuration`] from its text form.
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = ClinicalDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a duration string <number><unit> such as \"7d\" or \"6mo1d\" (units: {ACCEPTED_UNITS})"
        )
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ClinicalDuration, E> {
        v.parse().map_err(E::custom)
    }
}

/// The Europe/Paris time zone from jiff's bundled tzdb (UTC only if the bundle somehow lacks it).
pub fn paris() -> TimeZone {
    // The bundled database is used (not the system one) so results do not depend on the
    // host; looked up once (a lookup costs more than the arithmetic it serves).
    static PARIS: std::sync::OnceLock<TimeZone> = std::sync::OnceLock::new();
    PARIS
        .get_or_init(|| {
            TimeZoneDatabase::bundled()
                .get(ZONE_NAME)
                .unwrap_or(TimeZone::UTC)
        })
        .clone()
}

/// An instant no earlier than `sub(at, d)`, computed without calendar arithmetic: lets
/// callers skip the exact computation when everything they hold is later than it.
pub fn sub_upper_bound(at: Timestamp, d: ClinicalDuration) -> Timestamp {
    // How much shorter than its nominal length the civil duration can be.
    let slack_secs: i64 = d.parts().fold(0i64, |acc, (amount, unit)| {
        let slack = match unit {
            DurationUnit::Minutes | DurationUnit::Hours | DurationUnit::WorkingDays => 0,
            DurationUnit::Days | DurationUnit::Weeks => 3_600,
            DurationUnit::Months => 2 * 86_400 * i64::from(amount),
            DurationUnit::Years => 86_400 * i64::from(amount),
        };
        acc.saturating_add(slack)
    });
    let secs = d.nominal_seconds().saturating_sub(slack_secs);
    at.checked_sub(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(Timestamp::MIN)
}

/// Which way [`shift`] moves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Backward,
}

impl Direction {
    const fn sign(self) -> i64 {
        match self {
            Self::Forward => 1,
            Self::Backward => -1,
        }
    }
}

/// `at` plus `d`; saturates to [`Timestamp::MAX`] if the result is out of range.
pub fn add(at: Timestamp, d: ClinicalDuration) -> Timestamp {
    shift(at, d, Direction::Forward).unwrap_or(Timestamp::MAX)
}

/// `at` minus `d` (working days counted backwards); saturates to [`Timestamp::MIN`].
pub fn sub(at: Timestamp, d: ClinicalDuration) -> Timestamp {
    shift(at, d, Direction::Backward).unwrap_or(Timestamp::MIN)
}

/// Moves `at` by `d` in `dir`; `None` when the result is not representable.
///
/// Forward: the civil part (years, months, weeks, days together, largest first, on the
/// Paris wall clock), then the exact part (hours, minutes). Backward undoes it in the
/// opposite order: the exact part first, then the civil part.
fn shift(at: Timestamp, d: ClinicalDuration, dir: Direction) -> Option<Timestamp> {
    use DurationUnit as U;
    if d.is_working_days() {
        return shift_working_days(at, d.amount(U::WorkingDays), dir);
    }
    let sign = dir.sign();
    let n = |u: DurationUnit| i64::from(d.amount(u)) * sign;
    let (years, months, weeks, days) = (n(U::Years), n(U::Months), n(U::Weeks), n(U::Days));
    let exact_secs = n(U::Hours)
        .checked_mul(3_600)?
        .checked_add(n(U::Minutes).checked_mul(60)?)?;
    let civil = |t: Timestamp| -> Option<Timestamp> {
        // Not a round trip through the civil time when there is nothing to add: that would
        // move an instant in the second half of a DST fold to the first half.
        if years == 0 && months == 0 && weeks == 0 && days == 0 {
            return Some(t);
        }
        if years == 0 && months == 0 {
            let total = weeks.checked_mul(7)?.checked_add(days)?;
            return shift_days_fast(t, total).or_else(|| {
                shift_civil(t, Span::new().try_weeks(weeks).ok()?.try_days(days).ok()?)
            });
        }
        let span = Span::new()
            .try_years(years)
            .ok()?
            .try_months(months)
            .ok()?
            .try_weeks(weeks)
            .ok()?
            .try_days(days)
            .ok()?;
        shift_civil(t, span)
    };
    let exact = |t: Timestamp| -> Option<Timestamp> {
        if exact_secs == 0 {
            return Some(t);
        }
        t.checked_add(SignedDuration::from_secs(exact_secs)).ok()
    };
    match dir {
        Direction::Forward => exact(civil(at)?),
        Direction::Backward => civil(exact(at)?),
    }
}

/// Whole days away in elapsed time, when that equals the civil result: the UTC offset is
/// the same at both ends and does not change within an hour either side of the result (so
/// its wall-clock time is neither skipped nor repeated). `None` near a DST change: the
/// caller then takes the exact civil path. Same answers, a fraction of the cost.
fn shift_days_fast(at: Timestamp, days: i64) -> Option<Timestamp> {
    const HOUR: SignedDuration = SignedDuration::from_secs(3_600);
    let moved = at
        .checked_add(SignedDuration::from_secs(days.checked_mul(86_400)?))
        .ok()?;
    // Most shifts (a week's window, a reminder in two days) cross no change at all: one
    // search in the table of changes says so.
    let (at_s, moved_s) = (at.as_second(), moved.as_second());
    let lo = at_s.min(moved_s.checked_sub(3_600)?);
    let hi = at_s.max(moved_s.checked_add(3_600)?);
    if no_offset_change_within(lo, hi) {
        return Some(moved);
    }
    let tz = paris();
    let offset = tz.to_offset(at);
    let same = |t: Timestamp| tz.to_offset(t) == offset;
    // Offsets change twice a year: equal an hour before and an hour after means equal all
    // along those two hours, `moved` included.
    (moved.checked_sub(HOUR).ok().is_some_and(same)
        && moved.checked_add(HOUR).ok().is_some_and(same))
    .then_some(moved)
}

/// The instants (seconds since the epoch) at which Paris's UTC offset changes, from 1900
/// to 2200, built once from the bundled database.
/// `None` if it could not be built (then nothing is known from it).
fn paris_offset_changes() -> Option<&'static [i64]> {
    static CHANGES: std::sync::OnceLock<Option<Vec<i64>>> = std::sync::OnceLock::new();
    CHANGES
        .get_or_init(|| {
            let start = Timestamp::from_second(OFFSET_TABLE_FROM).ok()?;
            let changes = paris()
                .following(start)
                .map(|change| change.timestamp().as_second())
                .take_while(|&at| at < OFFSET_TABLE_UNTIL)
                .collect();
            Some(changes)
        })
        .as_deref()
}

/// The span the table of offset changes covers: 1900-01-01 to 2200-01-01, UTC.
const OFFSET_TABLE_FROM: i64 = -2_208_988_800;
const OFFSET_TABLE_UNTIL: i64 = 7_258_118_400;

/// True when Paris's offset is the same at every instant of `[lo, hi]`: no change in
/// `(lo, hi]`, within the table's span. False is "not known", never "changes".
fn no_offset_change_within(lo: i64, hi: i64) -> bool {
    if lo < OFFSET_TABLE_FROM || hi >= OFFSET_TABLE_UNTIL {
        return false;
    }
    // The span between two changes last looked up: a decision's instants mostly fall in it.
    thread_local! {
        static LAST: std::cell::Cell<(i64, i64)> = const { std::cell::Cell::new((0, -1)) };
    }
    let (from, until) = LAST.get();
    if from <= lo && hi < until {
        return true;
    }
    let Some(changes) = paris_offset_changes() else {
        return false;
    };
    // The first change after `lo`: none up to `hi` means one offset all along.
    let next = changes.partition_point(|&at| at <= lo);
    let previous = next
        .checked_sub(1)
        .map_or(OFFSET_TABLE_FROM, |i| changes[i]);
    let following = changes.get(next).copied().unwrap_or(OFFSET_TABLE_UNTIL);
    LAST.set((previous, following));
    hi < following
}

/// Adds a calendar span to the Paris wall-clock time of `at`.
fn shift_civil(at: Timestamp, span: Span) -> Option<Timestamp> {
    let tz = paris();
    let moved = tz.to_datetime(at).checked_add(span).ok()?;
    tz.to_ambiguous_timestamp(moved).compatible().ok()
}

/// Moves `at` by `amount` working days in `dir`, keeping the Paris wall-clock time.
fn shift_working_days(at: Timestamp, amount: u32, dir: Direction) -> Option<Timestamp> {
    let tz = paris();
    let local = tz.to_datetime(at);
    let mut date = local.date();
    if amount == 0 {
        if is_working_day(date) {
            return Some(at);
        }
        date = next_working_day(date, dir)?;
    } else {
        // More working days than jiff has days can never fit.
        if amount > CIVIL_DAYS_IN_RANGE {
            return None;
        }
        // Each step moves at least one day and fails at the edge of jiff's date range.
        for _ in 0..amount {
            date = next_working_day(date, dir)?;
        }
    }
    tz.to_ambiguous_timestamp(date.to_datetime(local.time()))
        .compatible()
        .ok()
}

/// Days from -9999-01-01 to 9999-12-31 (jiff's civil date range): the most steps that can fit.
const CIVIL_DAYS_IN_RANGE: u32 = 7_304_483;

/// The first working day strictly after (or before) `date`.
fn next_working_day(mut date: Date, dir: Direction) -> Option<Date> {
    loop {
        date = match dir {
            Direction::Forward => date.tomorrow().ok()?,
            Direction::Backward => date.yesterday().ok()?,
        };
        if is_working_day(date) {
            return Some(date);
        }
    }
}

/// Fixed-date public holidays: (month, day, French name).
const FIXED_HOLIDAYS: [(i8, i8, &str); 8] = [
    (1, 1, "Jour de l'an"),
    (5, 1, "Fête du Travail"),
    (5, 8, "Victoire 1945"),
    (7, 14, "Fête nationale"),
    (8, 15, "Assomption"),
    (11, 1, "Toussaint"),
    (11, 11, "Armistice 1918"),
    (12, 25, "Noël"),
];

/// Easter-based public holidays: (days after Easter Sunday, French name).
const EASTER_HOLIDAYS: [(i64, &str); 3] = [
    (1, "Lundi de Pâques"),
    (39, "Ascension"),
    (50, "Lundi de Pentecôte"),
];

/// Gregorian Easter Sunday, for the years computus supports (1583..=9999).
fn easter_sunday(year: i16) -> Option<Date> {
    let easter = computus::gregorian(i32::from(year)).ok()?;
    let month = i8::try_from(easter.month).ok()?;
    let day = i8::try_from(easter.day).ok()?;
    Date::new(year, month, day).ok()
}

/// The Easter-based holidays of `year` with their names (empty outside 1583..=9999).
fn easter_holidays(year: i16) -> impl Iterator<Item = (Date, &'static str)> {
    let easter = easter_sunday(year);
    EASTER_HOLIDAYS
        .into_iter()
        .filter_map(move |(offset, name)| {
            let date = easter?
                .checked_add(Span::new().try_days(offset).ok()?)
                .ok()?;
            Some((date, name))
        })
}

/// French public holidays of `year` (metropolitan France, L3133-1), sorted by date, French names.
///
/// The current list is applied to every year. Easter-based holidays are only produced for
/// 1583..=9999 (the Gregorian computus range); a year outside jiff's range gives an empty list.
/// When Ascension falls on 1 or 8 May both entries are kept.
pub fn public_holidays(year: i16) -> Vec<(Date, &'static str)> {
    let mut holidays: Vec<(Date, &'static str)> = FIXED_HOLIDAYS
        .iter()
        .filter_map(|&(month, day, name)| Date::new(year, month, day).ok().map(|d| (d, name)))
        .chain(easter_holidays(year))
        .collect();
    holidays.sort_by_key(|&(date, _)| date);
    holidays
}

/// The French name of the public holiday on `date`, if it is one.
pub fn public_holiday_name(date: Date) -> Option<&'static str> {
    let (month, day) = (date.month(), date.day());
    if let Some(&(_, _, name)) = FIXED_HOLIDAYS
        .iter()
        .find(|&&(m, d, _)| m == month && d == day)
    {
        return Some(name);
    }
    // Easter Monday is at the earliest 23 March, Whit Monday at the latest 14 June.
    if !(3..=6).contains(&month) {
        return None;
    }
    easter_holidays(date.year()).find_map(|(d, name)| (d == date).then_some(name))
}

/// Whether `date` is a French public holiday (metropolitan France).
pub fn is_public_holiday(date: Date) -> bool {
    public_holiday_name(date).is_some()
}

/// Whether `date` is a working day: neither Saturday, Sunday nor a French public holiday.
pub fn is_working_day(date: Date) -> bool {
    !matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday) && !is_public_holiday(date)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn dur(s: &str) -> ClinicalDuration {
        s.parse().unwrap()
    }

    /// A Paris wall-clock time as a timestamp.
    fn paris_at(y: i16, m: i8, d: i8, h: i8, min: i8) -> Timestamp {
        paris()
            .to_ambiguous_timestamp(date(y, m, d).at(h, min, 0, 0))
            .unambiguous()
            .unwrap()
    }

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn local(ts: Timestamp) -> jiff::civil::DateTime {
        paris().to_datetime(ts)
    }

    #[test]
    fn zone_is_paris() {
        assert_eq!(paris().iana_name(), Some("Europe/Paris"));
        assert_eq!(ZONE_NAME, "Europe/Paris");
        // Winter offset +01:00, summer +02:00.
        assert_eq!(paris_at(2026, 1, 15, 9, 0), utc("2026-01-15T08:00:00Z"));
        assert_eq!(paris_at(2026, 7, 15, 9, 0), utc("2026-07-15T07:00:00Z"));
    }

    #[test]
    fn parse_every_unit() {
        let cases = [
            ("30min", 30, DurationUnit::Minutes),
            ("12h", 12, DurationUnit::Hours),
            ("7d", 7, DurationUnit::Days),
            ("2w", 2, DurationUnit::Weeks),
            ("3mo", 3, DurationUnit::Months),
            ("1y", 1, DurationUnit::Years),
            ("5wd", 5, DurationUnit::WorkingDays),
            ("0d", 0, DurationUnit::Days),
            ("52704000min", 52_704_000, DurationUnit::Minutes),
        ];
        for (text, amount, unit) in cases {
            let parsed: ClinicalDuration = text.parse().unwrap();
            assert_eq!(parsed, ClinicalDuration::new(amount, unit), "{text}");
            assert_eq!(parsed.to_string(), text, "round trip of {text}");
            assert_eq!(DurationUnit::from_suffix(unit.suffix()), Some(unit));
        }
        // Leading zeros are accepted and printed canonically.
        assert_eq!(dur("007d").to_string(), "7d");
    }

    #[test]
    fn parse_errors() {
        assert_eq!("".parse::<ClinicalDuration>(), Err(DurationError::Empty));
        assert_eq!("  ".parse::<ClinicalDuration>(), Err(DurationError::Empty));
        for text in ["7 d", " 7d", "7d ", "7\td"] {
            assert_eq!(
                text.parse::<ClinicalDuration>(),
                Err(DurationError::Whitespace {
                    input: text.to_owned()
                }),
                "{text:?}"
            );
        }
        for text in ["d", "wd", "-3d", "+3d", ".5d"] {
            assert_eq!(
                text.parse::<ClinicalDuration>(),
                Err(DurationError::MissingNumber {
                    input: text.to_owned()
                }),
                "{text:?}"
            );
        }
        assert_eq!(
            "42".parse::<ClinicalDuration>(),
            Err(DurationError::MissingUnit {
                input: "42".to_owned()
            })
        );
        for (text, unit) in [
            ("3m", "m"),
            ("3D", "D"),
            ("3days", "days"),
            ("3dd", "dd"),
            ("6mo1x", "x"),
            ("3μs", "μs"),
        ] {
            assert_eq!(
                text.parse::<ClinicalDuration>(),
                Err(DurationError::UnknownUnit {
                    input: text.to_owned(),
                    unit: unit.to_owned()
                }),
                "{text:?}"
            );
        }
        for text in ["1.5h", "2,5d", "1."] {
            assert_eq!(
                text.parse::<ClinicalDuration>(),
                Err(DurationError::Fraction {
                    input: text.to_owned()
                }),
                "{text:?}"
            );
        }
        assert_eq!(
            "6mo1".parse::<ClinicalDuration>(),
            Err(DurationError::MissingUnit {
                input: "6mo1".to_owned()
            })
        );
        assert_eq!(
            "4294967296min".parse::<ClinicalDuration>(),
            Err(DurationError::Overflow {
                input: "4294967296min".to_owned()
            })
        );
    }

    #[test]
    fn error_messages_are_lower_case_and_list_units() {
        let errors = [
            "".parse::<ClinicalDuration>().unwrap_err(),
            "7 d".parse::<ClinicalDuration>().unwrap_err(),
            "d".parse::<ClinicalDuration>().unwrap_err(),
            "7".parse::<ClinicalDuration>().unwrap_err(),
            "7x".parse::<ClinicalDuration>().unwrap_err(),
            "99999999999d".parse::<ClinicalDuration>().unwrap_err(),
        ];
        for err in errors {
            let msg = err.to_string();
            assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
            assert!(msg.contains("min, h, d, w, mo, y, wd"), "{msg}");
        }
        let msg = "7x".parse::<ClinicalDuration>().unwrap_err().to_string();
        assert!(msg.contains("unknown unit `x`"), "{msg}");
        let msg = "99999999999d"
            .parse::<ClinicalDuration>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("too large"), "{msg}");
    }

    #[test]
    fn serde_as_string() {
        let d = dur("5wd");
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"5wd\"");
        let back: ClinicalDuration = serde_json::from_str("\"5wd\"").unwrap();
        assert_eq!(back, d);
        let list: Vec<ClinicalDuration> = serde_json::from_str(r#"["30min","3mo"]"#).unwrap();
        assert_eq!(list, vec![dur("30min"), dur("3mo")]);
        let err = serde_json::from_str::<ClinicalDuration>("\"7x\"").unwrap_err();
        assert!(err.to_string().contains("unknown unit `x`"), "{err}");
        assert!(serde_json::from_str::<ClinicalDuration>("7").is_err());
    }

    #[test]
    fn nominal_seconds() {
        assert_eq!(dur("30min").nominal_seconds(), 1_800);
        assert_eq!(dur("12h").nominal_seconds(), 43_200);
        assert_eq!(dur("7d").nominal_seconds(), 604_800);
        assert_eq!(dur("1w").nominal_seconds(), 604_800);
        assert_eq!(dur("3mo").nominal_seconds(), 90 * 86_400);
        assert_eq!(dur("1y").nominal_seconds(), 365 * 86_400);
        assert_eq!(dur("5wd").nominal_seconds(), 5 * 86_400);
        assert_eq!(dur("0d").nominal_seconds(), 0);
        let huge = ClinicalDuration::new(u32::MAX, DurationUnit::Years);
        assert_eq!(huge.nominal_seconds(), i64::from(u32::MAX) * 31_536_000);
        assert!(dur("2w").nominal_seconds() > dur("13d").nominal_seconds());
    }

    #[test]
    fn holidays_2026() {
        let expected = vec![
            (date(2026, 1, 1), "Jour de l'an"),
            (date(2026, 4, 6), "Lundi de Pâques"),
            (date(2026, 5, 1), "Fête du Travail"),
            (date(2026, 5, 8), "Victoire 1945"),
            (date(2026, 5, 14), "Ascension"),
            (date(2026, 5, 25), "Lundi de Pentecôte"),
            (date(2026, 7, 14), "Fête nationale"),
            (date(2026, 8, 15), "Assomption"),
            (date(2026, 11, 1), "Toussaint"),
            (date(2026, 11, 11), "Armistice 1918"),
            (date(2026, 12, 25), "Noël"),
        ];
        assert_eq!(public_holidays(2026), expected);
        assert_eq!(easter_sunday(2026), Some(date(2026, 4, 5)));
        for (d, name) in &expected {
            assert!(is_public_holiday(*d), "{d}");
            assert_eq!(public_holiday_name(*d), Some(*name));
            assert!(!is_working_day(*d), "{d}");
        }
        // Easter Sunday itself and Good Friday are not holidays in metropolitan France.
        assert!(!is_public_holiday(date(2026, 4, 5)));
        assert!(!is_public_holiday(date(2026, 4, 3)));
        assert!(is_working_day(date(2026, 4, 3)));
        assert!(!is_public_holiday(date(2026, 12, 26)));
    }

    #[test]
    fn holidays_other_years() {
        // 2008: Easter 23 March, Ascension on 1 May (both kept, sorted).
        let h = public_holidays(2008);
        assert_eq!(h.len(), 11);
        assert!(h.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(h.contains(&(date(2008, 3, 24), "Lundi de Pâques")));
        assert!(h.contains(&(date(2008, 5, 1), "Ascension")));
        assert!(h.contains(&(date(2008, 5, 1), "Fête du Travail")));
        assert!(h.contains(&(date(2008, 5, 12), "Lundi de Pentecôte")));
        // 2025: Easter 20 April.
        assert!(is_public_holiday(date(2025, 4, 21)));
        assert!(is_public_holiday(date(2025, 5, 29)));
        assert!(is_public_holiday(date(2025, 6, 9)));
        // Outside the computus range only fixed holidays remain; outside jiff's range nothing.
        assert_eq!(public_holidays(1500).len(), 8);
        assert!(public_holidays(i16::MAX).is_empty());
        assert!(public_holidays(-10_000).is_empty());
        assert_eq!(public_holidays(9999).len(), 11);
    }

    #[test]
    fn working_days_basic() {
        assert!(is_working_day(date(2026, 4, 30))); // Thursday
        assert!(!is_working_day(date(2026, 5, 2))); // Saturday
        assert!(!is_working_day(date(2026, 5, 3))); // Sunday
        assert!(is_working_day(date(2026, 5, 4))); // Monday
    }

    #[test]
    fn add_day_keeps_wall_clock_across_spring_forward() {
        // 29 March 2026: 02:00 CET -> 03:00 CEST.
        let at = paris_at(2026, 3, 28, 9, 0);
        assert_eq!(at, utc("2026-03-28T08:00:00Z"));
        let one_day = add(at, dur("1d"));
        assert_eq!(one_day, utc("2026-03-29T07:00:00Z"));
        assert_eq!(local(one_day), date(2026, 3, 29).at(9, 0, 0, 0));
        let day_hours = add(at, dur("24h"));
        assert_eq!(day_hours, utc("2026-03-29T08:00:00Z"));
        assert_eq!(local(day_hours), date(2026, 3, 29).at(10, 0, 0, 0));
        assert_eq!(local(add(at, dur("1w"))), date(2026, 4, 4).at(9, 0, 0, 0));
    }

    #[test]
    fn add_day_keeps_wall_clock_across_fall_back() {
        // 25 October 2026: 03:00 CEST -> 02:00 CET.
        let at = paris_at(2026, 10, 24, 9, 0);
        assert_eq!(at, utc("2026-10-24T07:00:00Z"));
        let one_day = add(at, dur("1d"));
        assert_eq!(one_day, utc("2026-10-25T08:00:00Z"));
        assert_eq!(local(one_day), date(2026, 10, 25).at(9, 0, 0, 0));
        let day_hours = add(at, dur("24h"));
        assert_eq!(day_hours, utc("2026-10-25T07:00:00Z"));
        assert_eq!(local(day_hours), date(2026, 10, 25).at(8, 0, 0, 0));
    }

    #[test]
    fn gap_and_fold_use_compatible_disambiguation() {
        // 02:30 does not exist on 29 March 2026: compatible moves it forward to 03:30 CEST.
        let gap = add(paris_at(2026, 3, 28, 2, 30), dur("1d"));
        assert_eq!(gap, utc("2026-03-29T01:30:00Z"));
        assert_eq!(local(gap), date(2026, 3, 29).at(3, 30, 0, 0));
        // 02:30 happens twice on 25 October 2026: compatible takes the earlier (CEST) one.
        let fold = add(paris_at(2026, 10, 24, 2, 30), dur("1d"));
        assert_eq!(fold, utc("2026-10-25T00:30:00Z"));
        // Zero calendar units return the instant unchanged, even in the second half of a fold.
        let second_half = utc("2026-10-25T01:30:00Z");
        assert_eq!(local(second_half), date(2026, 10, 25).at(2, 30, 0, 0));
        assert_eq!(add(second_half, dur("0d")), second_half);
        assert_eq!(sub(second_half, dur("0mo")), second_half);
    }

    #[test]
    fn minutes_and_hours_are_exact() {
        let at = utc("2026-03-29T00:30:00Z");
        assert_eq!(add(at, dur("30min")), utc("2026-03-29T01:00:00Z"));
        assert_eq!(add(at, dur("12h")), utc("2026-03-29T12:30:00Z"));
        assert_eq!(sub(at, dur("90min")), utc("2026-03-28T23:00:00Z"));
    }

    #[test]
    fn month_and_year_clamping() {
        let jan31 = paris_at(2026, 1, 31, 9, 0);
        assert_eq!(
            local(add(jan31, dur("1mo"))),
            date(2026, 2, 28).at(9, 0, 0, 0)
        );
        let leap = paris_at(2028, 1, 31, 9, 0);
        assert_eq!(
            local(add(leap, dur("1mo"))),
            date(2028, 2, 29).at(9, 0, 0, 0)
        );
        assert_eq!(
            local(add(jan31, dur("3mo"))),
            date(2026, 4, 30).at(9, 0, 0, 0)
        );
        let feb29 = paris_at(2028, 2, 29, 9, 0);
        assert_eq!(
            local(add(feb29, dur("1y"))),
            date(2029, 2, 28).at(9, 0, 0, 0)
        );
        let mar31 = paris_at(2026, 3, 31, 9, 0);
        assert_eq!(
            local(sub(mar31, dur("1mo"))),
            date(2026, 2, 28).at(9, 0, 0, 0)
        );
        // Winter to summer keeps the wall clock, so the elapsed time is 1h short.
        let jan15 = paris_at(2026, 1, 15, 9, 0);
        let jul15 = add(jan15, dur("6mo"));
        assert_eq!(local(jul15), date(2026, 7, 15).at(9, 0, 0, 0));
        assert_eq!(jul15, utc("2026-07-15T07:00:00Z"));
    }

    #[test]
    fn five_working_days_over_may_2026() {
        // Thu 30 Apr + 5wd: Fri 1 May holiday, weekend, Mon 4 (1), Tue 5 (2), Wed 6 (3),
        // Thu 7 (4), Fri 8 May holiday, weekend, Mon 11 May (5).
        let at = paris_at(2026, 4, 30, 9, 0);
        let later = add(at, dur("5wd"));
        assert_eq!(local(later), date(2026, 5, 11).at(9, 0, 0, 0));
        assert_eq!(later, utc("2026-05-11T07:00:00Z"));
        assert_eq!(local(add(at, dur("1wd"))), date(2026, 5, 4).at(9, 0, 0, 0));
        assert_eq!(local(add(at, dur("4wd"))), date(2026, 5, 7).at(9, 0, 0, 0));
        // The mirror lands back on Thursday 30 April.
        assert_eq!(sub(later, dur("5wd")), at);
    }

    #[test]
    fn working_days_from_a_weekend_and_across_dst() {
        // Saturday 28 March 2026 09:00 CET + 1wd = Monday 30 March 09:00 CEST.
        let sat = paris_at(2026, 3, 28, 9, 0);
        let mon = add(sat, dur("1wd"));
        assert_eq!(mon, utc("2026-03-30T07:00:00Z"));
        // Friday 3 April - 1wd... Easter Monday 6 April is skipped going forward too.
        let fri = paris_at(2026, 4, 3, 14, 0);
        assert_eq!(
            local(add(fri, dur("1wd"))),
            date(2026, 4, 7).at(14, 0, 0, 0)
        );
        assert_eq!(
            local(sub(fri, dur("1wd"))),
            date(2026, 4, 2).at(14, 0, 0, 0)
        );
    }

    #[test]
    fn zero_working_days() {
        // On a working day: unchanged, both ways.
        let thu = paris_at(2026, 4, 30, 9, 0) + SignedDuration::from_nanos(123);
        assert_eq!(add(thu, dur("0wd")), thu);
        assert_eq!(sub(thu, dur("0wd")), thu);
        // On a holiday (Fri 1 May): forward to Mon 4 May, backward to Thu 30 April.
        let may1 = paris_at(2026, 5, 1, 10, 0);
        assert_eq!(
            local(add(may1, dur("0wd"))),
            date(2026, 5, 4).at(10, 0, 0, 0)
        );
        assert_eq!(
            local(sub(may1, dur("0wd"))),
            date(2026, 4, 30).at(10, 0, 0, 0)
        );
        // On a Sunday.
        let sun = paris_at(2026, 5, 10, 8, 15);
        assert_eq!(
            local(add(sun, dur("0wd"))),
            date(2026, 5, 11).at(8, 15, 0, 0)
        );
        assert_eq!(
            local(sub(sun, dur("0wd"))),
            date(2026, 5, 7).at(8, 15, 0, 0)
        );
    }

    #[test]
    fn sub_mirrors_add() {
        let at = paris_at(2026, 6, 10, 11, 45);
        for text in ["30min", "12h", "7d", "2w", "3mo", "1y", "5wd", "0d", "0wd"] {
            let d = dur(text);
            assert_eq!(sub(add(at, d), d), at, "{text}");
            assert_eq!(add(sub(at, d), d), at, "{text}");
        }
        // Across DST changes too.
        let winter = paris_at(2026, 1, 20, 9, 0);
        assert_eq!(sub(add(winter, dur("3mo")), dur("3mo")), winter);
        assert_eq!(
            local(sub(paris_at(2026, 3, 30, 9, 0), dur("1d"))),
            date(2026, 3, 29).at(9, 0, 0, 0)
        );
    }

    #[test]
    fn saturation_never_panics() {
        let max = Timestamp::MAX;
        for text in ["1min", "1h", "1d", "1w", "1mo", "1y", "1wd"] {
            assert_eq!(add(max, dur(text)), max, "{text}");
            assert_eq!(sub(Timestamp::MIN, dur(text)), Timestamp::MIN, "{text}");
        }
        let near = paris_at(9999, 12, 28, 9, 0);
        assert_eq!(add(near, dur("10d")), max);
        assert_eq!(add(near, dur("10wd")), max);
        assert_eq!(
            sub(paris_at(-9999, 1, 5, 9, 0), dur("10wd")),
            Timestamp::MIN
        );
        assert_eq!(
            Date::MIN.until(Date::MAX).unwrap().get_days(),
            i32::try_from(CIVIL_DAYS_IN_RANGE).unwrap()
        );
        assert_eq!(add(near, dur("1mo")), max);
        let at = paris_at(2026, 1, 1, 0, 0);
        for unit in [
            DurationUnit::Minutes,
            DurationUnit::Hours,
            DurationUnit::Days,
            DurationUnit::Weeks,
            DurationUnit::Months,
            DurationUnit::Years,
            DurationUnit::WorkingDays,
        ] {
            let huge = ClinicalDuration::new(u32::MAX, unit);
            assert_eq!(add(at, huge), max, "{unit}");
            if unit != DurationUnit::Minutes {
                assert_eq!(sub(at, huge), Timestamp::MIN, "{unit}");
            }
        }
        // u32::MAX minutes (about 8166 years) still fits backwards from 2026: exact.
        let back = sub(at, ClinicalDuration::new(u32::MAX, DurationUnit::Minutes));
        assert_eq!(back.as_second(), at.as_second() - i64::from(u32::MAX) * 60);
        // Zero calendar units on the extremes are the identity.
        assert_eq!(add(max, dur("0d")), max);
        assert_eq!(add(max, dur("0h")), max);
    }

    #[test]
    fn combined_durations_parse_largest_first() {
        let d = dur("6mo1d");
        assert_eq!(
            d.parts().collect::<Vec<_>>(),
            vec![(6, DurationUnit::Months), (1, DurationUnit::Days)]
        );
        assert_eq!(d.to_string(), "6mo1d");
        for text in [
            "1y2mo3w4d5h6min",
            "1d12h",
            "1h30min",
            "2w3d",
            "0d12h",
            "1mo0d",
        ] {
            assert_eq!(dur(text).to_string(), text, "round trip of {text}");
        }
        assert_eq!(d.amount(DurationUnit::Months), 6);
        assert_eq!(d.amount(DurationUnit::Hours), 0);
        assert_eq!(d.nominal_seconds(), 181 * 86_400);
        assert_eq!(dur("1d12h").nominal_seconds(), 36 * 3_600);
        assert!(dur("0d0h").is_zero());
        assert!(!dur("0d1min").is_zero());
        assert_ne!(dur("1w"), dur("7d"));
        assert_eq!(dur("1mo15d").times(3), dur("3mo45d"));
        assert_eq!(
            dur("5wd").times(u32::MAX),
            ClinicalDuration::new(u32::MAX, DurationUnit::WorkingDays)
        );
        // Serialised as text, so stored variables keep their form.
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"6mo1d\"");
    }

    #[test]
    fn combined_duration_errors_say_how_to_write_it() {
        assert_eq!(
            "1d6mo".parse::<ClinicalDuration>(),
            Err(DurationError::OutOfOrder {
                input: "1d6mo".into(),
                fixed: "6mo1d".into()
            })
        );
        let msg = "30min1h"
            .parse::<ClinicalDuration>()
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("write the largest unit first, `1h30min`"),
            "{msg}"
        );
        assert_eq!(
            "1d2d".parse::<ClinicalDuration>(),
            Err(DurationError::Repeated {
                input: "1d2d".into(),
                unit: "d".into()
            })
        );
        for text in ["1w2wd", "2wd1d", "1wd1wd"] {
            assert_eq!(
                text.parse::<ClinicalDuration>(),
                Err(DurationError::WorkingDaysCombined { input: text.into() }),
                "{text}"
            );
        }
        let msg = "3m".parse::<ClinicalDuration>().unwrap_err().to_string();
        assert!(
            msg.contains("`min` for minutes or `mo` for months"),
            "{msg}"
        );
        let msg = "3days".parse::<ClinicalDuration>().unwrap_err().to_string();
        assert!(msg.contains("did you mean `d`?"), "{msg}");
    }

    #[test]
    fn combined_durations_add_largest_unit_first() {
        // Months first (30 Jan + 1mo = 28 Feb, clamped), then the day: 1 March.
        let jan30 = paris_at(2026, 1, 30, 9, 0);
        assert_eq!(
            local(add(jan30, dur("1mo1d"))),
            date(2026, 3, 1).at(9, 0, 0, 0)
        );
        // 6 months and a day from a winter discharge: wall clock kept across the DST change.
        let mar2 = paris_at(2026, 3, 2, 10, 0);
        assert_eq!(
            local(add(mar2, dur("6mo1d"))),
            date(2026, 9, 3).at(10, 0, 0, 0)
        );
        // Civil part, then elapsed hours: Saturday 28 March 20:00 + 1d12h crosses the
        // spring-forward night as a civil day, then 12 elapsed hours.
        let sat = paris_at(2026, 3, 28, 20, 0);
        let later = add(sat, dur("1d12h"));
        assert_eq!(local(later), date(2026, 3, 30).at(8, 0, 0, 0));
        // Subtraction undoes it (exact part first, then civil).
        assert_eq!(sub(later, dur("1d12h")), sat);
        // A civil span is one step: a wall-clock time that exists at the end is kept even if
        // an intermediate month end would fall in a DST gap.
        // (29 Jan 02:30 + 2mo is 29 March 02:30, skipped that night; + 1d is 30 March 02:30.)
        let jan29 = paris_at(2026, 1, 29, 2, 30);
        assert_eq!(
            local(add(jan29, dur("2mo1d"))),
            date(2026, 3, 30).at(2, 30, 0, 0)
        );
        // Equal to the step-by-step sum where nothing is clamped or skipped.
        let at = paris_at(2026, 6, 10, 11, 45);
        for text in ["1mo3d", "2w3d", "1y2mo", "3d4h30min", "1h30min"] {
            let d = dur(text);
            let stepwise = d.parts().fold(at, |t, (amount, unit)| {
                add(t, ClinicalDuration::new(amount, unit))
            });
            assert_eq!(add(at, d), stepwise, "{text}");
            assert!(sub_upper_bound(add(at, d), d) >= at, "{text}");
        }
        assert_eq!(add(Timestamp::MAX, dur("1mo1d")), Timestamp::MAX);
        assert_eq!(sub(Timestamp::MIN, dur("1d1h")), Timestamp::MIN);
    }

    proptest::proptest! {
        #[test]
        fn fast_day_shift_equals_the_civil_one(secs in 0i64..4_102_444_800, days in -800i64..800) {
            let at = Timestamp::from_second(secs).expect("in range");
            if let Some(fast) = shift_days_fast(at, days) {
                let civil = shift_civil(at, Span::new().try_days(days).expect("span")).expect("civil");
                proptest::prop_assert_eq!(fast, civil);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_table_of_offset_changes_agrees_with_the_database(
            lo in -2_300_000_000i64..7_300_000_000, len in 0i64..40_000_000,
        ) {
            let tz = paris();
            let hi = lo + len;
            let offset = |s: i64| tz.to_offset(Timestamp::from_second(s).expect("in range"));
            if no_offset_change_within(lo, hi) {
                // One offset all along: at both ends and at the middle.
                proptest::prop_assert_eq!(offset(lo), offset(hi));
                proptest::prop_assert_eq!(offset(lo), offset(lo + len / 2));
            } else if (-2_208_988_800..7_258_118_400).contains(&lo)
                && (-2_208_988_800..7_258_118_400).contains(&hi)
            {
                // Within the table a "no" is a change somewhere in the span.
                let next = tz
                    .following(Timestamp::from_second(lo).expect("in range"))
                    .next()
                    .map(|change| change.timestamp().as_second());
                proptest::prop_assert!(next.is_some_and(|at| at <= hi), "{lo}..={hi}");
            }
        }
    }

    #[test]
    fn the_table_of_offset_changes_holds_paris_summer_times() {
        let changes = paris_offset_changes().expect("the table");
        // Two a year since 1976 (and earlier ones): 2026's are 29 March and 25 October, 01:00 UTC.
        for at in ["2026-03-29T01:00:00Z", "2026-10-25T01:00:00Z"] {
            let at: Timestamp = at.parse().expect("timestamp");
            assert!(changes.contains(&at.as_second()), "{at}");
        }
        assert!(changes.len() > 2 * (2200 - 1976), "{}", changes.len());
        assert!(changes.is_sorted());
    }

    #[test]
    fn fast_day_shift_around_every_2026_clock_change() {
        // Every 5 minutes for 3 days around both changes, for shifts that land on, cross or
        // leave a change: the fast path either agrees with the civil one or stands aside.
        for start in [
            "2026-03-27T00:00:00Z",
            "2026-10-23T00:00:00Z",
            "2026-01-24T00:00:00Z",
        ] {
            let t0: Timestamp = start.parse().expect("timestamp");
            for step in 0..(3 * 24 * 12) {
                let at = t0 + SignedDuration::from_secs(step * 300);
                for days in [-273, -7, -2, -1, 1, 2, 7, 273, 274] {
                    if let Some(fast) = shift_days_fast(at, days) {
                        let civil = shift_civil(at, Span::new().try_days(days).expect("span"))
                            .expect("civil");
                        assert_eq!(fast, civil, "{at} {days}d");
                    }
                }
            }
        }
    }

    #[test]
    fn a_duration_longer_than_a_century_is_refused() {
        for ok in ["100y", "1000mo", "36500d", "1y11mo"] {
            assert!(ok.parse::<ClinicalDuration>().is_ok(), "{ok}");
        }
        for slip in ["101y", "4294967295y", "100000y", "4294967295wd", "2000mo"] {
            assert!(
                matches!(
                    slip.parse::<ClinicalDuration>(),
                    Err(DurationError::TooLong { .. })
                ),
                "{slip}"
            );
        }
    }
}

//! [`Stamp`]: a jiff [`Timestamp`] kept in 12 bytes, aligned on 4.
//!
//! A `Timestamp` is 16 bytes: an `i64` of seconds, an `i32` of nanoseconds and 4 bytes
//! of padding, aligned on 8. A cached state keeps a few of them (its enrolment, the start
//! of its cycle, when each track entered its state), and next to its `u16` and `u32`
//! fields the 8-byte alignment adds padding of its own: a track entry (`StateId` and
//! instant) is 24 bytes with a `Timestamp`, 16 with a `Stamp`. The seconds
//! are split into two 32-bit halves, so every `Timestamp` is held exactly (no range
//! limit, unlike `i64` nanoseconds). Equality, order, `Debug`, `Display` and serde are
//! those of the `Timestamp`, so encodings are unchanged.

use std::cmp::Ordering;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A [`Timestamp`] in 12 bytes: convert with [`Stamp::get`] and `From`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Bits 63–32 of the seconds since the epoch.
    hi: i32,
    /// Bits 31–0 of the seconds.
    lo: u32,
    /// Nanoseconds of the second, with the seconds' sign (as jiff keeps them).
    nanos: i32,
}

impl Stamp {
    /// 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: Stamp = Stamp {
        hi: 0,
        lo: 0,
        nanos: 0,
    };

    fn seconds(self) -> i64 {
        i64::from(self.hi) << 32 | i64::from(self.lo)
    }

    /// The timestamp held.
    pub fn get(self) -> Timestamp {
        // Made from a valid `Timestamp` only (the fields are private), so always valid.
        Timestamp::new(self.seconds(), self.nanos).expect("a stamp holds a valid timestamp")
    }
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp::UNIX_EPOCH
    }
}

impl From<Timestamp> for Stamp {
    fn from(t: Timestamp) -> Stamp {
        let s = t.as_second();
        Stamp {
            hi: (s >> 32) as i32,
            lo: s as u32,
            nanos: t.subsec_nanosecond(),
        }
    }
}

impl From<Stamp> for Timestamp {
    fn from(s: Stamp) -> Timestamp {
        s.get()
    }
}

impl PartialEq<Timestamp> for Stamp {
    fn eq(&self, other: &Timestamp) -> bool {
        self.get() == *other
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        // Seconds and their fraction have the same sign, so (seconds, nanoseconds) in
        // that order is the order of instants.
        (self.seconds(), self.nanos).cmp(&(other.seconds(), other.nanos))
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.get(), f)
    }
}

impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Timestamp::deserialize(deserializer).map(Stamp::from)
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;

    /// Instants over jiff's whole range, both signs, with and without a fraction.
    fn instants(seed: u64, n: usize) -> Vec<Timestamp> {
        let mut out = vec![
            Timestamp::MIN,
            Timestamp::MAX,
            Timestamp::UNIX_EPOCH,
            Timestamp::UNIX_EPOCH - SignedDuration::new(0, 1),
            Timestamp::UNIX_EPOCH + SignedDuration::new(0, 1),
            Timestamp::UNIX_EPOCH - SignedDuration::new(1, 500_000_000),
            Timestamp::UNIX_EPOCH - SignedDuration::new(0, 500_000_000),
        ];
        let (min, max) = (Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
        out.extend(crate::draws(seed).take(n).map(|x| {
            let span = (max - min) as u64;
            let second = min + (x % span) as i64;
            let nanos = ((x >> 20) % 1_000_000_000) as i32 * (x & 1) as i32;
            let nanos = if second < 0 { -nanos } else { nanos };
            Timestamp::new(second, nanos).expect("in range")
        }));
        out
    }

    #[test]
    fn holds_any_timestamp_exactly_and_orders_as_it() {
        for seed in 0..20 {
            let all = instants(seed, 200);
            for a in &all {
                let s = Stamp::from(*a);
                assert_eq!(s.get(), *a);
                assert_eq!(s, *a);
                assert_eq!(format!("{s:?}"), format!("{a:?}"));
                assert_eq!(s.to_string(), a.to_string());
                for b in &all {
                    assert_eq!(s.cmp(&Stamp::from(*b)), a.cmp(b), "{a} against {b}");
                    assert_eq!(s == Stamp::from(*b), a == b);
                }
            }
        }
    }

    #[test]
    fn encodes_as_a_timestamp() {
        for t in instants(3, 50) {
            let json = serde_json::to_string(&Stamp::from(t)).expect("json");
            assert_eq!(json, serde_json::to_string(&t).expect("json"));
            let back: Stamp = serde_json::from_str(&json).expect("back");
            assert_eq!(back.get(), t);
        }
    }

    #[test]
    fn is_12_bytes() {
        assert_eq!(size_of::<Stamp>(), 12);
        assert_eq!(size_of::<Timestamp>(), 16);
    }
}

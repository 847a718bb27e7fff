//! [`Series`]: the samples of one series (weights, HbA1c…), 16 bytes each.
//!
//! A [`Sample`] is 24 bytes: its instant a 16-byte jiff `Timestamp`, its value an `f64`.
//! A series keeps its samples as nanoseconds since the epoch in an `i64` (1677 to 2262)
//! beside the value: 16 bytes. That is only a layout: a series holding an instant outside
//! those years keeps its samples whole, so any sample is held exactly. Equality,
//! iteration, `Debug` and serde (`{"samples": [...]}`) are those of the
//! `Series { samples: Vec<Sample> }` it was, so JSON and bincode encodings are unchanged.
//! The `Series` itself is 24 bytes, a `Vec`'s (the whole samples are behind a pointer).

use std::fmt;

use jiff::Timestamp;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::state::Sample;
use crate::timers::{instant, nanos};

/// A sample whose instant fits an `i64` of nanoseconds: 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Packed {
    at: i64,
    value: f64,
}

impl Packed {
    fn sample(&self) -> Sample {
        Sample {
            at: instant(self.at),
            value: self.value,
        }
    }
}

#[derive(Clone, Debug)]
enum Samples {
    /// Every instant fits an `i64` of nanoseconds.
    Packed(Vec<Packed>),
    /// One does not: all kept whole, behind one thin pointer, so that a `Series` is 24
    /// bytes (the `Vec` of the packed variant and its tag in its spare values) rather than 32.
    #[expect(
        clippy::box_collection,
        reason = "a boxed Vec is one thin pointer: the enum fits in the packed Vec's 24 bytes"
    )]
    Whole(Box<Vec<Sample>>),
}

/// Samples of one series, oldest first.
#[derive(Clone)]
pub struct Series {
    samples: Samples,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            samples: Samples::Packed(Vec::new()),
        }
    }
}

impl Series {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match &self.samples {
            Samples::Packed(s) => s.len(),
            Samples::Whole(s) => s.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> Iter<'_> {
        match &self.samples {
            Samples::Packed(s) => Iter(Inner::Packed(s.iter())),
            Samples::Whole(s) => Iter(Inner::Whole(s.iter())),
        }
    }

    /// The oldest sample.
    pub fn first(&self) -> Option<Sample> {
        self.iter().next()
    }

    /// The newest sample.
    pub fn last(&self) -> Option<Sample> {
        self.iter().next_back()
    }

    /// The values of the samples taken after `since` (inclusive, when given) and up to
    /// `until` (inclusive), oldest first. The bounds are compared as nanoseconds, not
    /// each sample made a `Timestamp` again (what guards read on every weight).
    pub fn values_between(
        &self,
        since: Option<Timestamp>,
        until: Timestamp,
    ) -> impl DoubleEndedIterator<Item = f64> + '_ {
        let (lo, hi) = (since.map(Timestamp::as_nanosecond), until.as_nanosecond());
        // Samples are kept in time order: the bounds are two binary searches.
        fn within<T>(s: &[T], at: impl Fn(&T) -> i128, lo: Option<i128>, hi: i128) -> &[T] {
            let first = lo.map_or(0, |lo| s.partition_point(|x| at(x) < lo));
            let end = s.partition_point(|x| at(x) <= hi).max(first);
            &s[first..end]
        }
        let (packed, whole) = match &self.samples {
            Samples::Packed(s) => (within(s, |x| i128::from(x.at), lo, hi), &[][..]),
            Samples::Whole(s) => (&[][..], within(s, |x| x.at.as_nanosecond(), lo, hi)),
        };
        packed
            .iter()
            .map(|x| x.value)
            .chain(whole.iter().map(|x| x.value))
    }

    /// The samples in a vector, oldest first.
    pub fn to_vec(&self) -> Vec<Sample> {
        self.iter().collect()
    }

    /// Add `sample` after those at or before its instant.
    pub fn record(&mut self, sample: Sample) {
        match (&mut self.samples, nanos(sample.at)) {
            (Samples::Packed(s), Some(at)) => {
                let pos = s.partition_point(|x| x.at <= at);
                s.insert(
                    pos,
                    Packed {
                        at,
                        value: sample.value,
                    },
                );
            }
            (Samples::Whole(s), _) => {
                let pos = s.partition_point(|x| x.at <= sample.at);
                s.insert(pos, sample);
            }
            (Samples::Packed(_), None) => {
                let mut whole = self.to_vec();
                let pos = whole.partition_point(|x| x.at <= sample.at);
                whole.insert(pos, sample);
                self.samples = Samples::Whole(Box::new(whole));
            }
        }
    }

    /// Remove the samples taken at `at` (a result withdrawn or corrected); how many.
    pub fn remove_at(&mut self, at: Timestamp) -> usize {
        let before = self.len();
        match (&mut self.samples, nanos(at)) {
            (Samples::Packed(s), Some(n)) => s.retain(|x| x.at != n),
            (Samples::Packed(_), None) => {}
            (Samples::Whole(s), _) => s.retain(|x| x.at != at),
        }
        before - self.len()
    }

    /// Whether a sample was taken at `at`.
    pub fn has_sample_at(&self, at: Timestamp) -> bool {
        self.iter().any(|x| x.at == at)
    }

    /// Drop the samples before `horizon`.
    pub fn drop_before(&mut self, horizon: Timestamp) {
        match &mut self.samples {
            Samples::Packed(s) => {
                let cut = s.partition_point(|x| instant(x.at) < horizon);
                s.drain(..cut);
            }
            Samples::Whole(s) => {
                let cut = s.partition_point(|x| x.at < horizon);
                s.drain(..cut);
            }
        }
    }

    /// Give back the room that growing left unused.
    pub fn shrink_to_fit(&mut self) {
        match &mut self.samples {
            Samples::Packed(s) => s.shrink_to_fit(),
            Samples::Whole(s) => s.shrink_to_fit(),
        }
    }

    /// Bytes its samples take on the heap (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        match &self.samples {
            Samples::Packed(s) => s.capacity() * size_of::<Packed>(),
            Samples::Whole(s) => size_of::<Vec<Sample>>() + s.capacity() * size_of::<Sample>(),
        }
    }
}

/// The samples of a [`Series`], oldest first, both ways.
#[derive(Clone, Debug)]
pub struct Iter<'a>(Inner<'a>);

#[derive(Clone, Debug)]
enum Inner<'a> {
    Packed(std::slice::Iter<'a, Packed>),
    Whole(std::slice::Iter<'a, Sample>),
}

impl Iterator for Iter<'_> {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        match &mut self.0 {
            Inner::Packed(s) => s.next().map(Packed::sample),
            Inner::Whole(s) => s.next().cloned(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            Inner::Packed(s) => s.size_hint(),
            Inner::Whole(s) => s.size_hint(),
        }
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Sample> {
        match &mut self.0 {
            Inner::Packed(s) => s.next_back().map(Packed::sample),
            Inner::Whole(s) => s.next_back().cloned(),
        }
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl From<Vec<Sample>> for Series {
    fn from(samples: Vec<Sample>) -> Series {
        let packed: Option<Vec<Packed>> = samples
            .iter()
            .map(|s| {
                Some(Packed {
                    at: nanos(s.at)?,
                    value: s.value,
                })
            })
            .collect();
        Series {
            samples: match packed {
                Some(p) => Samples::Packed(p),
                None => Samples::Whole(Box::new(samples)),
            },
        }
    }
}

impl FromIterator<Sample> for Series {
    fn from_iter<I: IntoIterator<Item = Sample>>(iter: I) -> Series {
        Series::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl PartialEq for Series {
    fn eq(&self, other: &Series) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl fmt::Debug for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Series")
            .field("samples", &self.to_vec())
            .finish()
    }
}

/// Samples on the wire: what `Series` was.
struct Seq<'a>(&'a Series);

impl Serialize for Seq<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl Serialize for Series {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Series", 1)?;
        s.serialize_field("samples", &Seq(self))?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for Series {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// What `Series` was, derived: its encoding.
        #[derive(Deserialize)]
        #[serde(rename = "Series")]
        struct Wire {
            samples: Vec<Sample>,
        }
        Ok(Series::from(Wire::deserialize(deserializer)?.samples))
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;

    mod was {
        use serde::{Deserialize, Serialize};

        use crate::state::Sample;

        /// What `Series` was: its encodings and `Debug` are the reference.
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub(super) struct Series {
            pub(super) samples: Vec<Sample>,
        }
    }

    fn at(s: i64, n: i32) -> Timestamp {
        Timestamp::new(s, n).expect("in range")
    }

    /// Samples recorded out of order, some at one instant, some outside the i64 range.
    fn sample(seed: u64, n: usize, far: bool) -> Vec<Sample> {
        crate::draws(seed)
            .take(n)
            .enumerate()
            .map(|(i, x)| {
                let at = match (x >> 20) % 8 {
                    0 if far => Timestamp::MAX,
                    1 if far => Timestamp::MIN,
                    2 => at(-3_000, -123),
                    _ => at((x >> 50) as i64 * 3_600, (x >> 33) as i32 % 1_000_000_000),
                };
                Sample {
                    at,
                    value: i as f64 + 0.5,
                }
            })
            .collect()
    }

    #[test]
    fn behaves_as_the_vector_it_was() {
        for seed in 0..60 {
            let far = seed % 3 == 0;
            let mut old = was::Series {
                samples: Vec::new(),
            };
            let mut series = Series::default();
            for (i, s) in sample(seed, 40, far).into_iter().enumerate() {
                let bound = s.at;
                if i % 7 == 6 {
                    let horizon = s.at;
                    let cut = old.samples.partition_point(|x| x.at < horizon);
                    old.samples.drain(..cut);
                    series.drop_before(horizon);
                } else {
                    let pos = old.samples.partition_point(|x| x.at <= s.at);
                    old.samples.insert(pos, s.clone());
                    series.record(s);
                }
                assert_eq!(series.len(), old.samples.len());
                assert_eq!(series.first().as_ref(), old.samples.first());
                assert_eq!(series.last().as_ref(), old.samples.last());
                assert!(series.iter().eq(old.samples.iter().cloned()), "seed {seed}");
                assert!(series.iter().rev().eq(old.samples.iter().rev().cloned()));
                // The values between two bounds: those of the samples a filter keeps.
                for (since, until) in [
                    (None, bound),
                    (Some(at(-3_000, -123)), bound),
                    (Some(bound), Timestamp::MAX),
                    (Some(Timestamp::MIN), at(-3_000, -123)),
                    (Some(bound), at(-3_000, -123)),
                ] {
                    let kept = old
                        .samples
                        .iter()
                        .filter(|x| since.is_none_or(|lo| x.at >= lo) && x.at <= until)
                        .map(|x| x.value);
                    assert!(
                        series.values_between(since, until).eq(kept),
                        "seed {seed} {since:?}..={until}"
                    );
                }
            }
            assert_eq!(format!("{series:?}"), format!("{old:?}"));
            let json = serde_json::to_string(&series).expect("json");
            assert_eq!(json, serde_json::to_string(&old).expect("json"));
            let back: Series = serde_json::from_str(&json).expect("back");
            assert_eq!(back, series);
            assert_eq!(Series::from(old.samples.clone()), series);
            assert_eq!(series.to_vec(), old.samples);
        }
    }

    #[test]
    fn a_sample_takes_16_bytes() {
        let mut series = Series::default();
        for h in 0..10 {
            series.record(Sample {
                at: Timestamp::UNIX_EPOCH + SignedDuration::from_hours(500_000 + h),
                value: 80.0,
            });
        }
        series.shrink_to_fit();
        assert_eq!(series.heap_bytes(), 10 * 16);
        // The series itself, in its state's `Arc<[Series]>`.
        assert_eq!(size_of::<Series>(), 24);
    }
}

//! [`InstanceId`]: an instance's id, 16 bytes in the state and nothing on the heap.
//!
//! Instance ids are the text of a v5 UUID (`decide::instance_id_for`): 36 bytes, which an
//! `Arc<str>` kept in a 64-byte chunk of its own in every cached state. An `InstanceId`
//! keeps such a text as the UUID's two 64-bit halves; any other text (an id that is not
//! a UUID in its lower-case hyphenated form, or whose high half is zero) is kept as it
//! is, behind one thin pointer. The high half of a kept UUID is never zero, which leaves
//! the compiler a value to tell the two apart by: 16 bytes either way. Equality, order,
//! hashing, `Debug`, `Display` and serde are those of the text, so encodings are
//! unchanged.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// An instance's id: a text, kept as a UUID when it is one (see the module).
#[derive(Clone)]
pub struct InstanceId(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    /// The lower-case hyphenated text of the UUID with these halves.
    Uuid(NonZeroU64, u64),
    /// Any other text, behind a thin pointer (an `Arc<str>` is two words: the id would be
    /// 24 bytes).
    Text(Arc<String>),
}

/// Room for a UUID's text.
type Buf = [u8; 36];

impl InstanceId {
    /// The id with this text.
    pub fn new(text: &str) -> InstanceId {
        InstanceId(match Self::as_uuid(text) {
            Some((hi, lo)) => Repr::Uuid(hi, lo),
            None => Repr::Text(Arc::new(text.to_owned())),
        })
    }

    /// The halves of the UUID whose lower-case hyphenated text `text` is, if any (and its
    /// high half not zero).
    fn as_uuid(text: &str) -> Option<(NonZeroU64, u64)> {
        if text.len() != 36 {
            return None;
        }
        let (hi, lo) = Uuid::try_parse(text).ok()?.as_u64_pair();
        let hi = NonZeroU64::new(hi)?;
        let mut buf = [0; 36];
        (Self::encode(hi, lo, &mut buf) == text).then_some((hi, lo))
    }

    fn encode(hi: NonZeroU64, lo: u64, buf: &mut Buf) -> &str {
        Uuid::from_u64_pair(hi.get(), lo)
            .hyphenated()
            .encode_lower(buf)
    }

    /// Call `f` with the id's text (written on the stack for a UUID).
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match &self.0 {
            Repr::Uuid(hi, lo) => f(Self::encode(*hi, *lo, &mut [0; 36])),
            Repr::Text(t) => f(t),
        }
    }
}

impl Default for InstanceId {
    fn default() -> Self {
        InstanceId::new("")
    }
}

impl From<&str> for InstanceId {
    fn from(text: &str) -> Self {
        InstanceId::new(text)
    }
}

impl From<String> for InstanceId {
    fn from(text: String) -> Self {
        match Self::as_uuid(&text) {
            Some((hi, lo)) => InstanceId(Repr::Uuid(hi, lo)),
            None => InstanceId(Repr::Text(Arc::new(text))),
        }
    }
}

impl From<&String> for InstanceId {
    fn from(text: &String) -> Self {
        InstanceId::new(text)
    }
}

impl From<Arc<str>> for InstanceId {
    fn from(text: Arc<str>) -> Self {
        InstanceId::new(&text)
    }
}

impl PartialEq for InstanceId {
    fn eq(&self, other: &Self) -> bool {
        // One text, one representation: comparing representations compares texts.
        self.0 == other.0
    }
}

impl Eq for InstanceId {}

impl PartialEq<str> for InstanceId {
    fn eq(&self, other: &str) -> bool {
        self.with_str(|s| s == other)
    }
}

impl PartialEq<&str> for InstanceId {
    fn eq(&self, other: &&str) -> bool {
        self.with_str(|s| s == *other)
    }
}

impl Hash for InstanceId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.with_str(|s| s.hash(state));
    }
}

impl Ord for InstanceId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            // Lower-case hex digits sort as their values, and the hyphens sit at the same
            // places: the texts sort as the numbers.
            (Repr::Uuid(a, b), Repr::Uuid(c, d)) => (a, b).cmp(&(c, d)),
            _ => self.with_str(|a| other.with_str(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for InstanceId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| fmt::Debug::fmt(s, f))
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

impl Serialize for InstanceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.with_str(|s| serializer.serialize_str(s))
    }
}

impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(InstanceId::from)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;

    use super::*;

    /// Texts that are UUIDs in their canonical form, and texts that are almost.
    fn texts(seed: u64, n: usize) -> Vec<String> {
        let mut out: Vec<String> = [
            "",
            "i-1",
            "00000000-0000-0000-0000-000000000000",
            "00000000-0000-0000-0000-000000000001",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
            "6ba7b8109dad11d180b400c04fd430c8",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c",
        ]
        .map(String::from)
        .to_vec();
        out.extend(crate::draws(seed).take(n).map(|x| {
            let id = Uuid::from_u64_pair(x.rotate_left(17) >> (x % 3 * 30), x);
            match x % 5 {
                0 => id.hyphenated().to_string().to_uppercase(),
                1 => format!("{}x", id.hyphenated()),
                _ => id.hyphenated().to_string(),
            }
        }));
        out
    }

    fn hash(x: &impl Hash) -> u64 {
        let mut h = DefaultHasher::new();
        x.hash(&mut h);
        h.finish()
    }

    #[test]
    fn behaves_as_its_text() {
        for seed in 0..20 {
            let all = texts(seed, 60);
            for a in &all {
                let id = InstanceId::from(a.as_str());
                assert_eq!(id.to_string(), *a);
                assert_eq!(id, *a.as_str());
                assert_eq!(format!("{id:?}"), format!("{a:?}"));
                assert_eq!(hash(&id), hash(&a.as_str()));
                assert_eq!(InstanceId::from(a.clone()), id);
                let json = serde_json::to_string(&id).expect("json");
                assert_eq!(json, serde_json::to_string(a).expect("json"));
                assert_eq!(serde_json::from_str::<InstanceId>(&json).expect("back"), id);
                for b in &all {
                    let other = InstanceId::from(b.as_str());
                    assert_eq!(id.cmp(&other), a.cmp(b), "{a} against {b}");
                    assert_eq!(id == other, a == b);
                }
            }
        }
    }

    #[test]
    fn a_uuid_takes_16_bytes_and_no_allocation() {
        assert_eq!(size_of::<InstanceId>(), 16);
        let id = InstanceId::from("6ba7b810-9dad-11d1-80b4-00c04fd430c8");
        assert!(matches!(id.0, Repr::Uuid(..)));
        assert!(matches!(InstanceId::from("i-1").0, Repr::Text(_)));
    }
}

//! [`SortedMap`]: a small ordered map kept as one sorted vector.
//!
//! An instance holds a handful of open tasks, alerts, handoffs and pending timers, and a
//! process caches a hundred thousand instances. A `BTreeMap` allocates a whole node
//! (eleven slots) for its first entry, 700–800 bytes for these values; a vector of
//! exactly the entries held costs their size. Lookups are binary searches, inserts and
//! removals shift a few entries: at these sizes both beat a tree. Iteration, equality,
//! `Debug` and serde (a map, keys in order) are those of a `BTreeMap`, so JSON and
//! bincode encodings are unchanged.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ordered map over a sorted `Vec<(K, V)>`, unique keys.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SortedMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap {
            entries: Vec::new(),
        }
    }
}

/// Borrowing iterator of a [`SortedMap`], in key order.
pub type Iter<'a, K, V> = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&(K, V)) -> (&K, &V)>;

impl<K: Ord, V> SortedMap<K, V> {
    /// An empty map (allocates nothing).
    pub const fn new() -> Self {
        SortedMap {
            entries: Vec::new(),
        }
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value under `key`, to change it.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_ok()
    }

    /// Put `value` under `key`; the value it replaces, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Take the value under `key` out.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.find(key).ok()?;
        Some(self.entries.remove(i).1)
    }

    /// Entries in key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Entries in key order, values to change (keys stay as they are).
    pub fn iter_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = (&K, &mut V)> + ExactSizeIterator {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Give back the room that growing left unused (a cached state keeps only what it
    /// holds).
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SortedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SortedMap<K, V> {
    /// Later entries win over earlier ones with the same key, as in a `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(K, V)> = iter.into_iter().collect();
        // Stable: entries of one key stay in arrival order, the last one is kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(K, V)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        out.shrink_to_fit();
        SortedMap { entries: out }
    }
}

impl<K, V> IntoIterator for SortedMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Serialize, V: Serialize> Serialize for SortedMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for SortedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for MapVisitor<K, V> {
            type Value = SortedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(1024));
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A sequence of inserts and removals (small keys, so that they collide).
    fn ops(seed: u64, n: usize) -> Vec<(bool, u8, u32)> {
        crate::draws(seed)
            .take(n)
            .enumerate()
            .map(|(i, x)| (!(x >> 60).is_multiple_of(3), (x >> 33) as u8 % 24, i as u32))
            .collect()
    }

    #[test]
    fn behaves_as_a_btreemap() {
        for seed in 0..50 {
            let mut tree = BTreeMap::new();
            let mut sorted = SortedMap::new();
            for (insert, k, v) in ops(seed, 200) {
                if insert {
                    assert_eq!(sorted.insert(k, v), tree.insert(k, v));
                } else {
                    assert_eq!(sorted.remove(&k), tree.remove(&k));
                }
                assert_eq!(sorted.len(), tree.len());
                assert_eq!(sorted.get(&k), tree.get(&k));
                assert_eq!(sorted.contains_key(&k), tree.contains_key(&k));
            }
            assert!(sorted.iter().eq(tree.iter()), "seed {seed}");
            assert!(sorted.keys().eq(tree.keys()));
            assert!(sorted.values().eq(tree.values()));
            assert_eq!(format!("{sorted:?}"), format!("{tree:?}"));
        }
    }

    #[test]
    fn encodes_as_a_btreemap_and_back() {
        let tree: BTreeMap<String, u32> = ops(7, 60)
            .into_iter()
            .map(|(_, k, v)| (format!("k{k:02}"), v))
            .collect();
        let sorted: SortedMap<String, u32> = ops(7, 60)
            .into_iter()
            .map(|(_, k, v)| (format!("k{k:02}"), v))
            .collect();
        let json = serde_json::to_string(&sorted).expect("json");
        assert_eq!(json, serde_json::to_string(&tree).expect("json"));
        let back: SortedMap<String, u32> = serde_json::from_str(&json).expect("back");
        assert_eq!(back, sorted);
        assert!(back.iter().eq(tree.iter()));
        // Out of order and repeated keys (a hand-written document): sorted, last one wins.
        let back: SortedMap<String, u32> =
            serde_json::from_str(r#"{"b": 1, "a": 2, "b": 3}"#).expect("unsorted");
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            vec![(&"a".to_string(), &2), (&"b".to_string(), &3)]
        );
    }

    #[test]
    fn holds_no_more_room_than_its_entries_once_shrunk() {
        let mut m: SortedMap<u32, u64> = (0..5).map(|i| (i, 0)).collect();
        assert_eq!(m.entries.capacity(), 5);
        m.insert(9, 1);
        m.shrink_to_fit();
        assert_eq!(m.entries.capacity(), 6);
        assert_eq!(SortedMap::<u32, u64>::new().entries.capacity(), 0);
    }
}

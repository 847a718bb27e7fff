//! [`Timers`]: an instance's pending timers by id, 16 bytes each.
//!
//! A heart-failure instance holds about twenty pending timers (a reminder, a due time and
//! an escalation per open task), and a process caches a hundred thousand instances. Kept
//! as `(Uuid, PendingTimer)` pairs a timer takes 56 bytes: its id 16, its instant 16 (a
//! jiff `Timestamp`), its kind 24 (a task's timers name their task by a 16-byte id). Here
//! it takes one 16-byte cell of a `Grouped` vector (`grouped.rs`): the id's low 16 bits (the other 112
//! in its group's header, shared by the timers one decision scheduled), the instant as
//! nanoseconds since the epoch in an `i64` (1677 to 2262), the task, alert or handoff it
//! serves as the XOR of that owner's id with the timer's own. Ids derived while deciding
//! one event are `base ^ n` ([`mod@crate::decide`]), and a task's, alert's or handoff's
//! timers are scheduled in the decision that opens it, so the two ids differ only in
//! their low bits.
//!
//! That is only a layout: a timer it cannot hold (an instant outside those years, an
//! owner id that does not differ from the timer's in its low 16 bits only, as ids of
//! another scheme would, a recurring timer past 65 535 occurrences) is kept whole in a
//! side list, so any timer is held exactly. The layout of a set of timers is a function
//! of the timers alone, so equality is that of the timers. Iteration, `Debug` and serde
//! (a map, keys in order) are those of a `BTreeMap<Uuid, PendingTimer>`, so JSON and
//! bincode encodings are unchanged.

use std::fmt;

use jiff::Timestamp;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::grouped::{Cell, Grouped, Place, SideList};
use crate::state::{PendingTimer, TimerKind};

/// What a timer's cell holds: a [`TimerKind`] variant, or "kept whole in the side list".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Tag {
    Transition,
    Recurring,
    TaskReminder,
    TaskDue,
    TaskEscalation,
    AlertAck,
    HandoffAccept,
    Named,
    Spilled,
}

impl Tag {
    const ALL: [Tag; 9] = [
        Tag::Transition,
        Tag::Recurring,
        Tag::TaskReminder,
        Tag::TaskDue,
        Tag::TaskEscalation,
        Tag::AlertAck,
        Tag::HandoffAccept,
        Tag::Named,
        Tag::Spilled,
    ];

    fn of(cell: &Cell) -> Tag {
        Tag::ALL
            .get(usize::from(cell.tag))
            .copied()
            .expect("a timer's cell has a timer's tag")
    }
}

const NANOS: i64 = 1_000_000_000;

pub(crate) fn nanos(t: Timestamp) -> Option<i64> {
    // jiff keeps seconds and their fraction with the same sign.
    t.as_second()
        .checked_mul(NANOS)?
        .checked_add(i64::from(t.subsec_nanosecond()))
}

pub(crate) fn instant(at: i64) -> Timestamp {
    // Truncating division: seconds and fraction with the same sign, as jiff keeps them.
    // Every i64 of nanoseconds is well inside jiff's range (years -9999 to 9999).
    Timestamp::new(at / NANOS, (at % NANOS) as i32).expect("i64 nanoseconds fit a timestamp")
}

/// The cell of a timer, if it fits one: the instant in `word` (`i64` nanoseconds), the
/// owner's id as its XOR with the timer's in `a` (or `Recurring`'s occurrences), the
/// transition, escalation step or named-timer index in `b`.
fn pack(id: Uuid, t: &PendingTimer) -> Option<Cell> {
    let id = id.as_u128();
    let owner = |o: Uuid| u16::try_from(id ^ o.as_u128()).ok();
    let (tag, b, a) = match t.kind {
        TimerKind::Transition { transition } => (Tag::Transition, transition, 0),
        TimerKind::Recurring { transition, fired } => {
            (Tag::Recurring, transition, u16::try_from(fired).ok()?)
        }
        TimerKind::TaskReminder { task_id } => (Tag::TaskReminder, 0, owner(task_id)?),
        TimerKind::TaskDue { task_id } => (Tag::TaskDue, 0, owner(task_id)?),
        TimerKind::TaskEscalation { task_id, step } => (Tag::TaskEscalation, step, owner(task_id)?),
        TimerKind::AlertAck { alert_id } => (Tag::AlertAck, 0, owner(alert_id)?),
        TimerKind::HandoffAccept { handoff_id } => (Tag::HandoffAccept, 0, owner(handoff_id)?),
        TimerKind::Named { timer } => (Tag::Named, timer, 0),
    };
    let at = nanos(t.fire_at)?;
    Some(Cell::entry(id, at as u64, a, b, tag as u8, 0))
}

/// The cell of a timer kept whole in the side list.
fn spilled(id: Uuid) -> Cell {
    Cell::entry(id.as_u128(), 0, 0, 0, Tag::Spilled as u8, 0)
}

/// The timer `id`'s cell holds (`None` for a spilled one).
fn unpack(id: u128, cell: &Cell) -> Option<PendingTimer> {
    Some(PendingTimer {
        fire_at: instant(cell.word as i64),
        kind: unpack_kind(id, cell)?,
    })
}

/// The kind of the timer `id`'s cell holds (`None` for a spilled one): [`unpack`]
/// without the instant.
fn unpack_kind(id: u128, cell: &Cell) -> Option<TimerKind> {
    let owner = || Uuid::from_u128(id ^ u128::from(cell.a));
    Some(match Tag::of(cell) {
        Tag::Transition => TimerKind::Transition { transition: cell.b },
        Tag::Recurring => TimerKind::Recurring {
            transition: cell.b,
            fired: u32::from(cell.a),
        },
        Tag::TaskReminder => TimerKind::TaskReminder { task_id: owner() },
        Tag::TaskDue => TimerKind::TaskDue { task_id: owner() },
        Tag::TaskEscalation => TimerKind::TaskEscalation {
            task_id: owner(),
            step: cell.b,
        },
        Tag::AlertAck => TimerKind::AlertAck { alert_id: owner() },
        Tag::HandoffAccept => TimerKind::HandoffAccept {
            handoff_id: owner(),
        },
        Tag::Named => TimerKind::Named { timer: cell.b },
        Tag::Spilled => return None,
    })
}

/// Pending timers by id, in id order: a map from [`Uuid`] to [`PendingTimer`] that hands
/// its values out by copy.
#[derive(Clone, Default, PartialEq)]
pub struct Timers {
    /// Every timer, sorted by id.
    cells: Grouped,
    /// Those a cell cannot hold, sorted by id (almost always empty: no allocation).
    spilled: SideList<PendingTimer>,
}

impl Timers {
    /// No timers (allocates nothing).
    pub const fn new() -> Timers {
        Timers {
            cells: Grouped::new(),
            spilled: SideList::new(),
        }
    }

    fn find_spilled(&self, id: &Uuid) -> Result<usize, usize> {
        self.spilled.find(id)
    }

    fn value(&self, id: u128, cell: &Cell) -> PendingTimer {
        match unpack(id, cell) {
            Some(t) => t,
            None => {
                let i = self
                    .find_spilled(&Uuid::from_u128(id))
                    .expect("a spilled cell has its timer in the side list");
                *self.spilled.get(i)
            }
        }
    }

    /// Number of timers.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.cells.len() == 0
    }

    /// The timer `id`.
    pub fn get(&self, id: &Uuid) -> Option<PendingTimer> {
        match self.cells.find(id.as_u128()) {
            Place::Found(at) => Some(self.value(id.as_u128(), self.cells.cell(at))),
            _ => None,
        }
    }

    /// Whether timer `id` is pending.
    pub fn contains_key(&self, id: &Uuid) -> bool {
        matches!(self.cells.find(id.as_u128()), Place::Found(_))
    }

    /// Put `timer` under `id`; the timer it replaces, if any.
    pub fn insert(&mut self, id: Uuid, timer: PendingTimer) -> Option<PendingTimer> {
        let old = self.remove(&id);
        let cell = pack(id, &timer).unwrap_or_else(|| {
            let i = self.find_spilled(&id).unwrap_or_else(|i| i);
            self.spilled.insert(i, id, timer);
            spilled(id)
        });
        let place = self.cells.find(id.as_u128());
        self.cells.insert(place, id.as_u128(), cell);
        old
    }

    /// Take timer `id` out.
    pub fn remove(&mut self, id: &Uuid) -> Option<PendingTimer> {
        let Place::Found(at) = self.cells.find(id.as_u128()) else {
            return None;
        };
        let cell = self.cells.remove(at);
        Some(match unpack(id.as_u128(), &cell) {
            Some(t) => t,
            None => {
                let i = self
                    .find_spilled(id)
                    .expect("a spilled cell has its timer in the side list");
                self.spilled.remove(i)
            }
        })
    }

    /// Timers in id order.
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (Uuid, PendingTimer)> + ExactSizeIterator + '_ {
        self.cells
            .iter()
            .map(|(id, c)| (Uuid::from_u128(id), self.value(id, c)))
    }

    /// The timer due first, ties broken by the lower id: the one timer of an instance
    /// the store's timer table holds.
    pub fn earliest(&self) -> Option<(Uuid, PendingTimer)> {
        self.iter().min_by_key(|(id, t)| (t.fire_at, *id))
    }

    /// Ids and kinds in id order, without their instants: for finding timers by kind
    /// (less work than [`Timers::iter`]).
    pub fn kinds(&self) -> impl DoubleEndedIterator<Item = (Uuid, TimerKind)> + '_ {
        self.cells.iter().map(|(id, c)| {
            let kind = unpack_kind(id, c).unwrap_or_else(|| self.value(id, c).kind);
            (Uuid::from_u128(id), kind)
        })
    }

    /// Ids in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = Uuid> + ExactSizeIterator + '_ {
        self.cells.iter().map(|(id, _)| Uuid::from_u128(id))
    }

    /// Timers in id order, without their ids.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = PendingTimer> + ExactSizeIterator + '_ {
        self.cells.iter().map(|(id, c)| self.value(id, c))
    }

    /// Give back the room that growing left unused.
    pub fn shrink_to_fit(&mut self) {
        self.cells.shrink_to_fit();
        self.spilled.shrink_to_fit();
    }

    /// Bytes its entries take on the heap (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        self.cells.heap_bytes() + self.spilled.heap_bytes()
    }
}

impl fmt::Debug for Timers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(Uuid, PendingTimer)> for Timers {
    /// Later timers win over earlier ones with the same id, as in a `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (Uuid, PendingTimer)>>(iter: I) -> Self {
        let mut entries: Vec<(Uuid, PendingTimer)> = iter.into_iter().collect();
        // Stable: entries of one id stay in arrival order, the last one is kept.
        entries.sort_by_key(|e| e.0);
        let mut out = Timers {
            cells: Grouped::new(),
            spilled: SideList::new(),
        };
        for (id, t) in entries {
            // The last of one id wins (insert replaces).
            out.insert(id, t);
        }
        out.shrink_to_fit();
        out
    }
}

impl Serialize for Timers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (id, t) in self.iter() {
            map.serialize_entry(&id, &t)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Timers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = Timers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of timers")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(1024));
                while let Some(entry) = access.next_entry::<Uuid, PendingTimer>()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::SignedDuration;

    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::new_v8((0x1234_5678_9abc_def0_1122_3344_5566_7788u128 ^ n).to_be_bytes())
    }

    /// Timers of every kind, owners near and far, instants inside and outside the i64
    /// nanosecond range.
    fn sample(seed: u64, n: usize) -> Vec<(Uuid, PendingTimer)> {
        crate::draws(seed)
            .take(n)
            .enumerate()
            .map(|(i, x)| {
                // Few ids, so that they collide, in three groups (ids sharing all but
                // their low 16 bits).
                let n = u128::from(x >> 59) | u128::from((x >> 56) % 3) << 40;
                let timer = id(n);
                let near = id(n ^ 3);
                let far = Uuid::from_u128(u128::from(x) << 64 | 0xdead);
                let owner = if x & 1 == 0 { near } else { far };
                let kind = match (x >> 8) % 8 {
                    0 => TimerKind::Transition { transition: 3 },
                    1 => TimerKind::Recurring {
                        transition: 2,
                        // Some fit a cell (up to 65 535), some not.
                        fired: (x >> 20) as u32 >> ((x >> 4) % 2 * 16),
                    },
                    2 => TimerKind::TaskReminder { task_id: owner },
                    3 => TimerKind::TaskDue { task_id: owner },
                    4 => TimerKind::TaskEscalation {
                        task_id: owner,
                        step: 1,
                    },
                    5 => TimerKind::AlertAck { alert_id: owner },
                    6 => TimerKind::HandoffAccept { handoff_id: owner },
                    _ => TimerKind::Named { timer: i as u16 },
                };
                let fire_at = match (x >> 12) % 4 {
                    0 => Timestamp::MAX,
                    1 => Timestamp::MIN,
                    2 => Timestamp::UNIX_EPOCH - SignedDuration::new(3_000, 123),
                    _ => Timestamp::UNIX_EPOCH + SignedDuration::new((x >> 30) as i64, 999_999_999),
                };
                (timer, PendingTimer { fire_at, kind })
            })
            .collect()
    }

    #[test]
    fn behaves_as_a_btreemap() {
        for seed in 0..50 {
            let mut tree = BTreeMap::new();
            let mut timers = Timers::new();
            for (i, (id, t)) in sample(seed, 200).into_iter().enumerate() {
                if i % 3 == 2 {
                    assert_eq!(timers.remove(&id), tree.remove(&id));
                } else {
                    assert_eq!(timers.insert(id, t), tree.insert(id, t));
                }
                assert_eq!(timers.len(), tree.len());
                assert_eq!(timers.get(&id), tree.get(&id).copied());
                assert_eq!(timers.contains_key(&id), tree.contains_key(&id));
            }
            assert!(
                timers.iter().eq(tree.iter().map(|(k, v)| (*k, *v))),
                "seed {seed}"
            );
            assert!(timers.keys().eq(tree.keys().copied()));
            assert!(timers.values().eq(tree.values().copied()));
            assert!(
                timers
                    .iter()
                    .rev()
                    .eq(tree.iter().rev().map(|(k, v)| (*k, *v)))
            );
            assert_eq!(timers.keys().len(), tree.len());
            // The earliest: by instant, then by id (the sample's instants collide).
            let earliest = tree
                .iter()
                .min_by(|a, b| (a.1.fire_at, a.0).cmp(&(b.1.fire_at, b.0)))
                .map(|(k, v)| (*k, *v));
            assert_eq!(timers.earliest(), earliest, "seed {seed}");
            assert_eq!(format!("{timers:?}"), format!("{tree:?}"));
            let rebuilt: Timers = tree.iter().map(|(k, v)| (*k, *v)).collect();
            assert_eq!(rebuilt, timers, "the layout depends on the timers alone");
        }
    }

    #[test]
    fn encodes_as_a_btreemap_and_back() {
        let entries = sample(7, 60);
        let tree: BTreeMap<Uuid, PendingTimer> = entries.iter().copied().collect();
        let timers: Timers = entries.into_iter().collect();
        let json = serde_json::to_string(&timers).expect("json");
        assert_eq!(json, serde_json::to_string(&tree).expect("json"));
        let back: Timers = serde_json::from_str(&json).expect("back");
        assert_eq!(back, timers);
    }

    #[test]
    fn a_task_timer_takes_16_bytes() {
        let task = id(40);
        let timers: Timers = (41..44)
            .map(|n| {
                (
                    id(n),
                    PendingTimer {
                        fire_at: Timestamp::UNIX_EPOCH + SignedDuration::from_hours(500_000),
                        kind: TimerKind::TaskDue { task_id: task },
                    },
                )
            })
            .collect();
        // Three timers and their group's header.
        assert_eq!(timers.heap_bytes(), 4 * 16);
        // The map itself (in its `Arc` block): cells, their count, the side list's pointer.
        assert_eq!(size_of::<Timers>(), 40);
        assert!(timers.spilled.is_empty());
        assert!(timers.values().all(|t| t.kind.owner() == Some(task)));
    }
}

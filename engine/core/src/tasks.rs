//! [`Tasks`]: an instance's open tasks by id, 16 bytes each.
//!
//! A heart-failure instance holds about seven open tasks. Kept as `(Uuid, OpenTask)`
//! pairs a task takes 72 bytes: its id 16, two 16-byte `Arc<str>` (its code and role, the
//! pathway's own copies) and a 16-byte jiff `Timestamp`. Here it takes one 16-byte cell
//! of a `Grouped` vector (`grouped.rs`, as the timers): the id's low 16 bits (the other
//! 112 in its group's header, shared by the tasks one decision requested), the code and
//! role as positions in the pathway's table of names ([`CompiledPathway::names`]), which
//! the map holds once, and the due time as `i64` nanoseconds since the epoch.
//!
//! That is only a layout: a task it cannot hold that way (a name not in the table — no
//! table yet, or a task of another version of the pathway — or a due time outside 1677 to
//! 2262) is kept whole in a side list, so any task is held exactly. Equality is that of
//! the tasks, whatever their layout. Iteration, `Debug` and serde (a map, keys in order)
//! are those of a `BTreeMap<Uuid, OpenTask>`, so JSON and bincode encodings are
//! unchanged.

use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::grouped::{Cell, Grouped, Place, SideList};
use crate::model::CompiledPathway;
use crate::state::OpenTask;
use crate::timers::{instant, nanos};

/// A table of names, sorted and unique (a pathway's).
pub type Names = Arc<[Arc<str>]>;

/// A task's cell: packed, or "kept whole in the side list".
const PACKED: u8 = 0;
const SPILLED: u8 = 1;

fn position(names: &Names, name: &str) -> Option<u16> {
    let i = names.binary_search_by(|n| (**n).cmp(name)).ok()?;
    u16::try_from(i).ok()
}

/// The cell of a task, if it fits one: the due time in `word` (`i64` nanoseconds), the
/// code's and the role's positions in the table in `a` and `b`, overdue in `flag`.
fn pack(id: Uuid, t: &OpenTask, names: Option<&Names>) -> Option<Cell> {
    let names = names?;
    Some(Cell::entry(
        id.as_u128(),
        nanos(t.due_at)? as u64,
        position(names, &t.code)?,
        position(names, &t.role)?,
        PACKED,
        u8::from(t.overdue),
    ))
}

fn spilled(id: Uuid) -> Cell {
    Cell::entry(id.as_u128(), 0, 0, 0, SPILLED, 0)
}

/// Open tasks by id, in id order: a map from [`Uuid`] to [`OpenTask`] that hands its
/// values out by copy (names are shared `Arc<str>`).
#[derive(Clone, Default)]
pub struct Tasks {
    /// Every task, sorted by id.
    cells: Grouped,
    /// Those a cell cannot hold, sorted by id (almost always empty: no allocation).
    spilled: SideList<OpenTask>,
    /// The table the cells' names point into.
    names: Option<Names>,
}

impl Tasks {
    /// No tasks (allocates nothing).
    pub const fn new() -> Tasks {
        Tasks {
            cells: Grouped::new(),
            spilled: SideList::new(),
            names: None,
        }
    }

    fn find_spilled(&self, id: &Uuid) -> Result<usize, usize> {
        self.spilled.find(id)
    }

    fn value(&self, id: u128, cell: &Cell) -> OpenTask {
        match (&self.names, cell.tag) {
            (Some(names), PACKED) => OpenTask {
                code: names[usize::from(cell.a)].clone(),
                role: names[usize::from(cell.b)].clone(),
                due_at: instant(cell.word as i64),
                overdue: cell.flag != 0,
            },
            _ => {
                let i = self
                    .find_spilled(&Uuid::from_u128(id))
                    .expect("a spilled cell has its task in the side list");
                self.spilled.get(i).clone()
            }
        }
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.cells.len() == 0
    }

    /// The task `id`.
    pub fn get(&self, id: &Uuid) -> Option<OpenTask> {
        match self.cells.find(id.as_u128()) {
            Place::Found(at) => Some(self.value(id.as_u128(), self.cells.cell(at))),
            _ => None,
        }
    }

    /// Whether task `id` is open.
    pub fn contains_key(&self, id: &Uuid) -> bool {
        matches!(self.cells.find(id.as_u128()), Place::Found(_))
    }

    /// Put `task` under `id`; the task it replaces, if any.
    pub fn insert(&mut self, id: Uuid, task: OpenTask) -> Option<OpenTask> {
        let old = self.remove(&id);
        let cell = match pack(id, &task, self.names.as_ref()) {
            Some(cell) => cell,
            None => {
                let i = self.find_spilled(&id).unwrap_or_else(|i| i);
                self.spilled.insert(i, id, task);
                spilled(id)
            }
        };
        let place = self.cells.find(id.as_u128());
        self.cells.insert(place, id.as_u128(), cell);
        old
    }

    /// Take task `id` out.
    pub fn remove(&mut self, id: &Uuid) -> Option<OpenTask> {
        let Place::Found(at) = self.cells.find(id.as_u128()) else {
            return None;
        };
        let value = self.value(id.as_u128(), self.cells.cell(at));
        if self.cells.remove(at).tag == SPILLED {
            let j = self
                .find_spilled(id)
                .expect("a spilled cell has its task in the side list");
            self.spilled.remove(j);
        }
        Some(value)
    }

    /// Mark task `id` overdue; whether it is open.
    pub fn set_overdue(&mut self, id: &Uuid) -> bool {
        let Place::Found(at) = self.cells.find(id.as_u128()) else {
            return false;
        };
        if self.cells.cell(at).tag == SPILLED {
            if let Some(t) = self
                .find_spilled(id)
                .ok()
                .and_then(|j| self.spilled.get_mut(j))
            {
                t.overdue = true;
            }
        } else {
            self.cells.cell_mut(at).flag = 1;
        }
        true
    }

    /// Tasks in id order.
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (Uuid, OpenTask)> + ExactSizeIterator + '_ {
        self.cells
            .iter()
            .map(|(id, c)| (Uuid::from_u128(id), self.value(id, c)))
    }

    /// Ids in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = Uuid> + ExactSizeIterator + '_ {
        self.cells.iter().map(|(id, _)| Uuid::from_u128(id))
    }

    /// Tasks in id order, without their ids.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = OpenTask> + ExactSizeIterator + '_ {
        self.cells.iter().map(|(id, c)| self.value(id, c))
    }

    /// Hold names as positions in `pathway`'s table from now on (each task put back
    /// under it when the table changes; nothing observable changes).
    pub fn use_names(&mut self, pathway: &CompiledPathway) {
        let names = pathway.names();
        if !self
            .names
            .as_ref()
            .is_some_and(|mine| Arc::ptr_eq(mine, names))
        {
            let tasks: Vec<(Uuid, OpenTask)> = self.iter().collect();
            *self = Tasks {
                cells: Grouped::new(),
                spilled: SideList::new(),
                names: Some(names.clone()),
            };
            for (id, t) in tasks {
                self.insert(id, t);
            }
        }
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

impl PartialEq for Tasks {
    fn eq(&self, other: &Tasks) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(Uuid, OpenTask)> for Tasks {
    /// Later tasks win over earlier ones with the same id, as in a `BTreeMap`. No table
    /// yet: see [`Tasks::use_names`].
    fn from_iter<I: IntoIterator<Item = (Uuid, OpenTask)>>(iter: I) -> Self {
        let mut out = Tasks::new();
        for (id, t) in iter {
            out.insert(id, t);
        }
        out.shrink_to_fit();
        out
    }
}

impl Serialize for Tasks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (id, t) in self.iter() {
            map.serialize_entry(&id, &t)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Tasks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = Tasks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of tasks")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut out = Tasks::new();
                while let Some((id, t)) = access.next_entry::<Uuid, OpenTask>()? {
                    out.insert(id, t);
                }
                out.shrink_to_fit();
                Ok(out)
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::{SignedDuration, Timestamp};

    use super::*;

    fn names() -> Names {
        ["coordinator", "gp", "gp-visit", "nurse", "obtain-consent"]
            .into_iter()
            .map(Arc::from)
            .collect()
    }

    /// Tasks with names in the table and not, due times inside and outside the i64
    /// nanosecond range.
    fn sample(seed: u64, n: usize) -> Vec<(Uuid, OpenTask)> {
        let table = names();
        crate::draws(seed)
            .take(n)
            .map(|x| {
                // Few ids, so that they collide, in three groups (ids sharing all but
                // their low 16 bits).
                let id = Uuid::from_u128(u128::from(x >> 59) | u128::from((x >> 56) % 3) << 40);
                let name = |k: u64| match k % 6 {
                    5 => Arc::from("not-in-the-table"),
                    k => table[k as usize].clone(),
                };
                let due_at = match (x >> 12) % 3 {
                    0 => Timestamp::MAX,
                    1 => Timestamp::UNIX_EPOCH - SignedDuration::new(3_000, 123),
                    _ => Timestamp::UNIX_EPOCH + SignedDuration::new((x >> 30) as i64, 7),
                };
                let task = OpenTask {
                    code: name(x >> 20),
                    role: name(x >> 24),
                    due_at,
                    overdue: x & 1 == 0,
                };
                (id, task)
            })
            .collect()
    }

    fn with_table() -> Tasks {
        Tasks {
            names: Some(names()),
            ..Tasks::new()
        }
    }

    #[test]
    fn behaves_as_a_btreemap() {
        for seed in 0..50 {
            for mut tasks in [Tasks::new(), with_table()] {
                let mut tree = BTreeMap::new();
                for (i, (id, t)) in sample(seed, 200).into_iter().enumerate() {
                    match i % 4 {
                        2 => assert_eq!(tasks.remove(&id), tree.remove(&id)),
                        3 => {
                            let open = tree.get_mut(&id).map(|t: &mut OpenTask| t.overdue = true);
                            assert_eq!(tasks.set_overdue(&id), open.is_some());
                        }
                        _ => assert_eq!(tasks.insert(id, t.clone()), tree.insert(id, t)),
                    }
                    assert_eq!(tasks.len(), tree.len());
                    assert_eq!(tasks.get(&id).as_ref(), tree.get(&id));
                    assert_eq!(tasks.contains_key(&id), tree.contains_key(&id));
                }
                let pairs = || tree.iter().map(|(k, v)| (*k, v.clone()));
                assert!(tasks.iter().eq(pairs()), "seed {seed}");
                assert!(tasks.keys().eq(tree.keys().copied()));
                assert!(tasks.values().eq(tree.values().cloned()));
                assert!(tasks.iter().rev().eq(pairs().rev()));
                assert_eq!(tasks.keys().len(), tree.len());
                assert_eq!(format!("{tasks:?}"), format!("{tree:?}"));
                let rebuilt: Tasks = pairs().collect();
                assert_eq!(rebuilt, tasks, "equal whatever the layout");
            }
        }
    }

    #[test]
    fn encodes_as_a_btreemap_and_back() {
        let entries = sample(7, 60);
        let tree: BTreeMap<Uuid, OpenTask> = entries.iter().cloned().collect();
        let tasks: Tasks = entries.into_iter().collect();
        let json = serde_json::to_string(&tasks).expect("json");
        assert_eq!(json, serde_json::to_string(&tree).expect("json"));
        let back: Tasks = serde_json::from_str(&json).expect("back");
        assert_eq!(back, tasks);
    }

    #[test]
    fn a_task_of_the_table_takes_16_bytes_and_shares_its_names() {
        let table = names();
        let mut tasks = with_table();
        for n in 0..3u128 {
            let task = OpenTask {
                code: Arc::from("gp-visit"),
                role: Arc::from("gp"),
                due_at: Timestamp::UNIX_EPOCH + SignedDuration::from_hours(500_000),
                overdue: false,
            };
            tasks.insert(Uuid::from_u128(n), task);
        }
        tasks.shrink_to_fit();
        // Three tasks and their group's header.
        assert_eq!(tasks.heap_bytes(), 4 * 16);
        // The map itself: cells, their count, the side list's pointer, the table.
        assert_eq!(size_of::<Tasks>(), 56);
        let names = tasks.names.clone().expect("a table");
        for t in tasks.values() {
            assert!(Arc::ptr_eq(&t.code, &names[2]) && *t.code == *table[2]);
            assert!(Arc::ptr_eq(&t.role, &names[1]));
        }
    }
}

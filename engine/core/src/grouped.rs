//! [`Grouped`]: the sorted vector under [`Timers`](crate::timers::Timers) and
//! [`Tasks`](crate::tasks::Tasks), 16 bytes an entry.
//!
//! Ids made while deciding one event are `base ^ n` with a small `n`
//! ([`mod@crate::decide`]): the timers and tasks one decision schedules share the high 112
//! bits of their ids and differ in the low 16. So an entry keeps only its id's low 16 bits,
//! and a header before the entries of each group keeps the high 112 bits they share: a
//! header costs one entry's room, the 16 bytes each entry saves on its id pay for it from
//! the second entry on.
//!
//! The cells are: a header, its group's entries in order of their low bits, the next
//! header (groups in order of their high bits), … — so walking them gives the ids in
//! order, and the cells are a function of the entries alone (no group empty, none split).
//! What an entry holds beside its id's low bits (a `u64`, two `u16` and two bytes) is its
//! owner's business.

use uuid::Uuid;

/// One cell: a group's header or one entry of the group it follows. 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cell {
    /// Entry: its owner's (an instant). Header: bits 127–64 of the group's ids.
    pub(crate) word: u64,
    /// Entry: the low 16 bits of its id. Header: bits 63–48.
    pub(crate) lo: u16,
    /// Entry: its owner's. Header: bits 47–32.
    pub(crate) a: u16,
    /// Entry: its owner's. Header: bits 31–16.
    pub(crate) b: u16,
    /// Entry: its owner's kind, never [`HEADER`]. Header: [`HEADER`].
    pub(crate) tag: u8,
    /// Entry: its owner's. Header: 0.
    pub(crate) flag: u8,
}

/// The tag of a header cell; no entry may use it.
pub(crate) const HEADER: u8 = u8::MAX;

/// Bits an id shares with its group (all but the low 16).
const GROUP: u128 = !0xffff;

impl Cell {
    /// An entry's cell, with the low bits of `id` and its owner's fields.
    pub(crate) fn entry(id: u128, word: u64, a: u16, b: u16, tag: u8, flag: u8) -> Cell {
        debug_assert_ne!(tag, HEADER);
        Cell {
            word,
            lo: id as u16,
            a,
            b,
            tag,
            flag,
        }
    }

    fn header(id: u128) -> Cell {
        Cell {
            word: (id >> 64) as u64,
            lo: (id >> 48) as u16,
            a: (id >> 32) as u16,
            b: (id >> 16) as u16,
            tag: HEADER,
            flag: 0,
        }
    }

    fn is_header(&self) -> bool {
        self.tag == HEADER
    }

    /// A header's group: its ids with their low 16 bits zero.
    fn group(&self) -> u128 {
        u128::from(self.word) << 64
            | u128::from(self.lo) << 48
            | u128::from(self.a) << 32
            | u128::from(self.b) << 16
    }
}

/// Where an id is, or would go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// The cell of its entry.
    Found(usize),
    /// Not there: its entry would go at this cell, in its group already there.
    InGroup(usize),
    /// Not there, nor any of its group: its group's header and its entry would go here.
    NewGroup(usize),
}

/// Entries by id (`u128`), in groups sharing their high 112 bits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grouped {
    cells: Vec<Cell>,
    /// Entries (cells that are not headers).
    len: usize,
}

impl Grouped {
    pub(crate) const fn new() -> Grouped {
        Grouped {
            cells: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Where `id` is or would go: groups are skipped header to header, then the group's
    /// entries are searched (both in a few cells at these sizes).
    pub(crate) fn find(&self, id: u128) -> Place {
        let (group, lo) = (id & GROUP, id as u16);
        let cells = &self.cells;
        let mut i = 0;
        while i < cells.len() {
            let header = cells[i].group();
            if header > group {
                return Place::NewGroup(i);
            }
            let start = i + 1;
            let end = cells[start..]
                .iter()
                .position(Cell::is_header)
                .map_or(cells.len(), |n| start + n);
            if header == group {
                return match cells[start..end].binary_search_by_key(&lo, |c| c.lo) {
                    Ok(n) => Place::Found(start + n),
                    Err(n) => Place::InGroup(start + n),
                };
            }
            i = end;
        }
        Place::NewGroup(cells.len())
    }

    pub(crate) fn cell(&self, at: usize) -> &Cell {
        &self.cells[at]
    }

    /// An entry's cell, to change its owner's fields (not its id).
    pub(crate) fn cell_mut(&mut self, at: usize) -> &mut Cell {
        &mut self.cells[at]
    }

    /// Put the entry `cell` of `id` where [`Grouped::find`] said it is missing.
    pub(crate) fn insert(&mut self, place: Place, id: u128, cell: Cell) {
        match place {
            Place::Found(at) => self.cells[at] = cell,
            Place::InGroup(at) => {
                self.cells.insert(at, cell);
                self.len += 1;
            }
            Place::NewGroup(at) => {
                self.cells
                    .splice(at..at, [Cell::header(id), cell])
                    .for_each(drop);
                self.len += 1;
            }
        }
    }

    /// Take out the entry at cell `at` (a [`Place::Found`]), and its group's header if it
    /// was the group's last entry.
    pub(crate) fn remove(&mut self, at: usize) -> Cell {
        let cell = self.cells.remove(at);
        self.len -= 1;
        let alone =
            self.cells[at - 1].is_header() && self.cells.get(at).is_none_or(Cell::is_header);
        if alone {
            self.cells.remove(at - 1);
        }
        cell
    }

    /// Entries in id order, with their ids.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            cells: &self.cells,
            front: 0,
            back: None,
            len: self.len,
        }
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.cells.shrink_to_fit();
    }

    /// Bytes its cells take on the heap (capacity, not length).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.cells.capacity() * size_of::<Cell>()
    }
}

/// Entries of a [`Grouped`] in id order, both ways.
#[derive(Clone, Debug)]
pub(crate) struct Iter<'a> {
    /// The cells not walked yet from either end.
    cells: &'a [Cell],
    /// The group of the last header walked from the front.
    front: u128,
    /// The group of the last entry walked from the back, while still in it.
    back: Option<u128>,
    /// Entries left.
    len: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (u128, &'a Cell);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (cell, rest) = self.cells.split_first()?;
            self.cells = rest;
            if cell.is_header() {
                self.front = cell.group();
            } else {
                self.len -= 1;
                return Some((self.front | u128::from(cell.lo), cell));
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len, Some(self.len))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        loop {
            let (cell, rest) = self.cells.split_last()?;
            self.cells = rest;
            if cell.is_header() {
                self.back = None;
                continue;
            }
            // The group's header: the nearest one before, or the one the front walked.
            let group = *self.back.get_or_insert_with(|| {
                rest.iter()
                    .rev()
                    .find(|c| c.is_header())
                    .map_or(self.front, Cell::group)
            });
            self.len -= 1;
            return Some((group | u128::from(cell.lo), cell));
        }
    }
}

impl ExactSizeIterator for Iter<'_> {}

/// What a cell cannot hold, whole, by id (sorted): almost always empty, so kept behind
/// one thin pointer (8 bytes in the map, where a `Vec` took 24) and no allocation.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::box_collection,
    reason = "a boxed Vec is one thin pointer: 8 bytes in every map, not 24 (Vec) or 16 (boxed slice)"
)]
pub(crate) struct SideList<T>(Option<Box<Vec<(Uuid, T)>>>);

impl<T> Default for SideList<T> {
    fn default() -> Self {
        SideList::new()
    }
}

impl<T> SideList<T> {
    pub(crate) const fn new() -> SideList<T> {
        SideList(None)
    }

    fn entries(&self) -> &[(Uuid, T)] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Where `id` is (`Ok`) or would go (`Err`).
    pub(crate) fn find(&self, id: &Uuid) -> Result<usize, usize> {
        self.entries().binary_search_by(|(s, _)| s.cmp(id))
    }

    pub(crate) fn get(&self, at: usize) -> &T {
        &self.entries()[at].1
    }

    pub(crate) fn get_mut(&mut self, at: usize) -> Option<&mut T> {
        Some(&mut self.0.as_mut()?.get_mut(at)?.1)
    }

    /// Put `value` under `id` at `at` (an `Err` of [`SideList::find`]).
    pub(crate) fn insert(&mut self, at: usize, id: Uuid, value: T) {
        self.0.get_or_insert_default().insert(at, (id, value));
    }

    /// Take out the entry at `at` (an `Ok` of [`SideList::find`]); none left, no
    /// allocation left.
    pub(crate) fn remove(&mut self, at: usize) -> T {
        let entries = self.0.as_mut().expect("an entry to remove");
        let (_, value) = entries.remove(at);
        if entries.is_empty() {
            self.0 = None;
        }
        value
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        if let Some(entries) = &mut self.0 {
            entries.shrink_to_fit();
        }
    }

    /// Bytes it takes on the heap (capacity, not length).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |e| {
            size_of::<Vec<(Uuid, T)>>() + e.capacity() * size_of::<(Uuid, T)>()
        })
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn entry(id: u128, n: u64) -> Cell {
        Cell::entry(id, n, 1, 2, 3, 4)
    }

    /// Ids in few groups, so that groups fill, empty and come back.
    fn ids(seed: u64, n: usize) -> Vec<u128> {
        crate::draws(seed)
            .take(n)
            .map(|x| {
                let group = u128::from((x >> 60) % 5) << 100 | u128::from((x >> 50) % 3) << 16;
                group | u128::from((x >> 40) % 8)
            })
            .collect()
    }

    #[test]
    fn behaves_as_a_btreemap_walked_both_ways() {
        for seed in 0..100 {
            let mut tree = BTreeMap::new();
            let mut grouped = Grouped::new();
            for (i, id) in ids(seed, 300).into_iter().enumerate() {
                let place = grouped.find(id);
                assert_eq!(matches!(place, Place::Found(_)), tree.contains_key(&id));
                if i % 3 == 2 {
                    if let Place::Found(at) = place {
                        assert_eq!(Some(grouped.remove(at).word), tree.remove(&id));
                    }
                } else {
                    grouped.insert(place, id, entry(id, i as u64));
                    tree.insert(id, i as u64);
                }
                assert_eq!(grouped.len(), tree.len());
                let pairs = || grouped.iter().map(|(id, c)| (id, c.word));
                assert!(pairs().eq(tree.iter().map(|(k, v)| (*k, *v))));
                assert!(pairs().rev().eq(tree.iter().rev().map(|(k, v)| (*k, *v))));
                // Both ends at once: every entry once, in order from either side.
                let mut it = grouped.iter();
                let (mut front, mut back) = (Vec::new(), Vec::new());
                for k in 0.. {
                    let next = if k % 3 == 0 {
                        it.next_back()
                    } else {
                        it.next()
                    };
                    match next {
                        Some(e) if k % 3 == 0 => back.push(e.0),
                        Some(e) => front.push(e.0),
                        None => break,
                    }
                    assert_eq!(it.len(), tree.len() - front.len() - back.len());
                }
                front.extend(back.into_iter().rev());
                assert!(front.iter().eq(tree.keys()));
            }
            let rebuilt = tree.keys().fold(Grouped::new(), |mut g, &id| {
                g.insert(g.find(id), id, entry(id, tree[&id]));
                g
            });
            assert_eq!(rebuilt, grouped, "the cells are a function of the entries");
        }
    }

    #[test]
    fn a_group_of_three_takes_four_cells() {
        assert_eq!(size_of::<Cell>(), 16);
        let base = 0x0123_4567_89ab_cdef_0011_2233_4455_0000u128;
        let mut grouped = Grouped::new();
        for n in [5, 1, 9] {
            grouped.insert(grouped.find(base ^ n), base ^ n, entry(base ^ n, 0));
        }
        grouped.shrink_to_fit();
        assert_eq!(grouped.heap_bytes(), 4 * 16);
    }
}

//! Where each slot of a version sits in the member vectors of its lists, in
//! the order of its record's lists: what lets a face leave a list without a
//! search of the list's members.

use std::collections::HashMap;

use smallvec::SmallVec;

/// No list: the slot's first place is unused.
const NONE: u32 = u32::MAX;

/// The places of every slot. Most faces are in one list at most, so the
/// first place is a flat column of 4 bytes a slot (a small vector a slot
/// took 24); the places of a second list on are kept aside, by slot.
#[derive(Default)]
pub(crate) struct Places {
    first: Vec<u32>,
    more: HashMap<u32, SmallVec<[u32; 2]>>,
}

impl Places {
    /// Append the places of a new slot (the next one).
    pub fn push(&mut self, places: impl IntoIterator<Item = u32>) {
        let slot = self.first.len() as u32;
        let mut places = places.into_iter();
        self.first.push(places.next().unwrap_or(NONE));
        let more: SmallVec<[u32; 2]> = places.collect();
        if !more.is_empty() {
            self.more.insert(slot, more);
        }
    }

    /// The slot's places, list by list.
    pub fn of(&self, slot: usize) -> impl Iterator<Item = u32> + '_ {
        let first = Some(self.first[slot]).filter(|&p| p != NONE);
        first.into_iter().chain(self.more.get(&(slot as u32)).into_iter().flatten().copied())
    }

    /// Set the slot's place in its `at`-th list.
    pub fn set(&mut self, slot: usize, at: usize, place: u32) {
        match at {
            0 => self.first[slot] = place,
            _ => self.more.get_mut(&(slot as u32)).expect("a place of a later list")[at - 1] = place,
        }
    }

    /// The slot's place in a list it has joined, after its others.
    pub fn append(&mut self, slot: usize, place: u32) {
        if self.first[slot] == NONE {
            self.first[slot] = place;
        } else {
            self.more.entry(slot as u32).or_default().push(place);
        }
    }

    /// Take out the slot's place in its `at`-th list; the later ones move up.
    pub fn remove(&mut self, slot: usize, at: usize) -> u32 {
        let key = slot as u32;
        let Some(more) = self.more.get_mut(&key) else {
            debug_assert_eq!(at, 0, "a slot in one list");
            return std::mem::replace(&mut self.first[slot], NONE);
        };
        let place = match at {
            0 => std::mem::replace(&mut self.first[slot], more.remove(0)),
            _ => more.remove(at - 1),
        };
        if more.is_empty() {
            self.more.remove(&key);
        }
        place
    }

    /// Forget a slot; the last slot takes its number.
    pub fn swap_remove(&mut self, slot: usize) {
        let last = (self.first.len() - 1) as u32;
        self.first.swap_remove(slot);
        self.more.remove(&(slot as u32));
        if let Some(moved) = self.more.remove(&last).filter(|_| slot as u32 != last) {
            self.more.insert(slot as u32, moved);
        }
    }
}

//! Which lists each slot of a version is in, and where it sits in each
//! list's member vector, in the order the face joined them: what lets a face
//! leave a list without a search of the list's members. Lists are numbered
//! within the version ([`MemberLists`]), so a membership takes 8 bytes.

use std::collections::HashMap;

use smallvec::SmallVec;
use uuid::Uuid;

/// A slot's membership of one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Membership {
    /// The list's number in [`MemberLists`].
    pub list: u32,
    /// The slot's index in that list's members.
    pub place: u32,
}

/// No list: the slot's first membership is unused.
const NONE: Membership = Membership { list: u32::MAX, place: u32::MAX };

/// The memberships of every slot. Most faces are in one list at most, so the
/// first is a flat column of 8 bytes a slot (the list ids a record kept
/// inline took 24); those of a second list on are kept aside, by slot.
#[derive(Default)]
pub(crate) struct Memberships {
    first: Vec<Membership>,
    more: HashMap<u32, SmallVec<[Membership; 1]>>,
}

impl Memberships {
    /// Append the memberships of a new slot (the next one).
    pub fn push(&mut self, memberships: impl IntoIterator<Item = Membership>) {
        let slot = self.first.len() as u32;
        let mut memberships = memberships.into_iter();
        self.first.push(memberships.next().unwrap_or(NONE));
        let more: SmallVec<[Membership; 1]> = memberships.collect();
        if !more.is_empty() {
            self.more.insert(slot, more);
        }
    }

    /// The slot's memberships, in the order it joined the lists.
    pub fn of(&self, slot: usize) -> impl Iterator<Item = Membership> + '_ {
        let first = Some(self.first[slot]).filter(|m| *m != NONE);
        // A slot in no list has nothing aside: the table is not asked.
        let more = first.and_then(|_| self.more.get(&(slot as u32)));
        first.into_iter().chain(more.into_iter().flatten().copied())
    }

    /// Which of the slot's memberships is of `list`, if any.
    pub fn position(&self, slot: usize, list: u32) -> Option<usize> {
        self.of(slot).position(|m| m.list == list)
    }

    /// Set the slot's place in its `at`-th list.
    pub fn set_place(&mut self, slot: usize, at: usize, place: u32) {
        match at {
            0 => self.first[slot].place = place,
            _ => self.more.get_mut(&(slot as u32)).expect("a membership of a later list")[at - 1].place = place,
        }
    }

    /// The slot joins a list, after its others.
    pub fn append(&mut self, slot: usize, membership: Membership) {
        if self.first[slot] == NONE {
            self.first[slot] = membership;
        } else {
            self.more.entry(slot as u32).or_default().push(membership);
        }
    }

    /// Take out the slot's `at`-th membership; the later ones move up.
    pub fn remove(&mut self, slot: usize, at: usize) -> Membership {
        let key = slot as u32;
        let Some(more) = self.more.get_mut(&key) else {
            debug_assert_eq!(at, 0, "a slot in one list");
            return std::mem::replace(&mut self.first[slot], NONE);
        };
        let membership = match at {
            0 => std::mem::replace(&mut self.first[slot], more.remove(0)),
            _ => more.remove(at - 1),
        };
        if more.is_empty() {
            self.more.remove(&key);
        }
        membership
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

/// The lists with members in one version, numbered: a number is given when
/// a list gets its first member here and taken back with its last, so the
/// numbers stay as few as the lists with members.
#[derive(Default)]
pub(crate) struct MemberLists {
    numbers: HashMap<Uuid, u32>,
    /// By number: the list's id and its members' slots, in no particular order.
    lists: Vec<(Uuid, Vec<u32>)>,
    /// Numbers given back, for the next list.
    free: Vec<u32>,
}

impl MemberLists {
    /// The number of a list with members here.
    pub fn number(&self, list_id: &Uuid) -> Option<u32> {
        self.numbers.get(list_id).copied()
    }

    /// The number of a list, given now if it has no members yet.
    pub fn number_or_add(&mut self, list_id: Uuid) -> u32 {
        if let Some(&n) = self.numbers.get(&list_id) {
            return n;
        }
        let n = match self.free.pop() {
            Some(n) => {
                self.lists[n as usize] = (list_id, Vec::new());
                n
            }
            None => {
                self.lists.push((list_id, Vec::new()));
                (self.lists.len() - 1) as u32
            }
        };
        self.numbers.insert(list_id, n);
        n
    }

    /// The id of list `n`.
    pub fn id(&self, n: u32) -> Uuid {
        self.lists[n as usize].0
    }

    /// The members' slots of list `n`.
    pub fn members(&self, n: u32) -> &[u32] {
        &self.lists[n as usize].1
    }

    /// The members' slots of list `n`, to change.
    pub fn members_mut(&mut self, n: u32) -> &mut Vec<u32> {
        &mut self.lists[n as usize].1
    }

    /// List `n` has no members left: its number is free again.
    pub fn release(&mut self, n: u32) {
        let (id, members) = &mut self.lists[n as usize];
        debug_assert!(members.is_empty(), "a list with members keeps its number");
        *members = Vec::new();
        self.numbers.remove(id);
        self.free.push(n);
    }

    /// Lists with members here.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.numbers.len()
    }
}

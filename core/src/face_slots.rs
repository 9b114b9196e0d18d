//! Where each face of the in-memory index lives, found by its id.
//!
//! The table keeps 8 bytes a face (its version and slot), not the id: a
//! probe reads the id back from the face's record, which holds it anyway.
//! A `HashMap<Uuid, (u32, usize)>` took 32 bytes a bucket, about 66 bytes
//! a face at 1M faces.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use uuid::Uuid;

/// A face's version and slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Place {
    pub version: u32,
    pub slot: u32,
}

/// Face id -> [`Place`]; every call is given `id_at`, the id of the face at a place.
#[derive(Default)]
pub struct FaceSlots {
    table: HashTable<Place>,
    hasher: RandomState,
}

impl FaceSlots {
    /// Faces held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Where `face_id` is.
    pub fn get(&self, face_id: &Uuid, id_at: impl Fn(Place) -> Uuid) -> Option<Place> {
        self.table.find(self.hasher.hash_one(face_id), |&p| id_at(p) == *face_id).copied()
    }

    /// Record a face not held yet, at a place `id_at` already answers for.
    pub fn insert(&mut self, face_id: &Uuid, place: Place, id_at: impl Fn(Place) -> Uuid) {
        let hasher = &self.hasher;
        self.table.insert_unique(hasher.hash_one(face_id), place, |&p| hasher.hash_one(id_at(p)));
    }

    /// Room for `additional` more faces without growing.
    pub fn reserve(&mut self, additional: usize, id_at: impl Fn(Place) -> Uuid) {
        let hasher = &self.hasher;
        self.table.reserve(additional, |&p| hasher.hash_one(id_at(p)));
    }

    /// Forget `face_id`, still at its place for `id_at`; where it was.
    pub fn remove(&mut self, face_id: &Uuid, id_at: impl Fn(Place) -> Uuid) -> Option<Place> {
        let entry = self.table.find_entry(self.hasher.hash_one(face_id), |&p| id_at(p) == *face_id).ok()?;
        Some(entry.remove().0)
    }

    /// `face_id`, recorded at `from`, moves to `to`.
    pub fn moved(&mut self, face_id: &Uuid, from: Place, to: Place) {
        if let Some(place) = self.table.find_mut(self.hasher.hash_one(face_id), |&p| p == from) {
            *place = to;
        }
    }
}

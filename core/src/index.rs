//! The in-memory copy of the store that matching reads: for each descriptor
//! version, the descriptors in one contiguous 64-byte-aligned array, with the
//! norms and the face attributes the filters and targets need, slot by slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;
use uuid::Uuid;

use crate::descriptor::{Descriptor, Dtype, VersionSpec};
use crate::face_slots::{FaceSlots, Place};
use crate::kernels::Kernels;
use crate::memberships::{MemberLists, Membership, Memberships};
use crate::store::Op;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

/// Rows of equal size, each padded with zeros to whole 64-byte blocks.
pub struct Rows {
    blocks: Vec<Block>,
    row_blocks: usize,
}

impl Rows {
    fn new(row_bytes: usize) -> Rows {
        Rows { blocks: Vec::new(), row_blocks: row_bytes.div_ceil(64) }
    }

    /// Bytes a row takes, padding included.
    #[inline]
    pub fn row_bytes(&self) -> usize {
        self.row_blocks * 64
    }

    fn push(&mut self, bytes: &[u8]) {
        let start = self.blocks.len();
        self.blocks.resize(start + self.row_blocks, Block([0; 64]));
        self.bytes_mut(start)[..bytes.len()].copy_from_slice(bytes);
    }

    fn swap_remove(&mut self, row: usize) {
        let last = self.blocks.len() / self.row_blocks - 1;
        if row != last {
            let (rb, src) = (self.row_blocks, last * self.row_blocks);
            self.blocks.copy_within(src..src + rb, row * rb);
        }
        self.blocks.truncate(last * self.row_blocks);
    }

    fn bytes_mut(&mut self, first_block: usize) -> &mut [u8] {
        let blocks = &mut self.blocks[first_block..first_block + self.row_blocks];
        // Block is 64 plain bytes, so a run of blocks is a run of bytes.
        unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr() as *mut u8, blocks.len() * 64) }
    }

    /// Rows `first..first + n` as one run of bytes, padding included.
    /// Inlined, as the row accessors below, into scans built in other crates
    /// too (the plugin helper's `FlatIndex<String>`), which read rows one by one.
    #[inline]
    pub fn u8_rows(&self, first: usize, n: usize) -> &[u8] {
        let blocks = &self.blocks[first * self.row_blocks..(first + n) * self.row_blocks];
        unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, blocks.len() * 64) }
    }

    /// A row's bytes, padding included.
    #[inline]
    pub fn u8_row(&self, row: usize) -> &[u8] {
        self.u8_rows(row, 1)
    }

    /// A row as f32 elements, padding included.
    #[inline]
    pub fn f32_row(&self, row: usize) -> &[f32] {
        let bytes = self.u8_row(row);
        // 64-byte aligned and a multiple of 4 long; every bit pattern is an f32.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, bytes.len() / 4) }
    }
}

/// A query prepared once for the kernels of its version.
pub enum Query {
    /// A u8 query, prepared for `dot_u8_i8`.
    U8 {
        /// The elements shifted to i8 (`q - 128`), padded with zeros.
        shifted: Vec<i8>,
        /// The sum of `shifted`, to undo the kernel's unshifted candidates.
        sum: i32,
        /// The squared norm in the `q - 128` domain.
        norm2: f64,
    },
    /// An f32 query.
    F32 {
        /// The elements, padded with zeros.
        values: Vec<f32>,
        /// The squared norm.
        norm2: f64,
    },
}

impl Query {
    /// Prepare a payload already validated against `spec`, padded as rows are.
    pub fn new(spec: &VersionSpec, payload: &[u8]) -> Query {
        let row_bytes = padded_len(spec);
        match spec.dtype {
            Dtype::U8 => {
                let mut shifted = vec![0i8; row_bytes];
                for (s, &q) in shifted.iter_mut().zip(payload) {
                    *s = (q as i16 - 128) as i8;
                }
                let sum = shifted.iter().map(|&s| s as i32).sum();
                Query::U8 { shifted, sum, norm2: u8_norm2(payload) }
            }
            Dtype::F32 => {
                let mut values = vec![0f32; row_bytes / 4];
                for (v, c) in values.iter_mut().zip(payload.chunks_exact(4)) {
                    *v = f32::from_le_bytes(c.try_into().expect("4 bytes"));
                }
                let norm2 = f32_norm2(&values);
                Query::F32 { values, norm2 }
            }
        }
    }

    /// The cosine of this query and one stored row.
    #[inline]
    pub fn cosine(&self, k: &Kernels, rows: &Rows, row: usize, row_norm2: f64) -> f64 {
        let dot = match self {
            Query::U8 { shifted, sum, .. } => ((k.dot_u8_i8)(rows.u8_row(row), shifted) - 128 * sum) as f64,
            Query::F32 { values, .. } => (k.dot_f32)(rows.f32_row(row), values) as f64,
        };
        cosine(dot, self.norm2(), row_norm2)
    }

    /// The shifted query and the sum of its values, for a u8 query.
    pub fn u8_parts(&self) -> Option<(&[i8], i32)> {
        match self {
            Query::U8 { shifted, sum, .. } => Some((shifted, *sum)),
            Query::F32 { .. } => None,
        }
    }

    /// The values, padded, for an f32 query.
    pub fn f32_values(&self) -> Option<&[f32]> {
        match self {
            Query::F32 { values, .. } => Some(values),
            Query::U8 { .. } => None,
        }
    }

    /// The squared norm, in the domain the kernels compute in.
    pub fn norm2(&self) -> f64 {
        match self {
            Query::U8 { norm2, .. } | Query::F32 { norm2, .. } => *norm2,
        }
    }
}

/// The cosine of a dot product and two squared norms, as every scan computes it.
#[inline]
pub fn cosine(dot: f64, norm2: f64, row_norm2: f64) -> f64 {
    // One square root of the product: exact for u8, so a descriptor has similarity 1 with itself.
    let cos = dot / (norm2 * row_norm2).sqrt();
    // Zero vectors (and f32 overflow) have similarity 0 with everything.
    if cos.is_finite() {
        cos
    } else {
        0.0
    }
}

/// Bytes a row takes once padded to whole 64-byte blocks.
pub fn padded_len(spec: &VersionSpec) -> usize {
    spec.payload_len().div_ceil(64) * 64
}

/// Squared norm of a u8 descriptor in the `q - 128` domain: an exact integer.
pub fn u8_norm2(payload: &[u8]) -> f64 {
    payload.iter().map(|&q| (q as i64 - 128).pow(2)).sum::<i64>() as f64
}

/// Squared norm of f32 elements, summed in f64.
pub fn f32_norm2(values: &[f32]) -> f64 {
    values.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
}

/// Everything about a face but its descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceRecord {
    /// The face's id.
    pub face_id: Uuid,
    /// The account that owns it.
    pub account_id: Uuid,
    /// The caller's own id, if given. Boxed strings: no spare capacity, 8 bytes less each.
    pub external_id: Option<Box<str>>,
    /// Free text given at creation.
    pub user_data: Box<str>,
    /// Microseconds since the epoch, UTC.
    pub create_time: i64,
    /// The lists it is in; one is kept inline (a second moves them to the
    /// heap): lists are scanned by their member slots, so this is read for
    /// answers and writes, and a face's 40 bytes of two inline ids were 16
    /// more than one.
    pub lists: SmallVec<[Uuid; 1]>,
}

/// A face as the index holds it, 48 bytes: its record without the account,
/// which the slot's interned key stands for, and without its lists, which
/// the version's memberships hold.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceEntry {
    /// The face's id.
    pub face_id: Uuid,
    /// Microseconds since the epoch, UTC.
    pub create_time: i64,
    texts: Texts,
}

/// A face's external id and user data in one boxed string, the external id
/// first, and the external id's length: 24 bytes and one allocation, where
/// two boxed strings took 32 and two.
#[derive(Debug, Clone, PartialEq)]
struct Texts {
    both: Box<str>,
    /// The external id's length in bytes, or [`NO_EXTERNAL_ID`].
    external_len: u32,
}

const NO_EXTERNAL_ID: u32 = u32::MAX;

impl FaceEntry {
    /// The entry, the account and the lists of a record.
    fn split(face: FaceRecord) -> (FaceEntry, Uuid, SmallVec<[Uuid; 1]>) {
        let FaceRecord { face_id, account_id, external_id, user_data, create_time, lists } = face;
        let external = external_id.as_deref().unwrap_or_default();
        let external_len = external_id.as_ref().map_or(NO_EXTERNAL_ID, |e| u32::try_from(e.len()).expect("an external id under 4 GiB"));
        let both = if external.is_empty() { user_data } else { [external, &user_data].concat().into_boxed_str() };
        (FaceEntry { face_id, create_time, texts: Texts { both, external_len } }, account_id, lists)
    }

    /// The caller's own id, if given.
    pub fn external_id(&self) -> Option<&str> {
        let Texts { both, external_len } = &self.texts;
        (*external_len != NO_EXTERNAL_ID).then(|| &both[..*external_len as usize])
    }

    /// Free text given at creation.
    pub fn user_data(&self) -> &str {
        let Texts { both, external_len } = &self.texts;
        &both[if *external_len == NO_EXTERNAL_ID { 0 } else { *external_len as usize }..]
    }

    fn record(&self, account_id: Uuid, lists: SmallVec<[Uuid; 1]>) -> FaceRecord {
        let (face_id, create_time) = (self.face_id, self.create_time);
        FaceRecord { face_id, account_id, external_id: self.external_id().map(Box::from), user_data: self.user_data().into(), create_time, lists }
    }
}

/// Everything about a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListRecord {
    /// The list's id.
    pub list_id: Uuid,
    /// The account that owns it.
    pub account_id: Uuid,
    /// Free text given at creation.
    pub user_data: String,
    /// Microseconds since the epoch, UTC.
    pub create_time: i64,
    /// Faces attached to it.
    pub face_count: usize,
}

/// Descriptors of one version with their norms, row by row.
pub struct Vectors {
    /// The version the rows are of.
    pub spec: VersionSpec,
    /// The descriptors, padded.
    pub rows: Rows,
    /// Squared norms, row by row.
    pub norms2: Vec<f64>,
}

impl Vectors {
    /// No rows yet, of `spec`.
    pub fn new(spec: VersionSpec) -> Self {
        Vectors { spec, rows: Rows::new(padded_len(&spec)), norms2: Vec::new() }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.norms2.len()
    }

    /// No rows held.
    pub fn is_empty(&self) -> bool {
        self.norms2.is_empty()
    }

    /// Append a payload already validated against `spec`.
    pub fn push(&mut self, payload: &[u8]) {
        let norm2 = match self.spec.dtype {
            Dtype::U8 => u8_norm2(payload),
            Dtype::F32 => {
                let values: Vec<f32> = payload.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
                f32_norm2(&values)
            }
        };
        self.rows.push(payload);
        self.norms2.push(norm2);
    }

    /// Remove a row; the last row takes its place.
    pub fn swap_remove(&mut self, row: usize) {
        self.rows.swap_remove(row);
        self.norms2.swap_remove(row);
    }

    /// The similarity, as the version reports it, of a query and one row.
    #[inline]
    pub fn similarity(&self, k: &Kernels, query: &Query, row: usize) -> f64 {
        self.spec.calibrate(query.cosine(k, &self.rows, row, self.norms2[row]))
    }

    /// The stored payload of a row, without padding.
    pub fn payload(&self, row: usize) -> &[u8] {
        &self.rows.u8_row(row)[..self.spec.payload_len()]
    }
}

/// All faces of one descriptor version: slot `i` of `faces` is row `i` of
/// `vectors`. Each list's members are kept as a vector of slots, so matching a
/// list reads its members only, however big the version is.
pub struct VersionIndex {
    /// The descriptors.
    pub vectors: Vectors,
    faces: Vec<FaceEntry>,
    /// The interned account of each slot: the account filter reads this, not the record.
    accounts: Vec<u32>,
    /// The lists with members in this version, and their members' slots.
    lists: MemberLists,
    /// For each slot, its lists and where it sits in their members, in the record's order.
    memberships: Memberships,
}

impl VersionIndex {
    fn new(spec: VersionSpec) -> Self {
        VersionIndex {
            vectors: Vectors::new(spec),
            faces: Vec::new(),
            accounts: Vec::new(),
            lists: MemberLists::default(),
            memberships: Memberships::default(),
        }
    }

    /// Faces held.
    pub fn len(&self) -> usize {
        self.faces.len()
    }

    /// No face held.
    pub fn is_empty(&self) -> bool {
        self.faces.is_empty()
    }

    /// The face at a slot, without its account.
    pub fn entry(&self, slot: usize) -> &FaceEntry {
        &self.faces[slot]
    }

    /// The interned accounts, slot by slot (see [`Index::account_key`]).
    pub fn accounts(&self) -> &[u32] {
        &self.accounts
    }

    /// The slots of a list's members in this version, in no particular order.
    pub fn members(&self, list_id: &Uuid) -> &[u32] {
        self.lists.number(list_id).map_or(&[], |n| self.lists.members(n))
    }

    /// The lists of the face at a slot, in the order it joined them.
    pub fn lists_of(&self, slot: usize) -> SmallVec<[Uuid; 1]> {
        self.memberships.of(slot).map(|m| self.lists.id(m.list)).collect()
    }

    /// Whether the face at a slot is in a list.
    pub fn in_list(&self, slot: usize, list_id: &Uuid) -> bool {
        self.lists.number(list_id).is_some_and(|n| self.memberships.position(slot, n).is_some())
    }

    fn push(&mut self, payload: &[u8], account: u32, face: FaceEntry, lists: &[Uuid]) -> usize {
        let slot = self.faces.len();
        let members = &mut self.lists;
        self.memberships.push(lists.iter().map(|l| {
            let list = members.number_or_add(*l);
            Membership { list, place: push_member(members.members_mut(list), slot) }
        }));
        self.vectors.push(payload);
        self.faces.push(face);
        self.accounts.push(account);
        slot
    }

    /// Remove a slot, and give its lists; the last slot takes its place.
    fn swap_remove(&mut self, slot: usize) -> SmallVec<[Uuid; 1]> {
        let memberships: SmallVec<[Membership; 2]> = self.memberships.of(slot).collect();
        // Read before the members go: a list left without any gives its number back.
        let lists = memberships.iter().map(|m| self.lists.id(m.list)).collect();
        for m in memberships {
            self.drop_member(m);
        }
        let last = self.faces.len() - 1;
        if slot != last {
            for m in self.memberships.of(last) {
                self.lists.members_mut(m.list)[m.place as usize] = slot as u32;
            }
        }
        self.vectors.swap_remove(slot);
        self.accounts.swap_remove(slot);
        self.memberships.swap_remove(slot);
        self.faces.swap_remove(slot);
        lists
    }

    /// Take a membership's slot out of its list's members; the last member takes its place.
    fn drop_member(&mut self, m: Membership) {
        let members = self.lists.members_mut(m.list);
        members.swap_remove(m.place as usize);
        let moved = members.get(m.place as usize).copied();
        if members.is_empty() {
            self.lists.release(m.list);
        }
        if let Some(moved) = moved {
            let at = self.memberships.position(moved as usize, m.list).expect("a member is in its list");
            self.memberships.set_place(moved as usize, at, m.place);
        }
    }

    /// Make a slot a member of a list, or not; true when that changed.
    fn set_membership(&mut self, slot: usize, list_id: Uuid, member: bool) -> bool {
        let at = self.lists.number(&list_id).and_then(|n| self.memberships.position(slot, n));
        match (at, member) {
            (None, true) => {
                let list = self.lists.number_or_add(list_id);
                let place = push_member(self.lists.members_mut(list), slot);
                self.memberships.append(slot, Membership { list, place });
                true
            }
            (Some(at), false) => {
                let m = self.memberships.remove(slot, at);
                self.drop_member(m);
                true
            }
            _ => false,
        }
    }

    /// Forget a list: no face of this version is a member any more.
    fn remove_list(&mut self, list_id: &Uuid) {
        let Some(n) = self.lists.number(list_id) else { return };
        for slot in std::mem::take(self.lists.members_mut(n)) {
            let at = self.memberships.position(slot as usize, n).expect("a member is in its list");
            self.memberships.remove(slot as usize, at);
        }
        self.lists.release(n);
    }
}

/// Append a slot to a list's members; returns its place there.
fn push_member(members: &mut Vec<u32>, slot: usize) -> u32 {
    members.push(u32::try_from(slot).expect("fewer than 2^32 faces per version"));
    (members.len() - 1) as u32
}

/// Where a face is: its descriptor version, that version's index, its slot.
pub struct FaceAt<'a> {
    /// The descriptor version.
    pub version: u32,
    /// That version's index.
    pub vi: &'a VersionIndex,
    /// The face's slot in it.
    pub slot: usize,
    accounts: &'a Accounts,
}

impl FaceAt<'_> {
    /// The face, without its account.
    pub fn entry(&self) -> &FaceEntry {
        &self.vi.faces[self.slot]
    }

    /// The account that owns it.
    pub fn account_id(&self) -> Uuid {
        self.accounts.ids[self.vi.accounts[self.slot] as usize]
    }

    /// The face, without its descriptor.
    pub fn record(&self) -> FaceRecord {
        self.entry().record(self.account_id(), self.vi.lists_of(self.slot))
    }

    /// Whether the face is in a list.
    pub fn in_list(&self, list_id: &Uuid) -> bool {
        self.vi.in_list(self.slot, list_id)
    }

    /// The face's stored descriptor payload.
    pub fn payload(&self) -> &[u8] {
        self.vi.vectors.payload(self.slot)
    }
}

/// Account ids as small numbers, so that each face carries 4 bytes, not 16:
/// the account filter reads the number, an answer the id it stands for.
#[derive(Default)]
struct Accounts {
    keys: HashMap<Uuid, u32>,
    ids: Vec<Uuid>,
}

impl Accounts {
    fn intern(&mut self, account_id: Uuid) -> u32 {
        let next = self.ids.len() as u32;
        *self.keys.entry(account_id).or_insert_with(|| {
            self.ids.push(account_id);
            next
        })
    }
}

/// The id of the face at a place of [`Index::slots`].
fn id_at(versions: &HashMap<u32, VersionIndex>, p: Place) -> Uuid {
    versions[&p.version].faces[p.slot as usize].face_id
}

/// The source of list revisions: one counter for the process, so that no two
/// states of a list, in this index or one that replaced it, share a revision.
static REVISIONS: AtomicU64 = AtomicU64::new(1);

fn next_revision() -> u64 {
    REVISIONS.fetch_add(1, Ordering::Relaxed)
}

/// The whole in-memory index.
pub struct Index {
    /// Per descriptor version, its faces.
    pub versions: HashMap<u32, VersionIndex>,
    /// Where each face lives: its version and slot.
    slots: FaceSlots,
    /// Every list kept in memory.
    pub lists: HashMap<Uuid, ListRecord>,
    accounts: Accounts,
    /// The revision of each list whose members changed in this index, or
    /// that it created; the other lists are at `made`.
    revisions: HashMap<Uuid, u64>,
    /// The revision taken when this index was made.
    made: u64,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            versions: HashMap::new(),
            slots: FaceSlots::default(),
            lists: HashMap::new(),
            accounts: Accounts::default(),
            revisions: HashMap::new(),
            made: next_revision(),
        }
    }
}

impl Index {
    /// The revision of a list's members, None for a list not held. It
    /// changes whenever a face joins or leaves the list (a face's descriptor
    /// never changes in place), and never comes back: a copy of the list
    /// taken after reading a revision is current while the revision is.
    pub fn list_revision(&self, list_id: &Uuid) -> Option<u64> {
        self.lists.contains_key(list_id).then(|| self.revisions.get(list_id).copied().unwrap_or(self.made))
    }

    /// A face joined (`joined`) or left a list: its count and revision follow.
    /// A list this instance does not cache has neither.
    fn member_changed(&mut self, list_id: &Uuid, joined: bool) {
        let Some(list) = self.lists.get_mut(list_id) else { return };
        if joined {
            list.face_count += 1;
        } else {
            list.face_count -= 1;
        }
        self.revisions.insert(*list_id, next_revision());
    }

    /// Room for `additional` more faces in the id table, so that a load
    /// that knows its count does not grow it step by step: each step reads
    /// every face's id back from its record.
    pub fn reserve_faces(&mut self, additional: usize) {
        self.slots.reserve(additional, |p| id_at(&self.versions, p));
    }

    /// Add a face with its descriptor (`payload`, of `version`), counting it in its lists.
    pub fn insert_face(&mut self, spec: VersionSpec, version: u32, payload: &[u8], face: FaceRecord) {
        let (face, account_id, lists) = FaceEntry::split(face);
        for list in &lists {
            self.member_changed(list, true);
        }
        let account = self.accounts.intern(account_id);
        let vi = self.versions.entry(version).or_insert_with(|| VersionIndex::new(spec));
        let face_id = face.face_id;
        let slot = vi.push(payload, account, face, &lists);
        let place = Place { version, slot: slot as u32 };
        self.slots.insert(&face_id, place, |p| id_at(&self.versions, p));
    }

    /// Faces held, of every version.
    pub fn face_count(&self) -> usize {
        self.slots.len()
    }

    /// Where a face is, if it is held.
    pub fn face(&self, face_id: &Uuid) -> Option<FaceAt<'_>> {
        let Place { version, slot } = self.slots.get(face_id, |p| id_at(&self.versions, p))?;
        Some(self.at(version, slot as usize))
    }

    /// The face at a slot of a version held.
    pub fn at(&self, version: u32, slot: usize) -> FaceAt<'_> {
        FaceAt { version, vi: &self.versions[&version], slot, accounts: &self.accounts }
    }

    /// The small number standing for an account in [`VersionIndex::accounts`];
    /// None when no face in memory has that account.
    pub fn account_key(&self, account_id: &Uuid) -> Option<u32> {
        self.accounts.keys.get(account_id).copied()
    }

    /// Remove a face; the last face of its version takes its slot.
    pub fn remove_face(&mut self, face_id: &Uuid) {
        let Some(place) = self.slots.remove(face_id, |p| id_at(&self.versions, p)) else { return };
        let Some(vi) = self.versions.get_mut(&place.version) else { return };
        let last = Place { version: place.version, slot: vi.faces.len() as u32 - 1 };
        if last != place {
            self.slots.moved(&vi.faces[last.slot as usize].face_id, last, place);
        }
        for list in &vi.swap_remove(place.slot as usize) {
            self.member_changed(list, false);
        }
    }

    /// Add or remove a face's membership in a list; true when it changed.
    pub fn set_membership(&mut self, list_id: Uuid, face_id: &Uuid, member: bool) -> bool {
        let Some(Place { version, slot }) = self.slots.get(face_id, |p| id_at(&self.versions, p)) else { return false };
        let changed = self.versions.get_mut(&version).is_some_and(|vi| vi.set_membership(slot as usize, list_id, member));
        if changed {
            self.member_changed(&list_id, member);
        }
        changed
    }

    /// Remove a list and every face's membership of it; the faces stay.
    pub fn remove_list(&mut self, list_id: &Uuid) -> Option<ListRecord> {
        let list = self.lists.remove(list_id)?;
        self.revisions.remove(list_id);
        for vi in self.versions.values_mut() {
            vi.remove_list(list_id);
        }
        Some(list)
    }

    /// Apply one committed operation of a write.
    pub fn apply(&mut self, op: Op) {
        match op {
            Op::CreateList(list) => self.upsert_list(list),
            Op::DeleteList(list_id) => {
                self.remove_list(&list_id);
            }
            Op::CreateFace { spec, descriptor, face } => self.insert_face(spec, descriptor.version, &descriptor.payload, face),
            Op::DeleteFace(face_id) => self.remove_face(&face_id),
            Op::SetMembership { list_id, face_id, member } => {
                self.set_membership(list_id, &face_id, member);
            }
        }
    }

    /// A list as the store now holds it; a known list keeps its face count.
    pub fn upsert_list(&mut self, list: ListRecord) {
        match self.lists.get_mut(&list.list_id) {
            Some(known) => *known = ListRecord { face_count: known.face_count, ..list },
            None => {
                // A list deleted and made again under its id starts at a new revision.
                self.revisions.insert(list.list_id, next_revision());
                self.lists.insert(list.list_id, list);
            }
        }
    }

    /// A face as the store now holds it: unchanged, replaced or added.
    pub fn upsert_face(&mut self, spec: VersionSpec, descriptor: &Descriptor, face: FaceRecord) {
        if let Some(at) = self.face(&face.face_id) {
            if at.version == descriptor.version && at.record() == face && at.payload() == descriptor.payload.as_slice() {
                return;
            }
            self.remove_face(&face.face_id);
        }
        self.insert_face(spec, descriptor.version, &descriptor.payload, face);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::Dtype;

    const SPEC: VersionSpec = VersionSpec { length: 8, dtype: Dtype::U8, a: None, b: None };

    fn list(list_id: Uuid) -> ListRecord {
        ListRecord { list_id, account_id: Uuid::nil(), user_data: String::new(), create_time: 0, face_count: 0 }
    }

    fn face(face_id: Uuid, lists: &[Uuid], user_data: &str) -> FaceRecord {
        FaceRecord { face_id, account_id: Uuid::nil(), external_id: None, user_data: user_data.into(), create_time: 0, lists: lists.iter().copied().collect() }
    }

    fn descriptor(byte: u8) -> Descriptor {
        Descriptor { version: 62, payload: vec![byte; 8] }
    }

    #[test]
    fn upserts_replace_and_keep_counts() {
        let (l1, f1, f2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut index = Index::default();
        index.apply(Op::CreateList(list(l1)));
        index.apply(Op::CreateFace { spec: SPEC, descriptor: descriptor(1), face: face(f1, &[l1], "a") });
        index.apply(Op::CreateFace { spec: SPEC, descriptor: descriptor(2), face: face(f2, &[l1], "b") });
        index.upsert_list(ListRecord { user_data: "renamed".into(), ..list(l1) });
        assert_eq!((index.lists[&l1].user_data.as_str(), index.lists[&l1].face_count), ("renamed", 2), "a known list keeps its count");

        // The same face again changes nothing; a changed one replaces it.
        index.upsert_face(SPEC, &descriptor(1), face(f1, &[l1], "a"));
        assert_eq!((index.face_count(), index.versions[&62].vectors.len()), (2, 2));
        index.upsert_face(SPEC, &descriptor(9), face(f1, &[], "a2"));
        let at = index.face(&f1).unwrap();
        assert_eq!((&*at.record().user_data, at.payload()), ("a2", &[9u8; 8][..]));
        assert_eq!((index.versions[&62].vectors.len(), index.lists[&l1].face_count), (2, 1));
        assert_eq!(index.face(&f2).unwrap().payload(), &[2u8; 8][..], "the other face kept its row");
    }

    #[test]
    fn a_list_revision_changes_with_its_members_only_and_never_comes_back() {
        let (l1, l2, f1, f2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut index = Index::default();
        assert_eq!(index.list_revision(&l1), None, "a list not held");
        index.apply(Op::CreateList(list(l1)));
        index.apply(Op::CreateList(list(l2)));
        let mut seen = vec![index.list_revision(&l1).unwrap()];
        let mut step = |index: &mut Index, op: Op, changes: bool, what: &str| {
            let before = index.list_revision(&l1).unwrap();
            index.apply(op);
            let after = index.list_revision(&l1).unwrap();
            if changes {
                assert!(!seen.contains(&after), "{what}: a new revision, not one seen before ({after} in {seen:?})");
                seen.push(after);
            } else {
                assert_eq!(after, before, "{what}: the list's members did not change");
            }
        };
        step(&mut index, Op::CreateFace { spec: SPEC, descriptor: descriptor(1), face: face(f1, &[l1], "a") }, true, "a face created in it");
        step(&mut index, Op::CreateFace { spec: SPEC, descriptor: descriptor(2), face: face(f2, &[l2], "b") }, false, "a face created in another list");
        step(&mut index, Op::SetMembership { list_id: l1, face_id: f2, member: true }, true, "a face attached");
        step(&mut index, Op::SetMembership { list_id: l1, face_id: f2, member: true }, false, "attached again");
        step(&mut index, Op::SetMembership { list_id: l2, face_id: f1, member: true }, false, "its face attached to another list");
        step(&mut index, Op::DeleteFace(f2), true, "a member deleted");
        step(&mut index, Op::SetMembership { list_id: l1, face_id: f1, member: false }, true, "a face detached");
        index.apply(Op::DeleteList(l1));
        assert_eq!(index.list_revision(&l1), None, "a deleted list");
        index.apply(Op::CreateList(list(l1)));
        let again = index.list_revision(&l1).unwrap();
        assert!(!seen.contains(&again), "made again under its id: a new revision");
        assert_ne!(Index::default().list_revision(&l1), Some(again));
        let mut reloaded = Index::default();
        reloaded.lists.insert(l1, list(l1));
        assert!(!seen.contains(&reloaded.list_revision(&l1).unwrap()), "a list loaded into a new index: a new revision");
    }

    #[test]
    fn a_record_comes_back_as_it_went_in() {
        let l = Uuid::new_v4();
        for (external_id, user_data) in [(None, ""), (None, "Zoë"), (Some(""), "x"), (Some("ext-é"), ""), (Some("ext"), "data")] {
            let face = FaceRecord { external_id: external_id.map(Box::from), ..face(Uuid::new_v4(), &[l], user_data) };
            let mut index = Index::default();
            index.insert_face(SPEC, 62, &[1; 8], face.clone());
            let at = index.face(&face.face_id).unwrap();
            assert_eq!((at.record(), at.entry().external_id(), at.entry().user_data()), (face, external_id, user_data));
        }
        // What a face in one list costs the index besides its row, norm and account.
        assert_eq!(std::mem::size_of::<FaceEntry>() + std::mem::size_of::<Membership>(), 56);
    }

    #[test]
    fn membership_of_a_list_not_in_memory_is_kept_on_the_face() {
        let (cached, other, f) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut index = Index::default();
        index.upsert_list(list(cached));
        index.insert_face(SPEC, 62, &[1; 8], face(f, &[cached], "x"));
        assert!(index.set_membership(other, &f, true));
        assert_eq!(index.face(&f).unwrap().record().lists.to_vec(), vec![cached, other]);
        assert_eq!(index.lists[&cached].face_count, 1);
        assert!(index.set_membership(other, &f, false));
        index.apply(Op::DeleteList(cached));
        assert!(index.face(&f).unwrap().record().lists.is_empty() && index.lists.is_empty());
    }

    /// Every version's member vectors hold exactly the slots whose records name the list.
    fn assert_members_consistent(index: &Index) {
        for vi in index.versions.values() {
            let mut lists: Vec<Uuid> = (0..vi.len()).flat_map(|slot| vi.lists_of(slot)).collect();
            lists.sort_unstable();
            lists.dedup();
            assert_eq!(vi.lists.len(), lists.len(), "no number for a list without members");
            for list in lists {
                let mut got = vi.members(&list).to_vec();
                got.sort_unstable();
                let want: Vec<u32> = (0..vi.len() as u32).filter(|&s| vi.lists_of(s as usize).contains(&list)).collect();
                assert_eq!(got, want, "members of {list}");
            }
            for slot in 0..vi.len() {
                for m in vi.memberships.of(slot) {
                    assert_eq!(vi.lists.members(m.list)[m.place as usize] as usize, slot, "slot {slot} where its membership says");
                }
            }
        }
    }

    #[test]
    fn list_members_follow_every_change() {
        let lists: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        // One of three accounts, told by the face's id: a moved slot keeps its face's.
        let owned = |f: Uuid, on: &[Uuid], user_data: &str| FaceRecord { account_id: Uuid::from_u128(f.as_u128() % 3 + 1), ..face(f, on, user_data) };
        let mut faces: Vec<Uuid> = Vec::new();
        let mut index = Index::default();
        for l in &lists[..3] {
            index.upsert_list(list(*l));
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for step in 0..3000 {
            match next(7) {
                0 | 1 => {
                    let f = Uuid::new_v4();
                    let on: Vec<Uuid> = lists.iter().copied().filter(|_| next(2) == 0).collect();
                    let version = if next(3) == 0 { 63 } else { 62 };
                    index.apply(Op::CreateFace { spec: SPEC, descriptor: Descriptor { version, payload: vec![step as u8; 8] }, face: owned(f, &on, "") });
                    faces.push(f);
                }
                2 if !faces.is_empty() => {
                    let f = faces.swap_remove(next(faces.len()));
                    index.apply(Op::DeleteFace(f));
                    assert!(index.face(&f).is_none(), "a deleted face is not found");
                }
                3..=5 if !faces.is_empty() => {
                    let f = faces[next(faces.len())];
                    index.apply(Op::SetMembership { list_id: lists[next(lists.len())], face_id: f, member: next(2) == 0 });
                }
                6 if !faces.is_empty() => {
                    let f = faces[next(faces.len())];
                    let on: Vec<Uuid> = lists.iter().copied().filter(|_| next(2) == 0).collect();
                    index.upsert_face(SPEC, &Descriptor { version: 62, payload: vec![1; 8] }, owned(f, &on, "u"));
                }
                _ if step % 500 == 499 => {
                    let l = lists[next(3)];
                    index.apply(Op::DeleteList(l));
                    index.upsert_list(list(l));
                }
                _ => {}
            }
            if step % 50 == 0 {
                assert_members_consistent(&index);
                // The id table finds every face at the slot that holds it.
                assert_eq!(index.face_count(), faces.len());
                assert!(faces.iter().all(|f| index.face(f).is_some_and(|at| at.record() == owned(*f, &at.record().lists, at.entry().user_data()))));
            }
        }
        assert_members_consistent(&index);
        for l in &lists[..3] {
            let members: usize = index.versions.values().map(|vi| vi.members(l).len()).sum();
            assert_eq!(index.lists[l].face_count, members, "the count is the members");
        }
    }
}

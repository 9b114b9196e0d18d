//! The in-memory copy of the store that matching reads: for each descriptor
//! version, the descriptors in one contiguous 64-byte-aligned array, with the
//! norms and the face attributes the filters and targets need, slot by slot.

use std::collections::HashMap;

use smallvec::SmallVec;
use uuid::Uuid;

use crate::descriptor::{Descriptor, Dtype, VersionSpec};
use crate::kernels::Kernels;
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

    /// A row's bytes, padding included.
    pub fn u8_row(&self, row: usize) -> &[u8] {
        let blocks = &self.blocks[row * self.row_blocks..(row + 1) * self.row_blocks];
        unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, blocks.len() * 64) }
    }

    /// A row as f32 elements, padding included.
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
        let (dot, norm2) = match self {
            Query::U8 { shifted, sum, norm2 } => (((k.dot_u8_i8)(rows.u8_row(row), shifted) - 128 * sum) as f64, *norm2),
            Query::F32 { values, norm2 } => ((k.dot_f32)(rows.f32_row(row), values) as f64, *norm2),
        };
        // One square root of the product: exact for u8, so a descriptor has similarity 1 with itself.
        let cos = dot / (norm2 * row_norm2).sqrt();
        // Zero vectors (and f32 overflow) have similarity 0 with everything.
        if cos.is_finite() {
            cos
        } else {
            0.0
        }
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
    /// The caller's own id, if given.
    pub external_id: Option<String>,
    /// Free text given at creation.
    pub user_data: String,
    /// Microseconds since the epoch, UTC.
    pub create_time: i64,
    /// Inline for the usual one or two lists: the list filter reads it for every candidate.
    pub lists: SmallVec<[Uuid; 2]>,
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

/// All faces of one descriptor version: slot `i` of `faces` is row `i` of `vectors`.
pub struct VersionIndex {
    /// The descriptors.
    pub vectors: Vectors,
    /// The faces, slot by slot.
    pub faces: Vec<FaceRecord>,
}

/// Where a face is: its descriptor version, that version's index, its slot.
pub struct FaceAt<'a> {
    /// The descriptor version.
    pub version: u32,
    /// That version's index.
    pub vi: &'a VersionIndex,
    /// The face's slot in it.
    pub slot: usize,
}

impl FaceAt<'_> {
    /// The face, without its descriptor.
    pub fn record(&self) -> &FaceRecord {
        &self.vi.faces[self.slot]
    }

    /// The face's stored descriptor payload.
    pub fn payload(&self) -> &[u8] {
        self.vi.vectors.payload(self.slot)
    }
}

/// The whole in-memory index.
#[derive(Default)]
pub struct Index {
    /// Per descriptor version, its faces.
    pub versions: HashMap<u32, VersionIndex>,
    /// Where each face lives: its version and slot.
    pub slots: HashMap<Uuid, (u32, usize)>,
    /// Every list kept in memory.
    pub lists: HashMap<Uuid, ListRecord>,
}

impl Index {
    /// Add a face with its descriptor, counting it in its lists.
    pub fn insert_face(&mut self, spec: VersionSpec, descriptor: &Descriptor, face: FaceRecord) {
        for list in &face.lists {
            if let Some(l) = self.lists.get_mut(list) {
                l.face_count += 1;
            }
        }
        let vi = self.versions.entry(descriptor.version).or_insert_with(|| VersionIndex { vectors: Vectors::new(spec), faces: Vec::new() });
        vi.vectors.push(&descriptor.payload);
        self.slots.insert(face.face_id, (descriptor.version, vi.faces.len()));
        vi.faces.push(face);
    }

    /// Where a face is, if it is held.
    pub fn face(&self, face_id: &Uuid) -> Option<FaceAt<'_>> {
        let &(version, slot) = self.slots.get(face_id)?;
        Some(FaceAt { version, vi: &self.versions[&version], slot })
    }

    /// A face's record, to change its attributes.
    pub fn face_mut(&mut self, face_id: &Uuid) -> Option<&mut FaceRecord> {
        let (version, slot) = self.slots.get(face_id)?;
        self.versions.get_mut(version).map(|vi| &mut vi.faces[*slot])
    }

    /// Remove a face; the last face of its version takes its slot.
    pub fn remove_face(&mut self, face_id: &Uuid) -> Option<FaceRecord> {
        let (version, slot) = self.slots.remove(face_id)?;
        let vi = self.versions.get_mut(&version)?;
        vi.vectors.swap_remove(slot);
        let face = vi.faces.swap_remove(slot);
        if let Some(moved) = vi.faces.get(slot) {
            self.slots.insert(moved.face_id, (version, slot));
        }
        for list in &face.lists {
            if let Some(l) = self.lists.get_mut(list) {
                l.face_count -= 1;
            }
        }
        Some(face)
    }

    /// Add or remove a face's membership in a list; true when it changed.
    pub fn set_membership(&mut self, list_id: Uuid, face_id: &Uuid, member: bool) -> bool {
        let Some(face) = self.face_mut(face_id) else { return false };
        let changed = match (face.lists.iter().position(|l| *l == list_id), member) {
            (None, true) => {
                face.lists.push(list_id);
                true
            }
            (Some(at), false) => {
                face.lists.remove(at);
                true
            }
            _ => false,
        };
        // A list this instance does not cache has no record to count in.
        if let Some(list) = self.lists.get_mut(&list_id).filter(|_| changed) {
            if member {
                list.face_count += 1;
            } else {
                list.face_count -= 1;
            }
        }
        changed
    }

    /// Remove a list and every face's membership of it; the faces stay.
    pub fn remove_list(&mut self, list_id: &Uuid) -> Option<ListRecord> {
        let list = self.lists.remove(list_id)?;
        for vi in self.versions.values_mut() {
            for face in &mut vi.faces {
                face.lists.retain(|l| l != list_id);
            }
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
            Op::CreateFace { spec, descriptor, face } => self.insert_face(spec, &descriptor, face),
            Op::DeleteFace(face_id) => {
                self.remove_face(&face_id);
            }
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
                self.lists.insert(list.list_id, list);
            }
        }
    }

    /// A face as the store now holds it: unchanged, replaced or added.
    pub fn upsert_face(&mut self, spec: VersionSpec, descriptor: &Descriptor, face: FaceRecord) {
        if let Some(at) = self.face(&face.face_id) {
            if at.version == descriptor.version && *at.record() == face && at.payload() == descriptor.payload.as_slice() {
                return;
            }
            self.remove_face(&face.face_id);
        }
        self.insert_face(spec, descriptor, face);
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
        assert_eq!((index.slots.len(), index.versions[&62].vectors.len()), (2, 2));
        index.upsert_face(SPEC, &descriptor(9), face(f1, &[], "a2"));
        let at = index.face(&f1).unwrap();
        assert_eq!((at.record().user_data.as_str(), at.payload()), ("a2", &[9u8; 8][..]));
        assert_eq!((index.versions[&62].vectors.len(), index.lists[&l1].face_count), (2, 1));
        assert_eq!(index.face(&f2).unwrap().payload(), &[2u8; 8][..], "the other face kept its row");
    }

    #[test]
    fn membership_of_a_list_not_in_memory_is_kept_on_the_face() {
        let (cached, other, f) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut index = Index::default();
        index.upsert_list(list(cached));
        index.insert_face(SPEC, &descriptor(1), face(f, &[cached], "x"));
        assert!(index.set_membership(other, &f, true));
        assert_eq!(index.face(&f).unwrap().record().lists.to_vec(), vec![cached, other]);
        assert_eq!(index.lists[&cached].face_count, 1);
        assert!(index.set_membership(other, &f, false));
        index.apply(Op::DeleteList(cached));
        assert!(index.face(&f).unwrap().record().lists.is_empty() && index.lists.is_empty());
    }
}

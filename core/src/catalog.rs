//! The catalog of lists and faces: create, read, attach, delete. A write is
//! checked against what the store holds and committed there, then applied to
//! the in-memory index; reads of single records come from the store.

use smallvec::SmallVec;
use uuid::Uuid;

use crate::api::*;
use crate::descriptor::{Descriptor, VersionSpec};
use crate::errors::{Error, ErrorCode, Result};
use crate::index::{FaceAt, FaceRecord, Index, ListRecord};
use crate::service::Core;
use crate::store::{Op, Owners, Position, Reads};
use crate::time::{format_time, now};

/// What a write answers, and where it landed in the shared store's change
/// log (None for the embedded store).
#[derive(Debug)]
pub struct Written<T> {
    /// The write's own answer.
    pub value: T,
    /// Its place in the change log, for `Luna-Store-Position`.
    pub position: Option<Position>,
}

impl Core {
    /// Create a list for `new.account_id` (which must be `account`, when given).
    pub fn create_list(&self, account: Option<Uuid>, new: NewList) -> Result<Written<CreatedList>> {
        same_account(account, new.account_id)?;
        self.limits.check_list(&new)?;
        let list = ListRecord { list_id: Uuid::new_v4(), account_id: new.account_id, user_data: new.user_data, create_time: now(), face_count: 0 };
        let list_id = list.list_id;
        let position = self.write(&Reads::default(), Box::new(|_| Ok(vec![Op::CreateList(list)])))?;
        Ok(Written { value: CreatedList { list_id, url: format!("/1/lists/{list_id}") }, position })
    }

    /// A list as the store holds it, if `account` (when given) owns it.
    pub async fn get_list(&self, account: Option<Uuid>, list_id: Uuid) -> Result<ListView> {
        let l = self.store.list(list_id).await?.filter(|l| account.is_none_or(|a| a == l.account_id)).ok_or_else(|| list_not_found(list_id))?;
        Ok(ListView { list_id, account_id: l.account_id, user_data: l.user_data, create_time: format_time(l.create_time), face_count: l.face_count })
    }

    /// Delete a list; its faces stay.
    pub fn delete_list(&self, account: Option<Uuid>, list_id: Uuid) -> Result<Written<()>> {
        let reads = Reads { lists: vec![list_id], delete: true, ..Default::default() };
        let position = self.write(
            &reads,
            Box::new(|owners| {
                list_owner(owners, account, list_id)?;
                Ok(vec![Op::DeleteList(list_id)])
            }),
        )?;
        Ok(Written { value: (), position })
    }

    /// Attach faces to a list or detach them, all or none.
    pub fn patch_list_faces(&self, account: Option<Uuid>, list_id: Uuid, patch: ListFacesPatch) -> Result<Written<()>> {
        let reads = Reads { lists: vec![list_id], faces: patch.face_ids.clone(), delete: false };
        let position = self.write(
            &reads,
            Box::new(|owners| {
                let owner = list_owner(owners, account, list_id)?;
                for (i, face_id) in patch.face_ids.iter().enumerate() {
                    face_owner(owners, Some(owner), *face_id).map_err(|e| e.at(format_args!("face_ids[{i}]")))?;
                }
                let member = patch.action == MembershipAction::Attach;
                Ok(patch.face_ids.into_iter().map(|face_id| Op::SetMembership { list_id, face_id, member }).collect())
            }),
        )?;
        Ok(Written { value: (), position })
    }

    // ---- faces ----

    /// Create a face, attached to the lists it names, all in one write.
    pub fn create_face(&self, account: Option<Uuid>, new: NewFace) -> Result<Written<CreatedFace>> {
        let reads = Reads { lists: new.lists.clone(), ..Default::default() };
        let parsed = self.parse_face(account, new);
        let mut face_id = Uuid::nil();
        let position = self.write(
            &reads,
            Box::new(|owners| {
                let op = face_op(owners, parsed?)?;
                if let Op::CreateFace { face, .. } = &op {
                    face_id = face.face_id;
                }
                Ok(vec![op])
            }),
        )?;
        Ok(Written { value: CreatedFace { face_id, url: format!("/1/faces/{face_id}") }, position })
    }

    /// Create faces in one transaction: all of them, or none.
    pub fn create_faces(&self, account: Option<Uuid>, faces: Vec<NewFace>) -> Result<Written<CreatedFaces>> {
        let mut lists: Vec<Uuid> = faces.iter().flat_map(|f| f.lists.iter().copied()).collect();
        lists.sort_unstable();
        lists.dedup();
        // Descriptors are parsed before the write, which holds the store:
        // concurrent writes parse in parallel. A face's errors still come in
        // input order, its own checks before its lists'.
        let parsed: Vec<Result<ParsedFace>> = faces.into_iter().map(|f| self.parse_face(account, f)).collect();
        let mut face_ids = Vec::with_capacity(parsed.len());
        let position = self.write(
            &Reads { lists, ..Default::default() },
            Box::new(|owners| {
                let ops = parsed
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| f.and_then(|f| face_op(owners, f)).map_err(|e| e.at(format_args!("faces[{i}]"))))
                    .collect::<Result<Vec<_>>>()?;
                face_ids.extend(ops.iter().filter_map(|op| match op {
                    Op::CreateFace { face, .. } => Some(face.face_id),
                    _ => None,
                }));
                Ok(ops)
            }),
        )?;
        Ok(Written { value: CreatedFaces { face_ids }, position })
    }

    /// The checks of a new face that need nothing from the store: its account, limits and descriptor.
    fn parse_face(&self, account: Option<Uuid>, new: NewFace) -> Result<ParsedFace> {
        same_account(account, new.account_id)?;
        self.limits.check_face(&new)?;
        let descriptor = self.versions.parse(&new.descriptor.data.decode()?, new.descriptor.version)?;
        let spec = *self.versions.get(descriptor.version)?;
        Ok(ParsedFace { spec, descriptor, account_id: new.account_id, external_id: new.external_id, user_data: new.user_data, lists: new.lists })
    }

    /// A face as the store holds it, if `account` (when given) owns it.
    pub async fn get_face(&self, account: Option<Uuid>, face_id: Uuid) -> Result<FaceView> {
        let StoredFace { face: f, descriptor } = self.visible_stored_face(account, face_id).await?;
        Ok(FaceView {
            face_id,
            account_id: f.account_id,
            external_id: f.external_id.map(String::from),
            user_data: f.user_data.into(),
            create_time: format_time(f.create_time),
            lists: f.lists.to_vec(),
            descriptor_version: descriptor.version,
        })
    }

    /// A face the account may see, with its descriptor, as the store holds it.
    pub(crate) async fn visible_stored_face(&self, account: Option<Uuid>, face_id: Uuid) -> Result<StoredFace> {
        self.store.face(face_id).await?.filter(|f| account.is_none_or(|a| a == f.face.account_id)).ok_or_else(|| face_not_found(face_id))
    }

    /// A face with its descriptor, for plugins that keep their own copy of a list.
    pub fn stored_face(&self, face_id: Uuid) -> Result<StoredFace> {
        let index = self.read_index();
        visible_face(&index, None, face_id).map(|at| stored(&at))
    }

    /// Every face of a list with its descriptor.
    pub fn stored_list_faces(&self, list_id: Uuid) -> Result<Vec<StoredFace>> {
        let mut faces = Vec::new();
        self.each_list_face(list_id, |at| faces.push(stored(at)))?;
        Ok(faces)
    }

    /// The revision of a list's members ([`Index::list_revision`]), None for an unknown list.
    pub fn list_revision(&self, list_id: Uuid) -> Option<u64> {
        self.read_index().list_revision(&list_id)
    }

    /// [`Core::list_revision`] at once, or None while a write holds the index.
    pub fn try_list_revision(&self, list_id: Uuid) -> Option<Option<u64>> {
        self.try_read_index().map(|index| index.list_revision(&list_id))
    }

    /// Hand `each` every face of a list, under the index's read lock: version
    /// by version, in the order the faces were stored in, as a scan of the
    /// version gives them.
    pub fn each_list_face(&self, list_id: Uuid, mut each: impl FnMut(&FaceAt)) -> Result<()> {
        let index = self.read_index();
        if !index.lists.contains_key(&list_id) {
            return Err(list_not_found(list_id));
        }
        for (&version, vi) in &index.versions {
            let mut slots = vi.members(&list_id).to_vec();
            slots.sort_unstable();
            slots.into_iter().for_each(|slot| each(&index.at(version, slot as usize)));
        }
        Ok(())
    }

    /// Delete a face and its memberships.
    pub fn delete_face(&self, account: Option<Uuid>, face_id: Uuid) -> Result<Written<()>> {
        let reads = Reads { faces: vec![face_id], delete: true, ..Default::default() };
        let position = self.write(
            &reads,
            Box::new(|owners| {
                face_owner(owners, account, face_id)?;
                Ok(vec![Op::DeleteFace(face_id)])
            }),
        )?;
        Ok(Written { value: (), position })
    }
}

/// A new face whose own checks passed; its lists are checked in the write.
struct ParsedFace {
    spec: VersionSpec,
    descriptor: Descriptor,
    account_id: Uuid,
    external_id: Option<String>,
    user_data: String,
    lists: Vec<Uuid>,
}

/// A new face as the store will hold it, once its lists are found to be its account's.
fn face_op(owners: &dyn Owners, new: ParsedFace) -> Result<Op> {
    let mut lists = SmallVec::new();
    for list_id in new.lists {
        list_owner(owners, Some(new.account_id), list_id)?;
        if !lists.contains(&list_id) {
            lists.push(list_id);
        }
    }
    let face = FaceRecord {
        face_id: Uuid::new_v4(),
        account_id: new.account_id,
        external_id: new.external_id.map(Into::into),
        user_data: new.user_data.into(),
        create_time: now(),
        lists,
    };
    Ok(Op::CreateFace { spec: new.spec, descriptor: new.descriptor, face })
}

/// A face and its descriptor, as plugins read them.
#[derive(Debug, Clone)]
pub struct StoredFace {
    /// Everything but the descriptor.
    pub face: FaceRecord,
    /// The descriptor, as stored.
    pub descriptor: Descriptor,
}

pub(crate) fn stored(at: &FaceAt) -> StoredFace {
    StoredFace { face: at.record(), descriptor: Descriptor { version: at.version, payload: at.payload().to_vec() } }
}

fn same_account(request: Option<Uuid>, body: Uuid) -> Result<()> {
    match request {
        Some(a) if a != body => Err(Error::new(ErrorCode::AccountMismatch, format!("account_id {body} is not the request's account {a}"))),
        _ => Ok(()),
    }
}

/// Text both stores keep as given: PostgreSQL's text cannot hold NUL.
fn list_not_found(list_id: Uuid) -> Error {
    Error::new(ErrorCode::ListNotFound, format!("list {list_id} not found"))
}

fn face_not_found(face_id: Uuid) -> Error {
    Error::new(ErrorCode::FaceNotFound, format!("face {face_id} not found"))
}

/// The owner of a list the account may see; another account's list does not exist for it.
fn list_owner(owners: &dyn Owners, account: Option<Uuid>, list_id: Uuid) -> Result<Uuid> {
    owners.list_owner(&list_id).filter(|o| account.is_none_or(|a| a == *o)).ok_or_else(|| list_not_found(list_id))
}

fn face_owner(owners: &dyn Owners, account: Option<Uuid>, face_id: Uuid) -> Result<Uuid> {
    owners.face_owner(&face_id).filter(|o| account.is_none_or(|a| a == *o)).ok_or_else(|| face_not_found(face_id))
}

pub(crate) fn visible_face(index: &Index, account: Option<Uuid>, face_id: Uuid) -> Result<FaceAt<'_>> {
    index.face(&face_id).filter(|at| account.is_none_or(|a| a == at.account_id())).ok_or_else(|| face_not_found(face_id))
}

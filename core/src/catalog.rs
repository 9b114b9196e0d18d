//! The catalog of lists and faces: create, read, attach, delete. Every write
//! goes to the store first and to the in-memory index once it is committed.

use smallvec::SmallVec;
use uuid::Uuid;

use crate::api::*;
use crate::descriptor::{Descriptor, VersionSpec};
use crate::errors::{Error, ErrorCode, Result};
use crate::index::{FaceAt, FaceRecord, Index, ListRecord};
use crate::service::Core;
use crate::store;
use crate::time::{format_time, now};

impl Core {
    pub fn create_list(&self, account: Option<Uuid>, new: NewList) -> Result<CreatedList> {
        same_account(account, new.account_id)?;
        self.limits.check_list(&new)?;
        let list = ListRecord { list_id: Uuid::new_v4(), account_id: new.account_id, user_data: new.user_data, create_time: now(), face_count: 0 };
        let mut store = self.store.lock();
        store.write(|tx| store::insert_list(tx, &list))?;
        let list_id = list.list_id;
        self.index.write().lists.insert(list_id, list);
        Ok(CreatedList { list_id, url: format!("/1/lists/{list_id}") })
    }

    pub fn get_list(&self, account: Option<Uuid>, list_id: Uuid) -> Result<ListView> {
        let index = self.read_index();
        let l = visible_list(&index, account, list_id)?;
        Ok(ListView { list_id, account_id: l.account_id, user_data: l.user_data.clone(), create_time: format_time(l.create_time), face_count: l.face_count })
    }

    pub fn delete_list(&self, account: Option<Uuid>, list_id: Uuid) -> Result<()> {
        let mut store = self.store.lock();
        visible_list(&self.index.read(), account, list_id)?;
        store.write(|tx| store::delete_list(tx, &list_id))?;
        self.index.write().remove_list(&list_id);
        Ok(())
    }

    pub fn patch_list_faces(&self, account: Option<Uuid>, list_id: Uuid, patch: ListFacesPatch) -> Result<()> {
        let mut store = self.store.lock();
        {
            let index = self.index.read();
            let owner = visible_list(&index, account, list_id)?.account_id;
            for (i, face_id) in patch.face_ids.iter().enumerate() {
                visible_face(&index, Some(owner), *face_id).map_err(|e| e.at(format_args!("face_ids[{i}]")))?;
            }
        }
        let member = patch.action == MembershipAction::Attach;
        store.write(|tx| patch.face_ids.iter().try_for_each(|f| store::set_membership(tx, &list_id, f, member)))?;
        let mut index = self.index.write();
        for face_id in &patch.face_ids {
            index.set_membership(list_id, face_id, member);
        }
        Ok(())
    }

    // ---- faces ----

    pub fn create_face(&self, account: Option<Uuid>, new: NewFace) -> Result<CreatedFace> {
        let face_id = self.insert_faces(|index| Ok(vec![self.prepare_face(index, account, new)?]))?[0];
        Ok(CreatedFace { face_id, url: format!("/1/faces/{face_id}") })
    }

    /// Create faces in one transaction: all of them, or none.
    pub fn create_faces(&self, account: Option<Uuid>, faces: Vec<NewFace>) -> Result<CreatedFaces> {
        let face_ids = self.insert_faces(|index| {
            faces.into_iter().enumerate().map(|(i, f)| self.prepare_face(index, account, f).map_err(|e| e.at(format_args!("faces[{i}]")))).collect()
        })?;
        Ok(CreatedFaces { face_ids })
    }

    /// Validate faces against the index, commit them in one transaction, then index them.
    fn insert_faces(&self, prepare: impl FnOnce(&Index) -> Result<Vec<PreparedFace>>) -> Result<Vec<Uuid>> {
        let mut store = self.store.lock();
        let prepared = prepare(&self.index.read())?;
        store.write(|tx| prepared.iter().try_for_each(|(_, d, f)| store::insert_face(tx, f, d)))?;
        let face_ids = prepared.iter().map(|(_, _, f)| f.face_id).collect();
        let mut index = self.index.write();
        for (spec, descriptor, face) in prepared {
            index.insert_face(spec, &descriptor, face);
        }
        Ok(face_ids)
    }

    fn prepare_face(&self, index: &Index, account: Option<Uuid>, new: NewFace) -> Result<PreparedFace> {
        same_account(account, new.account_id)?;
        self.limits.check_face(&new)?;
        let descriptor = self.versions.parse(&new.descriptor.data.decode()?, new.descriptor.version)?;
        let spec = *self.versions.get(descriptor.version)?;
        let mut lists = SmallVec::new();
        for list_id in new.lists {
            visible_list(index, Some(new.account_id), list_id)?;
            if !lists.contains(&list_id) {
                lists.push(list_id);
            }
        }
        let face = FaceRecord {
            face_id: Uuid::new_v4(),
            account_id: new.account_id,
            external_id: new.external_id,
            user_data: new.user_data,
            create_time: now(),
            lists,
        };
        Ok((spec, descriptor, face))
    }

    pub fn get_face(&self, account: Option<Uuid>, face_id: Uuid) -> Result<FaceView> {
        let index = self.read_index();
        let at = visible_face(&index, account, face_id)?;
        let f = at.record();
        Ok(FaceView {
            face_id,
            account_id: f.account_id,
            external_id: f.external_id.clone(),
            user_data: f.user_data.clone(),
            create_time: format_time(f.create_time),
            lists: f.lists.to_vec(),
            descriptor_version: at.version,
        })
    }

    /// A face with its descriptor, for plugins that keep their own copy of a list.
    pub fn stored_face(&self, face_id: Uuid) -> Result<StoredFace> {
        let index = self.read_index();
        visible_face(&index, None, face_id).map(|at| stored(&at))
    }

    /// Every face of a list with its descriptor.
    pub fn stored_list_faces(&self, list_id: Uuid) -> Result<Vec<StoredFace>> {
        let index = self.read_index();
        visible_list(&index, None, list_id)?;
        Ok(index
            .versions
            .iter()
            .flat_map(|(&version, vi)| {
                (0..vi.faces.len()).filter(|&slot| vi.faces[slot].lists.contains(&list_id)).map(move |slot| stored(&FaceAt { version, vi, slot }))
            })
            .collect())
    }

    pub fn delete_face(&self, account: Option<Uuid>, face_id: Uuid) -> Result<()> {
        let mut store = self.store.lock();
        visible_face(&self.index.read(), account, face_id)?;
        store.write(|tx| store::delete_face(tx, &face_id))?;
        self.index.write().remove_face(&face_id);
        Ok(())
    }
}

/// A face and its descriptor, as plugins read them.
pub struct StoredFace {
    pub face: FaceRecord,
    pub descriptor: Descriptor,
}

fn stored(at: &FaceAt) -> StoredFace {
    StoredFace { face: at.record().clone(), descriptor: Descriptor { version: at.version, payload: at.payload().to_vec() } }
}

type PreparedFace = (VersionSpec, Descriptor, FaceRecord);

fn same_account(request: Option<Uuid>, body: Uuid) -> Result<()> {
    match request {
        Some(a) if a != body => Err(Error::new(ErrorCode::AccountMismatch, format!("account_id {body} is not the request's account {a}"))),
        _ => Ok(()),
    }
}

/// A list the account may see; another account's list does not exist for it.
fn visible_list(index: &Index, account: Option<Uuid>, list_id: Uuid) -> Result<&ListRecord> {
    index
        .lists
        .get(&list_id)
        .filter(|l| account.is_none_or(|a| a == l.account_id))
        .ok_or_else(|| Error::new(ErrorCode::ListNotFound, format!("list {list_id} not found")))
}

pub(crate) fn visible_face(index: &Index, account: Option<Uuid>, face_id: Uuid) -> Result<FaceAt<'_>> {
    index
        .face(&face_id)
        .filter(|at| account.is_none_or(|a| a == at.record().account_id))
        .ok_or_else(|| Error::new(ErrorCode::FaceNotFound, format!("face {face_id} not found")))
}

//! The core every role serves: the candidate store and matching, with account
//! scoping and the request limits. Knows nothing of HTTP.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::{Mutex, RwLock};
use uuid::Uuid;

use crate::api::*;
use crate::descriptor::{Descriptor, VersionSpec, Versions};
use crate::errors::{Error, ErrorCode, Result};
use crate::index::{FaceAt, FaceRecord, Index, ListRecord, Query, Vectors};
use crate::limits::Limits;
use crate::matching::{scan, Engine, Filter, SubQuery, SubResult, TopK};
use crate::store::{self, Store};

pub struct CoreConfig {
    pub db_path: PathBuf,
    pub versions: Versions,
    pub limits: Limits,
    /// Threads that scan candidates.
    pub threads: usize,
}

/// Sizes of the store, for `/metrics`.
pub struct StoreStats {
    pub lists: usize,
    pub faces_by_version: Vec<(u32, usize)>,
}

pub struct Core {
    versions: Versions,
    limits: Limits,
    /// Writers hold this across the SQLite commit and the index update, so the
    /// two never disagree.
    pub(crate) store: Mutex<Store>,
    index: Arc<RwLock<Index>>,
    engine: Engine,
}

impl Core {
    pub fn open(config: CoreConfig) -> Result<Core> {
        let store = Store::open(&config.db_path)?;
        let index = Arc::new(RwLock::new(store.load(&config.versions)?));
        let engine = Engine::start(index.clone(), config.threads);
        Ok(Core { versions: config.versions, limits: config.limits, store: Mutex::new(store), index, engine })
    }

    /// The index for a short read on a caller's (HTTP worker's) thread. Unlike
    /// `read()` it does not queue behind a writer that waits for a matching
    /// batch to finish, so it only ever waits for a write in progress.
    fn read_index(&self) -> parking_lot::RwLockReadGuard<'_, Index> {
        self.index.read_recursive()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    pub fn check_store(&self) -> Result<()> {
        self.store.lock().ping()
    }

    pub fn stats(&self) -> StoreStats {
        let index = self.read_index();
        let mut faces_by_version: Vec<(u32, usize)> = index.versions.iter().map(|(v, vi)| (*v, vi.faces.len())).collect();
        faces_by_version.sort_unstable();
        StoreStats { lists: index.lists.len(), faces_by_version }
    }

    // ---- lists ----

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
        let mut lists = smallvec::SmallVec::new();
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

    // ---- matching ----

    pub async fn match_faces(&self, account: Option<Uuid>, req: MatchFacesRequest) -> Result<Vec<ReferenceMatches>> {
        let plan = self.plan_faces(account, req)?;
        let answered = plan.subs().map(|_| None).collect();
        Ok(self.run_plan(plan, answered).await?.0)
    }

    /// Check a matching request and load its references: the sub-requests
    /// (reference x candidate set) that `run_plan` answers.
    pub fn plan_faces(&self, account: Option<Uuid>, req: MatchFacesRequest) -> Result<FacesPlan> {
        self.check_counts(req.references.len(), Some(req.candidates.len()))?;
        let sets = req
            .candidates
            .into_iter()
            .enumerate()
            .map(|(i, set)| self.compile_set(account, set).map_err(|e| e.at(format_args!("candidates[{i}]"))))
            .collect::<Result<Vec<_>>>()?;

        // Each reference is either a query to run or its own error.
        let mut refs = Vec::new();
        for (i, reference) in req.references.into_iter().enumerate() {
            refs.push(match reference {
                Reference::Descriptor { id, data, descriptor_version } => {
                    let d = data.decode().and_then(|b| self.versions.parse(&b, descriptor_version)).map_err(|e| e.at(format_args!("references[{i}]")))?;
                    let query = Arc::new(Query::new(self.versions.get(d.version)?, &d.payload));
                    (ReferenceEcho { kind: "descriptor", id }, Ok(LoadedReference { descriptor: d, query }))
                }
                Reference::Face { id } => {
                    let index = self.read_index();
                    let loaded = visible_face(&index, account, id).map(|at| LoadedReference {
                        descriptor: Descriptor { version: at.version, payload: at.payload().to_vec() },
                        query: Arc::new(Query::new(&at.vi.vectors.spec, at.payload())),
                    });
                    (ReferenceEcho { kind: "face", id: Some(id.to_string()) }, loaded)
                }
            });
        }
        Ok(FacesPlan { account, refs, sets })
    }

    /// Answer a plan. `answered[i]` holds the answer to the plan's i-th
    /// sub-request when something else (a matching plugin) gave one; the
    /// others are matched here. Also returns, per sub-request, the candidates
    /// scanned for it.
    pub async fn run_plan(&self, plan: FacesPlan, answered: Vec<Option<SubResult>>) -> Result<(Vec<ReferenceMatches>, Vec<u64>)> {
        let queries: Vec<SubQuery> = plan
            .subs()
            .zip(&answered)
            .filter(|(_, a)| a.is_none())
            .map(|(sub, _)| SubQuery {
                version: sub.reference.descriptor.version,
                query: sub.reference.query.clone(),
                filter: sub.set.filter.clone(),
                limit: sub.set.limit,
                threshold: sub.set.threshold,
            })
            .collect();
        let mut matched = self.engine.match_faces(queries).await?.into_iter();
        let results: Vec<SubResult> = answered.into_iter().map(|a| a.or_else(|| matched.next()).expect("one result per sub-request")).collect();
        self.limits.check_faces_response(&plan, &results)?;
        let scanned = results.iter().map(|r| r.candidates_scanned).collect();
        let mut results = results.into_iter();

        let references = plan
            .refs
            .into_iter()
            .map(|(reference, loaded)| match loaded {
                Err(e) => ReferenceMatches { reference, matches: None, error: Some(ErrorBody::from(&e)) },
                Ok(_) => {
                    let matches = plan
                        .sets
                        .iter()
                        .zip(results.by_ref())
                        .map(|(set, r)| CandidateMatches {
                            filters: set.echo.clone(),
                            result: r.hits.iter().map(|(sim, face)| face_match(*sim, face, &set.targets)).collect(),
                            total_found: r.total_found,
                        })
                        .collect();
                    ReferenceMatches { reference, matches: Some(matches), error: None }
                }
            })
            .collect();
        Ok((references, scanned))
    }

    /// Turn a plugin's answer to a sub-request into a result, checked against
    /// the store: every face must exist, be of the reference's version and
    /// pass the sub-request's filters (its account included). None when one
    /// does not: the answer is malformed. Ordered, cut by threshold and limit
    /// as the API says; the targets come from the store.
    pub fn check_answer(&self, sub: &SubRequest, hits: &[(Uuid, f64)]) -> Option<SubResult> {
        let index = self.read_index();
        let mut checked = Vec::with_capacity(hits.len());
        for (face_id, similarity) in hits {
            let at = index.face(face_id)?;
            if at.version != sub.reference.descriptor.version || !sub.set.filter.pass(at.record()) || !similarity.is_finite() {
                return None;
            }
            if *similarity >= sub.set.threshold {
                checked.push((*similarity, at.record().clone()));
            }
        }
        checked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.face_id.cmp(&b.1.face_id)));
        checked.dedup_by(|a, b| a.1.face_id == b.1.face_id);
        let total_found = checked.len() as u64;
        checked.truncate(sub.set.limit);
        Some(SubResult { hits: checked, total_found, candidates_scanned: hits.len() as u64 })
    }

    pub async fn match_raw(&self, req: MatchRawRequest) -> Result<Vec<RawReferenceMatches>> {
        self.check_counts(req.references.len(), None)?;
        if req.candidates.len() > self.limits.raw_candidates {
            return Err(Error::new(
                ErrorCode::TooManyRawCandidates,
                format!("{} candidates, at most {} allowed", req.candidates.len(), self.limits.raw_candidates),
            ));
        }
        let limit = self.check_limit(req.limit)?;
        self.limits.check_raw_response(&req.references, &req.candidates, limit)?;
        let threshold = check_threshold(req.threshold)?;
        let parse = |place: &str, items: Vec<RawItem>| {
            items
                .into_iter()
                .enumerate()
                .map(|(i, it)| {
                    let d = it.data.decode().and_then(|b| self.versions.parse(&b, req.descriptor_version)).map_err(|e| e.at(format_args!("{place}[{i}]")))?;
                    Ok((it.id, d))
                })
                .collect::<Result<Vec<_>>>()
        };
        let references = parse("references", req.references)?;
        let mut candidates = parse("candidates", req.candidates)?;
        let mut versions = references.iter().chain(&candidates).map(|(_, d)| d.version);
        if let Some(first) = versions.next() {
            if let Some(other) = versions.find(|v| *v != first) {
                return Err(Error::new(ErrorCode::DescriptorVersionMismatch, format!("versions {first} and {other} in one request")));
            }
        }
        let Some(version) = references.first().or(candidates.first()).map(|(_, d)| d.version) else {
            return Ok(Vec::new());
        };
        let spec = *self.versions.get(version)?;
        // Sorted by id, a candidate's position is its tie-break key.
        candidates.sort_by(|a, b| a.0.cmp(&b.0));
        self.engine
            .run(move || {
                let k = crate::kernels::kernels();
                let mut vectors = Vectors::new(spec);
                for (_, d) in &candidates {
                    vectors.push(&d.payload);
                }
                Ok(references
                    .into_iter()
                    .map(|(reference_id, d)| {
                        let mut top = TopK::new(limit, threshold);
                        scan(k, &vectors, &Query::new(&spec, &d.payload), 0..vectors.len(), |_| true, |row| row, &mut top);
                        let matches =
                            top.into_sorted().into_iter().map(|h| RawMatch { candidate_id: candidates[h.key].0.clone(), similarity: h.similarity }).collect();
                        RawReferenceMatches { reference_id, matches }
                    })
                    .collect())
            })
            .await
    }

    fn check_counts(&self, references: usize, candidate_sets: Option<usize>) -> Result<()> {
        if references > self.limits.references {
            return Err(Error::new(ErrorCode::TooManyReferences, format!("{references} references, at most {} allowed", self.limits.references)));
        }
        if let Some(sets) = candidate_sets.filter(|n| *n > self.limits.candidate_sets) {
            return Err(Error::new(ErrorCode::TooManyCandidateSets, format!("{sets} candidate sets, at most {} allowed", self.limits.candidate_sets)));
        }
        Ok(())
    }

    fn check_limit(&self, limit: Option<usize>) -> Result<usize> {
        match limit {
            Some(l) if l > self.limits.max_limit => Err(Error::new(ErrorCode::LimitTooLarge, format!("limit {l}, at most {} allowed", self.limits.max_limit))),
            Some(l) => Ok(l),
            None => Ok(self.limits.default_limit),
        }
    }

    fn compile_set(&self, account: Option<Uuid>, set: CandidateSet) -> Result<CompiledSet> {
        let f = &set.filters;
        if let (Some(request), Some(filter)) = (account, f.account_id) {
            if request != filter {
                return Err(Error::new(ErrorCode::AccountMismatch, format!("filters.account_id {filter} is not the request's account {request}")));
            }
        }
        let filter = Filter {
            account_id: account.or(f.account_id),
            list_id: f.list_id,
            // An empty list is no restriction, as in LUNA's request templates.
            face_ids: f.face_ids.clone().filter(|ids| !ids.is_empty()),
            external_ids: f.external_ids.clone().filter(|ids| !ids.is_empty()).map(|ids| ids.into_iter().collect::<HashSet<_>>()),
            user_data: f.user_data.clone().filter(|u| !u.is_empty()),
            create_time_gte: f.create_time__gte.as_deref().map(|t| parse_time("filters.create_time__gte", t)).transpose()?,
            create_time_lt: f.create_time__lt.as_deref().map(|t| parse_time("filters.create_time__lt", t)).transpose()?,
            face_id_gte: f.face_id__gte,
            face_id_lt: f.face_id__lt,
        };
        Ok(CompiledSet {
            filter,
            targets: set.targets.unwrap_or_else(|| vec![Target::FaceId, Target::Similarity]),
            limit: self.check_limit(set.limit)?,
            threshold: check_threshold(set.threshold)?,
            echo: set.filters,
        })
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

/// A reference ready to match: its descriptor and the query prepared from it.
pub struct LoadedReference {
    pub descriptor: Descriptor,
    pub query: Arc<Query>,
}

/// A checked matching request: its references (loaded, or an error of their
/// own) and its compiled candidate sets.
pub struct FacesPlan {
    pub account: Option<Uuid>,
    pub(crate) refs: Vec<(ReferenceEcho, Result<LoadedReference>)>,
    pub(crate) sets: Vec<CompiledSet>,
}

/// One sub-request of a plan: a loaded reference against a candidate set.
pub struct SubRequest<'a> {
    pub reference_echo: &'a ReferenceEcho,
    pub reference: &'a LoadedReference,
    pub set: &'a CompiledSet,
}

impl FacesPlan {
    /// The sub-requests, reference by reference, set by set; references that
    /// could not be loaded have none.
    pub fn subs(&self) -> impl Iterator<Item = SubRequest<'_>> {
        self.refs
            .iter()
            .filter_map(|(echo, r)| r.as_ref().ok().map(|r| (echo, r)))
            .flat_map(move |(reference_echo, reference)| self.sets.iter().map(move |set| SubRequest { reference_echo, reference, set }))
    }
}

pub struct CompiledSet {
    pub filter: Filter,
    pub targets: Vec<Target>,
    pub limit: usize,
    pub threshold: f64,
    /// The filters as the request gave them.
    pub echo: FaceFilters,
}

fn check_threshold(threshold: Option<f64>) -> Result<f64> {
    match threshold {
        Some(t) if !t.is_finite() => Err(Error::new(ErrorCode::SchemaViolation, "threshold must be a finite number")),
        t => Ok(t.unwrap_or(0.0)),
    }
}

fn face_match(similarity: f64, face: &FaceRecord, targets: &[Target]) -> FaceMatch {
    let mut out = FaceMatch { face: FaceTargets::default(), similarity: None };
    for t in targets {
        match t {
            Target::FaceId => out.face.face_id = Some(face.face_id),
            Target::Similarity => out.similarity = Some(similarity),
            Target::UserData => out.face.user_data = Some(face.user_data.clone()),
            Target::ExternalId => out.face.external_id = Some(face.external_id.clone()),
            Target::CreateTime => out.face.create_time = Some(format_time(face.create_time)),
            Target::AccountId => out.face.account_id = Some(face.account_id),
            Target::Lists => out.face.lists = Some(face.lists.to_vec()),
        }
    }
    out
}

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

fn visible_face(index: &Index, account: Option<Uuid>, face_id: Uuid) -> Result<FaceAt<'_>> {
    index
        .face(&face_id)
        .filter(|at| account.is_none_or(|a| a == at.record().account_id))
        .ok_or_else(|| Error::new(ErrorCode::FaceNotFound, format!("face {face_id} not found")))
}

fn now() -> i64 {
    Utc::now().timestamp_micros()
}

pub fn format_time(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(field: &str, text: &str) -> Result<i64> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| Error::new(ErrorCode::SchemaViolation, format!("{field}: '{text}' is not an RFC 3339 time: {e}")))
}

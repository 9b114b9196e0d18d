//! Matching requests: a `/1/matcher/faces` request checked and split into
//! sub-requests (one reference against one candidate set), answered by the
//! engine or by someone else (a matching plugin) whose answer is checked here,
//! and assembled into the response.

use std::sync::Arc;

use uuid::Uuid;

use crate::api::*;
use crate::catalog::{stored, visible_face};
use crate::descriptor::Descriptor;
use crate::errors::{Error, ErrorCode, Result};
use crate::index::{FaceRecord, Query};
use crate::limits;
use crate::matching::{Filter, SubQuery, SubResult};
use crate::service::Core;
use crate::time::{format_time, parse_time};

/// A checked matching request: its references (loaded, or an error of their
/// own) and its compiled candidate sets.
pub struct FacesPlan {
    refs: Vec<(ReferenceEcho, Result<LoadedReference>)>,
    sets: Vec<CompiledSet>,
}

/// A reference ready to match: its descriptor and the query prepared from it.
struct LoadedReference {
    descriptor: Descriptor,
    query: Arc<Query>,
}

/// A candidate set of the request, its filters compiled.
pub(crate) struct CompiledSet {
    pub(crate) filter: Filter,
    targets: Vec<Target>,
    pub(crate) limit: usize,
    pub(crate) threshold: f64,
    /// The filters as the request gave them.
    echo: FaceFilters,
}

/// One sub-request of a plan: a loaded reference against a candidate set.
pub struct SubRequest<'a> {
    echo: &'a ReferenceEcho,
    reference: &'a LoadedReference,
    pub(crate) set: &'a CompiledSet,
}

/// A sub-request as plain data: what a matching plugin is asked.
#[derive(Debug, Clone)]
pub struct SubRequestSpec {
    /// `descriptor` or `face`.
    pub reference_type: &'static str,
    /// The reference's id, if the request gave one.
    pub reference_id: Option<String>,
    /// The reference's descriptor.
    pub descriptor: Descriptor,
    /// The candidate set's filters as the request gave them.
    pub filters: FaceFilters,
    /// The fields the answer's faces carry.
    pub targets: Vec<Target>,
    /// Most faces to answer.
    pub limit: usize,
    /// Least similarity a face needs.
    pub threshold: f64,
}

impl SubRequest<'_> {
    /// The list the candidate set is restricted to, if any.
    pub fn list_id(&self) -> Option<Uuid> {
        self.set.echo.list_id
    }

    /// How many hits the answer holds at most.
    pub fn limit(&self) -> usize {
        self.set.limit
    }

    /// The sub-request as data a plugin can be handed.
    pub fn spec(&self) -> SubRequestSpec {
        SubRequestSpec {
            reference_type: self.echo.kind,
            reference_id: self.echo.id.clone(),
            descriptor: self.reference.descriptor.clone(),
            filters: self.set.echo.clone(),
            targets: self.set.targets.clone(),
            limit: self.set.limit,
            threshold: self.set.threshold,
        }
    }
}

impl FacesPlan {
    /// The sub-requests, reference by reference, set by set; references that
    /// could not be loaded have none.
    pub fn subs(&self) -> impl Iterator<Item = SubRequest<'_>> {
        self.refs
            .iter()
            .filter_map(|(echo, r)| r.as_ref().ok().map(|r| (echo, r)))
            .flat_map(move |(echo, reference)| self.sets.iter().map(move |set| SubRequest { echo, reference, set }))
    }
}

impl FacesPlan {
    /// An upper bound of the bytes the answer to this plan with `results`
    /// encodes to, computed before the response objects exist.
    fn encoded_len_bound(&self, results: &[Result<SubResult>]) -> usize {
        let echoes: Vec<usize> = self.sets.iter().map(|s| serde_json::to_vec(&s.echo).map_or(0, |v| v.len())).collect();
        let mut results = results.iter();
        let mut total: usize = 2;
        for (echo, loaded) in &self.refs {
            total = total.saturating_add(limits::REFERENCE + echo.id.as_deref().map_or(0, limits::json_len));
            match loaded {
                Err(e) => total = total.saturating_add(limits::ERROR + limits::json_len(&e.detail)),
                Ok(_) => {
                    for (set, echo_bytes) in self.sets.iter().zip(&echoes) {
                        let hits_bytes: usize = match results.next() {
                            Some(Ok(r)) => r.hits.iter().map(|(_, face)| limits::hit_len(face, &set.targets)).sum(),
                            Some(Err(e)) => limits::ERROR + limits::json_len(&e.detail),
                            None => 0,
                        };
                        total = total.saturating_add(limits::CANDIDATE_SET + echo_bytes + hits_bytes);
                    }
                }
            }
        }
        total
    }
}

impl Core {
    /// Check a matching request and load its references: the sub-requests
    /// (reference x candidate set) that `run_plan` answers.
    pub async fn plan_faces(&self, account: Option<Uuid>, req: MatchFacesRequest) -> Result<FacesPlan> {
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
                    let cached = visible_face(&self.read_index(), account, id).map(|at| stored(&at));
                    // Not in memory: a shared store may hold it (a face of a list this instance does not cache).
                    let face = match cached {
                        Ok(face) => Ok(face),
                        Err(_) => self.visible_stored_face(account, id).await,
                    };
                    let loaded = face.and_then(|f| {
                        let query = Arc::new(Query::new(self.versions.get(f.descriptor.version)?, &f.descriptor.payload));
                        Ok(LoadedReference { descriptor: f.descriptor, query })
                    });
                    (ReferenceEcho { kind: "face", id: Some(id.to_string()) }, loaded)
                }
            });
        }
        Ok(FacesPlan { refs, sets })
    }

    /// Answer a plan. `answered[i]` holds the answer to the plan's i-th
    /// sub-request when something else (a matching plugin, a remote matcher)
    /// gave one: its result, or an error for that candidate set alone; the
    /// others are matched here. Also returns, per sub-request, the candidates
    /// scanned for it.
    pub async fn run_plan(&self, plan: FacesPlan, answered: Vec<Option<Result<SubResult>>>) -> Result<(Vec<ReferenceMatches>, Vec<u64>)> {
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
        let mut matched = match queries.is_empty() {
            true => Vec::new(),
            false => self.engine.match_faces(queries).await?,
        }
        .into_iter();
        let results: Vec<Result<SubResult>> = answered.into_iter().map(|a| a.or_else(|| matched.next().map(Ok)).expect("one result per sub-request")).collect();
        self.limits.check_faces_response(plan.encoded_len_bound(&results))?;
        let scanned = results.iter().map(|r| r.as_ref().map_or(0, |r| r.candidates_scanned)).collect();
        let mut results = results.into_iter();

        let references = plan
            .refs
            .into_iter()
            .map(|(reference, loaded)| match loaded {
                Err(e) => ReferenceMatches { reference, matches: None, error: Some(ErrorBody::from(&e)) },
                Ok(_) => {
                    let matches = plan.sets.iter().zip(results.by_ref()).map(|(set, r)| candidate_matches(set, r)).collect();
                    ReferenceMatches { reference, matches: Some(matches), error: None }
                }
            })
            .collect();
        Ok((references, scanned))
    }

    /// Turn a plugin's answer to a sub-request into a result, checked against
    /// the store: every face must exist, be of the reference's version, pass
    /// the sub-request's filters (its account and `face_ids` included), and be
    /// named once. None when one does not: the answer is malformed. Ordered,
    /// cut by threshold and limit as the API says; the targets come from the
    /// store. `total_found` is what the answerer stated, if anything: never
    /// less than the faces it answered above the threshold.
    pub fn check_answer(&self, sub: &SubRequest, hits: &[(Uuid, f64)], total_found: Option<u64>) -> Option<SubResult> {
        let index = self.read_index();
        let mut checked = Vec::with_capacity(hits.len());
        for (face_id, similarity) in hits {
            let at = index.face(face_id)?;
            if at.version != sub.reference.descriptor.version || !sub.set.filter.pass(&at) || !similarity.is_finite() {
                return None;
            }
            checked.push((*similarity, at.record()));
        }
        // Sorted by id first: a face named twice, however far apart, is found.
        checked.sort_by_key(|(_, face)| face.face_id);
        if checked.windows(2).any(|w| w[0].1.face_id == w[1].1.face_id) {
            return None;
        }
        checked.retain(|(similarity, _)| *similarity >= sub.set.threshold);
        checked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.face_id.cmp(&b.1.face_id)));
        let total_found = total_found.unwrap_or(0).max(checked.len() as u64);
        checked.truncate(sub.set.limit);
        Some(SubResult { hits: checked, total_found, candidates_scanned: hits.len() as u64 })
    }

    pub(crate) fn compile_set(&self, account: Option<Uuid>, set: CandidateSet) -> Result<CompiledSet> {
        let f = &set.filters;
        if !self.remote_matching {
            self.store.can_match(f.list_id)?;
        }
        if let (Some(request), Some(filter)) = (account, f.account_id) {
            if request != filter {
                return Err(Error::new(ErrorCode::AccountMismatch, format!("filters.account_id {filter} is not the request's account {request}")));
            }
        }
        let filter = Filter {
            account_id: account.or(f.account_id),
            list_id: f.list_id,
            // An empty list is no restriction, as in LUNA's request templates.
            face_ids: f.face_ids.clone().filter(|ids| !ids.is_empty()).map(|mut ids| {
                ids.sort_unstable();
                ids.dedup();
                ids
            }),
            external_ids: f.external_ids.clone().filter(|ids| !ids.is_empty()).map(|ids| ids.into_iter().collect()),
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

pub(crate) fn check_threshold(threshold: Option<f64>) -> Result<f64> {
    match threshold {
        Some(t) if !t.is_finite() => Err(Error::new(ErrorCode::SchemaViolation, "threshold must be a finite number")),
        t => Ok(t.unwrap_or(0.0)),
    }
}

/// A candidate set's entry: its result, or its error with an empty result.
fn candidate_matches(set: &CompiledSet, result: Result<SubResult>) -> CandidateMatches {
    match result {
        Ok(r) => CandidateMatches {
            filters: set.echo.clone(),
            result: r.hits.iter().map(|(sim, face)| face_match(*sim, face, &set.targets)).collect(),
            total_found: r.total_found,
            error: None,
        },
        Err(e) => CandidateMatches { filters: set.echo.clone(), result: Vec::new(), total_found: 0, error: Some(ErrorBody::from(&e)) },
    }
}

fn face_match(similarity: f64, face: &FaceRecord, targets: &[Target]) -> FaceMatch {
    let mut out = FaceMatch { face: FaceTargets::default(), similarity: None };
    for t in targets {
        match t {
            Target::FaceId => out.face.face_id = Some(face.face_id),
            Target::Similarity => out.similarity = Some(similarity),
            Target::UserData => out.face.user_data = Some(face.user_data.to_string()),
            Target::ExternalId => out.face.external_id = Some(face.external_id.as_deref().map(String::from)),
            Target::CreateTime => out.face.create_time = Some(format_time(face.create_time)),
            Target::AccountId => out.face.account_id = Some(face.account_id),
            Target::Lists => out.face.lists = Some(face.lists.to_vec()),
        }
    }
    out
}

//! Sub-requests between a proxy and its matchers
//! (`POST /1/internal/matcher/subrequests`): the proxy sends each matcher, in
//! one call, the default sub-requests it routed there; the matcher answers
//! each with its hits (whole face records, so the proxy needs none of the
//! faces in memory) or its own error. Answers of the shards of a split list
//! are merged here, in the engine's order.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::{CandidateSet, FaceFilters};
use crate::descriptor::Binary;
use crate::errors::{Error, ErrorCode, Result};
use crate::index::{FaceRecord, Query};
use crate::matching::{SubQuery, SubResult};
use crate::planning::SubRequest;
use crate::service::Core;

/// The body of `POST /1/internal/matcher/subrequests`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubRequestsBody {
    /// The account of the client's request, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    /// The sub-requests, answered in this order.
    pub subrequests: Vec<RemoteSubRequest>,
}

/// One reference against one candidate set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteSubRequest {
    /// The reference's raw descriptor payload.
    pub descriptor: Binary,
    /// The reference's descriptor version.
    pub descriptor_version: u32,
    /// The candidate set's filters, as the client gave them.
    pub filters: FaceFilters,
    /// Most hits to answer.
    pub limit: usize,
    /// Least similarity of a hit.
    pub threshold: f64,
}

/// The answer to one sub-request: its result or its error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RemoteAnswer {
    /// Answered.
    Result(RemoteResult),
    /// Not answered, and why.
    Error(RemoteError),
}

/// The best hits, best first (ties by face id), with every field of each face.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteResult {
    /// At most `limit`, best first.
    pub hits: Vec<RemoteHit>,
    /// Candidates that passed the filters and the threshold.
    pub total_found: u64,
    /// Candidates compared with the reference.
    pub candidates_scanned: u64,
}

/// A matched face and its similarity.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteHit {
    /// Similarity to the reference.
    pub similarity: f64,
    /// The face's id.
    pub face_id: Uuid,
    /// The account that owns the face.
    pub account_id: Uuid,
    /// The face's external id, if it has one.
    pub external_id: Option<String>,
    /// The face's user data.
    pub user_data: String,
    /// Microseconds since the epoch, UTC.
    pub create_time: i64,
    /// The lists the face is in.
    pub lists: Vec<Uuid>,
}

/// Why a sub-request has no result: a code of the error table.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteError {
    /// The code, from the error table.
    pub error_code: u32,
    /// What went wrong with this sub-request.
    pub detail: String,
}

impl SubRequest<'_> {
    /// This sub-request as a matcher is sent it.
    pub fn remote(&self) -> RemoteSubRequest {
        let spec = self.spec();
        RemoteSubRequest {
            descriptor: Binary::Bytes(spec.descriptor.payload),
            descriptor_version: spec.descriptor.version,
            filters: spec.filters,
            limit: spec.limit,
            threshold: spec.threshold,
        }
    }

    /// A matcher's answer to this sub-request, checked for shape: at most
    /// `limit` hits, finite similarities at or above the threshold, best
    /// first, each face once. Err(why) names what is wrong with it.
    pub fn accept(&self, answer: RemoteAnswer) -> std::result::Result<Result<SubResult>, String> {
        let r = match answer {
            RemoteAnswer::Error(e) => {
                let code = ErrorCode::ALL.iter().find(|c| c.code() == e.error_code).ok_or_else(|| format!("unknown error code {}", e.error_code))?;
                return Ok(Err(Error::new(*code, e.detail)));
            }
            RemoteAnswer::Result(r) => r,
        };
        let (limit, threshold) = (self.set.limit, self.set.threshold);
        if r.hits.len() > limit || (r.hits.len() as u64) > r.total_found {
            return Err(format!("{} hits, total_found {}, limit {limit}", r.hits.len(), r.total_found));
        }
        if r.hits.iter().any(|h| !h.similarity.is_finite() || h.similarity < threshold) {
            return Err("a similarity that is not finite or below the threshold".into());
        }
        let hits: Vec<(f64, FaceRecord)> = r.hits.into_iter().map(|h| (h.similarity, face_record(h))).collect();
        if hits.windows(2).any(|w| engine_order(&w[0], &w[1]) != std::cmp::Ordering::Less) {
            return Err("hits out of order or named twice".into());
        }
        Ok(Ok(SubResult { hits, total_found: r.total_found, candidates_scanned: r.candidates_scanned }))
    }
}

/// The order the engine answers in: higher similarity first, ties by face id.
fn engine_order(a: &(f64, FaceRecord), b: &(f64, FaceRecord)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then_with(|| a.1.face_id.cmp(&b.1.face_id))
}

/// The exact answer over a list split in shards, from each shard's answer
/// (each holds its own faces' best `limit`): the best `limit` of them all.
pub fn merge_shards(parts: Vec<SubResult>, limit: usize) -> SubResult {
    let total_found = parts.iter().map(|p| p.total_found).sum();
    let candidates_scanned = parts.iter().map(|p| p.candidates_scanned).sum();
    let mut hits: Vec<(f64, FaceRecord)> = parts.into_iter().flat_map(|p| p.hits).collect();
    hits.sort_by(engine_order);
    hits.truncate(limit);
    SubResult { hits, total_found, candidates_scanned }
}

fn face_record(h: RemoteHit) -> FaceRecord {
    FaceRecord {
        face_id: h.face_id,
        account_id: h.account_id,
        external_id: h.external_id.map(Into::into),
        user_data: h.user_data.into(),
        create_time: h.create_time,
        lists: SmallVec::from_vec(h.lists),
    }
}

impl Core {
    /// Answer a proxy's sub-requests from this instance's memory, all in one
    /// job for the engine; a sub-request that cannot run here (a list this
    /// instance does not cache, a bad descriptor) has its own error.
    pub async fn answer_subrequests(&self, body: SubRequestsBody) -> Result<Vec<RemoteAnswer>> {
        let most = self.limits.references * self.limits.candidate_sets;
        if body.subrequests.len() > most {
            return Err(Error::new(ErrorCode::SchemaViolation, format!("{} sub-requests, at most {most} allowed", body.subrequests.len())));
        }
        let mut queries = Vec::new();
        let prepared: Vec<Result<()>> = body.subrequests.into_iter().map(|s| self.prepare_remote(body.account_id, s).map(|q| queries.push(q))).collect();
        let mut matched = match queries.is_empty() {
            true => Vec::new(),
            false => self.engine.match_faces(queries).await?,
        }
        .into_iter();
        Ok(prepared
            .into_iter()
            .map(|p| match p.map(|_| matched.next().expect("one result per query")) {
                Ok(r) => RemoteAnswer::Result(RemoteResult {
                    hits: r.hits.into_iter().map(|(similarity, f)| remote_hit(similarity, f)).collect(),
                    total_found: r.total_found,
                    candidates_scanned: r.candidates_scanned,
                }),
                Err(e) => RemoteAnswer::Error(RemoteError { error_code: e.code.code(), detail: e.detail }),
            })
            .collect())
    }

    fn prepare_remote(&self, account: Option<Uuid>, s: RemoteSubRequest) -> Result<SubQuery> {
        let set = self.compile_set(account, CandidateSet { filters: s.filters, targets: None, limit: Some(s.limit), threshold: Some(s.threshold) })?;
        let d = self.versions.parse(&s.descriptor.decode()?, Some(s.descriptor_version))?;
        let query = Arc::new(Query::new(self.versions.get(d.version)?, &d.payload));
        Ok(SubQuery { version: d.version, query, filter: set.filter, limit: set.limit, threshold: set.threshold })
    }
}

fn remote_hit(similarity: f64, f: FaceRecord) -> RemoteHit {
    RemoteHit {
        similarity,
        face_id: f.face_id,
        account_id: f.account_id,
        external_id: f.external_id.map(String::from),
        user_data: f.user_data.into(),
        create_time: f.create_time,
        lists: f.lists.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(similarity: f64, id: u128) -> (f64, FaceRecord) {
        let face = FaceRecord {
            face_id: Uuid::from_u128(id),
            account_id: Uuid::nil(),
            external_id: None,
            user_data: Box::default(),
            create_time: 0,
            lists: SmallVec::new(),
        };
        (similarity, face)
    }

    #[test]
    fn shards_merge_to_the_best_of_all_ties_by_face_id() {
        let a = SubResult { hits: vec![hit(0.9, 5), hit(0.5, 1)], total_found: 7, candidates_scanned: 10 };
        let b = SubResult { hits: vec![hit(0.9, 2), hit(0.7, 9)], total_found: 3, candidates_scanned: 12 };
        let m = merge_shards(vec![a, b], 3);
        let got: Vec<(f64, u128)> = m.hits.iter().map(|(s, f)| (*s, f.face_id.as_u128())).collect();
        assert_eq!(got, vec![(0.9, 2), (0.9, 5), (0.7, 9)]);
        assert_eq!((m.total_found, m.candidates_scanned), (10, 22));
    }
}

//! The request and response bodies of docs/api.md, as serde types. The same types
//! read JSON and msgpack; unknown fields are refused so that a misspelt filter
//! never silently widens a match.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::descriptor::Binary;

/// `POST /1/lists`: a new list of an account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewList {
    /// The account that owns the list.
    pub account_id: Uuid,
    /// Free text kept with the list (at most `limits.user_data_chars`).
    #[serde(default)]
    pub user_data: String,
}

/// `POST /1/lists` answered: the new list's id and where to read it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedList {
    /// The new list's id (uuid4).
    pub list_id: Uuid,
    /// `/1/lists/{list_id}`.
    pub url: String,
}

/// `GET /1/lists/{list_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListView {
    /// The list's id.
    pub list_id: Uuid,
    /// The account that owns the list.
    pub account_id: Uuid,
    /// The text given at creation.
    pub user_data: String,
    /// RFC 3339 UTC with microseconds.
    pub create_time: String,
    /// Faces attached to the list now.
    pub face_count: usize,
}

/// What `PATCH /1/lists/{list_id}/faces` does with the faces it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MembershipAction {
    /// Add the faces to the list.
    Attach,
    /// Take the faces out of the list; they stay stored.
    Detach,
}

/// `PATCH /1/lists/{list_id}/faces`: attach or detach faces.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFacesPatch {
    /// Attach or detach.
    pub action: MembershipAction,
    /// The faces to attach or detach.
    pub face_ids: Vec<Uuid>,
}

/// A descriptor to store: an SDK container or raw bytes, base64 in JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DescriptorInput {
    /// The container or raw payload (bytes in msgpack, base64 in JSON).
    pub data: Binary,
    /// Its version; absent, the container's own or `descriptors.default_version`.
    #[serde(default)]
    pub version: Option<u32>,
}

/// `POST /1/faces` (and one element of `POST /1/faces/bulk`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFace {
    /// The account that owns the face.
    pub account_id: Uuid,
    /// The face's descriptor.
    pub descriptor: DescriptorInput,
    /// The caller's own id for the face (at most `limits.external_id_chars`).
    #[serde(default)]
    pub external_id: Option<String>,
    /// Free text kept with the face (at most `limits.user_data_chars`).
    #[serde(default)]
    pub user_data: String,
    /// Lists of the same account to attach the face to.
    #[serde(default)]
    pub lists: Vec<Uuid>,
}

/// `POST /1/faces` answered: the new face's id and where to read it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedFace {
    /// The new face's id (uuid4).
    pub face_id: Uuid,
    /// `/1/faces/{face_id}`.
    pub url: String,
}

/// `POST /1/faces/bulk` answered: the new faces' ids, in input order.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedFaces {
    /// One id per face sent, in the same order.
    pub face_ids: Vec<Uuid>,
}

/// `GET /1/faces/{face_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FaceView {
    /// The face's id.
    pub face_id: Uuid,
    /// The account that owns the face.
    pub account_id: Uuid,
    /// The caller's own id, if one was given.
    pub external_id: Option<String>,
    /// The text given at creation.
    pub user_data: String,
    /// RFC 3339 UTC with microseconds.
    pub create_time: String,
    /// The lists the face is attached to.
    pub lists: Vec<Uuid>,
    /// The version of its descriptor.
    pub descriptor_version: u32,
}

// ---- matching ----

/// What a `/1/matcher/faces` request matches from, tagged by `type`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Reference {
    /// A descriptor sent in the request.
    Descriptor {
        /// The caller's id for it, echoed in the answer.
        #[serde(default)]
        id: Option<String>,
        /// The container or raw payload.
        data: Binary,
        /// The version of a raw payload (absent: `descriptors.default_version`).
        #[serde(default)]
        descriptor_version: Option<u32>,
    },
    /// A stored face's descriptor, looked up by its id.
    Face {
        /// The face's id.
        id: Uuid,
    },
}

/// Where candidates come from; LUNA's API names more, this service keeps faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The stored faces.
    Faces,
}

/// Which faces a candidate set holds; every filter given must hold (AND).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)] // LUNA's field names: `create_time__gte` and the like
pub struct FaceFilters {
    /// Where the candidates come from.
    pub origin: Origin,
    /// Faces attached to this list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_id: Option<Uuid>,
    /// Faces of this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    /// Only these faces (a repeated id counts once; empty: no restriction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_ids: Option<Vec<Uuid>>,
    /// Only faces with these external ids (empty: no restriction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ids: Option<Vec<String>>,
    /// Faces whose `user_data` is exactly this (empty: no restriction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Created at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time__gte: Option<String>,
    /// Created before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time__lt: Option<String>,
    /// Face ids from this one on, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_id__gte: Option<Uuid>,
    /// Face ids below this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_id__lt: Option<Uuid>,
}

/// A field a match result carries, as a request's `targets` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The matched face's id.
    FaceId,
    /// The similarity to the reference.
    Similarity,
    /// The face's `user_data`.
    UserData,
    /// The face's `external_id`.
    ExternalId,
    /// The face's `create_time`.
    CreateTime,
    /// The face's account.
    AccountId,
    /// The lists the face is attached to.
    Lists,
}

impl Target {
    /// The name a request uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::FaceId => "face_id",
            Target::Similarity => "similarity",
            Target::UserData => "user_data",
            Target::ExternalId => "external_id",
            Target::CreateTime => "create_time",
            Target::AccountId => "account_id",
            Target::Lists => "lists",
        }
    }
}

/// One set of candidates of a `/1/matcher/faces` request, and what to answer about it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateSet {
    /// Which faces are candidates.
    pub filters: FaceFilters,
    /// The fields each result carries (absent: `face_id` and `similarity`).
    #[serde(default)]
    pub targets: Option<Vec<Target>>,
    /// Most results to return (absent: `limits.default_limit`; at most `limits.max_limit`).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Least similarity a result needs (absent: 0).
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// `POST /1/matcher/faces`: every reference matched against every candidate set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchFacesRequest {
    /// What to match from (at most `limits.references`).
    pub references: Vec<Reference>,
    /// What to match against (at most `limits.candidate_sets`).
    pub candidates: Vec<CandidateSet>,
}

/// The reference an answer is for, as the request gave it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReferenceEcho {
    /// `descriptor` or `face`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The reference's id, if the request gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A matched face with only the requested targets set.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct FaceTargets {
    /// The face's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub face_id: Option<Uuid>,
    /// The face's `user_data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// The face's `external_id` (requested but unset: `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<Option<String>>,
    /// The face's `create_time`, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    /// The face's account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    /// The lists the face is attached to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lists: Option<Vec<Uuid>>,
}

/// One result of a candidate set: a face and its similarity.
#[derive(Debug, Serialize, ToSchema)]
pub struct FaceMatch {
    /// The face, with the requested targets.
    pub face: FaceTargets,
    /// The similarity, when requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
}

/// The answer for one candidate set. A set that could not be answered (a
/// matching plugin's `ErrorMatchResult`) has an empty `result` and its `error`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CandidateMatches {
    /// The set's filters, as the request gave them.
    pub filters: FaceFilters,
    /// The best faces, by similarity descending, ties by `face_id`.
    pub result: Vec<FaceMatch>,
    /// Candidates that passed the filters and the threshold, before `limit` cut them.
    pub total_found: u64,
    /// Why this candidate set has no result (a matching plugin's
    /// `ErrorMatchResult`, no matcher for it in a proxy, or its matcher
    /// failed); the other sets are still answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// The body of every error answer, as LUNA has it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The code, from the table in [`crate::errors`].
    pub error_code: u32,
    /// The code's fixed description.
    pub desc: &'static str,
    /// What went wrong in this request.
    pub detail: String,
    /// Where the code is documented ([`error_link`]).
    pub link: String,
}

impl From<&crate::errors::Error> for ErrorBody {
    fn from(e: &crate::errors::Error) -> Self {
        ErrorBody { error_code: e.code.code(), desc: e.code.desc(), detail: e.detail.clone(), link: error_link(e.code.code()) }
    }
}

/// Where an error code is documented: its row of the page `/1/docs/errors`.
pub fn error_link(code: u32) -> String {
    format!("/1/docs/errors#error-{code}")
}

/// The answer for one reference: its matches, or the error that kept it from being loaded.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReferenceMatches {
    /// The reference, as the request gave it.
    pub reference: ReferenceEcho,
    /// One element per candidate set, in request order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<CandidateMatches>>,
    /// Why this reference could not be matched (an unknown face).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// A descriptor of `/1/matcher/raw` with the caller's id for it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawItem {
    /// The caller's id, echoed in the answer.
    pub id: String,
    /// The container or raw payload.
    pub data: Binary,
}

/// `POST /1/matcher/raw`: descriptors matched against descriptors, nothing stored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchRawRequest {
    /// What to match from (at most `limits.references`).
    pub references: Vec<RawItem>,
    /// What to match against (at most `limits.raw_candidates`).
    pub candidates: Vec<RawItem>,
    /// The version of raw payloads (absent: `descriptors.default_version`).
    #[serde(default)]
    pub descriptor_version: Option<u32>,
    /// Most matches per reference (absent: `limits.default_limit`).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Least similarity a match needs (absent: 0).
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// One match of `/1/matcher/raw`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RawMatch {
    /// The candidate's id, as the request gave it.
    pub candidate_id: String,
    /// The similarity to the reference.
    pub similarity: f64,
}

/// The answer for one reference of `/1/matcher/raw`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RawReferenceMatches {
    /// The reference's id, as the request gave it.
    pub reference_id: String,
    /// The best candidates, by similarity descending, ties by `candidate_id`.
    pub matches: Vec<RawMatch>,
}

/// `GET /healthcheck` when healthy.
#[derive(Debug, Serialize, ToSchema)]
pub struct Healthy {
    /// Seconds the check took.
    pub execution_time: f64,
}

/// A component that is not healthy, as LUNA reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ComponentError {
    /// `store`, or `plugin:<name>`.
    pub component: String,
    /// What is wrong with it.
    pub error: String,
}

/// `GET /healthcheck` when a component is starting (503) or down (502).
#[derive(Debug, Serialize, ToSchema)]
pub struct Unhealthy {
    /// One entry per component that is not healthy.
    pub errors: Vec<ComponentError>,
}

/// What `GET /healthcheck` answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Health {
    /// Every component is healthy (200).
    Healthy(Healthy),
    /// A component is starting or down.
    Unhealthy(Unhealthy),
}

/// `GET /1/version`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionBody {
    /// The numbers, under LUNA's key `Version`.
    #[serde(rename = "Version")]
    pub version: VersionNumbers,
}

/// The service's version numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionNumbers {
    /// The API version: 1.
    pub api: u32,
    /// The service's major version.
    pub major: u32,
    /// The service's minor version.
    pub minor: u32,
    /// The service's patch version.
    pub patch: u32,
}

// ---- the in-memory cache ----

/// The lists an instance keeps in memory, as LUNA's
/// `DESCRIPTORS_CACHE.cached_data.faces_lists`: `include` absent is every
/// list; `exclude` takes lists out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheScope {
    /// Only these lists (absent: every list, and faces in no list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<Uuid>>,
    /// Lists left out.
    pub exclude: Vec<Uuid>,
    /// Only the faces of this shard of the lists in scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

/// One part of the faces when a list is split over several matchers: a face
/// belongs to the shard that rendezvous hashing of its id picks among
/// `0..count`, so every matcher agrees without talking to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// This shard, below `count`.
    pub index: u32,
    /// How many shards the faces are split into.
    pub count: u32,
}

impl Shard {
    /// Whether `face_id` belongs to this shard.
    pub fn holds(&self, face_id: &Uuid) -> bool {
        hrw_hash::HrwNodes::new(0..self.count).sorted(face_id.as_bytes()).next() == Some(&self.index)
    }
}

impl CacheScope {
    /// Every list and every face, those in no list included (of its shard, if any).
    pub fn is_all(&self) -> bool {
        self.include.is_none() && self.exclude.is_empty()
    }

    /// Whether a face of `list_id` is kept in memory under this scope.
    pub fn caches(&self, list_id: &Uuid) -> bool {
        self.include.as_ref().is_none_or(|i| i.contains(list_id)) && !self.exclude.contains(list_id)
    }
}

/// Where an instance keeps its candidates (`storage.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One SQLite file, this instance's own.
    Sqlite,
    /// One PostgreSQL database shared by every instance.
    Postgres,
}

/// `GET /1/matcher/cache`: what an instance matches from, for a proxy to
/// route by. A match on `list_id` can go to an instance that is `ready` and
/// whose `scope` caches the list; a match without a list filter needs a scope
/// that caches everything (`all`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CacheReport {
    /// Where this instance keeps its candidates.
    pub backend: StoreBackend,
    /// The scope caches every list and the faces in none.
    pub all: bool,
    /// The lists this instance keeps in memory.
    pub scope: CacheScope,
    /// Loaded and matching.
    pub ready: bool,
    /// The last change of the shared store applied (`<xid>:<seq>`); none for SQLite.
    #[schema(value_type = Option<String>, pattern = "^[0-9]+:[0-9]+$")]
    pub position: Option<crate::store::Position>,
    /// Age in seconds of the oldest change not yet applied, at the last read of the change log; 0 for SQLite.
    pub lag_seconds: f64,
    /// Faces in memory.
    pub faces: usize,
    /// Lists in memory.
    pub lists: usize,
}

impl CacheReport {
    /// Whether this instance can answer a match on `list_id` (None: on every face).
    pub fn can_match(&self, list_id: Option<Uuid>) -> bool {
        self.ready && list_id.map_or(self.all, |l| self.scope.caches(&l))
    }
}

//! The request and response bodies of api.md, as serde types. The same types
//! read JSON and msgpack; unknown fields are refused so that a misspelt filter
//! never silently widens a match.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::descriptor::Binary;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewList {
    pub account_id: Uuid,
    #[serde(default)]
    pub user_data: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedList {
    pub list_id: Uuid,
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListView {
    pub list_id: Uuid,
    pub account_id: Uuid,
    pub user_data: String,
    pub create_time: String,
    pub face_count: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MembershipAction {
    Attach,
    Detach,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFacesPatch {
    pub action: MembershipAction,
    pub face_ids: Vec<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DescriptorInput {
    pub data: Binary,
    #[serde(default)]
    pub version: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFace {
    pub account_id: Uuid,
    pub descriptor: DescriptorInput,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub user_data: String,
    #[serde(default)]
    pub lists: Vec<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedFace {
    pub face_id: Uuid,
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedFaces {
    pub face_ids: Vec<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FaceView {
    pub face_id: Uuid,
    pub account_id: Uuid,
    pub external_id: Option<String>,
    pub user_data: String,
    pub create_time: String,
    pub lists: Vec<Uuid>,
    pub descriptor_version: u32,
}

// ---- matching ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Reference {
    Descriptor {
        #[serde(default)]
        id: Option<String>,
        data: Binary,
        #[serde(default)]
        descriptor_version: Option<u32>,
    },
    Face {
        id: Uuid,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Faces,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)] // LUNA's field names: `create_time__gte` and the like
pub struct FaceFilters {
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_ids: Option<Vec<Uuid>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time__gte: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time__lt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_id__gte: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_id__lt: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    FaceId,
    Similarity,
    UserData,
    ExternalId,
    CreateTime,
    AccountId,
    Lists,
}

impl Target {
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateSet {
    pub filters: FaceFilters,
    #[serde(default)]
    pub targets: Option<Vec<Target>>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub threshold: Option<f64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchFacesRequest {
    pub references: Vec<Reference>,
    pub candidates: Vec<CandidateSet>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReferenceEcho {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A matched face with only the requested targets set.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct FaceTargets {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub face_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lists: Option<Vec<Uuid>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FaceMatch {
    pub face: FaceTargets,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CandidateMatches {
    pub filters: FaceFilters,
    pub result: Vec<FaceMatch>,
    pub total_found: u64,
    /// Why this candidate set has no result (a proxy found no matcher for
    /// it, or its matcher failed); the other sets are still answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error_code: u32,
    pub desc: &'static str,
    pub detail: String,
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

#[derive(Debug, Serialize, ToSchema)]
pub struct ReferenceMatches {
    pub reference: ReferenceEcho,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<CandidateMatches>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawItem {
    pub id: String,
    pub data: Binary,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchRawRequest {
    pub references: Vec<RawItem>,
    pub candidates: Vec<RawItem>,
    #[serde(default)]
    pub descriptor_version: Option<u32>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub threshold: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RawMatch {
    pub candidate_id: String,
    pub similarity: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RawReferenceMatches {
    pub reference_id: String,
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
    pub error: String,
}

/// `GET /healthcheck` when a component is starting (503) or down (502).
#[derive(Debug, Serialize, ToSchema)]
pub struct Unhealthy {
    pub errors: Vec<ComponentError>,
}

/// What `GET /healthcheck` answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Health {
    Healthy(Healthy),
    Unhealthy(Unhealthy),
}

/// `GET /1/version`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionBody {
    #[serde(rename = "Version")]
    pub version: VersionNumbers,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionNumbers {
    /// The API version: 1.
    pub api: u32,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

// ---- the in-memory cache ----

/// The lists an instance keeps in memory, as LUNA's
/// `DESCRIPTORS_CACHE.cached_data.faces_lists`: `include` absent is every
/// list; `exclude` takes lists out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheScope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<Uuid>>,
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

    pub fn caches(&self, list_id: &Uuid) -> bool {
        self.include.as_ref().is_none_or(|i| i.contains(list_id)) && !self.exclude.contains(list_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Sqlite,
    Postgres,
}

/// `GET /1/matcher/cache`: what an instance matches from, for a proxy to
/// route by. A match on `list_id` can go to an instance that is `ready` and
/// whose `scope` caches the list; a match without a list filter needs a scope
/// that caches everything (`all`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CacheReport {
    pub backend: StoreBackend,
    pub all: bool,
    pub scope: CacheScope,
    /// Loaded and matching.
    pub ready: bool,
    /// The last change of the shared store applied (`<xid>:<seq>`); none for SQLite.
    #[schema(value_type = Option<String>, pattern = "^[0-9]+:[0-9]+$")]
    pub position: Option<crate::store::Position>,
    pub lag_seconds: f64,
    pub faces: usize,
    pub lists: usize,
}

impl CacheReport {
    /// Whether this instance can answer a match on `list_id` (None: on every face).
    pub fn can_match(&self, list_id: Option<Uuid>) -> bool {
        self.ready && list_id.map_or(self.all, |l| self.scope.caches(&l))
    }
}

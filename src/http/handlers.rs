//! Route handlers: decode, call the core, encode. No logic of their own.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::HeaderName;
use actix_web::http::StatusCode;
use actix_web::{web, CustomizeResponder, FromRequest, HttpMessage, HttpRequest, HttpResponse, Responder};
use futures_util::future::{ready, Ready};
use luna_core::api::*;
use luna_core::store::Position;
use luna_core::subrequests::{RemoteAnswer, SubRequestsBody};
use luna_core::{Core, Error, ErrorCode};
use serde::Deserialize;
use uuid::Uuid;

use luna_actors::plugin::{CallRoute, RouteError};
use luna_actors::status::{PluginReport, PluginState};
use utoipa::IntoParams;

use super::codec::{read_body, Input, Output};
use super::errors::ApiError;
use super::middleware::{BadRequestId, PluginRoute, RequestId};
use super::AppState;
use crate::pipeline;

type Reply<T> = Result<Output<T>, ApiError>;

/// The query of a request scoped to an account.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountQuery {
    /// Every list, face and filter the request touches must belong to this account.
    account_id: Option<Uuid>,
}

/// A position in the shared store's change log: answered by writes, awaited by matches.
pub const STORE_POSITION: HeaderName = HeaderName::from_static("luna-store-position");

/// The `account_id` query parameter that scopes a request.
pub struct Account(pub Option<Uuid>);

impl FromRequest for Account {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            serde_urlencoded::from_str::<AccountQuery>(req.query_string())
                .map(|q| Account(q.account_id))
                .map_err(|e| ApiError::new(ErrorCode::BadQueryParameter, format!("account_id: {e}"))),
        )
    }
}

/// `{list_id}` of a route.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ListId {
    #[allow(dead_code)] // read by name from the route: see `path_id`
    list_id: Uuid,
}

/// `{face_id}` of a route.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FaceId {
    #[allow(dead_code)] // read by name from the route: see `path_id`
    face_id: Uuid,
}

/// A uuid from the path, by its name in the route.
fn path_id(req: &HttpRequest, name: &str) -> Result<Uuid, ApiError> {
    let raw = req.match_info().get(name).unwrap_or("");
    raw.parse().map_err(|_| ApiError::new(ErrorCode::BadQueryParameter, format!("{name} '{raw}' is not a uuid")))
}

/// Run a store write on the blocking pool: it waits for an fsync.
async fn blocking<T: Send + 'static>(state: &AppState, f: impl FnOnce(&Core) -> Result<T, Error> + Send + 'static) -> Result<T, ApiError> {
    let core = state.core.clone();
    web::block(move || f(&core)).await.map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?.map_err(ApiError)
}

/// A write's answer, with the shared store's position it committed at, so
/// that a proxy can ask another instance for an answer that includes it.
fn written<T>(out: T, position: Option<Position>) -> CustomizeResponder<T>
where
    T: Responder,
{
    let reply = out.customize();
    match position {
        Some(p) => reply.insert_header((STORE_POSITION, p.to_string())),
        None => reply,
    }
}

type Written<T> = Result<CustomizeResponder<Output<T>>, ApiError>;
type WrittenEmpty = Result<CustomizeResponder<HttpResponse>, ApiError>;

#[utoipa::path(post, path = "/1/lists", tag = "lists", params(AccountQuery), request_body = NewList,
    responses((status = 201, description = "Created", body = CreatedList), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn create_list(state: web::Data<AppState>, account: Account, body: Input<NewList>) -> Written<CreatedList> {
    let w = blocking(&state, move |c| c.create_list(account.0, body.0)).await?;
    Ok(written(Output::created(w.value), w.position))
}

#[utoipa::path(get, path = "/1/lists/{list_id}", tag = "lists", params(ListId, AccountQuery),
    responses((status = 200, description = "The list with its face_count", body = ListView), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn get_list(state: web::Data<AppState>, account: Account, req: HttpRequest) -> Reply<ListView> {
    Ok(Output::ok(state.core.get_list(account.0, path_id(&req, "list_id")?).await?))
}

#[utoipa::path(delete, path = "/1/lists/{list_id}", tag = "lists", params(ListId, AccountQuery),
    responses((status = 204, description = "Deleted; its faces stay"), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn delete_list(state: web::Data<AppState>, account: Account, req: HttpRequest) -> WrittenEmpty {
    let id = path_id(&req, "list_id")?;
    let w = blocking(&state, move |c| c.delete_list(account.0, id)).await?;
    Ok(written(HttpResponse::NoContent().finish(), w.position))
}

#[utoipa::path(patch, path = "/1/lists/{list_id}/faces", tag = "lists", params(ListId, AccountQuery), request_body = ListFacesPatch,
    responses((status = 204, description = "Attached or detached"), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn patch_list_faces(state: web::Data<AppState>, account: Account, req: HttpRequest, body: Input<ListFacesPatch>) -> WrittenEmpty {
    let id = path_id(&req, "list_id")?;
    let w = blocking(&state, move |c| c.patch_list_faces(account.0, id, body.0)).await?;
    Ok(written(HttpResponse::NoContent().finish(), w.position))
}

#[utoipa::path(post, path = "/1/faces", tag = "faces", params(AccountQuery), request_body = NewFace,
    responses((status = 201, description = "Created", body = CreatedFace), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn create_face(state: web::Data<AppState>, account: Account, body: Input<NewFace>) -> Written<CreatedFace> {
    let w = blocking(&state, move |c| c.create_face(account.0, body.0)).await?;
    Ok(written(Output::created(w.value), w.position))
}

#[utoipa::path(post, path = "/1/faces/bulk", tag = "faces", params(AccountQuery), request_body = Vec<NewFace>,
    responses((status = 201, description = "All created, in one transaction; ids in input order", body = CreatedFaces), (status = "default", description = "An error: nothing was created", body = ErrorBody)))]
pub async fn create_faces(state: web::Data<AppState>, account: Account, body: Input<Vec<NewFace>>) -> Written<CreatedFaces> {
    let w = blocking(&state, move |c| c.create_faces(account.0, body.0)).await?;
    Ok(written(Output::created(w.value), w.position))
}

#[utoipa::path(get, path = "/1/faces/{face_id}", tag = "faces", params(FaceId, AccountQuery),
    responses((status = 200, description = "The face", body = FaceView), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn get_face(state: web::Data<AppState>, account: Account, req: HttpRequest) -> Reply<FaceView> {
    Ok(Output::ok(state.core.get_face(account.0, path_id(&req, "face_id")?).await?))
}

#[utoipa::path(delete, path = "/1/faces/{face_id}", tag = "faces", params(FaceId, AccountQuery),
    responses((status = 204, description = "Deleted"), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn delete_face(state: web::Data<AppState>, account: Account, req: HttpRequest) -> WrittenEmpty {
    let id = path_id(&req, "face_id")?;
    let w = blocking(&state, move |c| c.delete_face(account.0, id)).await?;
    Ok(written(HttpResponse::NoContent().finish(), w.position))
}

/// A store position the answer must include: the `store_position` query
/// parameter or the `Luna-Store-Position` header (which wins).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PositionQuery {
    /// `<xid>:<seq>`, as a write through any instance answered it: the match
    /// waits (at most `cache.position_wait`) until this instance has applied
    /// it, else 31011. Also as the header `Luna-Store-Position`.
    #[param(pattern = "^[0-9]+:[0-9]+$")]
    store_position: Option<String>,
}

/// Wait for the store position the request names, if it names one.
async fn include_position(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let header = req.headers().get(STORE_POSITION).map(|v| ("Luna-Store-Position", v.to_str().unwrap_or("").to_owned()));
    let query = || serde_urlencoded::from_str::<PositionQuery>(req.query_string()).ok()?.store_position.map(|p| ("store_position", p));
    let Some((name, text)) = header.or_else(query) else { return Ok(()) };
    let position: Position = text.parse().map_err(|e| ApiError::new(ErrorCode::BadQueryParameter, format!("{name}: {e}")))?;
    Ok(state.core.wait_for(position).await?)
}

#[utoipa::path(post, path = "/1/matcher/faces", tag = "matching", params(AccountQuery, PositionQuery), request_body = MatchFacesRequest,
    responses((status = 200, description = "One element per reference, in request order", body = Vec<ReferenceMatches>), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn match_faces(state: web::Data<AppState>, account: Account, req: HttpRequest, body: Input<MatchFacesRequest>) -> Reply<Vec<ReferenceMatches>> {
    include_position(&state, &req).await?;
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let (references, reports) = pipeline::match_faces(&state.core, state.matching_plugins(), state.matchers.as_deref(), account.0, &request_id, body.0).await?;
    req.extensions_mut().insert(reports);
    Ok(Output::ok(references))
}

#[utoipa::path(post, path = "/1/matcher/raw", tag = "matching", params(PositionQuery), request_body = MatchRawRequest,
    responses((status = 200, description = "One element per reference, in request order", body = Vec<RawReferenceMatches>), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn match_raw(state: web::Data<AppState>, req: HttpRequest, body: Input<MatchRawRequest>) -> Reply<Vec<RawReferenceMatches>> {
    include_position(&state, &req).await?;
    Ok(Output::ok(state.core.match_raw(body.0).await?))
}

/// What this instance matches from, for a proxy to route by.
#[utoipa::path(get, path = "/1/matcher/cache", tag = "matching",
    responses((status = 200, description = "What this instance matches from: its cache scope, readiness and store position", body = CacheReport),
              (status = "default", description = "An error", body = ErrorBody)))]
pub async fn cache(state: web::Data<AppState>) -> Reply<CacheReport> {
    Ok(Output::ok(state.core.cache_report()))
}

/// Internal: a proxy's default sub-requests for this matcher, answered each
/// with its result or its error. Not for clients.
#[utoipa::path(post, path = "/1/internal/matcher/subrequests", tag = "internal", params(PositionQuery), request_body = SubRequestsBody,
    responses((status = 200, description = "One answer per sub-request, in request order", body = Vec<RemoteAnswer>),
              (status = "default", description = "An error of the whole call (31011: the store position was not reached in time)", body = ErrorBody)))]
pub async fn subrequests(state: web::Data<AppState>, req: HttpRequest, body: Input<SubRequestsBody>) -> Reply<Vec<RemoteAnswer>> {
    include_position(&state, &req).await?;
    Ok(Output::ok(state.core.answer_subrequests(body.0).await?))
}

/// What `/healthcheck` checks besides the service itself.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HealthQuery {
    /// 1: also the services this one depends on (role proxy: every matcher;
    /// 502 when none answers).
    include_luna_services: Option<u8>,
}

#[utoipa::path(get, path = "/healthcheck", tag = "service", params(HealthQuery),
    responses((status = 200, description = "Healthy", body = Healthy), (status = 502, description = "The store or a required plugin is down, or (role proxy, include_luna_services=1) no matcher answers", body = Unhealthy),
              (status = 503, description = "Plugins are still starting", body = Unhealthy), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn healthcheck(state: web::Data<AppState>, req: HttpRequest) -> Result<Output<Health>, ApiError> {
    let start = Instant::now();
    let mut starting: Vec<_> = state.core.loading().map(|why| ComponentError { component: "store".into(), error: why }).into_iter().collect();
    if let Some(plugins) = state.plugins.as_ref().filter(|p| !p.ready()) {
        starting.extend(
            plugins
                .reports()
                .into_iter()
                .filter(|r| r.state == PluginState::Loading)
                .map(|r| ComponentError { component: format!("plugin:{}", r.name), error: "starting".into() }),
        );
    }
    if !starting.is_empty() {
        return Ok(Output { status: StatusCode::SERVICE_UNAVAILABLE, body: Health::Unhealthy(Unhealthy { errors: starting }) });
    }
    let core: Arc<Core> = state.core.clone();
    let mut errors = Vec::new();
    if let Err(e) = web::block(move || core.check_store()).await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
        errors.push(ComponentError { component: "store".into(), error: e });
    }
    for (name, error) in state.plugins.as_ref().map(|p| p.required_down()).unwrap_or_default() {
        errors.push(ComponentError { component: format!("plugin:{name}"), error });
    }
    let query = serde_urlencoded::from_str::<HealthQuery>(req.query_string())
        .map_err(|e| ApiError::new(ErrorCode::BadQueryParameter, format!("include_luna_services: {e}")))?;
    if let Some(matchers) = state.matchers.as_ref().filter(|_| query.include_luna_services == Some(1)) {
        // Unhealthy when the proxy can match nowhere: then every matcher is listed with its error.
        let (down, any_up) = matchers.health().await;
        if !any_up {
            errors.extend(down);
        }
    }
    Ok(if errors.is_empty() {
        Output::ok(Health::Healthy(Healthy { execution_time: start.elapsed().as_secs_f64() }))
    } else {
        Output { status: StatusCode::BAD_GATEWAY, body: Health::Unhealthy(Unhealthy { errors }) }
    })
}

#[utoipa::path(get, path = "/1/plugins", tag = "service",
    responses((status = 200, description = "Every configured plugin", body = Vec<PluginReport>), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn plugins(state: web::Data<AppState>) -> Reply<Vec<PluginReport>> {
    Ok(Output::ok(state.plugins.as_ref().map(|p| p.reports()).unwrap_or_default()))
}

#[utoipa::path(get, path = "/1/version", tag = "service",
    responses((status = 200, description = "The service version", body = VersionBody), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn version() -> Reply<VersionBody> {
    let v = |i: usize| env!("CARGO_PKG_VERSION").split('.').nth(i).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    Ok(Output::ok(VersionBody { version: VersionNumbers { api: 1, major: v(0), minor: v(1), patch: v(2) } }))
}

#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4"), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let plugins = state.plugins.as_ref().map(|p| p.reports()).unwrap_or_default();
    let matchers = state.matchers.as_ref().map(|m| m.statuses()).unwrap_or_default();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.telemetry.render(&state.core.stats(), &plugins, &matchers))
}

#[utoipa::path(get, path = "/1/docs/spec", tag = "service",
    responses((status = 200, description = "This OpenAPI document", body = Object), (status = "default", description = "An error", body = ErrorBody)))]
pub async fn spec() -> Reply<utoipa::openapi::OpenApi> {
    Ok(Output::ok(super::openapi::document()))
}

/// The error table as a page, one anchor per code: where every error body's `link` points.
pub async fn errors_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(super::openapi::errors_page())
}

/// Any path the service does not route: a plugin route, or 11030.
pub async fn fallback(state: web::Data<AppState>, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    if let Some(bad) = req.extensions().get::<BadRequestId>() {
        return Err(bad.error());
    }
    let not_found = || ApiError::new(ErrorCode::RouteNotFound, format!("no route {} {}", req.method(), req.path()));
    let Some((plugins, route)) = state.plugins.as_ref().and_then(|p| Some((p, p.resolve(req.path())?))) else {
        return Err(not_found());
    };
    let body = read_body(&req, payload.into_inner()).await?;
    let template = route.template.clone();
    let call = CallRoute {
        template: route.template,
        params: route.params,
        method: req.method().to_string(),
        path: req.path().to_owned(),
        query: req.query_string().to_owned(),
        headers: req.headers().iter().filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned()))).collect(),
        body: body.to_vec(),
    };
    let reply = plugins.call_route(&route.plugin, call).await.map_err(|e| match e {
        RouteError::Unavailable(s) => ApiError::new(ErrorCode::PluginUnavailable, format!("plugin {} is {}", route.plugin, s.as_str())),
        RouteError::Failed(e) => ApiError::new(ErrorCode::PluginFailed, format!("plugin {}: {e}", route.plugin)),
        RouteError::TimedOut(e) => ApiError::new(ErrorCode::PluginTimeout, format!("plugin {}: {e}", route.plugin)),
    })?;
    match (reply.status, reply.body.is_empty()) {
        (404, true) => return Err(not_found()),
        (405, true) => return Ok(method_not_allowed(req, None).await),
        _ => {}
    }
    let status = StatusCode::from_u16(reply.status)
        .map_err(|_| ApiError::new(ErrorCode::PluginFailed, format!("plugin {} answered status {}", route.plugin, reply.status)))?;
    let mut response = HttpResponse::build(status);
    for (k, v) in reply.headers {
        response.insert_header((k, v));
    }
    let mut response = response.body(reply.body);
    response.extensions_mut().insert(PluginRoute(template));
    Ok(response)
}

/// 405, with the methods the resource serves in `Allow` when they are known.
pub async fn method_not_allowed(req: HttpRequest, allow: Option<String>) -> HttpResponse {
    let mut res =
        actix_web::ResponseError::error_response(&ApiError::new(ErrorCode::MethodNotAllowed, format!("{} is not allowed on {}", req.method(), req.path())));
    if let Some(allow) = allow.and_then(|a| actix_web::http::header::HeaderValue::from_str(&a).ok()) {
        res.headers_mut().insert(actix_web::http::header::ALLOW, allow);
    }
    res
}

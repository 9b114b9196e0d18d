//! Route handlers: decode, call the core, encode. No logic of their own.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::HeaderName;
use actix_web::http::StatusCode;
use actix_web::{web, CustomizeResponder, FromRequest, HttpMessage, HttpRequest, HttpResponse, Responder};
use futures_util::future::{ready, Ready};
use luna_core::api::*;
use luna_core::store::Position;
use luna_core::{Core, Error, ErrorCode};
use serde::Deserialize;
use uuid::Uuid;

use luna_actors::plugin::{CallRoute, RouteError};
use luna_actors::status::PluginState;
use serde_json::json;

use super::codec::{read_body, Input, Output};
use super::errors::ApiError;
use super::middleware::{PluginRoute, RequestId};
use super::AppState;
use crate::pipeline;

type Reply<T> = Result<Output<T>, ApiError>;

/// A position in the shared store's change log: answered by writes, awaited by matches.
pub const STORE_POSITION: HeaderName = HeaderName::from_static("luna-store-position");

/// The `account_id` query parameter that scopes a request.
pub struct Account(pub Option<Uuid>);

impl FromRequest for Account {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        #[derive(Deserialize)]
        struct Q {
            account_id: Option<Uuid>,
        }
        ready(
            serde_urlencoded::from_str::<Q>(req.query_string())
                .map(|q| Account(q.account_id))
                .map_err(|e| ApiError::new(ErrorCode::BadQueryParameter, format!("account_id: {e}"))),
        )
    }
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

pub async fn create_list(state: web::Data<AppState>, account: Account, body: Input<NewList>) -> Written<CreatedList> {
    let w = blocking(&state, move |c| c.create_list(account.0, body.0)).await?;
    Ok(written(Output::created(w.value), w.position))
}

pub async fn get_list(state: web::Data<AppState>, account: Account, req: HttpRequest) -> Reply<ListView> {
    Ok(Output::ok(state.core.get_list(account.0, path_id(&req, "list_id")?).await?))
}

pub async fn delete_list(state: web::Data<AppState>, account: Account, req: HttpRequest) -> WrittenEmpty {
    let id = path_id(&req, "list_id")?;
    let w = blocking(&state, move |c| c.delete_list(account.0, id)).await?;
    Ok(written(HttpResponse::NoContent().finish(), w.position))
}

pub async fn patch_list_faces(state: web::Data<AppState>, account: Account, req: HttpRequest, body: Input<ListFacesPatch>) -> WrittenEmpty {
    let id = path_id(&req, "list_id")?;
    let w = blocking(&state, move |c| c.patch_list_faces(account.0, id, body.0)).await?;
    Ok(written(HttpResponse::NoContent().finish(), w.position))
}

pub async fn create_face(state: web::Data<AppState>, account: Account, body: Input<NewFace>) -> Written<CreatedFace> {
    let w = blocking(&state, move |c| c.create_face(account.0, body.0)).await?;
    Ok(written(Output::created(w.value), w.position))
}

pub async fn create_faces(state: web::Data<AppState>, account: Account, body: Input<Vec<NewFace>>) -> Written<CreatedFaces> {
    let w = blocking(&state, move |c| c.create_faces(account.0, body.0)).await?;
    Ok(written(Output::created(w.value), w.position))
}

pub async fn get_face(state: web::Data<AppState>, account: Account, req: HttpRequest) -> Reply<FaceView> {
    Ok(Output::ok(state.core.get_face(account.0, path_id(&req, "face_id")?).await?))
}

pub async fn delete_face(state: web::Data<AppState>, account: Account, req: HttpRequest) -> WrittenEmpty {
    let id = path_id(&req, "face_id")?;
    let w = blocking(&state, move |c| c.delete_face(account.0, id)).await?;
    Ok(written(HttpResponse::NoContent().finish(), w.position))
}

/// Wait for the store position the request names, if it names one: the
/// `Luna-Store-Position` header or the `store_position` query parameter.
async fn include_position(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    #[derive(Deserialize)]
    struct Q {
        store_position: Option<String>,
    }
    let header = req.headers().get(STORE_POSITION).map(|v| ("Luna-Store-Position", v.to_str().unwrap_or("").to_owned()));
    let query = || serde_urlencoded::from_str::<Q>(req.query_string()).ok()?.store_position.map(|p| ("store_position", p));
    let Some((name, text)) = header.or_else(query) else { return Ok(()) };
    let position: Position = text.parse().map_err(|e| ApiError::new(ErrorCode::BadQueryParameter, format!("{name}: {e}")))?;
    Ok(state.core.wait_for(position).await?)
}

pub async fn match_faces(state: web::Data<AppState>, account: Account, req: HttpRequest, body: Input<MatchFacesRequest>) -> Reply<Vec<ReferenceMatches>> {
    include_position(&state, &req).await?;
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let (references, reports) = pipeline::match_faces(&state.core, state.matching_plugins(), account.0, &request_id, body.0).await?;
    req.extensions_mut().insert(reports);
    Ok(Output::ok(references))
}

pub async fn match_raw(state: web::Data<AppState>, req: HttpRequest, body: Input<MatchRawRequest>) -> Reply<Vec<RawReferenceMatches>> {
    include_position(&state, &req).await?;
    Ok(Output::ok(state.core.match_raw(body.0).await?))
}

/// What this instance matches from, for a proxy to route by.
pub async fn cache(state: web::Data<AppState>) -> Reply<CacheReport> {
    Ok(Output::ok(state.core.cache_report()))
}

pub async fn healthcheck(state: web::Data<AppState>) -> HttpResponse {
    let start = Instant::now();
    let mut starting: Vec<_> = state.core.loading().map(|why| json!({"component": "store", "error": why})).into_iter().collect();
    if let Some(plugins) = state.plugins.as_ref().filter(|p| !p.ready()) {
        starting.extend(
            plugins
                .reports()
                .into_iter()
                .filter(|r| r.state == PluginState::Loading)
                .map(|r| json!({"component": format!("plugin:{}", r.name), "error": "starting"})),
        );
    }
    if !starting.is_empty() {
        return HttpResponse::ServiceUnavailable().json(json!({"errors": starting}));
    }
    let core: Arc<Core> = state.core.clone();
    let mut errors = Vec::new();
    if let Err(e) = web::block(move || core.check_store()).await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
        errors.push(json!({"component": "store", "error": e}));
    }
    for (name, error) in state.plugins.as_ref().map(|p| p.required_down()).unwrap_or_default() {
        errors.push(json!({"component": format!("plugin:{name}"), "error": error}));
    }
    if errors.is_empty() {
        HttpResponse::Ok().json(json!({"execution_time": start.elapsed().as_secs_f64()}))
    } else {
        HttpResponse::build(StatusCode::BAD_GATEWAY).json(json!({"errors": errors}))
    }
}

pub async fn plugins(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.plugins.as_ref().map(|p| p.reports()).unwrap_or_default())
}

pub async fn version() -> HttpResponse {
    let v = |i: usize| env!("CARGO_PKG_VERSION").split('.').nth(i).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    HttpResponse::Ok().json(serde_json::json!({"Version": {"api": 1, "major": v(0), "minor": v(1), "patch": v(2)}}))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let plugins = state.plugins.as_ref().map(|p| p.reports()).unwrap_or_default();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.telemetry.render(&state.core.stats(), &plugins))
}

pub async fn spec() -> HttpResponse {
    HttpResponse::Ok().json(super::openapi::document())
}

/// Any path the service does not route: a plugin route, or 11030.
pub async fn fallback(state: web::Data<AppState>, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
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
        (405, true) => return method_not_allowed(req).await,
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

pub async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ErrorCode::MethodNotAllowed, format!("{} is not allowed on {}", req.method(), req.path())))
}

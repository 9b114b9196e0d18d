//! Route handlers: decode, call the core, encode. No logic of their own.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use futures_util::future::{ready, Ready};
use luna_core::api::*;
use luna_core::{Core, Error, ErrorCode};
use serde::Deserialize;
use uuid::Uuid;

use super::codec::{Input, Output};
use super::errors::ApiError;
use super::AppState;

type Reply<T> = Result<Output<T>, ApiError>;

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

pub async fn create_list(state: web::Data<AppState>, account: Account, body: Input<NewList>) -> Reply<CreatedList> {
    Ok(Output::created(blocking(&state, move |c| c.create_list(account.0, body.0)).await?))
}

pub async fn get_list(state: web::Data<AppState>, account: Account, req: HttpRequest) -> Reply<ListView> {
    Ok(Output::ok(state.core.get_list(account.0, path_id(&req, "list_id")?)?))
}

pub async fn delete_list(state: web::Data<AppState>, account: Account, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "list_id")?;
    blocking(&state, move |c| c.delete_list(account.0, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn patch_list_faces(state: web::Data<AppState>, account: Account, req: HttpRequest, body: Input<ListFacesPatch>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "list_id")?;
    blocking(&state, move |c| c.patch_list_faces(account.0, id, body.0)).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn create_face(state: web::Data<AppState>, account: Account, body: Input<NewFace>) -> Reply<CreatedFace> {
    Ok(Output::created(blocking(&state, move |c| c.create_face(account.0, body.0)).await?))
}

pub async fn create_faces(state: web::Data<AppState>, account: Account, body: Input<Vec<NewFace>>) -> Reply<CreatedFaces> {
    Ok(Output::created(blocking(&state, move |c| c.create_faces(account.0, body.0)).await?))
}

pub async fn get_face(state: web::Data<AppState>, account: Account, req: HttpRequest) -> Reply<FaceView> {
    Ok(Output::ok(state.core.get_face(account.0, path_id(&req, "face_id")?)?))
}

pub async fn delete_face(state: web::Data<AppState>, account: Account, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "face_id")?;
    blocking(&state, move |c| c.delete_face(account.0, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn match_faces(state: web::Data<AppState>, account: Account, body: Input<MatchFacesRequest>) -> Reply<Vec<ReferenceMatches>> {
    Ok(Output::ok(state.core.match_faces(account.0, body.0).await?))
}

pub async fn match_raw(state: web::Data<AppState>, body: Input<MatchRawRequest>) -> Reply<Vec<RawReferenceMatches>> {
    Ok(Output::ok(state.core.match_raw(body.0).await?))
}

pub async fn healthcheck(state: web::Data<AppState>) -> HttpResponse {
    let start = Instant::now();
    let core: Arc<Core> = state.core.clone();
    let store = web::block(move || core.check_store()).await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
    match store {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"execution_time": start.elapsed().as_secs_f64()})),
        Err(e) => HttpResponse::build(StatusCode::BAD_GATEWAY).json(serde_json::json!({"errors": [{"component": "store", "error": e}]})),
    }
}

pub async fn version() -> HttpResponse {
    let v = |i: usize| env!("CARGO_PKG_VERSION").split('.').nth(i).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    HttpResponse::Ok().json(serde_json::json!({"Version": {"api": 1, "major": v(0), "minor": v(1), "patch": v(2)}}))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.telemetry.render(&state.core.stats()))
}

pub async fn spec() -> HttpResponse {
    HttpResponse::Ok().json(super::openapi::document())
}

pub async fn route_not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ErrorCode::RouteNotFound, format!("no route {} {}", req.method(), req.path())))
}

pub async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ErrorCode::MethodNotAllowed, format!("{} is not allowed on {}", req.method(), req.path())))
}

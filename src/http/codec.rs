//! Bodies in and out: JSON always, msgpack by `Content-Type` and `Accept`.
//! Reading enforces the body-size limit and turns every decoding failure into
//! an error code.

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, Responder};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use luna_core::ErrorCode;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde::Serialize;

use super::errors::ApiError;
use super::AppState;

const MSGPACK: [&str; 2] = ["application/msgpack", "application/x-msgpack"];

/// A request body of type `T`.
pub struct Input<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for Input<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let msgpack = match body_format(req) {
            Ok(m) => m,
            Err(err) => return Box::pin(async move { Err(err) }),
        };
        let body = read_body(req, payload.take());
        Box::pin(async move { decode(&body.await?, msgpack).map(Input) })
    }
}

/// Whether a body is msgpack (or JSON) by its `Content-Type`, which must be
/// given: a body without one is refused, as is a charset other than UTF-8.
fn body_format(req: &HttpRequest) -> Result<bool, ApiError> {
    let unsupported = |what: String| Err(ApiError::new(ErrorCode::UnsupportedMediaType, format!("{what}: send application/json or application/msgpack")));
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return unsupported("no Content-Type".into());
    };
    let ct = ct.to_str().unwrap_or("");
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let msgpack = match mime.as_str() {
        "application/json" => false,
        m if MSGPACK.contains(&m) => true,
        _ => return unsupported(format!("'{ct}'")),
    };
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if name.trim().eq_ignore_ascii_case("charset") && !value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8") {
            return unsupported(format!("'{ct}': only UTF-8 is read"));
        }
    }
    Ok(msgpack)
}

/// The whole body, refused with its own code past the configured size or
/// when it does not arrive within `server.body_timeout`.
pub fn read_body(req: &HttpRequest, mut payload: Payload) -> impl std::future::Future<Output = Result<web::BytesMut, ApiError>> + 'static {
    let state = req.app_data::<web::Data<AppState>>();
    let limit = state.map_or(usize::MAX, |s| s.core.limits().body_bytes);
    let deadline = state.map_or(std::time::Duration::MAX, |s| s.body_timeout);
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    async move {
        let too_large = || ApiError::new(ErrorCode::BodyTooLarge, format!("the body is larger than {limit} bytes"));
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let read = async {
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| ApiError::new(ErrorCode::BadJson, format!("cannot read the body: {e}")))?;
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        tokio::time::timeout(deadline, read).await.unwrap_or_else(|_| {
            Err(ApiError::new(ErrorCode::BodyTimeout, format!("the body did not arrive within {} ms (server.body_timeout)", deadline.as_millis())))
        })
    }
}

fn decode<T: DeserializeOwned>(body: &[u8], msgpack: bool) -> Result<T, ApiError> {
    // Syntax first, then shape: the two get different codes.
    let typed = if msgpack {
        let mut syntax = rmp_serde::Deserializer::new(body);
        IgnoredAny::deserialize(&mut syntax).map_err(|e| ApiError::new(ErrorCode::BadJson, format!("bad msgpack: {e}")))?;
        if !syntax.get_ref().is_empty() {
            return Err(ApiError::new(ErrorCode::BadJson, "bad msgpack: bytes after the value"));
        }
        // Human-readable: uuids and times travel as strings, as LUNA's clients send them.
        serde_path_to_error::deserialize(&mut rmp_serde::Deserializer::new(body).with_human_readable()).map_err(|e| schema(e.path(), e.inner()))
    } else {
        serde_json::from_slice::<IgnoredAny>(body).map_err(|e| ApiError::new(ErrorCode::BadJson, format!("bad JSON: {e}")))?;
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body)).map_err(|e| schema(e.path(), e.inner()))
    };
    typed
}

/// msgpack as this service writes it: fields by name; uuids, times and store
/// positions as strings, as LUNA's clients send them.
pub fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    value.serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map().with_human_readable()).map(|_| out).map_err(|e| e.to_string())
}

/// msgpack as this service writes it, read back.
pub fn from_msgpack<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    T::deserialize(&mut rmp_serde::Deserializer::new(body).with_human_readable()).map_err(|e| e.to_string())
}

fn schema(path: &serde_path_to_error::Path, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::SchemaViolation, format!("{path}: {e}"))
}

/// A response body, written as msgpack when the client accepts it.
pub struct Output<T> {
    pub status: StatusCode,
    pub body: T,
}

impl<T> Output<T> {
    pub fn ok(body: T) -> Self {
        Output { status: StatusCode::OK, body }
    }

    pub fn created(body: T) -> Self {
        Output { status: StatusCode::CREATED, body }
    }
}

impl<T: Serialize> Responder for Output<T> {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, req: &HttpRequest) -> HttpResponse {
        let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let msgpack = MSGPACK.iter().any(|m| accept.contains(m));
        let encoded = if msgpack { to_msgpack(&self.body) } else { serde_json::to_vec(&self.body).map_err(|e| e.to_string()) };
        match encoded {
            Ok(bytes) => HttpResponse::build(self.status).content_type(if msgpack { MSGPACK[0] } else { "application/json" }).body(bytes),
            Err(e) => actix_web::ResponseError::error_response(&ApiError::new(ErrorCode::Internal, format!("cannot encode the response: {e}"))),
        }
    }
}

//! The request context every route gets: the size of its head (checked),
//! `Luna-Request-Id` (checked or made, and echoed), the access log line and
//! the request metrics.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};
use luna_core::ErrorCode;

use super::errors::{ApiError, ErrorCodeTag};
use super::AppState;
use crate::pipeline::SubReport;
use crate::telemetry::RequestRecord;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("luna-request-id");

/// The template of the plugin route that answered, in the response extensions:
/// the route label of metrics and monitoring points, like `match_pattern`.
#[derive(Clone)]
pub struct PluginRoute(pub String);

/// The request's id, in the request extensions.
#[derive(Clone)]
pub struct RequestId(pub String);

/// A `Luna-Request-Id` that is not one, in the request extensions: answered
/// with 400 once the method is known to be served.
#[derive(Clone)]
pub struct BadRequestId(String);

impl BadRequestId {
    pub fn error(&self) -> ApiError {
        ApiError::new(ErrorCode::BadRequestId, format!("'{}' is not '<unix seconds>,<uuid4>'", self.0))
    }
}

/// Longest request target (path and query), in bytes: longer is 414 with 11026.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields, and most bytes of them (names, values, ": " and
/// CRLF): more is 431 with 11025. Both are below what actix-http itself
/// refuses without a body (96 fields, a 128 KiB head).
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// An error for a request head past our limits.
fn oversized_head(req: &ServiceRequest) -> Option<ApiError> {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return Some(ApiError::new(ErrorCode::UriTooLong, format!("the path and query are {uri} bytes, at most {MAX_URI_BYTES}")));
    }
    let headers = req.headers();
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        let detail = format!("{} header fields of {bytes} bytes, at most {MAX_HEADERS} fields and {MAX_HEADER_BYTES} bytes", headers.len());
        return Some(ApiError::new(ErrorCode::HeadersTooLarge, detail));
    }
    None
}

/// `<unix seconds>,<uuid4>`: ten digits, a comma, 36 characters of hex and dashes.
fn valid_request_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 47
        && b[..10].iter().all(u8::is_ascii_digit)
        && b[10] == b','
        && b[11..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c) || *c == b'-')
}

fn new_request_id() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{secs:010},{}", uuid::Uuid::new_v4())
}

pub async fn request_context(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let start = Instant::now();
    let start_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let sent = req.headers().get(&REQUEST_ID).map(|v| v.to_str().map(str::to_owned));
    let id = match sent {
        None => new_request_id(),
        Some(Ok(id)) if valid_request_id(&id) => id,
        Some(v) => {
            req.extensions_mut().insert(BadRequestId(v.unwrap_or_else(|_| "<not text>".into())));
            new_request_id()
        }
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let mut res = match oversized_head(&req) {
        Some(err) => req.into_response(err.error_response()).map_into_right_body(),
        None => next.call(req).await?.map_into_left_body(),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    if let Some(state) = state {
        let request = res.request();
        state.telemetry.request_finished(&RequestRecord {
            request_id: &id,
            method: request.method().as_str(),
            route: &request
                .match_pattern()
                .or_else(|| res.response().extensions().get::<PluginRoute>().map(|r| r.0.clone()))
                .unwrap_or_else(|| "unmatched".into()),
            path: request.path(),
            status: res.status().as_u16(),
            error_code: res.response().extensions().get::<ErrorCodeTag>().map(|t| t.0),
            start_time,
            seconds: start.elapsed().as_secs_f64(),
            matching: &request.extensions_mut().remove::<Vec<SubReport>>().unwrap_or_default(),
        });
    }
    Ok(res)
}

/// Resource-level: a bad `Luna-Request-Id` is 400 on the methods the
/// resource serves; other methods go on to its 405.
pub async fn reject_bad_request_id(
    allowed: Arc<Vec<Method>>,
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let bad = req.extensions().get::<BadRequestId>().filter(|_| allowed.contains(req.method())).map(BadRequestId::error);
    Ok(match bad {
        Some(err) => req.into_response(err.error_response()).map_into_right_body(),
        None => next.call(req).await?.map_into_left_body(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_id_format() {
        assert!(super::valid_request_id(&super::new_request_id()));
        assert!(super::valid_request_id("1700000000,0123abcd-0000-4000-8000-00000000abcd"));
        assert!(!super::valid_request_id("1700000000,0123ABCD-0000-4000-8000-00000000abcd"));
        assert!(!super::valid_request_id("170000000,0123abcd-0000-4000-8000-00000000abcd0"));
    }
}

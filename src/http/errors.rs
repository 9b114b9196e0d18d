//! Core errors as HTTP responses. One exhaustive `match` gives each code its
//! status: a new code does not compile until it has one.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use luna_core::api::ErrorBody;
use luna_core::{Error, ErrorCode};

pub fn status(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        Internal | StorageFailure | PluginFailed | PluginMatchError => StatusCode::INTERNAL_SERVER_ERROR,
        PluginUnavailable | StoreUnavailable | NoMatcher => StatusCode::SERVICE_UNAVAILABLE,
        PluginTimeout => StatusCode::GATEWAY_TIMEOUT,
        BadJson
        | SchemaViolation
        | BadQueryParameter
        | BadRequestId
        | BadBase64
        | BadDescriptorMagic
        | UnknownDescriptorVersion
        | BadDescriptorLength
        | DescriptorNotFinite
        | DescriptorVersionMismatch
        | TooManyCandidateSets
        | LimitTooLarge
        | TooManyRawCandidates
        | TooManyReferences
        | AccountMismatch
        | ResponseTooLarge => StatusCode::BAD_REQUEST,
        HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        UriTooLong => StatusCode::URI_TOO_LONG,
        BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        RouteNotFound | ListNotFound | FaceNotFound => StatusCode::NOT_FOUND,
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
    }
}

/// A core error on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError(Error::new(code, detail))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Set on error responses so the middleware can log and count the code.
#[derive(Clone, Copy)]
pub struct ErrorCodeTag(pub u32);

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        status(self.0.code)
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code()).json(ErrorBody::from(&self.0));
        res.extensions_mut().insert(ErrorCodeTag(self.0.code.code()));
        res
    }
}

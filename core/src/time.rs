//! Times as the API carries them: RFC 3339 UTC text outside, microseconds since
//! the epoch inside.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::errors::{Error, ErrorCode, Result};

/// Now, in microseconds since the epoch.
pub fn now() -> i64 {
    Utc::now().timestamp_micros()
}

/// Microseconds since the epoch as RFC 3339 UTC with microseconds.
pub fn format_time(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An RFC 3339 time given in `field` of a request.
pub fn parse_time(field: &str, text: &str) -> Result<i64> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| Error::new(ErrorCode::SchemaViolation, format!("{field}: '{text}' is not an RFC 3339 time: {e}")))
}

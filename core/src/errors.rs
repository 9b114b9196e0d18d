//! The one table of error codes. Every error the service answers with is a row
//! here; the HTTP layer maps each to a status with one exhaustive `match`, and
//! `/1/docs/spec` publishes the table. Codes are stable: never renumber a row.

use std::fmt;

macro_rules! error_table {
    ($( $variant:ident = $code:literal, $desc:literal; )+) => {
        /// A stable error code with its fixed description.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $( #[doc = $desc] $variant, )+ }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$variant, )+];

            /// The number clients see as `error_code`.
            pub fn code(self) -> u32 {
                match self { $( ErrorCode::$variant => $code, )+ }
            }

            /// The fixed description clients see as `desc`.
            pub fn desc(self) -> &'static str {
                match self { $( ErrorCode::$variant => $desc, )+ }
            }

            /// The row of a numeric code, if the table has one.
            pub fn from_code(code: u32) -> Option<ErrorCode> {
                match code { $( $code => Some(ErrorCode::$variant), )+ _ => None }
            }
        }
    };
}

error_table! {
    Internal = 10001, "Internal server error";
    StorageFailure = 10002, "Storage error";
    StoreUnavailable = 10003, "Store unavailable";
    PluginFailed = 10010, "Plugin error";
    PluginUnavailable = 10011, "Plugin is not running";
    PluginTimeout = 10012, "Plugin did not answer in time";
    PluginMatchError = 10013, "Matching plugin answered with an error";
    BadJson = 11001, "Request body is not valid JSON or msgpack";
    SchemaViolation = 11002, "Failed to validate input";
    UnsupportedMediaType = 11003, "Unsupported content type";
    BadQueryParameter = 11004, "Bad query parameter";
    BadRequestId = 11005, "Bad Luna-Request-Id header";
    BadBase64 = 11010, "Descriptor is not valid base64";
    BadDescriptorMagic = 11011, "Descriptor container has a bad signature";
    UnknownDescriptorVersion = 11012, "Unknown descriptor version";
    BadDescriptorLength = 11013, "Descriptor has a wrong length for its version";
    DescriptorNotFinite = 11014, "Descriptor holds NaN or infinity";
    DescriptorVersionMismatch = 11015, "Descriptors of different versions cannot be matched";
    TooManyCandidateSets = 11020, "Too many candidate sets";
    LimitTooLarge = 11021, "Limit is too large";
    TooManyRawCandidates = 11022, "Too many raw candidates";
    BodyTooLarge = 11023, "Request body is too large";
    ResponseTooLarge = 11024, "Response would be too large";
    HeadersTooLarge = 11025, "Request headers are too large";
    UriTooLong = 11026, "Request URI is too long";
    BodyTimeout = 11027, "Request body was not received in time";
    RouteNotFound = 11030, "Resource not found";
    MethodNotAllowed = 11031, "Method not allowed";
    ListNotFound = 22001, "List not found";
    FaceNotFound = 22002, "Face not found";
    AccountMismatch = 31000, "Account id of the filter does not match the account of the request";
    TooManyReferences = 31007, "Too many references";
    NoMatcher = 31011, "No matcher available for the request";
}

/// An error of the core: a code from the table and a detail for this occurrence.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// Which row of the table.
    pub code: ErrorCode,
    /// What went wrong this time, for the `detail` of the answer.
    pub detail: String,
}

impl Error {
    /// An error of `code` with a detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Error { code, detail: detail.into() }
    }

    /// Prefix the detail with where in the input the problem is, e.g. `faces[3]`.
    pub fn at(mut self, place: impl fmt::Display) -> Self {
        self.detail = format!("{place}: {}", self.detail);
        self
    }

    /// A failure of the store itself (10002), with its message as the detail.
    pub fn storage(err: impl fmt::Display) -> Self {
        Error::new(ErrorCode::StorageFailure, err.to_string())
    }

    /// The error a matching plugin answered a sub-request with
    /// (`ErrorMatchResult`): a code of this table keeps its row and the
    /// plugin's detail; any other code is 10013, whose detail names the
    /// plugin and its code.
    pub fn from_plugin(plugin: &str, code: u32, detail: &str) -> Self {
        match ErrorCode::from_code(code) {
            Some(known) => Error::new(known, detail),
            None => Error::new(ErrorCode::PluginMatchError, format!("plugin {plugin} answered error {code}: {detail}")),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code.code(), self.code.desc(), self.detail)
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::storage(err)
    }
}

/// What the core's fallible calls return.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique() {
        let codes: HashSet<u32> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn a_plugins_code_maps_to_its_row_or_to_10013() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(*c));
        }
        assert_eq!(Error::from_plugin("p", 22001, "gone"), Error::new(ErrorCode::ListNotFound, "gone"));
        let other = Error::from_plugin("p", 7, "backend down");
        assert_eq!((other.code.code(), other.detail.as_str()), (10013, "plugin p answered error 7: backend down"));
    }
}

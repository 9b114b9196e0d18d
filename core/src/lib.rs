//! luna-matcher's matching core. Everything here is independent of the HTTP
//! layer: the binary's handlers call [`service::Core`] and map its
//! [`errors::Error`] to a status.

pub mod api;
pub mod descriptor;
pub mod errors;
pub mod index;
pub mod kernels;
pub mod limits;
pub mod maintenance;
pub mod matching;
pub mod service;
pub mod store;

pub use errors::{Error, ErrorCode, Result};
pub use limits::Limits;
pub use service::{Core, CoreConfig};

//! luna-matcher's matching core. Everything here is independent of the HTTP
//! layer: the binary's handlers call [`service::Core`] and map its
//! [`errors::Error`] to a status.

#![warn(missing_docs)]

pub mod api;
pub mod catalog;
pub mod descriptor;
pub mod errors;
mod face_slots;
pub mod flat;
pub mod index;
pub mod kernels;
pub mod limits;
pub mod maintenance;
pub mod matching;
mod memberships;
pub mod planning;
pub mod raw;
pub mod service;
pub mod store;
pub mod subrequests;
pub mod tiles;
pub mod time;

pub use errors::{Error, ErrorCode, Result};
pub use limits::Limits;
pub use service::{Core, CoreConfig, StoreConfig, StoreStats};

//! The luna-matcher service: configuration, the HTTP layer over `luna_core`,
//! telemetry, and the server's start and shutdown.

pub mod config;
pub mod data_lock;
pub mod http;
pub mod logging;
pub mod pipeline;
pub mod proxy;
pub mod server;
pub mod telemetry;
pub mod tools;

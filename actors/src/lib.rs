//! luna-matcher's actor system and Python bridge.
//!
//! - `python`: the embedded interpreter, the `luna_plugins` package and the asyncio loop thread.
//! - `host`: the typed interface to the host's Python side, and how a hosted call is awaited.
//! - `calls`: how coroutines reach the event loop, and their outcomes come back.
//! - `failure`: what went wrong in a call into plugin code, by exception type.
//! - [`supervisor`]: [`PluginHost`], the handle the HTTP layer uses, and the `PluginSupervisor`.
//! - [`plugin`]: one supervised actor per plugin; `restart`: when it is restarted.
//! - [`events`]: monitoring points, bounded queues and the `EventBroker`.
//! - `watchdog`: names plugin code that holds the shared event loop.
//! - `worker`: a plugin's thread for its synchronous calls, under their deadline.

#![warn(missing_docs)]

mod calls;
mod error_log;
pub mod events;
pub(crate) mod failure;
mod helpers;
pub(crate) mod host;
mod module;
pub mod plugin;
pub(crate) mod python;
pub(crate) mod restart;
pub mod routes;
pub mod settings;
pub mod status;
pub mod supervisor;
mod venv;
mod watchdog;
mod worker;

pub use host::MatchAnswer;
pub use supervisor::PluginHost;

//! luna-matcher's actor system and Python bridge.
//!
//! - [`python`]: the embedded interpreter, the `luna_plugins` package and the asyncio loop thread.
//! - [`supervisor`]: the `PluginSupervisor` and [`Plugins`], the handle the HTTP layer uses.
//! - [`plugin`]: one supervised actor per plugin.
//! - [`events`]: monitoring points, bounded queues and the `EventBroker`.

pub mod events;
mod helpers;
mod module;
pub mod plugin;
pub mod python;
pub mod routes;
pub mod settings;
pub mod status;
pub mod supervisor;
mod venv;

pub use supervisor::Plugins;

//! One actor per plugin module, on its own arbiter, under an actix
//! `Supervisor`. It owns the plugin's lifecycle state ([`PluginState`], the
//! one `/1/plugins` shows): boot (import, construct, `initialize`), work
//! (events from its queue, route calls, matching), and on failure stop, so
//! the supervisor restarts it as a fresh instance after a backoff.
//!
//! - `lifecycle`: boot, failure, restart, faults found outside a call, close.
//! - `events`: handing queued events to the plugin, one at a time.
//! - `routes`: calls to the plugin's HTTP routes.
//! - `matching`: costs and answers of matching plugins, asked without a hop through the actor.

mod events;
mod lifecycle;
mod matching;
mod routes;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use pyo3::prelude::*;

pub(crate) use lifecycle::{Close, CountError, Fault};
pub use matching::{MatchCall, MatchFailure};
pub(crate) use matching::{MatchingPath, MatchingSlot, Offer, Started};
pub use routes::{CallRoute, RouteError, RouteReply};

use crate::events::{EventBroker, EventQueue};
use crate::failure::{classify, Failure};
use crate::host::{Hosted, PluginContext, Wait};
use crate::restart::RestartPolicy;
use crate::routes::RouteTable;
use crate::settings::PluginSettings;
use crate::status::{PluginKind, PluginState, PluginStatus};

/// What every plugin of the service knows about it.
#[derive(Clone)]
pub struct ServiceInfo {
    /// The service's name, as plugins see it (`app.ctx.serviceName`).
    pub name: &'static str,
    /// Where plugins reach the service's own API (`app.ctx.serviceUrl`).
    pub url: String,
}

/// What the supervisor gives a plugin's actor.
pub(crate) struct PluginSetup {
    /// The plugin's name: its module in the plugins directory.
    pub name: String,
    /// Its timeouts, restart policy and own configuration.
    pub settings: PluginSettings,
    /// What it knows of the service.
    pub service: ServiceInfo,
    /// Where it reports its state and counts.
    pub status: Arc<PluginStatus>,
    /// Where it subscribes to events.
    pub broker: Addr<EventBroker>,
    /// Where it registers its routes.
    pub routes: Arc<RouteTable>,
    /// Its event queue.
    pub queue: Arc<EventQueue>,
    /// Where it publishes how its matching classes are reached.
    pub matching: Arc<MatchingSlot>,
}

/// One constructed plugin class of the running generation.
struct Instance {
    /// Shared with calls made on the loop thread, without the GIL.
    object: Arc<Py<PyAny>>,
    kind: PluginKind,
    event_name: Option<String>,
}

/// The actor of one plugin: the only owner of its lifecycle and its Python instances.
pub(crate) struct PluginActor {
    setup: PluginSetup,
    /// The one lifecycle state; [`PluginActor::set_state`] publishes it.
    state: PluginState,
    /// Incremented at every boot; faults of an older generation are stale.
    generation: u64,
    /// Shared with the worker thread's calls, which outlive no generation's use of them.
    instances: Arc<Vec<Instance>>,
    /// The contextvars Context plugin code of this generation runs in.
    context: Option<PluginContext>,
    restarts: RestartPolicy,
    /// The delay before the next boot, set when a restart is decided.
    backoff: Option<Duration>,
}

impl PluginActor {
    /// An actor that boots the plugin when it starts.
    pub fn new(setup: PluginSetup) -> Self {
        let s = &setup.settings;
        let restarts = RestartPolicy::new(s.max_restarts, s.restart_window, s.backoff_initial, s.backoff_max);
        PluginActor { setup, state: PluginState::Loading, generation: 0, instances: Arc::default(), context: None, restarts, backoff: None }
    }

    /// The only writer of the plugin's state, here and in its shared status.
    fn set_state(&mut self, state: PluginState) {
        self.state = state;
        self.setup.status.set_state(state);
    }

    /// The objects of the running instances that `keep` admits, with their positions.
    fn objects(&self, keep: impl Fn(&Instance) -> bool) -> Vec<(usize, Py<PyAny>)> {
        Python::attach(|py| self.instances.iter().enumerate().filter(|(_, i)| keep(i)).map(|(n, i)| (n, i.object.clone_ref(py))).collect())
    }
}

/// A call into Python on the current thread with panics caught: a panic in
/// the bridge becomes a failure of the plugin, never of its thread.
fn bridge<T>(f: impl FnOnce(Python<'_>) -> PyResult<T>) -> Result<T, Failure> {
    match catch_unwind(AssertUnwindSafe(|| Python::attach(|py| f(py).map_err(|e| classify(py, &e))))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(Failure::Panic(message))
        }
    }
}

/// Await a hosted call that may not have started.
async fn answer<T>(hosted: Result<Hosted<T>, Failure>, wait: Wait) -> Result<T, Failure>
where
    T: for<'py> pyo3::conversion::FromPyObjectOwned<'py>,
{
    hosted?.answer(wait).await
}

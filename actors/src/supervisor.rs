//! The plugin host: [`PluginHost`] starts the Python runtime, the
//! `EventBroker` and one supervised actor per active plugin, each on its own
//! arbiter; the `PluginSupervisor` actor shuts them down in order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::events::{Barrier, Event, EventBroker, EventQueue, Publish};
use crate::host::MatchAnswer;
use crate::plugin::{
    CallRoute, Close, CountError, Fault, MatchCall, MatchFailure, MatchingPath, MatchingSlot, Offer, PluginActor, PluginSetup, RouteError, RouteReply,
    ServiceInfo, Started,
};
use crate::routes::{Resolved, RouteTable};
use crate::settings::PluginsConfig;
use crate::status::{PluginKind, PluginReport, PluginState, PluginStatus};

struct Plugin {
    status: Arc<PluginStatus>,
    queue: Arc<EventQueue>,
    matching: Arc<MatchingSlot>,
    addr: Addr<PluginActor>,
    /// Keeps the plugin's thread alive.
    _arbiter: Arbiter,
}

/// Owns the plugins' actors and the broker's arbiter; stops them at shutdown.
pub(crate) struct PluginSupervisor {
    plugins: Vec<Plugin>,
    /// Keeps the broker's thread alive.
    _broker_arbiter: Arbiter,
}

impl Actor for PluginSupervisor {
    type Context = Context<Self>;
}

/// The matching plugin chosen for a sub-request, and its match if started already.
pub struct Choice {
    plugin: String,
    instance: usize,
    started: Option<Started>,
}

impl Choice {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }
}

/// Stop every plugin: flush event queues for at most `flush`, then `close()` each.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown {
    /// Longest wait for event queues to empty.
    pub flush: Duration,
}

impl Handler<Shutdown> for PluginSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Shutdown, _: &mut Self::Context) -> Self::Result {
        let plugins: Vec<(Arc<PluginStatus>, Arc<EventQueue>, Addr<PluginActor>)> =
            self.plugins.iter().map(|p| (p.status.clone(), p.queue.clone(), p.addr.clone())).collect();
        Box::pin(async move {
            let until = Instant::now() + msg.flush;
            // Only a running plugin drains its queue; the others' events are dropped below.
            let drained = || plugins.iter().all(|(s, q, _)| s.state() != PluginState::Running || q.idle());
            while Instant::now() < until && !drained() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            for (status, queue, _) in &plugins {
                let left = queue.discard();
                if left > 0 {
                    log::warn!(target: "luna_matcher::plugins", "plugin {}: {left} events not delivered before shutdown", status.name);
                }
            }
            let closing: Vec<_> = plugins.iter().map(|(_, _, addr)| addr.send(Close)).collect();
            for c in closing {
                let _ = c.await;
            }
        })
    }
}

/// The plugin system as the rest of the service sees it.
pub struct PluginHost {
    supervisor: Addr<PluginSupervisor>,
    broker: Addr<EventBroker>,
    routes: Arc<RouteTable>,
    statuses: Vec<Arc<PluginStatus>>,
    actors: HashMap<String, Addr<PluginActor>>,
    /// Where each plugin's actor publishes how its matching classes are reached.
    matching: HashMap<String, Arc<MatchingSlot>>,
    required: Vec<String>,
    /// The default matcher's cost: a plugin wins a sub-request only below it.
    default_cost: f64,
}

impl PluginHost {
    /// Start the interpreter and the active plugins. Must run inside an actix System.
    pub fn start(
        config: &PluginsConfig,
        active: &[String],
        service: ServiceInfo,
        service_paths: &[&str],
        core: Arc<luna_core::Core>,
    ) -> Result<PluginHost, String> {
        crate::helpers::attach_core(core);
        crate::python::start(&config.directory, &config.venv, service_paths, active, config.timeout)
            .map_err(|e| format!("cannot start the Python runtime: {}", pyo3::Python::attach(|py| crate::failure::describe(py, &e))))?;
        let broker_arbiter = Arbiter::new();
        let broker = EventBroker::start_in_arbiter(&broker_arbiter.handle(), |_| EventBroker::default());
        let routes = Arc::new(RouteTable::default());
        let mut plugins = Vec::new();
        for name in active {
            let status = Arc::new(PluginStatus::new(name));
            let queue = Arc::new(EventQueue::new(config.queue_size, status.dropped.clone()));
            let matching = Arc::new(MatchingSlot::default());
            let arbiter = Arbiter::new();
            let setup = PluginSetup {
                name: name.clone(),
                settings: config.settings(name),
                service: service.clone(),
                status: status.clone(),
                broker: broker.clone(),
                routes: routes.clone(),
                queue: queue.clone(),
                matching: matching.clone(),
            };
            let addr = Supervisor::start_in_arbiter(&arbiter.handle(), move |_: &mut Context<PluginActor>| PluginActor::new(setup));
            plugins.push(Plugin { status, queue, matching, addr, _arbiter: arbiter });
        }
        let actors: HashMap<String, Addr<PluginActor>> = plugins.iter().map(|p| (p.status.name.clone(), p.addr.clone())).collect();
        let sink = actors.clone();
        crate::module::on_fault(move |plugin, generation, error, traceback| {
            if let Some(addr) = sink.get(plugin) {
                addr.do_send(Fault { generation, error, traceback });
            }
        });
        let statuses = plugins.iter().map(|p| p.status.clone()).collect();
        let matching = plugins.iter().map(|p| (p.status.name.clone(), p.matching.clone())).collect();
        let supervisor = PluginSupervisor { plugins, _broker_arbiter: broker_arbiter }.start();
        Ok(PluginHost { supervisor, broker, routes, statuses, actors, matching, required: config.required.clone(), default_cost: config.default_matcher_cost })
    }

    /// Hand an event to the broker; never waits.
    pub fn publish(&self, event: Event) {
        self.broker.do_send(Publish(Arc::new(event)));
    }

    /// The plugin route `path` falls on, if any.
    pub fn resolve(&self, path: &str) -> Option<Resolved> {
        self.routes.resolve(path)
    }

    /// Call a route of `plugin` and await its answer.
    pub async fn call_route(&self, plugin: &str, call: CallRoute) -> Result<RouteReply, RouteError> {
        let addr = self.actors.get(plugin).ok_or_else(|| RouteError::Failed(format!("no plugin {plugin}")))?;
        addr.send(call).await.map_err(|e| RouteError::Failed(format!("plugin {plugin} did not answer: {e}")))?
    }

    /// Running plugins with a matching class.
    fn matchers(&self) -> Vec<&str> {
        self.statuses.iter().filter(|s| s.serves(PluginKind::Matching)).map(|s| s.name.as_str()).collect()
    }

    /// Whether any matching plugin is running now.
    pub fn has_matchers(&self) -> bool {
        self.statuses.iter().any(|s| s.serves(PluginKind::Matching))
    }

    /// For each sub-request, the cheapest matching plugin below the default
    /// matcher's cost; None goes to the default matcher. Asked on this
    /// thread through each plugin's matching path, not its actor. A plugin
    /// that does not state its costs within its matching timeout is left
    /// out. When one plugin is asked, its winning matches start as soon as
    /// it has stated their costs.
    pub async fn choose(&self, calls: &Arc<Vec<MatchCall>>) -> Vec<Option<Choice>> {
        let matchers = self.matchers();
        let sole = (matchers.len() == 1).then_some(self.default_cost);
        let asks = matchers.into_iter().filter_map(|name| {
            let ask = self.matching_path(name)?.costs(calls.clone(), sole);
            Some(async move { (name, ask.await) })
        });
        let mut best: Vec<Option<(f64, Choice)>> = (0..calls.len()).map(|_| None).collect();
        for (name, offers) in futures_util::future::join_all(asks).await {
            for (slot, offer) in best.iter_mut().zip(offers) {
                let Some(Offer { cost, instance, started }) = offer else { continue };
                if cost < self.default_cost && slot.as_ref().is_none_or(|(b, _)| cost < *b) {
                    *slot = Some((cost, Choice { plugin: name.to_owned(), instance, started }));
                }
            }
        }
        best.into_iter().map(|b| b.map(|(_, choice)| choice)).collect()
    }

    /// Have the chosen plugin answer sub-request `index`, within its matching timeout.
    pub async fn run_match(&self, choice: Choice, calls: Arc<Vec<MatchCall>>, index: usize) -> Result<MatchAnswer, MatchFailure> {
        if let Some(started) = choice.started {
            return started.answer().await;
        }
        let path = self.matching_path(&choice.plugin).ok_or(MatchFailure::Unavailable)?;
        path.answer(calls, index, choice.instance).await
    }

    /// How `plugin`'s matching classes are reached while it runs.
    fn matching_path(&self, plugin: &str) -> Option<MatchingPath> {
        self.matching.get(plugin)?.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Count a failure of a plugin the pipeline found (a malformed answer).
    pub fn count_error(&self, plugin: &str, error: String) {
        if let Some(addr) = self.actors.get(plugin) {
            addr.do_send(CountError(error));
        }
    }

    /// Every plugin has finished its first start attempt.
    pub fn ready(&self) -> bool {
        self.statuses.iter().all(|s| s.attempted())
    }

    /// Required plugins that are not running, with their last error.
    pub fn required_down(&self) -> Vec<(String, String)> {
        self.statuses
            .iter()
            .filter(|s| self.required.contains(&s.name) && s.state() != PluginState::Running)
            .map(|s| (s.name.clone(), s.report().last_error.unwrap_or_else(|| s.state().as_str().to_owned())))
            .collect()
    }

    /// Every plugin's report, in configuration order.
    pub fn reports(&self) -> Vec<PluginReport> {
        self.statuses.iter().map(|s| s.report()).collect()
    }

    /// Flush the event queues for at most `flush`, `close()` every plugin, then stop the interpreter.
    pub async fn shutdown(&self, flush: Duration) {
        // The broker's mailbox is FIFO: past the barrier, every answered
        // request's event is in a plugin queue, where the flush sees it.
        let _ = self.broker.send(Barrier).await;
        let _ = self.supervisor.send(Shutdown { flush }).await;
        crate::python::stop();
    }
}

/// Check the plugins directory exists before starting anything.
pub fn check_directory(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!("config key plugins.directory: {} is not a directory", dir.display()))
    }
}

//! One actor per plugin module, on its own arbiter, under an actix
//! `Supervisor`. Its lifecycle: boot (import, construct, `initialize`), work
//! (events from its queue, calls to its routes), and on failure stop, so the
//! supervisor restarts it as a fresh instance after a backoff.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::events::{Event, EventBroker, EventQueue, FieldValue, Subscribe, Wake};
use crate::python::{self, runtime, within};
use crate::routes::RouteTable;
use crate::settings::PluginSettings;
use crate::status::{PluginClass, PluginState, PluginStatus};

/// Extra time the Rust side waits beyond a Python-side timeout: enough for
/// `asyncio.wait_for` to cancel, short enough that a blocked loop cannot hold us.
const GRACE: Duration = Duration::from_secs(1);

/// What every plugin of the service knows about it.
#[derive(Clone)]
pub struct ServiceInfo {
    pub name: &'static str,
    pub url: String,
}

struct Instance {
    object: Py<PyAny>,
    event_name: Option<String>,
    matching: bool,
}

/// What the supervisor gives a plugin's actor.
pub struct PluginSetup {
    pub name: String,
    pub settings: PluginSettings,
    pub service: ServiceInfo,
    pub status: Arc<PluginStatus>,
    pub broker: Addr<EventBroker>,
    pub routes: Arc<RouteTable>,
    pub queue: Arc<EventQueue>,
}

pub struct PluginActor {
    setup: PluginSetup,
    /// Incremented at every boot; reports from an older generation are stale.
    generation: u64,
    instances: Vec<Instance>,
    /// The contextvars Context plugin code of this generation runs in.
    context: Option<Py<PyAny>>,
    running: bool,
    /// When recent restarts happened, for the `max_restarts` window.
    restarts: VecDeque<Instant>,
}

impl PluginActor {
    pub fn new(setup: PluginSetup) -> Self {
        PluginActor { setup, generation: 0, instances: Vec::new(), context: None, running: false, restarts: VecDeque::new() }
    }

    /// Its own reference to this generation's context, for a closure that runs
    /// while the actor is borrowed.
    fn context(&self) -> Option<Py<PyAny>> {
        self.context.as_ref().map(|c| Python::attach(|py| c.clone_ref(py)))
    }

    /// Stop so that the supervisor restarts this plugin.
    fn fail(&mut self, ctx: &mut Context<Self>, error: String) {
        self.setup.status.error(error);
        self.running = false;
        ctx.stop();
    }

    /// A call into Python on this actor's thread, with panics caught: a panic
    /// in the bridge restarts the plugin instead of killing the arbiter.
    fn bridge<T>(&mut self, ctx: &mut Context<Self>, what: &str, f: impl FnOnce(Python<'_>) -> PyResult<T>) -> Option<Result<T, String>> {
        match catch_unwind(AssertUnwindSafe(|| Python::attach(|py| f(py).map_err(|e| python::describe(&e))))) {
            Ok(r) => Some(r),
            Err(panic) => {
                let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                self.fail(ctx, format!("panic in the bridge during {what}: {msg}"));
                None
            }
        }
    }

    /// Import, construct and initialize a fresh instance of the plugin.
    fn boot(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let (name, generation, settings, service) = (self.setup.name.clone(), self.generation, self.setup.settings.clone(), self.setup.service.clone());
        let rt = runtime();
        let loaded = self.bridge(ctx, "import", |py| {
            rt.host_call(py, "unload", (&name,))?;
            let config = py.import("json")?.call_method1("loads", (&settings.config_json,))?;
            let loaded = rt.host_call(py, "load", (&name, config, service.name, &service.url))?;
            let context = rt.host_call(py, "context", (&name, generation))?.unbind();
            let mut instances = Vec::new();
            let mut classes = Vec::new();
            for item in loaded.cast_into::<PyList>()?.iter() {
                let (object, kind): (Bound<PyAny>, String) = item.extract()?;
                let class = rt.host_call(py, "describe", (&object,))?.extract::<String>()?;
                let event_name = if kind == "event" { rt.host_call(py, "event_name", (&object,))?.extract::<Option<String>>()? } else { None };
                let kind = match kind.as_str() {
                    "event" => "event",
                    "matching" => "matching",
                    _ => "background",
                };
                classes.push(PluginClass { class, kind });
                instances.push(Instance { object: object.unbind(), event_name, matching: kind == "matching" });
            }
            Ok((instances, classes, context))
        });
        let Some(loaded) = loaded else { return };
        let (instances, classes, context) = match loaded {
            Ok(l) => l,
            Err(e) => {
                // An import or constructor that fails fails again: report it, do not retry.
                self.setup.status.error(format!("import or __init__ failed: {e}"));
                self.setup.status.set_state(PluginState::Failed);
                return;
            }
        };
        if instances.is_empty() {
            self.setup.status.error("the module defines no concrete plugin class".into());
        }
        let init_timeout = settings.init_timeout;
        let started = self.bridge(ctx, "initialize", |py| {
            instances
                .iter()
                .map(|i| {
                    let coroutine = i.object.bind(py).call_method0("initialize")?;
                    rt.run_hosted(py, coroutine, init_timeout, Some(&context))
                })
                .collect::<PyResult<Vec<_>>>()
        });
        let Some(started) = started else { return };
        self.instances = instances;
        self.context = Some(context);
        let futures = match started {
            Ok(f) => f,
            Err(e) => return self.fail(ctx, format!("initialize failed: {e}")),
        };
        let all = async move {
            for f in futures {
                within(init_timeout + GRACE, f).await?;
            }
            Ok::<(), String>(())
        };
        ctx.spawn(all.into_actor(self).map(move |outcome, act, ctx| match outcome {
            Err(e) => act.fail(ctx, format!("initialize failed: {e}")),
            Ok(()) => act.serve(ctx, classes),
        }));
    }

    /// After `initialize`: mount routes, subscribe to events, take work.
    fn serve(&mut self, ctx: &mut Context<Self>, classes: Vec<PluginClass>) {
        let name = self.setup.name.clone();
        let Some(paths) = self.bridge(ctx, "routes", |py| runtime().host_call(py, "route_paths", (&name,))?.extract::<Vec<String>>()) else { return };
        let paths = paths.unwrap_or_default();
        self.setup.routes.set(&self.setup.name, &paths);
        let mut event_names: Vec<String> = self.instances.iter().filter_map(|i| i.event_name.clone()).collect();
        event_names.dedup();
        if !event_names.is_empty() {
            self.setup.broker.do_send(Subscribe {
                plugin: self.setup.name.clone(),
                event_names,
                queue: self.setup.queue.clone(),
                wake: ctx.address().recipient(),
            });
        }
        self.running = true;
        self.setup.status.running(classes, paths);
        log::info!(target: "luna_matcher::plugins", "plugin {} running (generation {})", self.setup.name, self.generation);
        self.deliver_next(ctx);
    }

    /// Hand the next queued event to the plugin, one at a time.
    fn deliver_next(&mut self, ctx: &mut Context<Self>) {
        if !self.running || self.setup.queue.delivering.load(Ordering::Acquire) {
            return;
        }
        let Some(event) = self.setup.queue.pop() else { return };
        let targets: Vec<&Instance> = self.instances.iter().filter(|i| i.event_name.as_deref() == Some(event.name)).collect();
        if targets.is_empty() {
            return self.deliver_next(ctx);
        }
        let objects: Vec<Py<PyAny>> = Python::attach(|py| targets.iter().map(|i| i.object.clone_ref(py)).collect());
        let timeout = self.setup.settings.timeout;
        let context = self.context();
        let spawned = self.bridge(ctx, "handleEvent", |py| {
            let points = points_to_python(py, &event)?;
            let coroutine = runtime().host_call(py, "deliver", (PyList::new(py, objects)?, event.name, points, timeout.as_secs_f64()))?;
            runtime().spawn(py, coroutine, context.as_ref())
        });
        let Some(spawned) = spawned else { return };
        let future = match spawned {
            Ok(f) => f,
            Err(e) => {
                self.setup.status.error(format!("handleEvent could not start: {e}"));
                return self.deliver_next(ctx);
            }
        };
        self.setup.queue.delivering.store(true, Ordering::Release);
        let start = Instant::now();
        let handled = async move {
            let errors = within(timeout + GRACE, future).await?;
            Python::attach(|py| errors.extract::<Vec<String>>(py)).map_err(|e| python::describe(&e))
        };
        ctx.spawn(handled.into_actor(self).map(move |outcome, act, ctx| {
            act.setup.queue.delivering.store(false, Ordering::Release);
            let took = start.elapsed();
            act.setup.status.call(took);
            match outcome {
                // A handler that blocks the event loop (time.sleep) finishes before
                // asyncio can time it out: the wall clock still shows the overrun.
                Ok(_) if took > timeout => {
                    return act.fail(
                        ctx,
                        format!("event handler timed out: it held the event loop for {:.2}s (timeout {:.2}s)", took.as_secs_f64(), timeout.as_secs_f64()),
                    )
                }
                Ok(errors) => errors.into_iter().for_each(|e| act.setup.status.error(e)),
                // Only an overrun gets here: the handler may be stuck, so start afresh.
                Err(e) => return act.fail(ctx, format!("event handler timed out: {e}")),
            }
            act.deliver_next(ctx);
        }));
    }

    /// The backoff before the n-th restart in the window.
    fn backoff(&self) -> Duration {
        let n = self.restarts.len().saturating_sub(1).min(16) as u32;
        (self.setup.settings.backoff_initial * 2u32.pow(n)).min(self.setup.settings.backoff_max)
    }
}

impl Actor for PluginActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.setup.status.state() == PluginState::Failed {
            return;
        }
        if self.restarts.is_empty() {
            return self.boot(ctx);
        }
        let delay = self.backoff();
        log::info!(target: "luna_matcher::plugins", "plugin {} restarts in {:.1}s", self.setup.name, delay.as_secs_f64());
        ctx.run_later(delay, |act, ctx| act.boot(ctx));
    }
}

impl Supervised for PluginActor {
    /// Tear down the failed instance and decide whether to try again.
    fn restarting(&mut self, ctx: &mut Self::Context) {
        self.running = false;
        self.setup.queue.delivering.store(false, Ordering::Release);
        self.setup.routes.set(&self.setup.name, &[]);
        let (name, instances, close_timeout) = (self.setup.name.clone(), std::mem::take(&mut self.instances), self.setup.settings.close_timeout);
        self.context = None;
        // Best effort: let the old instance close, then forget it and its tasks.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            Python::attach(|py| -> PyResult<()> {
                for i in &instances {
                    if let Ok(coroutine) = i.object.bind(py).call_method0("close") {
                        drop(runtime().run_hosted(py, coroutine, close_timeout, None)?);
                    }
                }
                runtime().host_call(py, "unload", (&name,))?;
                Ok(())
            })
        }));
        let now = Instant::now();
        while self.restarts.front().is_some_and(|t| now.duration_since(*t) > self.setup.settings.restart_window) {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        self.setup.status.restarted();
        if self.restarts.len() > self.setup.settings.max_restarts as usize {
            log::error!(target: "luna_matcher::plugins", "plugin {} failed: {} restarts within {:?}", self.setup.name, self.restarts.len(), self.setup.settings.restart_window);
            self.setup.status.set_state(PluginState::Failed);
            // A failed plugin takes no more events; what it had is dropped and counted.
            self.setup.broker.do_send(Subscribe {
                plugin: self.setup.name.clone(),
                event_names: Vec::new(),
                queue: self.setup.queue.clone(),
                wake: ctx.address().recipient(),
            });
            self.setup.queue.discard();
        } else {
            self.setup.status.set_state(PluginState::Restarting);
        }
    }
}

impl Handler<Wake> for PluginActor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.deliver_next(ctx);
    }
}

/// Plugin generation `generation` is broken though no call of the host
/// failed: a background task died, or its code held the event loop too long.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fault {
    pub generation: u64,
    pub error: String,
}

impl Handler<Fault> for PluginActor {
    type Result = ();

    fn handle(&mut self, msg: Fault, ctx: &mut Self::Context) {
        if msg.generation == self.generation && self.setup.status.state() != PluginState::Failed {
            self.fail(ctx, msg.error);
        }
    }
}

/// A request to one of the plugin's routes.
#[derive(Message)]
#[rtype(result = "Result<RouteReply, RouteError>")]
pub struct CallRoute {
    pub template: String,
    pub params: Vec<(String, String)>,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct RouteReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum RouteError {
    /// The plugin is not running (restarting or failed).
    Unavailable(PluginState),
    /// The handler raised.
    Failed(String),
    /// The handler did not answer within the plugin's timeout.
    TimedOut(String),
}

impl Handler<CallRoute> for PluginActor {
    type Result = ResponseFuture<Result<RouteReply, RouteError>>;

    fn handle(&mut self, msg: CallRoute, ctx: &mut Self::Context) -> Self::Result {
        if !self.running {
            let state = self.setup.status.state();
            return Box::pin(async move { Err(RouteError::Unavailable(state)) });
        }
        let timeout = self.setup.settings.timeout;
        let context = self.context();
        let spawned = self.bridge(ctx, "a route", |py| {
            let headers = PyDict::new(py);
            for (k, v) in &msg.headers {
                headers.set_item(k, v)?;
            }
            let params = PyDict::new(py);
            for (k, v) in &msg.params {
                params.set_item(k, v)?;
            }
            let body = pyo3::types::PyBytes::new(py, &msg.body);
            let serve = runtime().host_call(py, "serve", (&msg.template, params, &msg.method, &msg.path, &msg.query, headers, body))?;
            runtime().run_hosted(py, serve, timeout, context.as_ref())
        });
        let status = self.setup.status.clone();
        Box::pin(async move {
            let future = match spawned {
                None => return Err(RouteError::Failed("panic in the bridge".into())),
                Some(Err(e)) => return Err(RouteError::Failed(e)),
                Some(Ok(f)) => f,
            };
            let start = Instant::now();
            let outcome = match within(timeout + GRACE, future).await {
                Ok(reply) => Python::attach(|py| reply.extract::<(u16, std::collections::HashMap<String, String>, Vec<u8>)>(py))
                    .map(|(status, headers, body)| RouteReply { status, headers: headers.into_iter().collect(), body })
                    .map_err(|e| RouteError::Failed(format!("the route returned something other than a response: {}", python::describe(&e)))),
                Err(e) if e.starts_with("TimeoutError") || e.starts_with("no answer") => Err(RouteError::TimedOut(e)),
                Err(e) => Err(RouteError::Failed(e)),
            };
            status.call(start.elapsed());
            if let Err(RouteError::Failed(e) | RouteError::TimedOut(e)) = &outcome {
                status.error(format!("route {} {}: {e}", msg.method, msg.path));
            }
            outcome
        })
    }
}

/// Shut down: `close()` every instance within the deadline.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for PluginActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Close, ctx: &mut Self::Context) -> Self::Result {
        self.running = false;
        self.setup.routes.set(&self.setup.name, &[]);
        let deadline = self.setup.settings.close_timeout;
        let context = self.context();
        let instances = std::mem::take(&mut self.instances);
        let spawned = self.bridge(ctx, "close", |py| {
            instances
                .iter()
                .map(|i| {
                    let coroutine = i.object.bind(py).call_method0("close")?;
                    runtime().run_hosted(py, coroutine, deadline, context.as_ref())
                })
                .collect::<PyResult<Vec<_>>>()
        });
        let closing = async move {
            let mut errors = Vec::new();
            if let Some(Ok(futures)) = spawned {
                for f in futures {
                    if let Err(e) = within(deadline + GRACE, f).await {
                        errors.push(e);
                    }
                }
            }
            errors
        };
        Box::pin(closing.into_actor(self).map(|errors, act, _| {
            for e in errors {
                act.setup.status.error(format!("close failed: {e}"));
            }
            if act.setup.status.state() != PluginState::Failed {
                act.setup.status.set_state(PluginState::Stopped);
            }
            log::info!(target: "luna_matcher::plugins", "plugin {} closed", act.setup.name);
        }))
    }
}

/// One sub-request of the proxy pipeline, as matching plugins get it.
#[derive(Debug, Clone)]
pub struct MatchCall {
    pub reference_type: &'static str,
    pub reference_id: Option<String>,
    pub descriptor: Vec<u8>,
    pub descriptor_version: u32,
    /// The candidate set's filters as JSON, as the request gave them.
    pub filters: String,
    pub targets: Vec<String>,
    pub limit: usize,
    pub threshold: f64,
    pub account_id: Option<String>,
    pub request_id: String,
}

impl MatchCall {
    fn to_python<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let reference = PyDict::new(py);
        reference.set_item("type", self.reference_type)?;
        reference.set_item("id", &self.reference_id)?;
        reference.set_item("descriptor", pyo3::types::PyBytes::new(py, &self.descriptor))?;
        reference.set_item("descriptor_version", self.descriptor_version)?;
        let d = PyDict::new(py);
        d.set_item("reference", reference)?;
        d.set_item("filters", &self.filters)?;
        d.set_item("targets", &self.targets)?;
        d.set_item("limit", self.limit)?;
        d.set_item("threshold", self.threshold)?;
        d.set_item("account_id", &self.account_id)?;
        d.set_item("request_id", &self.request_id)?;
        Ok(d)
    }
}

/// The plugin's cheapest offer for each sub-request: (cost, instance), or
/// None where no matching class of it takes the sub-request.
#[derive(Message)]
#[rtype(result = "Vec<Option<(f64, usize)>>")]
pub struct Costs(pub Arc<Vec<MatchCall>>);

impl Handler<Costs> for PluginActor {
    type Result = Vec<Option<(f64, usize)>>;

    fn handle(&mut self, Costs(calls): Costs, ctx: &mut Self::Context) -> Self::Result {
        let matchers: Vec<(usize, Py<PyAny>)> =
            Python::attach(|py| self.instances.iter().enumerate().filter(|(_, i)| i.matching).map(|(n, i)| (n, i.object.clone_ref(py))).collect());
        if !self.running || matchers.is_empty() {
            return vec![None; calls.len()];
        }
        let offers = self.bridge(ctx, "getMatchingCost", |py| {
            calls
                .iter()
                .map(|call| {
                    let data = call.to_python(py)?;
                    let mut best: Option<(f64, usize)> = None;
                    for (n, object) in &matchers {
                        let cost: Option<f64> = runtime().host_call(py, "matching_cost", (object, &data))?.extract()?;
                        if let Some(c) = cost.filter(|c| best.is_none_or(|(b, _)| *c < b)) {
                            best = Some((c, *n));
                        }
                    }
                    Ok(best)
                })
                .collect::<PyResult<Vec<_>>>()
        });
        match offers {
            Some(Ok(offers)) => offers,
            Some(Err(e)) => {
                self.fail(ctx, format!("getMatchingCost raised: {e}"));
                vec![None; calls.len()]
            }
            None => vec![None; calls.len()],
        }
    }
}

/// Answer sub-request `index` of `calls` with instance `instance`.
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, f64)>, MatchFailure>")]
pub struct Match {
    pub calls: Arc<Vec<MatchCall>>,
    pub index: usize,
    pub instance: usize,
}

#[derive(Debug)]
pub enum MatchFailure {
    /// The plugin handed the sub-request back.
    Rematch,
    /// Not running, or the instance is gone after a restart.
    Unavailable,
    TimedOut(String),
    /// An unexpected exception, or a result that is not a list of FaceMatchResult.
    Failed(String),
}

impl Handler<Match> for PluginActor {
    type Result = ResponseActFuture<Self, Result<Vec<(String, f64)>, MatchFailure>>;

    fn handle(&mut self, msg: Match, ctx: &mut Self::Context) -> Self::Result {
        let object = self.instances.get(msg.instance).filter(|i| self.running && i.matching).map(|i| Python::attach(|py| i.object.clone_ref(py)));
        let Some(object) = object else { return Box::pin(fut::ready(Err(MatchFailure::Unavailable))) };
        let timeout = self.setup.settings.timeout;
        let context = self.context();
        let spawned = self.bridge(ctx, "match", |py| {
            let coroutine = runtime().host_call(py, "match", (object, msg.calls[msg.index].to_python(py)?))?;
            runtime().run_hosted(py, coroutine, timeout, context.as_ref())
        });
        let start = Instant::now();
        let answer = async move {
            let future = match spawned {
                None => return Err(MatchFailure::Failed("panic in the bridge".into())),
                Some(Err(e)) => return Err(MatchFailure::Failed(e)),
                Some(Ok(f)) => f,
            };
            match within(timeout + GRACE, future).await {
                Ok(hits) => Python::attach(|py| hits.extract::<Vec<(String, f64)>>(py)).map_err(|e| MatchFailure::Failed(python::describe(&e))),
                Err(e) if e.starts_with("Rematch") => Err(MatchFailure::Rematch),
                Err(e) if e.starts_with("TimeoutError") || e.starts_with("no answer") => Err(MatchFailure::TimedOut(e)),
                Err(e) => Err(MatchFailure::Failed(e)),
            }
        };
        Box::pin(answer.into_actor(self).map(move |outcome, act, ctx| {
            act.setup.status.call(start.elapsed());
            match &outcome {
                Ok(_) | Err(MatchFailure::Rematch | MatchFailure::Unavailable) => {}
                Err(MatchFailure::TimedOut(e)) => act.setup.status.error(format!("match timed out: {e}")),
                // Malformed results are counted; an unexpected exception also restarts the plugin.
                Err(MatchFailure::Failed(e)) if e.starts_with("TypeError: match() returned") => act.setup.status.error(format!("malformed match result: {e}")),
                Err(MatchFailure::Failed(e)) => act.fail(ctx, format!("match raised: {e}")),
            }
            outcome
        }))
    }
}

/// Points as `[(series, eventTime, tags, fields)]` for `luna_plugins._host.deliver`.
fn points_to_python<'py>(py: Python<'py>, event: &Event) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for p in &event.points {
        let tags = PyDict::new(py);
        for (k, v) in &p.tags {
            tags.set_item(k, v)?;
        }
        let fields = PyDict::new(py);
        for (k, v) in &p.fields {
            match v {
                FieldValue::Str(s) => fields.set_item(k, s)?,
                FieldValue::Float(f) => fields.set_item(k, f)?,
                FieldValue::Int(i) => fields.set_item(k, i)?,
            }
        }
        list.append((p.series, p.event_time, tags, fields))?;
    }
    Ok(list)
}

//! The typed interface to `luna_plugins._host`: one method per host function,
//! with typed arguments and results, and the one way a hosted coroutine is
//! awaited. Functions and exception types are looked up once, at start-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::conversion::FromPyObjectOwned;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyType};
use tokio::sync::oneshot;

use crate::calls::Call;
use crate::events::{Event, FieldValue};
use crate::failure::{classify, describe, Failure};
use crate::plugin::{CallRoute, MatchCall};
use crate::status::PluginKind;

/// How much longer than a host deadline a caller waits: enough for the host
/// to cancel and answer, short enough that a held event loop cannot hold us.
pub const GRACE: Duration = Duration::from_secs(1);

/// The exceptions by which the host tells its verdicts from plugins' own errors.
pub struct HostErrors {
    /// `HostTimeout`: the plugin's own time passed the host's deadline.
    pub host_timeout: Py<PyType>,
    /// `MalformedResult`: the plugin answered something the host cannot use.
    pub malformed: Py<PyType>,
    /// `Rematch`: the plugin hands a sub-request back.
    pub rematch: Py<PyType>,
}

/// A class found in a plugin's module.
pub struct Discovered {
    /// The class object.
    pub class: Py<PyAny>,
    /// Which base class it derives from.
    pub kind: PluginKind,
    /// `module.Class`
    pub name: String,
    /// The event type an event plugin subscribes to.
    pub event_name: Option<String>,
}

/// The contextvars Context one plugin generation's code runs in.
#[derive(Clone)]
pub struct PluginContext(Arc<Py<PyAny>>);

/// An error a plugin's handler raised without failing the call: what, and its traceback.
pub type HandlerError = (String, String);

/// A route's answer: status, headers, body.
pub type RouteAnswer = (u16, HashMap<String, String>, Vec<u8>);

/// What a matching plugin's `match()` answered, as `_matching.plain` hands
/// it over: `(hits, total found or None, None)` or `([], None, (code, detail))`.
#[derive(Debug, FromPyObject)]
pub struct PlainAnswer(Vec<(String, f64)>, Option<u64>, Option<(u32, String)>);

/// What a matching plugin answered a sub-request with.
#[derive(Debug, Clone, PartialEq)]
pub enum MatchAnswer {
    /// Its candidates (`MatchResult` or a list).
    Hits {
        /// `(face_id, similarity)`, in any order.
        hits: Vec<(String, f64)>,
        /// What it stated as found before `limit` (`MatchResult.totalFound`).
        total_found: Option<u64>,
    },
    /// An `ErrorMatchResult`: the sub-request fails.
    Error {
        /// The plugin's error code (`errorCode`), mapped to the error table by `luna_core::Error::from_plugin`.
        code: u32,
        /// The plugin's `detail`.
        detail: String,
    },
}

impl From<PlainAnswer> for MatchAnswer {
    fn from(PlainAnswer(hits, total_found, error): PlainAnswer) -> Self {
        match error {
            Some((code, detail)) => MatchAnswer::Error { code, detail },
            None => MatchAnswer::Hits { hits, total_found },
        }
    }
}

/// How long the Rust side waits for a hosted coroutine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wait {
    /// Until it answers: the host's own deadlines end it, and time another
    /// plugin holds the event loop is not the caller's to count.
    Answer,
    /// At most the deadline and [`GRACE`]: someone (an HTTP request, the
    /// shutdown) is waiting. Past it the call gives [`Failure::NoAnswer`].
    Caller,
}

/// A coroutine handed to the event loop ([`crate::calls`]), with the deadline
/// it runs under. Its outcome is converted on the loop thread: awaiting it
/// takes no GIL.
#[must_use]
pub struct Hosted<T> {
    answer: oneshot::Receiver<Result<T, Failure>>,
    limit: Duration,
}

impl<T> Hosted<T> {
    /// Its result, or what went wrong.
    pub async fn answer(self, wait: Wait) -> Result<T, Failure> {
        // The loop dropped the call unanswered: it is stopping.
        let cancelled = |_| Err(Failure::NoAnswer("the call was cancelled".into()));
        match wait {
            Wait::Answer => self.answer.await.unwrap_or_else(cancelled),
            Wait::Caller => match tokio::time::timeout(self.limit + GRACE, self.answer).await {
                Ok(outcome) => outcome.unwrap_or_else(cancelled),
                Err(_) => Err(Failure::NoAnswer(format!("no answer within {:.1}s", (self.limit + GRACE).as_secs_f64()))),
            },
        }
    }
}

/// `luna_plugins._host`, its functions and types, and the event loop it runs on.
pub struct Host {
    event_loop: Py<PyAny>,
    /// The host's exception types, for [`crate::failure::classify`].
    pub errors: HostErrors,
    install: Py<PyAny>,
    unload: Py<PyAny>,
    discover: Py<PyAny>,
    construct: Py<PyAny>,
    context: Py<PyAny>,
    start: Py<PyAny>,
    stop: Py<PyAny>,
    retire: Py<PyAny>,
    deliver: Py<PyAny>,
    route_paths: Py<PyAny>,
    serve: Py<PyAny>,
    matching_costs: Py<PyAny>,
    match_: Py<PyAny>,
    blocking_owner: Py<PyAny>,
    format_traceback: Py<PyAny>,
}

fn type_of(py: Python<'_>, module: &str, name: &str) -> PyResult<Py<PyType>> {
    Ok(py.import(module)?.getattr(name)?.cast_into::<PyType>()?.unbind())
}

impl Host {
    /// Look up everything once. Call after the embedded package can be imported.
    pub fn new(py: Python<'_>, event_loop: Py<PyAny>) -> PyResult<Host> {
        let module = py.import("luna_plugins._host")?;
        let f = |name: &str| -> PyResult<Py<PyAny>> { Ok(module.getattr(name)?.unbind()) };
        crate::calls::install(py, event_loop.bind(py))?;
        Ok(Host {
            event_loop,
            errors: HostErrors {
                host_timeout: type_of(py, "luna_plugins.errors", "HostTimeout")?,
                malformed: type_of(py, "luna_plugins.errors", "MalformedResult")?,
                rematch: type_of(py, "luna_plugins.matcher_plugins.exceptions", "Rematch")?,
            },
            install: f("install")?,
            unload: f("unload")?,
            discover: f("discover")?,
            construct: f("construct")?,
            context: f("context")?,
            start: f("start")?,
            stop: f("stop")?,
            retire: f("retire")?,
            deliver: f("deliver")?,
            route_paths: f("route_paths")?,
            serve: f("serve")?,
            matching_costs: f("matching_costs")?,
            match_: f("match")?,
            blocking_owner: f("blocking_owner")?,
            format_traceback: py.import("luna_plugins._tasks")?.getattr("format_traceback")?.unbind(),
        })
    }

    /// The asyncio loop every plugin coroutine runs on.
    pub fn event_loop(&self) -> &Py<PyAny> {
        &self.event_loop
    }

    /// Run the coroutine `make` makes on the event loop, in `context`;
    /// `limit` is the host deadline it runs under. It is made, and its result
    /// becomes a `T`, on the loop thread: the caller needs no GIL.
    fn spawn<T>(
        &self,
        make: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + 'static,
        limit: Duration,
        context: Option<&PluginContext>,
    ) -> Hosted<T>
    where
        T: for<'py> FromPyObjectOwned<'py> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let finish = move |py: Python<'_>, outcome: PyResult<Bound<'_, PyAny>>| {
            let answer = match outcome {
                Ok(value) => value.extract::<T>().map_err(|e| Failure::Malformed(describe(py, &e.into()))),
                Err(e) => Err(classify(py, &e)),
            };
            let _ = tx.send(answer);
        };
        crate::calls::submit(Call { make: Box::new(make), context: context.map(|c| c.0.clone()), finish: Box::new(finish) });
        Hosted { answer: rx, limit }
    }

    /// [`Host::spawn`] of a coroutine made already, with the GIL.
    fn spawn_made<T>(&self, coroutine: PyResult<Bound<'_, PyAny>>, limit: Duration, context: Option<&PluginContext>) -> Hosted<T>
    where
        T: for<'py> FromPyObjectOwned<'py> + Send + 'static,
    {
        let coroutine = coroutine.map(Bound::unbind);
        self.spawn(move |py| coroutine.map(|c| c.into_bound(py)), limit, context)
    }

    /// The text of a Python traceback, for the log.
    pub fn format_traceback(&self, py: Python<'_>, e: &PyErr) -> Option<String> {
        self.format_traceback.bind(py).call1((e.value(py),)).ok()?.extract().ok()
    }

    /// Set the host up: its event loop, the plugins directory, the service's import paths, the log level and the active plugins.
    pub fn install(&self, py: Python<'_>, plugins_dir: &str, service_paths: &[&str], log_level: u32, active: &[String]) -> PyResult<()> {
        self.install.bind(py).call1((self.event_loop.bind(py), plugins_dir, service_paths.to_vec(), log_level, active.to_vec()))?;
        Ok(())
    }

    /// Forget `plugins.<name>` and its submodules, so the next import is fresh.
    pub fn unload(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.unload.bind(py).call1((name,))?;
        Ok(())
    }

    /// Import `plugins.<name>` and claim its plugin classes.
    pub fn discover(&self, py: Python<'_>, name: &str) -> PyResult<Vec<Discovered>> {
        let found: Vec<(Py<PyAny>, String, String, Option<String>)> = self.discover.bind(py).call1((name,))?.extract()?;
        Ok(found.into_iter().map(|(class, kind, name, event_name)| Discovered { class, kind: PluginKind::parse(&kind), name, event_name }).collect())
    }

    /// One instance of each class, constructed with the plugin's `app`.
    pub fn construct(
        &self,
        py: Python<'_>,
        name: &str,
        classes: &[Discovered],
        config_json: &str,
        service_name: &str,
        service_url: &str,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let classes = PyList::new(py, classes.iter().map(|c| c.class.bind(py)))?;
        self.construct.bind(py).call1((name, classes, config_json, service_name, service_url))?.extract()
    }

    /// A fresh contextvars Context for generation `generation` of plugin `name`.
    pub fn context(&self, py: Python<'_>, name: &str, generation: u64) -> PyResult<PluginContext> {
        Ok(PluginContext(Arc::new(self.context.bind(py).call1((name, generation))?.unbind())))
    }

    /// `initialize()` every instance, each within `limit`; answers None.
    pub fn start(&self, py: Python<'_>, instances: &[Py<PyAny>], limit: Duration, context: &PluginContext) -> Hosted<Py<PyAny>> {
        let coroutine = PyList::new(py, instances).and_then(|i| self.start.bind(py).call1((i, limit.as_secs_f64())));
        self.spawn_made(coroutine, limit, Some(context))
    }

    /// `close()` every instance, each within `limit`: their errors.
    pub fn stop(&self, py: Python<'_>, instances: &[Py<PyAny>], limit: Duration, context: Option<&PluginContext>) -> Hosted<Vec<HandlerError>> {
        let coroutine = PyList::new(py, instances).and_then(|i| self.stop.bind(py).call1((i, limit.as_secs_f64())));
        self.spawn_made(coroutine, limit, context)
    }

    /// Close the instances of a failed generation, each within `limit`, then
    /// cancel the tasks it left.
    pub fn retire(&self, py: Python<'_>, instances: &[Py<PyAny>], limit: Duration, context: &PluginContext) -> Hosted<Py<PyAny>> {
        let coroutine = PyList::new(py, instances).and_then(|i| self.retire.bind(py).call1((i, limit.as_secs_f64())));
        self.spawn_made(coroutine, limit, Some(context))
    }

    /// Hand `event` to `instances`, each handler within `limit`: their
    /// errors. Its points are made on the loop thread.
    pub fn deliver(&self, instances: Vec<Arc<Py<PyAny>>>, event: Arc<Event>, limit: Duration, context: &PluginContext) -> Hosted<Vec<HandlerError>> {
        self.spawn(
            move |py| {
                let points = points(py, &event)?;
                let instances = PyList::new(py, instances.iter().map(|i| i.bind(py)))?;
                crate::python::host().deliver.bind(py).call1((instances, event.name, points, limit.as_secs_f64()))
            },
            limit,
            Some(context),
        )
    }

    /// The route templates plugin `name` registered.
    pub fn route_paths(&self, py: Python<'_>, name: &str) -> PyResult<Vec<String>> {
        self.route_paths.bind(py).call1((name,))?.extract()
    }

    /// Run the handler of a plugin route within `limit`. The request is made on the loop thread.
    pub fn serve(&self, call: CallRoute, limit: Duration, context: &PluginContext) -> Hosted<RouteAnswer> {
        self.spawn(
            move |py| {
                let headers = PyDict::new(py);
                for (k, v) in &call.headers {
                    headers.set_item(k, v)?;
                }
                let params = PyDict::new(py);
                for (k, v) in &call.params {
                    params.set_item(k, v)?;
                }
                let body = PyBytes::new(py, &call.body);
                let args = (&call.template, params, &call.method, &call.path, &call.query, headers, body, limit.as_secs_f64());
                crate::python::host().serve.bind(py).call1(args)
            },
            limit,
            Some(context),
        )
    }

    /// For each sub-request, the cheapest `(cost, instance)` among `matchers`.
    /// Synchronous: call it on the plugin's worker thread ([`crate::worker`]).
    pub fn matching_costs<'py>(
        &self,
        py: Python<'py>,
        matchers: impl IntoIterator<Item = (usize, &'py Bound<'py, PyAny>)>,
        requests: Vec<Bound<'py, PyDict>>,
    ) -> PyResult<Vec<Option<(f64, usize)>>> {
        let matchers = PyList::new(py, matchers)?;
        self.matching_costs.bind(py).call1((matchers, PyList::new(py, requests)?))?.extract()
    }

    /// `match()` of `instance` for sub-request `index` of `calls` within
    /// `limit`: its answer, hits or an error. Made on the loop thread.
    pub fn match_(&self, instance: Arc<Py<PyAny>>, calls: Arc<Vec<MatchCall>>, index: usize, limit: Duration, context: &PluginContext) -> Hosted<PlainAnswer> {
        self.spawn(
            move |py| {
                let request = calls[index].to_python(py)?;
                crate::python::host().match_.bind(py).call1((instance.bind(py), request, limit.as_secs_f64()))
            },
            limit,
            Some(context),
        )
    }

    /// The plugin, generation and step holding the event loop now, if any.
    pub fn blocking_owner(&self, py: Python<'_>) -> PyResult<Option<(String, u64, u64)>> {
        self.blocking_owner.bind(py).call0()?.extract()
    }
}

/// Points as `[(series, eventTime, tags, fields)]`.
fn points<'py>(py: Python<'py>, event: &Event) -> PyResult<Bound<'py, PyList>> {
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

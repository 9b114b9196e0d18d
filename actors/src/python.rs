//! The Python bridge: one embedded CPython (the one the binary was built
//! against), the `luna_plugins` package served from the binary, the built-in
//! `luna_matcher` module, and one asyncio event loop on a thread the service
//! owns. Plugin coroutines are run on that loop and awaited from Rust.

use std::ffi::CString;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3_async_runtimes::TaskLocals;

use crate::module::luna_matcher;

/// The luna_plugins package, compiled in: (module, is package, source).
const SOURCES: &[(&str, bool, &str)] = &[
    ("luna_plugins", true, include_str!("../python/luna_plugins/__init__.py")),
    ("luna_plugins._routes", false, include_str!("../python/luna_plugins/_routes.py")),
    ("luna_plugins._host", false, include_str!("../python/luna_plugins/_host.py")),
    ("luna_plugins.base", true, include_str!("../python/luna_plugins/base/__init__.py")),
    ("luna_plugins.base.monitoring", false, include_str!("../python/luna_plugins/base/monitoring.py")),
    ("luna_plugins.base.plugins_meta", true, include_str!("../python/luna_plugins/base/plugins_meta/__init__.py")),
    ("luna_plugins.base.plugins_meta._base", false, include_str!("../python/luna_plugins/base/plugins_meta/_base.py")),
    ("luna_plugins.base.plugins_meta.base_plugins", false, include_str!("../python/luna_plugins/base/plugins_meta/base_plugins.py")),
    ("luna_plugins.matcher_plugins", true, include_str!("../python/luna_plugins/matcher_plugins/__init__.py")),
    ("luna_plugins.matcher_plugins.base_plugin", false, include_str!("../python/luna_plugins/matcher_plugins/base_plugin.py")),
    ("luna_plugins.matcher_plugins.base_struct", false, include_str!("../python/luna_plugins/matcher_plugins/base_struct.py")),
    ("luna_plugins.matcher_plugins.exceptions", false, include_str!("../python/luna_plugins/matcher_plugins/exceptions.py")),
];

const FINDER: &str = include_str!("../python/_embedded.py");

/// The running interpreter and its event loop.
pub struct Runtime {
    /// `luna_plugins._host`
    pub host: Py<PyModule>,
    pub locals: TaskLocals,
    event_loop: Py<PyAny>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime, once [`start`] has run.
pub fn runtime() -> &'static Runtime {
    RUNTIME.get().expect("the Python runtime is started before plugins run")
}

/// Start the interpreter, with the plugins' virtual environment `venv` (see
/// [`crate::venv`]), and the event loop thread. Once per process.
pub fn start(plugins_dir: &Path, venv: &Path, service_paths: &[&str], active: &[String], stall_limit: Duration) -> PyResult<&'static Runtime> {
    if let Some(r) = RUNTIME.get() {
        return Ok(r);
    }
    pyo3::append_to_inittab!(luna_matcher);
    Python::initialize();
    Python::attach(|py| crate::venv::activate(py, venv)).map_err(PyRuntimeError::new_err)?;

    let (tx, rx) = std::sync::mpsc::channel::<PyResult<Py<PyAny>>>();
    std::thread::Builder::new()
        .name("python-asyncio".into())
        .spawn(move || {
            Python::attach(|py| {
                let made = (|| -> PyResult<Bound<PyAny>> {
                    let asyncio = py.import("asyncio")?;
                    let event_loop = asyncio.call_method0("new_event_loop")?;
                    asyncio.call_method1("set_event_loop", (&event_loop,))?;
                    Ok(event_loop)
                })();
                match made {
                    Ok(event_loop) => {
                        let _ = tx.send(Ok(event_loop.clone().unbind()));
                        // Releases the GIL whenever the loop waits.
                        if let Err(e) = event_loop.call_method0("run_forever") {
                            log::error!("the asyncio loop stopped: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
        })
        .expect("asyncio thread");
    let event_loop = rx.recv().expect("asyncio thread reports")?;

    let runtime = Python::attach(|py| -> PyResult<Runtime> {
        let finder_module = PyModule::from_code(py, &cstring(FINDER), c"<luna-matcher>/_embedded.py", c"_luna_embedded")?;
        let sources = PyDict::new(py);
        for (name, is_package, source) in SOURCES {
            sources.set_item(name, (source, is_package))?;
        }
        let finder = finder_module.getattr("EmbeddedFinder")?.call1((sources,))?;
        py.import("sys")?.getattr("meta_path")?.cast_into::<PyList>()?.insert(0, finder)?;
        let host = py.import("luna_plugins._host")?;
        let level = match log::max_level() {
            log::LevelFilter::Off => 50,
            log::LevelFilter::Error => 40,
            log::LevelFilter::Warn => 30,
            log::LevelFilter::Info => 20,
            _ => 10,
        };
        let dir = plugins_dir.canonicalize().unwrap_or_else(|_| plugins_dir.to_path_buf());
        host.call_method1("install", (event_loop.bind(py), dir.display().to_string(), service_paths.to_vec(), level, active.to_vec()))?;
        Ok(Runtime { host: host.unbind(), locals: TaskLocals::new(event_loop.bind(py).clone()), event_loop })
    })?;
    let runtime = RUNTIME.get_or_init(|| runtime);
    std::thread::Builder::new().name("python-watchdog".into()).spawn(move || watchdog(runtime, stall_limit)).expect("watchdog thread");
    Ok(runtime)
}

/// Milliseconds since `EPOCH` when the event loop last ran a heartbeat.
static LAST_BEAT: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn millis() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

pub(crate) fn beat() {
    LAST_BEAT.store(millis(), Ordering::Relaxed);
}

/// Plugins share one event loop: code that blocks it (`time.sleep`, a busy
/// loop) stalls every plugin. Send the loop a heartbeat a few times per
/// `limit`; when beats stop for longer than `limit`, report the plugin whose
/// task holds the loop, once per stall, so it is restarted.
fn watchdog(runtime: &'static Runtime, limit: Duration) {
    beat();
    let every = (limit / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut reported = false;
    // A plugin is named only when the same task holds the loop at two checks
    // in a row: one look could catch a task that merely lost the CPU.
    let mut suspect: Option<(String, u64)> = None;
    loop {
        std::thread::sleep(every);
        let stalled = Duration::from_millis(millis().saturating_sub(LAST_BEAT.load(Ordering::Relaxed)));
        let holder = Python::attach(|py| -> PyResult<Option<(String, u64)>> {
            let event_loop = runtime.event_loop.bind(py);
            event_loop.call_method1("call_soon_threadsafe", (py.import("luna_matcher")?.getattr("_beat")?,))?;
            if stalled > limit && !reported {
                return runtime.host_call(py, "blocking_owner", ())?.extract();
            }
            Ok(None)
        });
        match holder {
            Ok(Some(owner)) if suspect.as_ref() == Some(&owner) => {
                reported = true;
                let (plugin, generation) = owner;
                log::warn!(target: "luna_matcher::plugins", "plugin {plugin} holds the event loop: no heartbeat for {:.1}s", stalled.as_secs_f64());
                crate::module::fault(&plugin, generation, format!("blocked the event loop for more than {:.1}s", limit.as_secs_f64()));
            }
            Ok(owner) => {
                suspect = owner;
                reported &= stalled > limit;
            }
            Err(e) => log::error!("event loop watchdog: {}", describe(&e)),
        }
    }
}

impl Runtime {
    /// Schedule a coroutine on the event loop, in `context` (a contextvars
    /// Context or None), and return a future of its result. Call with the GIL.
    pub fn spawn(
        &self,
        py: Python<'_>,
        coroutine: Bound<'_, PyAny>,
        context: Option<&Py<PyAny>>,
    ) -> PyResult<impl Future<Output = PyResult<Py<PyAny>>> + Send + 'static> {
        let locals = match context {
            Some(ctx) => self.locals.clone().with_context(ctx.bind(py).clone()),
            None => self.locals.clone(),
        };
        pyo3_async_runtimes::into_future_with_locals(&locals, coroutine)
    }

    /// Run a plugin coroutine on the loop within `limit`: cancelled there
    /// (`asyncio.wait_for`) when it overruns. Call with the GIL.
    pub fn run_hosted(
        &self,
        py: Python<'_>,
        coroutine: Bound<'_, PyAny>,
        limit: Duration,
        context: Option<&Py<PyAny>>,
    ) -> PyResult<impl Future<Output = PyResult<Py<PyAny>>> + Send + 'static> {
        let hosted = self.host_call(py, "hosted", (coroutine, limit.as_secs_f64()))?;
        self.spawn(py, hosted, context)
    }

    /// Call a function of `luna_plugins._host`.
    pub fn host_call<'py>(&self, py: Python<'py>, name: &str, args: impl pyo3::call::PyCallArgs<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.host.bind(py).getattr(name)?.call1(args)
    }

    /// Stop the event loop; its thread then returns.
    pub fn stop(&self) {
        Python::attach(|py| {
            let event_loop = self.event_loop.bind(py);
            if let Ok(stop) = event_loop.getattr("stop") {
                let _ = event_loop.call_method1("call_soon_threadsafe", (stop,));
            }
        });
    }
}

/// Await `future` for at most `limit`: a hung event loop cannot hold the caller.
pub async fn within<T>(limit: Duration, future: impl Future<Output = PyResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(limit, future).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {:.1}s", limit.as_secs_f64())),
    }
}

/// `Type: message` of a Python exception, with how to install a missing package.
pub fn describe(e: &PyErr) -> String {
    Python::attach(|py| {
        let name = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
        let hint = crate::venv::install_hint(py, e).unwrap_or_default();
        format!("{name}: {}{hint}", e.value(py))
    })
}

fn cstring(s: &str) -> CString {
    CString::new(s).expect("embedded sources hold no NUL")
}

//! The Python bridge: one embedded CPython (the one the binary was built
//! against), the `luna_plugins` package served from the binary, the built-in
//! `luna_matcher` module, and one asyncio event loop on a thread the service
//! owns. Plugin coroutines run on that loop; [`Host`] is how Rust reaches them.

use std::ffi::CString;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::host::Host;
use crate::module::luna_matcher;

/// The luna_plugins package, compiled in: (module, is package, source).
const SOURCES: &[(&str, bool, &str)] = &[
    ("luna_plugins", true, include_str!("../python/luna_plugins/__init__.py")),
    ("luna_plugins._routes", false, include_str!("../python/luna_plugins/_routes.py")),
    ("luna_plugins._tasks", false, include_str!("../python/luna_plugins/_tasks.py")),
    ("luna_plugins._matching", false, include_str!("../python/luna_plugins/_matching.py")),
    ("luna_plugins._host", false, include_str!("../python/luna_plugins/_host.py")),
    ("luna_plugins.errors", false, include_str!("../python/luna_plugins/errors.py")),
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

static HOST: OnceLock<Host> = OnceLock::new();

/// The host, once [`start`] has run.
pub fn host() -> &'static Host {
    HOST.get().expect("the Python runtime is started before plugins run")
}

/// Start the interpreter, with the plugins' virtual environment `venv` (see
/// [`crate::venv`]), the event loop thread and its watchdog, which names
/// plugin code holding the loop longer than `stall_limit`. Once per process.
pub fn start(plugins_dir: &Path, venv: &Path, service_paths: &[&str], active: &[String], stall_limit: Duration) -> PyResult<&'static Host> {
    if let Some(h) = HOST.get() {
        return Ok(h);
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

    let host = Python::attach(|py| -> PyResult<Host> {
        let finder_module = PyModule::from_code(py, &cstring(FINDER), c"<luna-matcher>/_embedded.py", c"_luna_embedded")?;
        let sources = PyDict::new(py);
        for (name, is_package, source) in SOURCES {
            sources.set_item(name, (source, is_package))?;
        }
        let finder = finder_module.getattr("EmbeddedFinder")?.call1((sources,))?;
        py.import("sys")?.getattr("meta_path")?.cast_into::<PyList>()?.insert(0, finder)?;
        let host = Host::new(py, event_loop)?;
        let level = match log::max_level() {
            log::LevelFilter::Off => 50,
            log::LevelFilter::Error => 40,
            log::LevelFilter::Warn => 30,
            log::LevelFilter::Info => 20,
            _ => 10,
        };
        let dir = plugins_dir.canonicalize().unwrap_or_else(|_| plugins_dir.to_path_buf());
        host.install(py, &dir.display().to_string(), service_paths, level, active)?;
        Ok(host)
    })?;
    let host = HOST.get_or_init(|| host);
    crate::watchdog::start(host, stall_limit);
    Ok(host)
}

/// Keep a Python thread state on the calling thread for as long as it lives,
/// so that each `Python::attach` on it only takes the GIL. Without it every
/// attach makes a thread state and drops it again, and with it the frame
/// stack it maps: an mmap and a munmap per call, whose TLB shootdown stops
/// every core. For long-lived threads that call into Python often (plugin
/// actors); call it while not attached.
pub fn keep_thread_state() {
    thread_local!(static KEPT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if !KEPT.with(|kept| kept.replace(true)) {
        // SAFETY: the interpreter is initialized and this thread holds no GIL:
        // Ensure makes its thread state and takes the GIL, SaveThread lets go
        // of the GIL and leaves the thread state's count at one, so
        // PyGILState_Release never drops it.
        unsafe {
            pyo3::ffi::PyGILState_Ensure();
            pyo3::ffi::PyEval_SaveThread();
        }
    }
}

/// Stop the event loop; its thread then returns.
pub fn stop() {
    Python::attach(|py| {
        let event_loop = host().event_loop().bind(py);
        if let Ok(stop) = event_loop.getattr("stop") {
            let _ = event_loop.call_method1("call_soon_threadsafe", (stop,));
        }
    });
}

fn cstring(s: &str) -> CString {
    CString::new(s).expect("embedded sources hold no NUL")
}

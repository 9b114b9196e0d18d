//! The built-in `luna_matcher` module (registered before the interpreter
//! starts): how plugin-side Python reports to the host, and the native helpers.
//! No function here waits on an actor: a synchronous call from a plugin into
//! an actor that is itself waiting on that plugin would deadlock.

use std::sync::OnceLock;

use pyo3::prelude::*;

type FaultSink = Box<dyn Fn(&str, u64, String, Option<String>) + Send + Sync>;

static FAULTS: OnceLock<FaultSink> = OnceLock::new();

/// Where faults found outside a call go: (plugin, generation, error, traceback).
pub fn on_fault(sink: impl Fn(&str, u64, String, Option<String>) + Send + Sync + 'static) {
    let _ = FAULTS.set(Box::new(sink));
}

/// Report a fault of a plugin generation.
pub fn fault(plugin: &str, generation: u64, error: String, traceback: Option<String>) {
    if let Some(sink) = FAULTS.get() {
        sink(plugin, generation, error, traceback);
    }
}

/// Python `logging` output, into the service log under the logger's name.
#[pyfunction]
fn _log(level: u32, name: &str, message: &str) {
    let level = match level {
        0..=10 => log::Level::Debug,
        11..=20 => log::Level::Info,
        21..=30 => log::Level::Warn,
        _ => log::Level::Error,
    };
    log::log!(target: name, level, "{message}");
}

/// A task a plugin created ended with an exception nobody watched.
#[pyfunction]
fn _task_failed(plugin: &str, generation: u64, error: String, traceback: String) {
    fault(plugin, generation, format!("background task died: {error}"), Some(traceback));
}

/// The event loop ran a callback: it is not blocked.
#[pyfunction]
fn _beat() {
    crate::watchdog::beat();
}

#[pymodule]
pub fn luna_matcher(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_log, m)?)?;
    m.add_function(wrap_pyfunction!(_task_failed, m)?)?;
    m.add_function(wrap_pyfunction!(_beat, m)?)?;
    m.add_class::<crate::helpers::DescriptorSet>()?;
    m.add_function(wrap_pyfunction!(crate::helpers::_store_get_face, m)?)?;
    m.add_function(wrap_pyfunction!(crate::helpers::_store_list_faces, m)?)?;
    m.add_function(wrap_pyfunction!(crate::helpers::_store_list_sets, m)?)?;
    m.add_function(wrap_pyfunction!(crate::helpers::_store_list_revision, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // What a Rust panic inside a native extension surfaces as in Python; a
    // plugin that lets one escape has its actor restarted.
    m.add("PanicException", m.py().get_type::<pyo3::panic::PanicException>())?;
    Ok(())
}

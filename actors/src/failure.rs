//! What went wrong in a call into plugin code, decided by the exception's
//! type, never by its text.

use pyo3::exceptions::asyncio::CancelledError;
use pyo3::panic::PanicException;
use pyo3::prelude::*;

use crate::python::host;

/// What went wrong in a call into plugin code; built only by [`classify`].
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The plugin's own time ran past the host's deadline (`HostTimeout`).
    TimedOut(String),
    /// The caller stopped waiting before the host answered (the event loop
    /// was held, or the call was cancelled by a restart). Nobody is blamed.
    NoAnswer(String),
    /// `Rematch`, or a subclass of it: the plugin hands a sub-request back.
    Rematch,
    /// The plugin answered something the host cannot use (`MalformedResult`).
    Malformed(String),
    /// The plugin raised: `Type: message`, and the Python traceback.
    Raised {
        /// `Type: message`.
        error: String,
        /// The Python traceback, when there is one.
        traceback: Option<String>,
    },
    /// A Rust panic: in the bridge, or out of a native extension (`PanicException`).
    Panic(String),
}

impl Failure {
    /// One line: what went wrong.
    pub fn summary(&self) -> String {
        match self {
            Failure::TimedOut(e) | Failure::NoAnswer(e) | Failure::Malformed(e) | Failure::Raised { error: e, .. } => e.clone(),
            Failure::Rematch => "Rematch".into(),
            Failure::Panic(e) => format!("panic in the bridge: {e}"),
        }
    }

    /// The Python traceback of a plugin's exception, if it raised one.
    pub fn traceback(&self) -> Option<&str> {
        match self {
            Failure::Raised { traceback, .. } => traceback.as_deref(),
            _ => None,
        }
    }
}

/// `Type: message` of a Python exception, with how to install a missing package.
pub fn describe(py: Python<'_>, e: &PyErr) -> String {
    let name = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    let hint = crate::venv::install_hint(py, e).unwrap_or_default();
    format!("{name}: {}{hint}", e.value(py))
}

/// The one place a Python exception becomes a [`Failure`].
pub fn classify(py: Python<'_>, e: &PyErr) -> Failure {
    let types = &host().errors;
    let is = |t: &Py<pyo3::types::PyType>| e.is_instance(py, t.bind(py).as_any());
    if is(&types.host_timeout) {
        Failure::TimedOut(e.value(py).to_string())
    } else if is(&types.rematch) {
        Failure::Rematch
    } else if is(&types.malformed) {
        Failure::Malformed(e.value(py).to_string())
    } else if e.is_instance_of::<PanicException>(py) {
        Failure::Panic(e.value(py).to_string())
    } else if e.is_instance_of::<CancelledError>(py) {
        Failure::NoAnswer("the call was cancelled".into())
    } else {
        Failure::Raised { error: describe(py, e), traceback: host().format_traceback(py, e) }
    }
}

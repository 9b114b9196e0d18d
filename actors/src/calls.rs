//! How work reaches the event loop. A caller pushes a job onto a queue and
//! wakes the loop through a socket the loop watches, without a Python call;
//! the loop thread runs every queued job when it wakes. A [`Call`] is such a
//! job: it starts a coroutine as a task and converts its outcome there, into
//! a Rust value sent back on a channel. So the caller's thread never waits
//! for the GIL to hand work over or to learn its answer, and a burst costs
//! the loop one wake-up. The outcome is sent from the task's last step, not
//! from a done callback a loop turn later.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::prelude::*;

/// Makes a call's coroutine, on the loop thread.
pub type Make = Box<dyn for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send>;

/// What the loop thread does with a call's outcome: the coroutine's result, or what it raised.
pub type Finish = Box<dyn for<'py> FnOnce(Python<'py>, PyResult<Bound<'py, PyAny>>) + Send>;

/// A coroutine for the loop, the contextvars Context it runs in, and where its outcome goes.
pub struct Call {
    /// Makes the coroutine.
    pub make: Make,
    /// The Context its task copies (a plugin generation's), if any.
    pub context: Option<Arc<Py<PyAny>>>,
    /// Takes the outcome, on the loop thread.
    pub finish: Finish,
}

type Job = Box<dyn for<'py> FnOnce(Python<'py>) + Send>;

struct Calls {
    event_loop: Py<PyAny>,
    /// `_tasks.reporting`: runs a call's coroutine and reports its outcome.
    reporting: Py<PyAny>,
    queue: Mutex<Vec<Job>>,
    /// A wake-up byte is on its way: later calls need not send another.
    pending: AtomicBool,
    wake: UnixStream,
    woken: UnixStream,
}

static CALLS: OnceLock<Calls> = OnceLock::new();

/// Watch the wake-up socket on `event_loop`. Once, before the first [`on_loop`].
pub fn install(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let (wake, woken) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    woken.set_nonblocking(true)?;
    let fd = woken.as_raw_fd();
    let reporting = py.import("luna_plugins._tasks")?.getattr("reporting")?.unbind();
    let calls = Calls { event_loop: event_loop.clone().unbind(), reporting, queue: Mutex::new(Vec::new()), pending: AtomicBool::new(false), wake, woken };
    if CALLS.set(calls).is_err() {
        return Ok(());
    }
    let take = wrap_pyfunction!(_take_calls, py)?;
    // add_reader is not thread-safe: the loop's own thread runs it.
    event_loop.call_method1("call_soon_threadsafe", (event_loop.getattr("add_reader")?, fd, take))?;
    Ok(())
}

/// Start `call` on the loop thread.
pub fn submit(call: Call) {
    on_loop(move |py| start(py, call));
}

/// Queue `job` for the loop thread and wake it, unless a wake-up is on its
/// way. Never waits for Python: the matching threads call it.
pub fn on_loop(job: impl for<'py> FnOnce(Python<'py>) + Send + 'static) {
    let calls = CALLS.get().expect("calls are installed with the host");
    calls.queue.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(job));
    if !calls.pending.swap(true, Ordering::AcqRel) {
        // A full socket buffer already holds a wake-up.
        let _ = (&calls.wake).write(&[1]);
    }
}

/// The event loop, for jobs that run on it.
pub fn event_loop(py: Python<'_>) -> Option<&Bound<'_, PyAny>> {
    CALLS.get().map(|calls| calls.event_loop.bind(py))
}

/// On the loop thread, when the socket wakes it: run every queued job.
#[pyfunction]
fn _take_calls(py: Python<'_>) {
    let Some(calls) = CALLS.get() else { return };
    // One read takes the wake-up: a caller sends one per reset of `pending`
    // below. A byte left over would only wake the loop once more.
    let _ = (&calls.woken).read(&mut [0u8; 256]);
    // Before taking the queue: a call pushed from now on sends a new wake-up.
    calls.pending.store(false, Ordering::Release);
    let batch = std::mem::take(&mut *calls.queue.lock().unwrap_or_else(|p| p.into_inner()));
    for job in batch {
        // A job that panics loses its own answer (its caller sees the call
        // cancelled), not the jobs queued behind it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(py))).is_err() {
            log::error!("a call on the event loop panicked");
        }
    }
}

/// Run the call's coroutine as a task (in a copy of its Context, as any
/// task made there would be) that hands its outcome to `finish` as it ends;
/// the task's done callback hands over what it did not (a cancellation
/// before it ran, an exit).
fn start(py: Python<'_>, Call { make, context, finish }: Call) {
    let done = match Bound::new(py, Done(Mutex::new(Some(finish)))) {
        Ok(done) => done,
        // Its caller sees the call cancelled.
        Err(e) => return log::error!("a call's completion could not be made: {e}"),
    };
    let started = (|| {
        let calls = CALLS.get().expect("installed");
        let coroutine = calls.reporting.bind(py).call1((make(py)?, done.getattr("report")?))?;
        let create_task = calls.event_loop.bind(py).getattr("create_task")?;
        let task = match &context {
            Some(context) => context.bind(py).call_method1("run", (create_task, coroutine))?,
            None => create_task.call1((coroutine,))?,
        };
        task.call_method1("add_done_callback", (done.clone(),))
    })();
    if let Err(e) = started {
        if let Some(finish) = done.borrow().take() {
            finish(py, Err(e));
        }
    }
}

/// Where a call's outcome goes, once: from its coroutine's end, or else
/// from its task's done callback.
#[pyclass]
struct Done(Mutex<Option<Finish>>);

impl Done {
    fn take(&self) -> Option<Finish> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[pymethods]
impl Done {
    /// The coroutine's result (`ok`) or the exception it raised.
    fn report(&self, ok: bool, value: Bound<'_, PyAny>) {
        if let Some(finish) = self.take() {
            finish(value.py(), if ok { Ok(value) } else { Err(PyErr::from_value(value)) });
        }
    }

    /// The done callback.
    fn __call__(&self, task: &Bound<'_, PyAny>) {
        if let Some(finish) = self.take() {
            finish(task.py(), task.call_method0("result"));
        }
    }
}

//! One thread per plugin generation for its synchronous calls
//! (`getMatchingCost`): a call that blocks holds neither its caller, the
//! plugin's actor nor the event loop. A request's thread hands a call
//! straight to this thread and back (no actor, no event loop in between),
//! without taking the GIL; the deadline is kept here, counted from when the
//! call starts to run (time queued behind another call is not counted). A
//! call past it is interrupted (`HostTimeout` at its next bytecode) and the
//! thread retired: the calls queued behind it are cancelled, and the
//! restarted plugin gets a fresh thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use tokio::sync::oneshot;

use crate::failure::Failure;
use crate::python::host;

type Job = Box<dyn FnOnce() + Send>;

/// What the worker thread and its callers share.
struct Shared {
    /// Set when the thread is given up: it runs nothing more.
    retired: AtomicBool,
    /// The Python thread id of the thread, once it runs.
    thread: AtomicU64,
    /// The serial of the call running now (0: none). Written and read with the GIL held.
    running: AtomicU64,
    /// Serials of calls handed over.
    serial: AtomicU64,
}

/// The worker thread of one plugin; retired when dropped.
pub struct Worker {
    jobs: Sender<(u64, Job)>,
    shared: Arc<Shared>,
}

impl Worker {
    /// A worker thread named after plugin `name`.
    pub fn start(name: &str) -> std::io::Result<Worker> {
        let (jobs, queue) = mpsc::channel();
        let shared = Arc::new(Shared { retired: AtomicBool::new(false), thread: AtomicU64::new(0), running: AtomicU64::new(0), serial: AtomicU64::new(0) });
        let own = shared.clone();
        std::thread::Builder::new().name(format!("plugin-{name}")).spawn(move || Python::attach(|py| serve(py, queue, &own)))?;
        Ok(Worker { jobs, shared })
    }

    /// Whether a call past its deadline retired this worker.
    pub fn retired(&self) -> bool {
        self.shared.retired.load(Ordering::Acquire)
    }

    /// Run `call` (which attaches to Python itself, catching panics) on the
    /// worker thread within `limit` of its own running time.
    /// [`Failure::TimedOut`] past it (the call interrupted, the worker
    /// retired); [`Failure::NoAnswer`] when the worker was retired before it ran.
    pub fn call<T: Send + 'static>(
        &self,
        limit: Duration,
        what: &'static str,
        call: impl FnOnce() -> Result<T, Failure> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, Failure>> + 'static {
        // When the call starts, written by the worker: the caller reads it only
        // when a wait runs out, so starting costs the caller no wake-up.
        let started = Arc::new(OnceLock::new());
        let (done_tx, mut done) = oneshot::channel();
        let shared = self.shared.clone();
        let serial = shared.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let start = started.clone();
        let job: Job = Box::new(move || {
            let _ = start.set(Instant::now());
            let _ = done_tx.send(call());
        });
        let sent = self.jobs.send((serial, job)).is_ok();
        async move {
            let cancelled = || Failure::NoAnswer("the call was cancelled".into());
            if !sent {
                return Err(cancelled());
            }
            let mut deadline = Instant::now() + limit;
            loop {
                if let Ok(outcome) = tokio::time::timeout_at(deadline.into(), &mut done).await {
                    return outcome.unwrap_or_else(|_| Err(cancelled()));
                }
                match started.get() {
                    // Still queued behind another call: its own time has not begun.
                    None => deadline = Instant::now() + limit,
                    Some(&at) if at + limit > Instant::now() => deadline = at + limit,
                    Some(_) => break,
                }
            }
            // Retired at once; the GIL is taken on a thread of its own, as the
            // caller may be one that never calls into Python.
            shared.retired.store(true, Ordering::Release);
            let _ = std::thread::Builder::new().name("plugin-interrupt".into()).spawn(move || interrupt(&shared, serial));
            Err(Failure::TimedOut(format!("{what} took longer than {}s", limit.as_secs_f64())))
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.retired.store(true, Ordering::Release);
    }
}

/// If call `serial` still runs, raise `HostTimeout` in it.
fn interrupt(shared: &Shared, serial: u64) {
    Python::attach(|py| {
        // With the GIL held the worker cannot finish the call in between.
        if shared.running.load(Ordering::Acquire) == serial {
            let exception = host().errors.host_timeout.bind(py);
            // SAFETY: the GIL is held; CPython takes its own reference to the type.
            unsafe {
                pyo3::ffi::PyThreadState_SetAsyncExc(shared.thread.load(Ordering::Acquire) as std::ffi::c_long, exception.as_ptr());
            }
        }
    });
}

/// The worker thread: runs calls one at a time until retired or dropped. It
/// keeps one Python thread state and lets go of the GIL while it waits.
fn serve(py: Python<'_>, mut queue: Receiver<(u64, Job)>, shared: &Shared) {
    // SAFETY: a plain query of the calling thread's id.
    shared.thread.store(unsafe { pyo3::ffi::PyThread_get_thread_ident() } as u64, Ordering::Release);
    loop {
        // A call queued already runs without letting the GIL go in between:
        // under load, calls follow each other without a hand-over each.
        let next = match queue.try_recv() {
            Err(TryRecvError::Empty) => {
                // The receiver is not Sync: it goes along while the GIL is let go.
                let next;
                (next, queue) = py.detach(move || (queue.recv(), queue));
                next.ok()
            }
            next => next.ok(),
        };
        let Some((serial, job)) = next else { return };
        if shared.retired.load(Ordering::Acquire) {
            return;
        }
        shared.running.store(serial, Ordering::Release);
        job();
        shared.running.store(0, Ordering::Release);
    }
}

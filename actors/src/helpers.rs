//! The native helpers of docs/plugins.md, in the built-in `luna_matcher` module:
//! `DescriptorSet`, which matches with the service's own kernels and the GIL
//! released, and the store reads behind `luna_matcher.store` (its async
//! wrappers are in `luna_plugins._host`).
//!
//! `DescriptorSet.search` is what the engine does for requests: searches
//! made in the same turn of the event loop, or while a set is being scanned,
//! are scanned together next, on the matching threads, each chunk of the set
//! read once for all of them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use luna_core::catalog::StoredFace;
use luna_core::descriptor::VersionSpec;
use luna_core::flat::FlatIndex;
use luna_core::index::Query;
use luna_core::time::format_time;
use luna_core::{Core, ErrorCode};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict};
use uuid::Uuid;

static CORE: OnceLock<Arc<Core>> = OnceLock::new();

/// Give the helpers the service's core. Once, before plugins load.
pub fn attach_core(core: Arc<Core>) {
    let _ = CORE.set(core);
}

fn core() -> PyResult<&'static Arc<Core>> {
    CORE.get().ok_or_else(|| PyRuntimeError::new_err("the store is not available"))
}

/// An append/remove-able set of `(id, descriptor)` of one version.
#[pyclass(module = "luna_matcher")]
pub struct DescriptorSet {
    version: u32,
    spec: VersionSpec,
    shared: Arc<Shared>,
}

/// The set and its searches waiting for the next scan.
struct Shared {
    index: parking_lot::RwLock<FlatIndex<String>>,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Search>,
    /// A scan is queued or running: it takes what waits when it ends.
    scanning: bool,
}

struct Search {
    query: Query,
    limit: usize,
    threshold: f64,
    /// The asyncio future the caller awaits.
    future: Py<PyAny>,
}

impl Shared {
    fn holding(index: FlatIndex<String>) -> Arc<Self> {
        Arc::new(Shared { index: parking_lot::RwLock::new(index), queue: Mutex::default() })
    }

    /// On a matching thread: scan the searches waiting now, together, then
    /// queue the next turn behind the engine's other work, so that a set
    /// searched without pause never holds the engine from requests.
    fn scan_waiting(self: Arc<Self>) {
        let batch = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.waiting.is_empty() {
                queue.scanning = false;
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        let queries: Vec<(&Query, usize, f64)> = batch.iter().map(|s| (&s.query, s.limit, s.threshold)).collect();
        let scanned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.index.read().search_many(&queries)));
        let outcomes: Vec<Outcome> = match scanned {
            Ok(hits) => hits.into_iter().map(Ok).collect(),
            Err(_) => {
                log::error!("a DescriptorSet scan panicked; its {} searches fail", batch.len());
                batch.iter().map(|_| Err("the DescriptorSet scan failed")).collect()
            }
        };
        let answers: Vec<_> = batch.into_iter().map(|s| s.future).zip(outcomes).collect();
        crate::calls::on_loop(move |py| answers.into_iter().for_each(|(future, outcome)| resolve(py, future.bind(py), outcome)));
        self.next_turn();
    }

    /// On a loop thread: start the next scan, or fail the searches waiting
    /// when the engine is gone.
    fn kick(self: Arc<Self>, py: Python<'_>) {
        if !self.clone().next_turn() {
            let waiting = std::mem::take(&mut self.queue.lock().unwrap_or_else(|p| p.into_inner()).waiting);
            waiting.into_iter().for_each(|s| resolve(py, s.future.bind(py), Err("the matching engine stopped")));
        }
    }

    /// Queue [`Shared::scan_waiting`] on the matching threads; false when the engine is gone.
    fn next_turn(self: Arc<Self>) -> bool {
        let again = self.clone();
        let queued = core().is_ok_and(|core| core.submit_matching(move || again.scan_waiting()).is_ok());
        if !queued {
            self.queue.lock().unwrap_or_else(|p| p.into_inner()).scanning = false;
        }
        queued
    }
}

/// Sets of more rows than this are freed on a thread of their own.
const FREE_ASIDE: usize = 10_000;

impl Drop for DescriptorSet {
    /// Freeing a large set's rows takes milliseconds, and a plugin lets go of
    /// one (a reloaded copy of a list) on the event loop: a thread of its own
    /// frees it, not the loop, nor the matching threads requests wait for.
    fn drop(&mut self) {
        if Arc::strong_count(&self.shared) == 1 && self.shared.index.read().len() > FREE_ASIDE {
            let shared = std::mem::replace(&mut self.shared, Shared::holding(FlatIndex::new(self.spec)));
            // A thread that cannot start frees it here.
            let _ = std::thread::Builder::new().name("set-free".into()).spawn(move || drop(shared));
        }
    }
}

/// What a search gets: its hits, or why the set could not be scanned (a RuntimeError).
type Outcome = Result<Vec<(String, f64)>, &'static str>;

/// On a loop thread (scans answer through [`crate::calls`], so the matching
/// threads never wait for Python): the search's outcome, unless it was
/// cancelled meanwhile. A future of another loop (a plugin's own thread)
/// gets it on that loop.
fn resolve(py: Python<'_>, future: &Bound<'_, PyAny>, outcome: Outcome) {
    let settled = (|| -> PyResult<()> {
        let ok = outcome.is_ok();
        let value = match outcome {
            Ok(hits) => hits.into_pyobject(py)?.into_any(),
            Err(why) => PyRuntimeError::new_err(why).into_value(py).into_bound(py).into_any(),
        };
        let owner = future.call_method0("get_loop")?;
        if crate::calls::event_loop(py).is_some_and(|service| service.is(&owner)) {
            _settle_search(future, ok, value)
        } else {
            owner.call_method1("call_soon_threadsafe", (wrap_pyfunction!(_settle_search, py)?, future, ok, value)).map(drop)
        }
    })();
    // A closed loop wants no answer.
    drop(settled);
}

/// On the future's own loop: its result (`ok`) or exception, unless it was cancelled.
#[pyfunction]
fn _settle_search(future: &Bound<'_, PyAny>, ok: bool, value: Bound<'_, PyAny>) -> PyResult<()> {
    if !future.call_method0("done")?.is_truthy()? {
        future.call_method1(if ok { "set_result" } else { "set_exception" }, (value,))?;
    }
    Ok(())
}

impl DescriptorSet {
    /// A set of version `version` holding `index`.
    fn holding(version: u32, index: FlatIndex<String>) -> Self {
        let spec = *index.spec();
        DescriptorSet { version, spec, shared: Shared::holding(index) }
    }

    fn parse(&self, descriptor: &[u8]) -> PyResult<Vec<u8>> {
        let d = core()?
            .versions()
            .parse(descriptor, Some(self.version))
            .map_err(|e| PyValueError::new_err(format!("{} {}: {}", e.code.code(), e.code.desc(), e.detail)))?;
        Ok(d.payload)
    }

    fn query(&self, descriptor: &[u8]) -> PyResult<Query> {
        Ok(Query::new(&self.spec, &self.parse(descriptor)?))
    }
}

#[pymethods]
impl DescriptorSet {
    #[new]
    fn new(version: u32) -> PyResult<Self> {
        let spec = *core()?.versions().get(version).map_err(|e| PyValueError::new_err(e.detail))?;
        Ok(DescriptorSet::holding(version, FlatIndex::new(spec)))
    }

    #[getter]
    fn version(&self) -> u32 {
        self.version
    }

    /// Add a descriptor (SDK container or raw) under `id`, replacing one already there.
    fn add(&self, py: Python<'_>, id: String, descriptor: &[u8]) -> PyResult<()> {
        let payload = self.parse(descriptor)?;
        // Waits for a scan in progress: without the GIL.
        py.detach(|| self.shared.index.write().insert(id, &payload));
        Ok(())
    }

    /// Remove `id`; false when it was not there.
    fn remove(&self, py: Python<'_>, id: String) -> bool {
        py.detach(|| self.shared.index.write().remove(&id))
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        py.detach(|| self.shared.index.read().len())
    }

    fn __contains__(&self, py: Python<'_>, id: String) -> bool {
        py.detach(|| self.shared.index.read().contains(&id))
    }

    /// `[(id, similarity)]`, best first, ties by id; at most `limit`, all at least `threshold`.
    #[pyo3(name = "match", signature = (descriptor, limit = 3, threshold = 0.0))]
    fn match_(&self, py: Python<'_>, descriptor: &[u8], limit: usize, threshold: f64) -> PyResult<Vec<(String, f64)>> {
        let query = self.query(descriptor)?;
        Ok(py.detach(|| self.shared.index.read().search(&query, limit, threshold)))
    }

    /// What `match` answers, as an awaitable: the search waits, without
    /// holding the event loop, for the set's next scan on the matching
    /// threads, which takes every search waiting by then.
    #[pyo3(signature = (descriptor, limit = 3, threshold = 0.0))]
    fn search<'py>(&self, py: Python<'py>, descriptor: &[u8], limit: usize, threshold: f64) -> PyResult<Bound<'py, PyAny>> {
        let query = self.query(descriptor)?;
        let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
        let future = event_loop.call_method0("create_future")?;
        let search = Search { query, limit, threshold, future: future.clone().unbind() };
        let start = {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push(search);
            !std::mem::replace(&mut queue.scanning, true)
        };
        if start {
            // The scan starts when the loop has run what is ready now: the
            // searches a request's other sub-requests make in this turn join it.
            let shared = self.shared.clone();
            let kick = PyCFunction::new_closure(py, None, None, move |args, _| -> PyResult<()> {
                shared.clone().kick(args.py());
                Ok(())
            });
            // A loop that takes no more callbacks (closing) gets the scan at once.
            if kick.and_then(|kick| event_loop.call_method1("call_soon", (kick,))).is_err() {
                self.shared.clone().kick(py);
            }
        }
        Ok(future)
    }
}

fn face_dict<'py>(py: Python<'py>, f: &StoredFace) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("face_id", f.face.face_id.to_string())?;
    d.set_item("account_id", f.face.account_id.to_string())?;
    d.set_item("external_id", f.face.external_id.as_deref())?;
    d.set_item("user_data", &*f.face.user_data)?;
    d.set_item("create_time", format_time(f.face.create_time))?;
    d.set_item("lists", f.face.lists.iter().map(Uuid::to_string).collect::<Vec<_>>())?;
    d.set_item("descriptor_version", f.descriptor.version)?;
    d.set_item("descriptor", PyBytes::new(py, &f.descriptor.payload))?;
    Ok(d)
}

fn parse_id(id: &str) -> PyResult<Uuid> {
    id.parse().map_err(|_| PyValueError::new_err(format!("'{id}' is not a uuid")))
}

/// A face with its descriptor, or None.
#[pyfunction]
pub fn _store_get_face(py: Python<'_>, face_id: &str) -> PyResult<Option<Py<PyDict>>> {
    let id = parse_id(face_id)?;
    let core = core()?;
    match py.detach(|| core.stored_face(id)) {
        Ok(f) => Ok(Some(face_dict(py, &f)?.unbind())),
        Err(e) if e.code == ErrorCode::FaceNotFound => Ok(None),
        Err(e) => Err(PyRuntimeError::new_err(e.to_string())),
    }
}

/// The faces of a list with their descriptors, or None for an unknown list.
#[pyfunction]
pub fn _store_list_faces(py: Python<'_>, list_id: &str) -> PyResult<Option<Vec<Py<PyDict>>>> {
    let id = parse_id(list_id)?;
    let core = core()?;
    match py.detach(|| core.stored_list_faces(id)) {
        Ok(faces) => Ok(Some(faces.iter().map(|f| face_dict(py, f).map(Bound::unbind)).collect::<PyResult<_>>()?)),
        Err(e) if e.code == ErrorCode::ListNotFound => Ok(None),
        Err(e) => Err(PyRuntimeError::new_err(e.to_string())),
    }
}

/// The revision of a list's members, or None for an unknown list: a copy of
/// the list taken after reading it is current while it stays the same.
#[pyfunction]
pub fn _store_list_revision(py: Python<'_>, list_id: &str) -> PyResult<Option<u64>> {
    let id = parse_id(list_id)?;
    let core = core()?;
    // Read at once, with the GIL: it is asked per sub-request, twice. While a
    // write holds the index, waited for without the GIL, which must not hold
    // Python up.
    Ok(core.try_list_revision(id).unwrap_or_else(|| py.detach(|| core.list_revision(id))))
}

/// The faces of a list as one DescriptorSet per descriptor version, each face
/// under its id, or None for an unknown list. Built without the GIL: a
/// plugin loads a large list without holding Python up face by face.
#[pyfunction]
pub fn _store_list_sets(py: Python<'_>, list_id: &str) -> PyResult<Option<BTreeMap<u32, DescriptorSet>>> {
    let id = parse_id(list_id)?;
    let core = core()?;
    let built = py.detach(|| {
        let mut sets: BTreeMap<u32, FlatIndex<String>> = BTreeMap::new();
        core.each_list_face(id, |at| {
            let set = sets.entry(at.version).or_insert_with(|| FlatIndex::new(at.vi.vectors.spec));
            set.insert(at.entry().face_id.to_string(), at.payload());
        })
        .map(|()| sets)
    });
    match built {
        Ok(sets) => Ok(Some(sets.into_iter().map(|(version, index)| (version, DescriptorSet::holding(version, index))).collect())),
        Err(e) if e.code == ErrorCode::ListNotFound => Ok(None),
        Err(e) => Err(PyRuntimeError::new_err(e.to_string())),
    }
}

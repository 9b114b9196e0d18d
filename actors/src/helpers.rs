//! The native helpers of docs/plugins.md, in the built-in `luna_matcher` module:
//! `DescriptorSet`, which matches with the service's own kernels and the GIL
//! released, and the store reads behind `luna_matcher.store` (its async
//! wrappers are in `luna_plugins._host`).

use std::sync::{Arc, OnceLock};

use luna_core::catalog::StoredFace;
use luna_core::flat::FlatIndex;
use luna_core::index::Query;
use luna_core::time::format_time;
use luna_core::{Core, ErrorCode};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
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
    index: FlatIndex<String>,
}

impl DescriptorSet {
    fn parse(&self, descriptor: &[u8]) -> PyResult<Vec<u8>> {
        let d = core()?
            .versions()
            .parse(descriptor, Some(self.version))
            .map_err(|e| PyValueError::new_err(format!("{} {}: {}", e.code.code(), e.code.desc(), e.detail)))?;
        Ok(d.payload)
    }
}

#[pymethods]
impl DescriptorSet {
    #[new]
    fn new(version: u32) -> PyResult<Self> {
        let spec = *core()?.versions().get(version).map_err(|e| PyValueError::new_err(e.detail))?;
        Ok(DescriptorSet { version, index: FlatIndex::new(spec) })
    }

    #[getter]
    fn version(&self) -> u32 {
        self.version
    }

    /// Add a descriptor (SDK container or raw) under `id`, replacing one already there.
    fn add(&mut self, id: String, descriptor: &[u8]) -> PyResult<()> {
        let payload = self.parse(descriptor)?;
        self.index.insert(id, &payload);
        Ok(())
    }

    /// Remove `id`; false when it was not there.
    fn remove(&mut self, id: String) -> bool {
        self.index.remove(&id)
    }

    fn __len__(&self) -> usize {
        self.index.len()
    }

    fn __contains__(&self, id: String) -> bool {
        self.index.contains(&id)
    }

    /// `[(id, similarity)]`, best first, ties by id; at most `limit`, all at least `threshold`.
    #[pyo3(name = "match", signature = (descriptor, limit = 3, threshold = 0.0))]
    fn match_(&self, py: Python<'_>, descriptor: &[u8], limit: usize, threshold: f64) -> PyResult<Vec<(String, f64)>> {
        let query = Query::new(self.index.spec(), &self.parse(descriptor)?);
        Ok(py.detach(|| self.index.search(&query, limit, threshold)))
    }
}

fn face_dict<'py>(py: Python<'py>, f: &StoredFace) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("face_id", f.face.face_id.to_string())?;
    d.set_item("account_id", f.face.account_id.to_string())?;
    d.set_item("external_id", f.face.external_id.as_deref())?;
    d.set_item("user_data", &f.face.user_data)?;
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

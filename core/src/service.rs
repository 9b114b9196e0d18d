//! The core every role serves: the candidate store and matching, with account
//! scoping and the request limits. Knows nothing of HTTP. The operations live
//! by concern: [`crate::catalog`] (lists and faces), [`crate::planning`]
//! (matching requests split into sub-requests), [`crate::raw`] (descriptors
//! against descriptors).

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::descriptor::Versions;
use crate::errors::{Error, ErrorCode, Result};
use crate::index::Index;
use crate::limits::Limits;
use crate::matching::Engine;
use crate::store::Store;

pub struct CoreConfig {
    pub db_path: PathBuf,
    pub versions: Versions,
    pub limits: Limits,
    /// Threads that scan candidates.
    pub threads: usize,
}

/// Sizes of the store, for `/metrics`.
pub struct StoreStats {
    pub lists: usize,
    pub faces_by_version: Vec<(u32, usize)>,
}

pub struct Core {
    pub(crate) versions: Versions,
    pub(crate) limits: Limits,
    /// Writers hold this across the SQLite commit and the index update, so the
    /// two never disagree.
    pub(crate) store: Mutex<Store>,
    pub(crate) index: Arc<RwLock<Index>>,
    pub(crate) engine: Engine,
}

impl Core {
    pub fn open(config: CoreConfig) -> Result<Core> {
        let store = Store::open(&config.db_path)?;
        let index = Arc::new(RwLock::new(store.load(&config.versions)?));
        let engine = Engine::start(index.clone(), config.threads);
        Ok(Core { versions: config.versions, limits: config.limits, store: Mutex::new(store), index, engine })
    }

    /// The index for a short read on a caller's (HTTP worker's) thread. Unlike
    /// `read()` it does not queue behind a writer that waits for a matching
    /// batch to finish, so it only ever waits for a write in progress.
    pub(crate) fn read_index(&self) -> parking_lot::RwLockReadGuard<'_, Index> {
        self.index.read_recursive()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    pub fn check_store(&self) -> Result<()> {
        self.store.lock().ping()
    }

    pub fn stats(&self) -> StoreStats {
        let index = self.read_index();
        let mut faces_by_version: Vec<(u32, usize)> = index.versions.iter().map(|(v, vi)| (*v, vi.faces.len())).collect();
        faces_by_version.sort_unstable();
        StoreStats { lists: index.lists.len(), faces_by_version }
    }

    // ---- lists ----

    pub(crate) fn check_counts(&self, references: usize, candidate_sets: Option<usize>) -> Result<()> {
        if references > self.limits.references {
            return Err(Error::new(ErrorCode::TooManyReferences, format!("{references} references, at most {} allowed", self.limits.references)));
        }
        if let Some(sets) = candidate_sets.filter(|n| *n > self.limits.candidate_sets) {
            return Err(Error::new(ErrorCode::TooManyCandidateSets, format!("{sets} candidate sets, at most {} allowed", self.limits.candidate_sets)));
        }
        Ok(())
    }

    pub(crate) fn check_limit(&self, limit: Option<usize>) -> Result<usize> {
        match limit {
            Some(l) if l > self.limits.max_limit => Err(Error::new(ErrorCode::LimitTooLarge, format!("limit {l}, at most {} allowed", self.limits.max_limit))),
            Some(l) => Ok(l),
            None => Ok(self.limits.default_limit),
        }
    }
}

//! The core every role serves: the candidate store and matching, with account
//! scoping and the request limits. Knows nothing of HTTP. The operations live
//! by concern: [`crate::catalog`] (lists and faces), [`crate::planning`]
//! (matching requests split into sub-requests), [`crate::raw`] (descriptors
//! against descriptors).

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::api::{CacheReport, StoreBackend};
use crate::descriptor::Versions;
use crate::errors::{Error, ErrorCode, Result};
use crate::index::Index;
use crate::limits::Limits;
use crate::matching::Engine;
use crate::store::{Position, PostgresConfig, PostgresStore, SqliteStore, Store, SyncStatus};

/// Which store holds the candidates.
pub enum StoreConfig {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// PostgreSQL, shared with other instances.
    Postgres(PostgresConfig),
}

/// What [`Core::open`] needs.
pub struct CoreConfig {
    /// Where the candidates live.
    pub store: StoreConfig,
    /// The descriptor version table.
    pub versions: Versions,
    /// The `[limits]`.
    pub limits: Limits,
    /// Threads that scan candidates.
    pub threads: usize,
    /// The default matcher is elsewhere (role proxy): a matching request may
    /// name any list, whatever this instance keeps in memory.
    pub remote_matching: bool,
}

/// Sizes of the in-memory index, for `/metrics`, and how far it follows a shared store.
pub struct StoreStats {
    /// Lists in memory.
    pub lists: usize,
    /// Faces in memory, per descriptor version, in version order.
    pub faces_by_version: Vec<(u32, usize)>,
    /// How far a shared store is followed; None for SQLite.
    pub sync: Option<SyncStatus>,
}

/// The store, the in-memory index, the matching engine and the limits: what every role serves.
pub struct Core {
    pub(crate) versions: Versions,
    pub(crate) limits: Limits,
    pub(crate) store: Box<dyn Store>,
    pub(crate) index: Arc<RwLock<Index>>,
    pub(crate) engine: Engine,
    pub(crate) remote_matching: bool,
    /// The latest store position a write through this instance committed at.
    last_write: parking_lot::Mutex<Option<Position>>,
}

impl Core {
    /// Open the store. SQLite is loaded into memory before this returns; a
    /// shared store is connected to and migrated, and loads in the background
    /// (see [`Core::loading`]).
    pub fn open(config: CoreConfig) -> Result<Core> {
        let index = Arc::new(RwLock::new(Index::default()));
        let store: Box<dyn Store> = match config.store {
            StoreConfig::Sqlite(path) => Box::new(SqliteStore::open(&path, &config.versions, index.clone())?),
            StoreConfig::Postgres(pg) => Box::new(PostgresStore::open(pg, config.versions.clone(), index.clone())?),
        };
        let engine = Engine::start(index.clone(), config.threads);
        Ok(Core {
            versions: config.versions,
            limits: config.limits,
            store,
            index,
            engine,
            remote_matching: config.remote_matching,
            last_write: Default::default(),
        })
    }

    /// Why the instance cannot match yet (a shared store's first load); None once it can.
    pub fn loading(&self) -> Option<String> {
        self.store.sync().and_then(|s| s.loading)
    }

    /// Wait, bounded, until the shared store's changes up to `position` are
    /// in memory; 31011 when they are not in time.
    pub async fn wait_for(&self, position: Position) -> Result<()> {
        self.store.wait_for(position).await
    }

    /// Commit a write through the store, remembering its position.
    pub(crate) fn write(&self, reads: &crate::store::Reads, prepare: crate::store::Prepare) -> Result<Option<Position>> {
        let position = self.store.write(reads, prepare)?;
        if let Some(p) = position {
            let mut last = self.last_write.lock();
            *last = (*last).max(Some(p));
        }
        Ok(position)
    }

    /// The store position an answer from another instance must include for
    /// this instance's clients to see their writes: the last change applied
    /// here, or this instance's own latest write if that is later. None for
    /// the embedded store.
    pub fn known_position(&self) -> Option<Position> {
        let applied = self.store.sync().map(|s| s.position);
        applied.max(*self.last_write.lock())
    }

    /// What this instance matches from, for `GET /1/matcher/cache`.
    pub fn cache_report(&self) -> CacheReport {
        let sync = self.store.sync();
        let (faces, lists) = {
            let index = self.read_index();
            (index.face_count(), index.lists.len())
        };
        let scope = sync.as_ref().map(|s| s.scope.clone()).unwrap_or_default();
        CacheReport {
            backend: if sync.is_some() { StoreBackend::Postgres } else { StoreBackend::Sqlite },
            all: scope.is_all(),
            scope,
            ready: sync.as_ref().is_none_or(|s| s.loading.is_none()),
            position: sync.as_ref().map(|s| s.position),
            lag_seconds: sync.as_ref().map_or(0.0, |s| s.lag_seconds),
            faces,
            lists,
        }
    }

    /// The index for a short read on a caller's (HTTP worker's) thread. Unlike
    /// `read()` it does not queue behind a writer that waits for a matching
    /// batch to finish, so it only ever waits for a write in progress.
    pub(crate) fn read_index(&self) -> parking_lot::RwLockReadGuard<'_, Index> {
        self.index.read_recursive()
    }

    /// [`Core::read_index`] without waiting: None while a write holds the index.
    pub(crate) fn try_read_index(&self) -> Option<parking_lot::RwLockReadGuard<'_, Index>> {
        self.index.try_read_recursive()
    }

    /// The `[limits]` it checks requests against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The descriptor version table.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// Queue `work` for the matching threads (between the engine's batches)
    /// and return at once: for the native helpers' coalesced searches.
    pub fn submit_matching(&self, work: impl FnOnce() + Send + 'static) -> Result<()> {
        self.engine.submit(work)
    }

    /// Whether the store answers. Blocks: call it off the HTTP threads.
    pub fn check_store(&self) -> Result<()> {
        self.store.check()
    }

    /// Sizes of the in-memory index, for `/metrics`.
    pub fn stats(&self) -> StoreStats {
        let sync = self.store.sync();
        let index = self.read_index();
        let mut faces_by_version: Vec<(u32, usize)> = index.versions.iter().map(|(v, vi)| (*v, vi.len())).collect();
        faces_by_version.sort_unstable();
        StoreStats { lists: index.lists.len(), faces_by_version, sync }
    }

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

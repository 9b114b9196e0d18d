//! The embedded store: one SQLite file in WAL mode, synchronous=FULL, so a
//! write is on disk before it is acknowledged. It is read only at start-up,
//! to build the in-memory [`Index`]; afterwards every write goes to both.
//! Its layout keeps a bulk import's inserts at the end of every table and
//! index (see `FORMAT`), and its statements are prepared once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction, MAIN_DB};
use smallvec::SmallVec;
use uuid::Uuid;

use super::{BoxFuture, Op, Position, Prepare, Reads};
use crate::catalog::{stored, StoredFace};
use crate::descriptor::{Descriptor, VersionSpec, Versions};
use crate::errors::{Error, Result};
use crate::index::{FaceRecord, Index, ListRecord};

/// The file's format, kept in `PRAGMA user_version`. Format 0 keyed faces
/// by `face_id`; face ids are random (uuid4), so every insert went to a random
/// page of three indexes, and a commit wrote each page it touched again: a
/// bulk rewrote most of those indexes once they outgrew it. Format 1 numbers
/// faces in insertion order (`row`) and finds one by `(create_time, face_id)`,
/// which grows with time too: an insert appends to every index.
const FORMAT: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS lists (
    list_id     BLOB PRIMARY KEY,
    account_id  BLOB NOT NULL,
    user_data   TEXT NOT NULL,
    create_time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    row         INTEGER PRIMARY KEY,
    face_id     BLOB NOT NULL,
    account_id  BLOB NOT NULL,
    version     INTEGER NOT NULL,
    descriptor  BLOB NOT NULL,
    external_id TEXT,
    user_data   TEXT NOT NULL,
    create_time INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS faces_by_time ON faces(create_time, face_id);
CREATE TABLE IF NOT EXISTS list_faces (
    list_id  BLOB NOT NULL REFERENCES lists(list_id) ON DELETE CASCADE,
    face_row INTEGER NOT NULL REFERENCES faces(row) ON DELETE CASCADE,
    PRIMARY KEY (list_id, face_row)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS list_faces_by_face ON list_faces(face_row);
";

/// Format 0 to 1, around SCHEMA (with foreign keys off): format 0's tables
/// are set aside, then copied into the new ones, rows numbered as format 0
/// numbered them (its rowid, the load order), memberships by row.
const SET_ASIDE_FORMAT_0: &str = "
ALTER TABLE list_faces RENAME TO list_faces_0;
ALTER TABLE faces RENAME TO faces_0;
DROP INDEX list_faces_by_face;
";
const COPY_FORMAT_0: &str = "
INSERT INTO faces (row, face_id, account_id, version, descriptor, external_id, user_data, create_time)
    SELECT rowid, face_id, account_id, version, descriptor, external_id, user_data, create_time FROM faces_0;
INSERT INTO list_faces (list_id, face_row) SELECT m.list_id, f.rowid FROM list_faces_0 m JOIN faces_0 f ON f.face_id = m.face_id;
DROP TABLE list_faces_0;
DROP TABLE faces_0;
";

/// What a health probe writes next to the database: one page, as a commit needs.
const PROBE: &str = ".luna-matcher-probe";
const PROBE_BYTES: usize = 4096;
/// How much of the file the load reads through a memory mapping: all of
/// it, up to the limit SQLite is built with (2 GiB by default).
const LOAD_MMAP_BYTES: i64 = 1 << 40;
/// Size the WAL is cut back to after a checkpoint.
const WAL_LIMIT_BYTES: i64 = 4 << 20;
/// Faces a load hands to its indexing thread at a time.
const LOAD_BATCH: usize = 4096;

/// Faces read by a load, with their descriptors side by side in one buffer
/// (each as long as its spec says, in the faces' order).
#[derive(Default)]
struct LoadBatch {
    faces: Vec<(VersionSpec, u32, FaceRecord)>,
    payloads: Vec<u8>,
}

pub struct Store {
    conn: Connection,
    /// The directory of the database file, where the health probe writes.
    dir: PathBuf,
}

impl Store {
    /// Open (or create) the file, migrated to this version's format. Its
    /// integrity is checked before a migration; otherwise beside the load
    /// (see [`SqliteStore::open`]).
    pub fn open(path: &Path) -> Result<Store> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::storage(format!("cannot create {}: {e}", dir.display())))?;
        let mut conn = connect(path)?;
        // FULL: the WAL is fsynced at every commit, so an acknowledged write
        // survives kill -9 and power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        if conn.is_readonly(MAIN_DB)? {
            check_format(&conn, path)?;
        } else if stored_format(&conn, path)? != FORMAT {
            // A damaged file is not migrated.
            quick_check(&conn, path)?;
            migrate(&mut conn, path)?;
        }
        Ok(Store { conn, dir })
    }

    /// Build the in-memory index from the file.
    pub fn load(&self, versions: &Versions) -> Result<Index> {
        // Read through a mapping of the file, not a copy of each page: only
        // while loading, which reads every page once.
        self.conn.pragma_update(None, "mmap_size", LOAD_MMAP_BYTES)?;
        let index = self.read_all(versions);
        self.conn.pragma_update(None, "mmap_size", 0)?;
        index
    }

    fn read_all(&self, versions: &Versions) -> Result<Index> {
        let mut index = Index::default();
        let mut stmt = self.conn.prepare("SELECT list_id, account_id, user_data, create_time FROM lists")?;
        let lists =
            stmt.query_map([], |r| Ok(ListRecord { list_id: r.get(0)?, account_id: r.get(1)?, user_data: r.get(2)?, create_time: r.get(3)?, face_count: 0 }))?;
        for list in lists {
            let list = list?;
            index.lists.insert(list.list_id, list);
        }
        let faces: i64 = self.conn.query_row("SELECT count(*) FROM faces", [], |r| r.get(0))?;
        index.reserve_faces(faces as usize);
        // SQLite's stepping and the index's inserts each take about half of a
        // load: rows are read here and indexed on a second thread, a batch at a time.
        let (batches, indexed) = crossbeam_channel::bounded::<LoadBatch>(4);
        std::thread::scope(|scope| {
            let indexer = std::thread::Builder::new()
                .name("store-index".into())
                .spawn_scoped(scope, move || {
                    for batch in indexed {
                        let mut at = 0;
                        for (spec, version, face) in batch.faces {
                            let end = at + spec.payload_len();
                            index.insert_face(spec, version, &batch.payloads[at..end], face);
                            at = end;
                        }
                    }
                    index
                })
                .map_err(|e| Error::storage(format!("cannot start the indexing thread: {e}")))?;
            let read = self.read_faces(versions, &batches);
            drop(batches);
            let index = indexer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            read.map(|()| index)
        })
    }

    /// Every stored face in row order, with its lists, sent in batches.
    fn read_faces(&self, versions: &Versions, batches: &crossbeam_channel::Sender<LoadBatch>) -> Result<()> {
        // Memberships in row order (their index), walked beside the faces.
        let mut stmt = self.conn.prepare("SELECT face_row, list_id FROM list_faces ORDER BY face_row")?;
        let mut memberships = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Uuid>(1)?)))?.peekable();
        let mut stmt =
            self.conn.prepare("SELECT row, face_id, account_id, version, descriptor, external_id, user_data, create_time FROM faces ORDER BY row")?;
        let mut rows = stmt.query([])?;
        let mut batch = LoadBatch::default();
        while let Some(r) = rows.next()? {
            let row: i64 = r.get(0)?;
            let face_id: Uuid = r.get(1)?;
            let version: u32 = r.get(3)?;
            let ValueRef::Blob(payload) = r.get_ref(4)? else {
                return Err(Error::storage(format!("stored face {face_id}: the descriptor is not a blob")));
            };
            // A version table changed under existing data must not silently drop faces.
            let spec = *versions.get(version).map_err(|e| Error::storage(format!("stored face {face_id}: {}", e.detail)))?;
            if payload.len() != spec.payload_len() {
                return Err(Error::storage(format!(
                    "stored face {face_id}: version {version} descriptor is {} bytes, the version table says {}",
                    payload.len(),
                    spec.payload_len()
                )));
            }
            let mut lists = SmallVec::new();
            while let Some(m) = memberships.next_if(|m| !matches!(m, Ok((face_row, _)) if *face_row > row)) {
                let (face_row, list) = m?;
                if face_row == row {
                    lists.push(list);
                }
            }
            let face = FaceRecord { face_id, account_id: r.get(2)?, external_id: r.get(5)?, user_data: r.get(6)?, create_time: r.get(7)?, lists };
            batch.payloads.extend_from_slice(payload);
            batch.faces.push((spec, version, face));
            // A send fails only when the indexer has stopped (panicked): its join says why.
            if batch.faces.len() == LOAD_BATCH && batches.send(std::mem::take(&mut batch)).is_err() {
                return Ok(());
            }
        }
        let _ = batches.send(batch);
        Ok(())
    }

    /// Run `f` in one transaction: all of it is committed (and synced), or nothing.
    pub fn write<T>(&mut self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        let tx = self.conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// The store answers and a write would succeed: SQLite reads, and a page
    /// written next to the file reaches the disk (a read-only or full file
    /// system fails here).
    pub fn ping(&self) -> Result<()> {
        self.conn.query_row("SELECT 1", [], |_| Ok(())).optional()?;
        let probe = self.dir.join(PROBE);
        let written = std::fs::write(&probe, [0u8; PROBE_BYTES]).and_then(|_| std::fs::File::open(&probe)?.sync_all());
        let _ = std::fs::remove_file(&probe);
        written.map_err(|e| Error::storage(format!("cannot write to {}: {e}", self.dir.display())))?;
        if self.conn.is_readonly(MAIN_DB)? {
            return Err(Error::storage("the store was opened read-only: restart the service now that its data directory is writable"));
        }
        Ok(())
    }

    /// Copy the WAL into the database file and truncate the WAL.
    pub fn checkpoint(&self) -> Result<()> {
        let (busy, frames): (i64, i64) = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if busy != 0 {
            return Err(Error::storage(format!("checkpoint blocked with {frames} WAL frames left")));
        }
        Ok(())
    }
}

/// The file opened for writing, or for reading only when the data directory
/// is read-only (it still serves reads; ping says why writes fail).
fn connect(path: &Path) -> Result<Connection> {
    match open_writable(path) {
        Ok(conn) => Ok(conn),
        Err(e) => open_read_only(path).ok_or_else(|| damaged(path, e)),
    }
}

/// The file opened for writing, in WAL mode.
fn open_writable(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(conn)
}

/// The file opened for reading only, as a read-only file system allows: with
/// its WAL when SQLite can map it, or, when the WAL is empty (after a clean
/// stop), as an immutable file.
fn open_read_only(path: &Path) -> Option<Connection> {
    let readable = |conn: Connection| conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())).is_ok().then_some(conn);
    if let Some(conn) = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok().and_then(readable) {
        return Some(conn);
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return None;
    }
    let escaped = path.display().to_string().replace('%', "%25").replace('?', "%3f").replace('#', "%23");
    Connection::open_with_flags(format!("file:{escaped}?immutable=1"), OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI).ok().and_then(readable)
}

/// `PRAGMA quick_check` over the whole file, logged; a damaged file is an error.
fn quick_check(conn: &Connection, path: &Path) -> Result<()> {
    let start = Instant::now();
    let mut stmt = conn.prepare("PRAGMA quick_check").map_err(|e| damaged(path, e))?;
    let found = stmt.query_map([], |r| r.get::<_, String>(0)).and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>()).map_err(|e| damaged(path, e))?;
    if found != ["ok"] {
        let shown: Vec<&str> = found.iter().take(5).map(String::as_str).collect();
        return Err(Error::storage(format!(
            "the store {} is damaged (quick_check: {}): restore it from a backup or move it away",
            path.display(),
            shown.join("; ")
        )));
    }
    log::info!("store {}: quick_check ok in {} ms", path.display(), start.elapsed().as_millis());
    Ok(())
}

/// An error opening the file, said plainly when SQLite finds it damaged.
fn damaged(path: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match e.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => {
            Error::storage(format!("the store {} is damaged ({e}): restore it from a backup or move it away", path.display()))
        }
        _ => Error::storage(format!("{}: {e}", path.display())),
    }
}

/// Bring the file to [`FORMAT`]: create it, or migrate an older one, in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let format = stored_format(conn, path)?;
    if format == FORMAT {
        return Ok(());
    }
    let started = Instant::now();
    let old = format == 0 && conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'faces'", [], |r| r.get::<_, i64>(0))? > 0;
    // A table is rebuilt under its references: checked once, at the end.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let tx = conn.transaction()?;
    if old {
        tx.execute_batch(SET_ASIDE_FORMAT_0)?;
    }
    tx.execute_batch(SCHEMA)?;
    if old {
        tx.execute_batch(COPY_FORMAT_0)?;
    }
    let broken: i64 = tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
    if broken > 0 {
        return Err(Error::storage(format!("{}: {broken} rows refer to rows that do not exist; the store was not migrated", path.display())));
    }
    tx.pragma_update(None, "user_version", FORMAT)?;
    tx.commit()?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if old {
        log::info!("store {}: migrated from format {format} to {FORMAT} in {} ms", path.display(), started.elapsed().as_millis());
    }
    Ok(())
}

/// A file opened read-only cannot be migrated: it must be of this format already.
fn check_format(conn: &Connection, path: &Path) -> Result<()> {
    match stored_format(conn, path)? {
        FORMAT => Ok(()),
        format => Err(Error::storage(format!(
            "{} is in store format {format}, this version reads {FORMAT}: start it once on a writable data directory to migrate the file",
            path.display()
        ))),
    }
}

/// The format of the file; one newer than this version's is refused.
fn stored_format(conn: &Connection, path: &Path) -> Result<i64> {
    let format: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if format > FORMAT {
        return Err(Error::storage(format!(
            "{} is in store format {format}, written by a newer luna-matcher; this version reads format {FORMAT} and older",
            path.display()
        )));
    }
    Ok(format)
}

fn insert_list(tx: &Transaction, list: &ListRecord) -> Result<()> {
    tx.prepare_cached("INSERT INTO lists (list_id, account_id, user_data, create_time) VALUES (?1, ?2, ?3, ?4)")?.execute(params![
        list.list_id,
        list.account_id,
        list.user_data,
        list.create_time
    ])?;
    Ok(())
}

fn delete_list(tx: &Transaction, list_id: &Uuid) -> Result<()> {
    tx.prepare_cached("DELETE FROM lists WHERE list_id = ?1")?.execute(params![list_id])?;
    Ok(())
}

fn insert_face(tx: &Transaction, face: &FaceRecord, descriptor: &Descriptor) -> Result<()> {
    tx.prepare_cached("INSERT INTO faces (face_id, account_id, version, descriptor, external_id, user_data, create_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?
        .execute(params![face.face_id, face.account_id, descriptor.version, descriptor.payload, face.external_id, face.user_data, face.create_time])?;
    let row = tx.last_insert_rowid();
    for list in &face.lists {
        tx.prepare_cached("INSERT OR IGNORE INTO list_faces (list_id, face_row) VALUES (?1, ?2)")?.execute(params![list, row])?;
    }
    Ok(())
}

/// Where a stored face is found: its create time (from memory) and its id.
struct FaceKey {
    create_time: i64,
    face_id: Uuid,
}

fn delete_face(tx: &Transaction, face: &FaceKey) -> Result<()> {
    tx.prepare_cached("DELETE FROM faces WHERE create_time = ?1 AND face_id = ?2")?.execute(params![face.create_time, face.face_id])?;
    Ok(())
}

fn set_membership(tx: &Transaction, list_id: &Uuid, face: &FaceKey, member: bool) -> Result<()> {
    let sql = if member {
        "INSERT OR IGNORE INTO list_faces (list_id, face_row) SELECT ?1, row FROM faces WHERE create_time = ?2 AND face_id = ?3"
    } else {
        "DELETE FROM list_faces WHERE list_id = ?1 AND face_row = (SELECT row FROM faces WHERE create_time = ?2 AND face_id = ?3)"
    };
    tx.prepare_cached(sql)?.execute(params![list_id, face.create_time, face.face_id])?;
    Ok(())
}

/// The embedded store as the core uses it: the file, and the in-memory index
/// it is the only writer of. Writers hold the file's lock across the commit
/// and the index update, so the two never disagree, and the index is exact
/// for checking a write.
pub struct SqliteStore {
    db: Mutex<Store>,
    index: Arc<RwLock<Index>>,
}

impl SqliteStore {
    /// Open the file, check its integrity and load it into `index`: a
    /// damaged file is refused with an error that says so.
    pub fn open(path: &Path, versions: &Versions, index: Arc<RwLock<Index>>) -> Result<SqliteStore> {
        let db = Store::open(path)?;
        // The integrity check and the load each read the whole file: on two
        // connections at once. A damaged file is refused with the check's error.
        let loaded = std::thread::scope(|s| {
            let check = s.spawn(|| connect(path).and_then(|conn| quick_check(&conn, path)));
            let loaded = db.load(versions);
            check.join().map_err(|_| Error::storage(format!("{}: the integrity check panicked", path.display())))??;
            loaded
        })?;
        *index.write() = loaded;
        Ok(SqliteStore { db: Mutex::new(db), index })
    }
}

impl super::Store for SqliteStore {
    fn write(&self, _reads: &Reads, prepare: Prepare) -> Result<Option<Position>> {
        let mut db = self.db.lock();
        let ops = {
            let index = self.index.read();
            let ops = prepare(&*index)?;
            db.write(|tx| ops.iter().try_for_each(|op| write_op(tx, &index, op)))?;
            ops
        };
        let mut index = self.index.write();
        for op in ops {
            index.apply(op);
        }
        Ok(None)
    }

    fn list(&self, list_id: Uuid) -> BoxFuture<'_, Result<Option<ListRecord>>> {
        Box::pin(std::future::ready(Ok(self.index.read_recursive().lists.get(&list_id).cloned())))
    }

    fn face(&self, face_id: Uuid) -> BoxFuture<'_, Result<Option<StoredFace>>> {
        Box::pin(std::future::ready(Ok(self.index.read_recursive().face(&face_id).map(|at| stored(&at)))))
    }

    fn check(&self) -> Result<()> {
        self.db.lock().ping()
    }

    fn checkpoint(&self) -> Result<()> {
        self.db.lock().checkpoint()
    }
}

/// One operation in SQL; a face it names is found through `index`, where it is.
fn write_op(tx: &Transaction, index: &Index, op: &Op) -> Result<()> {
    let key = |face_id: &Uuid| index.face(face_id).map(|at| FaceKey { create_time: at.entry().create_time, face_id: *face_id });
    match op {
        Op::CreateList(list) => insert_list(tx, list),
        Op::DeleteList(list_id) => delete_list(tx, list_id),
        Op::CreateFace { descriptor, face, .. } => insert_face(tx, face, descriptor),
        // The write's checks found the face in memory, which holds every stored face.
        Op::DeleteFace(face_id) => key(face_id).map_or(Ok(()), |face| delete_face(tx, &face)),
        Op::SetMembership { list_id, face_id, member } => key(face_id).map_or(Ok(()), |face| set_membership(tx, list_id, &face, *member)),
    }
}

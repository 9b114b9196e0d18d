//! The embedded store: one SQLite file in WAL mode, synchronous=FULL, so a
//! write is on disk before it is acknowledged. It is read only at start-up,
//! to build the in-memory [`Index`]; afterwards every write goes to both.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction, MAIN_DB};
use uuid::Uuid;

use super::{BoxFuture, Op, Position, Prepare, Reads};
use crate::catalog::{stored, StoredFace};
use crate::descriptor::{Descriptor, Versions};
use crate::errors::{Error, Result};
use crate::index::{FaceRecord, Index, ListRecord};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS lists (
    list_id     BLOB PRIMARY KEY,
    account_id  BLOB NOT NULL,
    user_data   TEXT NOT NULL,
    create_time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    face_id     BLOB PRIMARY KEY,
    account_id  BLOB NOT NULL,
    version     INTEGER NOT NULL,
    descriptor  BLOB NOT NULL,
    external_id TEXT,
    user_data   TEXT NOT NULL,
    create_time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS list_faces (
    list_id BLOB NOT NULL REFERENCES lists(list_id) ON DELETE CASCADE,
    face_id BLOB NOT NULL REFERENCES faces(face_id) ON DELETE CASCADE,
    PRIMARY KEY (list_id, face_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS list_faces_by_face ON list_faces(face_id);
";

/// What a health probe writes next to the database: one page, as a commit needs.
const PROBE: &str = ".luna-matcher-probe";
const PROBE_BYTES: usize = 4096;
/// Size the WAL is cut back to after a checkpoint.
const WAL_LIMIT_BYTES: i64 = 4 << 20;

pub struct Store {
    conn: Connection,
    /// The directory of the database file, where the health probe writes.
    dir: PathBuf,
}

impl Store {
    /// Open (or create) the file and check its integrity: a damaged file is
    /// refused with an error that says so.
    pub fn open(path: &Path) -> Result<Store> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::storage(format!("cannot create {}: {e}", dir.display())))?;
        let conn = match open_writable(path) {
            Ok(conn) => conn,
            // A read-only data directory still serves reads; ping says why writes fail.
            Err(e) => open_read_only(path).ok_or_else(|| damaged(path, e))?,
        };
        // FULL: the WAL is fsynced at every commit, so an acknowledged write
        // survives kill -9 and power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        quick_check(&conn, path)?;
        if !conn.is_readonly(MAIN_DB)? {
            conn.execute_batch(SCHEMA).map_err(|e| damaged(path, e))?;
        }
        Ok(Store { conn, dir })
    }

    /// Build the in-memory index from the file.
    pub fn load(&self, versions: &Versions) -> Result<Index> {
        let mut index = Index::default();
        let mut stmt = self.conn.prepare("SELECT list_id, account_id, user_data, create_time FROM lists")?;
        let lists =
            stmt.query_map([], |r| Ok(ListRecord { list_id: r.get(0)?, account_id: r.get(1)?, user_data: r.get(2)?, create_time: r.get(3)?, face_count: 0 }))?;
        for list in lists {
            let list = list?;
            index.lists.insert(list.list_id, list);
        }
        let mut memberships: std::collections::HashMap<Uuid, smallvec::SmallVec<[Uuid; 2]>> = Default::default();
        let mut stmt = self.conn.prepare("SELECT face_id, list_id FROM list_faces")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, Uuid>(0)?, r.get::<_, Uuid>(1)?)))? {
            let (face, list) = row?;
            memberships.entry(face).or_default().push(list);
        }
        let mut stmt = self.conn.prepare("SELECT face_id, account_id, version, descriptor, external_id, user_data, create_time FROM faces ORDER BY rowid")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let face_id: Uuid = r.get(0)?;
            let version: u32 = r.get(2)?;
            let payload: Vec<u8> = r.get(3)?;
            // A version table changed under existing data must not silently drop faces.
            let spec = *versions.get(version).map_err(|e| Error::storage(format!("stored face {face_id}: {}", e.detail)))?;
            if payload.len() != spec.payload_len() {
                return Err(Error::storage(format!(
                    "stored face {face_id}: version {version} descriptor is {} bytes, the version table says {}",
                    payload.len(),
                    spec.payload_len()
                )));
            }
            let face = FaceRecord {
                face_id,
                account_id: r.get(1)?,
                external_id: r.get(4)?,
                user_data: r.get(5)?,
                create_time: r.get(6)?,
                lists: memberships.remove(&face_id).unwrap_or_default(),
            };
            index.insert_face(spec, &Descriptor { version, payload }, face);
        }
        Ok(index)
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

pub fn insert_list(tx: &Transaction, list: &ListRecord) -> Result<()> {
    tx.execute(
        "INSERT INTO lists (list_id, account_id, user_data, create_time) VALUES (?1, ?2, ?3, ?4)",
        params![list.list_id, list.account_id, list.user_data, list.create_time],
    )?;
    Ok(())
}

pub fn delete_list(tx: &Transaction, list_id: &Uuid) -> Result<()> {
    tx.execute("DELETE FROM lists WHERE list_id = ?1", params![list_id])?;
    Ok(())
}

pub fn insert_face(tx: &Transaction, face: &FaceRecord, descriptor: &Descriptor) -> Result<()> {
    tx.execute(
        "INSERT INTO faces (face_id, account_id, version, descriptor, external_id, user_data, create_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![face.face_id, face.account_id, descriptor.version, descriptor.payload, face.external_id, face.user_data, face.create_time],
    )?;
    for list in &face.lists {
        set_membership(tx, list, &face.face_id, true)?;
    }
    Ok(())
}

pub fn delete_face(tx: &Transaction, face_id: &Uuid) -> Result<()> {
    tx.execute("DELETE FROM faces WHERE face_id = ?1", params![face_id])?;
    Ok(())
}

pub fn set_membership(tx: &Transaction, list_id: &Uuid, face_id: &Uuid, member: bool) -> Result<()> {
    let sql = if member {
        "INSERT OR IGNORE INTO list_faces (list_id, face_id) VALUES (?1, ?2)"
    } else {
        "DELETE FROM list_faces WHERE list_id = ?1 AND face_id = ?2"
    };
    tx.execute(sql, params![list_id, face_id])?;
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
    /// Open the file and load it into `index`.
    pub fn open(path: &Path, versions: &Versions, index: Arc<RwLock<Index>>) -> Result<SqliteStore> {
        let db = Store::open(path)?;
        *index.write() = db.load(versions)?;
        Ok(SqliteStore { db: Mutex::new(db), index })
    }
}

impl super::Store for SqliteStore {
    fn write(&self, _reads: &Reads, prepare: Prepare) -> Result<Option<Position>> {
        let mut db = self.db.lock();
        let ops = prepare(&*self.index.read())?;
        db.write(|tx| ops.iter().try_for_each(|op| write_op(tx, op)))?;
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

fn write_op(tx: &Transaction, op: &Op) -> Result<()> {
    match op {
        Op::CreateList(list) => insert_list(tx, list),
        Op::DeleteList(list_id) => delete_list(tx, list_id),
        Op::CreateFace { descriptor, face, .. } => insert_face(tx, face, descriptor),
        Op::DeleteFace(face_id) => delete_face(tx, face_id),
        Op::SetMembership { list_id, face_id, member } => set_membership(tx, list_id, face_id, *member),
    }
}

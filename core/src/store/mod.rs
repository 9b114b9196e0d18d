//! The store behind the in-memory index, behind one interface: the embedded
//! SQLite file (the default; one instance owns it), or PostgreSQL shared by any
//! number of instances, each matching from its own in-memory copy that follows
//! the store's change log.

mod follower;
mod postgres;
mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

pub use postgres::{check_dsn, PostgresConfig, PostgresStore};
pub use sqlite::SqliteStore;

use crate::api::CacheScope;
use crate::catalog::StoredFace;
use crate::descriptor::{Descriptor, VersionSpec};
use crate::errors::{Error, ErrorCode, Result};
use crate::index::{FaceRecord, Index, ListRecord};

/// One change a write makes. A write is a batch of them, committed in one transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create a list.
    CreateList(ListRecord),
    /// Delete a list; its faces stay.
    DeleteList(Uuid),
    /// Create a face with its descriptor and memberships.
    CreateFace {
        /// The row of the descriptor's version.
        spec: VersionSpec,
        /// The descriptor.
        descriptor: Descriptor,
        /// The face, its lists included.
        face: FaceRecord,
    },
    /// Delete a face and its memberships.
    DeleteFace(Uuid),
    /// Attach a face to a list or detach it.
    SetMembership {
        /// The list.
        list_id: Uuid,
        /// The face.
        face_id: Uuid,
        /// Attach (true) or detach (false).
        member: bool,
    },
}

/// The rows a write's checks read: the lists and faces its request names.
/// The shared store reads them in the write's transaction and locks them
/// until COMMIT.
#[derive(Debug, Default)]
pub struct Reads {
    /// The lists the request names.
    pub lists: Vec<Uuid>,
    /// Faces the request names.
    pub faces: Vec<Uuid>,
    /// The write deletes what it reads: lock for update, not only against deletion.
    pub delete: bool,
}

/// The accounts that own the lists and faces a write reads, as the store holds them.
pub trait Owners {
    /// The account that owns a list, if the list exists.
    fn list_owner(&self, list_id: &Uuid) -> Option<Uuid>;
    /// The account that owns a face, if the face exists.
    fn face_owner(&self, face_id: &Uuid) -> Option<Uuid>;
}

impl Owners for Index {
    fn list_owner(&self, list_id: &Uuid) -> Option<Uuid> {
        self.lists.get(list_id).map(|l| l.account_id)
    }

    fn face_owner(&self, face_id: &Uuid) -> Option<Uuid> {
        self.face(face_id).map(|at| at.account_id())
    }
}

/// Builds a write's operations from what the store holds, or refuses the write.
pub type Prepare<'a> = Box<dyn FnOnce(&dyn Owners) -> Result<Vec<Op>> + 'a>;

/// A boxed future, for the store's async methods behind `dyn Store`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A place in the shared store's change log: a transaction id and a sequence
/// number, ordered as the log is applied. Written `<xid>:<seq>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The PostgreSQL transaction id (`xid8`) that wrote the change.
    pub xid: u64,
    /// The change's number within the log.
    pub seq: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.xid, self.seq)
    }
}

impl FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parsed = s.split_once(':').and_then(|(x, q)| Some(Position { xid: x.parse().ok()?, seq: q.parse().ok().filter(|q: &i64| *q >= 0)? }));
        parsed.ok_or_else(|| format!("'{s}' is not a store position '<xid>:<seq>'"))
    }
}

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// How far an instance of the shared store has followed it.
#[derive(Debug, Clone)]
pub struct SyncStatus {
    /// Why matching cannot run yet (the first load); None once it can.
    pub loading: Option<String>,
    /// The last change applied: every change up to it is in memory.
    pub position: Position,
    /// Age of the oldest committed change not applied yet; 0 when none is waiting.
    pub lag_seconds: f64,
    /// Faces read by the last full load.
    pub loaded_faces: u64,
    /// Full loads so far.
    pub loads: u64,
    /// Stored faces the version table cannot read: left out of memory, logged.
    pub unreadable_faces: u64,
    /// The lists this instance keeps in memory.
    pub scope: CacheScope,
}

/// The candidate store. The core validates and applies writes through it and
/// reads single records from it; matching reads only the in-memory index,
/// which the store keeps current.
pub trait Store: Send + Sync {
    /// Check a write against what the store holds and commit it in one
    /// transaction (all of it or nothing), then apply it to the index. Blocks:
    /// call it off the HTTP threads. The shared store answers the write's
    /// position in its change log.
    fn write(&self, reads: &Reads, prepare: Prepare) -> Result<Option<Position>>;

    /// A list as the store holds it now.
    fn list(&self, list_id: Uuid) -> BoxFuture<'_, Result<Option<ListRecord>>>;

    /// A face and its descriptor as the store holds them now.
    fn face(&self, face_id: Uuid) -> BoxFuture<'_, Result<Option<StoredFace>>>;

    /// Whether the store answers (for `/healthcheck`). Blocks.
    fn check(&self) -> Result<()>;

    /// Fold what the store journals into its main file (SQLite's WAL), so the
    /// journal stays short and a clean stop leaves one file. Blocks.
    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }

    /// Whether this instance's memory can answer a match on `list_id` (None: on every face).
    fn can_match(&self, _list_id: Option<Uuid>) -> Result<()> {
        Ok(())
    }

    /// Wait until the changes up to `position` are in memory.
    fn wait_for(&self, _position: Position) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// How far this instance has followed a shared store; None for the embedded one.
    fn sync(&self) -> Option<SyncStatus> {
        None
    }
}

impl CacheScope {
    /// Whether a write's operation lands in this instance's memory.
    fn admits(&self, op: &Op) -> bool {
        match op {
            Op::CreateList(list) => self.caches(&list.list_id),
            Op::CreateFace { face, .. } => self.admits_face(&face.face_id, &face.lists),
            Op::DeleteList(_) | Op::DeleteFace(_) | Op::SetMembership { .. } => true,
        }
    }

    /// Whether a face in these lists is kept in memory.
    fn admits_face(&self, face_id: &Uuid, lists: &[Uuid]) -> bool {
        (self.is_all() || lists.iter().any(|l| self.caches(l))) && self.shard.is_none_or(|s| s.holds(face_id))
    }

    /// 31011 unless this scope answers a match on `list_id` (None: on every face).
    fn check_match(&self, list_id: Option<Uuid>) -> Result<()> {
        match list_id {
            None if !self.is_all() => {
                Err(Error::new(ErrorCode::NoMatcher, "this instance caches only some lists: a match without filters.list_id needs one that caches every list"))
            }
            Some(l) if !self.caches(&l) => Err(Error::new(ErrorCode::NoMatcher, format!("list {l} is not cached by this instance"))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_print_and_order() {
        let p: Position = "17:4".parse().unwrap();
        assert_eq!((p, p.to_string()), (Position { xid: 17, seq: 4 }, "17:4".to_owned()));
        for bad in ["", "17", "x:1", "1:-2", "1:2:3", " 1:2"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
        assert!(Position { xid: 9, seq: 100 } < Position { xid: 10, seq: 1 }, "the transaction orders first");
    }

    #[test]
    fn scope_admits_cached_lists_only() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let all = CacheScope::default();
        assert!(all.is_all() && all.caches(&a) && all.admits_face(&a, &[]) && all.check_match(None).is_ok());
        let some = CacheScope { include: Some(vec![a, b]), exclude: vec![b], shard: None };
        assert!(some.caches(&a) && !some.caches(&b) && !some.caches(&c));
        assert!(some.admits_face(&a, &[c, a]) && !some.admits_face(&a, &[b, c]) && !some.admits_face(&a, &[]));
        assert_eq!(some.check_match(None).unwrap_err().code, ErrorCode::NoMatcher);
        assert!(some.check_match(Some(b)).unwrap_err().detail.contains(&b.to_string()));
        let but = CacheScope { include: None, exclude: vec![c], shard: None };
        assert!(!but.is_all() && but.caches(&a) && !but.caches(&c));
    }

    #[test]
    fn shards_split_the_faces_between_them() {
        let halves = [0, 1].map(|index| CacheScope { shard: Some(crate::api::Shard { index, count: 2 }), ..Default::default() });
        let faces: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
        let held: Vec<usize> = halves.iter().map(|h| faces.iter().filter(|f| h.admits_face(f, &[])).count()).collect();
        assert_eq!(held[0] + held[1], faces.len(), "every face in exactly one shard");
        assert!(faces.iter().all(|f| halves[0].admits_face(f, &[]) != halves[1].admits_face(f, &[])));
        assert!(held.iter().all(|n| (350..650).contains(n)), "{held:?}");
    }
}

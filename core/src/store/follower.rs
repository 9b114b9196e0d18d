//! Follows the shared store: a full load from one consistent snapshot, then
//! the change log applied in order, so this instance's in-memory index tracks
//! what PostgreSQL holds.
//!
//! The log is ordered by (transaction id, sequence) and read only below the
//! reader's snapshot horizon, where every transaction that can write it has
//! finished: one that commits late is read when it is done, never skipped. A change is applied by
//! re-reading the changed rows as they are now, so applying one twice is
//! harmless. LISTEN/NOTIFY only wakes the follower; it also reads the log
//! every `poll_interval` and after every reconnect.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use tokio::sync::{mpsc, watch};
use tokio_postgres::binary_copy::{BinaryCopyOutRow, BinaryCopyOutStream};
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, Config as PgConfig, IsolationLevel, NoTls};
use uuid::Uuid;

use super::postgres::{
    checked_spec, describe, describe_error, list_record, micros, pg_error, stored_face, FACE_COLUMNS, FACE_ROW, FACE_ROW_TYPES, LIST_COLUMNS,
};
use super::{Position, SyncStatus};
use crate::api::CacheScope;
use crate::catalog::StoredFace;
use crate::descriptor::{VersionSpec, Versions};
use crate::errors::{Error, ErrorCode, Result};
use crate::index::{FaceRecord, Index, ListRecord};

/// The transaction id below which the log can be read from this snapshot:
/// every transaction below it has finished, or runs in another database and
/// so never writes this log. The snapshot's xmin alone would let a long
/// transaction anywhere on the server hold every instance back.
const HORIZON: &str = "SELECT coalesce(min(x), pg_snapshot_xmax(pg_current_snapshot())) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.backend_xid = xid(x) AND a.datname <> current_database())";

/// The channel the change log's triggers notify.
const CHANNEL: &str = "luna_matcher_changes";
/// Changes read per round trip.
const BATCH: i64 = 10_000;
/// Face rows a load hands to its index builder at a time, and chunks in flight.
const LOAD_CHUNK: usize = 1024;
const LOAD_CHUNKS_AHEAD: usize = 8;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) struct Follower {
    /// Own writes hold this shared across COMMIT and their index update;
    /// applying the log holds it exclusively, so a re-read row can never
    /// undo a newer own write in memory.
    pub apply: tokio::sync::RwLock<()>,
    pub index: Arc<RwLock<Index>>,
    pub scope: CacheScope,
    versions: Versions,
    pg: PgConfig,
    poll_interval: Duration,
    retention: Duration,
    /// The last change applied.
    position: watch::Sender<Position>,
    state: Mutex<State>,
    /// Transactions of this instance that only created rows, already in
    /// memory as committed: nothing to re-read. (A write that changes
    /// existing rows is re-read: a concurrent one may have committed after it.)
    own_creations: Mutex<HashSet<u64>>,
}

struct State {
    /// Why matching cannot run yet; None once the first load is in place.
    loading: Option<String>,
    lag_seconds: f64,
    loaded_faces: u64,
    loads: u64,
    /// Stored faces left out of memory because their descriptors cannot be
    /// read: a set, so a face re-read (a load's catch-up, an update) counts once.
    unreadable: HashSet<Uuid>,
}

/// Why the log cannot be applied from where this instance stands.
enum Reload {
    Trimmed(Position),
    Truncated,
}

/// Changes read from the log, with the rows they touched as they are now.
struct Batch {
    /// Lists changed, and lists of the faces re-read: None when gone.
    lists: Vec<(Uuid, Option<ListRecord>)>,
    faces: Vec<(Uuid, Option<(VersionSpec, StoredFace)>)>,
    /// Where the log stands once this batch is applied.
    position: Position,
    /// The batch hit its size limit: more changes wait.
    full: bool,
    lag_seconds: f64,
    /// Faces of `faces` left out because they cannot be read.
    unreadable: HashSet<Uuid>,
}

impl Batch {
    fn apply(self, index: &mut Index, scope: &CacheScope) {
        for (list_id, list) in self.lists {
            match list.filter(|l| scope.caches(&l.list_id)) {
                Some(l) => index.upsert_list(l),
                None => {
                    index.remove_list(&list_id);
                }
            }
        }
        for (face_id, face) in self.faces {
            match face.filter(|(_, f)| scope.admits_face(&f.face.face_id, &f.face.lists)) {
                Some((spec, f)) => index.upsert_face(spec, &f.descriptor, f.face),
                None => {
                    index.remove_face(&face_id);
                }
            }
        }
    }
}

impl Follower {
    pub fn new(pg: PgConfig, versions: Versions, index: Arc<RwLock<Index>>, scope: CacheScope, poll_interval: Duration, retention: Duration) -> Follower {
        Follower {
            apply: tokio::sync::RwLock::new(()),
            index,
            scope,
            versions,
            pg,
            poll_interval,
            retention,
            position: watch::Sender::new(Position::default()),
            own_creations: Mutex::new(HashSet::new()),
            state: Mutex::new(State { loading: Some("loading".into()), lag_seconds: 0.0, loaded_faces: 0, loads: 0, unreadable: HashSet::new() }),
        }
    }

    /// A transaction of this instance that only created rows, applied to
    /// memory; call it under the apply lock, before the log can be read past it.
    pub fn created(&self, xid: u64) {
        self.own_creations.lock().insert(xid);
    }

    /// Whether the first load is in place.
    pub fn loaded(&self) -> bool {
        self.state.lock().loading.is_none()
    }

    pub fn loading(&self) -> Option<String> {
        self.state.lock().loading.clone()
    }

    pub fn status(&self) -> SyncStatus {
        let s = self.state.lock();
        SyncStatus {
            loading: s.loading.clone(),
            position: *self.position.borrow(),
            lag_seconds: s.lag_seconds,
            loaded_faces: s.loaded_faces,
            loads: s.loads,
            unreadable_faces: s.unreadable.len() as u64,
            scope: self.scope.clone(),
        }
    }

    /// Wait until the changes up to `target` are applied, at most `timeout`; else 31011.
    pub async fn wait_for(&self, target: Position, timeout: Duration) -> Result<()> {
        let mut applied = self.position.subscribe();
        if tokio::time::timeout(timeout, applied.wait_for(|p| *p >= target)).await.is_ok_and(|r| r.is_ok()) {
            return Ok(());
        }
        let at = *self.position.borrow();
        Err(Error::new(ErrorCode::NoMatcher, format!("store position {target} is not applied here within {timeout:?}: this instance is at {at}")))
    }

    /// Follow the store for as long as the runtime lives: connect, load,
    /// apply the log; on any failure log why and start over after a backoff.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let Err(e) = self.follow(&mut backoff).await;
            if let Some(loading) = self.state.lock().loading.as_mut() {
                *loading = format!("load failed ({}), retrying in {backoff:?}", e.detail);
            }
            log::warn!("store: following {} failed: {}; retrying in {backoff:?}", describe(&self.pg), e.detail);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn follow(&self, backoff: &mut Duration) -> Result<std::convert::Infallible> {
        let (mut client, mut wakeups) = connect(&self.pg).await?;
        if !self.loaded() {
            self.reload(&mut client).await?;
        }
        let trim_every = (self.retention / 4).clamp(self.poll_interval, Duration::from_secs(60));
        let mut next_trim = Instant::now();
        loop {
            // A poll right after (re)connecting: nothing notified while away is missed.
            if let Err(reload) = self.poll(&mut client).await? {
                match reload {
                    Reload::Trimmed(at) => log::warn!("store: this instance fell behind the trimmed change log (trimmed up to {at}): reloading"),
                    Reload::Truncated => log::warn!("store: a table was truncated: reloading"),
                }
                self.reload(&mut client).await?;
            }
            if *backoff > BACKOFF_FIRST {
                log::info!("store: following {} again, at position {}", describe(&self.pg), *self.position.borrow());
                *backoff = BACKOFF_FIRST;
            }
            if Instant::now() >= next_trim {
                if let Err(e) = self.trim(&client).await {
                    log::warn!("store: trimming the change log: {}", e.detail);
                }
                next_trim = Instant::now() + trim_every;
            }
            tokio::select! {
                woken = wakeups.recv() => if woken.is_none() {
                    return Err(Error::new(ErrorCode::StoreUnavailable, "the connection that follows the store closed"));
                },
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    /// Apply the log from the current position until it is drained.
    async fn poll(&self, client: &mut Client) -> Result<std::result::Result<(), Reload>> {
        let _apply = self.apply.write().await;
        loop {
            let from = *self.position.borrow();
            let batch = match self.read_changes(client, from, true).await? {
                Ok(batch) => batch,
                Err(reload) => return Ok(Err(reload)),
            };
            let (position, full) = (batch.position, batch.full);
            self.note(&batch);
            batch.apply(&mut self.index.write(), &self.scope);
            self.passed(position);
            if !full {
                return Ok(Ok(()));
            }
        }
    }

    /// Every change up to `position` is in memory.
    fn passed(&self, position: Position) {
        self.position.send_replace(position);
        self.own_creations.lock().retain(|xid| *xid >= position.xid);
    }

    fn note(&self, batch: &Batch) {
        let mut s = self.state.lock();
        s.lag_seconds = batch.lag_seconds;
        for (id, _) in &batch.faces {
            if batch.unreadable.contains(id) {
                s.unreadable.insert(*id);
            } else {
                s.unreadable.remove(id);
            }
        }
    }

    /// Load the whole store (the lists in scope) from one snapshot, bring in
    /// what committed meanwhile, and put it in place of the index.
    async fn reload(&self, client: &mut Client) -> Result<()> {
        let started = Instant::now();
        let (mut index, mut position, faces) = self.load(client).await?;
        // Writes that committed during the load, this instance's own
        // included, are applied to the new index before anyone matches from it.
        let _apply = self.apply.write().await;
        loop {
            // The new index has none of this instance's own writes yet: no skipping.
            let batch = match self.read_changes(client, position, false).await? {
                Ok(batch) => batch,
                Err(_) => return Err(Error::storage("the change log moved past the load: loading again")),
            };
            self.note(&batch);
            let full = batch.full;
            position = batch.position;
            batch.apply(&mut index, &self.scope);
            if !full {
                break;
            }
        }
        let lists = index.lists.len();
        // The old copy is freed outside the lock: matching does not wait for that.
        let old = std::mem::replace(&mut *self.index.write(), index);
        drop(old);
        self.passed(position);
        {
            let mut s = self.state.lock();
            s.loading = None;
            s.loaded_faces = faces;
            s.loads += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        log::info!(
            "store: loaded {faces} faces and {lists} lists from {} in {secs:.2} s ({:.0} faces/s), at position {position}",
            describe(&self.pg),
            faces as f64 / secs.max(1e-9)
        );
        Ok(())
    }

    /// Read the store into a new index from one REPEATABLE READ snapshot,
    /// with binary COPY. Its position is the snapshot's horizon: every
    /// transaction below it that wrote the store is in the snapshot, and
    /// those not in it are applied from the log afterwards.
    async fn load(&self, client: &mut Client) -> Result<(Index, Position, u64)> {
        let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await.map_err(pg_error)?;
        let horizon: i64 = tx.query_one(&format!("SELECT ({HORIZON})::text::bigint"), &[]).await.map_err(pg_error)?.get(0);
        let (lists_in_scope, faces_in_scope) = scope_sql(&self.scope);
        let mut index = Index::default();

        let sql = format!("COPY (SELECT {LIST_COLUMNS} FROM lists l WHERE {lists_in_scope}) TO STDOUT (FORMAT binary)");
        let mut rows = pin!(BinaryCopyOutStream::new(tx.copy_out(&sql).await.map_err(pg_error)?, &[Type::UUID, Type::UUID, Type::TEXT, Type::TIMESTAMPTZ]));
        while let Some(row) = rows.next().await {
            let row = row.map_err(pg_error)?;
            let list = ListRecord { list_id: row.get(0), account_id: row.get(1), user_data: row.get(2), create_time: micros(row.get(3)), face_count: 0 };
            index.lists.insert(list.list_id, list);
        }

        let sql = format!("COPY (SELECT face_id, list_id, attached FROM list_faces {faces_in_scope}) TO STDOUT (FORMAT binary)");
        let mut rows = pin!(BinaryCopyOutStream::new(tx.copy_out(&sql).await.map_err(pg_error)?, &[Type::UUID, Type::UUID, Type::INT8]));
        let mut memberships: HashMap<Uuid, SmallVec<[(i64, Uuid); 2]>> = HashMap::new();
        while let Some(row) = rows.next().await {
            let row = row.map_err(pg_error)?;
            memberships.entry(row.get(0)).or_default().push((row.get(2), row.get(1)));
        }

        let sql = format!(
            "COPY (SELECT {FACE_ROW} FROM faces {faces_in_scope}) \
             TO STDOUT (FORMAT binary)"
        );
        let mut rows = pin!(BinaryCopyOutStream::new(tx.copy_out(&sql).await.map_err(pg_error)?, &FACE_ROW_TYPES));
        // Read here, decoded and put in the index on a thread of its own: a
        // load done on one thread kept that thread busy while PostgreSQL idled.
        let (chunks, mut received) = mpsc::channel::<Vec<BinaryCopyOutRow>>(LOAD_CHUNKS_AHEAD);
        let versions = self.versions.clone();
        let build = tokio::task::spawn_blocking(move || {
            let (mut faces, mut unreadable) = (0u64, HashSet::new());
            while let Some(chunk) = received.blocking_recv() {
                for row in chunk {
                    let face_id: Uuid = row.get(0);
                    let version = row.get::<i32>(2) as u32;
                    let payload: &[u8] = row.get(3);
                    let spec = match checked_spec(&versions, face_id, version, payload.len()) {
                        Ok(spec) => spec,
                        Err(e) => {
                            log::error!("store: {}: left out of memory", e.detail);
                            unreadable.insert(face_id);
                            continue;
                        }
                    };
                    let mut lists = memberships.remove(&face_id).unwrap_or_default();
                    lists.sort_unstable();
                    let face = FaceRecord {
                        face_id,
                        account_id: row.get(1),
                        external_id: row.get(4),
                        user_data: row.get(5),
                        create_time: micros(row.get(6)),
                        lists: lists.into_iter().map(|(_, l)| l).collect(),
                    };
                    index.insert_face(spec, version, payload, face);
                    faces += 1;
                }
            }
            (index, faces, unreadable)
        });
        let mut chunk = Vec::with_capacity(LOAD_CHUNK);
        while let Some(row) = rows.next().await {
            chunk.push(row.map_err(pg_error)?);
            if chunk.len() == LOAD_CHUNK && chunks.send(std::mem::replace(&mut chunk, Vec::with_capacity(LOAD_CHUNK))).await.is_err() {
                break;
            }
        }
        // A chunk the builder cannot take any more (it panicked) is reported by the join.
        let _ = chunks.send(chunk).await;
        drop(chunks);
        let (index, faces, unreadable) = build.await.map_err(|_| Error::storage("building the index from the load failed"))?;
        tx.commit().await.map_err(pg_error)?;
        // A new index: what it leaves out replaces what the old one did.
        self.state.lock().unreadable = unreadable;
        Ok((index, Position { xid: horizon as u64, seq: 0 }, faces))
    }

    /// The changes after `from` that can be applied now, and the rows they
    /// touched, all from one snapshot.
    async fn read_changes(&self, client: &mut Client, from: Position, skip_own: bool) -> Result<std::result::Result<Batch, Reload>> {
        let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await.map_err(pg_error)?;
        let (from_xid, from_seq) = (from.xid.to_string(), from.seq);
        let mark = tx.query_one(&format!("SELECT xid::text::bigint, seq, ({HORIZON})::text::bigint FROM change_log_trimmed"), &[]).await.map_err(pg_error)?;
        let trimmed = Position { xid: mark.get::<_, i64>(0) as u64, seq: mark.get(1) };
        if trimmed > from {
            return Ok(Err(Reload::Trimmed(trimmed)));
        }
        let horizon = mark.get::<_, i64>(2) as u64;
        let changes = tx
            .query(
                // Ordered by the table's columns, not the output's cast of
                // xid: the primary key's order, so a batch reads only its rows.
                "SELECT xid::text::bigint, seq, kind, id FROM change_log
                 WHERE (xid, seq) > ($1::text::xid8, $2) AND xid < $3::text::xid8
                 ORDER BY change_log.xid, change_log.seq LIMIT $4",
                &[&from_xid, &from_seq, &horizon.to_string(), &BATCH],
            )
            .await
            .map_err(pg_error)?;
        let full = changes.len() as i64 == BATCH;
        let last = changes.last().map(|r| Position { xid: r.get::<_, i64>(0) as u64, seq: r.get(1) });
        // Drained: every transaction below the horizon is applied, so the position moves up to it.
        let position = if full { last.unwrap_or(from) } else { last.unwrap_or(from).max(Position { xid: horizon, seq: 0 }) };
        let (mut list_ids, mut face_ids) = (Vec::new(), Vec::new());
        let own = if skip_own { self.own_creations.lock().clone() } else { HashSet::new() };
        for r in changes.iter().filter(|r| !own.contains(&(r.get::<_, i64>(0) as u64))) {
            match r.get::<_, i8>(2) as u8 {
                b'l' => list_ids.push(r.get::<_, Uuid>(3)),
                b'f' | b'm' => face_ids.push(r.get::<_, Uuid>(3)),
                _ => return Ok(Err(Reload::Truncated)),
            }
        }
        face_ids.sort_unstable();
        face_ids.dedup();
        let mut unreadable = HashSet::new();
        let mut faces = Vec::with_capacity(face_ids.len());
        if !face_ids.is_empty() {
            let rows = tx.query(&format!("SELECT {FACE_COLUMNS} FROM faces f WHERE f.face_id = ANY($1)"), &[&face_ids]).await.map_err(pg_error)?;
            let mut found: HashMap<Uuid, (VersionSpec, StoredFace)> = HashMap::with_capacity(rows.len());
            for row in &rows {
                match stored_face(row, &self.versions) {
                    Ok((spec, f)) => {
                        // A face's lists come in with it, so they are counted.
                        list_ids.extend(f.face.lists.iter().filter(|l| self.scope.caches(l)));
                        found.insert(f.face.face_id, (spec, f));
                    }
                    Err(e) => {
                        log::error!("store: {}: left out of memory", e.detail);
                        unreadable.insert(row.get(0));
                    }
                }
            }
            faces.extend(face_ids.into_iter().map(|id| (id, found.remove(&id))));
        }
        list_ids.sort_unstable();
        list_ids.dedup();
        let mut lists = Vec::with_capacity(list_ids.len());
        if !list_ids.is_empty() {
            let rows = tx.query(&format!("SELECT {LIST_COLUMNS} FROM lists l WHERE l.list_id = ANY($1)"), &[&list_ids]).await.map_err(pg_error)?;
            let mut found: HashMap<Uuid, ListRecord> = rows.iter().map(|r| (r.get(0), list_record(r))).collect();
            lists.extend(list_ids.into_iter().map(|id| (id, found.remove(&id))));
        }
        // The age of the next change to apply, found by the primary key: a
        // min(at) over the rows after the position was planned as a walk of
        // the whole log by age (34 ms a poll on a log of 200,000 rows).
        let lag: Option<f64> = tx
            .query_opt(
                "SELECT extract(epoch FROM clock_timestamp() - at)::float8 FROM change_log
                 WHERE (xid, seq) > ($1::text::xid8, $2) ORDER BY change_log.xid, change_log.seq LIMIT 1",
                &[&position.xid.to_string(), &position.seq],
            )
            .await
            .map_err(pg_error)?
            .map(|r| r.get(0));
        tx.commit().await.map_err(pg_error)?;
        Ok(Ok(Batch { lists, faces, position, full, lag_seconds: lag.unwrap_or(0.0).max(0.0), unreadable }))
    }

    /// Trim the log rows older than the retention, and raise the watermark
    /// to the last trimmed: an instance behind it reloads.
    async fn trim(&self, client: &Client) -> Result<()> {
        let sql = format!(
            "WITH gone AS (
                 DELETE FROM change_log WHERE at < clock_timestamp() - make_interval(secs => $1) AND xid < ({HORIZON})
                 RETURNING xid, seq),
             last AS (SELECT xid, seq FROM gone ORDER BY xid DESC, seq DESC LIMIT 1)
             UPDATE change_log_trimmed t SET xid = last.xid, seq = last.seq FROM last WHERE (last.xid, last.seq) > (t.xid, t.seq)"
        );
        client.execute(&sql, &[&self.retention.as_secs_f64()]).await.map_err(pg_error)?;
        Ok(())
    }
}

/// A connection of its own that LISTENs: its receiver wakes on each
/// notification and closes with the connection.
async fn connect(pg: &PgConfig) -> Result<(Client, mpsc::Receiver<()>)> {
    let (client, mut connection) =
        pg.connect(NoTls).await.map_err(|e| Error::new(ErrorCode::StoreUnavailable, format!("cannot connect: {}", describe_error(&e))))?;
    let (wake, wakeups) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Err(mpsc::error::TrySendError::Closed(_)) = wake.try_send(()) {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("store: the following connection failed: {}", describe_error(&e));
                    break;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(pg_error)?;
    Ok((client, wakeups))
}

/// SQL conditions for a cache scope: on `list_id` (lists in scope), and a
/// WHERE clause on `face_id` (faces in a list in scope; all faces for the
/// whole store). Ids are uuids, safe to inline.
fn scope_sql(scope: &CacheScope) -> (String, String) {
    if scope.is_all() {
        return ("true".into(), String::new());
    }
    let ids = |v: &[Uuid]| v.iter().map(|u| format!("'{u}'")).collect::<Vec<_>>().join(",");
    let mut cond = match &scope.include {
        Some(include) if include.is_empty() => "false".to_owned(),
        Some(include) => format!("list_id IN ({})", ids(include)),
        None => "true".to_owned(),
    };
    if !scope.exclude.is_empty() {
        cond = format!("{cond} AND list_id NOT IN ({})", ids(&scope.exclude));
    }
    let faces = format!("WHERE face_id IN (SELECT face_id FROM list_faces WHERE {cond})");
    (cond, faces)
}

//! PostgreSQL as a store shared by any number of instances. Writes are checked
//! and committed in one transaction (the rows they depend on locked), then
//! applied to this instance's index; the [`Follower`] brings in everyone
//! else's. The schema is created and migrated here at start-up.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime as PoolRuntime};
use parking_lot::RwLock;
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Config as PgConfig, NoTls, Row};
use uuid::Uuid;

use super::follower::Follower;
use super::{BoxFuture, Op, Owners, Position, Prepare, Reads, Store, SyncStatus};
use crate::api::CacheScope;
use crate::catalog::StoredFace;
use crate::descriptor::{Descriptor, VersionSpec, Versions};
use crate::errors::{Error, ErrorCode, Result};
use crate::index::{FaceRecord, Index, ListRecord};

/// The versioned migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../migrations/0001_shared_store.sql"))];
/// The advisory lock an instance holds while it migrates ("luna" in ASCII).
const MIGRATION_LOCK: i64 = 0x6c75_6e61;
/// Longest wait for a pooled connection, and for `/healthcheck`'s query.
const POOL_WAIT: Duration = Duration::from_secs(5);
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Columns of a face read by id, its lists in the order they were attached.
pub(super) const FACE_COLUMNS: &str = "f.face_id, f.account_id, f.descriptor_version, f.descriptor, f.external_id, f.user_data, f.create_time, \
     ARRAY(SELECT lf.list_id FROM list_faces lf WHERE lf.face_id = f.face_id ORDER BY lf.attached)";
pub(super) const LIST_COLUMNS: &str = "l.list_id, l.account_id, l.user_data, l.create_time";
/// A face row in binary COPY, written by writes and read by the follower's load, and its types.
pub(super) const FACE_ROW: &str = "face_id, account_id, descriptor_version, descriptor, external_id, user_data, create_time";
pub(super) const FACE_ROW_TYPES: [Type; 7] = [Type::UUID, Type::UUID, Type::INT4, Type::BYTEA, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ];

/// How to reach and follow the shared PostgreSQL store.
pub struct PostgresConfig {
    /// libpq connection string (URL or key=value), several hosts allowed.
    pub dsn: String,
    /// Connections for writes and reads of single records.
    pub pool_size: usize,
    /// Longest time between two reads of the change log (NOTIFY wakes it sooner).
    pub poll_interval: Duration,
    /// Age past which change log rows are trimmed.
    pub changes_retention: Duration,
    /// The lists this instance keeps in memory.
    pub scope: CacheScope,
    /// Longest wait for a store position a request names.
    pub position_wait: Duration,
}

/// Check a connection string as configuration does.
pub fn check_dsn(dsn: &str) -> std::result::Result<(), String> {
    parse_dsn(dsn).map(|_| ())
}

fn parse_dsn(dsn: &str) -> std::result::Result<PgConfig, String> {
    let mut pg: PgConfig = dsn.parse().map_err(|e| format!("not a PostgreSQL connection string: {}", describe_error(&e)))?;
    if pg.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    if pg.get_application_name().is_none() {
        pg.application_name("luna-matcher");
    }
    Ok(pg)
}

/// Where a connection string points, without its password.
pub(super) fn describe(pg: &PgConfig) -> String {
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    format!("{}@{}/{}", pg.get_user().unwrap_or("-"), hosts.join(","), pg.get_dbname().unwrap_or(""))
}

/// tokio-postgres' own text names only the kind of error; its cause says what happened.
pub(super) fn describe_error(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// A PostgreSQL error as the core's: a lost or refused connection is 10003
/// (the write was not acknowledged), anything else 10002.
pub(super) fn pg_error(e: tokio_postgres::Error) -> Error {
    let lost = e.is_closed()
        || match e.code() {
            Some(code) => code.code().starts_with("08") || [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW].contains(code),
            // Not the server's answer: the socket, the protocol or a timeout.
            None => e.as_db_error().is_none(),
        };
    let detail = format!("PostgreSQL: {}", describe_error(&e));
    Error::new(if lost { ErrorCode::StoreUnavailable } else { ErrorCode::StorageFailure }, detail)
}

fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => Error::new(ErrorCode::StoreUnavailable, format!("PostgreSQL: {}", describe_error(&e))),
        other => Error::new(ErrorCode::StoreUnavailable, format!("PostgreSQL: no connection: {other}")),
    }
}

/// The store's own runtime, shut down without blocking when dropped: the
/// store may be dropped inside another runtime, where blocking is refused.
struct OwnRuntime(Option<Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The shared store: writes and single reads on a connection pool, and a follower that keeps the in-memory index current from the change log.
pub struct PostgresStore {
    /// Owned so it outlives every task on it.
    _runtime: OwnRuntime,
    handle: Handle,
    pool: Pool,
    follower: Arc<Follower>,
    versions: Versions,
    position_wait: Duration,
}

impl PostgresStore {
    /// Connect, create or migrate the schema, and start following the store
    /// (the first load runs in the background). Fails when the database
    /// cannot be reached or its schema is newer than this binary knows.
    pub fn open(config: PostgresConfig, versions: Versions, index: Arc<RwLock<Index>>) -> Result<PostgresStore> {
        let pg = parse_dsn(&config.dsn).map_err(Error::storage)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("luna-store")
            .enable_all()
            .build()
            .map_err(|e| Error::storage(format!("store runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let runtime = OwnRuntime(Some(runtime));
        // Its own thread: the caller may be inside another runtime, where blocking on this one is refused.
        std::thread::scope(|s| s.spawn(|| handle.block_on(migrate(&pg))).join()).map_err(|_| Error::storage("migration panicked"))??;
        let manager = Manager::from_config(pg.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(PoolRuntime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| Error::storage(format!("connection pool: {e}")))?;
        let follower = Arc::new(Follower::new(pg, versions.clone(), index, config.scope, config.poll_interval, config.changes_retention));
        handle.spawn(follower.clone().run());
        Ok(PostgresStore { _runtime: runtime, handle, pool, follower, versions, position_wait: config.position_wait })
    }

    /// Run a read on the store's runtime, where its connections live, from any executor.
    fn spawn_read<T: Send + 'static>(&self, read: impl std::future::Future<Output = Result<T>> + Send + 'static) -> BoxFuture<'_, Result<T>> {
        let task = self.handle.spawn(read);
        Box::pin(async move { task.await.map_err(|e| Error::new(ErrorCode::Internal, format!("store read: {e}")))? })
    }

    async fn commit(&self, reads: &Reads, prepare: Prepare<'_>) -> Result<Option<Position>> {
        // Taken before a connection: the follower, once it holds this, must not wait for one.
        let _apply = self.follower.apply.read().await;
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let lock = if reads.delete { "FOR UPDATE" } else { "FOR KEY SHARE" };
        let mut held = Held::default();
        if !reads.lists.is_empty() {
            let sql = format!("SELECT list_id, account_id FROM lists WHERE list_id = ANY($1) {lock}");
            held.lists = tx.query(&sql, &[&reads.lists]).await.map_err(pg_error)?.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        if !reads.faces.is_empty() {
            let sql = format!("SELECT face_id, account_id FROM faces WHERE face_id = ANY($1) {lock}");
            held.faces = tx.query(&sql, &[&reads.faces]).await.map_err(pg_error)?.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        let ops = prepare(&held)?;
        write_ops(&tx, &ops).await.map_err(pg_error)?;
        let row = tx
            .query_one("SELECT pg_current_xact_id()::text::bigint, (SELECT max(seq) FROM change_log WHERE xid = pg_current_xact_id())", &[])
            .await
            .map_err(pg_error)?;
        let position = row.get::<_, Option<i64>>(1).map(|seq| Position { xid: row.get::<_, i64>(0) as u64, seq });
        tx.commit().await.map_err(pg_error)?;
        // Before the first load is in place the load and its catch-up bring this write in.
        if self.follower.loaded() {
            let only_creates = ops.iter().all(|op| matches!(op, Op::CreateList(_) | Op::CreateFace { .. }));
            let mut index = self.follower.index.write();
            for op in ops.into_iter().filter(|op| self.follower.scope.admits(op)) {
                index.apply(op);
            }
            if let Some(p) = position.filter(|_| only_creates) {
                self.follower.created(p.xid);
            }
        }
        Ok(position)
    }
}

/// The owners of the rows a write read, locked in its transaction.
#[derive(Default)]
struct Held {
    lists: HashMap<Uuid, Uuid>,
    faces: HashMap<Uuid, Uuid>,
}

impl Owners for Held {
    fn list_owner(&self, list_id: &Uuid) -> Option<Uuid> {
        self.lists.get(list_id).copied()
    }

    fn face_owner(&self, face_id: &Uuid) -> Option<Uuid> {
        self.faces.get(face_id).copied()
    }
}

impl Store for PostgresStore {
    fn write(&self, reads: &Reads, prepare: Prepare) -> Result<Option<Position>> {
        self.handle.block_on(self.commit(reads, prepare))
    }

    fn list(&self, list_id: Uuid) -> BoxFuture<'_, Result<Option<ListRecord>>> {
        let pool = self.pool.clone();
        self.spawn_read(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let sql = format!("SELECT {LIST_COLUMNS}, (SELECT count(*) FROM list_faces lf WHERE lf.list_id = l.list_id) FROM lists l WHERE l.list_id = $1");
            let row = client.query_opt(&sql, &[&list_id]).await.map_err(pg_error)?;
            Ok(row.map(|r| ListRecord { face_count: r.get::<_, i64>(4) as usize, ..list_record(&r) }))
        })
    }

    fn face(&self, face_id: Uuid) -> BoxFuture<'_, Result<Option<StoredFace>>> {
        let (pool, versions) = (self.pool.clone(), self.versions.clone());
        self.spawn_read(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client.query_opt(&format!("SELECT {FACE_COLUMNS} FROM faces f WHERE f.face_id = $1"), &[&face_id]).await.map_err(pg_error)?;
            row.map(|r| stored_face(&r, &versions).map(|(_, face)| face)).transpose()
        })
    }

    fn check(&self) -> Result<()> {
        self.handle.block_on(async {
            let ping = async {
                let client = self.pool.get().await.map_err(pool_error)?;
                client.simple_query("SELECT 1").await.map_err(pg_error)
            };
            match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
                Ok(result) => result.map(|_| ()),
                Err(_) => Err(Error::new(ErrorCode::StoreUnavailable, format!("PostgreSQL did not answer within {CHECK_TIMEOUT:?}"))),
            }
        })
    }

    fn can_match(&self, list_id: Option<Uuid>) -> Result<()> {
        if let Some(why) = self.follower.loading() {
            return Err(Error::new(ErrorCode::NoMatcher, format!("the store is not in memory yet: {why}")));
        }
        self.follower.scope.check_match(list_id)
    }

    fn wait_for(&self, position: Position) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.follower.wait_for(position, self.position_wait))
    }

    fn sync(&self) -> Option<SyncStatus> {
        Some(self.follower.status())
    }
}

/// Create or migrate the schema. One instance at a time: the others wait on
/// the advisory lock, then find the work done.
async fn migrate(pg: &PgConfig) -> Result<()> {
    let unreachable = |e: tokio_postgres::Error| Error::new(ErrorCode::StoreUnavailable, format!("cannot connect to {}: {}", describe(pg), describe_error(&e)));
    let (mut client, connection) = pg.connect(NoTls).await.map_err(unreachable)?;
    let driver = tokio::spawn(connection);
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS luna_matcher_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        .await
        .map_err(pg_error)?;
    let current: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM luna_matcher_migrations", &[]).await.map_err(pg_error)?.get(0);
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > known {
        return Err(Error::storage(format!(
            "the schema of {} is version {current}, newer than this binary knows ({known}): run a newer luna-matcher",
            describe(pg)
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(|e| Error::storage(format!("migration {version}: {}", describe_error(&e))))?;
        tx.execute("INSERT INTO luna_matcher_migrations (version) VALUES ($1)", &[version]).await.map_err(pg_error)?;
        log::info!("store: schema migrated to version {version}");
    }
    tx.commit().await.map_err(pg_error)?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Execute a write's operations kind by kind, each kind in one statement (new
/// faces: one COPY for the faces, one for their memberships): lists, faces,
/// attachments, detachments, face deletes, list deletes. A write holds
/// operations of one kind, so the order is theirs.
async fn write_ops(tx: &deadpool_postgres::Transaction<'_>, ops: &[Op]) -> std::result::Result<(), tokio_postgres::Error> {
    let mut lists: Vec<&ListRecord> = Vec::new();
    let mut faces: Vec<(&Descriptor, &FaceRecord)> = Vec::new();
    // (list_id, face_id) pairs.
    let mut attach: Vec<(Uuid, Uuid)> = Vec::new();
    let mut detach: Vec<(Uuid, Uuid)> = Vec::new();
    let (mut gone_faces, mut gone_lists) = (Vec::new(), Vec::new());
    for op in ops {
        match op {
            Op::CreateList(list) => lists.push(list),
            Op::CreateFace { descriptor, face, .. } => faces.push((descriptor, face)),
            Op::SetMembership { list_id, face_id, member: true } => attach.push((*list_id, *face_id)),
            Op::SetMembership { list_id, face_id, member: false } => detach.push((*list_id, *face_id)),
            Op::DeleteFace(face_id) => gone_faces.push(*face_id),
            Op::DeleteList(list_id) => gone_lists.push(*list_id),
        }
    }
    if !lists.is_empty() {
        let ids: Vec<Uuid> = lists.iter().map(|l| l.list_id).collect();
        let accounts: Vec<Uuid> = lists.iter().map(|l| l.account_id).collect();
        let user_data: Vec<&str> = lists.iter().map(|l| l.user_data.as_str()).collect();
        let times: Vec<SystemTime> = lists.iter().map(|l| system_time(l.create_time)).collect();
        tx.execute(
            "INSERT INTO lists (list_id, account_id, user_data, create_time) SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[])",
            &[&ids, &accounts, &user_data, &times],
        )
        .await?;
    }
    if !faces.is_empty() {
        copy_faces(tx, &faces).await?;
    }
    if !attach.is_empty() {
        let (lists, faces): (Vec<Uuid>, Vec<Uuid>) = attach.into_iter().unzip();
        tx.execute("INSERT INTO list_faces (list_id, face_id) SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING", &[&lists, &faces]).await?;
    }
    if !detach.is_empty() {
        let (lists, faces): (Vec<Uuid>, Vec<Uuid>) = detach.into_iter().unzip();
        tx.execute("DELETE FROM list_faces WHERE (list_id, face_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))", &[&lists, &faces]).await?;
    }
    if !gone_faces.is_empty() {
        tx.execute("DELETE FROM faces WHERE face_id = ANY($1)", &[&gone_faces]).await?;
    }
    if !gone_lists.is_empty() {
        tx.execute("DELETE FROM lists WHERE list_id = ANY($1)", &[&gone_lists]).await?;
    }
    Ok(())
}

/// New faces and their lists by binary COPY, a bulk import's rows streamed
/// rather than bound as arrays and unnested. COPY fires the tables' statement
/// triggers as INSERT does, so the change log sees them. A new face's id is
/// new and its lists distinct: its memberships cannot conflict.
async fn copy_faces(tx: &deadpool_postgres::Transaction<'_>, faces: &[(&Descriptor, &FaceRecord)]) -> std::result::Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(&format!("COPY faces ({FACE_ROW}) FROM STDIN (FORMAT binary)")).await?;
    let mut rows = pin!(BinaryCopyInWriter::new(sink, &FACE_ROW_TYPES));
    for (d, f) in faces {
        let row: [&(dyn ToSql + Sync); 7] =
            [&f.face_id, &f.account_id, &(d.version as i32), &d.payload.as_slice(), &f.external_id.as_deref(), &&*f.user_data, &system_time(f.create_time)];
        rows.as_mut().write(&row).await?;
    }
    rows.finish().await?;
    if faces.iter().any(|(_, f)| !f.lists.is_empty()) {
        let sink = tx.copy_in("COPY list_faces (list_id, face_id) FROM STDIN (FORMAT binary)").await?;
        let mut rows = pin!(BinaryCopyInWriter::new(sink, &[Type::UUID, Type::UUID]));
        for (_, f) in faces {
            for list_id in &f.lists {
                rows.as_mut().write(&[list_id, &f.face_id]).await?;
            }
        }
        rows.finish().await?;
    }
    Ok(())
}

pub(super) fn list_record(r: &Row) -> ListRecord {
    ListRecord { list_id: r.get(0), account_id: r.get(1), user_data: r.get(2), create_time: micros(r.get(3)), face_count: 0 }
}

/// A face row (read with [`FACE_COLUMNS`]) with its version's spec; an error
/// when the version table cannot read its descriptor.
pub(super) fn stored_face(r: &Row, versions: &Versions) -> Result<(VersionSpec, StoredFace)> {
    let face_id: Uuid = r.get(0);
    let version = r.get::<_, i32>(2) as u32;
    let payload: Vec<u8> = r.get(3);
    let spec = checked_spec(versions, face_id, version, payload.len())?;
    let face = FaceRecord {
        face_id,
        account_id: r.get(1),
        external_id: r.get(4),
        user_data: r.get(5),
        create_time: micros(r.get(6)),
        lists: r.get::<_, Vec<Uuid>>(7).into_iter().collect(),
    };
    Ok((spec, StoredFace { face, descriptor: Descriptor { version, payload } }))
}

/// The spec of a stored descriptor, checked against its length.
pub(super) fn checked_spec(versions: &Versions, face_id: Uuid, version: u32, len: usize) -> Result<VersionSpec> {
    let spec = *versions.get(version).map_err(|e| Error::storage(format!("stored face {face_id}: {}", e.detail)))?;
    if len != spec.payload_len() {
        return Err(Error::storage(format!(
            "stored face {face_id}: version {version} descriptor is {len} bytes, the version table says {}",
            spec.payload_len()
        )));
    }
    Ok(spec)
}

/// Microseconds since the epoch, as the index keeps times.
pub(super) fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

fn system_time(micros: i64) -> SystemTime {
    let d = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_checks_and_descriptions() {
        let pg = parse_dsn("postgresql://luna:secret@h1:5433,h2/faces?target_session_attrs=read-write").unwrap();
        assert_eq!(describe(&pg), "luna@h1:5433,h2:5432/faces");
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert!(parse_dsn("host=127.0.0.1 user=postgres dbname=x").is_ok());
        assert!(check_dsn("postgresql://[::1").is_err());
        assert!(check_dsn("postgresql:///db").unwrap_err().contains("no host"));
    }

    #[test]
    fn times_round_trip() {
        for t in [0, 1, 1_700_000_000_123_456, -5_000_001] {
            assert_eq!(micros(system_time(t)), t);
        }
    }
}

//! The SQLite backend: the embedded default.
//!
//! It owns the database file, its pragmas (WAL, `synchronous=FULL`,
//! `busy_timeout`), the embedded migrations (`migrations/sqlite/`), the
//! `PRAGMA data_version` watcher, and the SQL of every store operation, one
//! concern per file below. All writes go through one connection, and every
//! write transaction begins `IMMEDIATE`, so SQLite takes the write lock up
//! front and waits (`busy_timeout`) rather than failing when the CLI or
//! another program writes at the same moment.
//!
//! The queue's queries name their partial index (`INDEXED BY`): without
//! statistics SQLite prefers the plain `(state, created_at)` index and would
//! sort every active session to find the next deadline. Naming the index
//! pins the plan, and a query whose index cannot serve it fails loudly.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, SqliteConnection, SqlitePool};

use super::StoreError;
use super::health::StoreHealth;
use super::lock_waits::LockWaits;
use crate::domain::session::{Repeatability, Session, SessionRecord};
use crate::domain::{DomainError, Instant, Room, RoomKind, UserId};

mod audit_log;
mod budget;
mod outbox;
mod presence;
mod queue;
mod sessions;

pub use audit_log::{audit_record, insert_audit_records};

/// How long a connection waits for a lock another connection holds before
/// the statement fails with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the writer tries again for the write lock (see
/// [`SqliteStore::write_tx`]).
pub const LOCK_RETRY: Duration = Duration::from_millis(1);
/// The longest wait for a pooled connection: a third of the unit's
/// `WatchdogSec` (30 s), so a slow database step is retried and logged well
/// before the watchdog would take the daemon for wedged.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows deleted per transaction when pruning (retention): a few
/// milliseconds of the writer each, so claims and outcomes between chunks
/// wait no longer than that.
pub(crate) const PRUNE_CHUNK: u32 = 250;
/// How long one chunk of a prune should hold the writer.
pub(crate) const PRUNE_CHUNK_TIME: Duration = Duration::from_millis(20);

/// The next chunk's size after one of `size` rows took `took`: halved when
/// it held the writer well past [`PRUNE_CHUNK_TIME`], grown by half when
/// well under; between 16 and 4,096 rows.
fn next_chunk_size(size: u32, took: Duration) -> u32 {
    let next = if took > PRUNE_CHUNK_TIME + PRUNE_CHUNK_TIME / 4 {
        size / 2
    } else if took < PRUNE_CHUNK_TIME / 2 {
        size + size / 2
    } else {
        size
    };
    next.clamp(16, 4096)
}
/// How often opening is retried while another process creates the database
/// (see `open`): 100 ms, 200 ms, ... about 5.5 s in all.
const OPEN_RETRIES: u32 = 10;

/// The schema's migrations, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The columns of `sessions`, in the order [`SessionRecord::from_row`] reads.
const SESSION_COLUMNS: &str = "id, policy, provider, room_id, room_kind, user_id, started_at, deadline, \
     state, attempts, extended_ms, detail, repeatability_id, first_sent_at, idempotency_key, created_at, updated_at, \
     grace_ms, ended_at";

/// Handle on one SQLite database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    /// The single writer connection: SQLite takes one writer at a time anyway,
    /// and one connection makes that explicit and keeps writes in order.
    writer: SqlitePool,
    readers: SqlitePool,
    /// Whether the daemon's database steps are failing right now.
    pub(super) health: Arc<StoreHealth>,
    /// How long [`SqliteStore::write_tx`] waited for the lock lately.
    pub(super) lock_waits: Arc<LockWaits>,
}

impl StoreError {
    /// A failure another process may be causing for a moment: a lock, or a
    /// migration racing one that is under way.
    fn is_transient(&self) -> bool {
        match self {
            StoreError::Migrate { .. } => true,
            StoreError::Open { source, .. } => {
                let text = source.to_string();
                text.contains("locked") || text.contains("busy")
            }
            _ => false,
        }
    }
}

impl SqliteStore {
    pub(super) fn options(path: &Path) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed enforcement survives power loss, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
    }

    /// Opens (creating if missing) and migrates the database.
    pub(in crate::store) async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Open { path: path.to_path_buf(), source: sqlx::Error::Io(e) })?;
        }
        // Two processes opening a new database at once (the daemon starting
        // while the app runs `session start`) race: one migrates while the
        // other finds the file locked (switching to WAL needs a moment of
        // exclusive access), or finds it unmigrated and fails on what the
        // first created. Migrations are transactional, so trying again a
        // little later sees them applied.
        let mut tries = 0;
        loop {
            match Self::open_once(path).await {
                Ok(store) => return Ok(store),
                Err(e) if tries < OPEN_RETRIES && e.is_transient() => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(tries))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) async fn open_once(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // After a failed COMMIT (a full disk), sqlx can lose track of the
            // transaction SQLite still holds open: every later "transaction"
            // becomes a savepoint inside it, reports success and is never
            // committed. A plain BEGIN fails exactly when SQLite is inside a
            // transaction between uses; such a connection is discarded (its
            // open transaction rolled back) and a fresh one opened.
            .before_acquire(|conn, _| {
                Box::pin(async move {
                    // sqlx's own count of open transactions, which a failed
                    // COMMIT can leave above zero (`begin_with` then refuses).
                    if conn.is_in_transaction() {
                        tracing::warn!("the database writer was left inside a transaction; reconnecting");
                        return Ok(false);
                    }
                    if sqlx::query("BEGIN").execute(&mut *conn).await.is_err() {
                        tracing::warn!("the database writer was left inside a transaction; reconnecting");
                        return Ok(false);
                    }
                    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                    Ok(true)
                })
            })
            .connect_with(Self::options(path).busy_timeout(Duration::ZERO))
            .await
            .map_err(open_err)?;
        // Migrations take locks of their own; they wait in SQLite's busy
        // handler, on a connection of their own.
        let migrated = match SqliteConnection::connect_with(&Self::options(path)).await {
            Ok(mut conn) => {
                let result = MIGRATOR.run(&mut conn).await;
                let _ = conn.close().await;
                result.map_err(|source| StoreError::Migrate { path: path.to_path_buf(), source })
            }
            Err(source) => Err(open_err(source)),
        };
        if let Err(e) = migrated {
            writer.close().await;
            return Err(e);
        }
        Self::with_writer(path, Self::options(path), writer).await
    }

    /// The handle around a `writer` just opened: the reader pool (on
    /// `options`) and fresh health and lock-wait records.
    async fn with_writer(
        path: &Path,
        options: SqliteConnectOptions,
        writer: SqlitePool,
    ) -> Result<SqliteStore, StoreError> {
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer,
            readers,
            health: Default::default(),
            lock_waits: Default::default(),
        })
    }

    /// Opens an existing database without migrating it; see
    /// [`Store::open_existing`](crate::store::Store::open_existing).
    pub(in crate::store) async fn open_existing(
        path: &Path,
        older_ok: bool,
    ) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        let options = Self::options(path).create_if_missing(false);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone().busy_timeout(Duration::ZERO))
            .await
            .map_err(open_err)?;
        let found: i64 = sqlx::query_scalar(
            "SELECT coalesce((SELECT max(version) FROM _sqlx_migrations WHERE success), 0) \
             WHERE EXISTS (SELECT 1 FROM sqlite_master WHERE name = '_sqlx_migrations') \
             UNION ALL SELECT 0 LIMIT 1",
        )
        .fetch_one(&writer)
        .await
        .map_err(open_err)?;
        let ours = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        if found > ours || (found < ours && !older_ok) {
            writer.close().await;
            return Err(StoreError::Schema { path: path.to_path_buf(), found, ours });
        }
        Self::with_writer(path, options, writer).await
    }

    /// A write transaction on the writer, holding SQLite's write lock from
    /// its first statement (`BEGIN IMMEDIATE`): one that read first and
    /// wrote later could fail with SQLITE_BUSY_SNAPSHOT when the CLI or an
    /// app committed in between, which no busy timeout waits out.
    ///
    /// The writer connection has no busy timeout: a refused `BEGIN
    /// IMMEDIATE` is tried again here every [`LOCK_RETRY`], up to
    /// [`BUSY_TIMEOUT`]. SQLite's own busy handler sleeps 25 to 100 ms
    /// between tries once a wait passes 50 ms, and SQLite's lock is not
    /// fair: against another program that commits in a tight loop (a bulk
    /// insert), a try lands in the moment between two of its transactions
    /// so rarely that the daemon waited many seconds. Trying every
    /// millisecond, it waits about one of the other program's
    /// transactions. Each wait is recorded in [`LockWaits`], with whether
    /// the lock was found taken.
    pub(super) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.write_tx_within(BUSY_TIMEOUT).await
    }

    /// [`SqliteStore::write_tx`], waiting at most `patience` for the lock;
    /// after that, the error is SQLITE_BUSY ([`is_busy`]). A wait that ends
    /// either way is recorded.
    pub(super) async fn write_tx_within(
        &self,
        patience: Duration,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        let started = std::time::Instant::now();
        let mut contended = false;
        loop {
            let result = self.writer.begin_with("BEGIN IMMEDIATE").await;
            let waited = started.elapsed();
            contended |= result.as_ref().is_err_and(is_busy);
            match result {
                Err(e) if is_busy(&e) && waited < patience => tokio::time::sleep(LOCK_RETRY).await,
                Err(e) if !is_busy(&e) => return Err(e),
                result => {
                    self.lock_waits.record(waited, contended);
                    crate::metrics::store_lock_wait(waited);
                    return result;
                }
            }
        }
    }

    /// Runs one statement as a write transaction of its own (see
    /// [`SqliteStore::write_tx`]).
    pub(super) async fn write_one<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error> {
        let mut tx = self.write_tx().await?;
        let done = query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Runs a `DELETE` of a chunk of rows again and again, each its own
    /// transaction (the chunk size is bound last, after what `chunk` binds),
    /// yielding between chunks so other writers get the writer, until a
    /// chunk comes back short. The chunk starts at [`PRUNE_CHUNK`] rows and
    /// adapts so that each holds the writer about [`PRUNE_CHUNK_TIME`]:
    /// sessions (many indexes, triggers) cost several times what audit rows
    /// do, and machines differ. Returns how many rows were deleted in all.
    pub(super) async fn delete_in_chunks<F>(&self, chunk: F) -> Result<u64, StoreError>
    where
        F: Fn() -> sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'static>>,
    {
        let mut total = 0;
        let mut size = PRUNE_CHUNK;
        loop {
            let started = std::time::Instant::now();
            let done = self.write_one(chunk().bind(size)).await?.rows_affected();
            total += done;
            if done < u64::from(size) {
                return Ok(total);
            }
            size = next_chunk_size(size, started.elapsed());
            tokio::task::yield_now().await;
        }
    }

    /// SQLite runs on the daemon's own host and clock.
    pub(in crate::store) async fn database_time(&self) -> Result<Option<crate::domain::Instant>, StoreError> {
        Ok(None)
    }

    /// The reader pool (the copy to PostgreSQL reads through it).
    pub(super) fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    pub(in crate::store) fn path(&self) -> &Path {
        &self.path
    }

    pub(in crate::store) async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    /// A connection of its own for watching `PRAGMA data_version`.
    pub(in crate::store) async fn change_watcher(&self) -> Result<DataVersionWatcher, StoreError> {
        let mut conn = SqliteConnection::connect_with(&Self::options(&self.path)).await?;
        let version = data_version(&mut conn).await?;
        Ok(DataVersionWatcher { conn, version })
    }
}

/// SQLITE_BUSY, or one of its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT,
/// BUSY_TIMEOUT): another connection holds a lock this one needs.
pub fn is_busy(e: &sqlx::Error) -> bool {
    let code = e.as_database_error().and_then(|d| d.code()).and_then(|c| c.parse::<i32>().ok());
    code.is_some_and(|c| c & 0xff == 5)
}

/// The one daemon's hold on a database: an exclusive `flock` on
/// `<database>.lock`, released when dropped or when the process exits.
#[derive(Debug)]
pub struct DaemonLock {
    _file: std::fs::File,
}

/// Takes the daemon's lock on the database at `path`, or says who has it.
/// A lock file of its own, not the database file: SQLite's own locks are
/// POSIX record locks on that file, which a `flock` must not be mistaken for
/// (on NFS the two are the same lock).
pub(super) fn lock_database(path: &Path) -> Result<DaemonLock, StoreError> {
    use std::io::{Read, Seek, Write};
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    let failed = |e: std::io::Error| StoreError::Open { path: lock.clone(), source: sqlx::Error::Io(e) };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim().parse::<u32>().map(|pid| format!(" (pid {pid})")).unwrap_or_default();
            return Err(StoreError::InUse { path: path.to_path_buf(), lock, holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
    }
    // The holder's pid, for the message a second daemon prints.
    file.set_len(0).map_err(failed)?;
    file.rewind().map_err(failed)?;
    writeln!(file, "{}", std::process::id()).map_err(failed)?;
    Ok(DaemonLock { _file: file })
}

impl SessionRecord {
    /// Reads a `sessions` row (all of [`SESSION_COLUMNS`]). Public so that
    /// tests reading the file directly, as an app would, use the same types.
    pub fn from_row(row: &SqliteRow) -> Result<SessionRecord, sqlx::Error> {
        super::rows::session_record(row)
    }

    /// Parses the stored text into a schedulable session.
    pub fn to_session(&self) -> Result<Session, StoreError> {
        let malformed = |reason: String| StoreError::Malformed { id: self.id.clone(), reason };
        let e = |e: DomainError| malformed(e.to_string());
        let kind = RoomKind::from_str(&self.room_kind).map_err(e)?;
        Ok(Session {
            id: self.id.parse().map_err(e)?,
            policy: self.policy.clone(),
            provider: self.provider.clone().ok_or_else(|| malformed("no provider".into()))?,
            room: Room::parse(kind, &self.room_id).map_err(e)?,
            user: self.user_id.as_deref().map(UserId::parse).transpose().map_err(e)?,
            started_at: Instant::parse(&self.started_at).map_err(e)?,
            deadline: Instant::parse(
                self.deadline.as_deref().ok_or_else(|| malformed("no deadline".into()))?,
            )
            .map_err(e)?,
            state: self.state.parse().map_err(e)?,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            repeatability: match (&self.repeatability_id, &self.first_sent_at) {
                (Some(id), Some(sent)) => Some(Repeatability {
                    request_id: uuid::Uuid::parse_str(id)
                        .map_err(|_| malformed(format!("repeatability_id {id:?} is not a UUID")))?,
                    first_sent: Instant::parse(sent).map_err(e)?.to_datetime(),
                }),
                _ => None,
            },
            term: crate::domain::lease::SOLE_TERM,
        })
    }
}

pub(super) async fn data_version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("PRAGMA data_version").fetch_one(conn).await
}

/// Notices commits made by any other connection, this process's writer
/// included, through `PRAGMA data_version`: one cheap read per poll.
#[derive(Debug)]
pub struct DataVersionWatcher {
    conn: SqliteConnection,
    version: i64,
}

impl DataVersionWatcher {
    /// True when something was committed since the last call.
    pub async fn changed(&mut self) -> Result<bool, StoreError> {
        let v = data_version(&mut self.conn).await?;
        let changed = v != self.version;
        self.version = v;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prune_chunk_grows_when_quick_and_shrinks_when_it_holds_the_writer_long() {
        assert_eq!(next_chunk_size(250, Duration::from_millis(2)), 375);
        assert_eq!(next_chunk_size(250, Duration::from_millis(20)), 250);
        assert_eq!(next_chunk_size(250, Duration::from_millis(80)), 125);
        assert_eq!(next_chunk_size(16, Duration::from_secs(1)), 16);
        assert_eq!(next_chunk_size(4096, Duration::ZERO), 4096);
    }
}

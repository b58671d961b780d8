//! The backends the suite runs against, and the little each must supply
//! besides the `Store` interface: a fresh empty database, a second handle on
//! it, a backup's copy reopened, a row inserted with plain SQL, another
//! program writing in a tight loop, and another holding a write lock.
//!
//! PostgreSQL runs on a throwaway cluster this test process shares
//! (`tests/support/pg_cluster.rs`), a fresh database per test.

use std::path::{Path, PathBuf};

use callwarden::config::{Database, PostgresUrl};
use callwarden::domain::{Instant, SessionId};
use callwarden::store::Store;

#[path = "../support/pg_cluster.rs"]
mod pg_cluster;

/// Which backend a test instance runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty, migrated database for one test, and its handle.
#[derive(Debug)]
pub struct Db {
    pub store: Store,
    pub backend: Backend,
    /// Where the data lives: the SQLite file, or the PostgreSQL URL.
    pub location: String,
    /// Scratch space for the test (backup targets); removed at the end.
    dir: tempfile::TempDir,
}

/// A session row as an app writes it with plain SQL: the provider and the
/// deadline may be left out, for the daemon to fill in when it adopts it.
#[derive(Debug, Clone)]
pub struct PlainRow {
    pub id: SessionId,
    pub policy: &'static str,
    pub provider: Option<&'static str>,
    pub room_id: &'static str,
    pub room_kind: &'static str,
    pub user_id: Option<&'static str>,
    pub started_at: Instant,
    pub deadline: Option<Instant>,
    pub created_at: Instant,
}

impl Db {
    /// A fresh database of `backend`; `None` where that backend cannot run
    /// here (PostgreSQL not installed, and not required: see
    /// `pg_cluster::required`).
    pub async fn open(backend: Backend) -> Option<Db> {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => {
                let path = dir.path().join("cw.db");
                let store = Store::open(&path).await.unwrap();
                Some(Db { store, backend, location: path.display().to_string(), dir })
            }
            Backend::Postgres => {
                let url = pg_cluster::shared()?.fresh_database().await;
                let store = Store::connect(&pg_database(&url)).await.unwrap();
                Some(Db { store, backend, location: url, dir })
            }
        }
    }

    /// A path in the test's scratch directory (nothing is created there).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A second, independent handle on the same database, as another
    /// process (the CLI) would open it.
    pub async fn another_handle(&self) -> Store {
        match self.backend {
            Backend::Sqlite => Store::open(Path::new(&self.location)).await.unwrap(),
            Backend::Postgres => Store::connect(&pg_database(&self.location)).await.unwrap(),
        }
    }

    /// Opens the copy `Store::backup` wrote at `path` (SQLite only).
    pub async fn open_backup(&self, path: &Path) -> Store {
        Store::open(path).await.unwrap()
    }

    /// Inserts a session row the way an app does, with plain SQL and
    /// without the store; returns its id as text.
    pub async fn insert_plain_row(&self, row: &PlainRow) -> String {
        match self.backend {
            Backend::Sqlite => sqlite_insert_plain_row(Path::new(&self.location), row).await,
            Backend::Postgres => pg_insert_plain_row(&self.location, row).await,
        }
    }
}

fn pg_database(url: &str) -> Database {
    Database::Postgres(PostgresUrl::parse(url, None).unwrap())
}

async fn pg_insert_plain_row(url: &str, row: &PlainRow) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    // Times as an app would write them: text PostgreSQL parses.
    sqlx::query(
        "INSERT INTO sessions (id, policy, provider, room_id, room_kind, user_id, started_at, deadline, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7::timestamptz, $8::timestamptz, \
         $9::timestamptz, $9::timestamptz)",
    )
    .bind(row.id.to_string())
    .bind(row.policy)
    .bind(row.provider)
    .bind(row.room_id)
    .bind(row.room_kind)
    .bind(row.user_id)
    .bind(row.started_at.to_string())
    .bind(row.deadline.map(|d| d.to_string()))
    .bind(row.created_at.to_string())
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    row.id.to_string()
}

async fn sqlite_insert_plain_row(path: &Path, row: &PlainRow) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query(
        "INSERT INTO sessions (id, policy, provider, room_id, room_kind, user_id, started_at, deadline, \
         created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.id.to_string())
    .bind(row.policy)
    .bind(row.provider)
    .bind(row.room_id)
    .bind(row.room_kind)
    .bind(row.user_id)
    .bind(row.started_at.to_string())
    .bind(row.deadline.map(|d| d.to_string()))
    .bind(row.created_at.to_string())
    .bind(row.created_at.to_string())
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    row.id.to_string()
}

/// Another program writing to the database in a tight loop (a bulk import
/// of plain-SQL rows: transactions of 500 rows, each synced, one after the
/// other), on a thread of its own, until dropped.
pub struct BusyWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyWriter {
    /// How many transactions it committed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops it.
    pub fn finish(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for BusyWriter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Db {
    /// Starts a [`BusyWriter`] and returns once its first transaction has
    /// committed.
    pub async fn busy_writer(&self) -> BusyWriter {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (started, first) = tokio::sync::oneshot::channel();
        let (backend, location) = (self.backend, self.location.clone());
        let commits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (flag, count) = (std::sync::Arc::clone(&stop), std::sync::Arc::clone(&commits));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            match backend {
                Backend::Sqlite => {
                    runtime.block_on(sqlite_busy_writer(location.into(), flag, count, started))
                }
                Backend::Postgres => runtime.block_on(pg_busy_writer(location, flag, count, started)),
            }
        });
        first.await.unwrap();
        BusyWriter { stop, commits, thread: Some(thread) }
    }
}

async fn sqlite_busy_writer(
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    started: tokio::sync::oneshot::Sender<()>,
) {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(std::time::Duration::from_secs(5))
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .connect()
        .await
        .unwrap();
    let mut started = Some(started);
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut tx = conn.begin().await.unwrap();
        for _ in 0..500 {
            n += 1;
            // Rows of a policy the daemon does not know: they stay out of
            // every query the tests make (never adopted here).
            sqlx::query(
                "INSERT INTO sessions (policy, room_id, room_kind) VALUES ('bulk-import', ?, 'numeric')",
            )
            .bind((1_000_000 + n).to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(s) = started.take() {
            let _ = s.send(());
        }
    }
}

async fn pg_busy_writer(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    started: tokio::sync::oneshot::Sender<()>,
) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut started = Some(started);
    let mut n = 0i64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut tx = conn.begin().await.unwrap();
        for _ in 0..500 {
            n += 1;
            sqlx::query(
                "INSERT INTO sessions (policy, room_id, room_kind) VALUES ('bulk-import', $1, 'numeric')",
            )
            .bind((1_000_000 + n).to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(s) = started.take() {
            let _ = s.send(());
        }
    }
}

/// Another connection that holds a write lock until dropped: SQLite's
/// database-wide one, or on PostgreSQL a lock on `sessions` that lets reads
/// through and makes every write to the table wait.
pub enum LockHolder {
    Sqlite { _conn: sqlx::SqliteConnection },
    Postgres { _conn: sqlx::PgConnection },
}

impl Db {
    /// Takes the write lock on another connection, as a program in the
    /// middle of a write transaction holds it.
    pub async fn hold_write_lock(&self) -> LockHolder {
        use sqlx::Connection;
        match self.backend {
            Backend::Sqlite => {
                let mut conn =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", self.location)).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.unwrap();
                LockHolder::Sqlite { _conn: conn }
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.location).await.unwrap();
                sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
                sqlx::query("LOCK TABLE sessions IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                LockHolder::Postgres { _conn: conn }
            }
        }
    }
}

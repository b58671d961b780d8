//! The PostgreSQL backend: for operators who already run (and replicate)
//! PostgreSQL.
//!
//! It owns the connection pool, the embedded migrations
//! (`migrations/postgres/`), the `LISTEN` change watcher, and the SQL of
//! every store operation, one concern per file below, mirroring
//! `store/sqlite/`. The tables and columns are SQLite's, with PostgreSQL's
//! types: times are `timestamptz`, kept in whole milliseconds by a trigger
//! (a deadline rounded up, never early), and read back as the same UTC text
//! SQLite stores (`callwarden_text(t)`), so the rows the store hands up are
//! the same from either backend.
//!
//! Writes are transactions on the pool. Two writers (this daemon, the CLI,
//! an app's own SQL) are kept apart by PostgreSQL's row locks and by the
//! conditional writes every backend makes (`WHERE state = …`); appends to
//! an audit chain lock its tip row (`audit_tips`), so they never fork it;
//! each daemon instance appends to a chain of its own (`callwarden.chain`).
//! Several daemons may share the database: each quota bucket is enforced
//! by the holder of its lease (`lease.rs`, on a connection of its own), and
//! every write about an enforcement is fenced by the lease's term.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use super::StoreError;
use super::health::StoreHealth;
use super::lock_waits::LockWaits;
use crate::config::database::redacted;

mod audit_log;
mod budget;
mod lease;
mod outbox;
mod presence;
mod queue;
mod sessions;

pub use audit_log::{audit_record, insert_audit_records};
pub use budget::PgBudgetGuard;
pub use lease::LeaseConn;

/// The longest wait for a pooled connection (as for SQLite: a third of the
/// unit's watchdog).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in the pool: the scheduler, enforcement, the registrar, the
/// API's reads and the notifier share them.
pub const POOL_SIZE: u32 = 8;
/// Connections that hold budget locks across instances (made when first
/// needed): this many budgeted registrations or entries hold their users'
/// budgets at once, per instance; more wait their turn. Apart from the
/// main pool, so that holders waiting for their write to commit never
/// take the connections the write needs.
pub const BUDGET_POOL_SIZE: u32 = 4;
/// The longest a statement may run before the server cancels it: a claim or
/// an insert batch takes milliseconds; anything near this is stuck.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection may sit in an open transaction waiting for
/// the daemon's next statement before the server ends it: the daemon's
/// transactions run their statements back to back, so only a paused or
/// cut-off process waits this long, and its row locks (which a new leader
/// waits for) go with it. Budget locks, held while a registration is
/// decided, get [`BUDGET_HOLD_TIMEOUT`] instead.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);
/// [`IDLE_IN_TRANSACTION_TIMEOUT`] for the budget pool's connections.
pub const BUDGET_HOLD_TIMEOUT: Duration = Duration::from_secs(60);
/// The channel `sessions_due_soon()` notifies on (migration 0003): a
/// transaction that leaves a session to adopt, or one due within 2 s.
pub const CHANGES_CHANNEL: &str = "callwarden_changed";
/// Rows deleted per transaction when pruning.
pub(crate) const PRUNE_CHUNK: i64 = 1_000;

/// The schema's migrations, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The columns of `sessions` as the store reads them (times as UTC text), in
/// the order [`session_record`] reads.
pub(super) const SESSION_COLUMNS: &str = "id, policy, provider, room_id, room_kind, user_id, \
     callwarden_text(started_at) AS started_at, callwarden_text(deadline) AS deadline, state, attempts, \
     extended_ms, detail, repeatability_id, callwarden_text(first_sent_at) AS first_sent_at, idempotency_key, \
     callwarden_text(created_at) AS created_at, callwarden_text(updated_at) AS updated_at, grace_ms, \
     callwarden_text(ended_at) AS ended_at";

/// Handle on one PostgreSQL database. Cheap to clone. Its `Debug` names
/// the database without the password the connection options hold.
#[derive(Clone)]
pub struct PgStore {
    /// The URL without its password, for messages.
    location: String,
    /// The audit chain this handle appends to, when not ''.
    chain: Option<String>,
    /// Shared by clones (it is large): for connections of their own.
    options: std::sync::Arc<PgConnectOptions>,
    pool: PgPool,
    /// For budget locks ([`PgStore::hold_budgets`]); connects lazily.
    budget_pool: PgPool,
    /// Whether the daemon's database steps are failing right now.
    pub(super) health: std::sync::Arc<StoreHealth>,
    /// How long writes waited for a connection and `BEGIN` lately.
    pub(super) lock_waits: std::sync::Arc<LockWaits>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("location", &self.location).finish_non_exhaustive()
    }
}

/// The connection options for `url`, with the password from
/// `password_file` if given (else the URL's, else `PGPASSWORD`), and the
/// settings every connection of the daemon gets.
pub fn connect_options(url: &str, password: Option<&str>) -> Result<PgConnectOptions, StoreError> {
    let location = redacted(url);
    let mut options: PgConnectOptions =
        url.parse().map_err(|source| StoreError::Connect { location: location.clone(), source })?;
    if let Some(password) = password {
        options = options.password(password);
    }
    Ok(options
        .application_name("callwarden")
        // Notices ("relation … already exists, skipping" at every start) are
        // not the operator's business; warnings are.
        .options([
            ("statement_timeout", format!("{}", STATEMENT_TIMEOUT.as_millis())),
            ("idle_in_transaction_session_timeout", format!("{}", IDLE_IN_TRANSACTION_TIMEOUT.as_millis())),
            ("client_min_messages", "warning".to_string()),
        ]))
}

impl PgStore {
    /// Connects and migrates. `chain`: the audit chain this handle appends
    /// to (a daemon instance's name); none for the chain ''.
    pub(in crate::store) async fn open(
        url: &str,
        password: Option<&str>,
        chain: Option<&str>,
    ) -> Result<PgStore, StoreError> {
        let store = Self::connect(url, password, chain).await?;
        let mut conn = store.pool.acquire().await.map_err(|e| store.connect_error(e))?;
        // Two processes migrating at once: sqlx takes an advisory lock
        // around the migrations, so the second waits and finds them applied.
        MIGRATOR
            .run(&mut *conn)
            .await
            .map_err(|source| StoreError::MigrateAt { location: store.location.clone(), source })?;
        Ok(store)
    }

    /// Connects without migrating, for commands that only read; refuses a
    /// schema other than this build's (or, with `older_ok`, a newer one).
    pub(in crate::store) async fn open_existing(
        url: &str,
        password: Option<&str>,
        older_ok: bool,
    ) -> Result<PgStore, StoreError> {
        let store = Self::connect(url, password, None).await?;
        let migrated: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&store.pool)
            .await
            .map_err(|e| store.connect_error(e))?;
        let found: i64 = if migrated {
            sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success")
                .fetch_one(&store.pool)
                .await
                .map_err(|e| store.connect_error(e))?
        } else {
            0
        };
        if found == 0 {
            store.pool.close().await;
            return Err(StoreError::Uninitialised(store.location.clone()));
        }
        let ours = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        if found > ours || (found < ours && !older_ok) {
            store.pool.close().await;
            return Err(StoreError::SchemaAt { location: store.location.clone(), found, ours });
        }
        Ok(store)
    }

    async fn connect(url: &str, password: Option<&str>, chain: Option<&str>) -> Result<PgStore, StoreError> {
        let location = redacted(url);
        let mut options = connect_options(url, password)?;
        if let Some(chain) = chain {
            // Read by callwarden_chain() (migration 0004).
            options = options.options([("callwarden.chain", chain)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|source| StoreError::Connect { location: location.clone(), source })?;
        let budget_pool = PgPoolOptions::new()
            .max_connections(BUDGET_POOL_SIZE)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone().options([(
                "idle_in_transaction_session_timeout",
                format!("{}", BUDGET_HOLD_TIMEOUT.as_millis()),
            )]));
        Ok(PgStore {
            location,
            chain: chain.map(str::to_string),
            options: std::sync::Arc::new(options),
            pool,
            budget_pool,
            health: Default::default(),
            lock_waits: Default::default(),
        })
    }

    fn connect_error(&self, source: sqlx::Error) -> StoreError {
        StoreError::Connect { location: self.location.clone(), source }
    }

    /// The database, for messages (the URL without its password).
    pub(in crate::store) fn location(&self) -> &str {
        &self.location
    }

    /// A write transaction; the time it took to get is recorded like
    /// SQLite's lock waits (a busy pool delays writes the same way).
    pub(super) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let started = std::time::Instant::now();
        let tx = self.pool.begin().await?;
        let waited = started.elapsed();
        self.lock_waits.record(waited, false);
        crate::metrics::store_lock_wait(waited);
        Ok(tx)
    }

    /// The server's clock (`clock_timestamp()`, which moves during a
    /// transaction, unlike `now()`), in milliseconds.
    pub(in crate::store) async fn database_time(&self) -> Result<Option<crate::domain::Instant>, StoreError> {
        let ms: i64 = sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(crate::domain::Instant::from_millis(ms)))
    }

    /// The pool, for reads.
    pub(super) fn readers(&self) -> &PgPool {
        &self.pool
    }

    /// Runs a `DELETE` of up to `limit` rows (bound last, as `$n` where the
    /// statement says) again and again, each its own transaction, until a
    /// chunk comes back short. Returns how many rows were deleted in all.
    pub(super) async fn delete_in_chunks<F>(&self, chunk: F) -> Result<u64, StoreError>
    where
        F: Fn() -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>,
    {
        let mut total = 0;
        loop {
            let done = chunk().bind(PRUNE_CHUNK).execute(&self.pool).await?.rows_affected();
            total += done;
            if done < PRUNE_CHUNK as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    pub(in crate::store) async fn close(&self) {
        self.pool.close().await;
        self.budget_pool.close().await;
    }

    /// A connection of its own that `LISTEN`s for changes.
    pub(in crate::store) async fn change_watcher(&self) -> Result<PgChangeWatcher, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(PgChangeWatcher::start(listener))
    }

    /// The audit chain this handle appends to, when not ''.
    pub(in crate::store) fn chain(&self) -> Option<&str> {
        self.chain.as_deref()
    }

    /// A connection of its own for the leases (see [`LeaseConn`]): renewals
    /// never wait for a pooled connection, however busy the pool is.
    pub(in crate::store) async fn lease_connection(&self) -> Result<LeaseConn, StoreError> {
        LeaseConn::connect(&self.options, &self.location).await
    }
}

/// Notices commits by anyone that leave work due soon (see
/// [`CHANGES_CHANNEL`]), through
/// `LISTEN` on a connection of its own, read by a task of its own. When
/// that connection is lost, notifications sent meanwhile are gone: the
/// watcher then reports a change, so the scheduler looks again, and the
/// listener reconnects.
#[derive(Debug)]
pub struct PgChangeWatcher {
    changed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PgChangeWatcher {
    fn start(mut listener: PgListener) -> PgChangeWatcher {
        use std::sync::atomic::Ordering;
        // Listening already: a commit from now on is reported.
        let changed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&changed);
        let task = tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => flag.store(true, Ordering::Release),
                    // The connection was lost; the next call reconnects.
                    Ok(None) => {
                        tracing::warn!("the database's change notifications were cut off; listening again");
                        flag.store(true, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for the database's changes; trying again in 1 s");
                        flag.store(true, Ordering::Release);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        PgChangeWatcher { changed, task }
    }

    /// True when something was committed since the last call.
    pub async fn changed(&mut self) -> Result<bool, StoreError> {
        Ok(self.changed.swap(false, std::sync::atomic::Ordering::AcqRel))
    }
}

impl Drop for PgChangeWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) use super::rows::session_record;

/// An instant as PostgreSQL takes it (`timestamptz`).
pub(super) fn ts(at: crate::domain::Instant) -> chrono::DateTime<chrono::Utc> {
    at.to_datetime()
}

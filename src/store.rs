//! The SQLite store: the only module that holds SQL.
//!
//! It owns the database file, its pragmas (WAL, `synchronous=FULL`,
//! `busy_timeout`), the embedded migrations, and every query the daemon and the
//! CLI make. The `sessions` table *is* the scheduler's queue (the partial index
//! `sessions_due` orders active sessions by deadline); nothing else keeps a
//! copy of it. All writes go through one connection, and every write
//! transaction starts with a write statement, so SQLite takes the write lock
//! up front and waits (`busy_timeout`) rather than failing when the CLI or
//! another program writes at the same moment.
//!
//! The queue's queries name their partial index (`INDEXED BY`): without
//! statistics SQLite prefers the plain `(state, created_at)` index and would
//! sort every active session to find the next deadline. Naming the index
//! pins the plan, and a query whose index cannot serve it fails loudly.
//!
//! A PostgreSQL back-end would be a second implementation of this module's
//! public methods; nothing outside it names a table.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};

use crate::domain::audit::{AuditEntry, AuditRecord, Checkpoint};
use crate::domain::session::{Adopted, NewSession, Repeatability, Session, SessionRecord};
use crate::domain::{DomainError, Instant, Room, RoomKind, SessionId, SessionState, UserId};
use outbox::{insert_warnings, warnings_of};

pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often opening is retried while another process creates the database
/// (see `open`): 100 ms, 200 ms, ... about 5.5 s in all.
const OPEN_RETRIES: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("database {path}: migration failed: {source}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("no session {0}")]
    NotFound(SessionId),
    #[error("session {id} is {state}; only an active session can be {verb}")]
    NotActive { id: SessionId, state: String, verb: &'static str },
    /// Active again after a restart, but a call for it was sent: the
    /// provider may have acted already, so the session's end is no longer
    /// the caller's to move.
    #[error(
        "session {id} is being enforced: a call for it was sent before the daemon restarted; it can no longer be {verb}"
    )]
    AlreadyCalled { id: SessionId, verb: &'static str },
    #[error("database: {0}")]
    Batch(String),
    #[error(
        "session {id} cannot be extended by {asked_ms} ms: it has been extended by {used_ms} ms and its policy \
         allows {max_ms} ms in all"
    )]
    ExtensionLimit { id: SessionId, used_ms: i64, asked_ms: i64, max_ms: i64 },
    #[error("session {id} in the database is malformed: {reason}")]
    Malformed { id: String, reason: String },
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

impl SessionRecord {
    fn from_row(row: &SqliteRow) -> Result<SessionRecord, sqlx::Error> {
        Ok(SessionRecord {
            id: row.try_get("id")?,
            policy: row.try_get("policy")?,
            provider: row.try_get("provider")?,
            room_id: row.try_get("room_id")?,
            room_kind: row.try_get("room_kind")?,
            user_id: row.try_get("user_id")?,
            started_at: row.try_get("started_at")?,
            deadline: row.try_get("deadline")?,
            state: row.try_get("state")?,
            attempts: row.try_get("attempts")?,
            extended_ms: row.try_get("extended_ms")?,
            detail: row.try_get("detail")?,
            repeatability_id: row.try_get("repeatability_id")?,
            first_sent_at: row.try_get("first_sent_at")?,
            idempotency_key: row.try_get("idempotency_key")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            grace_ms: row.try_get("grace_ms")?,
            ended_at: row.try_get("ended_at")?,
        })
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
        })
    }
}

/// Most registrations committed in one transaction.
const REGISTRAR_BATCH: usize = 256;

struct Registration {
    session: NewSession,
    key: Option<String>,
    detail: &'static str,
    now: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Inserted, StoreError>>,
}

/// A handle for registering sessions through the group-committing task.
#[derive(Debug, Clone)]
pub struct Registrar {
    tx: tokio::sync::mpsc::Sender<Registration>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").field("session", &self.session.id).finish()
    }
}

impl Registrar {
    /// Registers one session (under `key`, if given), committed with
    /// whatever else is waiting.
    pub async fn register(
        &self,
        session: NewSession,
        key: Option<String>,
        now: Instant,
        detail: &'static str,
    ) -> Result<Inserted, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Registration { session, key, detail, now, reply })
            .await
            .map_err(|_| StoreError::Batch("the registration writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Batch("the registration writer has stopped".into()))?
    }
}

/// What registering under an idempotency key did.
#[derive(Debug, Clone)]
pub enum Inserted {
    Created,
    /// The key was used before; this is the session it created.
    Existing(Box<SessionRecord>),
}

/// Which audit rows to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub session: Option<SessionId>,
    /// Rows of sessions in this room (or call), of any kind.
    pub room: Option<String>,
    /// Rows of this participant's sessions.
    pub user: Option<String>,
    pub provider: Option<String>,
    /// Only rows with one of these outcomes; empty means all.
    pub outcomes: Vec<String>,
    /// Only rows with one of these events; empty means all.
    pub events: Vec<String>,
    /// From this instant (inclusive).
    pub since: Option<Instant>,
    /// Until this instant (exclusive).
    pub until: Option<Instant>,
    /// At most this many rows, the newest ones (still printed oldest first).
    pub limit: Option<u32>,
}

/// Counts over a time range, for `callwarden audit summary`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditSummary {
    pub events: Vec<(String, i64)>,
    pub outcomes: Vec<(String, i64)>,
    pub error_codes: Vec<(String, i64)>,
    /// Each session's first provider call's lateness, sorted.
    pub first_call_lateness_ms: Vec<i64>,
}

/// Counts of sessions per state, for progress displays and summaries.
pub type StateCounts = Vec<(String, i64)>;

/// Handle on the database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    /// The single writer connection: SQLite takes one writer at a time anyway,
    /// and one connection makes that explicit and keeps writes in order.
    writer: SqlitePool,
    readers: SqlitePool,
    /// Whether the daemon's database steps are failing right now.
    health: std::sync::Arc<health::StoreHealth>,
}

const SESSION_COLUMNS: &str = "id, policy, provider, room_id, room_kind, user_id, started_at, deadline, \
     state, attempts, extended_ms, detail, repeatability_id, first_sent_at, idempotency_key, created_at, updated_at, \
     grace_ms, ended_at";

pub mod health;
mod outbox;
pub use outbox::{Notification, NotificationSession};

impl Store {
    fn options(path: &Path) -> SqliteConnectOptions {
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
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
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

    async fn open_once(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            // After a failed COMMIT (a full disk), sqlx can lose track of the
            // transaction SQLite still holds open: every later "transaction"
            // becomes a savepoint inside it, reports success and is never
            // committed. A plain BEGIN fails exactly when SQLite is inside a
            // transaction between uses; such a connection is discarded (its
            // open transaction rolled back) and a fresh one opened.
            .before_acquire(|conn, _| {
                Box::pin(async move {
                    if sqlx::query("BEGIN").execute(&mut *conn).await.is_err() {
                        tracing::warn!("the database writer was left inside a transaction; reconnecting");
                        return Ok(false);
                    }
                    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                    Ok(true)
                })
            })
            .connect_with(Self::options(path))
            .await
            .map_err(open_err)?;
        if let Err(source) = sqlx::migrate!("./migrations").run(&writer).await {
            writer.close().await;
            return Err(StoreError::Migrate { path: path.to_path_buf(), source });
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(Self::options(path))
            .await
            .map_err(open_err)?;
        Ok(Store { path: path.to_path_buf(), writer, readers, health: Default::default() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn health(&self) -> &std::sync::Arc<health::StoreHealth> {
        &self.health
    }

    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    /// A connection of its own for watching `PRAGMA data_version`.
    pub async fn change_watcher(&self) -> Result<ChangeWatcher, StoreError> {
        let mut conn = SqliteConnection::connect_with(&Self::options(&self.path)).await?;
        let version = data_version(&mut conn).await?;
        Ok(ChangeWatcher { conn, version })
    }

    // ---- registration and changes -------------------------------------------

    /// Registers sessions, each with a `registered` audit row, all or nothing.
    pub async fn insert_sessions(
        &self,
        sessions: &[NewSession],
        now: Instant,
        detail: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut audit = Vec::with_capacity(sessions.len());
        for s in sessions {
            sqlx::query(
                "INSERT INTO sessions (id, policy, provider, room_id, room_kind, user_id, started_at, deadline, \
                 grace_ms, detail, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)",
            )
            .bind(s.id.to_string())
            .bind(&s.policy)
            .bind(&s.provider)
            .bind(s.room.id_text())
            .bind(s.room.kind().as_str())
            .bind(s.user.as_ref().map(|u| u.as_str().to_string()))
            .bind(s.started_at.to_string())
            .bind(s.deadline.to_string())
            .bind(crate::domain::duration_millis_ceil(s.grace))
            .bind(s.note.as_deref())
            .bind(now.to_string())
            .bind(now.to_string())
            .execute(&mut *tx)
            .await?;
            audit.push((registered_entry(s, detail), now));
        }
        let warnings: Vec<_> = sessions.iter().flat_map(|s| warnings_of(s, now)).collect();
        insert_warnings(&mut tx, &warnings, now).await?;
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A group-committing front for registrations: concurrent callers share
    /// one transaction (and one fsync) instead of queueing for one each.
    /// The task ends when every [`Registrar`] handle is dropped.
    pub fn registrar(&self) -> Registrar {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Registration>(REGISTRAR_BATCH * 4);
        let store = self.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(REGISTRAR_BATCH);
            while rx.recv_many(&mut batch, REGISTRAR_BATCH).await > 0 {
                match store.insert_batch(&batch).await {
                    Ok(results) => {
                        for (r, result) in batch.drain(..).zip(results) {
                            let _ = r.reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        for r in batch.drain(..) {
                            let _ = r.reply.send(Err(StoreError::Batch(reason.clone())));
                        }
                    }
                }
            }
        });
        Registrar { tx }
    }

    /// One transaction for a batch: the sessions in one multi-row INSERT
    /// (a reused idempotency key is skipped and answered with the session it
    /// made), then their `registered` rows, chained in memory, in another.
    async fn insert_batch(&self, batch: &[Registration]) -> Result<Vec<Inserted>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO sessions (id, policy, provider, room_id, room_kind, user_id, started_at, deadline, \
             grace_ms, detail, state, idempotency_key, created_at, updated_at) ",
        );
        q.push_values(batch, |mut b, r| {
            let s = &r.session;
            b.push_bind(s.id.to_string())
                .push_bind(s.policy.clone())
                .push_bind(s.provider.clone())
                .push_bind(s.room.id_text())
                .push_bind(s.room.kind().as_str())
                .push_bind(s.user.as_ref().map(|u| u.as_str().to_string()))
                .push_bind(s.started_at.to_string())
                .push_bind(s.deadline.to_string())
                .push_bind(crate::domain::duration_millis_ceil(s.grace))
                .push_bind(s.note.clone())
                .push("'active'")
                .push_bind(r.key.clone())
                .push_bind(r.now.to_string())
                .push_bind(r.now.to_string());
        });
        q.push(" ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id");
        let inserted: std::collections::HashSet<String> = q
            .build()
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()?;
        let mut results = Vec::with_capacity(batch.len());
        let mut entries = Vec::new();
        let mut warnings = Vec::new();
        for r in batch {
            if inserted.contains(&r.session.id.to_string()) {
                entries.push((registered_entry(&r.session, r.detail), r.now));
                warnings.extend(warnings_of(&r.session, r.now));
                results.push(Inserted::Created);
            } else {
                let row =
                    sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE idempotency_key = ?"))
                        .bind(&r.key)
                        .fetch_one(&mut *tx)
                        .await?;
                results.push(Inserted::Existing(Box::new(SessionRecord::from_row(&row)?)));
            }
        }
        if let Some(r) = batch.first() {
            insert_warnings(&mut tx, &warnings, r.now).await?;
        }
        insert_audit_rows(&mut tx, &entries).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// Appends one audit row on its own (a configuration reload, say).
    pub async fn record_audit(&self, entry: &AuditEntry, now: Instant) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        insert_audit(&mut tx, entry, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Cancels enforcement of an active session: the call ended by itself.
    /// Refused once a call has been sent for it (`attempts > 0`): a session
    /// re-queued after a crash is `active` again, but its call may already
    /// have ended the room.
    pub async fn end_session(&self, id: SessionId, now: Instant, detail: &str) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE sessions SET state = 'cancelled', updated_at = ? WHERE id = ? AND state = 'active' \
             AND attempts = 0",
        )
        .bind(now.to_string())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(self.why_not_active(&mut tx, id, "ended").await);
        }
        insert_audit(&mut tx, &AuditEntry::new("cancelled", id).detail(detail), now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves an active session's deadline later by `by`; returns the new deadline.
    /// `max_total`: the most the session may be extended in all (its
    /// policy's `max_extension`), checked in the same statement. Refused,
    /// like `end_session`, once a call has been sent for the session.
    pub async fn extend_session(
        &self,
        id: SessionId,
        by: Duration,
        max_total: Option<Duration>,
        warn_before: &[Duration],
        now: Instant,
    ) -> Result<Instant, StoreError> {
        let by_ms = crate::domain::duration_millis_ceil(by);
        let max_ms = max_total.map(crate::domain::duration_millis_ceil);
        let mut tx = self.writer.begin().await?;
        // strftime keeps the canonical text form; julianday arithmetic in days.
        let row = sqlx::query(
            "UPDATE sessions SET deadline = strftime('%Y-%m-%dT%H:%M:%fZ', julianday(deadline) + ? / 86400000.0), \
             extended_ms = extended_ms + ?, updated_at = ? WHERE id = ? AND state = 'active' AND attempts = 0 \
             AND deadline IS NOT NULL AND (? IS NULL OR extended_ms + ? <= ?) RETURNING deadline, grace_ms",
        )
        .bind(by_ms)
        .bind(by_ms)
        .bind(now.to_string())
        .bind(id.to_string())
        .bind(max_ms)
        .bind(by_ms)
        .bind(max_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let why = self.why_not_active(&mut tx, id, "extended").await;
            // Still active: then it was the extension limit that refused.
            if let (StoreError::NotActive { state, .. }, Some(max_ms)) = (&why, max_ms)
                && state == "active"
            {
                let used: i64 = sqlx::query_scalar("SELECT extended_ms FROM sessions WHERE id = ?")
                    .bind(id.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
                return Err(StoreError::ExtensionLimit { id, used_ms: used, asked_ms: by_ms, max_ms });
            }
            return Err(why);
        };
        let deadline_text: String = row.try_get("deadline")?;
        let deadline = Instant::parse(&deadline_text)
            .map_err(|e| StoreError::Malformed { id: id.to_string(), reason: e.to_string() })?;
        let grace_ms: i64 = row.try_get("grace_ms")?;
        // The warnings move with the deadline: those not yet sent are
        // replaced, and the points ahead of the new deadline are armed again.
        sqlx::query(
            "DELETE FROM notifications WHERE session_id = ? AND state = 'pending' AND event = 'warning'",
        )
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        let booked_end = Instant::from_millis(deadline.millis() - grace_ms);
        insert_warnings(&mut tx, &outbox::warning_points(id, booked_end, warn_before, now), now).await?;
        insert_audit(
            &mut tx,
            &AuditEntry::new("extended", id)
                .detail(format!("by {}; deadline now {deadline}", humantime::format_duration(by))),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(deadline)
    }

    async fn why_not_active(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        id: SessionId,
        verb: &'static str,
    ) -> StoreError {
        match sqlx::query("SELECT state, attempts FROM sessions WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await
        {
            Ok(Some(row)) => {
                let state: String = row.try_get("state").unwrap_or_default();
                let attempts: i64 = row.try_get("attempts").unwrap_or_default();
                if state == "active" && attempts > 0 {
                    StoreError::AlreadyCalled { id, verb }
                } else {
                    StoreError::NotActive { id, state, verb }
                }
            }
            Ok(None) => StoreError::NotFound(id),
            Err(e) => StoreError::Sql(e),
        }
    }

    // ---- reading --------------------------------------------------------------

    pub async fn session(&self, id: SessionId) -> Result<SessionRecord, StoreError> {
        let row = sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.readers)
            .await?
            .ok_or(StoreError::NotFound(id))?;
        Ok(SessionRecord::from_row(&row)?)
    }

    pub async fn list_sessions(
        &self,
        state: Option<SessionState>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = match state {
            Some(state) => sqlx::query(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE state = ? ORDER BY deadline, created_at LIMIT ?"
            ))
            .bind(state.as_str())
            .bind(limit)
            .fetch_all(&self.readers)
            .await?,
            None => {
                sqlx::query(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions ORDER BY deadline, created_at LIMIT ?"
                ))
                .bind(limit)
                .fetch_all(&self.readers)
                .await?
            }
        };
        Ok(rows.iter().map(SessionRecord::from_row).collect::<Result<_, _>>()?)
    }

    pub async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        let rows = sqlx::query("SELECT state, count(*) AS n FROM sessions GROUP BY state ORDER BY state")
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT * FROM (SELECT id, at, session_id, event, provider, action, attempt, outcome, http_status, \
             provider_request_id, error_code, detail, latency_ms, lateness_ms, prev_hash, hash \
             FROM audit_log WHERE 1 = 1",
        );
        if let Some(id) = filter.session {
            q.push(" AND session_id = ").push_bind(id.to_string());
        }
        if filter.room.is_some() || filter.user.is_some() {
            q.push(" AND session_id IN (SELECT id FROM sessions WHERE 1 = 1");
            if let Some(room) = &filter.room {
                q.push(" AND room_id = ").push_bind(room.clone());
            }
            if let Some(user) = &filter.user {
                q.push(" AND user_id = ").push_bind(user.clone());
            }
            q.push(")");
        }
        if let Some(provider) = &filter.provider {
            q.push(" AND provider = ").push_bind(provider.clone());
        }
        for (column, values) in [("outcome", &filter.outcomes), ("event", &filter.events)] {
            if !values.is_empty() {
                q.push(format!(" AND {column} IN ("));
                let mut list = q.separated(", ");
                for v in values {
                    list.push_bind(v.clone());
                }
                q.push(")");
            }
        }
        if let Some(since) = filter.since {
            q.push(" AND at >= ").push_bind(since.to_string());
        }
        if let Some(until) = filter.until {
            q.push(" AND at < ").push_bind(until.to_string());
        }
        // Newest `limit` rows, then back to oldest first.
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(filter.limit.map_or(-1, i64::from))
            .push(") ORDER BY id");
        let rows = q.build().fetch_all(&self.readers).await?;
        rows.iter().map(audit_record).collect::<Result<_, sqlx::Error>>().map_err(StoreError::from)
    }

    /// Counts per event, outcome and error code, and first-call lateness,
    /// for rows in `[since, until)`.
    pub async fn audit_summary(&self, since: Instant, until: Instant) -> Result<AuditSummary, StoreError> {
        let counts = |column: &'static str| {
            format!(
                "SELECT {column} AS k, count(*) AS n FROM audit_log WHERE at >= ? AND at < ? AND {column} IS NOT NULL \
                 GROUP BY {column} ORDER BY n DESC, k"
            )
        };
        let mut summary = AuditSummary::default();
        for (column, out) in [
            ("event", &mut summary.events),
            ("outcome", &mut summary.outcomes),
            ("error_code", &mut summary.error_codes),
        ] {
            let rows = sqlx::query(&counts(column))
                .bind(since.to_string())
                .bind(until.to_string())
                .fetch_all(&self.readers)
                .await?;
            for r in rows {
                out.push((r.try_get("k")?, r.try_get("n")?));
            }
        }
        let rows = sqlx::query(
            "SELECT lateness_ms FROM audit_log WHERE id IN ( \
               SELECT min(id) FROM audit_log WHERE lateness_ms IS NOT NULL AND at >= ? AND at < ? GROUP BY session_id) \
             ORDER BY lateness_ms",
        )
        .bind(since.to_string())
        .bind(until.to_string())
        .fetch_all(&self.readers)
        .await?;
        summary.first_call_lateness_ms =
            rows.iter().map(|r| r.try_get("lateness_ms")).collect::<Result<_, sqlx::Error>>()?;
        Ok(summary)
    }

    /// Audit rows with an id above `after`, oldest first, at most `limit`:
    /// for walking the whole log in pages.
    pub async fn audit_page(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, session_id, event, provider, action, attempt, outcome, http_status, \
             provider_request_id, error_code, detail, latency_ms, lateness_ms, prev_hash, hash \
             FROM audit_log WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(audit_record).collect::<Result<_, sqlx::Error>>().map_err(StoreError::from)
    }

    /// The last retention checkpoint: where verification of the remaining
    /// audit rows starts.
    pub async fn audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT at, last_id, last_hash, rows_pruned, signature FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.readers)
        .await?;
        Ok(match row {
            Some(r) => Some(Checkpoint {
                at: r.try_get("at")?,
                last_id: r.try_get("last_id")?,
                last_hash: r.try_get("last_hash")?,
                rows_pruned: r.try_get("rows_pruned")?,
                signature: r.try_get("signature")?,
            }),
            None => None,
        })
    }

    /// Deletes settled sessions last updated before `before`, in batches, and
    /// settled notifications of the same age. Returns how many sessions.
    pub async fn prune_sessions(&self, before: Instant) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions INDEXED BY sessions_state \
                 WHERE state IN ('enforced', 'already_ended', 'failed', 'cancelled', 'shadowed') AND updated_at < ? LIMIT 5000)",
            )
            .bind(before.to_string())
            .execute(&self.writer)
            .await?;
            total += done.rows_affected();
            if done.rows_affected() < 5000 {
                break;
            }
        }
        // Settled notifications go with the sessions of their time; pending
        // ones stay whatever their age.
        sqlx::query("DELETE FROM notifications WHERE state <> 'pending' AND updated_at < ?")
            .bind(before.to_string())
            .execute(&self.writer)
            .await?;
        Ok(total)
    }

    /// Prunes audit rows written before `before`: records a checkpoint with
    /// the last pruned row's id and hash (signed by `sign`), deletes up to
    /// it, and appends a `pruned` row to the chain. Returns the checkpoint,
    /// or `None` when nothing was old enough.
    pub async fn prune_audit(
        &self,
        before: Instant,
        now: Instant,
        sign: impl Fn(&Checkpoint) -> Option<String>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let last = sqlx::query(
            "SELECT id, hash, (SELECT count(*) FROM audit_log b WHERE b.id <= a.id) AS n \
             FROM audit_log a WHERE at < ? AND hash IS NOT NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(before.to_string())
        .fetch_optional(&self.readers)
        .await?;
        let Some(last) = last else { return Ok(None) };
        let mut checkpoint = Checkpoint {
            at: now.to_string(),
            last_id: last.try_get("id")?,
            last_hash: last.try_get::<Option<String>, _>("hash")?.unwrap_or_default(),
            rows_pruned: last.try_get("n")?,
            signature: None,
        };
        checkpoint.signature = sign(&checkpoint);
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (at, last_id, last_hash, rows_pruned, signature) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&checkpoint.at)
        .bind(checkpoint.last_id)
        .bind(&checkpoint.last_hash)
        .bind(checkpoint.rows_pruned)
        .bind(&checkpoint.signature)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM audit_log WHERE id <= ?").bind(checkpoint.last_id).execute(&mut *tx).await?;
        let entry = AuditEntry {
            event: "pruned",
            detail: Some(format!(
                "{} audit rows written before {before} pruned; checkpoint at row {} ({})",
                checkpoint.rows_pruned,
                checkpoint.last_id,
                if checkpoint.signature.is_some() { "signed" } else { "unsigned" }
            )),
            ..AuditEntry::default()
        };
        insert_audit(&mut tx, &entry, now).await?;
        tx.commit().await?;
        Ok(Some(checkpoint))
    }

    /// A consistent copy of the live database at `path` (`VACUUM INTO`),
    /// safe while the daemon runs. Refuses to overwrite an existing file.
    pub async fn backup(&self, path: &Path) -> Result<(), StoreError> {
        if path.exists() {
            return Err(StoreError::Batch(format!("{} exists; choose a new file", path.display())));
        }
        sqlx::query("VACUUM INTO ?").bind(path.display().to_string()).execute(&self.readers).await?;
        Ok(())
    }

    // ---- the scheduler's queue ----------------------------------------------

    /// Rows inserted with plain SQL that still need a provider or a deadline.
    pub async fn unadopted(&self, limit: u32) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions INDEXED BY sessions_unadopted WHERE state = 'active' \
             AND (provider IS NULL OR deadline IS NULL) ORDER BY created_at LIMIT ?"
        ))
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(SessionRecord::from_row).collect::<Result<_, sqlx::Error>>().map_err(StoreError::from)
    }

    /// Settles a batch of plain-SQL rows in one transaction: each adopted
    /// row gets its provider, deadline and grace (and its warnings, and a
    /// `registered` row); each rejected one becomes `failed` with its reason.
    /// One commit per batch, so a stream of inserts does not hold the write
    /// lock once per row. Returns how many were adopted.
    pub async fn adopt_batch(
        &self,
        adopted: &[Adopted],
        rejected: &[(String, String)],
        now: Instant,
    ) -> Result<usize, StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut audit = Vec::with_capacity(adopted.len() + rejected.len());
        let mut count = 0;
        for a in adopted {
            let done = sqlx::query(
                "UPDATE sessions SET provider = ?, deadline = ?, grace_ms = ?, updated_at = ? \
                 WHERE id = ? AND state = 'active' AND (provider IS NULL OR deadline IS NULL)",
            )
            .bind(&a.provider)
            .bind(a.deadline.to_string())
            .bind(crate::domain::duration_millis_ceil(a.grace))
            .bind(now.to_string())
            .bind(&a.id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                continue;
            }
            count += 1;
            if let Ok(sid) = a.id.parse::<SessionId>() {
                let booked_end = a.deadline.saturating_sub(a.grace);
                insert_warnings(&mut tx, &outbox::warning_points(sid, booked_end, &a.warn_before, now), now)
                    .await?;
            }
            let entry = AuditEntry {
                session_id: a.id.parse().ok(),
                provider: Some(a.provider.clone()),
                event: "registered",
                detail: Some(format!("inserted with SQL; adopted with deadline {}", a.deadline)),
                ..AuditEntry::default()
            };
            audit.push((entry, now));
        }
        for (id, reason) in rejected {
            audit.push((fail_row(&mut tx, id, reason, now).await?, now));
        }
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(count)
    }

    /// Refuses a row that cannot be scheduled (unknown policy, bad room...):
    /// it becomes `failed` with the reason, and the audit log says why.
    pub async fn reject(&self, id: &str, reason: &str, now: Instant) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let entry = fail_row(&mut tx, id, reason, now).await?;
        insert_audit(&mut tx, &entry, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The earliest deadline among adopted active sessions.
    pub async fn next_deadline(&self) -> Result<Option<Instant>, StoreError> {
        let row = sqlx::query(
            "SELECT deadline FROM sessions INDEXED BY sessions_due WHERE state = 'active' \
             AND deadline IS NOT NULL AND provider IS NOT NULL ORDER BY deadline LIMIT 1",
        )
        .fetch_optional(&self.readers)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let text: String = row.try_get("deadline")?;
                Instant::parse(&text)
                    .map(Some)
                    .map_err(|e| StoreError::Malformed { id: "?".into(), reason: e.to_string() })
            }
        }
    }

    /// Claims up to `limit` sessions due by `horizon`, most overdue first,
    /// moving them from `active` to `enforcing` in one statement. Rows that
    /// fail to parse are returned as errors for the caller to reject.
    pub async fn claim_due(
        &self,
        horizon: Instant,
        now: Instant,
        limit: u32,
    ) -> Result<Vec<Result<Session, (String, String)>>, StoreError> {
        let rows = sqlx::query(&format!(
            "UPDATE sessions SET state = 'enforcing', updated_at = ? WHERE id IN ( \
               SELECT id FROM sessions INDEXED BY sessions_due \
               WHERE state = 'active' AND deadline <= ? AND provider IS NOT NULL \
               ORDER BY deadline LIMIT ?) RETURNING {SESSION_COLUMNS}"
        ))
        .bind(now.to_string())
        .bind(horizon.to_string())
        .bind(limit)
        .fetch_all(&self.writer)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = SessionRecord::from_row(row)?;
            out.push(record.to_session().map_err(|e| (record.id.clone(), e.to_string())));
        }
        // RETURNING has no order; restore deadline order.
        out.sort_by_key(|r| r.as_ref().map(|s| s.deadline).unwrap_or(Instant::from_millis(i64::MIN)));
        Ok(out)
    }

    /// After a crash or stop, puts sessions whose enforcement was under way
    /// back in the queue; returns how many. Their deadlines have passed, so
    /// they are the first to be claimed again.
    pub async fn requeue_interrupted(&self, now: Instant, why: &str) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await?;
        let rows = sqlx::query(
            "UPDATE sessions INDEXED BY sessions_enforcing SET state = 'active', updated_at = ? \
             WHERE state = 'enforcing' RETURNING id, provider",
        )
        .bind(now.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let mut audit = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            let entry = AuditEntry {
                session_id: id.parse().ok(),
                provider: row.try_get("provider")?,
                event: "recovered",
                detail: Some(why.to_string()),
                ..AuditEntry::default()
            };
            audit.push((entry, now));
        }
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Hands claimed sessions back to the queue (shutdown while they waited).
    /// `unsent`: the last recorded attempt never left (it was waiting for its
    /// deadline or the rate limit), so it is taken off the attempt count.
    pub async fn release(
        &self,
        ids: &[SessionId],
        unsent: bool,
        now: Instant,
        why: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut audit = Vec::new();
        for id in ids {
            let done = sqlx::query(
                "UPDATE sessions SET state = 'active', attempts = max(attempts - ?, 0), updated_at = ? \
                 WHERE id = ? AND state = 'enforcing'",
            )
            .bind(i64::from(unsent))
            .bind(now.to_string())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                audit.push((AuditEntry::new("interrupted", *id).detail(why), now));
            }
        }
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- provider webhooks: presence ------------------------------------------

    /// Records a webhook event about a room (`participant` empty) or a
    /// participant, if it is newer than the last one recorded for the same
    /// key. Returns false for a duplicate or an event that arrived out of
    /// order, which should then change nothing.
    pub async fn record_presence_if_newer(
        &self,
        provider: &str,
        room: &Room,
        participant: &str,
        event_ms: i64,
        event: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO presence (provider, room_kind, room_id, participant, last_event_ms, last_event) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (provider, room_kind, room_id, participant) DO UPDATE \
             SET last_event_ms = excluded.last_event_ms, last_event = excluded.last_event \
             WHERE excluded.last_event_ms > presence.last_event_ms",
        )
        .bind(provider)
        .bind(room.kind().as_str())
        .bind(room.id_text())
        .bind(participant)
        .bind(event_ms)
        .bind(event)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The last event recorded for a room or participant: (time, event).
    pub async fn last_event(
        &self,
        provider: &str,
        room: &Room,
        participant: &str,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT last_event_ms, last_event FROM presence \
             WHERE provider = ? AND room_kind = ? AND room_id = ? AND participant = ?",
        )
        .bind(provider)
        .bind(room.kind().as_str())
        .bind(room.id_text())
        .bind(participant)
        .fetch_optional(&self.readers)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("last_event_ms")?, r.try_get("last_event")?)),
            None => None,
        })
    }

    /// Registers a session opened by a webhook, unless the same policy
    /// already has an active session for that room and participant (an event
    /// delivered twice, or a second entry). Returns whether it was added.
    pub async fn open_unless_active(
        &self,
        s: &NewSession,
        now: Instant,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "INSERT INTO sessions (id, policy, provider, room_id, room_kind, user_id, started_at, deadline, \
             grace_ms, detail, state, created_at, updated_at) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ? WHERE NOT EXISTS ( \
               SELECT 1 FROM sessions INDEXED BY sessions_active_room WHERE state = 'active' \
               AND room_id = ? AND room_kind = ? AND policy = ? AND user_id IS ?)",
        )
        .bind(s.id.to_string())
        .bind(&s.policy)
        .bind(&s.provider)
        .bind(s.room.id_text())
        .bind(s.room.kind().as_str())
        .bind(s.user.as_ref().map(|u| u.as_str().to_string()))
        .bind(s.started_at.to_string())
        .bind(s.deadline.to_string())
        .bind(crate::domain::duration_millis_ceil(s.grace))
        .bind(s.note.as_deref())
        .bind(now.to_string())
        .bind(now.to_string())
        .bind(s.room.id_text())
        .bind(s.room.kind().as_str())
        .bind(&s.policy)
        .bind(s.user.as_ref().map(|u| u.as_str().to_string()))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_warnings(&mut tx, &warnings_of(s, now), now).await?;
        insert_audit(&mut tx, &registered_entry(s, detail), now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends the active sessions of a room (`user` None: all of them; Some:
    /// that participant's) of one provider, because the provider reported
    /// the room closed or the participant gone. No provider call; audit
    /// event `ended`. Returns the sessions ended.
    pub async fn end_active(
        &self,
        provider: &str,
        room: &Room,
        user: Option<&UserId>,
        now: Instant,
        detail: &str,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let rows = sqlx::query(
            "UPDATE sessions INDEXED BY sessions_active_room SET state = 'cancelled', detail = ?, updated_at = ? \
             WHERE state = 'active' AND room_id = ? AND room_kind = ? AND provider = ? \
             AND (? IS NULL OR user_id = ?) RETURNING id",
        )
        .bind(detail)
        .bind(now.to_string())
        .bind(room.id_text())
        .bind(room.kind().as_str())
        .bind(provider)
        .bind(user.map(|u| u.as_str().to_string()))
        .bind(user.map(|u| u.as_str().to_string()))
        .fetch_all(&mut *tx)
        .await?;
        let mut ended = Vec::with_capacity(rows.len());
        let mut audit = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            if let Ok(id) = id.parse::<SessionId>() {
                let entry =
                    AuditEntry { provider: Some(provider.to_string()), ..AuditEntry::new("ended", id) };
                audit.push((entry.detail(detail), now));
                ended.push(id);
            }
        }
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// The participants with an active session in a room, for diffing a
    /// provider's full roster.
    pub async fn active_participants(&self, provider: &str, room: &Room) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT user_id FROM sessions INDEXED BY sessions_active_room WHERE state = 'active' \
             AND room_id = ? AND room_kind = ? AND provider = ? AND user_id IS NOT NULL",
        )
        .bind(room.id_text())
        .bind(room.kind().as_str())
        .bind(provider)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| r.try_get("user_id"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    // ---- provider outcome reports ----------------------------------------------

    /// Settles a session the provider accepted, now that it reported the
    /// outcome. Also taken from `enforcing`: a report can overtake the
    /// record of the request's own answer. Returns false when the session is
    /// unknown or already settled (a duplicate report), and writes nothing.
    pub async fn confirm_session(
        &self,
        id: SessionId,
        state: SessionState,
        entry: &AuditEntry,
        now: Instant,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query(
            "UPDATE sessions SET state = ?, detail = ?, updated_at = ? \
             WHERE id = ? AND state IN ('accepted', 'enforcing') RETURNING provider",
        )
        .bind(state.as_str())
        .bind(&entry.detail)
        .bind(now.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let provider: Option<String> = row.try_get("provider")?;
        insert_audit(&mut tx, &AuditEntry { session_id: Some(id), provider, ..entry.clone() }, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The call ended: every session of it that the provider had accepted is
    /// enforced. Returns how many.
    pub async fn confirm_call(
        &self,
        call: &str,
        entry: &AuditEntry,
        now: Instant,
    ) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await?;
        let rows = sqlx::query(
            "UPDATE sessions INDEXED BY sessions_accepted SET state = 'enforced', detail = ?, updated_at = ? \
             WHERE state = 'accepted' AND room_id = ? AND room_kind = 'call' RETURNING id, provider",
        )
        .bind(&entry.detail)
        .bind(now.to_string())
        .bind(call)
        .fetch_all(&mut *tx)
        .await?;
        let mut audit = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            let e = AuditEntry {
                session_id: id.parse().ok(),
                provider: row.try_get("provider")?,
                ..entry.clone()
            };
            audit.push((e, now));
        }
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    // ---- enforcement records ------------------------------------------------

    /// Records that a provider call is about to be made for these sessions:
    /// their attempt counters go up and each gets an `attempt` row. Written
    /// (and synced) before the call, so after a crash the log shows a call
    /// that may have reached the provider. `repeatability`, when given, is a
    /// newly chosen ACS Repeatability-Request-ID and First-Sent pair, stored
    /// in the same commit, so a call is never sent under a pair a restart
    /// would not find again.
    pub async fn record_attempt(
        &self,
        ids: &[SessionId],
        entry: &AuditEntry,
        repeatability: Option<Repeatability>,
        now: Instant,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            sqlx::query(
                "UPDATE sessions SET attempts = attempts + 1, updated_at = ?, \
                 repeatability_id = coalesce(?, repeatability_id), first_sent_at = coalesce(?, first_sent_at) \
                 WHERE id = ?",
            )
            .bind(now.to_string())
            .bind(repeatability.map(|r| r.request_id.to_string()))
            .bind(repeatability.map(|r| Instant::floor(r.first_sent).to_string()))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
            rows.push((AuditEntry { session_id: Some(*id), ..entry.clone() }, now));
        }
        insert_audit_rows(&mut tx, &rows).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a provider answer, and when `final_state` is given, settles the
    /// sessions in it. `entries` pairs each session with its own row (their
    /// lateness differs).
    pub async fn record_outcome(
        &self,
        entries: &[AuditEntry],
        final_state: Option<(SessionState, Option<&str>)>,
        now: Instant,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for entry in entries {
            if let (Some((state, detail)), Some(id)) = (final_state, entry.session_id) {
                sqlx::query(
                    "UPDATE sessions SET state = ?, detail = ?, updated_at = ? WHERE id = ? AND state = 'enforcing'",
                )
                .bind(state.as_str())
                .bind(detail)
                .bind(now.to_string())
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            }
        }
        let rows: Vec<_> = entries.iter().map(|e| (e.clone(), now)).collect();
        insert_audit_rows(&mut tx, &rows).await?;
        tx.commit().await?;
        Ok(())
    }
}

fn audit_record(r: &SqliteRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        session_id: r.try_get("session_id")?,
        event: r.try_get("event")?,
        provider: r.try_get("provider")?,
        action: r.try_get("action")?,
        attempt: r.try_get("attempt")?,
        outcome: r.try_get("outcome")?,
        http_status: r.try_get("http_status")?,
        provider_request_id: r.try_get("provider_request_id")?,
        error_code: r.try_get("error_code")?,
        detail: r.try_get("detail")?,
        latency_ms: r.try_get("latency_ms")?,
        lateness_ms: r.try_get("lateness_ms")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// Marks a row that cannot be scheduled `failed` with the reason; returns
/// the `rejected` audit row for the caller to write.
async fn fail_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    reason: &str,
    now: Instant,
) -> Result<AuditEntry, sqlx::Error> {
    sqlx::query(
        "UPDATE sessions SET state = 'failed', detail = ?, updated_at = ? WHERE id = ? AND state IN ('active', 'enforcing')",
    )
    .bind(reason)
    .bind(now.to_string())
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(AuditEntry {
        session_id: id.parse().ok(),
        event: "rejected",
        detail: Some(format!("session {id}: {reason}")),
        ..AuditEntry::default()
    })
}

fn registered_entry(s: &NewSession, detail: &str) -> AuditEntry {
    AuditEntry {
        provider: Some(s.provider.clone()),
        ..AuditEntry::new("registered", s.id).detail(format!(
            "policy {} room {} {}deadline {}{}; {detail}{}",
            s.policy,
            s.room,
            s.user.as_ref().map(|u| format!("user {u} ")).unwrap_or_default(),
            s.deadline,
            if s.grace.is_zero() {
                String::new()
            } else {
                format!(" (with {} grace)", humantime::format_duration(s.grace))
            },
            s.note.as_ref().map(|n| format!("; {n}")).unwrap_or_default(),
        ))
    }
}

/// Appends an audit row, chained to the previous one. Every caller holds the
/// write lock already (its transaction wrote first), so "the previous row"
/// cannot change under it, even with the CLI writing from another process.
async fn insert_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    e: &AuditEntry,
    now: Instant,
) -> Result<(), sqlx::Error> {
    insert_audit_rows(tx, &[(e.clone(), now)]).await
}

/// Appends audit rows in order, each chained to the one before: the chain's
/// head is read once, and the rows go in as one multi-row INSERT.
async fn insert_audit_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    entries: &[(AuditEntry, Instant)],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let last = sqlx::query("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let (mut id, mut prev_hash) = match last {
        Some(row) => {
            (row.try_get::<i64, _>("id")?, row.try_get::<Option<String>, _>("hash")?.unwrap_or_default())
        }
        None => (0, String::new()),
    };
    let mut records = Vec::with_capacity(entries.len());
    for (e, now) in entries {
        id += 1;
        let mut record = AuditRecord {
            id,
            at: now.to_string(),
            session_id: e.session_id.map(|id| id.to_string()),
            event: e.event.to_string(),
            provider: e.provider.clone(),
            action: e.action.clone(),
            attempt: e.attempt.map(i64::from),
            outcome: e.outcome.map(str::to_string),
            http_status: e.http_status.map(i64::from),
            provider_request_id: e.provider_request_id.clone(),
            error_code: e.error_code.clone(),
            detail: e.detail.clone(),
            latency_ms: e.latency_ms,
            lateness_ms: e.lateness_ms,
            prev_hash: Some(prev_hash.clone()),
            hash: None,
        };
        let hash = crate::domain::audit::chain_hash(&prev_hash, &record);
        record.hash = Some(hash.clone());
        prev_hash = hash;
        records.push(record);
    }
    // SQLite takes at most 32,766 bound values per statement: 16 a row.
    for chunk in records.chunks(1000) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO audit_log (id, at, session_id, event, provider, action, attempt, outcome, http_status, \
             provider_request_id, error_code, detail, latency_ms, lateness_ms, prev_hash, hash) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.id)
                .push_bind(r.at.clone())
                .push_bind(r.session_id.clone())
                .push_bind(r.event.clone())
                .push_bind(r.provider.clone())
                .push_bind(r.action.clone())
                .push_bind(r.attempt)
                .push_bind(r.outcome.clone())
                .push_bind(r.http_status)
                .push_bind(r.provider_request_id.clone())
                .push_bind(r.error_code.clone())
                .push_bind(r.detail.clone())
                .push_bind(r.latency_ms)
                .push_bind(r.lateness_ms)
                .push_bind(r.prev_hash.clone())
                .push_bind(r.hash.clone());
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn data_version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("PRAGMA data_version").fetch_one(conn).await
}

/// Notices commits made by any other connection, this process's writer
/// included, through `PRAGMA data_version`: one cheap read per poll.
#[derive(Debug)]
pub struct ChangeWatcher {
    conn: SqliteConnection,
    version: i64,
}

impl ChangeWatcher {
    /// True when something was committed since the last call.
    pub async fn changed(&mut self) -> Result<bool, StoreError> {
        let v = data_version(&mut self.conn).await?;
        let changed = v != self.version;
        self.version = v;
        Ok(changed)
    }
}

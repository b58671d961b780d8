//! The store: every read and write of durable state, as operations on domain
//! types. The only module with SQL; nothing above it names a table or a
//! database engine.
//!
//! [`Store`] is an enum over the backends; each operation is declared once
//! in the `operations!` list below (that list *is* the interface) and forwarded to
//! the backend, which holds the SQL, the pragmas or settings, the migrations
//! and the change watcher: SQLite ([`sqlite`]), the embedded default, and
//! PostgreSQL ([`postgres`]). `tests/store_conformance.rs` runs the same
//! tests against the interface for both.
//!
//! The `sessions` table *is* the scheduler's queue; nothing else keeps a copy
//! of it. Every state change is a conditional write (`WHERE state = …`), so
//! two writers (the daemon, the CLI, an app's own SQL) never undo each
//! other's work.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::budget::{Budget, Standing, Usage};
use crate::domain::audit::{AuditEntry, AuditRecord, Checkpoint, Head};
use crate::domain::lease::{Led, SOLE_TERM};
use crate::domain::session::{Adopted, NewSession, Repeatability, Session, SessionCursor, SessionRecord};
use crate::domain::{Instant, Room, SessionId, SessionState, UserId};

mod attempt_writer;
pub mod copy;
mod error;
mod group_commit;
pub mod health;
pub mod lock_waits;
pub mod postgres;
mod presence_writer;
mod registrar;
pub mod rows;
pub mod sqlite;
mod warnings;

use crate::config::Database;
pub use attempt_writer::{Attempt, AttemptWriter};
pub use error::StoreError;
pub use presence_writer::{PresenceChange, PresenceMark, PresenceWrite, PresenceWriter};
pub use registrar::{Pending, Registrar};

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

/// A notification claimed for delivery.
#[derive(Debug, Clone)]
pub struct Notification {
    pub id: i64,
    pub delivery_id: String,
    pub session_id: String,
    /// `warning`, or the outcome: `enforced`, `already_ended`, `failed`, `shadowed`.
    pub event: String,
    pub warn_before_ms: Option<i64>,
    pub detail: Option<String>,
    /// Deliveries tried before this one.
    pub attempts: u32,
    /// The session it is about (none if it was pruned meanwhile).
    pub session: Option<SessionRecord>,
}

/// Handle on the database, whichever backend holds it. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// The one daemon's hold on its database (see [`Store::lock_database`]),
/// released when dropped or when the process exits.
#[derive(Debug)]
pub enum DaemonLock {
    Sqlite(sqlite::DaemonLock),
    /// A database several daemons share (PostgreSQL): nothing is held;
    /// leases decide who enforces what.
    Shared,
}

impl DaemonLock {
    /// Holds the lock until `shutdown`.
    pub async fn keep(self, shutdown: &tokio_util::sync::CancellationToken) {
        shutdown.cancelled().await;
        drop(self);
    }
}

impl Store {
    /// Opens (creating if missing) and migrates the SQLite database at `path`.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(sqlite::SqliteStore::open(path).await?))
    }

    /// Opens and migrates the configured database, whichever backend:
    /// a SQLite file is created if missing; a PostgreSQL database must
    /// exist (its tables are created).
    pub async fn connect(db: &Database) -> Result<Store, StoreError> {
        Store::connect_as(db, None).await
    }

    /// [`Store::connect`] for a daemon instance named `instance`: on a
    /// database several daemons share, its audit rows go to a chain of its
    /// own (PostgreSQL), so that instances never wait for each other to
    /// append. An embedded database has one chain.
    pub async fn connect_as(db: &Database, instance: Option<&str>) -> Result<Store, StoreError> {
        match db {
            Database::Sqlite(path) => Store::open(path).await,
            Database::Postgres(url) => {
                Ok(Store::Postgres(postgres::PgStore::open(url.expose(), url.password(), instance).await?))
            }
        }
    }

    /// The instance name this handle was connected as, on a database
    /// several daemons share ([`Store::connect_as`]).
    pub fn instance(&self) -> Option<&str> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => s.chain(),
        }
    }

    /// [`Store::open_existing`] for the configured database.
    pub async fn connect_existing(db: &Database, older_ok: bool) -> Result<Store, StoreError> {
        match db {
            Database::Sqlite(path) => Store::open_existing(path, older_ok).await,
            Database::Postgres(url) => Ok(Store::Postgres(
                postgres::PgStore::open_existing(url.expose(), url.password(), older_ok).await?,
            )),
        }
    }

    /// Opens an existing database for a command that only reads (`audit`,
    /// `session list`, `budget`, `backup`): never creates or migrates it,
    /// and refuses a schema other than this build's, or (with `older_ok`,
    /// for `backup`) a newer one.
    pub async fn open_existing(path: &Path, older_ok: bool) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(sqlite::SqliteStore::open_existing(path, older_ok).await?))
    }

    /// Makes this process the one daemon on the SQLite database at `path`,
    /// before anything touches it: a second daemon would re-queue the first
    /// one's calls under way and send them again, and double the provider's
    /// rate. Held until the returned lock is dropped or the process exits,
    /// however it exits (the kernel releases it). A PostgreSQL database is
    /// shared by several daemons: nothing to hold ([`DaemonLock::Shared`]).
    pub async fn lock_database(db: &Database) -> Result<DaemonLock, StoreError> {
        match db {
            Database::Sqlite(path) => Ok(DaemonLock::Sqlite(sqlite::lock_database(path)?)),
            Database::Postgres(_) => Ok(DaemonLock::Shared),
        }
    }

    /// [`Store::lock_database`] for the database this handle is on.
    pub async fn lock_daemon(&self) -> Result<DaemonLock, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(DaemonLock::Sqlite(sqlite::lock_database(s.path())?)),
            Store::Postgres(_) => Ok(DaemonLock::Shared),
        }
    }

    /// A connection for leases, on a database several daemons share
    /// (PostgreSQL); `None` for an embedded one, whose one daemon leads
    /// everything.
    pub async fn lease_connection(&self) -> Result<Option<postgres::LeaseConn>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(s) => Ok(Some(s.lease_connection().await?)),
        }
    }

    /// Locks `users`' budgets under `policy` for every daemon on a shared
    /// database until the guard is dropped (see
    /// [`postgres::PgBudgetGuard`]); `None` on an embedded one, whose one
    /// daemon's own lock suffices.
    pub async fn hold_budgets(
        &self,
        policy: &str,
        users: &[&str],
    ) -> Result<Option<postgres::PgBudgetGuard>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(s) => Ok(Some(s.hold_budgets(policy, users).await?)),
        }
    }

    /// [`Store::next_deadline_for`] everything (the one daemon).
    pub async fn next_deadline(&self) -> Result<Option<Instant>, StoreError> {
        self.next_deadline_for(&Led::Sole).await
    }

    /// [`Store::claim_for`] everything, under [`SOLE_TERM`] (the one daemon).
    pub async fn claim_due(
        &self,
        horizon: Instant,
        now: Instant,
        limit: u32,
    ) -> Result<Vec<Result<Session, (String, String)>>, StoreError> {
        self.claim_for(&Led::Sole, horizon, now, limit).await
    }

    /// [`Store::release_as`] under [`SOLE_TERM`].
    pub async fn release(
        &self,
        ids: &[SessionId],
        unsent: bool,
        now: Instant,
        why: &str,
    ) -> Result<(), StoreError> {
        self.release_as(SOLE_TERM, ids, unsent, now, why).await
    }

    /// [`Store::record_attempt_as`] under [`SOLE_TERM`].
    pub async fn record_attempt(
        &self,
        ids: &[SessionId],
        entry: &AuditEntry,
        repeatability: Option<Repeatability>,
        now: Instant,
    ) -> Result<(), StoreError> {
        self.record_attempt_as(SOLE_TERM, ids, entry, repeatability, now).await
    }

    /// [`Store::record_outcome_as`] under [`SOLE_TERM`].
    pub async fn record_outcome(
        &self,
        entries: &[AuditEntry],
        final_state: Option<(SessionState, Option<&str>)>,
        now: Instant,
    ) -> Result<(), StoreError> {
        self.record_outcome_as(SOLE_TERM, entries, final_state, now).await
    }

    /// Where the data lives, for messages: the file, or the URL without
    /// its password.
    pub fn location(&self) -> String {
        match self {
            Store::Sqlite(s) => s.path().display().to_string(),
            Store::Postgres(s) => s.location().to_string(),
        }
    }

    /// Applies a batch of presence events in one transaction: each event is
    /// recorded and applied, or (a duplicate or stale event) changes nothing
    /// and answers `None`. When an event fails, the batch is tried again
    /// one event per transaction, so the failing event is rolled back alone
    /// (its mark too, so a retry of it is applied) and answers its error,
    /// and the others commit. See [`PresenceWriter`].
    pub async fn apply_presence(
        &self,
        batch: &[PresenceWrite],
    ) -> Result<Vec<Result<Option<u32>, StoreError>>, StoreError> {
        match self.apply_presence_all(batch).await {
            Ok(answers) => Ok(answers.into_iter().map(Ok).collect()),
            Err(e) if batch.len() == 1 => Ok(vec![Err(e)]),
            Err(_) => {
                let mut answers = Vec::with_capacity(batch.len());
                for write in batch {
                    let one = self.apply_presence_all(std::slice::from_ref(write)).await;
                    answers.push(one.map(|mut answer| answer.pop().flatten()));
                }
                Ok(answers)
            }
        }
    }

    /// Where a user stands against a policy's budget now: its window (in
    /// `tz`) that contains `now`, and the time used in it.
    pub async fn budget_standing(
        &self,
        policy: &str,
        budget: Budget,
        tz: chrono_tz::Tz,
        user: &UserId,
        now: Instant,
    ) -> Result<Standing, StoreError> {
        let (start, end) = budget.window.bounds(tz, now);
        let usage = self.budget_used(policy, user, (start, end), now).await?;
        Ok(Standing {
            window_start: start,
            window_end: end,
            used: usage.used,
            booked: usage.booked,
            limit: budget.limit,
        })
    }

    /// The SQLite file, when that is the backend.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Store::Sqlite(s) => Some(s.path()),
            Store::Postgres(_) => None,
        }
    }

    /// Whether the daemon's database steps are failing right now.
    pub fn health(&self) -> &Arc<health::StoreHealth> {
        match self {
            Store::Sqlite(s) => &s.health,
            Store::Postgres(s) => &s.health,
        }
    }

    /// How long writes waited for the database's write lock lately.
    pub fn lock_waits(&self) -> &Arc<lock_waits::LockWaits> {
        match self {
            Store::Sqlite(s) => &s.lock_waits,
            Store::Postgres(s) => &s.lock_waits,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }

    /// A group-committing front for registrations: concurrent callers share
    /// one transaction (and one fsync) instead of queueing for one each.
    /// The task ends when every [`Registrar`] handle is dropped.
    pub fn registrar(&self) -> Registrar {
        Registrar::start(self.clone())
    }

    /// The writer of enforcement's attempt records (see [`AttemptWriter`]).
    /// A batching task ends when every handle is dropped.
    pub fn attempt_writer(&self) -> AttemptWriter {
        AttemptWriter::start(self.clone())
    }

    /// A group-committing front for presence events (see [`PresenceWriter`]).
    /// The task ends when every handle is dropped.
    pub fn presence_writer(&self) -> PresenceWriter {
        PresenceWriter::start(self.clone())
    }

    /// Watches for commits made by anyone (this daemon, the CLI, an app's
    /// own SQL), so the scheduler wakes for them.
    pub async fn change_watcher(&self) -> Result<ChangeWatcher, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(ChangeWatcher::Sqlite(s.change_watcher().await?)),
            Store::Postgres(s) => Ok(ChangeWatcher::Postgres(s.change_watcher().await?)),
        }
    }
}

/// Notices commits made by any connection; see [`Store::change_watcher`].
#[derive(Debug)]
pub enum ChangeWatcher {
    Sqlite(sqlite::DataVersionWatcher),
    Postgres(postgres::PgChangeWatcher),
}

impl ChangeWatcher {
    /// Whether anything was committed since the last call.
    pub async fn changed(&mut self) -> Result<bool, StoreError> {
        match self {
            ChangeWatcher::Sqlite(w) => w.changed().await,
            ChangeWatcher::Postgres(w) => w.changed().await,
        }
    }
}

/// Declares each store operation once and forwards it to the backend.
macro_rules! operations {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Store {
            $(
                $(#[$doc])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Store::Sqlite(s) => s.$name($($arg),*).await,
                        Store::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

operations! {
    // ---- registration and changes
    /// Registers sessions, each with a `registered` audit row and its
    /// warnings, all or nothing.
    fn insert_sessions(&self, sessions: &[NewSession], now: Instant, detail: &str) -> Result<(), StoreError>;
    /// One transaction for a registrar's batch; a reused idempotency key is
    /// answered with the session it made.
    fn insert_batch(&self, batch: &[Pending]) -> Result<Vec<Inserted>, StoreError>;
    /// Ends an active session without enforcing it (`cancelled`).
    fn end_session(&self, id: SessionId, now: Instant, detail: &str) -> Result<(), StoreError>;
    /// Moves an active session's deadline by `by`, within `max_extension` in
    /// all, re-arming its warnings; returns the new deadline.
    fn extend_session(
        &self,
        id: SessionId,
        by: Duration,
        max_total: Option<Duration>,
        warn_before: &[Duration],
        now: Instant,
    ) -> Result<Instant, StoreError>;
    fn session(&self, id: SessionId) -> Result<SessionRecord, StoreError>;
    /// Sessions in deadline order (then creation), optionally of one state.
    /// Sessions ordered by (deadline, created_at, id), rows not yet adopted
    /// (no deadline) first; starting after `after`, at most `limit`.
    fn list_sessions(&self, state: Option<SessionState>, after: Option<&SessionCursor>, limit: u32) -> Result<Vec<SessionRecord>, StoreError>;
    /// Sessions per state; the store keeps the counts as it writes, so this
    /// costs the same at a million sessions as at ten.
    fn state_counts(&self) -> Result<StateCounts, StoreError>;
    /// Deletes settled sessions that ended before `before`.
    fn prune_sessions(&self, before: Instant) -> Result<u64, StoreError>;
    /// A consistent copy of the whole database at `path`.
    fn backup(&self, path: &Path) -> Result<(), StoreError>;

    // ---- the audit log
    /// Appends one audit row on its own (a configuration reload, say).
    fn record_audit(&self, entry: &AuditEntry, now: Instant) -> Result<(), StoreError>;
    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;
    fn audit_summary(&self, since: Instant, until: Instant) -> Result<AuditSummary, StoreError>;
    /// Rows after `after` in id order, for verifying the chain page by page.
    fn audit_page(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// [`Store::audit_page`] with each row's chain ('' on an embedded
    /// database, which has one).
    fn audit_chain_page(&self, after: i64, limit: u32) -> Result<Vec<(String, AuditRecord)>, StoreError>;
    /// Each chain's last retention checkpoint.
    fn audit_checkpoints(&self) -> Result<Vec<(String, Checkpoint)>, StoreError>;
    /// The last retention checkpoint, where the chain now starts.
    fn audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;
    /// Records a signed head of the chain (`sign` makes it from the time,
    /// the last row's id and hash), unless one names that row already.
    fn record_audit_head(&self, now: Instant, sign: impl Fn(String, i64, String) -> Head) -> Result<Option<Head>, StoreError>;
    /// The signed heads naming rows after `after_id`, in id order.
    fn audit_heads(&self, after_id: i64) -> Result<Vec<Head>, StoreError>;
    /// Deletes audit rows before `before` behind a checkpoint signed with `sign`.
    fn prune_audit(
        &self,
        before: Instant,
        now: Instant,
        sign: impl Fn(&Checkpoint) -> Option<String>,
    ) -> Result<Option<Checkpoint>, StoreError>;

    // ---- the scheduler's queue
    /// Rows inserted with plain SQL that the daemon has not adopted yet; a
    /// row that cannot be read comes back as its id and the reason.
    fn unadopted(&self, limit: u32) -> Result<Vec<Result<SessionRecord, (String, String)>>, StoreError>;
    /// Fills in adopted rows and fails rejected ones, in one transaction,
    /// if the database lets it write within `patience`; returns how many
    /// were adopted, or `None` (nothing written) when it did not.
    fn adopt_batch(&self, adopted: &[Adopted], rejected: &[(String, String)], now: Instant, patience: Duration) -> Result<Option<usize>, StoreError>;
    /// Fails one row that cannot be scheduled, with the reason.
    fn reject(&self, id: &str, reason: &str, now: Instant) -> Result<(), StoreError>;
    /// The earliest deadline of an active session of what `led` covers.
    fn next_deadline_for(&self, led: &Led) -> Result<Option<Instant>, StoreError>;
    /// Claims (`active` → `enforcing`) up to `limit` sessions of what `led`
    /// covers, due by `horizon`, most overdue first, each stamped with its
    /// bucket's term (a bucket whose lease has run out, by the database's
    /// clock, is not claimed); a row that cannot be read comes back as its
    /// id and the reason.
    fn claim_for(&self, led: &Led, horizon: Instant, now: Instant, limit: u32) -> Result<Vec<Result<Session, (String, String)>>, StoreError>;
    /// At start, the one daemon: every `enforcing` session back to
    /// `active`, with a `recovered` audit row.
    fn requeue_interrupted(&self, now: Instant, why: &str) -> Result<u64, StoreError>;
    /// A lease on `bucket` granted under `term`: the bucket's sessions
    /// `enforcing` under an older term back to `active`, stamped with
    /// `term`, each with a `recovered` audit row.
    fn take_over(&self, bucket: &str, term: i64, now: Instant, why: &str) -> Result<u64, StoreError>;
    /// Several instances: the active sessions due before `overdue` whose
    /// provider no running instance leads (not in `configured`, no live
    /// lease on its bucket) become `failed`, with the reason, up to
    /// `limit` of them; how many. Nothing on an embedded database.
    fn fail_unled(&self, configured: &[String], overdue: Instant, now: Instant, limit: u32) -> Result<u64, StoreError>;
    /// Gives claimed sessions back to the queue (shutdown, or a provider
    /// that is gone); `unsent`: no call for them left. Fenced by `term`.
    fn release_as(&self, term: i64, ids: &[SessionId], unsent: bool, now: Instant, why: &str) -> Result<(), StoreError>;
    /// Records an attempt (and a newly chosen repeatability pair) before
    /// the call, in one commit. Fenced: [`StoreError::Fenced`], and nothing
    /// written, when a session no longer carries `term`.
    fn record_attempt_as(
        &self,
        term: i64,
        ids: &[SessionId],
        entry: &AuditEntry,
        repeatability: Option<Repeatability>,
        now: Instant,
    ) -> Result<(), StoreError>;
    /// Records an answer: its audit rows, and the final state when it
    /// settles. Fenced by `term`, as [`Store::record_attempt_as`].
    fn record_outcome_as(
        &self,
        term: i64,
        entries: &[AuditEntry],
        final_state: Option<(SessionState, Option<&str>)>,
        now: Instant,
    ) -> Result<(), StoreError>;

    // ---- presence and outcome reports
    /// One transaction for a batch of presence events, all or nothing: each
    /// event is recorded and applied, or (a duplicate or stale event)
    /// changes nothing and answers `None`. See [`Store::apply_presence`].
    fn apply_presence_all(&self, batch: &[PresenceWrite]) -> Result<Vec<Option<u32>>, StoreError>;
    /// Forgets the webhook history (the last event per room and participant)
    /// older than `before_ms`, in short transactions; returns how many rows.
    fn prune_presence(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// The last event recorded for a room or participant: its time and name.
    fn last_event(&self, provider: &str, room: &Room, participant: &str) -> Result<Option<(i64, String)>, StoreError>;
    /// Participants with an active session in the room.
    fn active_participants(&self, provider: &str, room: &Room) -> Result<Vec<String>, StoreError>;
    /// How many sessions are active in the room.
    fn active_in_room(&self, provider: &str, room: &Room) -> Result<u64, StoreError>;
    /// The latest session of `policy` for the room (and `user`) that a
    /// webhook or the API ended at or after `since`: its id and deadline.
    fn ended_session(&self, provider: &str, room: &Room, user: Option<&str>, policy: &str, since: Instant) -> Result<Option<(SessionId, Instant)>, StoreError>;
    /// Settles an accepted (or still enforcing) session on an outcome report.
    fn confirm_session(&self, id: SessionId, state: SessionState, entry: &AuditEntry, now: Instant) -> Result<bool, StoreError>;
    /// Settles `enforced` (audit `unconfirmed`) the removals `provider`
    /// accepted before `accepted_before` whose outcome report never came.
    fn settle_unconfirmed(&self, provider: &str, accepted_before: Instant, now: Instant, detail: &str) -> Result<u64, StoreError>;
    /// Settles the accepted removals of a call that ended.
    fn confirm_call(&self, call: &str, entry: &AuditEntry, now: Instant) -> Result<u64, StoreError>;

    // ---- the notification outbox
    /// Whether the outcome trigger queues events (notifications configured).
    fn set_outcome_notifications(&self, on: bool) -> Result<(), StoreError>;
    fn next_notification_due(&self) -> Result<Option<Instant>, StoreError>;
    /// Claims due notifications under a lease.
    fn claim_notifications(&self, now: Instant, lease: Duration, limit: u32) -> Result<Vec<Notification>, StoreError>;
    fn notification_delivered(&self, n: &Notification, status: u16, now: Instant) -> Result<(), StoreError>;
    fn notification_failed(&self, n: &Notification, error: &str, now: Instant) -> Result<(), StoreError>;
    fn notification_obsolete(&self, n: &Notification, now: Instant) -> Result<(), StoreError>;
    fn notification_retry(&self, n: &Notification, at: Instant, error: &str, now: Instant) -> Result<(), StoreError>;

    // ---- the database's clock
    /// The database server's clock now, where it has one of its own
    /// (PostgreSQL); `None` for an embedded database, which runs on the
    /// daemon's host.
    fn database_time(&self) -> Result<Option<Instant>, StoreError>;

    // ---- budgets
    /// Time a user spent under a policy within a window, and the time its
    /// running sessions have booked beyond now.
    fn budget_used(&self, policy: &str, user: &UserId, window: (Instant, Instant), now: Instant) -> Result<Usage, StoreError>;
}

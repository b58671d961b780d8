//! What a store operation can fail with, for both backends: the database
//! unavailable or refusing, a session in the wrong state, a schema of
//! another version, a write fenced off by a newer lease term.

use std::path::PathBuf;

use crate::domain::SessionId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    /// A PostgreSQL database that cannot be reached or refused the login.
    #[error("database {location}: {source}")]
    Connect {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database {location}: migration failed: {source}")]
    MigrateAt {
        location: String,
        #[source]
        source: sqlx::migrate::MigrateError,
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
    /// The group-commit writer failed a whole batch, or has stopped.
    #[error("database: {0}")]
    Batch(String),
    #[error("database: {} exists; choose a new file", .0.display())]
    BackupExists(PathBuf),
    #[error("database {}: no such file (the daemon or `callwarden session start` creates it)", .0.display())]
    Missing(PathBuf),
    #[error(
        "database {0}: callwarden's tables are not there yet (`callwarden run` or `callwarden session start` creates them)"
    )]
    Uninitialised(String),
    /// `backup` of a PostgreSQL database.
    #[error(
        "database {0}: PostgreSQL is backed up with its own tools: `pg_dump --format=custom` for a copy, \
         or the server's base backups and WAL archiving for point-in-time recovery"
    )]
    NoFileBackup(String),
    /// A command that only reads found another schema than its own.
    #[error(
        "database {}: schema v{found} is {} this callwarden's v{ours}; {}",
        .path.display(),
        if .found > .ours { "newer than" } else { "older than" },
        if .found > .ours {
            "use the callwarden that upgraded it, or upgrade this one"
        } else {
            "`callwarden run` upgrades it (take `callwarden backup` first); reading commands leave the schema alone"
        }
    )]
    Schema { path: PathBuf, found: i64, ours: i64 },
    /// As `Schema`, for a database named by URL.
    #[error(
        "database {location}: schema v{found} is {} this callwarden's v{ours}; {}",
        if .found > .ours { "newer than" } else { "older than" },
        if .found > .ours {
            "use the callwarden that upgraded it, or upgrade this one"
        } else {
            "`callwarden run` upgrades it (take a `pg_dump` first); reading commands leave the schema alone"
        }
    )]
    SchemaAt { location: String, found: i64, ours: i64 },
    /// Another daemon runs on this database (see [`Store::lock_database`](crate::store::Store::lock_database)).
    #[error(
        "database {}: another callwarden daemon is running on it{holder} (it holds {}); one daemon \
         per SQLite database: stop the other one first",
        .path.display(), .lock.display()
    )]
    InUse { path: PathBuf, lock: PathBuf, holder: String },
    /// A write about a session's enforcement by a leader that no longer
    /// leads its bucket: another instance took it over (under a later
    /// term), and this write is not made.
    #[error(
        "session {id} was taken over by another instance (its lease term is {current}, this writer's {term}); not written"
    )]
    Fenced { id: SessionId, term: i64, current: i64 },
    #[error(
        "session {id} cannot be extended by {asked_ms} ms: it has been extended by {used_ms} ms and its policy \
         allows {max_ms} ms in all"
    )]
    ExtensionLimit { id: SessionId, used_ms: i64, asked_ms: i64, max_ms: i64 },
    /// `db copy` from anything but SQLite, or into anything but PostgreSQL.
    #[error("db copy copies a SQLite database into a PostgreSQL one (PostgreSQL to PostgreSQL: pg_dump)")]
    CopyUnsupported,
    #[error("database {0}: it holds callwarden data already; db copy fills an empty database only")]
    CopyTargetNotEmpty(String),
    #[error("session {id} in the database is malformed: {reason}")]
    Malformed { id: String, reason: String },
}

impl StoreError {
    /// The database refused the row itself (a constraint it breaks), as
    /// opposed to being unavailable: the caller's input is at fault, and
    /// trying again cannot help.
    pub fn is_refusal(&self) -> bool {
        use sqlx::error::ErrorKind;
        matches!(self, StoreError::Sql(sqlx::Error::Database(db))
            if matches!(db.kind(), ErrorKind::CheckViolation | ErrorKind::NotNullViolation | ErrorKind::ForeignKeyViolation))
    }
}

//! Database rows as the tests read and write them with plain SQL: sessions,
//! audit entries, and the states and events that settle them. The queries
//! take the pool; tests call them through [`Harness`](super::Harness).

use std::collections::BTreeMap;

use callwarden::domain::audit::AuditRecord;
use callwarden::domain::session::SessionRecord;
use callwarden::store::sqlite::audit_record;
use sqlx::SqlitePool;

use super::time::{ms_of, text_of};

/// Session states after which nothing more happens.
pub const FINAL_STATES: [&str; 5] = ["enforced", "already_ended", "failed", "cancelled", "expired"];
/// Audit events that settle an enforcement.
pub const FINAL_EVENTS: [&str; 3] = ["enforced", "already_ended", "failed"];

/// A `sessions` row, read with the library's own row type.
pub type SessionRow = SessionRecord;

/// A session's deadline in milliseconds; panics when it has none.
pub trait DeadlineMs {
    fn deadline_ms(&self) -> i64;
}

impl DeadlineMs for SessionRow {
    fn deadline_ms(&self) -> i64 {
        ms_of(self.deadline.as_deref().unwrap_or_else(|| panic!("session {} has no deadline", self.id)))
    }
}

/// An `audit_log` row, read with the library's own row type.
pub type AuditRow = AuditRecord;

/// A row to insert with plain SQL, as another program would.
#[derive(Debug, Clone, Default)]
pub struct SqlSession {
    pub policy: String,
    pub room_id: String,
    pub room_kind: String,
    pub user_id: Option<String>,
    /// Left to the column default when `None`.
    pub started_at: Option<String>,
    pub deadline: Option<String>,
}

impl SqlSession {
    pub fn dismiss(room: u32, deadline_ms: i64) -> SqlSession {
        SqlSession {
            policy: "consultation".into(),
            room_id: room.to_string(),
            room_kind: "numeric".into(),
            deadline: Some(text_of(deadline_ms)),
            ..SqlSession::default()
        }
    }
}

pub(super) async fn session(db: &SqlitePool, id: &str) -> SessionRow {
    let row = sqlx::query("SELECT * FROM sessions WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no session {id}"));
    SessionRecord::from_row(&row).unwrap()
}

pub(super) async fn sessions(db: &SqlitePool) -> Vec<SessionRow> {
    let rows = sqlx::query("SELECT * FROM sessions ORDER BY deadline, id").fetch_all(db).await.unwrap();
    rows.iter().map(|r| SessionRecord::from_row(r).unwrap()).collect()
}

pub(super) async fn audit(db: &SqlitePool) -> Vec<AuditRow> {
    let rows = sqlx::query("SELECT * FROM audit_log ORDER BY id").fetch_all(db).await.unwrap();
    rows.iter().map(|r| audit_record(r).unwrap()).collect()
}

pub(super) async fn audit_of(db: &SqlitePool, id: &str) -> Vec<AuditRow> {
    let rows = sqlx::query("SELECT * FROM audit_log WHERE session_id = ? ORDER BY id")
        .bind(id)
        .fetch_all(db)
        .await
        .unwrap();
    rows.iter().map(|r| audit_record(r).unwrap()).collect()
}

/// A session's stored ACS repeatability pair: `(repeatability_id, first_sent_at)`.
pub(super) async fn repeatability_of(db: &SqlitePool, id: &str) -> (Option<String>, Option<String>) {
    sqlx::query_as("SELECT repeatability_id, first_sent_at FROM sessions WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no session {id}"))
}

/// Session count per state.
pub(super) async fn state_counts(db: &SqlitePool) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM sessions GROUP BY state").fetch_all(db).await.unwrap();
    rows.into_iter().collect()
}

/// Row counts of `sessions` and `audit_log`.
pub(super) async fn row_counts(db: &SqlitePool) -> (i64, i64) {
    let sessions = sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(db).await.unwrap();
    let audit = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log").fetch_one(db).await.unwrap();
    (sessions, audit)
}

/// Inserts `rows` with plain SQL in one transaction; returns their ids.
pub(super) async fn insert(db: &SqlitePool, rows: &[SqlSession]) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let mut ids = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = sqlx::query_scalar(
            "INSERT INTO sessions (policy, room_id, room_kind, user_id, started_at, deadline) \
             VALUES (?, ?, ?, ?, COALESCE(?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), ?) RETURNING id",
        )
        .bind(&r.policy)
        .bind(&r.room_id)
        .bind(&r.room_kind)
        .bind(&r.user_id)
        .bind(&r.started_at)
        .bind(&r.deadline)
        .fetch_one(&mut *tx)
        .await?;
        ids.push(id);
    }
    tx.commit().await?;
    Ok(ids)
}

//! Database rows as the tests read and write them with plain SQL: sessions,
//! audit entries, and the states and events that settle them.

use super::time::{ms_of, text_of};

/// Session states after which nothing more happens.
pub const FINAL_STATES: [&str; 4] = ["enforced", "already_ended", "failed", "cancelled"];
/// Audit events that settle an enforcement.
pub const FINAL_EVENTS: [&str; 3] = ["enforced", "already_ended", "failed"];

/// A `sessions` row, every column a test may look at.
#[derive(Debug, Clone, sqlx::FromRow)]
#[allow(dead_code)]
pub struct SessionRow {
    pub id: String,
    pub policy: String,
    pub provider: Option<String>,
    pub room_id: String,
    pub room_kind: String,
    pub user_id: Option<String>,
    pub started_at: String,
    pub deadline: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub extended_ms: i64,
    pub detail: Option<String>,
}

impl SessionRow {
    pub fn deadline_ms(&self) -> i64 {
        ms_of(self.deadline.as_deref().unwrap_or_else(|| panic!("session {} has no deadline", self.id)))
    }
}

/// An `audit_log` row.
#[derive(Debug, Clone, sqlx::FromRow)]
#[allow(dead_code)]
pub struct AuditRow {
    pub id: i64,
    pub at: String,
    pub session_id: Option<String>,
    pub event: String,
    pub provider: Option<String>,
    pub action: Option<String>,
    pub attempt: Option<i64>,
    pub outcome: Option<String>,
    pub http_status: Option<i64>,
    pub provider_request_id: Option<String>,
    pub error_code: Option<String>,
    pub detail: Option<String>,
    pub latency_ms: Option<i64>,
    pub lateness_ms: Option<i64>,
}

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

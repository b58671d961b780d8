//! Sessions as the core handles them: one to register ([`NewSession`]), one
//! ready for scheduling ([`Session`]), a plain-SQL row once adopted
//! ([`Adopted`]), and the ACS idempotency key an enforcement carries
//! ([`Repeatability`]).

use std::time::Duration;

use serde::Serialize;

use super::audit::AuditEntry;
use super::{Instant, Room, SessionId, SessionState, UserId};

/// A session ready for scheduling: adopted, typed, valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub policy: String,
    pub provider: String,
    pub room: Room,
    pub user: Option<UserId>,
    pub started_at: Instant,
    pub deadline: Instant,
    pub state: SessionState,
    pub attempts: u32,
    /// The ACS repeatability pair of this enforcement, once chosen.
    pub repeatability: Option<Repeatability>,
    /// The term of the lease it was claimed under (see
    /// [`lease`](super::lease)): every write about its enforcement is made
    /// only while the row still carries it.
    pub term: i64,
}

/// A plain-SQL row as the scheduler decided to schedule it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub id: String,
    pub provider: String,
    pub deadline: Instant,
    pub grace: Duration,
    pub warn_before: Vec<Duration>,
}

/// A session to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub id: SessionId,
    pub policy: String,
    pub provider: String,
    pub room: Room,
    pub user: Option<UserId>,
    pub started_at: Instant,
    /// When enforcement happens: the end of the booked time plus `grace`.
    pub deadline: Instant,
    /// The part of the deadline that is the policy's grace.
    pub grace: Duration,
    /// The policy's `warn_before` points, each armed as a notification due
    /// that long before the end of the booked time (those already past are
    /// skipped).
    pub warn_before: Vec<Duration>,
    /// Why the limit is what it is, when a budget shortened it.
    pub note: Option<String>,
}

impl NewSession {
    /// The end of the booked time: the deadline less the grace.
    pub fn booked_end(&self) -> Instant {
        self.deadline.saturating_sub(self.grace)
    }

    /// Its `registered` audit row, saying what was decided.
    pub fn registered_entry(&self, detail: &str) -> AuditEntry {
        AuditEntry {
            provider: Some(self.provider.clone()),
            ..AuditEntry::new("registered", self.id).detail(format!(
                "policy {} room {} {}deadline {}{}; {detail}{}",
                self.policy,
                self.room,
                self.user.as_ref().map(|u| format!("user {u} ")).unwrap_or_default(),
                self.deadline,
                if self.grace.is_zero() {
                    String::new()
                } else {
                    format!(" (with {} grace)", humantime::format_duration(self.grace))
                },
                self.note.as_ref().map(|n| format!("; {n}")).unwrap_or_default(),
            ))
        }
    }
}

/// How long ACS remembers a Repeatability-Request-ID (its repeatable-requests
/// page): a send under an id first sent longer ago must use a new one.
pub const REPEATABILITY_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// ACS's idempotency key: chosen once per enforcement, stored before the
/// first try, and sent unchanged on every retry and after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeatability {
    pub request_id: uuid::Uuid,
    pub first_sent: chrono::DateTime<chrono::Utc>,
}

impl Repeatability {
    pub fn new(now: chrono::DateTime<chrono::Utc>) -> Repeatability {
        // First-Sent travels at one-second precision; keep exactly what is sent.
        let first_sent = chrono::DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
        Repeatability { request_id: uuid::Uuid::new_v4(), first_sent }
    }

    /// Whether ACS no longer remembers this id (first sent more than five
    /// minutes ago, its repeatable-requests window): the next send needs a
    /// new one. Safe, because a participant already removed or a call
    /// already ended answers 404/8522.
    pub fn expired(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        (now - self.first_sent).to_std().is_ok_and(|age| age > REPEATABILITY_WINDOW)
    }
}

/// Where a page of the session list ends: the last row's deadline (none
/// for a row not yet adopted), creation time and id. The list is ordered by
/// these three, so the next page starts strictly after it. Travels as an
/// opaque token (`next` in the API, `after` to ask for the next page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCursor {
    pub deadline: Option<String>,
    pub created_at: String,
    pub id: String,
}

impl SessionCursor {
    /// The cursor after `row`.
    pub fn after(row: &SessionRecord) -> SessionCursor {
        SessionCursor {
            deadline: row.deadline.clone(),
            created_at: row.created_at.clone(),
            id: row.id.clone(),
        }
    }

    /// The token: base64url of the three fields, one per line.
    pub fn token(&self) -> String {
        use base64::Engine;
        let text = format!("{}\n{}\n{}", self.deadline.as_deref().unwrap_or(""), self.created_at, self.id);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    /// Reads a token; `None` for anything [`SessionCursor::token`] did not
    /// make, a token whose times are not times included (a database that
    /// compares them as times would refuse the query, not the token).
    pub fn parse(token: &str) -> Option<SessionCursor> {
        use base64::Engine;
        if token.len() > 1024 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.split('\n');
        let (deadline, created_at, id) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || created_at.is_empty() || id.is_empty() {
            return None;
        }
        if Instant::parse(created_at).is_err() || (!deadline.is_empty() && Instant::parse(deadline).is_err())
        {
            return None;
        }
        Some(SessionCursor {
            deadline: (!deadline.is_empty()).then(|| deadline.to_string()),
            created_at: created_at.to_string(),
            id: id.to_string(),
        })
    }
}

/// A session row as stored, for listing: shown even when malformed.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
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
    pub repeatability_id: Option<String>,
    pub first_sent_at: Option<String>,
    /// The client's key when registered through the API with one.
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The part of `deadline` that is grace after the booked time.
    pub grace_ms: i64,
    /// When it settled; none while it runs.
    pub ended_at: Option<String>,
}

impl SessionRecord {
    /// The end of the booked time (the deadline less the grace), when the
    /// row has a readable deadline.
    pub fn booked_end(&self) -> Option<Instant> {
        let deadline = Instant::parse(self.deadline.as_deref()?).ok()?;
        Some(Instant::from_millis(deadline.millis().saturating_sub(self.grace_ms)))
    }

    /// The row a just-registered session was stored as.
    pub fn registered(s: &NewSession, key: Option<String>, now: Instant) -> SessionRecord {
        SessionRecord {
            id: s.id.to_string(),
            policy: s.policy.clone(),
            provider: Some(s.provider.clone()),
            room_id: s.room.id_text(),
            room_kind: s.room.kind().as_str().to_string(),
            user_id: s.user.as_ref().map(|u| u.as_str().to_string()),
            started_at: s.started_at.to_string(),
            deadline: Some(s.deadline.to_string()),
            state: "active".into(),
            attempts: 0,
            extended_ms: 0,
            detail: s.note.clone(),
            repeatability_id: None,
            first_sent_at: None,
            idempotency_key: key,
            created_at: now.to_string(),
            updated_at: now.to_string(),
            grace_ms: super::duration_millis_ceil(s.grace),
            ended_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Repeatability;

    #[test]
    fn a_repeatability_id_expires_after_acs_five_minute_window() {
        let sent = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let r = Repeatability::new(sent);
        assert!(!r.expired(sent + chrono::TimeDelta::seconds(300)));
        assert!(r.expired(sent + chrono::TimeDelta::seconds(301)));
    }
}

//! What provider webhooks tell: the last event time per room and
//! participant (so duplicates and stale events change nothing), sessions
//! opened and ended by presence, and outcome reports that settle accepted
//! removals.

use sqlx::{QueryBuilder, Row, Sqlite};

use super::SqliteStore;
use super::audit_log::{insert_audit, insert_audit_rows};
use super::outbox::{insert_warnings, warnings_of};
use super::sessions::{NEW_SESSION_COLUMNS, push_new_session};
use crate::domain::audit::AuditEntry;
use crate::domain::session::NewSession;
use crate::domain::{Instant, Room, SessionId, SessionState, UserId};
use crate::store::StoreError;

impl SqliteStore {
    /// Records a webhook event about a room (`participant` empty) or a
    /// participant, if it is newer than the last one recorded for the same
    /// key. Returns false for a duplicate or an event that arrived out of
    /// order, which should then change nothing.
    pub(in crate::store) async fn record_presence_if_newer(
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
    pub(in crate::store) async fn last_event(
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
    pub(in crate::store) async fn open_unless_active(
        &self,
        s: &NewSession,
        now: Instant,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO sessions ({NEW_SESSION_COLUMNS}) SELECT "));
        push_new_session(&mut q.separated(", "), s, now);
        q.push(
            " WHERE NOT EXISTS (SELECT 1 FROM sessions INDEXED BY sessions_active_room WHERE state = 'active' \
             AND room_id = ",
        )
        .push_bind(s.room.id_text())
        .push(" AND room_kind = ")
        .push_bind(s.room.kind().as_str())
        .push(" AND policy = ")
        .push_bind(s.policy.clone())
        .push(" AND user_id IS ")
        .push_bind(s.user.as_ref().map(|u| u.as_str().to_string()))
        .push(")");
        let done = q.build().execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_warnings(&mut tx, &warnings_of(s, now), now).await?;
        insert_audit(&mut tx, &s.registered_entry(detail), now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends the active sessions of a room (`user` None: all of them; Some:
    /// that participant's) of one provider, because the provider reported
    /// the room closed or the participant gone. No provider call; audit
    /// event `ended`. Returns the sessions ended.
    pub(in crate::store) async fn end_active(
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
    pub(in crate::store) async fn active_participants(
        &self,
        provider: &str,
        room: &Room,
    ) -> Result<Vec<String>, StoreError> {
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

    /// Settles a session the provider accepted, now that it reported the
    /// outcome. Also taken from `enforcing`: a report can overtake the
    /// record of the request's own answer. Returns false when the session is
    /// unknown or already settled (a duplicate report), and writes nothing.
    pub(in crate::store) async fn confirm_session(
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
    pub(in crate::store) async fn confirm_call(
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
}

//! What provider webhooks tell: the last event time per room and
//! participant (so duplicates and stale events change nothing), sessions
//! opened and ended by presence, and outcome reports that settle accepted
//! removals.

use sqlx::{QueryBuilder, Row, Sqlite};

use super::SqliteStore;
use super::audit_log::{insert_audit, insert_audit_rows};
use super::outbox::insert_warnings;
use super::sessions::{NEW_SESSION_COLUMNS, push_new_session};
use crate::domain::audit::AuditEntry;
use crate::domain::session::NewSession;
use crate::domain::{Instant, Room, SessionId, SessionState, UserId};
use crate::store::warnings::{WarningRow, warnings_of};
use crate::store::{PresenceChange, PresenceWrite, StoreError};

impl SqliteStore {
    /// Applies a batch of presence events in one transaction, all or
    /// nothing. Each event costs the writer two statements (its mark, its
    /// change); the audit rows and warnings of the whole batch go in at the
    /// end, one chained insert for all. If any event fails, nothing is
    /// written and its error is returned (`Store::apply_presence` then
    /// tries the events one by one).
    pub(in crate::store) async fn apply_presence_all(
        &self,
        batch: &[PresenceWrite],
    ) -> Result<Vec<Option<u32>>, StoreError> {
        let mut tx = self.write_tx().await?;
        match apply_all(&mut tx, batch).await {
            Ok(answers) => {
                tx.commit().await?;
                Ok(answers)
            }
            Err(e) => {
                tx.rollback().await?;
                Err(e)
            }
        }
    }

    /// Deletes presence rows whose last event is older than `before_ms`,
    /// [`PRUNE_CHUNK`](super::PRUNE_CHUNK) per transaction.
    pub(in crate::store) async fn prune_presence(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.delete_in_chunks(|| {
            sqlx::query(
                "DELETE FROM presence WHERE (provider, room_kind, room_id, participant) IN \
                 (SELECT provider, room_kind, room_id, participant FROM presence WHERE last_event_ms < ? LIMIT ?)",
            )
            .bind(before_ms)
        })
        .await
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

    /// The session of `policy` for this room (and participant, or the room
    /// itself when `user` is `None`) that was ended (`cancelled`) at or
    /// after `since`, the latest first: what a reconnect resumes.
    pub(in crate::store) async fn ended_session(
        &self,
        provider: &str,
        room: &Room,
        user: Option<&str>,
        policy: &str,
        since: Instant,
    ) -> Result<Option<(SessionId, Instant)>, StoreError> {
        let row = sqlx::query(
            "SELECT id, deadline FROM sessions INDEXED BY sessions_room_cancelled \
             WHERE state = 'cancelled' AND room_id = ? AND room_kind = ? AND updated_at >= ? \
             AND provider = ? AND policy = ? AND user_id IS ? ORDER BY updated_at DESC LIMIT 1",
        )
        .bind(room.id_text())
        .bind(room.kind().as_str())
        .bind(since.to_string())
        .bind(provider)
        .bind(policy)
        .bind(user)
        .fetch_optional(&self.readers)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        let deadline: Option<String> = row.try_get("deadline")?;
        let (Ok(id), Some(Ok(deadline))) = (id.parse::<SessionId>(), deadline.as_deref().map(Instant::parse))
        else {
            return Ok(None);
        };
        Ok(Some((id, deadline)))
    }

    /// How many sessions are active in a room (under `provider`).
    pub(in crate::store) async fn active_in_room(
        &self,
        provider: &str,
        room: &Room,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions INDEXED BY sessions_active_room WHERE state = 'active' \
             AND room_id = ? AND room_kind = ? AND provider = ?",
        )
        .bind(room.id_text())
        .bind(room.kind().as_str())
        .bind(provider)
        .fetch_one(&self.readers)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
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
        let mut tx = self.write_tx().await?;
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

    /// Settles `enforced` the sessions of `provider` accepted before
    /// `accepted_before` whose outcome report never came, each with an
    /// `unconfirmed` audit row. Returns how many.
    pub(in crate::store) async fn settle_unconfirmed(
        &self,
        provider: &str,
        accepted_before: Instant,
        now: Instant,
        detail: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "UPDATE sessions INDEXED BY sessions_accepted SET state = 'enforced', detail = ?, updated_at = ? \
             WHERE state = 'accepted' AND provider = ? AND updated_at < ? RETURNING id",
        )
        .bind(detail)
        .bind(now.to_string())
        .bind(provider)
        .bind(accepted_before.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let mut audit = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            if let Ok(id) = id.parse::<SessionId>() {
                let entry = AuditEntry {
                    provider: Some(provider.to_string()),
                    outcome: Some("enforced"),
                    ..AuditEntry::new("unconfirmed", id).detail(detail)
                };
                audit.push((entry, now));
            }
        }
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// The call ended: every session of it that the provider had accepted is
    /// enforced. Returns how many.
    pub(in crate::store) async fn confirm_call(
        &self,
        call: &str,
        entry: &AuditEntry,
        now: Instant,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
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

type Tx<'c> = sqlx::Transaction<'c, Sqlite>;

/// Applies every event of `batch` in `tx`, then their deferred rows; the
/// answer per event (see [`apply_one`]).
async fn apply_all(tx: &mut Tx<'_>, batch: &[PresenceWrite]) -> Result<Vec<Option<u32>>, StoreError> {
    let mut rows = Deferred::default();
    let mut answers = Vec::with_capacity(batch.len());
    for write in batch {
        answers.push(apply_one(tx, write, &mut rows).await?);
    }
    for (warnings, now) in &rows.warnings {
        insert_warnings(tx, warnings, *now).await?;
    }
    insert_audit_rows(tx, &rows.audit).await?;
    Ok(answers)
}

/// The rows a batch of presence events adds besides its sessions, written
/// after the last event: audit rows in the order the events made them, and
/// each opened session's warnings with the time they were armed.
#[derive(Default)]
struct Deferred {
    audit: Vec<(AuditEntry, Instant)>,
    warnings: Vec<(Vec<WarningRow>, Instant)>,
}

/// One presence event: its mark first (a write, so the write lock is taken
/// before anything is read), then its changes. `None`: not newer than what
/// is recorded, so nothing is to change.
async fn apply_one(
    tx: &mut Tx<'_>,
    w: &PresenceWrite,
    rows: &mut Deferred,
) -> Result<Option<u32>, StoreError> {
    let m = &w.mark;
    let marked = sqlx::query(
        "INSERT INTO presence (provider, room_kind, room_id, participant, last_event_ms, last_event) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (provider, room_kind, room_id, participant) DO UPDATE \
         SET last_event_ms = excluded.last_event_ms, last_event = excluded.last_event \
         WHERE excluded.last_event_ms > presence.last_event_ms",
    )
    .bind(&m.provider)
    .bind(m.room.kind().as_str())
    .bind(m.room.id_text())
    .bind(&m.participant)
    .bind(m.event_ms)
    .bind(m.event)
    .execute(&mut **tx)
    .await?;
    if marked.rows_affected() != 1 {
        return Ok(None);
    }
    let mut changed = 0;
    for change in &w.changes {
        changed += match change {
            PresenceChange::Open { session, detail } => {
                u32::from(open_unless_active(tx, session, w.now, detail, rows).await?)
            }
            PresenceChange::End { user, detail } => {
                end_active(tx, &m.provider, &m.room, user.as_ref(), w.now, detail, rows).await? as u32
            }
        };
    }
    Ok(Some(changed))
}

/// Registers a session opened by a webhook, unless the same policy already
/// has an active session for that room and participant (an event delivered
/// twice, or a second entry). Returns whether it was added; its warnings
/// and audit row go to `rows`.
async fn open_unless_active(
    tx: &mut Tx<'_>,
    s: &NewSession,
    now: Instant,
    detail: &str,
    rows: &mut Deferred,
) -> Result<bool, StoreError> {
    let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO sessions ({NEW_SESSION_COLUMNS}) SELECT "));
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
    let done = q.build().execute(&mut **tx).await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    let warnings = warnings_of(s, now);
    if !warnings.is_empty() {
        rows.warnings.push((warnings, now));
    }
    rows.audit.push((s.registered_entry(detail), now));
    Ok(true)
}

/// Ends the active sessions of a room (`user` None: all of them; Some: that
/// participant's) of one provider, because the provider reported the room
/// closed or the participant gone. No provider call; audit event `ended`
/// (to `rows`). Returns how many.
async fn end_active(
    tx: &mut Tx<'_>,
    provider: &str,
    room: &Room,
    user: Option<&UserId>,
    now: Instant,
    detail: &str,
    rows: &mut Deferred,
) -> Result<usize, StoreError> {
    let ended = sqlx::query(
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
    .fetch_all(&mut **tx)
    .await?;
    for row in &ended {
        let id: String = row.try_get("id")?;
        if let Ok(id) = id.parse::<SessionId>() {
            let entry = AuditEntry { provider: Some(provider.to_string()), ..AuditEntry::new("ended", id) };
            rows.audit.push((entry.detail(detail), now));
        }
    }
    Ok(ended.len())
}

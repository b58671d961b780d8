//! Sessions: registering them (all or nothing, with their `registered`
//! audit rows and warnings), ending and extending them, reading and
//! listing them, pruning settled ones, and backing the file up.

use std::path::Path;
use std::time::Duration;

use sqlx::query_builder::Separated;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::audit_log::{insert_audit, insert_audit_rows};
use super::outbox::insert_warnings;
use super::{SESSION_COLUMNS, SqliteStore};
use crate::domain::audit::AuditEntry;
use crate::domain::session::{NewSession, SessionCursor, SessionRecord};
use crate::domain::{Instant, SessionId, SessionState};
use crate::store::warnings::{warning_points, warnings_of};
use crate::store::{Inserted, Pending, StateCounts, StoreError};

impl SqliteStore {
    /// Registers sessions, each with a `registered` audit row, all or nothing.
    pub(in crate::store) async fn insert_sessions(
        &self,
        sessions: &[NewSession],
        now: Instant,
        detail: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let mut audit = Vec::with_capacity(sessions.len());
        for s in sessions {
            let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO sessions ({NEW_SESSION_COLUMNS}) "));
            q.push_values([s], |mut b, s| push_new_session(&mut b, s, now));
            q.build().execute(&mut *tx).await?;
            audit.push((s.registered_entry(detail), now));
        }
        let warnings: Vec<_> = sessions.iter().flat_map(|s| warnings_of(s, now)).collect();
        insert_warnings(&mut tx, &warnings, now).await?;
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One transaction for a batch: the sessions in one multi-row INSERT
    /// (a reused idempotency key is skipped and answered with the session it
    /// made), then their `registered` rows, chained in memory, in another.
    pub(in crate::store) async fn insert_batch(
        &self,
        batch: &[Pending],
    ) -> Result<Vec<Inserted>, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO sessions ({NEW_SESSION_COLUMNS}, idempotency_key) "
        ));
        q.push_values(batch, |mut b, r| {
            push_new_session(&mut b, &r.session, r.now);
            b.push_bind(r.key.clone());
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
                entries.push((r.session.registered_entry(r.detail), r.now));
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

    /// Cancels enforcement of an active session: the call ended by itself.
    /// Refused once a call has been sent for it (`attempts > 0`): a session
    /// re-queued after a crash is `active` again, but its call may already
    /// have ended the room.
    pub(in crate::store) async fn end_session(
        &self,
        id: SessionId,
        now: Instant,
        detail: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
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
    pub(in crate::store) async fn extend_session(
        &self,
        id: SessionId,
        by: Duration,
        max_total: Option<Duration>,
        warn_before: &[Duration],
        now: Instant,
    ) -> Result<Instant, StoreError> {
        let by_ms = crate::domain::duration_millis_ceil(by);
        let max_ms = max_total.map(crate::domain::duration_millis_ceil);
        let mut tx = self.write_tx().await?;
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
        insert_warnings(&mut tx, &warning_points(id, booked_end, warn_before, now), now).await?;
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

    pub(super) async fn why_not_active(
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

    pub(in crate::store) async fn session(&self, id: SessionId) -> Result<SessionRecord, StoreError> {
        let row = sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.readers)
            .await?
            .ok_or(StoreError::NotFound(id))?;
        Ok(SessionRecord::from_row(&row)?)
    }

    pub(in crate::store) async fn list_sessions(
        &self,
        state: Option<SessionState>,
        after: Option<&SessionCursor>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        // Keyset pages in index order: sessions_state (state, deadline,
        // created_at) with a state, sessions_by_deadline without; rows not
        // yet adopted (deadline NULL) sort first, as SQLite sorts NULL.
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE 1 = 1"
        ));
        if let Some(state) = state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        match after {
            None => {}
            Some(SessionCursor { deadline: None, created_at, id }) => {
                q.push(" AND (deadline IS NOT NULL OR (created_at, id) > (")
                    .push_bind(created_at.clone())
                    .push(", ")
                    .push_bind(id.clone())
                    .push("))");
            }
            Some(SessionCursor { deadline: Some(deadline), created_at, id }) => {
                q.push(" AND (deadline, created_at, id) > (")
                    .push_bind(deadline.clone())
                    .push(", ")
                    .push_bind(created_at.clone())
                    .push(", ")
                    .push_bind(id.clone())
                    .push(")");
            }
        }
        q.push(" ORDER BY deadline, created_at, id LIMIT ").push_bind(limit);
        let rows = q.build().fetch_all(&self.readers).await?;
        Ok(rows.iter().map(SessionRecord::from_row).collect::<Result<_, _>>()?)
    }

    pub(in crate::store) async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        // Kept by triggers on `sessions` (migration 0009): a few rows, not a scan.
        let rows = sqlx::query("SELECT state, n FROM session_counts WHERE n != 0 ORDER BY state")
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Deletes settled sessions last updated before `before`, and settled
    /// notifications of the same age, [`PRUNE_CHUNK`](super::PRUNE_CHUNK) rows per transaction
    /// so that other writers get the writer between chunks. Returns how
    /// many sessions.
    pub(in crate::store) async fn prune_sessions(&self, before: Instant) -> Result<u64, StoreError> {
        let before = before.to_string();
        let total = self
            .delete_in_chunks(|| {
                sqlx::query(
                    "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions INDEXED BY sessions_settled \
                     WHERE state IN ('enforced', 'already_ended', 'failed', 'cancelled', 'shadowed', 'expired') \
                     AND updated_at < ? ORDER BY updated_at LIMIT ?)",
                )
                .bind(before.clone())
            })
            .await?;
        // Settled notifications go with the sessions of their time; pending
        // ones stay whatever their age.
        self.delete_in_chunks(|| {
            sqlx::query(
                "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications \
                 WHERE state <> 'pending' AND updated_at < ? LIMIT ?)",
            )
            .bind(before.clone())
        })
        .await?;
        Ok(total)
    }

    /// A consistent copy of the live database at `path` (`VACUUM INTO`),
    /// safe while the daemon runs. Refuses to overwrite an existing file.
    pub(in crate::store) async fn backup(&self, path: &Path) -> Result<(), StoreError> {
        if path.exists() {
            return Err(StoreError::BackupExists(path.to_path_buf()));
        }
        sqlx::query("VACUUM INTO ?").bind(path.display().to_string()).execute(&self.readers).await?;
        Ok(())
    }
}

/// The columns a new session is inserted with, in the order
/// [`push_new_session`] gives their values.
pub(super) const NEW_SESSION_COLUMNS: &str = "id, policy, provider, room_id, room_kind, user_id, started_at, deadline, \
     grace_ms, detail, state, created_at, updated_at";

/// A new session's values for [`NEW_SESSION_COLUMNS`]: the one place a
/// `NewSession` becomes a row, for every way a session is inserted.
pub(super) fn push_new_session(
    b: &mut Separated<'_, '_, Sqlite, &'static str>,
    s: &NewSession,
    now: Instant,
) {
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
        .push_bind(now.to_string())
        .push_bind(now.to_string());
}

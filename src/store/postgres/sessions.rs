//! Sessions: registering them (all or nothing, with their `registered`
//! audit rows and warnings), ending and extending them, reading and
//! listing them, and pruning settled ones. There is no file to back up:
//! `backup` points at `pg_dump`.

use std::path::Path;
use std::time::Duration;

use sqlx::query_builder::Separated;
use sqlx::{Postgres, QueryBuilder, Row};

use super::audit_log::{insert_audit, insert_audit_rows};
use super::outbox::insert_warnings;
use super::{PgStore, SESSION_COLUMNS, session_record, ts};
use crate::domain::audit::AuditEntry;
use crate::domain::session::{NewSession, SessionCursor, SessionRecord};
use crate::domain::{Instant, SessionId, SessionState};
use crate::store::warnings::{warning_points, warnings_of};
use crate::store::{Inserted, Pending, StateCounts, StoreError};

impl PgStore {
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
            let mut q =
                QueryBuilder::<Postgres>::new(format!("INSERT INTO sessions ({NEW_SESSION_COLUMNS}) "));
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
    ///
    /// Two batches racing with one key: the unique index makes the second
    /// INSERT wait for the first transaction, then skip the row once it
    /// commits; the SELECT that follows (a statement of its own, so a fresh
    /// snapshot) then sees the winner's session.
    pub(in crate::store) async fn insert_batch(
        &self,
        batch: &[Pending],
    ) -> Result<Vec<Inserted>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write_tx().await?;
        let mut q = QueryBuilder::<Postgres>::new(format!(
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
                let row = sqlx::query(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE idempotency_key = $1"
                ))
                .bind(&r.key)
                .fetch_one(&mut *tx)
                .await?;
                results.push(Inserted::Existing(Box::new(session_record(&row)?)));
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
    /// have ended the room. A conditional write: a concurrent claim or end
    /// holds the row, and this one re-checks the state once it is released.
    pub(in crate::store) async fn end_session(
        &self,
        id: SessionId,
        now: Instant,
        detail: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE sessions SET state = 'cancelled', updated_at = $1 WHERE id = $2 AND state = 'active' \
             AND attempts = 0",
        )
        .bind(ts(now))
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
    /// policy's `max_extension`), checked in the same statement (a
    /// conditional write: two extensions at once are applied one after the
    /// other, the second checked against the first's total). Refused, like
    /// `end_session`, once a call has been sent for the session.
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
        // Whole milliseconds in, whole milliseconds out: the interval holds
        // `by_ms` exactly (microseconds in an int64), as SQLite's text does.
        let row = sqlx::query(
            "UPDATE sessions SET deadline = deadline + ($1::bigint * interval '1 millisecond'), \
             extended_ms = extended_ms + $1, updated_at = $2 WHERE id = $3 AND state = 'active' AND attempts = 0 \
             AND deadline IS NOT NULL AND ($4::bigint IS NULL OR extended_ms + $1 <= $4) \
             RETURNING callwarden_text(deadline) AS deadline, grace_ms",
        )
        .bind(by_ms)
        .bind(ts(now))
        .bind(id.to_string())
        .bind(max_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let why = self.why_not_active(&mut tx, id, "extended").await;
            // Still active: then it was the extension limit that refused.
            if let (StoreError::NotActive { state, .. }, Some(max_ms)) = (&why, max_ms)
                && state == "active"
            {
                let used: i64 = sqlx::query_scalar("SELECT extended_ms FROM sessions WHERE id = $1")
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
            "DELETE FROM notifications WHERE session_id = $1 AND state = 'pending' AND event = 'warning'",
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

    /// Why a conditional write on an active session changed nothing: no
    /// such session, a call already sent for it, or its state.
    pub(super) async fn why_not_active(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        id: SessionId,
        verb: &'static str,
    ) -> StoreError {
        match sqlx::query("SELECT state, attempts FROM sessions WHERE id = $1")
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
        let row = sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(self.readers())
            .await?
            .ok_or(StoreError::NotFound(id))?;
        Ok(session_record(&row)?)
    }

    /// Sessions ordered by (deadline, created_at, id), rows not yet adopted
    /// (no deadline) first; starting after `after`, at most `limit`.
    pub(in crate::store) async fn list_sessions(
        &self,
        state: Option<SessionState>,
        after: Option<&SessionCursor>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        // Keyset pages in index order (sessions_state with a state,
        // sessions_by_deadline without), as SQLite orders them: NULL
        // deadlines first (PostgreSQL puts them last unless told), ids byte
        // by byte (the column's collation is "C"). Times are whole
        // milliseconds (a trigger keeps them so), so the cursor's text is
        // the whole value. The cursor's times are our own UTC text.
        let mut q =
            QueryBuilder::<Postgres>::new(format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE true"));
        if let Some(state) = state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        match after {
            None => {}
            Some(SessionCursor { deadline: None, created_at, id }) => {
                q.push(" AND (deadline IS NOT NULL OR ")
                    .push("(created_at, id) > (")
                    .push_bind(created_at.clone())
                    .push("::timestamptz, ")
                    .push_bind(id.clone())
                    .push("))");
            }
            Some(SessionCursor { deadline: Some(deadline), created_at, id }) => {
                q.push(" AND (deadline, created_at, id) > (")
                    .push_bind(deadline.clone())
                    .push("::timestamptz, ")
                    .push_bind(created_at.clone())
                    .push("::timestamptz, ")
                    .push_bind(id.clone())
                    .push(")");
            }
        }
        q.push(" ORDER BY deadline ASC NULLS FIRST, created_at, id LIMIT ").push_bind(i64::from(limit));
        let rows = q.build().fetch_all(self.readers()).await?;
        Ok(rows.iter().map(session_record).collect::<Result<_, _>>()?)
    }

    pub(in crate::store) async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        // Kept by triggers on `sessions` (migration 0001) as net changes
        // appended per statement: folded here into one row per state (a
        // few rows however many sessions), then read. Ordered byte by
        // byte, as SQLite orders them.
        sqlx::query(
            "WITH folded AS (DELETE FROM session_counts RETURNING state, n) \
             INSERT INTO session_counts (state, n) SELECT state, sum(n) FROM folded GROUP BY state \
             HAVING sum(n) <> 0",
        )
        .execute(self.readers())
        .await?;
        let rows = sqlx::query(
            "SELECT state, sum(n)::bigint AS n FROM session_counts GROUP BY state HAVING sum(n) <> 0 \
             ORDER BY state COLLATE \"C\"",
        )
        .fetch_all(self.readers())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Deletes settled sessions last updated before `before`, and settled
    /// notifications of the same age, [`PRUNE_CHUNK`](super::PRUNE_CHUNK)
    /// rows per transaction, so that no transaction holds many row locks
    /// for long. Returns how many sessions.
    pub(in crate::store) async fn prune_sessions(&self, before: Instant) -> Result<u64, StoreError> {
        let before = ts(before);
        let total = self
            .delete_in_chunks(|| {
                sqlx::query(
                    "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions \
                     WHERE state IN ('enforced', 'already_ended', 'failed', 'cancelled', 'shadowed', 'expired') \
                     AND updated_at < $1 ORDER BY updated_at LIMIT $2)",
                )
                .bind(before)
            })
            .await?;
        // Settled notifications go with the sessions of their time; pending
        // ones stay whatever their age.
        self.delete_in_chunks(|| {
            sqlx::query(
                "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications \
                 WHERE state <> 'pending' AND updated_at < $1 LIMIT $2)",
            )
            .bind(before)
        })
        .await?;
        Ok(total)
    }

    /// PostgreSQL has no single file to copy: refused, pointing at
    /// `pg_dump` (or the server's own base backups).
    pub(in crate::store) async fn backup(&self, _path: &Path) -> Result<(), StoreError> {
        Err(StoreError::NoFileBackup(self.location().to_string()))
    }
}

/// The columns a new session is inserted with, in the order
/// [`push_new_session`] gives their values.
pub(super) const NEW_SESSION_COLUMNS: &str = "id, policy, provider, room_id, room_kind, user_id, started_at, deadline, \
     grace_ms, detail, state, created_at, updated_at";

/// A new session's values for [`NEW_SESSION_COLUMNS`]: the one place a
/// `NewSession` becomes a row, for every way a session is inserted.
pub(super) fn push_new_session(
    b: &mut Separated<'_, '_, Postgres, &'static str>,
    s: &NewSession,
    now: Instant,
) {
    b.push_bind(s.id.to_string())
        .push_bind(s.policy.clone())
        .push_bind(s.provider.clone())
        .push_bind(s.room.id_text())
        .push_bind(s.room.kind().as_str())
        .push_bind(s.user.as_ref().map(|u| u.as_str().to_string()))
        .push_bind(ts(s.started_at))
        .push_bind(ts(s.deadline))
        .push_bind(crate::domain::duration_millis_ceil(s.grace))
        .push_bind(s.note.clone())
        .push("'active'")
        .push_bind(ts(now))
        .push_bind(ts(now));
}

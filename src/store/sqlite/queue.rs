//! The scheduler's queue: the `sessions` table read through its partial
//! index `sessions_due`. Adopting plain-SQL rows, finding the next
//! deadline, claiming what is due, recording attempts and outcomes, and
//! re-queuing what a crash interrupted.

use sqlx::Row;

use super::audit_log::{insert_audit, insert_audit_rows};
use super::outbox::insert_warnings;
use super::{SESSION_COLUMNS, SqliteStore};
use crate::domain::audit::AuditEntry;
use crate::domain::lease::{Led, SOLE_TERM};
use crate::domain::session::{Adopted, Repeatability, Session, SessionRecord};
use crate::domain::{Instant, SessionId, SessionState};
use crate::store::StoreError;
use crate::store::attempt_writer::Attempt;
use crate::store::warnings::warning_points;

impl SqliteStore {
    /// Rows inserted with plain SQL that still need a provider or a deadline;
    /// a row that cannot be read comes back as its id and the reason.
    pub(in crate::store) async fn unadopted(&self, limit: u32) -> Result<Vec<RowRead>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions INDEXED BY sessions_unadopted WHERE state = 'active' \
             AND (provider IS NULL OR deadline IS NULL) ORDER BY created_at LIMIT ?"
        ))
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.iter().map(read_row).collect())
    }

    /// Settles a batch of plain-SQL rows in one transaction: each adopted
    /// row gets its provider, deadline and grace (and its warnings, and a
    /// `registered` row); each rejected one becomes `failed` with its reason.
    /// One commit per batch, so a stream of inserts does not hold the write
    /// lock once per row. Waits at most `patience` for the write lock;
    /// returns how many were adopted, or `None` when the lock stayed taken
    /// (nothing was written).
    pub(in crate::store) async fn adopt_batch(
        &self,
        adopted: &[Adopted],
        rejected: &[(String, String)],
        now: Instant,
        patience: std::time::Duration,
    ) -> Result<Option<usize>, StoreError> {
        let mut tx = match self.write_tx_within(patience).await {
            Ok(tx) => tx,
            Err(e) if super::is_busy(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
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
                insert_warnings(&mut tx, &warning_points(sid, booked_end, &a.warn_before, now), now).await?;
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
            if let Some(entry) = fail_row(&mut tx, id, reason, now).await? {
                audit.push((entry, now));
            }
        }
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(Some(count))
    }

    /// Refuses a row that cannot be scheduled (unknown policy, bad room...):
    /// it becomes `failed` with the reason, and the audit log says why.
    pub(in crate::store) async fn reject(
        &self,
        id: &str,
        reason: &str,
        now: Instant,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        if let Some(entry) = fail_row(&mut tx, id, reason, now).await? {
            insert_audit(&mut tx, &entry, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The earliest deadline among adopted active sessions of what `led`
    /// covers.
    pub(in crate::store) async fn next_deadline_for(&self, led: &Led) -> Result<Option<Instant>, StoreError> {
        if led.is_empty() {
            return Ok(None);
        }
        let sql = format!(
            "SELECT deadline FROM sessions INDEXED BY sessions_due WHERE state = 'active' \
             AND deadline IS NOT NULL AND provider IS NOT NULL{} ORDER BY deadline LIMIT 1",
            bucket_filter(led)
        );
        let mut query = sqlx::query(&sql);
        for (bucket, _) in buckets(led) {
            query = query.bind(bucket);
        }
        let row = query.fetch_optional(&self.readers).await?;
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

    /// Claims up to `limit` sessions of what `led` covers due by
    /// `horizon`, most overdue first, moving them from `active` to
    /// `enforcing` and stamping each with its bucket's term, in one
    /// statement. Rows that fail to parse are returned as errors for the
    /// caller to reject.
    pub(in crate::store) async fn claim_for(
        &self,
        led: &Led,
        horizon: Instant,
        now: Instant,
        limit: u32,
    ) -> Result<Vec<Result<Session, (String, String)>>, StoreError> {
        if led.is_empty() {
            return Ok(Vec::new());
        }
        let held = buckets(led);
        let term = if held.is_empty() {
            "0".to_string()
        } else {
            format!("CASE provider {} END", " WHEN ? THEN ?".repeat(held.len()))
        };
        let sql = format!(
            "UPDATE sessions SET state = 'enforcing', claim_term = {term}, updated_at = ? WHERE id IN ( \
               SELECT id FROM sessions INDEXED BY sessions_due \
               WHERE state = 'active' AND deadline <= ? AND provider IS NOT NULL{} \
               ORDER BY deadline LIMIT ?) RETURNING {SESSION_COLUMNS}, claim_term",
            bucket_filter(led)
        );
        let mut query = sqlx::query(&sql);
        for (bucket, term) in held {
            query = query.bind(bucket).bind(term);
        }
        query = query.bind(now.to_string()).bind(horizon.to_string());
        for (bucket, _) in held {
            query = query.bind(bucket);
        }
        let mut tx = self.write_tx().await?;
        let rows = query.bind(limit).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(
                read_row(row)
                    .and_then(|record| record.to_session().map_err(|e| (record.id.clone(), e.to_string())))
                    .map(|mut session| {
                        session.term = row.try_get("claim_term").unwrap_or(SOLE_TERM);
                        session
                    }),
            );
        }
        // RETURNING has no order; restore deadline order.
        out.sort_by_key(|r| r.as_ref().map(|s| s.deadline).unwrap_or(Instant::from_millis(i64::MIN)));
        Ok(out)
    }

    /// After a crash or stop, puts sessions whose enforcement was under way
    /// back in the queue; returns how many. Their deadlines have passed, so
    /// they are the first to be claimed again.
    pub(in crate::store) async fn requeue_interrupted(
        &self,
        now: Instant,
        why: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "UPDATE sessions INDEXED BY sessions_enforcing SET state = 'active', updated_at = ? \
             WHERE state = 'enforcing' RETURNING id, provider",
        )
        .bind(now.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let audit = crate::store::rows::recovered_rows(&rows, now, why)?;
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// A new lease on `bucket` under `term`: its sessions still
    /// `enforcing` under an older term (a leader that died or was cut off
    /// left them) go back to the queue, stamped with `term` so that the
    /// old leader's writes about them match nothing; each gets a
    /// `recovered` row. Returns how many. (SQLite has one writer: nothing
    /// is locked by another.)
    pub(in crate::store) async fn take_over(
        &self,
        bucket: &str,
        term: i64,
        now: Instant,
        why: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "UPDATE sessions INDEXED BY sessions_enforcing SET state = 'active', claim_term = ?, updated_at = ? \
             WHERE state = 'enforcing' AND provider = ? AND claim_term < ? RETURNING id, provider",
        )
        .bind(term)
        .bind(now.to_string())
        .bind(bucket)
        .bind(term)
        .fetch_all(&mut *tx)
        .await?;
        let audit = crate::store::rows::recovered_rows(&rows, now, why)?;
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Nothing: the one daemon on an embedded database claims every
    /// provider's sessions, and enforcement fails those of a provider it
    /// does not have, at their deadline.
    pub(in crate::store) async fn fail_unled(
        &self,
        _configured: &[String],
        _overdue: Instant,
        _now: Instant,
        _limit: u32,
    ) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Hands claimed sessions back to the queue (shutdown while they waited).
    /// `unsent`: the last recorded attempt never left (it was waiting for its
    /// deadline or the rate limit), so it is taken off the attempt count.
    pub(in crate::store) async fn release_as(
        &self,
        term: i64,
        ids: &[SessionId],
        unsent: bool,
        now: Instant,
        why: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.fenced_tx(ids.iter().copied(), term).await?;
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

    /// Records that a provider call is about to be made for these sessions:
    /// their attempt counters go up and each gets an `attempt` row. Written
    /// (and synced) before the call, so after a crash the log shows a call
    /// that may have reached the provider. `repeatability`, when given, is a
    /// newly chosen ACS Repeatability-Request-ID and First-Sent pair, stored
    /// in the same commit, so a call is never sent under a pair a restart
    /// would not find again.
    pub(in crate::store) async fn record_attempt_as(
        &self,
        term: i64,
        ids: &[SessionId],
        entry: &AuditEntry,
        repeatability: Option<Repeatability>,
        now: Instant,
    ) -> Result<(), StoreError> {
        let attempt = Attempt { term, ids: ids.to_vec(), entry: entry.clone(), repeatability, now };
        let mut answers = self.record_attempts(std::slice::from_ref(&attempt)).await?;
        answers.pop().unwrap_or(Ok(()))
    }

    /// [`SqliteStore::record_attempt_as`] for several attempts in one
    /// transaction (the attempt writer's group commit): an attempt whose
    /// sessions are fenced answers [`StoreError::Fenced`] and writes
    /// nothing, the others are written.
    pub(in crate::store) async fn record_attempts(
        &self,
        batch: &[Attempt],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut answers = Vec::with_capacity(batch.len());
        let mut rows = Vec::new();
        for a in batch {
            if let Some(fenced) = fence(&mut tx, a.ids.iter().copied(), a.term).await? {
                answers.push(Err(fenced));
                continue;
            }
            for id in &a.ids {
                sqlx::query(
                    "UPDATE sessions SET attempts = attempts + 1, updated_at = ?, \
                     repeatability_id = coalesce(?, repeatability_id), first_sent_at = coalesce(?, first_sent_at) \
                     WHERE id = ?",
                )
                .bind(a.now.to_string())
                .bind(a.repeatability.map(|r| r.request_id.to_string()))
                .bind(a.repeatability.map(|r| Instant::floor(r.first_sent).to_string()))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
                rows.push((AuditEntry { session_id: Some(*id), ..a.entry.clone() }, a.now));
            }
            answers.push(Ok(()));
        }
        insert_audit_rows(&mut tx, &rows).await?;
        tx.commit().await?;
        Ok(answers)
    }

    /// Records a provider answer, and when `final_state` is given, settles the
    /// sessions in it. `entries` pairs each session with its own row (their
    /// lateness differs).
    pub(in crate::store) async fn record_outcome_as(
        &self,
        term: i64,
        entries: &[AuditEntry],
        final_state: Option<(SessionState, Option<&str>)>,
        now: Instant,
    ) -> Result<(), StoreError> {
        let mut tx = self.fenced_tx(entries.iter().filter_map(|e| e.session_id), term).await?;
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

/// The providers `led` covers, with their terms (none for [`Led::Sole`]).
fn buckets(led: &Led) -> &[(String, i64)] {
    match led {
        Led::Sole => &[],
        Led::Buckets(held) => held,
    }
}

/// ` AND provider IN (?, …)` for the buckets `led` covers; nothing for
/// [`Led::Sole`], which covers every provider.
fn bucket_filter(led: &Led) -> String {
    match buckets(led).len() {
        0 => String::new(),
        n => format!(" AND provider IN ({})", vec!["?"; n].join(", ")),
    }
}

impl SqliteStore {
    /// A write transaction about sessions `ids`, begun only while each
    /// still carries `term`; otherwise [`StoreError::Fenced`] (another
    /// instance took them over), nothing written. Checked inside the write
    /// transaction, so no take-over can come between the check and the
    /// write (SQLite has one writer). A refused transaction is rolled back
    /// at once, so the write lock does not outlive it (a rollback on drop
    /// waits for the connection's return).
    async fn fenced_tx(
        &self,
        ids: impl Iterator<Item = SessionId>,
        term: i64,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        let mut tx = self.write_tx().await?;
        if let Some(fenced) = fence(&mut tx, ids, term).await? {
            tx.rollback().await?;
            return Err(fenced);
        }
        Ok(tx)
    }
}

/// The [`StoreError::Fenced`] for the first of `ids` that no longer
/// carries `term`, if any (a session gone altogether is not fenced: the
/// write finds nothing to change).
async fn fence(
    tx: &mut sqlx::SqliteConnection,
    ids: impl Iterator<Item = SessionId>,
    term: i64,
) -> Result<Option<StoreError>, StoreError> {
    for id in ids {
        let found: Option<i64> = sqlx::query_scalar("SELECT claim_term FROM sessions WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(current) = found
            && current != term
        {
            return Ok(Some(StoreError::Fenced { id, term, current }));
        }
    }
    Ok(None)
}

/// A row as read, or the id of a row that cannot be read (a BLOB where
/// text belongs, text in an integer column) and why.
pub(in crate::store) type RowRead = Result<SessionRecord, (String, String)>;

/// Reads one row, so that one unreadable row is failed on its own rather
/// than failing the query that found it. `id` is text in every row (a
/// trigger refuses anything else, migration 0009).
fn read_row(row: &sqlx::sqlite::SqliteRow) -> RowRead {
    SessionRecord::from_row(row).map_err(|e| {
        let id = row.try_get::<String, _>("id").unwrap_or_default();
        (id, format!("the row cannot be read: {e}"))
    })
}

/// Marks a row that cannot be scheduled `failed` with the reason; returns
/// the `rejected` audit row for the caller to write, or none when the row
/// had settled meanwhile (an app cancelled it between reading and
/// rejecting) and so was left alone.
pub(super) async fn fail_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    reason: &str,
    now: Instant,
) -> Result<Option<AuditEntry>, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sessions SET state = 'failed', detail = ?, updated_at = ? WHERE id = ? AND state IN ('active', 'enforcing')",
    )
    .bind(reason)
    .bind(now.to_string())
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok((done.rows_affected() > 0).then(|| AuditEntry {
        session_id: id.parse().ok(),
        event: "rejected",
        detail: Some(format!("session {id}: {reason}")),
        ..AuditEntry::default()
    }))
}

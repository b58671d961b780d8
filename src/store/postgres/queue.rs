//! The scheduler's queue: the `sessions` table read through its partial
//! index `sessions_due`. Adopting plain-SQL rows, finding the next
//! deadline, claiming what is due (row locks keep two claimers apart),
//! recording attempts and outcomes, and re-queuing what a crash interrupted.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::audit_log::{insert_audit, insert_audit_rows};
use super::outbox::insert_warnings;
use super::{PgStore, SESSION_COLUMNS, session_record, ts};
use crate::domain::audit::AuditEntry;
use crate::domain::lease::{Led, SOLE_TERM};
use crate::domain::session::{Adopted, Repeatability, Session, SessionRecord};
use crate::domain::{Instant, SessionId, SessionState};
use crate::store::StoreError;
use crate::store::warnings::warning_points;

impl PgStore {
    /// Rows inserted with plain SQL that still need a provider or a deadline;
    /// a row that cannot be read comes back as its id and the reason.
    pub(in crate::store) async fn unadopted(&self, limit: u32) -> Result<Vec<RowRead>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE state = 'active' \
             AND (provider IS NULL OR deadline IS NULL) ORDER BY created_at LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(self.readers())
        .await?;
        Ok(rows.iter().map(read_row).collect())
    }

    /// Settles a batch of plain-SQL rows in one transaction: each adopted
    /// row gets its provider, deadline and grace (and its warnings, and a
    /// `registered` row); each rejected one becomes `failed` with its reason.
    /// One commit per batch, so a stream of inserts does not cost a
    /// transaction per row.
    ///
    /// PostgreSQL has no write lock for the whole database; what a write
    /// waits for is a pooled connection and row locks (another program's
    /// transaction holding a row or table, the audit chain's tip). Waits at
    /// most `patience` for the connection, and at most `patience` for each
    /// lock (`lock_timeout`, for this transaction only); returns how many
    /// were adopted, or `None` when either ran out (the transaction is
    /// rolled back: nothing was written).
    pub(in crate::store) async fn adopt_batch(
        &self,
        adopted: &[Adopted],
        rejected: &[(String, String)],
        now: Instant,
        patience: Duration,
    ) -> Result<Option<usize>, StoreError> {
        let started = std::time::Instant::now();
        let mut tx = match tokio::time::timeout(patience, self.write_tx()).await {
            Ok(tx) => tx?,
            Err(_) => {
                self.gave_up_waiting(started.elapsed());
                return Ok(None);
            }
        };
        match adopt_in(&mut tx, adopted, rejected, now, patience).await {
            Ok(count) => {
                tx.commit().await?;
                Ok(Some(count))
            }
            Err(e) if is_lock_timeout(&e) => {
                tx.rollback().await?;
                self.gave_up_waiting(started.elapsed());
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records a wait that ran out of patience, as a write's wait for a
    /// lock another connection held (the scheduler claims earlier then).
    fn gave_up_waiting(&self, waited: Duration) {
        self.lock_waits.record(waited, true);
        crate::metrics::store_lock_wait(waited);
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
        let row = match led.columns() {
            None => {
                sqlx::query(
                    "SELECT callwarden_text(deadline) AS deadline FROM sessions WHERE state = 'active' \
                     AND deadline IS NOT NULL AND provider IS NOT NULL ORDER BY deadline LIMIT 1",
                )
                .fetch_optional(self.readers())
                .await?
            }
            Some((buckets, _)) if buckets.is_empty() => return Ok(None),
            // One index probe per bucket (sessions_due_by_bucket), the
            // earliest of them.
            Some((buckets, _)) => sqlx::query(
                "SELECT callwarden_text(min(next.deadline)) AS deadline FROM unnest($1::text[]) AS b(bucket) \
                     CROSS JOIN LATERAL (SELECT deadline FROM sessions WHERE state = 'active' \
                       AND provider = b.bucket AND deadline IS NOT NULL ORDER BY deadline LIMIT 1) AS next \
                     HAVING min(next.deadline) IS NOT NULL",
            )
            .bind(buckets)
            .fetch_optional(self.readers())
            .await?,
        };
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
    /// `enforcing` in one statement, each stamped with its bucket's term.
    /// Rows that fail to parse are returned as errors for the caller to
    /// reject.
    ///
    /// Two claimers never claim one row: the rows are chosen and locked in
    /// one step (`FOR UPDATE SKIP LOCKED`, in a CTE materialized so it runs
    /// once), a row another claimer holds is passed over, and one it
    /// settled meanwhile no longer matches. A bucket is claimed only while
    /// its lease, by the database's clock, is still valid under the term
    /// given: a leader whose lease ran out claims nothing, whatever its own
    /// clock says.
    pub(in crate::store) async fn claim_for(
        &self,
        led: &Led,
        horizon: Instant,
        now: Instant,
        limit: u32,
    ) -> Result<Vec<Result<Session, (String, String)>>, StoreError> {
        let query = match led.columns() {
            None => sqlx::query(&CLAIM_SOLE),
            Some((buckets, _)) if buckets.is_empty() => return Ok(Vec::new()),
            Some((buckets, terms)) => sqlx::query(&CLAIM_LED).bind(buckets).bind(terms),
        };
        let mut tx = self.write_tx().await?;
        let rows = query.bind(ts(now)).bind(ts(horizon)).bind(i64::from(limit)).fetch_all(&mut *tx).await?;
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
            "UPDATE sessions SET state = 'active', updated_at = $1 WHERE state = 'enforcing' \
             RETURNING id, provider",
        )
        .bind(ts(now))
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
    /// `recovered` row. Returns how many. Rows locked by another
    /// transaction are left for the next call.
    pub(in crate::store) async fn take_over(
        &self,
        bucket: &str,
        term: i64,
        now: Instant,
        why: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        // Rows another transaction holds are passed over, not waited for: a
        // paused leader may hold some in a transaction it cannot finish
        // (the server ends it after IDLE_IN_TRANSACTION_TIMEOUT). The new
        // leader takes them on a later sweep (`lead::keep_leases`).
        let rows = sqlx::query(
            "WITH stale AS MATERIALIZED ( \
               SELECT id AS stale_id FROM sessions \
               WHERE state = 'enforcing' AND provider = $3 AND claim_term < $1 FOR UPDATE SKIP LOCKED) \
             UPDATE sessions SET state = 'active', claim_term = $1, updated_at = $2 \
             FROM stale WHERE id = stale.stale_id RETURNING id, provider",
        )
        .bind(term)
        .bind(ts(now))
        .bind(bucket)
        .fetch_all(&mut *tx)
        .await?;
        let audit = crate::store::rows::recovered_rows(&rows, now, why)?;
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Fails, `limit` at a time, the active sessions that no instance
    /// leads: due before `overdue`, of a provider that is not among this
    /// instance's `configured` ones and has no live lease on its bucket by
    /// the server's clock (no running instance has it in its
    /// configuration). Each becomes `failed` with the reason and a `failed`
    /// audit row; returns how many.
    pub(in crate::store) async fn fail_unled(
        &self,
        configured: &[String],
        overdue: Instant,
        now: Instant,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "WITH unled AS MATERIALIZED ( \
               SELECT id AS unled_id FROM sessions s \
               WHERE state = 'active' AND deadline < $1 AND provider IS NOT NULL \
                 AND NOT (provider = ANY($2)) \
                 AND NOT EXISTS (SELECT 1 FROM leases l \
                                 WHERE l.bucket = s.provider COLLATE \"C\" AND l.expires_at > clock_timestamp()) \
               ORDER BY deadline LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE sessions SET state = 'failed', updated_at = $4, \
               detail = 'provider \"' || provider || '\" is in the configuration of no running instance, \
                         so none leads its sessions' \
             FROM unled WHERE id = unled.unled_id RETURNING id, provider, detail",
        )
        .bind(ts(overdue))
        .bind(configured)
        .bind(i64::from(limit))
        .bind(ts(now))
        .fetch_all(&mut *tx)
        .await?;
        let mut audit = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            let entry = AuditEntry {
                session_id: id.parse().ok(),
                provider: row.try_get("provider")?,
                event: "failed",
                detail: row.try_get("detail")?,
                ..Default::default()
            };
            audit.push((entry, now));
        }
        insert_audit_rows(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
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
        let mut tx = self.fenced_tx(ids, term).await?;
        let mut audit = Vec::new();
        for id in ids {
            let done = sqlx::query(
                "UPDATE sessions SET state = 'active', attempts = greatest(attempts - $1, 0), updated_at = $2 \
                 WHERE id = $3 AND state = 'enforcing'",
            )
            .bind(i64::from(unsent))
            .bind(ts(now))
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
    /// (and committed) before the call, so after a crash the log shows a
    /// call that may have reached the provider. `repeatability`, when given,
    /// is a newly chosen ACS Repeatability-Request-ID and First-Sent pair,
    /// stored in the same commit, so a call is never sent under a pair a
    /// restart would not find again.
    pub(in crate::store) async fn record_attempt_as(
        &self,
        term: i64,
        ids: &[SessionId],
        entry: &AuditEntry,
        repeatability: Option<Repeatability>,
        now: Instant,
    ) -> Result<(), StoreError> {
        let mut tx = self.fenced_tx(ids, term).await?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            sqlx::query(
                "UPDATE sessions SET attempts = attempts + 1, updated_at = $1, \
                 repeatability_id = coalesce($2, repeatability_id), first_sent_at = coalesce($3, first_sent_at) \
                 WHERE id = $4",
            )
            .bind(ts(now))
            .bind(repeatability.map(|r| r.request_id.to_string()))
            .bind(repeatability.map(|r| ts(Instant::floor(r.first_sent))))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
            rows.push((AuditEntry { session_id: Some(*id), ..entry.clone() }, now));
        }
        insert_audit_rows(&mut tx, &rows).await?;
        tx.commit().await?;
        Ok(())
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
        let ids: Vec<SessionId> = entries.iter().filter_map(|e| e.session_id).collect();
        let mut tx = self.fenced_tx(&ids, term).await?;
        for entry in entries {
            if let (Some((state, detail)), Some(id)) = (final_state, entry.session_id) {
                sqlx::query(
                    "UPDATE sessions SET state = $1, detail = $2, updated_at = $3 \
                     WHERE id = $4 AND state = 'enforcing'",
                )
                .bind(state.as_str())
                .bind(detail)
                .bind(ts(now))
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

/// The one daemon's claim (no leases): `$1` now, `$2` the horizon, `$3`
/// the limit.
static CLAIM_SOLE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH due AS MATERIALIZED ( \
           SELECT id AS due_id FROM sessions \
           WHERE state = 'active' AND deadline <= $2 AND provider IS NOT NULL \
           ORDER BY deadline LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE sessions SET state = 'enforcing', claim_term = 0, updated_at = $1 FROM due WHERE id = due.due_id \
         RETURNING {SESSION_COLUMNS}, claim_term"
    )
});

/// A leader's claim: `$1` its buckets and `$2` their terms (as columns),
/// `$3` now, `$4` the horizon, `$5` the limit. Only the buckets whose lease
/// is valid under that term, by the server's clock, take part.
static CLAIM_LED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH led AS ( \
           SELECT l.bucket, l.term FROM unnest($1::text[], $2::bigint[]) AS g(bucket, term) \
           JOIN leases l ON l.bucket = g.bucket AND l.term = g.term \
           WHERE l.expires_at > clock_timestamp()), \
         due AS MATERIALIZED ( \
           SELECT s.id AS due_id, led.term AS due_term FROM sessions s JOIN led ON s.provider = led.bucket \
           WHERE s.state = 'active' AND s.deadline <= $4 \
           ORDER BY s.deadline LIMIT $5 FOR UPDATE OF s SKIP LOCKED) \
         UPDATE sessions SET state = 'enforcing', claim_term = due.due_term, updated_at = $3 \
         FROM due WHERE id = due.due_id \
         RETURNING {SESSION_COLUMNS}, claim_term"
    )
});

/// The writes of [`PgStore::adopt_batch`] in `tx`, no lock waited for longer
/// than `patience`; how many rows were adopted.
async fn adopt_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    adopted: &[Adopted],
    rejected: &[(String, String)],
    now: Instant,
    patience: Duration,
) -> Result<usize, sqlx::Error> {
    // In milliseconds, at least 1 (0 would mean no limit) and at most what
    // the setting takes (an i32).
    let lock_ms = patience.as_millis().clamp(1, i32::MAX as u128);
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(lock_ms.to_string())
        .execute(&mut **tx)
        .await?;
    let mut audit = Vec::with_capacity(adopted.len() + rejected.len());
    let mut count = 0;
    for a in adopted {
        let done = sqlx::query(
            "UPDATE sessions SET provider = $1, deadline = $2, grace_ms = $3, updated_at = $4 \
             WHERE id = $5 AND state = 'active' AND (provider IS NULL OR deadline IS NULL)",
        )
        .bind(&a.provider)
        .bind(ts(a.deadline))
        .bind(crate::domain::duration_millis_ceil(a.grace))
        .bind(ts(now))
        .bind(&a.id)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() != 1 {
            continue;
        }
        count += 1;
        if let Ok(sid) = a.id.parse::<SessionId>() {
            let booked_end = a.deadline.saturating_sub(a.grace);
            insert_warnings(tx, &warning_points(sid, booked_end, &a.warn_before, now), now).await?;
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
        if let Some(entry) = fail_row(tx, id, reason, now).await? {
            audit.push((entry, now));
        }
    }
    insert_audit_rows(tx, &audit).await?;
    Ok(count)
}

impl PgStore {
    /// A write transaction about sessions `ids`, begun only while each
    /// still carries `term`; otherwise [`StoreError::Fenced`] (another
    /// instance took them over), nothing written. The rows are locked
    /// (`FOR UPDATE`) first: a take-over under way is waited for and its new
    /// term seen, and none can come between this check and the write. A
    /// refused transaction is rolled back at once, so its row locks do not
    /// outlive it (a rollback on drop waits for the connection's return to
    /// the pool).
    async fn fenced_tx(
        &self,
        ids: &[SessionId],
        term: i64,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let mut tx = self.write_tx().await?;
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let rows =
            sqlx::query("SELECT id, claim_term FROM sessions WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        for row in &rows {
            let current: i64 = row.try_get("claim_term")?;
            if current != term {
                tx.rollback().await?;
                let id: String = row.try_get("id")?;
                let id = id
                    .parse()
                    .map_err(|_| StoreError::Malformed { id, reason: "not a session id".into() })?;
                return Err(StoreError::Fenced { id, term, current });
            }
        }
        Ok(tx)
    }
}

/// PostgreSQL's `lock_not_available` (55P03): a lock was not granted
/// within `lock_timeout`.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "55P03")
}

/// A row as read, or the id of a row that cannot be read and why.
pub(in crate::store) type RowRead = Result<SessionRecord, (String, String)>;

/// Reads one row, so that one unreadable row is failed on its own rather
/// than failing the query that found it. The columns are typed, so fewer
/// rows are unreadable than in SQLite; the times are read as text, and one
/// that does not parse (a deadline past the year 9999 reads back with five
/// digits) fails the row when it becomes a [`Session`], also on its own.
fn read_row(row: &PgRow) -> RowRead {
    session_record(row).map_err(|e| {
        let id = row.try_get::<String, _>("id").unwrap_or_default();
        (id, format!("the row cannot be read: {e}"))
    })
}

/// Marks a row that cannot be scheduled `failed` with the reason; returns
/// the `rejected` audit row for the caller to write, or none when the row
/// had settled meanwhile (an app cancelled it between reading and
/// rejecting) and so was left alone: the write is conditional on the state.
pub(super) async fn fail_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: &str,
    reason: &str,
    now: Instant,
) -> Result<Option<AuditEntry>, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sessions SET state = 'failed', detail = $1, updated_at = $2 \
         WHERE id = $3 AND state IN ('active', 'enforcing')",
    )
    .bind(reason)
    .bind(ts(now))
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

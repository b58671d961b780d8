//! Reading the rows every backend stores alike (`sessions`, `audit_log`)
//! into their records: one decoder for any sqlx row type, since each
//! backend selects the same columns under the same names, times as UTC
//! text.

use std::time::Duration;

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::budget::Usage;
use crate::domain::Instant;
use crate::domain::audit::AuditRecord;
use crate::domain::session::SessionRecord;
use crate::store::StoreError;

/// Reads a `sessions` row selected with all of its columns (the backend's
/// `SESSION_COLUMNS`).
pub fn session_record<'r, R>(row: &'r R) -> Result<SessionRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(SessionRecord {
        id: row.try_get("id")?,
        policy: row.try_get("policy")?,
        provider: row.try_get("provider")?,
        room_id: row.try_get("room_id")?,
        room_kind: row.try_get("room_kind")?,
        user_id: row.try_get("user_id")?,
        started_at: row.try_get("started_at")?,
        deadline: row.try_get("deadline")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        extended_ms: row.try_get("extended_ms")?,
        detail: row.try_get("detail")?,
        repeatability_id: row.try_get("repeatability_id")?,
        first_sent_at: row.try_get("first_sent_at")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        grace_ms: row.try_get("grace_ms")?,
        ended_at: row.try_get("ended_at")?,
    })
}

/// Reads an `audit_log` row selected with all of `AUDIT_COLUMNS`.
pub fn audit_record<'r, R>(r: &'r R) -> Result<AuditRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AuditRecord {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        session_id: r.try_get("session_id")?,
        event: r.try_get("event")?,
        provider: r.try_get("provider")?,
        action: r.try_get("action")?,
        attempt: r.try_get("attempt")?,
        outcome: r.try_get("outcome")?,
        http_status: r.try_get("http_status")?,
        provider_request_id: r.try_get("provider_request_id")?,
        error_code: r.try_get("error_code")?,
        detail: r.try_get("detail")?,
        latency_ms: r.try_get("latency_ms")?,
        lateness_ms: r.try_get("lateness_ms")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// The time sessions spent inside `window` (settled ones up to when they
/// ended, running ones up to `now`) and the time running ones have booked
/// beyond `now` (up to their deadline less the grace), from rows of their
/// `id`, `started_at`, `ended_at`, `deadline` (times as text) and
/// `grace_ms`: a user's budget use.
pub fn time_used<'r, R>(rows: &'r [R], window: (Instant, Instant), now: Instant) -> Result<Usage, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut total = Usage::default();
    for row in rows {
        let id: String = row.try_get("id")?;
        let malformed =
            |e: crate::domain::DomainError| StoreError::Malformed { id: id.clone(), reason: e.to_string() };
        let started = Instant::parse(&row.try_get::<String, _>("started_at")?).map_err(malformed)?;
        let ended = row
            .try_get::<Option<String>, _>("ended_at")?
            .map(|t| Instant::parse(&t))
            .transpose()
            .map_err(malformed)?;
        let deadline = Instant::parse(&row.try_get::<String, _>("deadline")?).map_err(malformed)?;
        let grace = Duration::from_millis(u64::try_from(row.try_get::<i64, _>("grace_ms")?).unwrap_or(0));
        let booked_end = Instant::from_millis(deadline.millis().saturating_sub(grace.as_millis() as i64));
        let usage = crate::budget::usage(started, ended, booked_end, window, now);
        total.used += usage.used;
        total.booked += usage.booked;
    }
    Ok(total)
}

/// The `recovered` audit rows for sessions put back in the queue (after a
/// restart, or by a new leader), from rows of their `id` and `provider`.
pub fn recovered_rows<'r, R>(
    rows: &'r [R],
    now: Instant,
    why: &str,
) -> Result<Vec<(crate::domain::audit::AuditEntry, Instant)>, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut audit = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get("id")?;
        let entry = crate::domain::audit::AuditEntry {
            session_id: id.parse().ok(),
            provider: row.try_get("provider")?,
            event: "recovered",
            detail: Some(why.to_string()),
            ..Default::default()
        };
        audit.push((entry, now));
    }
    Ok(audit)
}

//! The notification outbox.
//!
//! Warnings are armed in the transaction that registers (or extends) their
//! session; outcome events are queued by a trigger in the transaction that
//! records the outcome (see migration 0001). The notifier claims due rows
//! with a lease, so a crash mid-delivery means a repeat, never a loss: each
//! delivery carries its `delivery_id` for the receiver to drop repeats.
//! Claims skip rows another notifier holds (`FOR UPDATE SKIP LOCKED`), so
//! two notifiers never claim one row.

use std::time::Duration;

use sqlx::Row;

use super::audit_log::insert_audit;
use super::{PgStore, SESSION_COLUMNS, session_record, ts};
use crate::domain::audit::AuditEntry;
use crate::domain::session::SessionRecord;
use crate::domain::{Instant, SessionId};
use crate::store::warnings::WarningRow;
use crate::store::{Notification, StoreError};

pub(super) async fn insert_warnings(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &[WarningRow],
    now: Instant,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
        "INSERT INTO notifications (delivery_id, session_id, event, warn_before_ms, due_at, created_at, updated_at) ",
    );
    q.push_values(rows, |mut b, w| {
        b.push_bind(uuid::Uuid::new_v4().to_string())
            .push_bind(w.session.to_string())
            .push("'warning'")
            .push_bind(w.offset_ms)
            .push_bind(ts(w.due))
            .push_bind(ts(now))
            .push_bind(ts(now));
    });
    q.build().execute(&mut **tx).await?;
    Ok(())
}

impl PgStore {
    /// Whether enforcement outcomes are queued for delivery (the
    /// `notifications:` section is configured). Stored in the database so
    /// that outcomes recorded by the CLI are queued alike.
    pub(in crate::store) async fn set_outcome_notifications(&self, on: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE notification_settings SET outcomes = $1 WHERE id = 1")
            .bind(on)
            .execute(self.readers())
            .await?;
        Ok(())
    }

    /// When the next pending notification is due.
    pub(in crate::store) async fn next_notification_due(&self) -> Result<Option<Instant>, StoreError> {
        let due: Option<String> = sqlx::query_scalar(
            "SELECT callwarden_text(due_at) FROM notifications WHERE state = 'pending' ORDER BY due_at LIMIT 1",
        )
        .fetch_optional(self.readers())
        .await?;
        due.map(|d| {
            Instant::parse(&d)
                .map_err(|e| StoreError::Malformed { id: "notification".into(), reason: e.to_string() })
        })
        .transpose()
    }

    /// Claims up to `limit` due notifications, oldest due first: each counts
    /// an attempt and is hidden for `lease`, after which it is due again
    /// unless its delivery was recorded (a crash mid-delivery repeats it).
    /// Rows another claim holds are skipped, not waited for; one it has
    /// claimed meanwhile is due later than `now` when re-checked, so it is
    /// not taken twice.
    pub(in crate::store) async fn claim_notifications(
        &self,
        now: Instant,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM notifications WHERE state = 'pending' AND due_at <= $3 \
               ORDER BY due_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
             UPDATE notifications n SET attempts = n.attempts + 1, due_at = $1, updated_at = $2 \
             FROM due WHERE n.id = due.id \
             RETURNING n.id, n.delivery_id, n.session_id, n.event, n.warn_before_ms, n.detail, n.attempts",
        )
        .bind(ts(now.saturating_add(lease)))
        .bind(ts(now))
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        // The sessions they are about, in one read (none for a session
        // pruned meanwhile).
        let ids: Vec<String> = rows.iter().map(|r| r.try_get("session_id")).collect::<Result<_, _>>()?;
        let mut sessions = std::collections::HashMap::new();
        if !ids.is_empty() {
            let found = sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ANY($1)"))
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
            for row in &found {
                let record: SessionRecord = session_record(row)?;
                sessions.insert(record.id.clone(), record);
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let session_id: String = row.try_get("session_id")?;
            let session = sessions.get(&session_id).cloned();
            out.push(Notification {
                id: row.try_get("id")?,
                delivery_id: row.try_get("delivery_id")?,
                session_id,
                event: row.try_get("event")?,
                warn_before_ms: row.try_get("warn_before_ms")?,
                detail: row.try_get("detail")?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                session,
            });
        }
        tx.commit().await?;
        // RETURNING gives no order; deliver in the order they fell due.
        out.sort_by_key(|n| (n.warn_before_ms.map(|w| -w), n.id));
        Ok(out)
    }

    /// Records a delivery the receiver acknowledged.
    pub(in crate::store) async fn notification_delivered(
        &self,
        n: &Notification,
        status: u16,
        now: Instant,
    ) -> Result<(), StoreError> {
        self.settle_notification(n, "delivered", None, "notified", Some(status), now).await
    }

    /// Gives up on a notification after its last attempt.
    pub(in crate::store) async fn notification_failed(
        &self,
        n: &Notification,
        error: &str,
        now: Instant,
    ) -> Result<(), StoreError> {
        self.settle_notification(n, "failed", Some(error), "notification_failed", None, now).await
    }

    /// Drops a warning whose session is no longer running: it would say
    /// something untrue.
    pub(in crate::store) async fn notification_obsolete(
        &self,
        n: &Notification,
        now: Instant,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notifications SET state = 'obsolete', updated_at = $1 WHERE id = $2 AND state = 'pending'",
        )
        .bind(ts(now))
        .bind(n.id)
        .execute(self.readers())
        .await?;
        Ok(())
    }

    /// Schedules the next attempt of a failed delivery.
    pub(in crate::store) async fn notification_retry(
        &self,
        n: &Notification,
        at: Instant,
        error: &str,
        now: Instant,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notifications SET due_at = $1, last_error = $2, updated_at = $3 \
             WHERE id = $4 AND state = 'pending'",
        )
        .bind(ts(at))
        .bind(error)
        .bind(ts(now))
        .bind(n.id)
        .execute(self.readers())
        .await?;
        Ok(())
    }

    /// Settles a pending notification and audits it, once: a conditional
    /// write (`state = 'pending'`), so a second report about it (or one
    /// racing it) changes nothing and writes no audit row.
    async fn settle_notification(
        &self,
        n: &Notification,
        state: &str,
        error: Option<&str>,
        event: &'static str,
        status: Option<u16>,
        now: Instant,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE notifications SET state = $1, last_error = coalesce($2, last_error), updated_at = $3 \
             WHERE id = $4 AND state = 'pending'",
        )
        .bind(state)
        .bind(error)
        .bind(ts(now))
        .bind(n.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            let what = match n.warn_before_ms {
                Some(ms) => format!(
                    "warning {} before the deadline",
                    humantime::format_duration(Duration::from_millis(ms.max(0) as u64))
                ),
                None => format!("{} event", n.event),
            };
            let detail = match error {
                None => format!("{what}; delivery {}; attempt {}", n.delivery_id, n.attempts),
                Some(e) => {
                    format!("{what}; delivery {}; gave up after {} attempts: {e}", n.delivery_id, n.attempts)
                }
            };
            let entry = AuditEntry {
                session_id: n.session_id.parse::<SessionId>().ok(),
                event,
                attempt: Some(n.attempts),
                http_status: status,
                detail: Some(detail),
                ..AuditEntry::default()
            };
            insert_audit(&mut tx, &entry, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

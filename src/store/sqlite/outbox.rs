//! The notification outbox.
//!
//! Warnings are armed in the transaction that registers (or extends) their
//! session; outcome events are queued by a trigger in the transaction that
//! records the outcome (see migration 0008). The notifier claims due rows
//! with a lease, so a crash mid-delivery means a repeat, never a loss: each
//! delivery carries its `delivery_id` for the receiver to drop repeats.

use std::time::Duration;

use sqlx::Row;

use super::audit_log::insert_audit;
use super::{SESSION_COLUMNS, SqliteStore};
use crate::domain::Instant;
use crate::domain::audit::AuditEntry;
use crate::domain::session::SessionRecord;
use crate::store::warnings::WarningRow;
use crate::store::{Notification, StoreError};

pub(super) async fn insert_warnings(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[WarningRow],
    now: Instant,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO notifications (delivery_id, session_id, event, warn_before_ms, due_at, created_at, updated_at) ",
    );
    q.push_values(rows, |mut b, w| {
        b.push_bind(uuid::Uuid::new_v4().to_string())
            .push_bind(w.session.to_string())
            .push("'warning'")
            .push_bind(w.offset_ms)
            .push_bind(w.due.to_string())
            .push_bind(now.to_string())
            .push_bind(now.to_string());
    });
    q.build().execute(&mut **tx).await?;
    Ok(())
}

impl SqliteStore {
    /// Whether enforcement outcomes are queued for delivery (the
    /// `notifications:` section is configured). Stored in the database so
    /// that outcomes recorded by the CLI are queued alike.
    pub(in crate::store) async fn set_outcome_notifications(&self, on: bool) -> Result<(), StoreError> {
        self.write_one(
            sqlx::query("UPDATE notification_settings SET outcomes = ? WHERE id = 1").bind(i64::from(on)),
        )
        .await?;
        Ok(())
    }

    /// When the next pending notification is due.
    pub(in crate::store) async fn next_notification_due(&self) -> Result<Option<Instant>, StoreError> {
        let due: Option<String> = sqlx::query_scalar(
            "SELECT due_at FROM notifications INDEXED BY notifications_due WHERE state = 'pending' \
             ORDER BY due_at LIMIT 1",
        )
        .fetch_optional(&self.readers)
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
    pub(in crate::store) async fn claim_notifications(
        &self,
        now: Instant,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "UPDATE notifications SET attempts = attempts + 1, due_at = ?, updated_at = ? WHERE id IN ( \
               SELECT id FROM notifications INDEXED BY notifications_due WHERE state = 'pending' AND due_at <= ? \
               ORDER BY due_at LIMIT ?) \
             RETURNING id, delivery_id, session_id, event, warn_before_ms, detail, attempts, due_at",
        )
        .bind(now.saturating_add(lease).to_string())
        .bind(now.to_string())
        .bind(now.to_string())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let session_id: String = row.try_get("session_id")?;
            let session = sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"))
                .bind(&session_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| SessionRecord::from_row(&r))
                .transpose()?;
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
        self.write_one(
            sqlx::query(
                "UPDATE notifications SET state = 'obsolete', updated_at = ? WHERE id = ? AND state = 'pending'",
            )
            .bind(now.to_string())
            .bind(n.id),
        )
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
        self.write_one(
            sqlx::query(
                "UPDATE notifications SET due_at = ?, last_error = ?, updated_at = ? \
                 WHERE id = ? AND state = 'pending'",
            )
            .bind(at.to_string())
            .bind(error)
            .bind(now.to_string())
            .bind(n.id),
        )
        .await?;
        Ok(())
    }

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
            "UPDATE notifications SET state = ?, last_error = coalesce(?, last_error), updated_at = ? \
             WHERE id = ? AND state = 'pending'",
        )
        .bind(state)
        .bind(error)
        .bind(now.to_string())
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
                session_id: n.session_id.parse().ok(),
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

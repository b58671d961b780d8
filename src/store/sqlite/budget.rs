//! Budget sums: how much time a user spent under a policy in a window (the
//! calendar arithmetic is `budget`'s).

use std::time::Duration;

use sqlx::Row;

use super::SqliteStore;
use crate::domain::{Instant, UserId};
use crate::store::StoreError;

impl SqliteStore {
    /// Time `user` spent in sessions of `policy` inside `window`: settled
    /// sessions up to when they ended, running ones up to `now`.
    pub(in crate::store) async fn budget_used(
        &self,
        policy: &str,
        user: &UserId,
        window: (Instant, Instant),
        now: Instant,
    ) -> Result<Duration, StoreError> {
        let rows = sqlx::query(
            "SELECT id, started_at, ended_at FROM sessions INDEXED BY sessions_user \
             WHERE policy = ? AND user_id = ? AND user_id IS NOT NULL AND deadline IS NOT NULL \
             AND started_at < ? AND (ended_at IS NULL OR ended_at > ?)",
        )
        .bind(policy)
        .bind(user.as_str())
        .bind(window.1.to_string())
        .bind(window.0.to_string())
        .fetch_all(&self.readers)
        .await?;
        let mut used = Duration::ZERO;
        for row in &rows {
            let id: String = row.try_get("id")?;
            let malformed = |e: crate::domain::DomainError| StoreError::Malformed {
                id: id.clone(),
                reason: e.to_string(),
            };
            let started = Instant::parse(&row.try_get::<String, _>("started_at")?).map_err(malformed)?;
            let ended = row
                .try_get::<Option<String>, _>("ended_at")?
                .map(|t| Instant::parse(&t))
                .transpose()
                .map_err(malformed)?;
            used += crate::budget::overlap(started, ended, window, now);
        }
        Ok(used)
    }

    /// Where `user` stands against a policy's budget at `now`, in the
    /// window (in `tz`) that contains `now`.
    pub(in crate::store) async fn budget_standing(
        &self,
        policy: &str,
        budget: crate::budget::Budget,
        tz: chrono_tz::Tz,
        user: &UserId,
        now: Instant,
    ) -> Result<crate::budget::Standing, StoreError> {
        let (start, end) = budget.window.bounds(tz, now);
        let used = self.budget_used(policy, user, (start, end), now).await?;
        Ok(crate::budget::Standing { window_start: start, window_end: end, used, limit: budget.limit })
    }
}

//! Budget sums: how much time a user spent under a policy in a window (the
//! calendar arithmetic is `budget`'s, and so is the overlap: the rows are
//! read as the same text SQLite stores, so both backends count alike).

use std::time::Duration;

use sqlx::Row;

use super::{PgStore, ts};
use crate::domain::{Instant, UserId};
use crate::store::StoreError;

impl PgStore {
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
            "SELECT id, callwarden_text(started_at) AS started_at, callwarden_text(ended_at) AS ended_at \
             FROM sessions WHERE policy = $1 AND user_id = $2 AND user_id IS NOT NULL AND deadline IS NOT NULL \
             AND started_at < $3 AND (ended_at IS NULL OR ended_at > $4)",
        )
        .bind(policy)
        .bind(user.as_str())
        .bind(ts(window.1))
        .bind(ts(window.0))
        .fetch_all(self.readers())
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

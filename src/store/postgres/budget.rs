//! Budget sums: how much time a user spent under a policy in a window (the
//! calendar arithmetic is `budget`'s, and so is the overlap: the rows are
//! read as the same text SQLite stores, so both backends count alike).

use std::time::Duration;

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
        crate::store::rows::time_used(&rows, window, now)
    }
}

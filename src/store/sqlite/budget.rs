//! Budget sums: how much time a user spent under a policy in a window (the
//! calendar arithmetic is `budget`'s).

use super::SqliteStore;
use crate::budget::Usage;
use crate::domain::{Instant, UserId};
use crate::store::StoreError;

impl SqliteStore {
    /// Time `user` spent in sessions of `policy` inside `window` (settled
    /// sessions up to when they ended, running ones up to `now`), and the
    /// time running ones have booked beyond `now`.
    pub(in crate::store) async fn budget_used(
        &self,
        policy: &str,
        user: &UserId,
        window: (Instant, Instant),
        now: Instant,
    ) -> Result<Usage, StoreError> {
        let rows = sqlx::query(
            "SELECT id, started_at, ended_at, deadline, grace_ms FROM sessions INDEXED BY sessions_user \
             WHERE policy = ? AND user_id = ? AND user_id IS NOT NULL AND deadline IS NOT NULL \
             AND started_at < ? AND (ended_at IS NULL OR ended_at > ?)",
        )
        .bind(policy)
        .bind(user.as_str())
        .bind(window.1.to_string())
        .bind(window.0.to_string())
        .fetch_all(&self.readers)
        .await?;
        crate::store::rows::time_used(&rows, window, now)
    }
}

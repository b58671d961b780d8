//! Budget sums: how much time a user spent under a policy in a window (the
//! calendar arithmetic is `budget`'s, and so is the overlap: the rows are
//! read as the same text SQLite stores, so both backends count alike); and
//! the locks that keep several instances from spending one user's budget
//! twice ([`PgBudgetGuard`]).

use sqlx::Postgres;

use super::{PgStore, ts};
use crate::budget::Usage;
use crate::domain::{Instant, UserId};
use crate::store::StoreError;

impl PgStore {
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
            "SELECT id, callwarden_text(started_at) AS started_at, callwarden_text(ended_at) AS ended_at, \
             callwarden_text(deadline) AS deadline, grace_ms \
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

/// Held locks on users' budgets (see [`PgStore::hold_budgets`]): a
/// transaction holding one advisory lock per user, on a connection of the
/// budget pool. Dropping it rolls the transaction back, which releases the
/// locks (sqlx flushes the rollback as the connection goes back to its
/// pool).
pub struct PgBudgetGuard {
    _tx: sqlx::Transaction<'static, Postgres>,
}

impl std::fmt::Debug for PgBudgetGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBudgetGuard").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Locks `users`' budgets under `policy` for every instance on the
    /// database, until the guard is dropped: from reading a standing to
    /// storing what spends it, no other instance reads that user's. The
    /// keys are hashed (`hashtextextended`); a collision only makes two
    /// users wait for each other. Locks are taken in one order, so two
    /// holders of overlapping sets cannot deadlock.
    pub(in crate::store) async fn hold_budgets(
        &self,
        policy: &str,
        users: &[&str],
    ) -> Result<PgBudgetGuard, StoreError> {
        let mut keys: Vec<String> = users.iter().map(|u| format!("budget\u{1f}{policy}\u{1f}{u}")).collect();
        keys.sort();
        keys.dedup();
        let mut tx = self.budget_pool.begin().await?;
        for key in &keys {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        Ok(PgBudgetGuard { _tx: tx })
    }
}

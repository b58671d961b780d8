//! Registering a session: read where the registration's users stand against
//! their budget, then let `policy::register` decide. The API, the CLI and
//! (through `policy::clip_to_budget`) plain-SQL adoption all decide this
//! way; each caller then writes the sessions its own way (the API through
//! the group-commit registrar with an idempotency key, the CLI directly).

use std::collections::HashMap;

use super::{BudgetHold, BudgetLock};
use crate::budget::Standing;
use crate::config::Config;
use crate::domain::session::NewSession;
use crate::domain::{Instant, UserId};
use crate::policy::{Refusal, Registration, budget_users};
use crate::store::{Store, StoreError};

/// Why a registration produced no sessions.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where each user of a registration stands against its policy's budget;
/// empty when the policy has none.
pub async fn standings(
    store: &Store,
    config: &Config,
    r: &Registration,
    now: Instant,
) -> Result<HashMap<UserId, Standing>, StoreError> {
    let mut out = HashMap::new();
    if let Some((policy, users)) = budget_users(config, r)
        && let Some(budget) = policy.budget
    {
        for user in users {
            let s = store.budget_standing(&policy.name, budget, config.time_zone, user, now).await?;
            out.insert(user.clone(), s);
        }
    }
    Ok(out)
}

/// The budget locks of the registration's users, when it spends a budget;
/// keep the hold until its sessions are stored.
pub async fn lock_budget(
    lock: &BudgetLock,
    config: &Config,
    r: &Registration,
) -> Result<Option<BudgetHold>, StoreError> {
    match budget_users(config, r) {
        Some((policy, users)) => {
            Ok(Some(lock.hold_all(&policy.name, &users.iter().collect::<Vec<_>>()).await?))
        }
        None => Ok(None),
    }
}

/// The sessions a registration creates, with each user's limit clipped to
/// what their budget has left, or why there are none.
pub async fn decide(
    store: &Store,
    config: &Config,
    r: &Registration,
    now: Instant,
) -> Result<Vec<NewSession>, RegisterError> {
    let standings = standings(store, config, r, now).await?;
    Ok(crate::policy::register(config, r, now, &standings)?)
}

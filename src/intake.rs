//! Intake: how sessions enter (and leave) outside the scheduler. Registering
//! a session ([`register`]), whether it comes from the API, the CLI or a
//! webhook entry, and applying a provider's presence event ([`presence`]),
//! whichever provider sent it. The edges (HTTP, CLI) parse and authenticate;
//! the decisions are `policy`'s; this layer reads what they need from the
//! store and writes what they decide.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::clock::Clock;
use crate::config::live::Live;
use crate::domain::UserId;
use crate::store::{PresenceWriter, Store, StoreError};

pub mod presence;
pub mod reconnect;
pub mod register;

/// Serialises what spends one user's budget under one policy, so two
/// entries of one user at the same moment cannot both spend the same
/// remaining time. Held from reading the standing until the session is
/// stored. Users who share no budget never wait for each other. Within this
/// process always; with [`BudgetLock::across_instances`], also against
/// every other daemon on the database (a lock in the database, taken after
/// this process's own). The CLI, a separate process, takes neither.
#[derive(Debug, Clone, Default)]
pub struct BudgetLock {
    local: Arc<std::sync::Mutex<HashMap<BudgetKey, Weak<Mutex<()>>>>>,
    /// The shared database, when several daemons may spend one budget.
    shared: Option<Store>,
}

/// What [`BudgetLock::hold_all`] holds, until dropped.
#[derive(Debug)]
pub struct BudgetHold {
    _local: Vec<OwnedMutexGuard<()>>,
    _shared: Option<crate::store::postgres::PgBudgetGuard>,
}

/// A policy's name and a user's id: whose budget a lock guards.
type BudgetKey = (String, String);

/// Past this many budgets known, those no one holds are forgotten.
const BUDGET_LOCKS_KEPT: usize = 4096;

impl BudgetLock {
    /// A lock that also holds budgets against every other daemon on
    /// `store`'s database (several instances on PostgreSQL).
    pub fn across_instances(store: Store) -> BudgetLock {
        BudgetLock { local: Arc::default(), shared: Some(store) }
    }

    /// Holds `user`'s budget under `policy` in this process until the
    /// guard is dropped.
    async fn hold(&self, policy: &str, user: &UserId) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.local.lock().unwrap_or_else(|e| e.into_inner());
            let key = (policy.to_string(), user.as_str().to_string());
            match locks.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if locks.len() >= BUDGET_LOCKS_KEPT {
                        locks.retain(|_, lock| lock.strong_count() > 0);
                    }
                    let lock = Arc::new(Mutex::new(()));
                    locks.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    /// Holds several users' budgets, in one order so that two callers
    /// holding overlapping sets cannot deadlock: this process's locks
    /// first, then (across instances) the database's, so that at most one
    /// task per user of this process waits in the database.
    pub async fn hold_all(&self, policy: &str, users: &[&UserId]) -> Result<BudgetHold, StoreError> {
        let mut users: Vec<&UserId> = users.to_vec();
        users.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        users.dedup_by(|a, b| a.as_str() == b.as_str());
        let mut local = Vec::with_capacity(users.len());
        for user in &users {
            local.push(self.hold(policy, user).await);
        }
        let shared = match &self.shared {
            Some(store) if !users.is_empty() => {
                let names: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
                store.hold_budgets(policy, &names).await?
            }
            _ => None,
        };
        Ok(BudgetHold { _local: local, _shared: shared })
    }
}

/// What the intake use cases work with, borrowed from their caller.
#[derive(Debug, Clone, Copy)]
pub struct Intake<'a> {
    pub store: &'a Store,
    pub clock: &'a Clock,
    pub config: &'a Live,
    pub budget_lock: &'a BudgetLock,
    /// Presence events are applied through here, group-committed.
    pub presence: &'a PresenceWriter,
}

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
use crate::store::{PresenceWriter, Store};

pub mod presence;
pub mod reconnect;
pub mod register;

/// Serialises what spends one user's budget under one policy within this
/// process, so two entries of one user at the same moment cannot both spend
/// the same remaining time. Held from reading the standing until the
/// session is stored. Users who share no budget never wait for each other.
/// The CLI, a separate process, does not take it.
#[derive(Debug, Clone, Default)]
pub struct BudgetLock(Arc<std::sync::Mutex<HashMap<BudgetKey, Weak<Mutex<()>>>>>);

/// A policy's name and a user's id: whose budget a lock guards.
type BudgetKey = (String, String);

/// Past this many budgets known, those no one holds are forgotten.
const BUDGET_LOCKS_KEPT: usize = 4096;

impl BudgetLock {
    /// Holds `user`'s budget under `policy` until the guard is dropped.
    pub async fn hold(&self, policy: &str, user: &UserId) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
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
    /// holding overlapping sets cannot deadlock.
    pub async fn hold_all(&self, policy: &str, users: &[&UserId]) -> Vec<OwnedMutexGuard<()>> {
        let mut users: Vec<&UserId> = users.to_vec();
        users.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        users.dedup_by(|a, b| a.as_str() == b.as_str());
        let mut guards = Vec::with_capacity(users.len());
        for user in users {
            guards.push(self.hold(policy, user).await);
        }
        guards
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

//! Intake: how sessions enter (and leave) outside the scheduler. Registering
//! a session ([`register`]), whether it comes from the API, the CLI or a
//! webhook entry, and applying a provider's presence event ([`presence`]),
//! whichever provider sent it. The edges (HTTP, CLI) parse and authenticate;
//! the decisions are `policy`'s; this layer reads what they need from the
//! store and writes what they decide.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::clock::Clock;
use crate::config::live::Live;
use crate::store::Store;

pub mod presence;
pub mod register;

/// Serialises budgeted registrations within this process, so two entries
/// of one user at the same moment cannot both spend the same remaining
/// time. Held from reading the standing until the session is stored. The
/// CLI, a separate process, does not take it.
#[derive(Debug, Clone, Default)]
pub struct BudgetLock(Arc<Mutex<()>>);

impl BudgetLock {
    pub async fn hold(&self) -> OwnedMutexGuard<()> {
        Arc::clone(&self.0).lock_owned().await
    }
}

/// What the intake use cases work with, borrowed from their caller.
#[derive(Debug, Clone, Copy)]
pub struct Intake<'a> {
    pub store: &'a Store,
    pub clock: &'a Clock,
    pub config: &'a Live,
    pub budget_lock: &'a BudgetLock,
}

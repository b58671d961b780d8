//! Store health: whether database writes are failing right now.
//!
//! The scheduler and enforcement retry a failed database step (a lock held
//! by another program, a full disk) until it succeeds, so the daemon keeps
//! running through the fault. Reads usually keep working meanwhile (WAL), so
//! `/readyz` cannot notice the fault by reading; it asks this instead. Each
//! failure is also counted in `callwarden_store_errors_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Shared by every clone of one `Store`.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Database steps that failed and are being retried.
    retrying: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

/// One failing database step, from its first failure until it succeeds or
/// is abandoned (dropped).
#[derive(Debug)]
pub struct Outage(Arc<StoreHealth>);

impl Drop for Outage {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StoreHealth {
    /// Records that a step of `task` failed with `error`; `outage` holds the
    /// step's [`Outage`] until the caller drops it (on success or giving up).
    pub fn failed(
        self: &Arc<Self>,
        outage: &mut Option<Outage>,
        task: &'static str,
        error: &dyn std::fmt::Display,
    ) {
        if outage.is_none() {
            self.retrying.fetch_add(1, Ordering::SeqCst);
            *outage = Some(Outage(Arc::clone(self)));
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
        crate::metrics::store_error(task);
    }

    /// The last error, while any database step is failing.
    pub fn failing(&self) -> Option<String> {
        if self.retrying.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let last = self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(last.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_lasts_while_any_failed_step_is_retried() {
        let health = Arc::new(StoreHealth::default());
        assert_eq!(health.failing(), None);
        let (mut a, mut b) = (None, None);
        health.failed(&mut a, "enforcement", &"database is locked");
        health.failed(&mut a, "enforcement", &"database is locked");
        health.failed(&mut b, "scheduler", &"database or disk is full");
        assert_eq!(health.failing().as_deref(), Some("database or disk is full"));
        drop(a);
        assert!(health.failing().is_some());
        b = None;
        assert_eq!((health.failing(), b.is_none()), (None, true));
    }
}

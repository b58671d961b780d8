//! Store health: whether database writes are failing right now.
//!
//! The scheduler and enforcement retry a failed database step (a lock held
//! by another program, a full disk) until it succeeds, so the daemon keeps
//! running through the fault. Reads usually keep working meanwhile (WAL), so
//! `/readyz` cannot notice the fault by reading; it asks this instead. Each
//! failure is also counted in `callwarden_store_errors_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// How a task retries a store step that failed: it waits 100 ms, then twice
/// as long after each further failure up to 10 s, and every failure is
/// reported to the store's health (so `/readyz` answers 503 until the step
/// succeeds) and counted. One per task; the task logs the error itself.
#[derive(Debug)]
pub struct StoreRetry {
    health: Arc<StoreHealth>,
    task: &'static str,
    wait: Duration,
    outage: Option<Outage>,
}

impl StoreRetry {
    pub const FIRST_WAIT: Duration = Duration::from_millis(100);
    pub const LONGEST_WAIT: Duration = Duration::from_secs(10);

    pub fn new(health: &Arc<StoreHealth>, task: &'static str) -> StoreRetry {
        StoreRetry { health: Arc::clone(health), task, wait: Self::FIRST_WAIT, outage: None }
    }

    /// Records a failure; returns how long to wait before trying again.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) -> Duration {
        self.health.failed(&mut self.outage, self.task, error);
        let wait = self.wait;
        self.wait = (wait * 2).min(Self::LONGEST_WAIT);
        wait
    }

    /// The step succeeded: the outage (if any) is over, and the next
    /// failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.wait = Self::FIRST_WAIT;
        self.outage = None;
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

    #[test]
    fn a_retry_backs_off_and_reports_until_it_succeeds() {
        let health = Arc::new(StoreHealth::default());
        let mut retry = StoreRetry::new(&health, "scheduler");
        let waits: Vec<u128> = (0..9).map(|_| retry.failed(&"database is locked").as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000]);
        assert_eq!(health.failing().as_deref(), Some("database is locked"));
        retry.succeeded();
        assert_eq!(health.failing(), None);
        assert_eq!(retry.failed(&"database is locked"), StoreRetry::FIRST_WAIT);
    }
}

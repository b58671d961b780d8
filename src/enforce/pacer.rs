//! Pacing: each provider action's calls held to its rate, in the order they
//! arrive, and the provider slot that carries a provider's pacers.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::domain::{Instant, RetryPolicy};
use crate::providers::Provider;

/// Keeps one provider action at or under its rate: a GCRA limiter with a
/// burst of one (so no two calls are closer than 1/rate), taken by one call
/// at a time, earliest deadline first.
///
/// A call takes its place in the queue when it is dispatched ([`Pacer::queue`])
/// and waits for its turn when it is ready to send ([`PacerPlace::admit`]):
/// calls due milliseconds apart get ready in either order (their timers fire
/// in one tick, their attempt records commit in any order, the runtime's
/// workers race), and the pacer lets none go while one due earlier is still
/// on its way.
#[derive(Debug)]
pub struct Pacer {
    /// Deadlines (ms) of the calls queued, with an arrival number that keeps
    /// equal deadlines first come, first served; and whether a call holds
    /// the limiter.
    state: std::sync::Mutex<(std::collections::BTreeSet<(i64, u64)>, bool)>,
    arrivals: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
    limiter: DefaultDirectRateLimiter,
}

/// A call's place at a pacer: leaves the queue (or frees the limiter) when
/// dropped, also when the call is abandoned or its wait cancelled.
#[derive(Debug)]
pub struct PacerPlace {
    pacer: Arc<Pacer>,
    key: (i64, u64),
    holds: bool,
}

impl Drop for PacerPlace {
    fn drop(&mut self) {
        let mut state = self.pacer.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.holds {
            state.1 = false;
        } else {
            state.0.remove(&self.key);
        }
        drop(state);
        self.pacer.changed.notify_waiters();
    }
}

impl Pacer {
    pub fn per_second(rate: u32) -> Pacer {
        let rate = rate.max(1);
        let period = Duration::from_secs(1) / rate;
        let quota = Quota::with_period(period)
            .expect("a positive rate gives a non-zero period")
            .allow_burst(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(quota);
        // A new pacer starts as if a call had just left. The provider counts
        // the calls of a daemon that was killed (or handed over) an instant
        // before this one started; its last one may be that recent, and the
        // first call here must still keep a period's distance from it.
        let _ = limiter.check();
        Pacer {
            state: std::sync::Mutex::default(),
            arrivals: std::sync::atomic::AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
            limiter,
        }
    }

    /// Starts over as a new pacer does: the next call keeps a period's
    /// distance from now, for a call another instance (this bucket's
    /// previous leader) may have sent an instant ago.
    pub fn restart_period(&self) {
        let _ = self.limiter.check();
    }

    /// Queues a call due at `deadline`: from now on no call due later is
    /// admitted before it, until the place is admitted or dropped.
    pub fn queue(self: &Arc<Pacer>, deadline: Instant) -> PacerPlace {
        let arrival = self.arrivals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = (deadline.millis(), arrival);
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0.insert(key);
        PacerPlace { pacer: Arc::clone(self), key, holds: false }
    }
}

impl PacerPlace {
    /// Returns when the call may be sent: once no call due earlier is queued
    /// and the rate allows it. Drop the place after sending begins.
    pub async fn admit(&mut self) {
        let pacer = Arc::clone(&self.pacer);
        while !self.holds {
            let changed = pacer.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so no change between the two is missed.
            changed.as_mut().enable();
            {
                let mut state = pacer.state.lock().unwrap_or_else(|e| e.into_inner());
                if !state.1 && state.0.first() == Some(&self.key) {
                    state.0.remove(&self.key);
                    state.1 = true;
                    self.holds = true;
                    break;
                }
            }
            changed.await;
        }
        pacer.limiter.until_ready().await;
    }
}

/// A provider as enforcement uses it.
#[derive(Debug)]
pub struct ProviderSlot {
    pub provider: Provider,
    pub retry: RetryPolicy,
    pub(super) pacers: HashMap<&'static str, Arc<Pacer>>,
    /// The newest lease term a call of this provider was sent under.
    term: std::sync::atomic::AtomicI64,
}

impl ProviderSlot {
    pub fn new(provider: Provider, retry: RetryPolicy, max_requests_per_second: u32) -> ProviderSlot {
        let pacers = provider
            .api_actions()
            .iter()
            .map(|a| (*a, Arc::new(Pacer::per_second(max_requests_per_second))))
            .collect();
        ProviderSlot { provider, retry, pacers, term: std::sync::atomic::AtomicI64::new(i64::MIN) }
    }

    /// Before a call under lease `term`: the first call of a new
    /// leadership (a term newer than any sent under here) restarts every
    /// pacer's period, so it keeps its distance from the previous leader's
    /// last call as a new pacer does from a predecessor's. The one daemon's
    /// term never changes.
    pub(super) fn sending_under(&self, term: i64) {
        if term != crate::domain::lease::SOLE_TERM
            && self.term.fetch_max(term, std::sync::atomic::Ordering::AcqRel) < term
        {
            for pacer in self.pacers.values() {
                pacer.restart_period();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls due milliseconds apart get ready in any order; while one holds
    /// the pacer, the rest go out earliest deadline first.
    #[tokio::test]
    async fn the_pacer_lets_the_earliest_deadline_waiting_go_next() {
        // A new pacer's first call waits a period: the calls below queue.
        let pacer = Arc::new(Pacer::per_second(20));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for deadline in [50, 40, 30, 20, 10] {
            let (pacer, order) = (Arc::clone(&pacer), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                pacer.queue(Instant::from_millis(deadline)).admit().await;
                order.lock().unwrap().push(deadline);
            }));
            // The first arrival takes the free pacer; the rest queue behind it.
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [50, 10, 20, 30, 40]);
    }

    /// A restarted daemon's first call keeps a period's distance from the
    /// last one its predecessor may have sent just before it stopped.
    #[tokio::test]
    async fn a_new_pacer_waits_a_period_before_its_first_call() {
        let started = std::time::Instant::now();
        let pacer = Arc::new(Pacer::per_second(10));
        pacer.queue(Instant::from_millis(0)).admit().await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(90), "the first call left after {waited:?}");
    }

    /// A call under a new leadership keeps a period's distance from the
    /// previous leader's last call, however long this pacer was idle.
    #[tokio::test]
    async fn a_restarted_period_holds_the_next_call_back_a_period() {
        let pacer = Arc::new(Pacer::per_second(10));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let started = std::time::Instant::now();
        pacer.restart_period();
        pacer.queue(Instant::from_millis(0)).admit().await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(90), "the first call left after {waited:?}");
    }

    /// A call queued at dispatch holds back every call due later until it
    /// is admitted, however late it gets ready; dropping it lets them go.
    #[tokio::test]
    async fn a_queued_call_holds_back_later_ones_until_admitted_or_dropped() {
        let pacer = Arc::new(Pacer::per_second(1000));
        for first_goes in [true, false] {
            let mut early = pacer.queue(Instant::from_millis(10));
            let later = Arc::clone(&pacer);
            let mut late = tokio::spawn(async move { later.queue(Instant::from_millis(20)).admit().await });
            let waited = tokio::time::timeout(Duration::from_millis(100), &mut late).await;
            assert!(waited.is_err(), "a later call overtook a queued earlier one");
            if first_goes {
                early.admit().await;
            }
            drop(early);
            tokio::time::timeout(Duration::from_secs(5), late).await.unwrap().unwrap();
        }
    }
}

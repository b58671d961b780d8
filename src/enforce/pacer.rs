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
/// burst of one (so no two calls are closer than 1/rate), taken by one
/// waiting call at a time, earliest deadline first.
///
/// Waiters are served by deadline, not by arrival: calls that fall due a few
/// milliseconds apart can reach the pacer in either order (their timers fire
/// in one tick, their attempt records commit in any order, the runtime's
/// workers race), and a fair mutex would keep whichever order they happened
/// to arrive in.
#[derive(Debug)]
pub struct Pacer {
    /// Deadlines (ms) of the calls waiting, with an arrival number that
    /// keeps equal deadlines first come, first served; and whether a call
    /// holds the limiter.
    state: std::sync::Mutex<(std::collections::BTreeSet<(i64, u64)>, bool)>,
    arrivals: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
    limiter: DefaultDirectRateLimiter,
}

/// A call's place at the pacer: leaves the queue (or frees the limiter) when
/// dropped, also when the wait is cancelled.
struct PacerTurn<'a> {
    pacer: &'a Pacer,
    key: (i64, u64),
    holds: bool,
}

impl Drop for PacerTurn<'_> {
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
        Pacer {
            state: std::sync::Mutex::default(),
            arrivals: std::sync::atomic::AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
            limiter: RateLimiter::direct(quota),
        }
    }

    /// Returns when the call due at `deadline` may be sent: once no call
    /// with an earlier deadline is waiting and the rate allows it.
    pub async fn admit(&self, deadline: Instant) {
        let arrival = self.arrivals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut turn = PacerTurn { pacer: self, key: (deadline.millis(), arrival), holds: false };
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0.insert(turn.key);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so no change between the two is missed.
            changed.as_mut().enable();
            {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if !state.1 && state.0.first() == Some(&turn.key) {
                    state.0.remove(&turn.key);
                    state.1 = true;
                    turn.holds = true;
                    break;
                }
            }
            changed.await;
        }
        self.limiter.until_ready().await;
    }
}

/// A provider as enforcement uses it.
#[derive(Debug)]
pub struct ProviderSlot {
    pub provider: Provider,
    pub retry: RetryPolicy,
    pub(super) pacers: HashMap<&'static str, Arc<Pacer>>,
}

impl ProviderSlot {
    pub fn new(provider: Provider, retry: RetryPolicy, max_requests_per_second: u32) -> ProviderSlot {
        let pacers = provider
            .api_actions()
            .iter()
            .map(|a| (*a, Arc::new(Pacer::per_second(max_requests_per_second))))
            .collect();
        ProviderSlot { provider, retry, pacers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls due milliseconds apart reach the pacer in any order; while one
    /// holds it, the rest go out earliest deadline first.
    #[tokio::test]
    async fn the_pacer_lets_the_earliest_deadline_waiting_go_next() {
        let pacer = Arc::new(Pacer::per_second(20));
        // Spend the rate's first call, so the next one waits for its slot.
        pacer.admit(Instant::from_millis(0)).await;
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for deadline in [50, 40, 30, 20, 10] {
            let (pacer, order) = (Arc::clone(&pacer), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                pacer.admit(Instant::from_millis(deadline)).await;
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
}

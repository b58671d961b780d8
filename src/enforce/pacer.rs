//! Pacing: each provider action's calls held to its rate, in the order they
//! arrive, and the provider slot that carries a provider's pacers.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Mutex;

use crate::domain::RetryPolicy;
use crate::providers::Provider;

/// Keeps one provider action at or under its rate: a GCRA limiter with a
/// burst of one (so no two calls are closer than 1/rate), behind a fair
/// mutex so waiting calls go out in the order they arrived, which is deadline
/// order.
#[derive(Debug)]
pub struct Pacer {
    turn: Mutex<()>,
    limiter: DefaultDirectRateLimiter,
}

impl Pacer {
    pub fn per_second(rate: u32) -> Pacer {
        let rate = rate.max(1);
        let period = Duration::from_secs(1) / rate;
        let quota = Quota::with_period(period)
            .expect("a positive rate gives a non-zero period")
            .allow_burst(NonZeroU32::MIN);
        Pacer { turn: Mutex::new(()), limiter: RateLimiter::direct(quota) }
    }

    pub async fn admit(&self) {
        let _turn = self.turn.lock().await;
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

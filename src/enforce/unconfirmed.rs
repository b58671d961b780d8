//! Accepted ACS removals whose outcome report never comes. ACS answers a
//! removal `202 Accepted` and reports the outcome later, to the callback
//! URL; if that report is lost (a proxy down for the delivery window, a
//! rotated callback token), the session would stay `accepted` forever:
//! never pruned, and counted against its user's budget in every window.
//! After the provider's `confirm_within` it is settled `enforced`, with an
//! `unconfirmed` audit row saying so.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::Store;

/// How often accepted sessions are looked at, at most.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Settles, every [`SWEEP_EVERY`] (or sooner for a short bound), the
/// accepted sessions of each `(provider, confirm_within)` whose report is
/// overdue, until `shutdown`.
pub async fn settle_periodically(
    store: Store,
    clock: Clock,
    providers: Vec<(String, Duration)>,
    shutdown: CancellationToken,
) {
    let Some(shortest) = providers.iter().map(|(_, d)| *d).min() else { return };
    let mut tick = tokio::time::interval(SWEEP_EVERY.min(shortest / 4).max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        for (provider, bound) in &providers {
            let now = clock.now();
            let detail = format!(
                "accepted by the provider; no outcome report within confirm_within ({})",
                humantime::format_duration(*bound)
            );
            match store.settle_unconfirmed(provider, now.saturating_sub(*bound), now, &detail).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(%provider, sessions = n, "{detail}; settled as enforced"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot settle unconfirmed removals; trying again later")
                }
            }
        }
    }
}
